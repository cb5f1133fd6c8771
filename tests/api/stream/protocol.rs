//! The events a client receives: JSON tokens with ids, the finish and `[DONE]`, any text intact,
//! each token the moment it arrives, keep-alives only in silence, and the upstream's SSE read robustly.

use std::time::Duration;

use crate::{
    helpers::{spawn_app, spawn_app_with, spawn_demo_app_with},
    mock_upstream::{End, Reply, Step, openai},
};

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn tokens_stream_as_json_events_then_finish_and_done() {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(openai::answer(
        &["Hello", ", ", "world"],
        Duration::ZERO,
    )));

    let answer = app.stream("hi").await;

    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(answer.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(answer.header("x-accel-buffering").as_deref(), Some("no"));
    assert!(
        answer
            .header("content-encoding")
            .is_none_or(|e| e == "identity")
    );
    assert_eq!(answer.tokens(), ["Hello", ", ", "world"]);
    let finish = answer.events[answer.events.len() - 2].json();
    assert_eq!(
        finish,
        serde_json::json!({"finish_reason":"stop","usage":{"prompt_tokens":9,"completion_tokens":3}})
    );
    assert!(answer.ended_with_done());
}

#[tokio::test]
async fn every_event_carries_the_streams_id_and_its_number() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["a", "b"], Duration::ZERO)));

    let answer = app.stream("hi").await;

    let ids: Vec<String> = answer
        .events
        .iter()
        .map(|e| e.id.clone().expect("an id"))
        .collect();
    let stream_id = ids[0].split_once(':').expect("stream:number").0.to_owned();
    assert!(!stream_id.is_empty());
    let expected: Vec<String> = (1..=ids.len())
        .map(|n| format!("{stream_id}:{n}"))
        .collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn the_upstream_request_carries_the_question_settings_and_key() {
    let app = spawn_app_with(|c| {
        c.llm_model = Some("model-x".into());
        c.llm_max_tokens = 77;
    })
    .await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    app.stream("what is SSE?").await;

    let request = &app.mock.requests()[0];
    assert!(
        request.head.starts_with("POST /v1/chat/completions "),
        "{}",
        request.head
    );
    assert_eq!(
        request.header("authorization").as_deref(),
        Some("Bearer sk-test-SECRET-KEY")
    );
    let body = request.json();
    assert_eq!(body["model"], "model-x");
    assert_eq!(body["max_tokens"], 77);
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(
        body["messages"][1],
        serde_json::json!({"role":"user","content":"what is SSE?"})
    );
}

#[tokio::test]
async fn unicode_newlines_quotes_and_backslashes_arrive_intact() {
    let app = spawn_app().await;
    let tokens = [
        "line one\nline two",
        " \"quoted\" ",
        "back\\slash",
        " 你好世界",
        " 🚀👩‍👩‍👧",
        " e\u{301}",
        "\ttab",
        "<img src=x onerror=alert(1)>",
    ];
    app.mock
        .always(Reply::sse(openai::answer(&tokens, Duration::ZERO)));

    let answer = app.stream("unicode").await;

    assert_eq!(answer.text(), tokens.concat());
    assert!(answer.ended_with_done());
}

#[tokio::test]
async fn the_first_token_reaches_the_client_while_the_upstream_is_still_producing() {
    let app = spawn_app().await;
    let mut steps = vec![openai::token("first")];
    steps.push(Step::Sleep(Duration::from_secs(30)));
    app.mock.always(Reply::sse(steps).then(End::Hang));

    let mut reader = app.open("hi").await;
    let first = reader.next_data().await.expect("an event");

    assert_eq!(first.json()["token"], "first");
    assert_eq!(
        app.mock.closed_count(),
        0,
        "the upstream is still producing"
    );
}

#[tokio::test]
async fn tokens_leave_as_they_arrive_not_batched() {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(openai::answer(
        &["a", "b", "c", "d", "e"],
        150 * MS,
    )));

    let answer = app.stream("hi").await;

    let at: Vec<_> = answer
        .events
        .iter()
        .filter(|e| e.json()["token"].is_string())
        .map(|e| e.at)
        .collect();
    assert_eq!(at.len(), 5);
    // Five tokens 150 ms apart cannot arrive together: the spread is at least 4 gaps' worth, less jitter.
    assert!(
        at[4] - at[0] >= 400 * MS,
        "tokens arrived bunched: {:?}",
        at[4] - at[0]
    );
}

#[tokio::test]
async fn the_upstream_sse_is_read_robustly() {
    let app = spawn_app().await;
    let token = |t: &str| {
        serde_json::json!({"choices":[{"delta":{"content":t},"finish_reason":null}]}).to_string()
    };
    let mut body = Vec::new();
    body.extend_from_slice("\u{feff}".as_bytes()); // a byte-order mark
    body.extend_from_slice(b": a comment\r\n\r\n"); // a comment, CRLF
    body.extend_from_slice(format!("data: {}\r\n\r\n", token("crlf ")).as_bytes());
    body.extend_from_slice(b"data: {\"choices\":[]}\n\n"); // empty choices
    body.extend_from_slice(b"data: {not json\n\n"); // malformed: skipped
    body.extend_from_slice(
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
    ); // role only
    body.extend_from_slice(b"event: message\nid: 5\ndata: {\"choices\":[{\"delta\":\n"); // multi-line data
    body.extend_from_slice(b"data: {\"content\":\"multi \"}}]}\n\n");
    let split = format!("data: {}\n\n", token("中文 split"));
    let split = split.as_bytes();
    // Cut inside the multi-byte "中" and between the two newlines.
    let cut = split.iter().position(|&b| b == 0xE4).unwrap() + 1;
    let mut steps = vec![
        Step::Write(body),
        Step::Write(split[..cut].to_vec()),
        Step::Sleep(20 * MS),
        Step::Write(split[cut..split.len() - 1].to_vec()),
        Step::Sleep(20 * MS),
        Step::Write(b"\n".to_vec()),
    ];
    steps.extend([openai::finish("length"), openai::done()]);
    app.mock.always(Reply::sse(steps));

    let answer = app.stream("robust").await;

    assert_eq!(answer.text(), "crlf multi 中文 split");
    assert_eq!(
        answer.events[answer.events.len() - 2].json(),
        serde_json::json!({"finish_reason":"length"})
    );
    assert!(answer.ended_with_done());
}

#[tokio::test]
async fn a_long_line_split_across_many_reads_is_decoded_in_linear_time() {
    let app = spawn_app().await;
    let text = "x".repeat(256 * 1024);
    let line = format!(
        "data: {}\n\n",
        serde_json::json!({"choices":[{"delta":{"content":text}}]})
    );
    let mut steps: Vec<Step> = line
        .as_bytes()
        .chunks(256)
        .map(|c| Step::Write(c.to_vec()))
        .collect();
    steps.extend([openai::finish("stop"), openai::done()]);
    app.mock.always(Reply::sse(steps));

    // A quadratic decoder re-parses the pending line on each of its 1000+ chunks (tens of
    // gigabytes of scanning); a linear one finishes well inside the deadline.
    let answer = app.stream("long").await;

    assert_eq!(answer.text().len(), text.len());
    assert!(answer.ended_with_done());
}

#[tokio::test]
async fn keep_alive_comments_flow_while_the_first_token_is_slow() {
    let app = spawn_app_with(|c| c.keepalive = std::time::Duration::from_secs_f64(0.2)).await;
    app.mock.always(Reply::sse(vec![
        Step::Sleep(Duration::from_millis(900)),
        openai::token("late"),
        openai::finish("stop"),
        openai::done(),
    ]));

    let answer = app.stream("hi").await;

    let before = answer.keep_alives_before_first_event();
    assert!(
        before >= 3,
        "keep-alive comments before the first token: {before}"
    );
    assert_eq!(answer.text(), "late");
}

#[tokio::test]
async fn no_keep_alive_comment_interrupts_a_flowing_answer() {
    let app = spawn_app_with(|c| c.keepalive = std::time::Duration::from_secs_f64(0.4)).await;
    app.mock
        .always(Reply::sse(openai::answer(&["t "; 30], 50 * MS)));

    let answer = app.stream("hi").await;

    assert!(answer.ended_with_done());
    assert_eq!(
        answer.comments.len(),
        0,
        "tokens every 50 ms need no keep-alive every 400 ms"
    );
}

#[tokio::test]
async fn the_demo_model_streams_a_deterministic_answer_that_quotes_the_question() {
    let app = spawn_demo_app_with(|_| {}).await;

    let first = app.stream("what is this?").await;
    let second = app.stream("what is this?").await;

    assert!(first.ended_with_done());
    assert!(first.tokens().len() > 20, "word by word");
    assert_eq!(first.text(), second.text());
    assert!(first.text().contains("demo model"));
    assert!(first.text().contains("“what is this?”"));
    assert!(first.text().contains("LLM_API_KEY"));
    assert!(!first.text().is_ascii());
    assert_eq!(app.mock.request_count(), 0, "the demo needs no network");
}
