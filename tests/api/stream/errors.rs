//! In-band errors once the stream has begun: each upstream failure maps onto its code, and the
//! idle and total timeouts end a stream that takes too long.

use std::time::Duration;

use crate::{
    helpers::{DEADLINE, spawn_app, spawn_app_with},
    mock_upstream::{End, Reply, openai},
};

const MS: Duration = Duration::from_millis(1);

async fn error_for(reply: Reply) -> serde_json::Value {
    let app = spawn_app().await;
    app.mock.always(reply);
    let answer = app.stream("hi").await;
    assert_eq!(
        answer.status, 200,
        "errors after the stream began are in-band"
    );
    assert!(!answer.ended_with_done(), "an error is terminal: no [DONE]");
    assert!(
        !answer.body.contains("sk-test-SECRET-KEY"),
        "the key never reaches the client"
    );
    answer.error().expect("an error event")
}

#[tokio::test]
async fn upstream_http_failures_map_onto_error_codes() {
    for (status, code) in [
        (500, "upstream_unavailable"),
        (503, "upstream_unavailable"),
        (401, "upstream_auth"),
        (403, "upstream_auth"),
        (429, "upstream_rate_limited"),
        (400, "upstream_rejected"),
        (404, "upstream_rejected"),
    ] {
        let error = error_for(Reply::status(
            status,
            r#"{"error":{"message":"Incorrect API key provided: sk-test-SECRET-KEY"}}"#,
        ))
        .await;
        assert_eq!(error["error"], code, "status {status}");
        let message = error["message"].as_str().unwrap();
        assert!(
            !message.is_empty() && !message.contains("Incorrect API key"),
            "the upstream's raw body is not repeated: {message}"
        );
    }
}

#[tokio::test]
async fn an_upstream_429_passes_on_its_retry_after() {
    let error = error_for(Reply::status(429, "{}").header("Retry-After", "17")).await;
    assert_eq!(error["error"], "upstream_rate_limited");
    assert_eq!(error["retry_after"], 17);
}

#[tokio::test]
async fn an_unreachable_upstream_is_upstream_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_with(|c| c.llm_base_url = Some(url.parse().unwrap())).await;

    let answer = app.stream("hi").await;

    assert_eq!(answer.error().unwrap()["error"], "upstream_unavailable");
}

#[tokio::test]
async fn an_error_object_inside_the_stream_is_upstream_error() {
    let steps = vec![
        openai::token("partial "),
        openai::chunk(r#"{"error":{"message":"model overloaded","type":"server_error"}}"#),
    ];
    let app = spawn_app().await;
    app.mock.always(Reply::sse(steps));

    let answer = app.stream("hi").await;

    assert_eq!(answer.text(), "partial ");
    assert_eq!(answer.error().unwrap()["error"], "upstream_error");
}

#[tokio::test]
async fn an_upstream_that_ends_before_completing_is_stream_interrupted() {
    let error = error_for(Reply::sse(vec![openai::token("half an ans")])).await;
    assert_eq!(error["error"], "stream_interrupted");
}

#[tokio::test]
async fn a_silent_upstream_times_out_after_the_idle_timeout() {
    let app =
        spawn_app_with(|c| c.upstream_idle_timeout = std::time::Duration::from_secs_f64(0.5)).await;
    app.mock
        .always(Reply::sse(vec![openai::token("then silence")]).then(End::Hang));

    let answer = app.stream("hi").await;

    assert_eq!(answer.text(), "then silence");
    assert_eq!(answer.error().unwrap()["error"], "timeout");
    app.mock.wait_for_closed(1, DEADLINE).await;
}

#[tokio::test]
async fn the_idle_timeout_counts_from_the_last_chunk_not_the_first() {
    // Each gap is well inside the idle timeout; the whole answer is three times longer than it.
    let app =
        spawn_app_with(|c| c.upstream_idle_timeout = std::time::Duration::from_secs_f64(0.4)).await;
    app.mock
        .always(Reply::sse(openai::answer(&["t"; 12], 100 * MS)));

    let answer = app.stream("hi").await;

    assert_eq!(answer.tokens().len(), 12, "{}", answer.body);
    assert!(answer.ended_with_done(), "{}", answer.body);
}

#[tokio::test]
async fn an_answer_that_outlasts_the_stream_budget_times_out() {
    let app = spawn_app_with(|c| c.stream_timeout = std::time::Duration::from_secs_f64(0.6)).await;
    app.mock
        .always(Reply::sse(openai::answer(&["t"; 40], 50 * MS)));

    let answer = app.stream("hi").await;

    assert!(!answer.tokens().is_empty());
    assert_eq!(answer.error().unwrap()["error"], "timeout");
    assert!(answer.last().at - answer.started < Duration::from_secs(2));
}
