//! Traces over OTLP/HTTP: a collector of the test's own receives the protobuf exports and decodes
//! them with the protocol's own types; the spans of one answer, their parents and attributes, the
//! `traceparent` the upstream sees, an incoming trace continued, message content only on opt-in,
//! and a collector that hangs delaying no answer.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    helpers::{TestApp, spawn_app_with},
    mock_upstream::{Reply, openai},
};

/// A real OTLP/HTTP receiver: `POST /v1/traces` with protobuf, answered 200; or, hanging, never answered.
#[derive(Clone)]
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start(hang: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            spans: Arc::default(),
        };
        let spans = Arc::clone(&collector.spans);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, Arc::clone(&spans), hang));
            }
        });
        collector
    }

    /// The spans received so far, waited for until `done` holds (or the deadline panics).
    async fn wait_for(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < until, "collector: {what}; got {spans:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(mut socket: TcpStream, spans: Arc<Mutex<Vec<Span>>>, hang: bool) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0_u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(
            head.contains("content-type: application/x-protobuf"),
            "{head}"
        );
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0_u8; 8192];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        if hang {
            std::future::pending::<()>().await;
        }
        let request = ExportTraceServiceRequest::decode(&buffer[head_end..head_end + length])
            .expect("an OTLP protobuf export");
        buffer.drain(..head_end + length);
        let received = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        spans.lock().unwrap().extend(received);
        let reply =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if socket.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key)? {
        Value::StringValue(text) => Some(text),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key)? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("a span named {name}: {spans:#?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The three spans of one answer have all arrived.
fn answered(spans: &[Span]) -> bool {
    ["GET /api/stream", "chat gpt-4o-mini", "POST"]
        .iter()
        .all(|name| spans.iter().any(|span| span.name == *name))
}

async fn traced_app(
    collector: &Collector,
    adjust: impl FnOnce(&mut llm_stream::config::Config),
) -> TestApp {
    let url = collector.url.clone();
    let app = spawn_app_with(|config| {
        config.otel_exporter_otlp_endpoint = Some(url.parse().unwrap());
        config.otel_bsp_schedule_delay = Duration::from_millis(20);
        config.llm_model = Some("gpt-4o-mini".into());
        adjust(config);
    })
    .await;
    app.mock.always(Reply::sse(vec![
        openai::token("Hel"),
        openai::token("lo"),
        openai::finish("stop"),
        openai::usage(7, 2),
        openai::done(),
    ]));
    app
}

#[tokio::test]
async fn an_answer_is_one_trace_of_its_server_chat_and_upstream_spans() {
    let collector = Collector::start(false).await;
    let app = traced_app(&collector, |_| {}).await;

    let answer = app.stream("Say hello").await;
    assert_eq!(answer.text(), "Hello");
    let spans = collector.wait_for("the answer's spans", answered).await;

    let server = named(&spans, "GET /api/stream");
    let chat = named(&spans, "chat gpt-4o-mini");
    let attempt = named(&spans, "POST");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(chat.kind, SpanKind::Client as i32);
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert!(
        server.parent_span_id.is_empty(),
        "the server span is the root"
    );
    assert_eq!(chat.trace_id, server.trace_id);
    assert_eq!(attempt.trace_id, server.trace_id);
    assert_eq!(chat.parent_span_id, server.span_id);
    assert_eq!(attempt.parent_span_id, chat.span_id);

    assert_eq!(text(server, "http.request.method"), Some("GET"));
    assert_eq!(text(server, "http.route"), Some("/api/stream"));
    assert_eq!(int(server, "http.response.status_code"), Some(200));
    assert_eq!(text(server, "client.address"), Some("127.0.0.1"));

    assert_eq!(text(chat, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(text(chat, "gen_ai.provider.name"), Some("openai"));
    assert_eq!(text(chat, "gen_ai.request.model"), Some("gpt-4o-mini"));
    assert!(int(chat, "gen_ai.request.max_tokens").is_some());
    assert!(attribute(chat, "gen_ai.request.temperature").is_some());
    assert_eq!(int(chat, "gen_ai.usage.input_tokens"), Some(7));
    assert_eq!(int(chat, "gen_ai.usage.output_tokens"), Some(2));
    match attribute(chat, "gen_ai.response.finish_reasons") {
        Some(Value::ArrayValue(reasons)) => assert_eq!(
            reasons.values[0].value,
            Some(Value::StringValue("stop".into()))
        ),
        other => panic!("finish reasons: {other:?}"),
    }
    assert_eq!(text(chat, "server.address"), Some("127.0.0.1"));
    assert_eq!(
        int(chat, "server.port"),
        Some(i64::from(app.mock.address.port()))
    );
    assert!(text(chat, "gen_ai.conversation.id").is_some());
    assert!(attribute(chat, "error.type").is_none());
    assert!(
        chat.events
            .iter()
            .any(|event| event.name == "gen_ai.first_token"),
        "the first token is marked: {:?}",
        chat.events
    );
    assert!(
        attribute(chat, "gen_ai.input.messages").is_none()
            && attribute(chat, "gen_ai.output.messages").is_none(),
        "no message content unless asked"
    );

    assert_eq!(text(attempt, "http.request.method"), Some("POST"));
    assert_eq!(int(attempt, "http.response.status_code"), Some(200));
    let sent = app.mock.requests()[0]
        .header("traceparent")
        .expect("a traceparent upstream");
    assert_eq!(
        sent,
        format!("00-{}-{}-01", hex(&attempt.trace_id), hex(&attempt.span_id))
    );
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued() {
    let collector = Collector::start(false).await;
    let app = traced_app(&collector, |_| {}).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";

    crate::helpers::SseReader::get(
        app.stream_url("Say hello"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await
    .read_to_end()
    .await;
    let spans = collector.wait_for("the answer's spans", answered).await;

    let server = named(&spans, "GET /api/stream");
    assert_eq!(hex(&server.trace_id), trace);
    assert_eq!(hex(&server.parent_span_id), parent);
    let sent = app.mock.requests()[0].header("traceparent").unwrap();
    assert!(sent.starts_with(&format!("00-{trace}-")), "{sent}");
}

#[tokio::test]
async fn message_content_is_exactly_the_question_and_the_answer_when_asked_for() {
    let collector = Collector::start(false).await;
    let app = traced_app(&collector, |config| {
        config.otel_capture_message_content = true
    })
    .await;

    app.stream("Say hello").await;
    let spans = collector.wait_for("the answer's spans", answered).await;

    let chat = named(&spans, "chat gpt-4o-mini");
    let input: serde_json::Value =
        serde_json::from_str(text(chat, "gen_ai.input.messages").unwrap()).unwrap();
    assert_eq!(
        input,
        serde_json::json!([{"role": "user", "parts": [{"type": "text", "content": "Say hello"}]}])
    );
    let output: serde_json::Value =
        serde_json::from_str(text(chat, "gen_ai.output.messages").unwrap()).unwrap();
    assert_eq!(output[0]["parts"][0]["content"], "Hello");
    assert_eq!(output[0]["finish_reason"], "stop");
}

#[tokio::test]
async fn an_upstream_error_marks_the_chat_span_with_its_code() {
    let collector = Collector::start(false).await;
    let app = traced_app(&collector, |config| config.llm_retries = 0).await;
    app.mock
        .then_reply(Reply::status(500, r#"{"error":"boom"}"#));

    app.stream("Say hello").await;
    let spans = collector.wait_for("the answer's spans", answered).await;

    let chat = named(&spans, "chat gpt-4o-mini");
    assert_eq!(text(chat, "error.type"), Some("upstream_unavailable"));
    let attempt = named(&spans, "POST");
    assert_eq!(int(attempt, "http.response.status_code"), Some(500));
    assert_eq!(text(attempt, "error.type"), Some("500"));
}

#[tokio::test]
async fn without_a_collector_configured_nothing_is_traced_upstream() {
    let app = spawn_app_with(|_| {}).await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    app.stream("Say hello").await;

    assert_eq!(app.mock.requests()[0].header("traceparent"), None);
}

#[tokio::test]
async fn a_hanging_collector_delays_no_answer_and_its_dropped_spans_are_counted() {
    let collector = Collector::start(true).await;
    let app = traced_app(&collector, |config| {
        config.otel_bsp_max_queue_size = 2;
        config.otel_bsp_max_export_batch_size = 1;
    })
    .await;

    for _ in 0..5 {
        let started = Instant::now();
        let answer = app.stream("Say hello").await;
        assert_eq!(answer.text(), "Hello");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "an answer took {:?} with the collector hanging",
            started.elapsed()
        );
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let dropped = metrics.lines().any(|line| {
            line.starts_with("llm_stream_trace_spans_dropped_total{reason=\"queue_full\"}")
                && line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) > Some(0.0)
        });
        if dropped {
            break;
        }
        assert!(
            Instant::now() < until,
            "no dropped spans counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The resume span, which links to the chat span of the answer it resumes.
fn assert_resume_linked(spans: &[Span], stream: &str) {
    let chat = named(spans, "chat gpt-4o-mini");
    let resume = named(spans, "resume");
    assert_eq!(text(resume, "llm_stream.stream_id"), Some(stream));
    assert_eq!(resume.links.len(), 1, "{resume:#?}");
    assert_eq!(resume.links[0].trace_id, chat.trace_id);
    assert_eq!(resume.links[0].span_id, chat.span_id);
    assert_ne!(
        resume.trace_id, chat.trace_id,
        "a resume is a request of its own"
    );
}

/// Asks `url` with `Last-Event-ID: last` until the rest comes (another instance may not have
/// read the answer's copy in Redis yet).
async fn resumed(url: String, last: &str) -> crate::helpers::Answer {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let rest = crate::helpers::SseReader::get(url.clone(), &[("Last-Event-ID", last)])
            .await
            .read_to_end()
            .await;
        if rest.status == 200 {
            return rest;
        }
        assert!(Instant::now() < until, "never resumed: {}", rest.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_resume_is_a_span_linked_to_the_answer_it_resumes() {
    let collector = Collector::start(false).await;
    let app = traced_app(&collector, |_| {}).await;
    let answer = app.stream("Say hello").await;
    let first = answer.events[0].id.clone().unwrap();

    let rest = resumed(app.stream_url("Say hello"), &first).await;
    assert_eq!(rest.text(), "lo");

    let spans = collector
        .wait_for("the resume's span", |spans| {
            answered(spans) && spans.iter().any(|span| span.name == "resume")
        })
        .await;
    assert_resume_linked(&spans, &answer.stream_id());
}

#[tokio::test]
async fn a_resume_on_another_instance_is_linked_to_the_answer_through_redis() {
    let collector = Collector::start(false).await;
    let url: reqwest::Url = collector.url.parse().unwrap();
    let pair = crate::redis::harness::pair(|config| {
        config.otel_exporter_otlp_endpoint = Some(url.clone());
        config.otel_bsp_schedule_delay = Duration::from_millis(20);
        config.llm_model = Some("gpt-4o-mini".into());
    })
    .await;
    pair.mock.always(Reply::sse(vec![
        openai::token("Hel"),
        openai::token("lo"),
        openai::finish("stop"),
        openai::usage(7, 2),
        openai::done(),
    ]));
    let answer = pair.a.stream("Say hello").await;
    let first = answer.events[0].id.clone().unwrap();

    let rest = resumed(pair.b.stream_url("Say hello"), &first).await;
    assert_eq!(rest.text(), "lo");

    let spans = collector
        .wait_for("the resume's span", |spans| {
            answered(spans) && spans.iter().any(|span| span.name == "resume")
        })
        .await;
    assert_resume_linked(&spans, &answer.stream_id());
}

#[tokio::test]
async fn a_collector_refusing_connections_delays_no_answer_and_its_lost_spans_are_counted() {
    let refusing = crate::mock_upstream::refusing_url();
    let app = spawn_app_with(|config| {
        config.otel_exporter_otlp_endpoint = Some(refusing.parse().unwrap());
        config.otel_bsp_schedule_delay = Duration::from_millis(20);
    })
    .await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    let started = Instant::now();
    assert_eq!(app.stream("Say hello").await.text(), "ok");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        if metrics.lines().any(|line| {
            line.starts_with("llm_stream_trace_spans_dropped_total{reason=\"export_failed\"}")
        }) {
            break;
        }
        assert!(Instant::now() < until, "no lost spans counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
