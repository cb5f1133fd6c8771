//! What a screen reader hears: the answer busy and not live while it streams, one polite status
//! region for its start, progress and end, an error said once; and no motion for those who ask.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// Records every text the status and alert regions are given, in order.
const RECORD_REGIONS: &str = "
    window.__said = { status: [], alert: [] };
    for (const [id, key] of [['announcer', 'status'], ['alert', 'alert']]) {
        const region = document.getElementById(id);
        new MutationObserver(() => {
            if (region.textContent) window.__said[key].push(region.textContent);
        }).observe(region, { childList: true, subtree: true, characterData: true });
    }";

/// The ARIA of the answer and of every live region on the page.
const ARIA: &str = "
    const a = document.querySelector('#turns > .turn:last-child .answer');
    const aria = {
        busy: a.getAttribute('aria-busy'),
        answer_live: a.getAttribute('aria-live'),
        answer_role: a.getAttribute('role'),
        live_regions: Array.from(
            document.querySelectorAll('[aria-live], [role=status], [role=alert], [role=log]'),
            (e) => [e.id, e.getAttribute('role'), e.getAttribute('aria-live'), e.className]),
        said: window.__said,
    };";

async fn aria(browser: &Browser) -> Value {
    browser.js(&format!("{ARIA} return aria;")).await
}

#[tokio::test]
async fn while_an_answer_streams_it_is_busy_not_live_and_one_status_region_says_start_and_end() {
    // Arrange: four words, a pause of 2 s after the second.
    let app = spawn_app().await;
    app.mock.always(Reply::sse(answer_with_pause(
        &["One", " two", " three", " four."],
        Duration::from_millis(20),
        2,
        Duration::from_secs(2),
    )));
    let browser = open_page(&app).await;
    browser.js(RECORD_REGIONS).await;

    // Act
    ask(&browser, "Count to four").await;
    let during = browser
        .wait_for(
            "the answer started, the status region told",
            &format!(
                "{ARIA} return document.querySelector('#turns > .turn:last-child .answer').innerText === 'One two'
                     && aria.said.status.length > 0 ? aria : null;"
            ),
            &format!("{ARIA} return aria;"),
        )
        .await;
    wait_for_state(&browser, "done").await;
    let after = browser
        .wait_for(
            "the end said",
            &format!("{ARIA} return aria.said.status.length > 1 ? aria : null;"),
            &format!("{ARIA} return aria;"),
        )
        .await;

    // Assert: during, busy and not live; the only live regions are the two hidden ones.
    let regions = json!([
        ["announcer", "status", "polite", "visually-hidden"],
        ["alert", "alert", null, "visually-hidden"],
    ]);
    assert_eq!(during["busy"], "true");
    assert_eq!(during["answer_live"], Value::Null);
    assert_eq!(during["answer_role"], Value::Null);
    assert_eq!(during["live_regions"], regions);
    assert_eq!(during["said"]["status"], json!(["Answer started"]));
    // After: not busy; the end said with the number of words; no alert.
    assert_eq!(after["busy"], "false");
    assert_eq!(after["live_regions"], regions);
    assert_eq!(
        after["said"],
        json!({ "status": ["Answer started", "Answer complete, 4 words"], "alert": [] })
    );
}

#[tokio::test]
async fn an_error_mid_answer_is_announced_once_by_the_alert_region() {
    // Arrange
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![
        openai::token("Partial"),
        Step::Sleep(Duration::from_millis(100)),
        openai::chunk(r#"{"error":{"message":"boom","type":"server_error"}}"#),
    ]));
    let browser = open_page(&app).await;
    browser.js(RECORD_REGIONS).await;

    // Act
    ask(&browser, "Fail, please").await;
    wait_for_state(&browser, "error").await;
    let said = browser
        .wait_for(
            "the alert",
            "return window.__said.alert.length > 0 ? window.__said : null;",
            "return window.__said;",
        )
        .await;

    // Assert: the error once, as an alert; the status region only said the start.
    assert_eq!(
        said,
        json!({
            "status": ["Answer started"],
            "alert": ["The model's service reported an error while answering."],
        })
    );
    assert_eq!(aria(&browser).await["busy"], "false");
}

#[tokio::test]
async fn with_reduced_motion_the_status_light_does_not_pulse() {
    // Arrange: an answer that keeps the page generating.
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(vec![openai::token("Still going")]).then(End::Hang));
    let browser = open_page(&app).await;
    ask(&browser, "Keep going").await;
    wait_for_state(&browser, "generating").await;
    const ANIMATION: &str = "return getComputedStyle(document.getElementById('status'), '::before')
        .animationName;";
    let normally = browser.js(ANIMATION).await;

    // Act
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-reduced-motion", "value": "reduce" }] }),
        )
        .await;
    let reduced = browser.js(ANIMATION).await;

    // Assert
    assert_eq!(normally, "pulse");
    assert_eq!(reduced, "none");
}

#[tokio::test]
async fn after_stop_the_status_region_counts_the_words_received_as_the_progress_note_does() {
    // Arrange: a sentence, then a shell block whose lines come 150 ms apart. Rendered, the block's
    // language is a label drawn by CSS, not text: the answer's rendered text and its source differ.
    let app = spawn_app().await;
    let mut tokens = vec![
        "Run".to_owned(),
        " this:".to_owned(),
        "\n\n```sh\n".to_owned(),
    ];
    tokens.extend((1..=40).map(|i| format!("cargo new w{i}\n")));
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    app.mock.always(Reply::sse(openai::paced(&refs, |_| {
        Duration::from_millis(150)
    })));
    let browser = open_page(&app).await;
    browser.js(RECORD_REGIONS).await;
    browser.js(RECORD_EVENT_SOURCES).await;
    ask(&browser, "How do I start?").await;
    let shown = browser
        .wait_for(
            "several words on screen",
            &format!(
                "{VIEW} const n = view.answer.split(/\\s+/).filter(Boolean).length;
                 return n >= 8 ? n : null;"
            ),
            &describe(),
        )
        .await;

    // Act
    browser.click("#stop").await;
    let said = browser
        .wait_for(
            "the stop to be said",
            "return window.__said.status.find((s) => s.startsWith('Answer stopped')) ?? null;",
            "return window.__said;",
        )
        .await;

    // Assert: the words announced are the words received (each piece of the source between
    // spaces holds one word: "```sh" is the word "sh"), as many as were on screen or more.
    let received = event_sources(&browser).await.received;
    let count = received.split_whitespace().count();
    assert!(
        count as u64 >= shown.as_u64().expect("a count"),
        "{received:?}"
    );
    assert_eq!(
        said,
        format!("Answer stopped, {count} words"),
        "{received:?}"
    );
    assert_eq!(view(&browser).await.state, "stopped");
}

#[tokio::test]
async fn at_the_end_the_status_region_counts_the_words_received() {
    // Arrange: an answer whose rendering draws one of its words (the block's language) by CSS.
    let app = spawn_app().await;
    app.mock.always(Reply::sse(openai::answer(
        &["Run", " this:", "\n\n```sh\n", "cargo new hello\n", "```\n"],
        Duration::from_millis(20),
    )));
    let browser = open_page(&app).await;
    browser.js(RECORD_REGIONS).await;
    browser.js(RECORD_EVENT_SOURCES).await;

    // Act
    ask(&browser, "How do I start?").await;
    wait_for_state(&browser, "done").await;
    let said = browser
        .wait_for(
            "the end to be said",
            "return window.__said.status.find((s) => s.startsWith('Answer complete')) ?? null;",
            "return window.__said;",
        )
        .await;

    // Assert: "Run", "this", "sh", "cargo", "new", "hello".
    assert_eq!(
        event_sources(&browser).await.received,
        "Run this:\n\n```sh\ncargo new hello\n```\n",
        "what was received"
    );
    assert_eq!(said, "Answer complete, 6 words");
}
