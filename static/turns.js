// The conversation on screen: one <article> per turn, oldest first, each with the question as its
// heading, the reasoning while the model thinks, the answer rendered as Markdown in its own box
// (which follows the newest text while it streams), and the answer's own Copy and usage line.
//
// Nothing here is a live region: announce.js speaks for the page. An answer is aria-busy while it
// streams.

import { StreamingMarkdown } from "./markdown.js";
import { num, plural } from "./view.js";

const list = document.getElementById("turns");
const empty = document.getElementById("conversation-empty");

/** The Turn of each article on screen. */
const turns = new WeakMap();
let made = 0;

const FOLLOW_THRESHOLD_PX = 32;

function isNearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight <= FOLLOW_THRESHOLD_PX;
}

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class Turn {
  /** A new turn at the end of the conversation, asking `question`. */
  constructor(question) {
    made += 1;
    const id = "turn-" + made;
    this.question = question;
    this.article = make("article", "turn");
    this.article.id = id;
    this.article.setAttribute("aria-labelledby", id + "-question");
    const heading = make("h3", "turn-question", question);
    heading.id = id + "-question";

    this.thinking = make("details", "thinking");
    this.thinking.hidden = true;
    const summary = make("summary");
    this.thinkingLabel = make("span", "thinking-label", "Thinking");
    this.thinkingNote = make("span", "thinking-note");
    summary.append(this.thinkingLabel, this.thinkingNote);
    this.reasoning = make("div", "reasoning");
    this.reasoning.tabIndex = 0;
    this.reasoning.setAttribute("aria-label", "Model reasoning");
    this.thinking.append(summary, this.reasoning);
    this.thinkingSince = null;

    this.answer = make("div", "answer markdown");
    this.answer.tabIndex = 0;
    this.answer.setAttribute("aria-label", "Answer");
    this.answer.setAttribute("aria-busy", "false");

    const foot = make("div", "turn-foot");
    this.copy = make("button", "btn btn-small answer-copy", "Copy");
    this.copy.type = "button";
    this.copy.disabled = true;
    // Its name is what it does; which answer it copies, its description.
    this.copy.setAttribute("aria-describedby", heading.id);
    this.usage = make("p", "usage");
    this.usage.hidden = true;
    this.answeredBy = make("p", "answered-by");
    this.answeredBy.hidden = true;
    foot.append(this.copy, this.usage, this.answeredBy);

    this.article.append(heading, this.thinking, this.answer, foot);
    this.markdown = new StreamingMarkdown(this.answer, () => this.follow());
    this.watchScrolling();
    turns.set(this.article, this);
    list.appendChild(this.article);
    empty.hidden = true;
  }

  /** Empties the answer and the reasoning, for a stream replayed from its start. */
  reset() {
    this.markdown.reset();
    this.reasoning.textContent = "";
    this.thinking.hidden = true;
    this.thinking.open = false;
    this.thinkingLabel.textContent = "Thinking";
    this.thinkingNote.textContent = "";
    this.thinkingSince = null;
    this.following = true;
    this.copy.disabled = true;
    this.showUsage(null);
    this.answeredBy.hidden = true;
  }

  /** The answer's Markdown source, exactly as it arrived (what its Copy copies). */
  source() {
    return this.markdown.source();
  }

  append(text) {
    this.markdown.append(text);
    this.copy.disabled = false;
  }

  /** The answer is complete (or ended): render all of it now. */
  finish() {
    this.markdown.finish();
    this.copy.disabled = this.source() === "";
    this.article.classList.toggle("is-empty", this.source() === "");
  }

  setBusy(busy) {
    this.answer.setAttribute("aria-busy", busy ? "true" : "false");
    this.article.classList.toggle("is-streaming", busy);
  }

  /** A sentence above the answer (e.g. that the earlier conversation expired). */
  note(text) {
    const p = make("p", "turn-note", text);
    this.article.insertBefore(p, this.thinking);
  }

  /** The answer's token usage as the server reported it (`null`: none), and the client's token
   *  budget left after it (`null`: no budget). */
  showUsage(u, left = null) {
    const p = u ? num(u.prompt_tokens) : null;
    const c = u ? num(u.completion_tokens) : null;
    const parts = [];
    if (p !== null) parts.push("prompt " + plural(p, "token"));
    if (c !== null) parts.push("completion " + plural(c, "token"));
    if (left !== null) parts.push(plural(left, "token") + " left in your budget");
    this.usage.textContent = parts.length ? "Usage: " + parts.join(" · ") : "";
    this.usage.hidden = !parts.length;
  }

  /** The answer came from the server's fallback model (its primary had failed): say so, quietly. */
  fromFallback(model) {
    this.answeredBy.textContent =
      "Answered by the fallback model" + (model ? " (" + model + ")" : "") + ".";
    this.answeredBy.hidden = false;
  }

  /** Brings the turn's question to the top of the view (as far as the page can scroll). */
  reveal() {
    this.article.scrollIntoView({ block: "start", behavior: "instant" });
  }

  remove() {
    this.markdown.reset();
    this.article.remove();
    if (!list.firstElementChild) empty.hidden = false;
  }

  // ---------------------------------------------------------------- the reasoning

  /** Reasoning text, shown as plain text, open while the model thinks. */
  appendReasoning(text) {
    if (this.thinkingSince === null) {
      this.thinkingSince = performance.now();
      this.thinking.hidden = false;
      this.thinking.open = true;
    }
    this.thinkingNote.textContent = "…";
    const follow = isNearBottom(this.reasoning);
    const last = this.reasoning.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) last.appendData(text);
    else this.reasoning.appendChild(document.createTextNode(text));
    if (follow) this.reasoning.scrollTop = this.reasoning.scrollHeight;
  }

  /** The answer started (or the stream ended): the reasoning folds into "Thought for N s". */
  endThinking() {
    this.thinkingNote.textContent = "";
    if (this.thinkingSince === null || this.thinkingLabel.textContent !== "Thinking") return;
    const secs = Math.max(1, Math.round((performance.now() - this.thinkingSince) / 1000));
    this.thinkingLabel.textContent = "Thought for " + secs + " s";
    this.thinking.open = false;
  }

  // ---------------------------------------------------------------- following the newest text

  /** After the answer's content changed: keep the newest text in view unless the reader left it. */
  follow() {
    if (this.following) this.answer.scrollTop = this.answer.scrollHeight;
  }

  // A reader who scrolls up (wheel, keys, touch, scrollbar) stops the following at once, before
  // a smooth scroll has moved far enough for isNearBottom to notice; scrolling back down to the
  // bottom resumes it.
  watchScrolling() {
    this.following = true;
    let lastTop = 0;
    let lastHeight = 0;
    const box = this.answer;
    box.addEventListener("wheel", (ev) => {
      if (ev.deltaY < 0) this.following = false;
    }, { passive: true });
    box.addEventListener("scroll", () => {
      const top = box.scrollTop;
      const height = box.scrollHeight;
      if (height < lastHeight - 1) {
        // The growing block became shorter (a paragraph turned into a heading …): the browser
        // moved the view, not the reader.
      } else if (top < lastTop - 1) {
        this.following = false;
      } else if (isNearBottom(box)) {
        this.following = true;
      }
      lastTop = top;
      lastHeight = height;
    }, { passive: true });
  }
}

/** A finished turn, as the server keeps it: the answer rendered whole. */
export function showTurn(question, answer) {
  const turn = new Turn(question);
  if (answer) turn.append(answer);
  turn.finish();
  return turn;
}

/** The Turn that `node` belongs to, or null. */
export function turnOf(node) {
  const article = node instanceof Element ? node.closest(".turn") : null;
  return article ? turns.get(article) || null : null;
}

export function hasTurns() {
  return list.firstElementChild !== null;
}

/** The last turn on screen, or null. */
export function lastTurn() {
  const article = list.lastElementChild;
  return article ? turns.get(article) || null : null;
}

/** Empties the conversation on screen. */
export function clearTurns() {
  for (const article of Array.from(list.children)) turns.get(article)?.markdown.reset();
  list.replaceChildren();
  empty.hidden = false;
}

/** Where clicks on a turn's buttons are heard (each answer's Copy, each code block's Copy). */
export const turnList = list;
