// The answer in progress, kept in sessionStorage so that a reload (or a tab duplicated from this
// one) shows the question and continues the answer. What is kept: the question, the stream's id,
// the last event id seen and the answer's turn in its conversation (the turns before it are
// fetched back; this one is not stored until it ends). The text shown before a reload goes with the page, so the new page
// resumes from the stream's first event (`<stream>:0`) and the server replays the answer exactly,
// with the same ids; keeping the partial Markdown here instead would mean rewriting a growing
// string on every event.

import { isId } from "./id.js";

const KEY = "llm-stream.answer";

/** The event id's number: `<stream>:<n>` → n; null for anything else. */
export function eventNumber(id, stream) {
  if (typeof id !== "string") return null;
  const colon = id.lastIndexOf(":");
  if (colon < 0) return null;
  if (stream && id.slice(0, colon) !== stream) return null;
  const n = Number(id.slice(colon + 1));
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

export function save(q, stream, lastId, turn) {
  try {
    sessionStorage.setItem(KEY, JSON.stringify({ q, stream, lastId, turn }));
  } catch {
    // Storage full or forbidden: a reload then simply shows an empty page.
  }
}

export function clear() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // as above
  }
}

/** The answer a previous page left in progress, or null. */
export function load() {
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    saved = null;
  }
  if (!saved || typeof saved.q !== "string" || !isId(saved.stream)) {
    return null;
  }
  return saved;
}

/** Where a resumed stream starts: after its opening event, so every token is replayed. */
export function resumeFrom(stream) {
  return stream + ":0";
}
