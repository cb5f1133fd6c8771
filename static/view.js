// What the page shows: its elements, its state and status line, the error box, the reasoning
// section, and the answer's box following the newest text.

const $ = (id) => document.getElementById(id);

export const el = {
  body: document.body,
  form: $("ask-form"),
  question: $("question"),
  counter: $("counter"),
  ask: $("ask"),
  stop: $("stop"),
  copy: $("copy"),
  status: $("status"),
  thinking: $("thinking"),
  thinkingLabel: $("thinking-label"),
  thinkingNote: $("thinking-note"),
  reasoning: $("reasoning"),
  answer: $("answer"),
  error: $("error"),
  askAgain: $("ask-again"),
  usage: $("usage"),
};

export function countChars(s) {
  // Code points, matching the server's character count.
  return Array.from(s).length;
}

export function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

export function num(v) {
  return typeof v === "number" && isFinite(v) ? v : null;
}

/** "12.3 tokens/s" from a count and the milliseconds they took, or "" when it means nothing. */
export function rate(tokens, ms) {
  if (tokens < 2 || !(ms > 0)) return "";
  return ((tokens - 1) * 1000 / ms).toFixed(1) + " tokens/s";
}

export function setState(state) {
  el.body.setAttribute("data-state", state);
  el.status.setAttribute("data-state", state);
}

export function getState() {
  return el.body.getAttribute("data-state") || "idle";
}

export function setStatus(text) {
  el.status.textContent = text;
}

/** The error box; with `again`, a button to ask the same question again. */
export function showError(text, again) {
  el.error.textContent = text;
  el.error.hidden = !text;
  if (el.askAgain) el.askAgain.hidden = !(text && again);
}

export function clearError() {
  showError("", false);
}

export function setBusy(busy) {
  el.answer.setAttribute("aria-busy", busy ? "true" : "false");
}

// ------------------------------------------------------------------ the reasoning section

let thinkingSince = null;

export function resetThinking() {
  thinkingSince = null;
  el.reasoning.textContent = "";
  el.thinking.hidden = true;
  el.thinking.open = false;
  el.thinkingLabel.textContent = "Thinking";
  el.thinkingNote.textContent = "";
}

/** Reasoning text, shown as plain text, open while the model thinks. */
export function appendReasoning(text) {
  if (thinkingSince === null) {
    thinkingSince = performance.now();
    el.thinking.hidden = false;
    el.thinking.open = true;
  }
  el.thinkingNote.textContent = "…";
  const follow = isNearBottom(el.reasoning);
  const last = el.reasoning.lastChild;
  if (last && last.nodeType === Node.TEXT_NODE) last.appendData(text);
  else el.reasoning.appendChild(document.createTextNode(text));
  if (follow) el.reasoning.scrollTop = el.reasoning.scrollHeight;
}

/** The answer started (or the stream ended): the reasoning folds into "Thought for N s". */
export function endThinking() {
  el.thinkingNote.textContent = "";
  if (thinkingSince === null || el.thinkingLabel.textContent !== "Thinking") return;
  const secs = Math.max(1, Math.round((performance.now() - thinkingSince) / 1000));
  el.thinkingLabel.textContent = "Thought for " + secs + " s";
  el.thinking.open = false;
}

// ------------------------------------------------------------------ following the newest text

const FOLLOW_THRESHOLD_PX = 32;

function isNearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight <= FOLLOW_THRESHOLD_PX;
}

// Whether the answer's view follows the newest text. A reader who scrolls up (wheel, keys,
// touch, scrollbar) stops it at once, before a smooth scroll has moved far enough for
// isNearBottom to notice; scrolling back down to the bottom resumes it.
let following = true;
let lastTop = 0;
let lastHeight = 0;

export function resetFollowing() {
  following = true;
  el.answer.scrollTop = 0;
  lastTop = 0;
  lastHeight = 0;
}

/** After the answer's content changed: keep the newest text in view unless the reader left it. */
export function follow() {
  if (following) el.answer.scrollTop = el.answer.scrollHeight;
}

el.answer.addEventListener("wheel", (ev) => {
  if (ev.deltaY < 0) following = false;
}, { passive: true });

el.answer.addEventListener("scroll", () => {
  const top = el.answer.scrollTop;
  const height = el.answer.scrollHeight;
  if (height < lastHeight - 1) {
    // The growing block became shorter (a paragraph turned into a heading …): the browser
    // moved the view, not the reader.
  } else if (top < lastTop - 1) {
    following = false;
  } else if (isNearBottom(el.answer)) {
    following = true;
  }
  lastTop = top;
  lastHeight = height;
}, { passive: true });
