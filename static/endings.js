// How a run (run.js) ends, every way in one place: done; stopped by the reader, or found stopped
// when the page came back; failed (the server's in-band error); lost (the connection, for good);
// unanswered (nothing shown: refused before streaming, or a reload's answer that had ended); not
// sent. Each settles the run first, then says how it ended: the state, the status line, the
// error box, the screen reader; and forgets the answer kept for a reload, which has ended.

import { announce, announceError } from "./announce.js";
import { explainRefusal, startCountdown } from "./refusals.js";
import * as saved from "./resume.js";
import { el, num, plural, rate, setState, setStatus, showError } from "./view.js";

const NORMAL_FINISH = ["stop", "end_turn", "stop_sequence", "eos", "done"];
const LENGTH_FINISH = ["length", "max_tokens", "max_output_tokens"];

/** Runs first at every end: the stream closed, the turn rendered whole and no longer busy. */
function settle(r) {
  // Focus goes back to the question box, for the follow-up, unless the reader is elsewhere.
  const focus = document.activeElement;
  const fromForm = focus === el.stop || focus === el.ask;
  const fromNowhere = !focus || focus === document.body;
  window.clearTimeout(r.watchdog);
  r.close();
  r.turn.finish();
  r.turn.endThinking();
  r.turn.setBusy(false);
  r.changed();
  if (fromForm || fromNowhere) el.question.focus({ preventScroll: fromNowhere });
}

/** The closing [DONE] (or a finish reason and then the end of the stream). */
export function done(r) {
  settle(r);
  saved.clear();
  const secs = ((performance.now() - r.t0) / 1000).toFixed(1);
  let text = "Done — " + plural(r.tokens, "token") + " in " + secs + " s";
  if (r.firstAt !== null) text += ", first token after " + Math.round(r.firstAt) + " ms";
  const speed = rate(r.tokens, r.lastAt - r.firstAt);
  if (speed) text += ", " + speed;
  if (r.limitedBy === "token_budget") {
    text += " — the answer stopped early because your token budget ran low.";
  } else if (r.finish && LENGTH_FINISH.includes(r.finish)) {
    text += " — the answer was cut at the length limit.";
  } else if (r.finish && !NORMAL_FINISH.includes(r.finish)) {
    text += " — the model stopped early (" + r.finish + ").";
  }
  setState("done");
  setStatus(text);
  r.turn.showUsage(r.usage, r.tokensLeft);
  announce("Answer complete, " + r.words());
}

/** Stop and Escape: the model stops for real. */
export function stopped(r) {
  r.cancel();
  settle(r);
  saved.clear();
  setState("stopped");
  setStatus("Stopped — " + plural(r.tokens, "token"));
  announce("Answer stopped, " + r.words());
}

/** Back from the back-forward cache with a stream that was never named: it cannot be continued. */
export function interrupted(r) {
  settle(r);
  setState("stopped");
  setStatus("Stopped — " + plural(r.tokens, "token"));
}

/** The server's in-band error: {"error": code, "message": text, "retry_after"?: N}. */
export function failed(r, msg) {
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

/** The connection is gone and the answer with it: `why`, in words. */
export function lost(r, why) {
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

/** The stream failed before it ever opened: nothing was shown and nothing was kept, so the
 * question goes back to its box, not in a turn. */
export function unanswered(r) {
  settle(r);
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
  explainRefusal(r.q, () => !r.retired, r.asked);
}

/** The browser would not even open the stream. */
export function notSent(r) {
  r.turn.remove();
  setState("error");
  setStatus("Failed — the question could not be sent");
  showError("The browser could not open a connection to the server.", true);
  r.changed();
}
