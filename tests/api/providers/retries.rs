//! Retries before the first token: what is retried, how often, how long it waits, and never after
//! an event has gone out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;

use crate::{
    helpers::{spawn_app, spawn_app_with},
    mock_upstream::{Reply, openai},
};

fn answer(tokens: &[&str]) -> Reply {
    Reply::sse(openai::answer(tokens, Duration::ZERO))
}

fn unavailable() -> Reply {
    Reply::status(503, r#"{"error":{"message":"upstream connect error"}}"#)
}

#[tokio::test]
async fn a_503_then_a_good_answer_succeeds_after_one_retry() {
    let app = spawn_app().await;
    app.mock.then_reply(unavailable());
    app.mock.always(answer(&["second ", "time"]));

    let answer = app.stream("hi").await;

    assert_eq!(answer.text(), "second time");
    assert!(answer.ended_with_done());
    assert_eq!(app.mock.request_count(), 2);
}

#[tokio::test]
async fn attempts_stop_after_llm_retries() {
    for (retries, attempts) in [(0, 1), (2, 3)] {
        let app = spawn_app_with(|c| c.llm_retries = retries).await;
        app.mock.always(unavailable());

        let answer = app.stream("hi").await;

        assert_eq!(answer.error().unwrap()["error"], "upstream_unavailable");
        assert_eq!(app.mock.request_count(), attempts, "LLM_RETRIES={retries}");
    }
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let app = spawn_app().await;
    app.mock.then_reply(
        Reply::status(429, r#"{"error":{"message":"slow down"}}"#).header("Retry-After", "1"),
    );
    app.mock.always(answer(&["ok"]));

    let answer = app.stream("hi").await;

    assert_eq!(answer.text(), "ok");
    let requests = app.mock.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(
        gap >= Duration::from_millis(990),
        "the retry came {gap:?} after the 429, before its Retry-After of 1 s"
    );
}

#[tokio::test]
async fn a_retry_after_past_the_cap_is_not_waited_for() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::status(429, "{}").header("Retry-After", "60"));

    let answer = app.stream("hi").await;

    let error = answer.error().unwrap();
    assert_eq!(error["error"], "upstream_rate_limited");
    assert_eq!(error["retry_after"], 60);
    assert_eq!(app.mock.request_count(), 1);
}

#[tokio::test]
async fn a_retry_wait_that_would_outlast_the_answers_budget_is_not_started() {
    let app = spawn_app_with(|c| c.stream_timeout = std::time::Duration::from_secs_f64(1.5)).await;
    app.mock
        .always(Reply::status(429, "{}").header("Retry-After", "2"));

    let answer = app.stream("hi").await;

    let error = answer.error().unwrap();
    assert_eq!(
        error["error"], "upstream_rate_limited",
        "the person hears why at once, not a timeout later"
    );
    assert_eq!(error["retry_after"], 2);
    assert_eq!(app.mock.request_count(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    for status in [400, 401, 404, 422] {
        let app = spawn_app().await;
        app.mock.always(Reply::status(status, "{}"));

        let answer = app.stream("hi").await;

        assert!(answer.error().is_some());
        assert_eq!(app.mock.request_count(), 1, "status {status}");
    }
}

#[tokio::test]
async fn nothing_is_retried_once_a_token_has_gone_out() {
    let app = spawn_app().await;
    app.mock
        .then_reply(Reply::sse(vec![openai::token("half an ans")]));
    app.mock.always(answer(&["a whole answer"]));

    let answer = app.stream("hi").await;

    assert_eq!(answer.tokens(), ["half an ans"]);
    assert_eq!(answer.error().unwrap()["error"], "stream_interrupted");
    assert_eq!(app.mock.request_count(), 1);
}

#[tokio::test]
async fn an_error_inside_an_accepted_stream_is_not_retried() {
    let app = spawn_app().await;
    app.mock.then_reply(Reply::sse(vec![openai::chunk(
        r#"{"error":{"message":"model overloaded","type":"server_error"}}"#,
    )]));
    app.mock.always(answer(&["a whole answer"]));

    let answer = app.stream("hi").await;

    assert_eq!(answer.error().unwrap()["error"], "upstream_error");
    assert_eq!(app.mock.request_count(), 1);
}

#[tokio::test]
async fn keep_alive_comments_flow_while_a_retry_waits() {
    let app = spawn_app_with(|c| c.keepalive = std::time::Duration::from_secs_f64(0.2)).await;
    app.mock
        .then_reply(Reply::status(429, "{}").header("Retry-After", "1"));
    app.mock.always(answer(&["late"]));

    let answer = app.stream("hi").await;

    let before = answer.keep_alives_before_first_event();
    assert!(before >= 3, "keep-alive comments during the wait: {before}");
    assert_eq!(answer.text(), "late");
}

#[tokio::test]
async fn a_connection_dropped_before_any_response_is_retried() {
    // An upstream that accepts and hangs up at once, as a restarting server or a proxy does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let app = spawn_app_with(|c| {
        c.llm_base_url = Some(url.parse().unwrap());
        c.llm_retries = 2;
    })
    .await;

    let answer = app.stream("hi").await;

    assert_eq!(answer.error().unwrap()["error"], "upstream_unavailable");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
