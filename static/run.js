// A run of one question: one object holding all it knows, from its EventSource on /api/stream to
// the figures of its status line, and what each of the stream's events does to its turn. A
// dropped connection reconnects by itself (the EventSource sends Last-Event-ID; events already
// shown are ignored by their ids). How a run ends is endings.js; the page going away and coming
// back is lifecycle.js.

import { announce, announceProgress, announceStart } from "./announce.js";
import { adopt, conversationId } from "./conversation.js";
import * as end from "./endings.js";
import { isId } from "./id.js";
import { deferWhileLeaving } from "./lifecycle.js";
import { countWords } from "./markdown.js";
import * as saved from "./resume.js";
import { Turn } from "./turns.js";
import { el, getState, plural, rate, setState, setStatus } from "./view.js";

const STREAM_URL = "/api/stream";
/** A dropped connection that brings nothing back for this long is given up. */
const RECONNECT_GIVE_UP_MS = 30000;
/** The kept answer in progress is rewritten at most this often while events arrive. */
const SAVE_EVERY_MS = 250;
const EXPIRED = "The earlier conversation expired; this question starts a new one.";

export class Run {
  /**
   * Asks `q` in the conversation, in a new turn at its end. With `resume` ({stream, turn}: its
   * number in the conversation; view: a turn already on screen), continues that stream from its
   * start instead. `onChange()` runs whenever its stream opens or ends, or the answer gets its
   * first text. Nothing is sent before `open()`.
   */
  constructor(q, resume, onChange) {
    const resumeStream = resume ? resume.stream : null;
    let turn = resume && resume.view;
    if (turn) turn.reset();
    else turn = new Turn(q);
    this.q = q;
    this.turn = turn;            // the turn on screen
    this.number = resume && typeof resume.turn === "number" ? resume.turn : null;
    this.asked = resumeStream ? null : conversationId(); // asked in, or null for a new one
    this.notice = "";            // said with the start: the asked conversation had expired
    this.t0 = performance.now();
    this.tokens = 0;
    this.firstAt = null;         // ms after t0 of the first token
    this.lastAt = null;          // ms after t0 of the latest token
    this.finish = null;          // the finish reason, once the server gave it
    this.usage = null;
    this.limitedBy = null;       // "token_budget" when the budget lowered max_tokens and it ran out
    this.tokensLeft = null;      // the client's token budget after this answer, when one is set
    this.opened = false;         // a connection was open at least once
    this.stream = resumeStream || null; // the stream's id, once known
    this.lastN = -1;             // the number of the last event taken: later copies are ignored
    this.savedAt = 0;
    this.resumed = !!resumeStream;
    this.reconnecting = false;
    this.watchdog = 0;
    this.source = null;          // the EventSource while the stream is open, else null
    this.retired = false;        // a later run took the page's place
    this.changed = onChange;
  }

  /** Opens the stream; false (the run has ended) when the browser could not. */
  open() {
    let url = STREAM_URL + "?q=" + encodeURIComponent(this.q);
    if (this.resumed) {
      url += "&last_event_id=" + encodeURIComponent(saved.resumeFrom(this.stream));
    } else if (this.asked) {
      url += "&conversation=" + encodeURIComponent(this.asked);
    }
    let source;
    try {
      source = new EventSource(url);
    } catch {
      end.notSent(this);
      return false;
    }
    this.source = source;
    this.turn.setBusy(true);
    setState("connecting");
    setStatus(this.resumed ? "Continuing the answer…" : "Connecting…");
    this.changed();
    this.turn.reveal();
    // Events of a stream this run has closed (or replaced) are not heard.
    const heard = (handle) => (ev) => {
      if (this.source === source) handle(ev);
    };
    source.onopen = heard(() => this.onOpen());
    source.addEventListener("stream", heard((ev) => this.onStreamOpened(ev)));
    source.onmessage = heard((ev) => this.onMessage(ev));
    source.onerror = heard(() => this.onError(source));
    return true;
  }

  isOpen() {
    return this.source !== null;
  }

  /** Closes the stream (its events are no longer heard); the run itself is left as it is. */
  close() {
    if (this.source) {
      this.source.onopen = this.source.onmessage = this.source.onerror = null;
      this.source.close();
      this.source = null;
    }
  }

  /** A later run takes the page's place. */
  retire() {
    this.close();
    this.retired = true;
  }

  /** Asks the server to stop the answer for real (it would otherwise keep it going for a reload
   * to continue it). */
  cancel() {
    if (!this.stream) return;
    fetch(STREAM_URL + "/" + encodeURIComponent(this.stream) + "/cancel", {
      method: "POST",
      credentials: "same-origin",
      keepalive: true,
    }).catch(() => {});
  }

  /** The answer's words, counted in its source as received: every note counts them so (the
   * screen may not have drawn the latest text yet, and draws some words, a code block's
   * language, without text). */
  words() {
    return plural(countWords(this.turn.source()), "word");
  }

  showProgress() {
    if (getState() !== "generating") setState("generating");
    const speed = rate(this.tokens, this.lastAt - this.firstAt);
    setStatus("Generating… (" + plural(this.tokens, "token") + (speed ? ", " + speed : "") + ")");
  }

  // ---------------------------------------------------------------- the stream's events

  onOpen() {
    this.opened = true;
    if (this.reconnecting) {
      this.reconnecting = false;
      window.clearTimeout(this.watchdog);
      announce("Reconnected, the answer continues");
    }
    if (getState() === "connecting" || getState() === "reconnecting") {
      if (this.tokens > 0) this.showProgress();
      else {
        setState("waiting");
        setStatus("Waiting for the first token…");
      }
    }
  }

  /** The stream's opening event names it: remember it, for a reload to continue it. */
  onStreamOpened(ev) {
    let msg = null;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (!msg || !isId(msg.stream)) return;
    this.stream = msg.stream;
    if (Number.isSafeInteger(msg.turn)) this.number = msg.turn;
    if (adopt(msg.conversation, this.asked)) {
      this.notice = EXPIRED;
      this.turn.note(EXPIRED);
    }
    // Asked: the question is on screen as the turn's heading; the box is for the follow-up.
    if (el.question.value === this.q) {
      el.question.value = "";
      el.question.dispatchEvent(new Event("input"));
    }
    const n = saved.eventNumber(ev.lastEventId, this.stream);
    if (n !== null && n > this.lastN) this.lastN = n;
    saved.save(this.q, this.stream, ev.lastEventId, this.number);
  }

  onMessage(ev) {
    const n = saved.eventNumber(ev.lastEventId, this.stream);
    if (n !== null) {
      if (n <= this.lastN) return; // replayed after a reconnect: already shown
      this.lastN = n;
    }
    if (this.stream && performance.now() - this.savedAt > SAVE_EVERY_MS) {
      this.savedAt = performance.now();
      saved.save(this.q, this.stream, ev.lastEventId, this.number);
    }
    if (ev.data === "[DONE]") {
      end.done(this);
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
      end.failed(this, msg);
      return;
    }
    if (typeof msg.reasoning === "string" && msg.reasoning !== "") {
      this.turn.appendReasoning(msg.reasoning);
      if (this.tokens === 0) {
        setState("generating");
        setStatus("Thinking…");
      }
    }
    if (typeof msg.token === "string") this.onToken(msg.token);
    if (msg.finish_reason !== undefined && msg.finish_reason !== null) {
      this.finish = String(msg.finish_reason);
    }
    if (msg.usage && typeof msg.usage === "object") this.usage = msg.usage;
    if (msg.limited_by === "token_budget") this.limitedBy = msg.limited_by;
    if (msg.budget && Number.isInteger(msg.budget.tokens_remaining)) {
      this.tokensLeft = msg.budget.tokens_remaining;
    }
    if (msg.upstream === "fallback") this.turn.fromFallback(typeof msg.model === "string" ? msg.model : "");
  }

  onToken(text) {
    const now = performance.now() - this.t0;
    if (this.tokens === 0) {
      this.firstAt = now;
      this.turn.endThinking();
      announceStart(this.notice ? "Answer started. " + this.notice : "Answer started");
      this.changed(); // there is something to copy
    }
    this.tokens += 1;
    this.lastAt = now;
    this.turn.append(text);
    this.showProgress();
    announceProgress(() => this.words() + " so far");
  }

  onError(source) {
    // A reload or navigation away aborts the stream first: not a failure. Should the page stay
    // after all, the error is looked at then.
    if (deferWhileLeaving(() => {
      if (this.source === source) this.onError(source);
    })) {
      return;
    }
    if (this.finish !== null) {
      end.done(this); // the answer was complete; only the closing [DONE] went missing
      return;
    }
    if (source.readyState === EventSource.CONNECTING && this.opened) {
      this.onDropped();
      return;
    }
    if (this.opened) {
      end.lost(this, "The connection to the server was lost and the server could not continue " +
        "the answer.");
      return;
    }
    end.unanswered(this);
  }

  /** The connection dropped mid-answer: the EventSource reconnects by itself (Last-Event-ID). */
  onDropped() {
    if (this.reconnecting) return; // a further failed attempt: the first drop's deadline stands
    this.reconnecting = true;
    setState("reconnecting");
    setStatus("Reconnecting…");
    announce("Connection lost, reconnecting");
    this.watchdog = window.setTimeout(() => {
      if (this.isOpen()) {
        end.lost(this, "The connection to the server was lost and nothing came back for " +
          RECONNECT_GIVE_UP_MS / 1000 + " seconds.");
      }
    }, RECONNECT_GIVE_UP_MS);
  }
}
