//! Reasoning text, from both families, goes out as its own events and never among the tokens.

use serde_json::json;

use super::{expect, finish, outputs, spawn_anthropic_with};
use crate::{
    helpers::spawn_app,
    mock_upstream::{Reply, anthropic, openai},
};

fn delta(delta: serde_json::Value) -> crate::mock_upstream::Step {
    openai::chunk(&json!({"choices":[{"index":0,"delta":delta,"finish_reason":null}]}).to_string())
}

#[tokio::test]
async fn openai_reasoning_content_streams_as_reasoning_events_before_the_tokens() {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![
        delta(json!({"role":"assistant","content":null,"reasoning_content":""})),
        delta(json!({"content":null,"reasoning_content":"Think "})),
        delta(json!({"content":null,"reasoning_content":"hard.\n"})),
        delta(json!({"content":"Answer","reasoning_content":null})),
        openai::finish("stop"),
        openai::usage(3, 9),
        openai::done(),
    ]));

    let answer = app.stream("hi").await;

    assert_eq!(
        outputs(&answer),
        expect(&[
            ("reasoning", "Think "),
            ("reasoning", "hard.\n"),
            ("token", "Answer")
        ])
    );
    assert_eq!(answer.text(), "Answer", "reasoning is never text");
    assert!(answer.body.contains("data: {\"reasoning\":\"Think \"}\n"));
    assert_eq!(
        finish(&answer),
        json!({"finish_reason":"stop","usage":{"prompt_tokens":3,"completion_tokens":9}})
    );
}

#[tokio::test]
async fn openai_reasoning_field_streams_as_reasoning_events_too() {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![
        delta(json!({"role":"assistant","content":"","reasoning":"Let me see."})),
        delta(json!({"role":"assistant","content":"Seen.","reasoning":null})),
        openai::finish("stop"),
        openai::done(),
    ]));

    let answer = app.stream("hi").await;

    assert_eq!(
        outputs(&answer),
        expect(&[("reasoning", "Let me see."), ("token", "Seen.")])
    );
}

#[tokio::test]
async fn reasoning_and_text_in_one_chunk_go_out_as_two_events_reasoning_first() {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![
        delta(json!({"content":"text","reasoning_content":"why"})),
        openai::finish("stop"),
        openai::done(),
    ]));

    let answer = app.stream("hi").await;

    assert_eq!(
        outputs(&answer),
        expect(&[("reasoning", "why"), ("token", "text")])
    );
}

#[tokio::test]
async fn anthropic_thinking_deltas_stream_as_reasoning_events() {
    let app = spawn_anthropic_with(|_| {}).await;
    app.mock.always(Reply::sse(vec![
        anthropic::message_start(20),
        anthropic::block_start(0, "thinking"),
        anthropic::thinking(0, "First, "),
        anthropic::thinking(0, "the premise."),
        anthropic::signature(0),
        anthropic::block_stop(0),
        anthropic::block_start(1, "text"),
        anthropic::text(1, "The answer."),
        anthropic::block_stop(1),
        anthropic::message_delta("end_turn", 40),
        anthropic::message_stop(),
    ]));

    let answer = app.stream("hi").await;

    assert_eq!(
        outputs(&answer),
        expect(&[
            ("reasoning", "First, "),
            ("reasoning", "the premise."),
            ("token", "The answer.")
        ])
    );
    assert_eq!(answer.text(), "The answer.");
    assert_eq!(
        finish(&answer),
        json!({"finish_reason":"stop","usage":{"prompt_tokens":20,"completion_tokens":40}})
    );
}
