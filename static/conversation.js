// The conversation the page asks in: its id, kept in sessionStorage so that a reload keeps it,
// and its earlier turns, fetched back from the server after a reload. The history itself lives on
// the server (GET /api/conversations/<id>), never here nor in a URL.

import { isId } from "./id.js";

const KEY = "llm-stream.conversation";
const URL_BASE = "/api/conversations/";
const FETCH_TIMEOUT_MS = 8000;

let current = load();

function load() {
  try {
    const id = sessionStorage.getItem(KEY);
    return isId(id) ? id : null;
  } catch {
    return null;
  }
}

/** The conversation's id, or null before the first question (or after New conversation). */
export function conversationId() {
  return current;
}

/**
 * The server named the conversation the question went to. Returns true when it is not the one
 * asked in: the asked one had expired (or was unknown) and this question starts a new one.
 */
export function adopt(id, asked) {
  if (!isId(id)) return false;
  current = id;
  try {
    sessionStorage.setItem(KEY, id);
  } catch {
    // Storage full or forbidden: a reload then starts a new conversation.
  }
  return typeof asked === "string" && asked !== id;
}

/** New conversation: the id is forgotten; the next question starts afresh. */
export function forget() {
  current = null;
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // as above
  }
}

/**
 * The stored turns of the saved conversation, oldest first: `[{question, answer}]`; `[]` when
 * there is none. A conversation the server no longer knows (404) is forgotten quietly; any other
 * failure keeps the id (a later question may still follow it up) and shows no turns.
 */
export async function fetchTurns() {
  const id = current;
  if (!id) return [];
  const ctrl = new AbortController();
  const timer = window.setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  try {
    const res = await fetch(URL_BASE + encodeURIComponent(id), {
      cache: "no-store",
      credentials: "same-origin",
      headers: { "Accept": "application/json" },
      signal: ctrl.signal,
    });
    if (res.status === 404) {
      if (current === id) forget();
      return [];
    }
    if (!res.ok) return [];
    const json = await res.json();
    const turns = json && Array.isArray(json.turns) ? json.turns : [];
    return turns.filter((t) => t && typeof t.question === "string" &&
      typeof t.answer === "string");
  } catch {
    return [];
  } finally {
    window.clearTimeout(timer);
  }
}
