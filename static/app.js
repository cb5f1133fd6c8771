// llm-stream — browser front-end.
//
// Plain JavaScript, no build step. Loaded with `defer`, so the DOM is ready.
// Model output is always treated as text (Text nodes / textContent), never HTML.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };

  var body = document.body;
  var form = $("ask-form");
  var question = $("question");
  var counter = $("counter");
  var askBtn = $("ask");
  var stopBtn = $("stop");
  var copyBtn = $("copy");
  var statusEl = $("status");
  var thinking = $("thinking");
  var thinkingNote = $("thinking-note");
  var reasoningEl = $("reasoning");
  var answerEl = $("answer");
  var errorEl = $("error");
  var usageEl = $("usage");
  var announcer = $("announcer");

  if (!form || !question || !askBtn || !stopBtn || !answerEl || !statusEl) {
    return;
  }

  var MAX_CHARS = (function () {
    var n = parseInt(body.getAttribute("data-max-query-chars") || "", 10);
    if (n > 0) return n;
    if (question.maxLength > 0) return question.maxLength;
    return 4000;
  })();

  var STREAM_URL = "/api/stream";
  var LIMITS_URL = "/api/limits";
  var FOLLOW_THRESHOLD_PX = 32;
  var LIMITS_TIMEOUT_MS = 8000;
  var NORMAL_FINISH = ["stop", "end_turn", "stop_sequence", "eos", "done"];
  var LENGTH_FINISH = ["length", "max_tokens", "max_output_tokens"];

  var es = null;          // the open EventSource, or null
  var run = null;         // per-question bookkeeping
  var checking = false;   // asking /api/limits why a request was refused
  var countdown = null;   // { timer, deadline } while a retry countdown runs
  var copyTimer = 0;

  // ---------------------------------------------------------------- helpers

  function countChars(s) {
    // Code points, matching the server's character count.
    return Array.from(s).length;
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function setState(state) {
    body.setAttribute("data-state", state);
    statusEl.setAttribute("data-state", state);
    // While tokens stream in, hold back live-region announcements of the
    // ever-changing token count; the final status is announced afterwards.
    statusEl.setAttribute("aria-busy", state === "generating" ? "true" : "false");
  }

  function getState() {
    return body.getAttribute("data-state") || "idle";
  }

  function setStatus(text) {
    statusEl.textContent = text;
  }

  function announce(text) {
    if (!announcer) return;
    announcer.textContent = "";
    // A fresh text node in a later task makes screen readers re-announce
    // even an identical message.
    window.setTimeout(function () { announcer.textContent = text; }, 50);
  }

  function showError(text) {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  }

  function clearError() {
    showError("");
  }

  function hasAnswer() {
    return answerEl.textContent.length > 0;
  }

  function updateButtons() {
    var streaming = es !== null;
    askBtn.disabled = streaming || checking || countdown !== null;
    stopBtn.disabled = !streaming;
    if (copyBtn) copyBtn.disabled = !hasAnswer();
  }

  function isNearBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight <= FOLLOW_THRESHOLD_PX;
  }

  // Whether the answer's view follows the newest text. A reader who scrolls
  // up (wheel, keys, touch, scrollbar) stops it at once, before a smooth
  // scroll has moved far enough for isNearBottom to notice; scrolling back
  // down to the bottom resumes it.
  var following = true;
  var lastAnswerTop = 0;

  function resetFollowing() {
    following = true;
    answerEl.scrollTop = 0;
    lastAnswerTop = 0;
  }

  answerEl.addEventListener("wheel", function (ev) {
    if (ev.deltaY < 0) following = false;
  }, { passive: true });

  answerEl.addEventListener("scroll", function () {
    var top = answerEl.scrollTop;
    if (top < lastAnswerTop - 1) {
      following = false;
    } else if (isNearBottom(answerEl)) {
      following = true;
    }
    lastAnswerTop = top;
  }, { passive: true });

  // Append text to a container through a single Text node, following the
  // newest text unless the reader has scrolled up to read.
  function appendText(el, key, text) {
    if (!text) return;
    var follow = el === answerEl ? following : isNearBottom(el);
    var node = run[key];
    if (!node || node.parentNode !== el) {
      node = document.createTextNode("");
      el.appendChild(node);
      run[key] = node;
    }
    node.appendData(text);
    if (follow) el.scrollTop = el.scrollHeight;
  }

  function elapsedMs() {
    return performance.now() - run.t0;
  }

  // ---------------------------------------------------------------- counter

  function updateCounter() {
    var n = countChars(question.value);
    counter.textContent = n + " / " + MAX_CHARS;
    counter.classList.toggle("is-over", n > MAX_CHARS);
    counter.classList.toggle("is-near", n <= MAX_CHARS && n >= Math.floor(MAX_CHARS * 0.9));
    if (question.getAttribute("aria-invalid") === "true" &&
        n <= MAX_CHARS && question.value.trim() !== "") {
      question.removeAttribute("aria-invalid");
    }
  }

  // ---------------------------------------------------------------- countdown

  function stopCountdown() {
    if (countdown) {
      window.clearInterval(countdown.timer);
      countdown = null;
    }
  }

  // Disable Ask for `secs` seconds; render(left) is called whenever the
  // number of whole seconds left changes, onEnd() once it reaches 0.
  function startCountdown(secs, render, onEnd) {
    stopCountdown();
    var deadline = Date.now() + secs * 1000;
    var shown = -1;
    var tick = function () {
      var left = Math.ceil((deadline - Date.now()) / 1000);
      if (left <= 0) {
        stopCountdown();
        updateButtons();
        onEnd();
        return;
      }
      if (left !== shown) {
        shown = left;
        render(left);
      }
    };
    countdown = { timer: window.setInterval(tick, 200), deadline: deadline };
    updateButtons();
    tick();
  }

  // ---------------------------------------------------------------- stream

  function closeStream() {
    if (es) {
      es.onopen = es.onmessage = es.onerror = null;
      es.close();
      es = null;
    }
  }

  // Runs after every end of a stream (done, stopped, failed, refused).
  function settle() {
    var stopHadFocus = document.activeElement === stopBtn;
    closeStream();
    if (thinkingNote) thinkingNote.textContent = "";
    updateButtons();
    if (stopHadFocus) {
      (askBtn.disabled ? question : askBtn).focus();
    }
  }

  function start(q) {
    var askHadFocus = document.activeElement === askBtn;
    closeStream();
    stopCountdown();
    clearError();

    answerEl.textContent = "";
    resetFollowing();
    reasoningEl.textContent = "";
    thinking.hidden = true;
    thinking.open = false;
    if (thinkingNote) thinkingNote.textContent = "";
    usageEl.textContent = "";
    usageEl.hidden = true;

    run = {
      q: q,
      t0: performance.now(),
      tokens: 0,
      firstAt: null,
      finish: null,
      usage: null,
      opened: false,
      received: false,
      reasoning: false,
      answerNode: null,
      reasoningNode: null
    };

    var source;
    try {
      source = new EventSource(STREAM_URL + "?q=" + encodeURIComponent(q));
    } catch (e) {
      setState("error");
      setStatus("Failed — the question could not be sent");
      showError("The browser could not open a connection to the server.");
      updateButtons();
      return;
    }
    es = source;
    var thisRun = run;

    setState("connecting");
    setStatus("Connecting…");
    updateButtons();
    if (askHadFocus) stopBtn.focus();

    source.onopen = function () {
      if (es !== source) return;
      thisRun.opened = true;
      if (getState() === "connecting") {
        setState("waiting");
        setStatus("Waiting for the first token…");
      }
    };

    source.onmessage = function (ev) {
      if (es !== source) return;
      onMessage(thisRun, ev.data);
    };

    source.onerror = function () {
      // Always close: otherwise the browser reconnects and asks the model again.
      source.close();
      if (es !== source) return;
      onStreamError(thisRun);
    };
  }

  function onMessage(r, data) {
    r.received = true;
    if (data === "[DONE]") {
      finish(r);
      return;
    }
    var msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      return; // not ours to render
    }
    if (!msg || typeof msg !== "object") return;

    if (msg.error !== undefined && msg.error !== null) {
      fail(r, msg);
      return;
    }

    var progressed = false;
    if (typeof msg.reasoning === "string" && msg.reasoning !== "") {
      if (!r.reasoning) {
        r.reasoning = true;
        thinking.hidden = false;
      }
      if (thinkingNote) thinkingNote.textContent = "…";
      appendText(reasoningEl, "reasoningNode", msg.reasoning);
      progressed = true;
    }
    if (typeof msg.token === "string") {
      r.tokens += 1;
      if (thinkingNote) thinkingNote.textContent = "";
      appendText(answerEl, "answerNode", msg.token);
      if (copyBtn && copyBtn.disabled && hasAnswer()) copyBtn.disabled = false;
      progressed = true;
    }
    if (progressed) {
      if (r.firstAt === null) r.firstAt = elapsedMs();
      if (getState() !== "generating") setState("generating");
      setStatus(r.tokens === 0 && r.reasoning
        ? "Thinking…"
        : "Generating… (" + plural(r.tokens, "token") + ")");
    }
    if (msg.finish_reason !== undefined && msg.finish_reason !== null) {
      r.finish = String(msg.finish_reason);
    }
    if (msg.usage && typeof msg.usage === "object") {
      r.usage = msg.usage;
    }
  }

  function finish(r) {
    settle();
    var secs = (elapsedMs() / 1000).toFixed(1);
    var text = "Done — " + plural(r.tokens, "token") + " in " + secs + " s";
    if (r.firstAt !== null) {
      text += ", first token after " + Math.round(r.firstAt) + " ms";
    }
    if (r.finish && LENGTH_FINISH.indexOf(r.finish) !== -1) {
      text += " — the answer was cut at the length limit.";
    } else if (r.finish && NORMAL_FINISH.indexOf(r.finish) === -1) {
      text += " — the model stopped early (" + r.finish + ").";
    }
    setState("done");
    setStatus(text);
    showUsage(r.usage);
  }

  function showUsage(u) {
    if (!u) return;
    var p = num(u.prompt_tokens);
    var c = num(u.completion_tokens);
    var parts = [];
    if (p !== null) parts.push("prompt " + plural(p, "token"));
    if (c !== null) parts.push("completion " + plural(c, "token"));
    if (!parts.length) return;
    usageEl.textContent = "Usage: " + parts.join(" · ");
    usageEl.hidden = false;
  }

  function stop() {
    if (!es || !run) return;
    var r = run;
    settle();
    setState("stopped");
    setStatus("Stopped — " + plural(r.tokens, "token"));
  }

  // In-band error sent by the server: {"error": code, "message": text, "retry_after"?: N}
  function fail(r, msg) {
    settle();
    var message = typeof msg.message === "string" && msg.message.trim() !== ""
      ? msg.message
      : "Something went wrong while generating the answer.";
    var base = r.tokens > 0
      ? "Failed after " + plural(r.tokens, "token")
      : "Failed before the answer started";
    setState("error");
    showError(message);
    announce(message);

    var wait = num(msg.retry_after);
    if (wait !== null && wait > 0) {
      startCountdown(Math.ceil(wait), function (left) {
        setStatus(base + " — you can try again in " + left + " s");
      }, function () {
        setStatus(base + " — you can try again now");
      });
    } else {
      setStatus(base);
    }
  }

  function onStreamError(r) {
    closeStream();
    if (r.finish !== null) {
      // The answer was complete; only the closing [DONE] went missing.
      finish(r);
      return;
    }
    if (r.received || r.opened) {
      settle();
      setState("error");
      setStatus(r.tokens > 0
        ? "Failed after " + plural(r.tokens, "token") + " — connection lost"
        : "Failed — connection lost");
      var m = "The connection to the server was lost before the answer was complete. Please try again.";
      showError(m);
      announce(m);
      return;
    }
    // Refused before streaming (HTTP 400/429/503): EventSource cannot read
    // the body, so ask the server why.
    explainRefusal(r);
  }

  function fetchLimits() {
    var ctrl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = ctrl ? window.setTimeout(function () { ctrl.abort(); }, LIMITS_TIMEOUT_MS) : 0;
    return fetch(LIMITS_URL, {
      method: "GET",
      cache: "no-store",
      credentials: "same-origin",
      headers: { "Accept": "application/json" },
      signal: ctrl ? ctrl.signal : undefined
    }).then(function (res) {
      if (!res.ok) throw new Error("HTTP " + res.status);
      return res.json();
    }).then(function (json) {
      if (!json || typeof json !== "object") throw new Error("bad limits");
      return json;
    }).finally(function () {
      if (timer) window.clearTimeout(timer);
    });
  }

  function explainRefusal(r) {
    checking = true;
    settle();
    setStatus("Checking why the question was not accepted…");

    fetchLimits().then(function (l) {
      if (run !== r) return;
      checking = false;
      var limit = num(l.limit) || 0;
      var remaining = num(l.remaining);
      var reset = num(l.reset_secs);
      var open = num(l.streams_open);
      var maxOpen = num(l.max_streams_per_client);
      var maxChars = num(l.max_query_chars);

      if (limit > 0 && remaining !== null && remaining <= 0) {
        setState("refused");
        setStatus("Refused — rate limit reached");
        var secs = Math.max(1, Math.ceil(reset || 0));
        announce("Rate limit reached — try again in " + secs + " seconds.");
        startCountdown(secs, function (left) {
          showError("Rate limit reached — try again in " + left + " s");
        }, function () {
          showError("The rate limit has reset — you can ask again now.");
          setStatus("Ready — the rate limit has reset");
        });
        return;
      }

      if (maxOpen !== null && maxOpen > 0 && open !== null && open >= maxOpen) {
        setState("refused");
        setStatus("Refused — too many open streams");
        var m1 = "Too many answers are streaming for you at once (" + open + " of " +
          maxOpen + " allowed). Stop or close the answers in your other tabs, then try again.";
        showError(m1);
        announce(m1);
        updateButtons();
        return;
      }

      if (maxChars !== null && maxChars > 0 && countChars(r.q) > maxChars) {
        setState("refused");
        setStatus("Refused — the question is too long");
        var m2 = "The question is " + countChars(r.q) + " characters long; the server accepts at most " +
          maxChars + ". Please shorten it.";
        showError(m2);
        announce(m2);
        updateButtons();
        return;
      }

      setState("refused");
      setStatus("Refused — the server is busy");
      var m3 = "The server is busy or at capacity right now, or it did not accept this question. " +
        "Please try again in a few seconds.";
      showError(m3);
      announce(m3);
      updateButtons();
    }).catch(function () {
      if (run !== r) return;
      checking = false;
      setState("error");
      setStatus("Failed — the server cannot be reached");
      var m = "The server cannot be reached. Check your connection and try again.";
      showError(m);
      announce(m);
      updateButtons();
    });
  }

  // ---------------------------------------------------------------- submit

  function reject(message, status) {
    setState("idle");
    setStatus(status);
    showError(message);
    question.setAttribute("aria-invalid", "true");
    question.focus();
  }

  function submit() {
    if (es || checking || countdown) return;
    var q = question.value;
    if (q.trim() === "") {
      reject("Type a question first.", "Not sent — the question is empty");
      return;
    }
    var n = countChars(q);
    if (n > MAX_CHARS) {
      reject("Your question is " + n + " characters long; the limit is " + MAX_CHARS +
        ". Please shorten it by " + plural(n - MAX_CHARS, "character") + ".",
        "Not sent — the question is too long (" + n + " / " + MAX_CHARS + ")");
      return;
    }
    question.removeAttribute("aria-invalid");
    start(q);
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    submit();
  });

  question.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter" || ev.shiftKey || ev.altKey || ev.isComposing || ev.keyCode === 229) {
      return;
    }
    ev.preventDefault();
    if (!askBtn.disabled) submit();
  });

  question.addEventListener("input", updateCounter);

  stopBtn.addEventListener("click", stop);

  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && es) {
      ev.preventDefault();
      stop();
    }
  });

  // ---------------------------------------------------------------- copy

  function legacyCopy(text) {
    var active = document.activeElement;
    var helper = document.createElement("textarea");
    helper.className = "clipboard-helper";
    helper.setAttribute("readonly", "");
    helper.setAttribute("aria-hidden", "true");
    helper.value = text;
    document.body.appendChild(helper);
    helper.select();
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    helper.remove();
    if (active && typeof active.focus === "function") active.focus();
    return ok;
  }

  function flashCopy(label) {
    copyBtn.textContent = label;
    window.clearTimeout(copyTimer);
    copyTimer = window.setTimeout(function () { copyBtn.textContent = "Copy"; }, 1600);
    announce(label === "Copied" ? "Answer copied to the clipboard." : "Could not copy the answer.");
  }

  if (copyBtn) {
    copyBtn.addEventListener("click", function () {
      var text = answerEl.textContent;
      if (!text) return;
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () {
          flashCopy("Copied");
        }, function () {
          flashCopy(legacyCopy(text) ? "Copied" : "Copy failed");
        });
      } else {
        flashCopy(legacyCopy(text) ? "Copied" : "Copy failed");
      }
    });
  }

  // ---------------------------------------------------------------- init

  // Never leave a stream open when the page goes away or into the bfcache.
  window.addEventListener("pagehide", function () {
    if (es) {
      closeStream();
      if (run) {
        setState("stopped");
        setStatus("Stopped — " + plural(run.tokens, "token"));
      }
      updateButtons();
    }
  });

  setState("idle");
  updateCounter();
  updateButtons();
})();
