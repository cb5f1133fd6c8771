// Why a question was refused before it streamed (an EventSource cannot read the refusal's body,
// so the page asks /api/limits), and the countdowns that keep Ask disabled while a wait runs.

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

function fetchLimits() {
  const ctrl = new AbortController();
  const timer = window.setTimeout(() => ctrl.abort(), LIMITS_TIMEOUT_MS);
  return fetch(LIMITS_URL, {
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

/** Says why the question `q` was refused; `current()` tells whether it is still the page's;
 * `followUp`: it was asked in a conversation (whose answer may still run, e.g. in another tab). */
export function explainRefusal(q, current, followUp) {
  checking = true;
  changed();
  setStatus("Checking why the question was not accepted…");

  fetchLimits().then((l) => {
    if (!current()) return;
    checking = false;
    const limit = num(l.limit) || 0;
    const remaining = num(l.remaining);
    const reset = num(l.reset_secs);
    const open = num(l.streams_open);
    const maxOpen = num(l.max_streams_per_client);
    const maxChars = num(l.max_query_chars);

    if (limit > 0 && remaining !== null && remaining <= 0) {
      setState("refused");
      setStatus("Refused — rate limit reached");
      const secs = Math.max(1, Math.ceil(reset || 0));
      announceError("Rate limit reached — try again in " + secs + " seconds.");
      startCountdown(secs, (left) => {
        showError("Rate limit reached — try again in " + left + " s", false);
      }, () => {
        showError("The rate limit has reset — you can ask again now.", false);
        setStatus("Ready — the rate limit has reset");
      });
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
    refuse("Refused — the server is busy", followUp
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
