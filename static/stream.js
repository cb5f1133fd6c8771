// One question's stream: an EventSource on /api/stream, what it sends rendered as it arrives, and
// one ending (done, stopped, failed, refused). A dropped connection reconnects by itself (the
// EventSource sends Last-Event-ID; events already shown are ignored by their ids); a reload
// continues the answer in progress (resume.js); Stop cancels the answer on the server.

import { announce, announceError, announceProgress, announceStart, clearAnnouncements }
  from "./announce.js";
import { StreamingMarkdown, countWords } from "./markdown.js";
import { explainRefusal, startCountdown, stopCountdown } from "./refusals.js";
import * as saved from "./resume.js";
import {
  appendReasoning, clearError, el, endThinking, follow, getState, num, plural, rate,
  resetFollowing, resetThinking, setBusy, setState, setStatus, showError,
} from "./view.js";

const STREAM_URL = "/api/stream";
/** A dropped connection that brings nothing back for this long is given up. */
const RECONNECT_GIVE_UP_MS = 30000;
const NORMAL_FINISH = ["stop", "end_turn", "stop_sequence", "eos", "done"];
const LENGTH_FINISH = ["length", "max_tokens", "max_output_tokens"];

let es = null;           // the open EventSource, or null
let run = null;          // the current question's bookkeeping
let leaving = null;      // { deferred } from beforeunload until the page is gone (or stays)
let interrupted = null;  // the run whose stream pagehide closed (the page may come back)
let changed = () => {};

const markdown = new StreamingMarkdown(el.answer, follow);

/** `callback()` runs whenever a stream opens or ends, or the answer gets its first text. */
export function onStreamChange(callback) {
  changed = callback;
}

export function isStreaming() {
  return es !== null;
}

/** The answer's Markdown source, exactly as it arrived. */
export function answerSource() {
  return markdown.source();
}

/** The question last asked, or null. */
export function lastQuestion() {
  return run ? run.q : null;
}

function answerWords() {
  return plural(countWords(el.answer.innerText), "word");
}

function closeStream() {
  if (es) {
    es.onopen = es.onmessage = es.onerror = null;
    es.close();
    es = null;
  }
}

/** Runs after every end of a stream (done, stopped, failed, refused). */
function settle(r) {
  const stopHadFocus = document.activeElement === el.stop;
  window.clearTimeout(r.watchdog);
  closeStream();
  markdown.finish();
  endThinking();
  setBusy(false);
  changed();
  if (stopHadFocus) (el.ask.disabled ? el.question : el.ask).focus();
}

/** Asks `q`; with `resumeStream`, continues that stream from its start instead. */
export function start(q, resumeStream) {
  const askHadFocus = document.activeElement === el.ask;
  closeStream();
  stopCountdown();
  clearError();
  clearAnnouncements();
  markdown.reset();
  resetFollowing();
  resetThinking();
  el.usage.textContent = "";
  el.usage.hidden = true;

  const r = {
    q,
    t0: performance.now(),
    tokens: 0,
    firstAt: null,     // ms after t0 of the first token
    lastAt: null,      // ms after t0 of the latest token
    finish: null,
    usage: null,
    opened: false,
    stream: resumeStream || null,
    lastN: -1,         // the number of the last event taken: later copies are ignored
    savedAt: 0,
    resumed: !!resumeStream,
    reconnecting: false,
    watchdog: 0,
  };
  run = r;

  let url = STREAM_URL + "?q=" + encodeURIComponent(q);
  if (resumeStream) url += "&last_event_id=" + encodeURIComponent(saved.resumeFrom(resumeStream));
  let source;
  try {
    source = new EventSource(url);
  } catch {
    setState("error");
    setStatus("Failed — the question could not be sent");
    showError("The browser could not open a connection to the server.", true);
    changed();
    return;
  }
  es = source;
  setBusy(true);
  setState("connecting");
  setStatus(resumeStream ? "Continuing the answer…" : "Connecting…");
  changed();
  if (askHadFocus) el.stop.focus();

  source.onopen = () => {
    if (es === source) onOpen(r);
  };
  source.addEventListener("stream", (ev) => {
    if (es === source) onStreamOpened(r, ev);
  });
  source.onmessage = (ev) => {
    if (es === source) onMessage(r, ev);
  };
  source.onerror = () => {
    if (es === source) onStreamError(r, source);
  };
}

function onOpen(r) {
  r.opened = true;
  if (r.reconnecting) {
    r.reconnecting = false;
    window.clearTimeout(r.watchdog);
    announce("Reconnected, the answer continues");
  }
  if (getState() === "connecting" || getState() === "reconnecting") {
    if (r.tokens > 0) showProgress(r);
    else {
      setState("waiting");
      setStatus("Waiting for the first token…");
    }
  }
}

/** The stream's opening event names it: remember it, for a reload to continue it. */
function onStreamOpened(r, ev) {
  let msg = null;
  try {
    msg = JSON.parse(ev.data);
  } catch {
    return;
  }
  if (!msg || typeof msg.stream !== "string") return;
  r.stream = msg.stream;
  const n = saved.eventNumber(ev.lastEventId, r.stream);
  if (n !== null && n > r.lastN) r.lastN = n;
  saved.save(r.q, r.stream, ev.lastEventId);
}

function onMessage(r, ev) {
  const n = saved.eventNumber(ev.lastEventId, r.stream);
  if (n !== null) {
    if (n <= r.lastN) return; // replayed after a reconnect: already shown
    r.lastN = n;
  }
  if (r.stream && performance.now() - r.savedAt > 250) {
    r.savedAt = performance.now();
    saved.save(r.q, r.stream, ev.lastEventId);
  }
  if (ev.data === "[DONE]") {
    finish(r);
    return;
  }
  let msg;
  try {
    msg = JSON.parse(ev.data);
  } catch {
    return; // not ours to render
  }
  if (!msg || typeof msg !== "object") return;
  if (msg.error !== undefined && msg.error !== null) {
    fail(r, msg);
    return;
  }
  if (typeof msg.reasoning === "string" && msg.reasoning !== "") {
    appendReasoning(msg.reasoning);
    if (r.tokens === 0) {
      setState("generating");
      setStatus("Thinking…");
    }
  }
  if (typeof msg.token === "string") {
    const now = performance.now() - r.t0;
    if (r.tokens === 0) {
      r.firstAt = now;
      endThinking();
      announceStart("Answer started");
      changed(); // there is something to copy
    }
    r.tokens += 1;
    r.lastAt = now;
    markdown.append(msg.token);
    showProgress(r);
    announceProgress(() => plural(countWords(markdown.source()), "word") + " so far");
  }
  if (msg.finish_reason !== undefined && msg.finish_reason !== null) {
    r.finish = String(msg.finish_reason);
  }
  if (msg.usage && typeof msg.usage === "object") r.usage = msg.usage;
}

function showProgress(r) {
  if (getState() !== "generating") setState("generating");
  const speed = rate(r.tokens, r.lastAt - r.firstAt);
  setStatus("Generating… (" + plural(r.tokens, "token") + (speed ? ", " + speed : "") + ")");
}

function finish(r) {
  settle(r);
  saved.clear();
  const secs = ((performance.now() - r.t0) / 1000).toFixed(1);
  let text = "Done — " + plural(r.tokens, "token") + " in " + secs + " s";
  if (r.firstAt !== null) text += ", first token after " + Math.round(r.firstAt) + " ms";
  const speed = rate(r.tokens, r.lastAt - r.firstAt);
  if (speed) text += ", " + speed;
  if (r.finish && LENGTH_FINISH.includes(r.finish)) {
    text += " — the answer was cut at the length limit.";
  } else if (r.finish && !NORMAL_FINISH.includes(r.finish)) {
    text += " — the model stopped early (" + r.finish + ").";
  }
  setState("done");
  setStatus(text);
  showUsage(r.usage);
  announce("Answer complete, " + answerWords());
}

function showUsage(u) {
  if (!u) return;
  const p = num(u.prompt_tokens);
  const c = num(u.completion_tokens);
  const parts = [];
  if (p !== null) parts.push("prompt " + plural(p, "token"));
  if (c !== null) parts.push("completion " + plural(c, "token"));
  if (!parts.length) return;
  el.usage.textContent = "Usage: " + parts.join(" · ");
  el.usage.hidden = false;
}

/** Stop and Escape: the model stops for real (the server would otherwise keep the answer going
 * for a reload to continue it). */
export function stop() {
  if (!es || !run) return;
  const r = run;
  if (r.stream) {
    fetch(STREAM_URL + "/" + encodeURIComponent(r.stream) + "/cancel", {
      method: "POST",
      credentials: "same-origin",
      keepalive: true,
    }).catch(() => {});
  }
  settle(r);
  saved.clear();
  setState("stopped");
  setStatus("Stopped — " + plural(r.tokens, "token"));
  announce("Answer stopped, " + answerWords());
}

/** The server's in-band error: {"error": code, "message": text, "retry_after"?: N}. */
function fail(r, msg) {
  settle(r);
  saved.clear();
  const message = typeof msg.message === "string" && msg.message.trim() !== ""
    ? msg.message
    : "Something went wrong while generating the answer.";
  const base = r.tokens > 0
    ? "Failed after " + plural(r.tokens, "token")
    : "Failed before the answer started";
  setState("error");
  showError(message, true);
  announceError(message);
  const wait = num(msg.retry_after);
  if (wait !== null && wait > 0) {
    startCountdown(Math.ceil(wait), (left) => {
      setStatus(base + " — you can try again in " + left + " s");
    }, () => {
      setStatus(base + " — you can try again now");
    });
  } else {
    setStatus(base);
  }
}

function onStreamError(r, source) {
  if (leaving) {
    // A reload or navigation away aborts the stream first: not a failure. Should the page stay
    // after all, the error is looked at then.
    leaving.deferred = () => {
      if (es === source) onStreamError(r, source);
    };
    return;
  }
  if (r.finish !== null) {
    finish(r); // the answer was complete; only the closing [DONE] went missing
    return;
  }
  if (source.readyState === EventSource.CONNECTING && r.opened) {
    reconnecting(r);
    return;
  }
  if (r.opened) {
    lost(r, "The connection to the server was lost and the server could not continue the " +
      "answer.");
    return;
  }
  settle(r);
  if (r.resumed) {
    saved.clear();
    setState("idle");
    setStatus("Ready — the answer in progress could not be continued");
    showError("The answer that was streaming before the page was reloaded could not be " +
      "continued: it has ended or expired. Ask again for a new answer.", true);
    return;
  }
  // Refused before streaming (HTTP 400/429/503): ask the server why.
  explainRefusal(r.q, () => run === r);
}

/** The connection dropped mid-answer: the EventSource reconnects by itself (Last-Event-ID). */
function reconnecting(r) {
  if (r.reconnecting) return; // a further failed attempt: the first drop's deadline stands
  r.reconnecting = true;
  setState("reconnecting");
  setStatus("Reconnecting…");
  announce("Connection lost, reconnecting");
  r.watchdog = window.setTimeout(() => {
    if (run === r && es) {
      lost(r, "The connection to the server was lost and nothing came back for " +
        RECONNECT_GIVE_UP_MS / 1000 + " seconds.");
    }
  }, RECONNECT_GIVE_UP_MS);
}

function lost(r, why) {
  settle(r);
  saved.clear();
  setState("error");
  setStatus(r.tokens > 0
    ? "Failed after " + plural(r.tokens, "token") + " — connection lost"
    : "Failed — connection lost");
  const m = why + (r.tokens > 0 ? " The partial answer is kept above." : "") +
    " Ask again for a complete answer.";
  showError(m, true);
  announceError(m);
}

// ------------------------------------------------------------------ leaving, reloading

// A page cannot tell a reload from a closed tab when it goes away: it sends no cancel and keeps
// the answer in sessionStorage; the server's grace decides. Chrome aborts the stream (an error)
// before pagehide on a reload, so errors from beforeunload on wait to see if the page stays.
window.addEventListener("beforeunload", () => {
  leaving = { deferred: null };
  const mine = leaving;
  window.setTimeout(() => {
    if (leaving !== mine) return;
    leaving = null;
    if (mine.deferred) mine.deferred();
  }, 1000);
});

window.addEventListener("pagehide", () => {
  if (es && run) {
    closeStream();
    interrupted = run;
  }
});

// Back from the back-forward cache: continue the answer if the server can, else say it stopped.
window.addEventListener("pageshow", (ev) => {
  leaving = null;
  const r = interrupted;
  interrupted = null;
  if (!ev.persisted || !r || run !== r || es) return;
  if (r.stream) {
    start(r.q, r.stream);
  } else {
    settle(r);
    setState("stopped");
    setStatus("Stopped — " + plural(r.tokens, "token"));
  }
});
