//! What a person sees when an answer fails or is refused: the message, the wait, and why.

use std::time::Duration;

use super::*;

#[tokio::test]
async fn an_in_band_error_mid_answer_shows_its_message_below_the_text_received() {
    // Arrange
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![
        openai::token("Partial"),
        Step::Sleep(Duration::from_millis(50)),
        openai::token(" answer"),
        Step::Sleep(Duration::from_millis(50)),
        openai::token(" here"),
        openai::chunk(r#"{"error":{"message":"boom","type":"server_error"}}"#),
    ]));
    let browser = open_page(&app).await;

    // Act
    ask(&browser, "Fail halfway").await;
    let failed = wait_for_state(&browser, "error").await;

    // Assert
    assert_eq!(
        failed.error,
        "The model's service reported an error while answering."
    );
    assert_eq!(failed.answer, "Partial answer here");
    assert_eq!(failed.status, "Failed after 3 tokens");
    assert!(!failed.ask_disabled && failed.stop_disabled);
    assert_eq!(app.mock.request_count(), 1);
}

#[tokio::test]
async fn an_upstream_failure_before_the_first_token_shows_its_message() {
    // Arrange
    let app = spawn_app_with(|c| c.llm_retries = 0).await;
    app.mock
        .always(Reply::status(500, r#"{"error":{"message":"down"}}"#));
    let browser = open_page(&app).await;

    // Act
    ask(&browser, "Anyone there?").await;
    let failed = wait_for_state(&browser, "error").await;

    // Assert
    assert_eq!(
        failed.error,
        "The model's service cannot be reached right now; please try again shortly."
    );
    assert_eq!(failed.answer, "");
    assert_eq!(failed.status, "Failed before the answer started");
}

#[tokio::test]
async fn a_rate_limited_ask_shows_the_wait_counting_down_and_disables_ask() {
    // Arrange: one question a minute, and it has been asked.
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = Some(1);
    })
    .await;
    app.mock
        .always(Reply::sse(openai::answer(&["Once."], Duration::ZERO)));
    let browser = open_page(&app).await;
    ask(&browser, "First question").await;
    wait_for_state(&browser, "done").await;

    // Act
    ask(&browser, "Second question").await;
    let refused = wait_for_state(&browser, "refused").await;

    // Assert: the reason and the wait, Ask disabled, and the wait counts down; the refused
    // question stays in its box, not in the conversation.
    assert_eq!(refused.status, "Refused — rate limit reached");
    assert_eq!(refused.turns, 1, "{refused:?}");
    assert_eq!(
        browser
            .js("return document.getElementById('question').value;")
            .await,
        "Second question"
    );
    let secs = seconds_to_wait(&refused.error);
    assert!((1..=60).contains(&secs), "{refused:?}");
    assert!(refused.ask_disabled, "Ask must be disabled while waiting");
    browser
        .wait_for(
            "the countdown to go down",
            &format!(
                "{VIEW} const m = /try again in (\\d+) s$/.exec(view.error);
                 return m && Number(m[1]) < {secs} && view.ask_disabled ? view : null;"
            ),
            &describe(),
        )
        .await;
    assert_eq!(app.mock.request_count(), 1);
}

/// The N of "Rate limit reached — try again in N s".
fn seconds_to_wait(error: &str) -> u64 {
    error
        .strip_prefix("Rate limit reached — try again in ")
        .and_then(|rest| rest.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a rate-limit message: {error:?}"))
}

#[tokio::test]
async fn a_question_over_the_limit_is_stopped_before_it_is_sent() {
    // Arrange
    let app = spawn_app_with(|c| c.max_query_chars = 20).await;
    app.mock
        .always(Reply::sse(openai::answer(&["never"], Duration::ZERO)));
    let browser = open_page(&app).await;
    browser.js(RECORD_EVENT_SOURCES).await;
    // Typing stops at the limit (maxlength) …
    browser.type_into("#question", &"a".repeat(25)).await;
    let typed = view_question(&browser).await;
    // … so put the long text in as a script would, past maxlength.
    browser
        .js("const q = document.getElementById('question');
             q.value = 'b'.repeat(25);
             q.dispatchEvent(new Event('input', { bubbles: true }));")
        .await;

    // Act
    browser.click("#ask").await;
    let refused = view(&browser).await;

    // Assert
    assert_eq!(typed, ("a".repeat(20), "20 / 20".to_owned()));
    assert_eq!(
        refused.error,
        "Your question is 25 characters long; the limit is 20. Please shorten it by 5 characters."
    );
    assert_eq!(
        refused.status,
        "Not sent — the question is too long (25 / 20)"
    );
    assert_eq!(refused.state, "idle");
    assert_eq!(
        browser
            .js("return document.getElementById('question').getAttribute('aria-invalid');")
            .await,
        "true"
    );
    // The page would open its EventSource in the click's own task: none was opened.
    assert_eq!(event_sources(&browser).await.opened, Vec::<String>::new());
    assert_eq!(app.mock.request_count(), 0);
}

/// The question's text and the character counter.
async fn view_question(browser: &Browser) -> (String, String) {
    serde_json::from_value(
        browser
            .js("return [document.getElementById('question').value,
                         document.getElementById('counter').textContent];")
            .await,
    )
    .expect("two strings")
}

#[tokio::test]
async fn an_ask_past_the_clients_open_streams_says_so() {
    // Arrange: one open stream per client, already held by another tab of the same person.
    let app = spawn_app_with(|c| c.max_streams_per_client = 1).await;
    app.mock
        .always(Reply::sse(vec![openai::token("held ")]).then(End::Hang));
    let mut other_tab = app.open("elsewhere").await;
    other_tab
        .next_data()
        .await
        .expect("the other tab's first token");
    let browser = open_page(&app).await;

    // Act
    ask(&browser, "One more").await;
    let refused = wait_for_state(&browser, "refused").await;

    // Assert
    assert_eq!(refused.status, "Refused — too many open streams");
    assert!(!refused.error.is_empty(), "{refused:?}");
    assert_eq!(
        app.mock.request_count(),
        1,
        "the refused ask never reached the upstream"
    );
}

#[tokio::test]
async fn an_ask_while_the_server_is_at_capacity_says_the_server_is_busy() {
    // Arrange: room for one stream in all, taken by another client behind the trusted proxy.
    let app = spawn_app_with(|c| c.max_streams = 1).await;
    app.mock
        .always(Reply::sse(vec![openai::token("held ")]).then(End::Hang));
    let mut someone_else =
        crate::helpers::SseReader::get(app.stream_url("hi"), &[("X-Real-IP", "203.0.113.7")]).await;
    someone_else.next_data().await.expect("their first token");
    let browser = open_page(&app).await;

    // Act
    ask(&browser, "Anyone there?").await;
    let refused = wait_for_state(&browser, "refused").await;

    // Assert
    assert_eq!(refused.status, "Refused — the server is busy");
    assert!(refused.error.contains("busy"), "{refused:?}");
    assert!(!refused.ask_disabled, "nothing to wait out but a moment");
}
