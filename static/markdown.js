// The answer as Markdown while it streams: linear, incremental, and safe by construction.
//
// The source grows event by event. marked's lexer splits it into blocks; a finished block is
// rendered once (highlighted, if it is code) and kept in the DOM; only the last, growing block is
// rendered again, at most once per animation frame. Lexing starts where the kept blocks end, so
// a frame costs the size of the growing block, not of the whole answer.
//
// Safety: the renderer escapes raw HTML (shown as text), keeps links only for http:, https: and
// mailto:, and never makes an <img> (an image URL in an answer can carry data out: it becomes a
// link showing its alt text). DOMPurify then sanitises marked's output last and returns DOM
// nodes, which are inserted as they are: nothing is serialised back into HTML after sanitising.
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";
import hljs from "./vendor/highlight.esm.min.js";

const LINK_PROTOCOLS = ["http:", "https:", "mailto:"];
const LANGUAGE = /^[A-Za-z0-9_+#.-]{1,40}$/;
const CLOSING_FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*$/;
const OPENING_FENCE = /^ {0,3}(`{3,}|~{3,})/;

/** What marked's renderer may produce; anything else is removed. */
const PURIFY = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "input", "li", "ol", "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
  ],
  ALLOWED_ATTR: [
    "href", "title", "class", "align", "start", "type", "checked", "disabled", "rel", "target",
  ],
  // Any other attribute's value must pass ALLOWED_URI_REGEXP too, unless it is "URI-safe":
  // these ones are not URLs.
  ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i,
  ADD_URI_SAFE_ATTR: ["align", "start", "type", "rel", "target"],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

// Every link that survives sanitising opens apart from this page and tells it nothing.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A") {
    node.setAttribute("rel", "noopener noreferrer");
    node.setAttribute("target", "_blank");
  }
});

export function escapeHtml(text) {
  return String(text)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

/** The URL as the browser would read it, if its protocol is one a link may have; else null. */
export function safeUrl(href) {
  if (typeof href !== "string") return null;
  let url;
  try {
    url = new URL(href);
  } catch {
    return null; // relative, or not a URL at all
  }
  return LINK_PROTOCOLS.includes(url.protocol) ? url.href : null;
}

function anchor(url, title, inner, extraClass) {
  return '<a href="' + escapeHtml(url) + '"' +
    (extraClass ? ' class="' + extraClass + '"' : "") +
    (title ? ' title="' + escapeHtml(title) + '"' : "") +
    ' rel="noopener noreferrer" target="_blank">' + inner + "</a>";
}

// Set while finished blocks are rendered: only they are highlighted, once.
let highlighting = false;

const marked = new Marked({
  gfm: true,
  breaks: true,
  async: false,
  renderer: {
    html({ text, block }) {
      const shown = escapeHtml(text);
      return block ? '<p class="md-raw">' + shown + "</p>\n" : shown;
    },
    link({ href, title, tokens }) {
      const inner = this.parser.parseInline(tokens);
      const url = safeUrl(href);
      return url === null ? inner : anchor(url, title, inner, "");
    },
    image({ href, text }) {
      const label = escapeHtml(text || "image");
      const url = safeUrl(href);
      if (url === null) return '<span class="md-image">' + label + "</span>";
      return anchor(url, "Image, not loaded: " + url, label, "md-image");
    },
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s+/)[0];
      const known = LANGUAGE.test(language) ? language : "";
      let body = escapeHtml(text);
      if (highlighting && known && hljs.getLanguage(known)) {
        body = hljs.highlight(text, { language: known, ignoreIllegals: true }).value;
      }
      const classes = "hljs" + (known ? " language-" + known : "");
      return '<pre><code class="' + classes + '">' + body + "</code></pre>\n";
    },
    checkbox({ checked }) {
      return '<input type="checkbox" disabled' + (checked ? " checked" : "") + "> ";
    },
  },
});

/** marked's output for these tokens, sanitised, as a fragment of DOM nodes. */
function render(tokens, highlight) {
  highlighting = highlight;
  let html;
  try {
    html = marked.parser(tokens);
  } finally {
    highlighting = false;
  }
  const fragment = DOMPurify.sanitize(html, PURIFY);
  decorateCodeBlocks(fragment);
  return fragment;
}

/** Puts each code block in a frame with its language and its own Copy button. */
function decorateCodeBlocks(fragment) {
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const match = code ? /(?:^|\s)language-(\S+)/.exec(code.className) : null;
    const frame = document.createElement("div");
    frame.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    // Label and button text come from CSS, so the answer's text (selection, innerText) is the
    // code alone.
    if (match) head.dataset.lang = match[1];
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "code-copy";
    copy.setAttribute("aria-label", match ? "Copy the " + match[1] + " code" : "Copy the code");
    head.appendChild(copy);
    pre.replaceWith(frame);
    frame.append(head, pre);
  }
}

/** Whether a fenced code token has seen its closing fence (and the line after it began). */
function isClosedFence(token, followed) {
  if (token.type !== "code" || token.codeBlockStyle === "indented") return false;
  if (!followed && !token.raw.endsWith("\n")) return false; // "```" might yet become "```x"
  const lines = token.raw.replace(/\n$/, "").split("\n");
  if (lines.length < 2) return false;
  const open = OPENING_FENCE.exec(lines[0]);
  const close = CLOSING_FENCE.exec(lines[lines.length - 1]);
  return !!open && !!close && close[1][0] === open[1][0] && close[1].length >= open[1].length;
}

/** How many leading tokens are finished: nothing that may still arrive can change them. */
function finishedCount(tokens, final) {
  if (final) return tokens.length;
  let last = tokens.length - 1;
  while (last >= 0 && tokens[last].type === "space") last -= 1;
  if (last < 0) return 0;
  return isClosedFence(tokens[last], last < tokens.length - 1) ? tokens.length : last;
}

/**
 * A container whose content is the Markdown of a growing source.
 * `onRender()` runs after each change of the DOM (to follow the newest text).
 */
export class StreamingMarkdown {
  constructor(container, onRender) {
    this.container = container;
    this.onRender = onRender || (() => {});
    this.reset();
  }

  /** Empties the container and forgets the source. */
  reset() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.text = "";     // the source exactly as received (what Copy copies)
    this.md = "";       // the same with \r\n and \r as \n, as marked's lexer reads it
    this.cr = false;    // whether the last chunk ended in \r
    this.kept = 0;      // length of this.md rendered as finished blocks
    this.tail = [];     // the DOM nodes of the growing block(s)
    this.container.replaceChildren();
  }

  /** The Markdown source so far, exactly as it arrived. */
  source() {
    return this.text;
  }

  /** Adds text to the source; the screen catches up at the next animation frame. */
  append(chunk) {
    if (!chunk) return;
    this.text += chunk;
    let md = chunk;
    if (this.cr && md[0] === "\n") md = md.slice(1);
    this.cr = md.endsWith("\r");
    this.md += md.replace(/\r\n?/g, "\n");
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.update(false);
      });
    }
  }

  /** The source is complete: render all of it now, code highlighted. */
  finish() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.update(true);
  }

  update(final) {
    const rest = this.md.slice(this.kept);
    const tokens = marked.lexer(rest);
    let done = finishedCount(tokens, final);
    let length = 0;
    let whole = 0;
    tokens.forEach((token, i) => {
      whole += token.raw.length;
      if (i < done) length += token.raw.length;
    });
    // Should the lexer ever rewrite the text, block boundaries are unknown: keep it all growing.
    if (whole !== rest.length && !final) done = 0;
    if (done > 0) {
      const fragment = render(tokens.slice(0, done), true);
      this.container.insertBefore(fragment, this.tail[0] || null);
      this.kept += length;
    }
    for (const node of this.tail) node.remove();
    const fragment = render(tokens.slice(done), false);
    this.tail = Array.from(fragment.childNodes);
    this.container.appendChild(fragment);
    this.onRender();
  }
}

/** The answer's text as a person reads it, and its number of words. */
export function countWords(text) {
  if (typeof Intl === "object" && typeof Intl.Segmenter === "function") {
    let n = 0;
    for (const part of new Intl.Segmenter(undefined, { granularity: "word" }).segment(text)) {
      if (part.isWordLike) n += 1;
    }
    return n;
  }
  return text.split(/\s+/).filter(Boolean).length;
}
