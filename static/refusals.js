// Why a question was refused before it streamed (an EventSource cannot read the refusal's body,
// so the page asks /api/limits, with the question: the server says what the token budgets decide
// for it), and the countdowns that keep Ask disabled while a wait runs.

import { announceError } from "./announce.js";
import { countChars, num, setState, setStatus, showError } from "./view.js";

const LIMITS_URL = "/api/limits";
const LIMITS_TIMEOUT_MS = 8000;

let countdown = null;  // { timer } while a countdown runs
let checking = false;  // asking /api/limits why a request was refused
let changed = () => {};

/** `onChange()` runs whenever waiting starts or ends (to enable or disable Ask). */
export function onWaitChange(callback) {
  changed = callback;
}

/** Whether Ask must wait: a countdown runs, or the page is asking why it was refused. */
export function waiting() {
  return checking || countdown !== null;
}

export function stopCountdown() {
  if (countdown) {
    window.clearInterval(countdown.timer);
    countdown = null;
  }
}

/** Disables Ask for `secs` seconds; `render(left)` runs whenever the whole seconds left change,
 * `onEnd()` once they reach 0. */
export function startCountdown(secs, render, onEnd) {
  stopCountdown();
  const deadline = Date.now() + secs * 1000;
  let shown = -1;
  const tick = () => {
    const left = Math.ceil((deadline - Date.now()) / 1000);
    if (left <= 0) {
      stopCountdown();
      changed();
      onEnd();
      return;
    }
    if (left !== shown) {
      shown = left;
      render(left);
    }
  };
  countdown = { timer: window.setInterval(tick, 200) };
  changed();
  tick();
}

/** /api/limits, with what the token budgets decide for `q` asked in `conversation` (or null). */
function fetchLimits(q, conversation) {
  const ctrl = new AbortController();
  const timer = window.setTimeout(() => ctrl.abort(), LIMITS_TIMEOUT_MS);
  let url = LIMITS_URL + "?q=" + encodeURIComponent(q);
  if (conversation) url += "&conversation=" + encodeURIComponent(conversation);
  return fetch(url, {
    method: "GET",
    cache: "no-store",
    credentials: "same-origin",
    headers: { "Accept": "application/json" },
    signal: ctrl.signal,
  }).then((res) => {
    // Under sign-in, /api/limits is refused 401 like the stream: say so, with the sign-in link.
    if (res.status === 401) {
      return res.json().catch(() => ({})).then((j) => { throw { unauthorized: j || {} }; });
    }
    if (!res.ok) throw new Error("HTTP " + res.status);
    return res.json();
  }).then((json) => {
    if (!json || typeof json !== "object") throw new Error("bad limits");
    return json;
  }).finally(() => window.clearTimeout(timer));
}

function refuse(status, message) {
  setState("refused");
  setStatus(status);
  showError(message, false);
  announceError(message);
  changed();
}

/** A refusal that passes with time: Ask waits `secs` while `say(left, unit)` counts down, then
 * `over` is shown and the status says `ready`. */
function refuseFor(secs, status, say, over, ready) {
  setState("refused");
  setStatus(status);
  announceError(say(secs, "seconds") + ".");
  startCountdown(secs, (left) => showError(say(left, "s"), false), () => {
    showError(over, false);
    setStatus(ready);
  });
}

/** Whole seconds to wait, at least one. */
const waitSecs = (secs) => Math.max(1, Math.ceil(num(secs) || 0));

/** Says why the question `q` was refused; `current()` tells whether it is still the page's;
 * `conversation`: the conversation it was asked in (whose answer may still run, e.g. in another
 * tab, and whose history counts in its token budget), or null. */
export function explainRefusal(q, current, conversation) {
  checking = true;
  changed();
  setStatus("Checking why the question was not accepted…");

  fetchLimits(q, conversation).then((l) => {
    if (!current()) return;
    checking = false;
    const limit = num(l.limit) || 0;
    const remaining = num(l.remaining);
    const open = num(l.streams_open);
    const maxOpen = num(l.max_streams_per_client);
    const maxChars = num(l.max_query_chars);
    const budget = l.question && typeof l.question === "object" ? l.question : {};

    // In the order the server decides: the rate, the token budgets, then the stream slots.
    if (limit > 0 && remaining !== null && remaining <= 0) {
      refuseFor(waitSecs(l.reset_secs), "Refused — rate limit reached",
        (n, unit) => "Rate limit reached — try again in " + n + " " + unit,
        "The rate limit has reset — you can ask again now.",
        "Ready — the rate limit has reset");
      return;
    }
    if (budget.error === "token_budget_exhausted") {
      refuseFor(waitSecs(budget.retry_after), "Refused — your token budget is spent",
        (n, unit) => "Your token budget is spent — enough for another answer is back in " +
          n + " " + unit,
        "Your token budget has enough for another answer — you can ask again now.",
        "Ready — your token budget has refilled");
      return;
    }
    if (budget.error === "service_budget_exhausted") {
      refuseFor(waitSecs(budget.retry_after), "Refused — the service's token budget is used up",
        (n, unit) => "The service has used up its token budget for now — try again in " +
          n + " " + unit,
        "The service's token budget has refilled — you can ask again now.",
        "Ready — the service's token budget has refilled");
      return;
    }
    if (maxOpen !== null && maxOpen > 0 && open !== null && open >= maxOpen) {
      refuse("Refused — too many open streams",
        "Too many answers are streaming for you at once (" + open + " of " + maxOpen +
        " allowed). Stop or close the answers in your other tabs, then try again.");
      return;
    }
    if (maxChars !== null && maxChars > 0 && countChars(q) > maxChars) {
      refuse("Refused — the question is too long",
        "The question is " + countChars(q) + " characters long; the server accepts at most " +
        maxChars + ". Please shorten it.");
      return;
    }
    refuse("Refused — the server is busy", conversation
      ? "The server did not accept this question: it is busy or at capacity right now, or an " +
        "answer in this conversation is still running (perhaps in another tab). Please try " +
        "again in a few seconds."
      : "The server is busy or at capacity right now, or it did not accept this question. " +
        "Please try again in a few seconds.");
  }).catch((e) => {
    if (!current()) return;
    checking = false;
    if (e && e.unauthorized) {
      refuse("Refused — not signed in",
        "You are not signed in, or your session has expired. Sign in again, then ask.");
      const login = e.unauthorized.login_url;
      if (typeof login === "string" && /^https?:\/\//.test(login)) {
        const link = document.createElement("a");
        link.href = login;
        link.textContent = "Sign in";
        link.id = "sign-in";
        const error = document.getElementById("error");
        error.append(" ", link);
      }
      return;
    }
    setState("error");
    setStatus("Failed — the server cannot be reached");
    const m = "The server cannot be reached. Check your connection and try again.";
    showError(m, true);
    announceError(m);
    changed();
  });
}
