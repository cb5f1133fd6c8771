// llm-stream: the page's controls. The question box with its counter, Ask (Enter), Stop (Esc),
// Copy and each code block's Copy, and on load the answer a previous page left in progress.
//
// Plain ES modules, no build step: stream.js runs one question's stream, markdown.js renders,
// view.js shows, announce.js speaks, refusals.js explains refusals, resume.js remembers the
// answer in progress, clipboard.js copies.

import { announce } from "./announce.js";
import { copyText } from "./clipboard.js";
import { onWaitChange, waiting } from "./refusals.js";
import * as saved from "./resume.js";
import {
  answerSource, isStreaming, lastQuestion, onStreamChange, start, stop,
} from "./stream.js";
import { countChars, el, plural, setState, setStatus, showError } from "./view.js";

const MAX_CHARS = (() => {
  const n = parseInt(el.body.getAttribute("data-max-query-chars") || "", 10);
  if (n > 0) return n;
  return el.question.maxLength > 0 ? el.question.maxLength : 4000;
})();

let copyTimer = 0;

function updateButtons() {
  const streaming = isStreaming();
  el.ask.disabled = streaming || waiting();
  el.stop.disabled = !streaming;
  el.copy.disabled = answerSource() === "";
  if (el.askAgain) el.askAgain.disabled = el.ask.disabled;
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
  if (isStreaming() || waiting()) return;
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

// ------------------------------------------------------------------ copy

el.copy.addEventListener("click", () => {
  const text = answerSource();
  if (!text) return;
  copyText(text).then((ok) => {
    el.copy.textContent = ok ? "Copied" : "Copy failed";
    window.clearTimeout(copyTimer);
    copyTimer = window.setTimeout(() => { el.copy.textContent = "Copy"; }, 1600);
    announce(ok ? "Answer copied to the clipboard." : "Could not copy the answer.");
  });
});

// Each code block's own Copy button copies exactly its code.
el.answer.addEventListener("click", (ev) => {
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

// A reload (or a tab duplicated from this one) during an answer: show the question, continue it.
const pending = saved.load();
if (pending) {
  el.question.value = pending.q;
  updateCounter();
  start(pending.q, pending.stream);
}
