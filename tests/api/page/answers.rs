//! What a person sees while an answer streams: text as it arrives, Stop, Copy, scrolling, the
//! status line's figures.

use std::time::Duration;

use fantoccini::key::Key;
use serde_json::Value;

use super::*;

#[tokio::test]
async fn the_answer_streams_onto_the_page_token_by_token_and_ends_with_the_exact_text() {
    // Arrange
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(slow_answer(&TOKENS, Duration::from_millis(300))));
    // As laid out: the tokens' text, the line break kept, the paragraph's leading spaces and
    // runs of spaces gone (Markdown), the blank line a paragraph break.
    let expected = "Streaming answers arrive token by token.\nUnicode: 你好，世界 — 日本語 🦀🚀 café \
                    naïve Ångström\n\ntwo spaces kept — the end.";
    let browser = open_page(&app).await;
    // Every change of state, status or answer, as the page made it (no polling gaps).
    browser
        .js("window.__history = [];
             const record = () => window.__history.push({
                 state: document.body.dataset.state,
                 status: document.getElementById('status').textContent,
                 answer: document.querySelector('#turns > .turn:last-child .answer')?.innerText ?? '',
                 at: performance.now(),
             });
             new MutationObserver(record).observe(document.body, {
                 attributes: true, attributeFilter: ['data-state'],
                 childList: true, characterData: true, subtree: true,
             });")
        .await;

    // Act
    ask(&browser, "How do answers stream?").await;
    let partial = browser
        .wait_for(
            "part of the answer while it is generating",
            &format!(
                "{VIEW} return view.state === 'generating' && view.answer !== '' ? view : null;"
            ),
            &describe(),
        )
        .await;
    let done = wait_for_state(&browser, "done").await;

    // Assert: text was on screen, and growing, before the mock had sent it all.
    let partial: View = serde_json::from_value(partial).expect("a view");
    assert!(
        partial.answer.len() < expected.len() && expected.starts_with(&partial.answer),
        "while generating the page showed {:?}",
        partial.answer
    );
    let history: Vec<Value> =
        serde_json::from_value(browser.js("return window.__history;").await).expect("a history");
    let mut states: Vec<&str> = history.iter().filter_map(|h| h["state"].as_str()).collect();
    states.dedup();
    assert_eq!(
        states,
        ["idle", "connecting", "waiting", "generating", "done"]
    );
    assert!(
        history
            .iter()
            .any(|h| h["status"] == "Waiting for the first token…"),
        "{history:?}"
    );
    let growing: Vec<&Value> = history
        .iter()
        .filter(|h| h["state"] == "generating")
        .collect();
    let mut lengths: Vec<usize> = growing
        .iter()
        .map(|h| h["answer"].as_str().expect("text").len())
        .collect();
    lengths.dedup();
    assert!(
        lengths.len() >= 10 && lengths.windows(2).all(|w| w[0] < w[1]),
        "the answer should grow step by step, got lengths {lengths:?}"
    );
    let first_at = growing[0]["at"].as_f64().expect("a time");
    let done_at = history.last().expect("a change")["at"]
        .as_f64()
        .expect("a time");
    assert!(
        done_at - first_at > 1000.0,
        "the text should arrive over the ~2.5 s the mock takes, not at once: {} ms",
        done_at - first_at
    );
    assert!(
        growing.iter().any(|h| {
            let status = h["status"].as_str().expect("text");
            status.starts_with("Generating… (")
                && status.contains(" tokens, ")
                && status.ends_with(" tokens/s)")
        }),
        "the status should count tokens and their rate while generating: {growing:?}"
    );

    // Assert: the final text is the mock's answer to the byte, and the status sums it up.
    assert_eq!(done.answer, expected);
    assert!(
        done.status.starts_with("Done — 20 tokens in ")
            && done.status.contains(" s, first token after ")
            && done.status.ends_with(" tokens/s"),
        "status: {:?}",
        done.status
    );
    let rate: f64 = done
        .status
        .rsplit(", ")
        .next()
        .and_then(|r| r.strip_suffix(" tokens/s"))
        .and_then(|r| r.parse().ok())
        .expect("a rate");
    assert!(
        (4.0..=9.0).contains(&rate),
        "tokens came 100–150 ms apart: {rate} tokens/s"
    );
    assert_eq!(done.usage, "Usage: prompt 9 tokens · completion 20 tokens");
    assert_eq!(done.error, "");
    assert!(!done.ask_disabled && done.stop_disabled);
    assert_eq!(app.mock.request_count(), 1);
    assert_eq!(browser.console_errors().await, Vec::<String>::new());

    let screenshot = browser.screenshot("answer.png").await;
    assert!(screenshot.metadata().expect("the screenshot").len() > 10_000);
}

#[tokio::test]
async fn enter_asks_and_shift_enter_starts_a_new_line() {
    // Arrange
    let app = spawn_app().await;
    app.mock.always(Reply::sse(openai::answer(
        &["Two", " lines", " read."],
        Duration::ZERO,
    )));
    let browser = open_page(&app).await;

    // Act: Shift+Enter between the lines (Null releases Shift), then Enter.
    browser
        .type_into(
            "#question",
            &format!("line one{}{}{}line two", Key::Shift, Key::Enter, Key::Null),
        )
        .await;
    let typed = browser
        .js("return document.getElementById('question').value;")
        .await;
    let idle = view(&browser).await;
    browser
        .type_into("#question", &Key::Enter.to_string())
        .await;
    let done = wait_for_state(&browser, "done").await;

    // Assert
    assert_eq!(typed, "line one\nline two");
    assert_eq!(idle.state, "idle", "Shift+Enter must not ask");
    assert_eq!(done.answer, "Two lines read.");
    let request = app.mock.requests()[0].json();
    let user = request["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "user")
        .expect("the question");
    assert_eq!(user["content"], "line one\nline two");
}

#[tokio::test]
async fn stop_halts_the_answer_and_the_upstream_sees_its_connection_close() {
    // Arrange: 60 tokens over ~6 s, then an upstream that never closes by itself.
    let app = spawn_app().await;
    let tokens: Vec<String> = (1..=60).map(|i| format!("w{i} ")).collect();
    let mut steps = Vec::new();
    for token in &tokens {
        steps.push(Step::Sleep(Duration::from_millis(100)));
        steps.push(openai::token(token));
    }
    app.mock.always(Reply::sse(steps).then(End::Hang));
    let browser = open_page(&app).await;
    ask(&browser, "Count slowly").await;
    browser
        .wait_for(
            "three tokens",
            &format!("{VIEW} return view.answer.includes('w3 ') ? view : null;"),
            &describe(),
        )
        .await;

    // Act
    browser.click("#stop").await;
    let stopped = view(&browser).await;
    app.mock.wait_for_closed(1, DEADLINE).await;

    // Assert: the page stopped at once and kept its text; the upstream was cancelled.
    assert_eq!(stopped.state, "stopped");
    let shown = stopped.answer.split_whitespace().count();
    assert!((3..60).contains(&shown), "{stopped:?}");
    assert_eq!(
        stopped.status,
        format!("Stopped — {shown} tokens"),
        "{stopped:?}"
    );
    assert!(stopped.stop_disabled && !stopped.ask_disabled);
    let after = view(&browser).await;
    assert_eq!(
        after.answer, stopped.answer,
        "no text may arrive after Stop"
    );
    assert_eq!(after.state, "stopped");
    assert_eq!(app.mock.request_count(), 1);
}

#[tokio::test]
async fn after_done_the_page_closes_its_stream_so_it_can_never_ask_again() {
    // Arrange
    let app = spawn_app().await;
    app.mock.always(Reply::sse(openai::answer(
        &["Answered", " once."],
        Duration::ZERO,
    )));
    let browser = open_page(&app).await;
    browser.js(RECORD_EVENT_SOURCES).await;

    // Act
    ask(&browser, "Ask me once").await;
    let done = wait_for_state(&browser, "done").await;
    // An EventSource left open would reconnect by itself when the server ends the response (an
    // error event, then a new request) until the server refuses it; a closed one never asks again.
    browser
        .wait_for(
            "the page's EventSource to be closed",
            "return window.__sources.length > 0
                 && window.__sources.every((s) => s.readyState === EventSource.CLOSED);",
            "return window.__sources.map((s) => [s.url, s.readyState]);",
        )
        .await;

    // Assert
    assert_eq!(done.answer, "Answered once.");
    let sources = event_sources(&browser).await;
    assert_eq!(sources.opened.len(), 1, "{sources:?}");
    assert_eq!(sources.not_closed, 0, "{sources:?}");
    assert_eq!(
        sources.errors, 0,
        "the stream was left to reconnect: {sources:?}"
    );
    assert_eq!(app.mock.request_count(), 1, "the question was asked again");
    assert_eq!(view(&browser).await.state, "done");
}

#[tokio::test]
async fn the_answer_follows_new_text_until_the_reader_scrolls_up() {
    // Arrange: an answer much taller than its box, arriving for ~4 s.
    let app = spawn_app().await;
    let lines: Vec<String> = (1..=100).map(|i| format!("Line {i}\n")).collect();
    let tokens: Vec<&str> = lines.iter().map(String::as_str).collect();
    app.mock.always(Reply::sse(openai::answer(
        &tokens,
        Duration::from_millis(40),
    )));
    let browser = open_page(&app).await;
    const FOLLOWING: &str = "const a = document.querySelector('#turns > .turn:last-child .answer');
        return a.scrollHeight > a.clientHeight + 200
            && a.scrollHeight - a.scrollTop - a.clientHeight <= 32 ? a.textContent.length : null;";
    ask(&browser, "A long one, please").await;
    browser
        .wait_for(
            "the answer to overflow its box, scrolled to the newest line",
            &format!("if (document.body.dataset.state !== 'generating') return null; {FOLLOWING}"),
            &describe(),
        )
        .await;

    // Act: the reader turns the mouse wheel up over the answer.
    let answer = browser
        .client
        .find(fantoccini::Locator::Css(
            "#turns > .turn:last-child .answer",
        ))
        .await
        .expect("the answer");
    let (x, y, width, height) = answer.rectangle().await.expect("its box");
    let mut wheel = fantoccini::actions::WheelActions::new("wheel".into());
    wheel.push(fantoccini::actions::WheelAction::Scroll {
        duration: None,
        x: (x + width / 2.0) as i64,
        y: (y + height / 2.0) as i64,
        delta_x: 0,
        delta_y: -300,
    });
    browser
        .client
        .perform_actions(wheel)
        .await
        .expect("scroll the wheel");
    let scrolled = browser
        .wait_for(
            "the reader's scroll to settle above the bottom",
            "const a = document.querySelector('#turns > .turn:last-child .answer');
             return a.scrollHeight - a.scrollTop - a.clientHeight > 100
                 ? { top: a.scrollTop, state: document.body.dataset.state, text: a.textContent }
                 : null;",
            &describe(),
        )
        .await;
    let done = wait_for_state(&browser, "done").await;

    // Assert: the text kept coming, and the view stayed where the reader put it.
    assert_eq!(scrolled["state"], "generating", "{scrolled}");
    let text_then = scrolled["text"].as_str().expect("text").len();
    assert!(done.answer.len() > text_then);
    assert_eq!(done.answer, tokens.concat().trim_end());
    assert_eq!(
        browser
            .js("return document.querySelector('#turns > .turn:last-child .answer').scrollTop;")
            .await,
        scrolled["top"],
        "the view moved while the reader was reading"
    );
}

#[tokio::test]
async fn copy_puts_the_whole_answer_on_the_clipboard() {
    // Arrange
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&TOKENS, Duration::ZERO)));
    let browser = open_page(&app).await;
    browser.grant("clipboard-read").await;
    ask(&browser, "Something to copy").await;
    wait_for_state(&browser, "done").await;

    // Act
    let copied = copy_answer(&browser, "last-child").await;

    // Assert: the answer's source, to the byte (the page shows it rendered).
    assert_eq!(copied, TOKENS.concat());
}

#[tokio::test]
async fn an_answer_cut_at_the_length_limit_says_so() {
    // Arrange
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![
        openai::token("Cut"),
        openai::token(" short"),
        openai::finish("length"),
        openai::done(),
    ]));
    let browser = open_page(&app).await;

    // Act
    ask(&browser, "Go on and on").await;
    let done = wait_for_state(&browser, "done").await;

    // Assert
    assert_eq!(done.answer, "Cut short");
    assert!(
        done.status.starts_with("Done — 2 tokens in ")
            && done
                .status
                .ends_with(" — the answer was cut at the length limit."),
        "status: {:?}",
        done.status
    );
}
