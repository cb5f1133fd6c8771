// One question's stream: an EventSource on /api/stream, in the conversation (conversation.js),
// what it sends rendered as it arrives in the question's own turn (turns.js), and one ending
// (done, stopped, failed, refused). A dropped connection reconnects by itself (the EventSource
// sends Last-Event-ID; events already shown are ignored by their ids); a reload continues the
// answer in progress (resume.js); Stop cancels the answer on the server.

import { announce, announceError, announceProgress, announceStart, clearAnnouncements }
  from "./announce.js";
import { adopt, conversationId } from "./conversation.js";
import { isId } from "./id.js";
import { countWords } from "./markdown.js";
import { explainRefusal, startCountdown, stopCountdown } from "./refusals.js";
import * as saved from "./resume.js";
import { Turn } from "./turns.js";
import {
  clearError, el, getState, num, plural, rate, setState, setStatus, showError,
} from "./view.js";

const STREAM_URL = "/api/stream";
/** A dropped connection that brings nothing back for this long is given up. */
const RECONNECT_GIVE_UP_MS = 30000;
const NORMAL_FINISH = ["stop", "end_turn", "stop_sequence", "eos", "done"];
const LENGTH_FINISH = ["length", "max_tokens", "max_output_tokens"];
const EXPIRED = "The earlier conversation expired; this question starts a new one.";

let es = null;           // the open EventSource, or null
let run = null;          // the current question's bookkeeping
let leaving = null;      // { deferred } from beforeunload until the page is gone (or stays)
let interrupted = null;  // the run whose stream pagehide closed (the page may come back)
let changed = () => {};

/** `callback()` runs whenever a stream opens or ends, or the answer gets its first text. */
export function onStreamChange(callback) {
  changed = callback;
}

export function isStreaming() {
  return es !== null;
}

/** The question last asked, or null. */
export function lastQuestion() {
  return run ? run.q : null;
}

/** The answer's words, counted in its source as received (as every note counts them): what the
 * screen shows may not have had its last frame yet. */
function answerWords(r) {
  return plural(countWords(r.turn.source()), "word");
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
  // Focus goes back to the question box, for the follow-up, unless the reader is elsewhere.
  const focus = document.activeElement;
  const fromForm = focus === el.stop || focus === el.ask;
  const fromNowhere = !focus || focus === document.body;
  window.clearTimeout(r.watchdog);
  closeStream();
  r.turn.finish();
  r.turn.endThinking();
  r.turn.setBusy(false);
  changed();
  if (fromForm || fromNowhere) el.question.focus({ preventScroll: fromNowhere });
}

/**
 * Asks `q` in the conversation, in a new turn at its end. With `resume` ({stream, turn}: its
 * number in the conversation; view: a turn already on screen), continues that stream from its
 * start instead.
 */
export function start(q, resume) {
  const askHadFocus = document.activeElement === el.ask;
  const resumeStream = resume ? resume.stream : null;
  closeStream();
  stopCountdown();
  clearError();
  clearAnnouncements();
  let turn = resume && resume.view;
  if (turn) turn.reset();
  else turn = new Turn(q);
  const asked = resumeStream ? null : conversationId();

  const r = {
    q,
    turn,              // the turn on screen
    number: resume && typeof resume.turn === "number" ? resume.turn : null,
    asked,             // the conversation asked in, or null for a new one
    notice: "",        // said with the start: the asked conversation had expired
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
  else if (asked) url += "&conversation=" + encodeURIComponent(asked);
  let source;
  try {
    source = new EventSource(url);
  } catch {
    turn.remove();
    setState("error");
    setStatus("Failed — the question could not be sent");
    showError("The browser could not open a connection to the server.", true);
    changed();
    return;
  }
  es = source;
  turn.setBusy(true);
  setState("connecting");
  setStatus(resumeStream ? "Continuing the answer…" : "Connecting…");
  changed();
  turn.reveal();
  if (askHadFocus) el.stop.focus({ preventScroll: true });

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
  if (!msg || !isId(msg.stream)) return;
  r.stream = msg.stream;
  if (Number.isSafeInteger(msg.turn)) r.number = msg.turn;
  if (adopt(msg.conversation, r.asked)) {
    r.notice = EXPIRED;
    r.turn.note(EXPIRED);
  }
  // Asked: the question is on screen as the turn's heading; the box is for the follow-up.
  if (el.question.value === r.q) {
    el.question.value = "";
    el.question.dispatchEvent(new Event("input"));
  }
  const n = saved.eventNumber(ev.lastEventId, r.stream);
  if (n !== null && n > r.lastN) r.lastN = n;
  saved.save(r.q, r.stream, ev.lastEventId, r.number);
}

function onMessage(r, ev) {
  const n = saved.eventNumber(ev.lastEventId, r.stream);
  if (n !== null) {
    if (n <= r.lastN) return; // replayed after a reconnect: already shown
    r.lastN = n;
  }
  if (r.stream && performance.now() - r.savedAt > 250) {
    r.savedAt = performance.now();
    saved.save(r.q, r.stream, ev.lastEventId, r.number);
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
    r.turn.appendReasoning(msg.reasoning);
    if (r.tokens === 0) {
      setState("generating");
      setStatus("Thinking…");
    }
  }
  if (typeof msg.token === "string") {
    const now = performance.now() - r.t0;
    if (r.tokens === 0) {
      r.firstAt = now;
      r.turn.endThinking();
      announceStart(r.notice ? "Answer started. " + r.notice : "Answer started");
      changed(); // there is something to copy
    }
    r.tokens += 1;
    r.lastAt = now;
    r.turn.append(msg.token);
    showProgress(r);
    announceProgress(() => answerWords(r) + " so far");
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
  r.turn.showUsage(r.usage);
  announce("Answer complete, " + answerWords(r));
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
  announce("Answer stopped, " + answerWords(r));
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
  // Nothing was shown and nothing was kept: the question goes back to its box, not in a turn.
  r.turn.remove();
  if (el.question.value === "") {
    el.question.value = r.q;
    el.question.dispatchEvent(new Event("input"));
  }
  if (r.resumed) {
    saved.clear();
    setState("idle");
    setStatus("Ready — the answer in progress could not be continued");
    showError("The answer that was streaming before the page was reloaded could not be " +
      "continued: it has ended or expired. Ask again for a new answer.", true);
    return;
  }
  // Refused before streaming (HTTP 400/429/503): ask the server why.
  explainRefusal(r.q, () => run === r, r.asked !== null);
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
    start(r.q, { stream: r.stream, turn: r.number, view: r.turn });
  } else {
    settle(r);
    setState("stopped");
    setStatus("Stopped — " + plural(r.tokens, "token"));
  }
});
