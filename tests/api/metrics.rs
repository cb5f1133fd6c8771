//! `/metrics` and request ids. The metrics recorder is one per process and the tests run side by
//! side, so counters are read before and after and compared as deltas (at least what this test
//! did); the open-streams gauge is read from the app's own slots at each scrape.

use std::{process::Stdio, time::Duration};

use llm_stream::startup::Application;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    helpers::{CLIENT, DEADLINE, SseReader, TestApp, eventually, spawn_app_with, test_config},
    mock_upstream::{End, Reply, openai},
};

/// A series' value in Prometheus text, e.g. `llm_stream_streams_total{outcome="done"}`; 0 when absent.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

pub async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Scrapes until `check` holds on the text, or fails after the deadline.
pub async fn scrape_until(app: &TestApp, what: &str, check: impl Fn(&str) -> bool) -> String {
    let last = std::cell::RefCell::new(String::new());
    eventually(&format!("/metrics to show {what}"), DEADLINE, || async {
        let text = scrape(app).await;
        let shown = check(&text);
        *last.borrow_mut() = text;
        shown
    })
    .await;
    last.into_inner()
}

const DONE: &str = r#"llm_stream_streams_total{outcome="done"}"#;
const TOKENS: &str = "llm_stream_tokens_sent_total";
const FIRST_TOKEN_COUNT: &str = "llm_stream_first_token_seconds_count";
const DURATION_COUNT: &str = "llm_stream_stream_duration_seconds_count";
const OPEN: &str = "llm_stream_streams_open";

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let app = spawn_app_with(|_| {}).await;
    app.mock
        .always(Reply::sse(openai::answer(&["a", "b"], Duration::ZERO)));
    app.stream("hello").await;
    assert_eq!(app.get("/api/stream?q=").await.status(), 400);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    for line in [
        "# TYPE llm_stream_streams_open gauge",
        "# TYPE llm_stream_streams_total counter",
        "# TYPE llm_stream_refusals_total counter",
        "# TYPE llm_stream_first_token_seconds histogram",
        "# TYPE llm_stream_stream_duration_seconds histogram",
        "# TYPE llm_stream_tokens_sent_total counter",
        "# TYPE llm_stream_upstream_responses_total counter",
        r#"llm_stream_first_token_seconds_bucket{le="+Inf"}"#,
        r#"llm_stream_refusals_total{reason="invalid_query"}"#,
        r#"llm_stream_upstream_responses_total{upstream="primary",status="200"}"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test]
async fn metrics_addr_moves_metrics_to_their_own_listener() {
    let mut config = test_config(&["--llm-provider", "demo"]);
    config.metrics_addr = Some("127.0.0.1:0".into());
    let app = Application::build(config).await.unwrap();
    let main = app.address();
    let metrics = app.metrics_address().expect("a metrics listener");
    assert_ne!(main, metrics);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let get = async |url: String| CLIENT.get(url).send().await.unwrap();

    assert_eq!(get(format!("http://{main}/metrics")).await.status(), 404);
    let own = get(format!("http://{metrics}/metrics")).await;
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains(OPEN));
    let elsewhere = get(format!("http://{metrics}/api/stream?q=hi")).await;
    assert_eq!(elsewhere.status(), 404);

    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("both listeners stop in time")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_sane_request_id_is_echoed_and_sent_upstream() {
    let app = spawn_app_with(|_| {}).await;
    app.mock
        .always(Reply::sse(openai::answer(&["hi"], Duration::ZERO)));
    let id = "trace-42.a:b_C";

    let answer = SseReader::get(app.stream_url("hello"), &[("X-Request-Id", id)])
        .await
        .read_to_end()
        .await;

    assert!(answer.ended_with_done());
    assert_eq!(answer.header("x-request-id").as_deref(), Some(id));
    let upstream = app.mock.requests();
    assert_eq!(upstream[0].header("x-request-id").as_deref(), Some(id));
}

#[tokio::test]
async fn an_insane_request_id_is_replaced_by_a_new_one() {
    let app = spawn_app_with(|_| {}).await;
    app.mock
        .always(Reply::sse(openai::answer(&["hi"], Duration::ZERO)));
    let too_long = "a".repeat(300);

    for (n, insane) in [too_long.as_str(), "has spaces", "semi;colon"]
        .into_iter()
        .enumerate()
    {
        let answer = SseReader::get(app.stream_url("hello"), &[("X-Request-Id", insane)])
            .await
            .read_to_end()
            .await;
        let made = answer
            .header("x-request-id")
            .expect("an id in the response");
        assert_ne!(made, insane);
        assert_is_made_id(&made);
        let upstream = app.mock.requests();
        assert_eq!(upstream[n].header("x-request-id"), Some(made));
    }
}

#[tokio::test]
async fn a_request_without_an_id_is_given_one() {
    let app = spawn_app_with(|_| {}).await;
    let first = app.get("/healthz").await;
    let second = app.get("/healthz").await;
    let not_found = app.get("/nowhere").await;

    let ids: Vec<String> = [&first, &second, &not_found]
        .iter()
        .map(|r| r.headers()["x-request-id"].to_str().unwrap().to_owned())
        .collect();
    ids.iter().for_each(|id| assert_is_made_id(id));
    assert_ne!(ids[0], ids[1]);
}

fn assert_is_made_id(id: &str) {
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a made id: {id:?}"
    );
}

#[tokio::test]
async fn log_format_json_gives_one_json_object_per_line_with_the_request_id() {
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-stream"))
        .env_clear()
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LLM_PROVIDER", "demo")
        .env("DEMO_TOKEN_MS", "1")
        // Away from any .env file.
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let mut next_line = async || -> serde_json::Value {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("a log line in time")
            .unwrap()
            .expect("the server is still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };

    let address = loop {
        let line = next_line().await;
        if line["message"] == "llm-stream listening" {
            break line["address"].as_str().unwrap().to_owned();
        }
    };
    let answer = SseReader::get(
        format!("http://{address}/api/stream?q=hello"),
        &[("X-Request-Id", "json-log-test")],
    )
    .await
    .read_to_end()
    .await;
    assert!(answer.ended_with_done());

    let ended = loop {
        let line = next_line().await;
        if line["message"] == "stream ended" {
            break line;
        }
    };
    assert_eq!(ended["span"]["request_id"], "json-log-test", "{ended}");
    assert_eq!(ended["outcome"], "done", "{ended}");
    assert!(ended["tokens_out"].as_u64().unwrap() > 0, "{ended}");
    server.kill().await.unwrap();
}

crate::both_stores! {
    async fn a_completed_stream_counts_done_tokens_and_time_to_first_token() {
        let app = spawn_app_with(|_| {}).await;
        app.mock.always(Reply::sse(openai::answer(
            &["one", " two", " three"],
            Duration::ZERO,
        )));
        let before = scrape(&app).await;

        let answer = app.stream("count").await;
        assert!(answer.ended_with_done());

        scrape_until(&app, "the stream counted", |after| {
            value(after, DONE) >= value(&before, DONE) + 1.0
                && value(after, TOKENS) >= value(&before, TOKENS) + 3.0
                && value(after, FIRST_TOKEN_COUNT) >= value(&before, FIRST_TOKEN_COUNT) + 1.0
                && value(after, DURATION_COUNT) >= value(&before, DURATION_COUNT) + 1.0
        })
        .await;
    }

    async fn a_request_refused_by_the_rate_limiter_is_counted() {
        const RATE_LIMITED: &str = r#"llm_stream_refusals_total{reason="rate_limited"}"#;
        let app = spawn_app_with(crate::limits::limited(1, 1)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
        let before = scrape(&app).await;

        assert_eq!(app.stream("first").await.status, 200);
        assert_eq!(app.stream("second").await.status, 429);

        let after = scrape(&app).await;
        assert!(value(&after, RATE_LIMITED) >= value(&before, RATE_LIMITED) + 1.0);
    }

    async fn the_metrics_endpoint_is_not_rate_limited() {
        let app = spawn_app_with(crate::limits::limited(1, 1)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
        assert_eq!(app.stream("spend the budget").await.status, 200);
        assert_eq!(app.stream("over it").await.status, 429);
        // `scrape` fails on anything but 200.
        for _ in 0..5 {
            scrape(&app).await;
        }
    }

    async fn an_upstream_500_is_counted_by_status() {
        const STATUS_500: &str =
            r#"llm_stream_upstream_responses_total{upstream="primary",status="500"}"#;
        const UNAVAILABLE: &str = r#"llm_stream_streams_total{outcome="upstream_unavailable"}"#;
        let app = spawn_app_with(|config| config.llm_retries = 0).await;
        app.mock
            .always(Reply::status(500, r#"{"error":{"message":"boom"}}"#));
        let before = scrape(&app).await;

        let answer = app.stream("fail").await;
        assert_eq!(answer.error().unwrap()["error"], "upstream_unavailable");

        let calls = app.mock.request_count() as f64;
        scrape_until(&app, "the 500 counted", |after| {
            value(after, STATUS_500) >= value(&before, STATUS_500) + calls
                && value(after, UNAVAILABLE) >= value(&before, UNAVAILABLE) + 1.0
        })
        .await;
    }

    async fn the_open_streams_gauge_follows_a_stream_until_its_client_leaves() {
        let app = spawn_app_with(|_| {}).await;
        app.mock
            .always(Reply::sse(vec![openai::token("first")]).then(End::Hang));
        scrape_until(&app, "no open stream", |text| value(text, OPEN) == 0.0).await;

        let mut reader = app.open("hold").await;
        let first = reader.next_data().await.unwrap();
        assert_eq!(first.json()["token"], "first");
        scrape_until(&app, "one open stream", |text| value(text, OPEN) == 1.0).await;

        drop(reader);
        app.mock.wait_for_closed(1, DEADLINE).await;
        scrape_until(&app, "the stream closed", |text| value(text, OPEN) == 0.0).await;
    }
}
