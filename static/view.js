// What the page shows around the turns (turns.js): its elements, its state and status line, and
// the error box.

const $ = (id) => document.getElementById(id);

export const el = {
  body: document.body,
  form: $("ask-form"),
  question: $("question"),
  counter: $("counter"),
  ask: $("ask"),
  stop: $("stop"),
  newConversation: $("new-conversation"),
  status: $("status"),
  error: $("error"),
  askAgain: $("ask-again"),
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
