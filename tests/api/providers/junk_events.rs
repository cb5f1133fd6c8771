//! A junk upstream event never ends an answer: every kind of event no decoder can use (bytes that
//! are not UTF-8, JSON of the wrong shape, lone surrogates, deep nesting, huge fields) is skipped,
//! and the real tokens, the finish and `[DONE]` all arrive, for both provider families, with LF
//! and CRLF line ends, whole or cut into small reads.

use serde_json::json;

use super::spawn_anthropic_with;
use crate::{
    helpers::{Answer, TestApp, spawn_app},
    mock_upstream::{Reply, Step},
};

/// An upstream event: its lines, without line ends.
type Event = Vec<Vec<u8>>;

fn data(payload: impl AsRef<[u8]>) -> Event {
    vec![[b"data: ", payload.as_ref()].concat()]
}

fn json_data(value: serde_json::Value) -> Event {
    data(value.to_string())
}

/// What makes each kind of junk, with a token in it that must never reach the client ("LOST").
/// `token` wraps a text as the provider's text delta, to build junk that is almost right.
fn common_junk(token: fn(&str) -> String) -> Vec<Event> {
    let lost = token("LOST");
    vec![
        data(b"\xff\xfe not utf-8"),
        // Inside an otherwise good delta: never a token with U+FFFD in it.
        data(replace_bytes(
            token("bad @ byte").as_bytes(),
            b"@",
            b"\xc3\x28",
        )),
        // A character cut short.
        data(b"\"cut \xe4\xb8\""),
        // Good data under a name or id that is not UTF-8: the event as a whole cannot be trusted.
        vec![
            b"event: \xff\xfe".to_vec(),
            [b"data: ", lost.as_bytes()].concat(),
        ],
        vec![b"id: \xff1".to_vec(), [b"data: ", lost.as_bytes()].concat()],
        vec![b": a comment \xff\xfe".to_vec()],
        // Empty data: `data:`, and `data` (a line without a colon is a field with no value).
        data("null"),
        vec![b"data:".to_vec()],
        vec![b"data".to_vec()],
        vec![b"a line without a colon".to_vec()],
        data("\"a bare string\""),
        data("[1, 2, 3]"),
        data("42"),
        data("{\"choices\":[{\"delta\":"),
        // Lone surrogates, escaped as JSON allows but no string may hold.
        data(lost.replace("LOST", "\\ud800")),
        data(lost.replace("LOST", "a \\udc00 b")),
        data(nest(300)),
        // Bad bytes on the last of three data lines.
        vec![
            b"data: {\"choices\":".to_vec(),
            b"data: {\"nested\":".to_vec(),
            b"data: \xff}}".to_vec(),
        ],
    ]
}

/// Arrays `depth` deep.
fn nest(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let at = haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the needle is there");
    [&haystack[..at], with, &haystack[at + needle.len()..]].concat()
}

fn openai_token(text: &str) -> String {
    json!({"choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]}).to_string()
}

fn openai_junk() -> Vec<Event> {
    let mut junk = common_junk(openai_token);
    // Past serde_json's recursion limit where it is read: were it taken for an error report, it
    // would end the answer.
    let deep = format!("{{\"error\":{}}}", nest(300));
    junk.extend([
        data(deep),
        json_data(json!({"choices": "x".repeat(100 * 1024)})),
        json_data(json!({"error": null})),
        json_data(json!({"choices": "LOST"})),
        json_data(json!({"choices": [1]})),
        json_data(json!({"choices": [{"delta": "LOST"}]})),
        json_data(json!({"choices": [{"delta": {"content": 5}}]})),
        json_data(json!({"choices": [{"delta": {"content": ["LOST"]}}]})),
        json_data(json!({"choices": [{"delta": {"reasoning_content": {}}}]})),
        json_data(json!({"choices": [{"delta": {"content": "LOST"}, "finish_reason": 5}]})),
        json_data(json!({"choices": [{"delta": {"content": "LOST"}}], "usage": "x"})),
        json_data(json!({"usage": {"prompt_tokens": "9"}})),
        json_data(json!({"usage": {"completion_tokens": -1}})),
        json_data(json!({"x_groq": {"usage": []}})),
    ]);
    junk
}

fn anthropic_token(text: &str) -> String {
    json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":text}})
        .to_string()
}

fn anthropic_junk() -> Vec<Event> {
    let mut junk = common_junk(anthropic_token);
    let deep = format!(
        "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{}}}",
        nest(300)
    );
    let delta = |delta: serde_json::Value| {
        json_data(json!({"type":"content_block_delta","index":0,"delta":delta}))
    };
    junk.extend([
        data(deep),
        delta(json!({"type": "text_delta", "text": ["x".repeat(100 * 1024)]})),
        json_data(json!({"type": "content_block_delta", "huge": "x".repeat(100 * 1024)})),
        json_data(json!({"type": "error", "error": null})),
        json_data(json!({})),
        json_data(json!({"type": 5})),
        json_data(json!({"type": null, "delta": {"type": "text_delta", "text": "LOST"}})),
        delta(json!("LOST")),
        delta(json!({"type": "text_delta", "text": 5})),
        delta(json!({"type": "text_delta", "text": ["LOST"]})),
        delta(json!({"type": "text_delta"})),
        delta(json!({"type": "thinking_delta", "thinking": []})),
        delta(json!({"type": 7, "text": "LOST"})),
        json_data(json!({"type": "message_delta", "delta": {"stop_reason": 5}})),
        json_data(json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": "x"}})),
        json_data(json!({"type": "message_start", "message": "LOST"})),
        json_data(json!({"type": "message_start", "message": {"usage": {"input_tokens": -1}}})),
    ]);
    junk
}

/// The real tokens: one more than the junk events, so that each junk event sits between two.
fn real_tokens(junk: &[Event]) -> Vec<String> {
    (0..=junk.len()).map(|i| format!("t{i} ")).collect()
}

/// `head`, then each real token with a junk event after it (but the last), then `tail`: the
/// whole body, with `eol` ending each line and an empty line after each event.
fn body(head: &[Event], tokens: &[Event], junk: &[Event], tail: &[Event], eol: &[u8]) -> Vec<u8> {
    let mut events: Vec<&Event> = head.iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        events.push(token);
        events.extend(junk.get(i));
    }
    events.extend(tail);
    let mut body = Vec::new();
    for event in events {
        for line in event {
            body.extend_from_slice(line);
            body.extend_from_slice(eol);
        }
        body.extend_from_slice(eol);
    }
    body
}

/// The body in one write, and cut into 61-byte reads (across characters, lines and CR LF).
fn replies(body: &[u8]) -> [Reply; 2] {
    let whole = Reply::sse(vec![Step::Write(body.to_vec())]);
    let cut = Reply::sse(body.chunks(61).map(|c| Step::Write(c.to_vec())).collect());
    [whole, cut]
}

/// Asks once per reply queued, and checks each answer is exactly the real one.
async fn assert_every_answer_is(
    app: &TestApp,
    replies: usize,
    tokens: &[String],
    finish: serde_json::Value,
) {
    for n in 0..replies {
        let answer: Answer = app.stream("junk").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.tokens(), tokens, "answer {n}: {}", answer.body);
        assert!(!answer.body.contains("LOST") && !answer.body.contains('\u{FFFD}'));
        assert!(
            answer.ended_with_done(),
            "answer {n} ended: {:?}",
            answer.last()
        );
        assert_eq!(
            answer.events[answer.events.len() - 2].json(),
            finish,
            "answer {n}"
        );
    }
}

#[tokio::test]
async fn junk_upstream_events_never_end_an_openai_answer() {
    let app = spawn_app().await;
    let junk = openai_junk();
    let tokens = real_tokens(&junk);
    let token_events: Vec<Event> = tokens.iter().map(|t| data(openai_token(t))).collect();
    let tail = [
        json_data(json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})),
        json_data(json!({"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":40}})),
        data("[DONE]"),
    ];
    for eol in [&b"\n"[..], b"\r\n"] {
        for reply in replies(&body(&[], &token_events, &junk, &tail, eol)) {
            app.mock.then_reply(reply);
        }
    }

    assert_every_answer_is(
        &app,
        4,
        &tokens,
        json!({"finish_reason":"stop","usage":{"prompt_tokens":9,"completion_tokens":40}}),
    )
    .await;
}

#[tokio::test]
async fn junk_upstream_events_never_end_an_anthropic_answer() {
    let app = spawn_anthropic_with(|_| {}).await;
    let junk = anthropic_junk();
    let tokens = real_tokens(&junk);
    let token_events: Vec<Event> = tokens
        .iter()
        .map(|t| {
            let mut event = vec![b"event: content_block_delta".to_vec()];
            event.extend(data(anthropic_token(t)));
            event
        })
        .collect();
    let head = [
        json_data(
            json!({"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}),
        ),
        json_data(
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
    ];
    let tail = [
        json_data(json!({"type":"content_block_stop","index":0})),
        json_data(
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":40}}),
        ),
        json_data(json!({"type":"message_stop"})),
    ];
    for eol in [&b"\n"[..], b"\r\n"] {
        for reply in replies(&body(&head, &token_events, &junk, &tail, eol)) {
            app.mock.then_reply(reply);
        }
    }

    assert_every_answer_is(
        &app,
        4,
        &tokens,
        json!({"finish_reason":"stop","usage":{"prompt_tokens":12,"completion_tokens":40}}),
    )
    .await;
}
