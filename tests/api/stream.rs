//! The streaming protocol, end to end: the real server in front of the mock upstream.

use std::time::Duration;

use crate::{
    helpers::{DEADLINE, SseReader, spawn_app, spawn_app_with, spawn_demo_app_with},
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
    let app = spawn_app_with(|c| c.upstream_idle_timeout_secs = 0.5).await;
    app.mock
        .always(Reply::sse(vec![openai::token("then silence")]).then(End::Hang));

    let answer = app.stream("hi").await;

    assert_eq!(answer.text(), "then silence");
    assert_eq!(answer.error().unwrap()["error"], "timeout");
    app.mock.wait_for_closed(1, DEADLINE).await;
}

#[tokio::test]
async fn an_answer_that_outlasts_the_stream_budget_times_out() {
    let app = spawn_app_with(|c| c.stream_timeout_secs = 0.6).await;
    app.mock
        .always(Reply::sse(openai::answer(&["t"; 40], 50 * MS)));

    let answer = app.stream("hi").await;

    assert!(!answer.tokens().is_empty());
    assert_eq!(answer.error().unwrap()["error"], "timeout");
    assert!(answer.last().at - answer.started < Duration::from_secs(2));
}

#[tokio::test]
async fn keep_alive_comments_flow_while_the_first_token_is_slow() {
    let app = spawn_app_with(|c| c.keepalive_secs = 0.2).await;
    app.mock.always(Reply::sse(vec![
        Step::Sleep(Duration::from_millis(900)),
        openai::token("late"),
        openai::finish("stop"),
        openai::done(),
    ]));

    let answer = app.stream("hi").await;

    let first_token = answer.events[0].at;
    let before = answer
        .comments
        .iter()
        .filter(|c| c.comment.as_deref() == Some("keep-alive") && c.at < first_token)
        .count();
    assert!(
        before >= 3,
        "keep-alive comments before the first token: {before}"
    );
    assert_eq!(answer.text(), "late");
}

#[tokio::test]
async fn no_keep_alive_comment_interrupts_a_flowing_answer() {
    let app = spawn_app_with(|c| c.keepalive_secs = 0.4).await;
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
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["tok "; 200], 20 * MS)));

    let mut reader = app.open("hi").await;
    reader.next_data().await.expect("a first token");
    drop(reader);

    app.mock.wait_for_closed(1, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_that_disconnects_while_the_upstream_is_silent_cancels_it() {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![]).then(End::Hang));

    let reader = app.open("hi").await;
    app.mock.wait_for_requests(1, DEADLINE).await;
    drop(reader);

    app.mock.wait_for_closed(1, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_applies_backpressure_to_the_upstream() {
    let app = spawn_app_with(|c| c.stream_timeout_secs = 3.0).await;
    app.mock.always(Reply::sse(vec![Step::Flood]));

    // Open the stream but never read the body.
    let response = reqwest::get(app.stream_url("hi")).await.unwrap();
    app.mock
        .wait_until("the upstream to stall", DEADLINE, |m| m.flood_stalled())
        .await;
    let stalled_at = app.mock.flooded_bytes();

    // Bounded buffers only: socket buffers on both hops plus the server's, a few MiB at most.
    assert!(
        stalled_at < 32 << 20,
        "the server read {stalled_at} bytes for a client that read nothing"
    );
    // The stream ends at its timeout, closing the upstream, though the client still reads nothing.
    app.mock.wait_for_closed(1, DEADLINE).await;
    assert_eq!(app.limits.streams_open(), 0, "its slot is free again");
    drop(response);
}

#[tokio::test]
async fn a_request_with_last_event_id_is_told_not_to_reconnect() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["x"], Duration::ZERO)));

    let reader = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", "abc:3")]).await;

    assert_eq!(reader.status, 204);
    assert_eq!(app.mock.request_count(), 0, "the model is not asked again");
}

async fn refusal(app: &crate::helpers::TestApp, url: String) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(
        app.mock.request_count(),
        0,
        "a refused request never reaches the upstream"
    );
    (status, json)
}

#[tokio::test]
async fn bad_questions_are_refused_with_400_before_any_stream() {
    let app = spawn_app().await;
    let base = format!("{}/api/stream", app.address);
    for url in [
        base.clone(),
        format!("{base}?q="),
        format!("{base}?q=%20%0A%09"),
        app.stream_url(&"中".repeat(1001)),
        app.stream_url("nul\0byte"),
        app.stream_url("bell\u{7}"),
        app.stream_url("escape\u{1b}[31m"),
    ] {
        let (status, json) = refusal(&app, url.clone()).await;
        assert_eq!(status, 400, "{url}");
        assert_eq!(json["error"], "invalid_query", "{url}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn a_question_is_measured_in_characters_not_bytes() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    let answer = app.stream(&"中".repeat(1000)).await;
    assert_eq!(answer.status, 200);
    let answer = app.stream("tabs\tand\nnewlines are fine").await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_wrong_methods_405() {
    let app = spawn_app().await;

    let response = app.get("/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );

    let response = crate::helpers::CLIENT
        .post(format!("{}/api/stream?q=hi", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    for path in ["/", "/healthz", "/api/limits", "/metrics"] {
        let response = crate::helpers::CLIENT
            .delete(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{path}");
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
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

#[tokio::test]
async fn on_shutdown_running_streams_finish_within_the_grace() {
    let mut app = spawn_demo_app_with(|c| {
        c.demo_token_ms = 5;
        c.shutdown_grace_secs = 10.0;
    })
    .await;
    let mut reader = app.open("hi").await;
    reader.next_data().await.expect("a first token");

    app.begin_shutdown();
    let answer = reader.read_to_end().await;

    assert!(
        answer.ended_with_done(),
        "a stream that fits in the grace finishes normally"
    );
    app.stopped().await.unwrap();
}

#[tokio::test]
async fn on_shutdown_streams_past_the_grace_end_with_server_shutdown() {
    let mut app = spawn_app_with(|c| c.shutdown_grace_secs = 0.5).await;
    app.mock
        .always(Reply::sse(vec![openai::token("still going")]).then(End::Hang));
    let mut reader = app.open("hi").await;
    reader.next_data().await.expect("a first token");

    app.begin_shutdown();
    let answer = reader.read_to_end().await;

    assert_eq!(
        answer.error().expect("an in-band error, not a silent cut")["error"],
        "server_shutdown"
    );
    app.stopped().await.unwrap();
    app.mock.wait_for_closed(1, DEADLINE).await;
}

#[tokio::test]
async fn after_shutdown_begins_no_new_connection_is_accepted() {
    let mut app = spawn_demo_app_with(|_| {}).await;
    app.stopped().await.unwrap();

    let result = reqwest::get(format!("{}/healthz", app.address)).await;

    assert!(result.is_err(), "the listener is closed");
}
