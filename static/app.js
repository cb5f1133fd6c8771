// llm-stream: the page's controls. The question box with its counter, Ask (Enter), Stop (Esc),
// New conversation, each answer's Copy and each code block's Copy; and on load the conversation
// and the answer a previous page left in progress.
//
// Plain ES modules, no build step: stream.js asks and stops, each question one run (run.js) that
// ends one way (endings.js) and lives through the page going away and back (lifecycle.js);
// conversation.js keeps the conversation, turns.js shows its turns, markdown.js renders, view.js
// shows the rest, announce.js speaks, refusals.js explains refusals, resume.js remembers the
// answer in progress, clipboard.js copies, id.js knows the shape of the server's ids.

import { announce } from "./announce.js";
import { copyText } from "./clipboard.js";
import { conversationId, fetchTurns, forget } from "./conversation.js";
import { onWaitChange, waiting } from "./refusals.js";
import * as saved from "./resume.js";
import { isStreaming, lastQuestion, onStreamChange, start, stop } from "./stream.js";
import { clearTurns, hasTurns, lastTurn, showTurn, turnList, turnOf } from "./turns.js";
import {
  clearError, countChars, el, plural, setState, setStatus, showError,
} from "./view.js";

const MAX_CHARS = (() => {
  const n = parseInt(el.body.getAttribute("data-max-query-chars") || "", 10);
  if (n > 0) return n;
  return el.question.maxLength > 0 ? el.question.maxLength : 4000;
})();

/** While the earlier turns of a reloaded conversation are fetched: a question would come first. */
let restoring = false;

function updateButtons() {
  const streaming = isStreaming();
  el.ask.disabled = streaming || waiting() || restoring;
  el.stop.disabled = !streaming;
  el.newConversation.disabled = streaming || restoring ||
    (!hasTurns() && conversationId() === null);
  if (el.askAgain) el.askAgain.disabled = el.ask.disabled;
  el.question.placeholder = hasTurns() ? "Ask a follow-up…" : "Ask anything…";
}
onWaitChange(updateButtons);
onStreamChange(updateButtons);

function updateCounter() {
  const n = countChars(el.question.value);
  el.counter.textContent = n + " / " + MAX_CHARS;
  el.counter.classList.toggle("is-over", n > MAX_CHARS);
  el.counter.classList.toggle("is-near", n <= MAX_CHARS && n >= Math.floor(MAX_CHARS * 0.9));
  if (el.question.getAttribute("aria-invalid") === "true" &&
      n <= MAX_CHARS && el.question.value.trim() !== "") {
    el.question.removeAttribute("aria-invalid");
  }
}

// ------------------------------------------------------------------ asking

function reject(message, status) {
  setState("idle");
  setStatus(status);
  showError(message, false);
  el.question.setAttribute("aria-invalid", "true");
  el.question.focus();
}

function submit() {
  if (isStreaming() || waiting() || restoring) return;
  const q = el.question.value;
  if (q.trim() === "") {
    reject("Type a question first.", "Not sent — the question is empty");
    return;
  }
  const n = countChars(q);
  if (n > MAX_CHARS) {
    reject("Your question is " + n + " characters long; the limit is " + MAX_CHARS +
      ". Please shorten it by " + plural(n - MAX_CHARS, "character") + ".",
      "Not sent — the question is too long (" + n + " / " + MAX_CHARS + ")");
    return;
  }
  el.question.removeAttribute("aria-invalid");
  start(q, null);
}

el.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  submit();
});

el.question.addEventListener("keydown", (ev) => {
  if (ev.key !== "Enter" || ev.shiftKey || ev.altKey || ev.isComposing || ev.keyCode === 229) {
    return;
  }
  ev.preventDefault();
  if (!el.ask.disabled) submit();
});

el.question.addEventListener("input", updateCounter);
el.stop.addEventListener("click", stop);

document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && isStreaming()) {
    ev.preventDefault();
    stop();
  }
});

if (el.askAgain) {
  el.askAgain.addEventListener("click", () => {
    const q = lastQuestion();
    if (q === null) return;
    el.question.value = q;
    updateCounter();
    submit();
  });
}

// ------------------------------------------------------------------ a new conversation

el.newConversation.addEventListener("click", () => {
  if (isStreaming() || restoring) return;
  forget();
  clearTurns();
  if (!waiting()) {
    clearError();
    setState("idle");
    setStatus("Ready — a new conversation");
  }
  announce("New conversation: the earlier questions are forgotten.");
  updateButtons();
  el.question.focus();
});

// ------------------------------------------------------------------ copy

const copyTimers = new WeakMap();

// Each answer's Copy copies its Markdown source, exactly as it arrived.
turnList.addEventListener("click", (ev) => {
  const button = ev.target instanceof Element ? ev.target.closest(".answer-copy") : null;
  const turn = button ? turnOf(button) : null;
  if (!turn || !turn.source()) return;
  copyText(turn.source()).then((ok) => {
    button.textContent = ok ? "Copied" : "Copy failed";
    window.clearTimeout(copyTimers.get(button));
    copyTimers.set(button, window.setTimeout(() => { button.textContent = "Copy"; }, 1600));
    announce(ok ? "Answer copied to the clipboard." : "Could not copy the answer.");
  });
});

// Each code block's own Copy button copies exactly its code.
turnList.addEventListener("click", (ev) => {
  const button = ev.target instanceof Element ? ev.target.closest(".code-copy") : null;
  if (!button) return;
  const code = button.closest(".code-block")?.querySelector("pre code");
  if (!code) return;
  copyText(code.textContent).then((ok) => {
    button.dataset.copied = ok ? "yes" : "no";
    window.setTimeout(() => { delete button.dataset.copied; }, 1600);
    announce(ok ? "Code copied to the clipboard." : "Could not copy the code.");
  });
});

// ------------------------------------------------------------------ on load

setState("idle");
updateCounter();
updateButtons();

// A reload (or a tab duplicated from this one): the conversation's earlier turns come back from
// the server, and an answer that was streaming continues as the last turn. That answer is not
// stored until it ends, so only the turns before it are shown from the server's list.
async function restore() {
  const pending = saved.load();
  if (conversationId() === null && !pending) return;
  restoring = true;
  updateButtons();
  let turns = await fetchTurns();
  if (pending && Number.isSafeInteger(pending.turn)) {
    turns = turns.slice(0, Math.max(0, pending.turn - 1));
  }
  for (const t of turns) showTurn(t.question, t.answer);
  restoring = false;
  updateButtons();
  if (pending) {
    start(pending.q, { stream: pending.stream, turn: pending.turn });
  } else if (turns.length) {
    lastTurn().reveal();
    setStatus("Ready — " + plural(turns.length, "earlier question") + " in this conversation");
  }
}
restore();
