//! Anthropic's Messages API, end to end: the request, the stream events, and the failures.

use serde_json::json;

use super::{expect, finish, outputs, spawn_anthropic_with, writes};
use crate::mock_upstream::{Reply, Step, anthropic};

const KEY: &str = "sk-test-SECRET-KEY";

#[tokio::test]
async fn an_anthropic_request_goes_to_messages_with_its_headers_and_body() {
    let app = spawn_anthropic_with(|c| {
        c.llm_model = Some("claude-sonnet-4-5".into());
        c.llm_max_tokens = 321;
        c.llm_system_prompt = "Be brief.".into();
    })
    .await;
    app.mock
        .always(Reply::sse(anthropic::answer(&["ok"], "end_turn")));

    app.stream("what is SSE?").await;

    let request = &app.mock.requests()[0];
    assert!(
        request.head.starts_with("POST /v1/messages "),
        "{}",
        request.head
    );
    assert_eq!(request.header("x-api-key").as_deref(), Some(KEY));
    assert_eq!(
        request.header("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    assert!(
        request
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty()),
        "{}",
        request.head
    );
    assert_eq!(
        request.head.matches(KEY).count(),
        1,
        "the key is in x-api-key only: {}",
        request.head
    );
    assert!(request.header("authorization").is_none());
    assert!(!request.body.contains(KEY));
    assert_eq!(
        request.json(),
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 321,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "what is SSE?"}],
            "stream": true,
            "temperature": 0.3,
        })
    );
}

#[tokio::test]
async fn a_temperature_above_anthropics_maximum_is_sent_as_one() {
    let app = spawn_anthropic_with(|c| c.llm_temperature = 1.7).await;
    app.mock
        .always(Reply::sse(anthropic::answer(&["ok"], "end_turn")));

    app.stream("hi").await;

    assert_eq!(app.mock.requests()[0].json()["temperature"], 1.0);
}

#[tokio::test]
async fn anthropic_text_deltas_stream_as_tokens_then_finish_with_usage_and_done() {
    let app = spawn_anthropic_with(|_| {}).await;
    app.mock.always(Reply::sse(anthropic::answer(
        &["Hello", ", ", "wörld 🚀\n\"q\""],
        "end_turn",
    )));

    let answer = app.stream("hi").await;

    assert_eq!(answer.tokens(), ["Hello", ", ", "wörld 🚀\n\"q\""]);
    assert_eq!(
        finish(&answer),
        json!({"finish_reason":"stop","usage":{"prompt_tokens":12,"completion_tokens":3}})
    );
    assert_eq!(
        answer.events.len(),
        5,
        "three tokens, finish, [DONE]: nothing for the ping or the block events"
    );
}

#[tokio::test]
async fn anthropic_stop_reasons_map_onto_ours() {
    for (stop_reason, ours) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_use"),
        ("refusal", "refusal"),
    ] {
        let app = spawn_anthropic_with(|_| {}).await;
        app.mock
            .always(Reply::sse(anthropic::answer(&["x"], stop_reason)));

        let answer = app.stream("hi").await;

        assert_eq!(finish(&answer)["finish_reason"], ours, "{stop_reason}");
    }
}

#[tokio::test]
async fn pings_anywhere_in_an_anthropic_stream_are_ignored() {
    let app = spawn_anthropic_with(|_| {}).await;
    app.mock.always(Reply::sse(vec![
        anthropic::ping(),
        anthropic::message_start(4),
        anthropic::ping(),
        anthropic::block_start(0, "text"),
        anthropic::text(0, "a"),
        anthropic::ping(),
        anthropic::text(0, "b"),
        anthropic::block_stop(0),
        anthropic::ping(),
        anthropic::message_delta("end_turn", 2),
        anthropic::ping(),
        anthropic::message_stop(),
    ]));

    let answer = app.stream("hi").await;

    assert_eq!(outputs(&answer), expect(&[("token", "a"), ("token", "b")]));
    assert_eq!(
        finish(&answer),
        json!({"finish_reason":"stop","usage":{"prompt_tokens":4,"completion_tokens":2}})
    );
}

#[tokio::test]
async fn anthropic_usage_counts_cached_input_and_takes_the_last_report() {
    // A byte-for-byte stream as the API sends it with prompt caching: the final message_delta
    // repeats the (cumulative) input counts.
    let raw = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_01Sx","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\n",
        "event: ping\n",
        r#"data: {"type": "ping"}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Cached."}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n",
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":3,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":5}}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    let app = spawn_anthropic_with(|_| {}).await;
    app.mock.always(Reply::sse(writes(raw)));

    let answer = app.stream("hi").await;

    assert_eq!(answer.tokens(), ["Cached."]);
    assert_eq!(
        finish(&answer),
        json!({"finish_reason":"stop","usage":{"prompt_tokens":2051,"completion_tokens":5}})
    );
}

async fn anthropic_error_after(steps: Vec<Step>) -> (Vec<String>, serde_json::Value, usize) {
    let app = spawn_anthropic_with(|_| {}).await;
    app.mock.always(Reply::sse(steps));
    let answer = app.stream("hi").await;
    assert!(!answer.ended_with_done(), "an error is terminal");
    let error = answer.error().expect("an in-band error");
    (answer.tokens(), error, app.mock.request_count())
}

#[tokio::test]
async fn an_anthropic_overloaded_error_mid_stream_is_upstream_unavailable() {
    let (tokens, error, requests) = anthropic_error_after(vec![
        anthropic::message_start(5),
        anthropic::block_start(0, "text"),
        anthropic::text(0, "partial "),
        anthropic::error("overloaded_error", "Overloaded"),
    ])
    .await;

    assert_eq!(tokens, ["partial "]);
    assert_eq!(error["error"], "upstream_unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(
        !message.is_empty() && !message.contains("Overloaded"),
        "a sentence of ours, not the upstream's: {message}"
    );
    assert_eq!(requests, 1, "never retried once a token went out");
}

#[tokio::test]
async fn another_anthropic_error_mid_stream_is_upstream_error() {
    let (tokens, error, requests) = anthropic_error_after(vec![
        anthropic::message_start(5),
        anthropic::block_start(0, "text"),
        anthropic::text(0, "partial "),
        anthropic::error("api_error", "Internal server error"),
    ])
    .await;

    assert_eq!(tokens, ["partial "]);
    assert_eq!(error["error"], "upstream_error");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn an_anthropic_stream_that_ends_before_message_stop_is_stream_interrupted() {
    // Cut at each point before message_stop, the last cut after message_delta has said end_turn.
    let mut whole = anthropic::answer(&["one ", "two"], "end_turn");
    whole.pop();
    for cut in [3, 4, whole.len()] {
        let (tokens, error, _) = anthropic_error_after(whole[..cut].to_vec()).await;

        assert_eq!(
            error["error"], "stream_interrupted",
            "cut after {cut} events"
        );
        assert!(tokens.len() <= 2);
    }
}

#[tokio::test]
async fn anthropic_http_failures_map_onto_the_same_codes() {
    let body = |kind: &str| {
        json!({"type":"error","error":{"type":kind,"message":format!("{kind}: invalid x-api-key {KEY}")}})
            .to_string()
    };
    for (reply, code) in [
        (
            Reply::status(401, &body("authentication_error")),
            "upstream_auth",
        ),
        (
            Reply::status(403, &body("permission_error")),
            "upstream_auth",
        ),
        (
            Reply::status(400, &body("invalid_request_error")),
            "upstream_rejected",
        ),
        (
            Reply::status(404, &body("not_found_error")),
            "upstream_rejected",
        ),
        (
            Reply::status(500, &body("api_error")),
            "upstream_unavailable",
        ),
        (
            Reply::status(529, &body("overloaded_error")),
            "upstream_unavailable",
        ),
    ] {
        let status = reply.status;
        let app = spawn_anthropic_with(|c| c.llm_retries = 0).await;
        app.mock.always(reply);

        let answer = app.stream("hi").await;

        let error = answer.error().expect("an in-band error");
        assert_eq!(error["error"], code, "status {status}");
        assert!(
            !answer.body.contains(KEY) && !answer.body.contains("invalid x-api-key"),
            "neither the key nor the upstream's body reach the client"
        );
    }
}

#[tokio::test]
async fn an_anthropic_429_passes_on_its_retry_after() {
    let app = spawn_anthropic_with(|_| {}).await;
    app.mock.always(
        Reply::status(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
        )
        .header("retry-after", "30"),
    );

    let answer = app.stream("hi").await;

    let error = answer.error().expect("an in-band error");
    assert_eq!(error["error"], "upstream_rate_limited");
    assert_eq!(error["retry_after"], 30);
    assert_eq!(
        app.mock.request_count(),
        1,
        "30 s is past the retry cap: the person is told at once"
    );
}

#[tokio::test]
async fn an_anthropic_529_is_retried_and_the_answer_then_streams() {
    let app = spawn_anthropic_with(|_| {}).await;
    app.mock.then_reply(Reply::status(
        529,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ));
    app.mock.always(Reply::sse(anthropic::answer(
        &["after ", "retry"],
        "end_turn",
    )));

    let answer = app.stream("hi").await;

    assert_eq!(answer.text(), "after retry");
    assert!(answer.ended_with_done());
    assert_eq!(app.mock.request_count(), 2);
}
