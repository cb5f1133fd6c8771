// The question being asked, for the page's controls (app.js): ask, stop, and whether an answer
// streams. Each question is one run (run.js: its stream and all it knows), in the conversation
// (conversation.js), rendered in its own turn (turns.js), ending one way (endings.js); this module
// holds the page's run, the latest one, and hands it to the page's lifecycle (lifecycle.js).

import { clearAnnouncements } from "./announce.js";
import * as end from "./endings.js";
import { watchPage } from "./lifecycle.js";
import { stopCountdown } from "./refusals.js";
import { Run } from "./run.js";
import { clearError, el } from "./view.js";

let current = null;      // the page's run: the question asked last, or null
let changed = () => {};

/** `callback()` runs whenever a stream opens or ends, or the answer gets its first text. */
export function onStreamChange(callback) {
  changed = callback;
}

export function isStreaming() {
  return current !== null && current.isOpen();
}

/** The question last asked, or null. */
export function lastQuestion() {
  return current ? current.q : null;
}

/**
 * Asks `q` in the conversation, in a new turn at its end. With `resume` ({stream, turn}: its
 * number in the conversation; view: a turn already on screen), continues that stream from its
 * start instead.
 */
export function start(q, resume) {
  const askHadFocus = document.activeElement === el.ask;
  if (current) current.retire();
  stopCountdown();
  clearError();
  clearAnnouncements();
  current = new Run(q, resume, () => changed());
  if (current.open() && askHadFocus) el.stop.focus({ preventScroll: true });
}

/** Stop and Escape: the model stops for real (the server would otherwise keep the answer going
 * for a reload to continue it). */
export function stop() {
  if (isStreaming()) end.stopped(current);
}

watchPage(() => current, (r) => start(r.q, { stream: r.stream, turn: r.number, view: r.turn }));
