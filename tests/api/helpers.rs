//! The test harness: the real application on 127.0.0.1:0 in front of a real mock upstream, and an
//! SSE client that records each event with its arrival time.

use std::{
    sync::{LazyLock, Once},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use llm_stream::{config::Config, startup::Application, store::Store};
use tokio::sync::oneshot;

use crate::mock_upstream::MockUpstream;

static TRACING: Once = Once::new();

/// Logs stay silent unless TEST_LOG=1.
fn init_logs() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            llm_stream::telemetry::init(llm_stream::config::LogFormat::Text);
        }
    });
}

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub static CLIENT: LazyLock<reqwest::Client> =
    LazyLock::new(|| reqwest::Client::builder().build().expect("client"));

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub mock: MockUpstream,
    pub store: actix_web::web::Data<Store>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The Redis of a test on both stores, while it runs on Redis.
    _redis: Option<crate::redis::harness::RedisServer>,
}

/// The app on the OpenAI-compatible provider, in front of a fresh mock upstream.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mock = MockUpstream::start().await;
    let mut config = openai_config(&mock);
    adjust(&mut config);
    spawn_with_config(config, mock).await
}

/// A test configuration on the OpenAI-compatible provider, in front of `mock`.
pub fn openai_config(mock: &MockUpstream) -> Config {
    test_config(&[
        "--llm-provider",
        "openai",
        "--llm-base-url",
        &mock.url(),
        "--llm-api-key",
        "sk-test-SECRET-KEY",
    ])
}

/// The app on the built-in demo model.
pub async fn spawn_demo_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mock = MockUpstream::start().await;
    let mut config = test_config(&["--llm-provider", "demo", "--demo-token-ms", "1"]);
    adjust(&mut config);
    spawn_with_config(config, mock).await
}

/// A configuration for tests: loopback, port 0, generous limits unless a test sets them.
pub fn test_config(extra: &[&str]) -> Config {
    let mut args = vec![
        "llm-stream",
        "--listen-addr",
        "127.0.0.1:0",
        "--rate-limit-per-minute",
        "0",
        "--shutdown-grace-secs",
        "1",
        // A client that leaves stops its answer at once, unless a test is about resuming.
        "--resume-grace-secs",
        "0",
    ];
    args.extend_from_slice(extra);
    match Config::from_args_only(args) {
        Ok(config) => config,
        Err(error) => panic!("test configuration refused: {error:?}"),
    }
}

pub async fn spawn_with_config(mut config: Config, mock: MockUpstream) -> TestApp {
    init_logs();
    let redis = match config.redis_url {
        Some(_) => None,
        None => crate::stores::redis_for_test().await,
    };
    if let Some(redis) = &redis {
        crate::redis::harness::share(&mut config, redis);
    }
    let app = Application::build(config)
        .await
        .expect("build the application");
    let port = app.port();
    let store = app.store();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        mock,
        store,
        stop: Some(stop),
        server: Some(server),
        _redis: redis,
    };
    if app._redis.is_some() {
        crate::redis::harness::wait_shared(&app.address).await;
    }
    app
}

impl TestApp {
    pub fn stream_url(&self, question: &str) -> String {
        let mut url = reqwest::Url::parse(&format!("{}/api/stream", self.address)).expect("url");
        url.query_pairs_mut().append_pair("q", question);
        url.to_string()
    }

    /// Asks and reads the whole answer.
    pub async fn stream(&self, question: &str) -> Answer {
        self.open(question).await.read_to_end().await
    }

    /// Asks and returns the open response, to read event by event.
    pub async fn open(&self, question: &str) -> SseReader {
        SseReader::get(self.stream_url(question), &[]).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        CLIENT
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    /// Signals shutdown and waits for the server to stop.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn stopped(&mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        match self.server.take() {
            Some(server) => tokio::time::timeout(DEADLINE, server)
                .await
                .expect("server stops in time")
                .expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// One SSE event or comment, as the client received it.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: Option<String>,
    /// The `event:` name: `None` for the unnamed events an EventSource's `onmessage` sees.
    pub name: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
    pub retry: Option<u64>,
    pub at: Instant,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        self.data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub started: Instant,
    /// Unnamed data events only (no comments, no opening event).
    pub events: Vec<Event>,
    /// The opening `event: stream`, which carries the stream id.
    pub opening: Option<Event>,
    /// The `retry:` the stream opened with.
    pub retry: Option<u64>,
    pub comments: Vec<Event>,
    pub body: String,
}

impl Answer {
    /// The concatenated tokens.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| e.json()["token"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| e.json()["token"].as_str().map(str::to_owned))
            .collect()
    }

    /// The stream id the opening event announced.
    pub fn stream_id(&self) -> String {
        let opening = self.opening.as_ref().expect("an opening event");
        opening.json()["stream"]
            .as_str()
            .expect("the opening event names the stream")
            .to_owned()
    }

    pub fn last(&self) -> &Event {
        self.events.last().expect("at least one event")
    }

    /// The terminal error event's JSON, if the stream ended with one.
    pub fn error(&self) -> Option<serde_json::Value> {
        let last = self.events.last()?.json();
        last.get("error").is_some().then_some(last)
    }

    /// Keep-alive comments that arrived before the first data event.
    pub fn keep_alives_before_first_event(&self) -> usize {
        let first = self.events.first().map(|e| e.at);
        self.comments
            .iter()
            .filter(|c| c.comment.as_deref() == Some("keep-alive"))
            .filter(|c| first.is_none_or(|at| c.at < at))
            .count()
    }

    pub fn ended_with_done(&self) -> bool {
        self.events.last().and_then(|e| e.data.as_deref()) == Some("[DONE]")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// POSTs the cancel of answer `id` at `address`; its status.
pub async fn cancel(address: &str, id: &str) -> u16 {
    CLIENT
        .post(format!("{address}/api/stream/{id}/cancel"))
        .send()
        .await
        .expect("cancel")
        .status()
        .as_u16()
}

/// A GET with these headers; its response head within the deadline.
pub async fn get_with(url: String, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = CLIENT.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("response head in time")
        .expect("request")
}

/// An open SSE response, read as an EventSource reads it.
pub struct SseReader {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub started: Instant,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
    pub raw: Vec<u8>,
}

impl SseReader {
    pub async fn get(url: String, headers: &[(&str, &str)]) -> Self {
        let started = Instant::now();
        let response = get_with(url, headers).await;
        Self::read(response, started)
    }

    /// Reads a response already received.
    pub fn from_response(response: reqwest::Response) -> Self {
        Self::read(response, Instant::now())
    }

    fn read(response: reqwest::Response, started: Instant) -> Self {
        Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            started,
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// The next event or comment; `None` at the end of the response. Panics past the deadline.
    pub async fn next(&mut self) -> Option<Event> {
        self.next_within(DEADLINE).await
    }

    pub async fn next_within(&mut self, deadline: Duration) -> Option<Event> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(end) = find_blank_line(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end.1).collect();
                let block =
                    String::from_utf8(block[..end.0].to_vec()).expect("the server sends UTF-8");
                return Some(parse_block(&block));
            }
            match tokio::time::timeout_at(until, self.body.next()).await {
                Err(_) => panic!(
                    "no SSE event within {deadline:?}; received so far: {}",
                    String::from_utf8_lossy(&self.raw)
                ),
                Ok(Some(Ok(chunk))) => {
                    self.raw.extend_from_slice(&chunk);
                    self.buffer.extend_from_slice(&chunk);
                }
                Ok(Some(Err(error))) => panic!("reading the stream failed: {error}"),
                Ok(None) => return None,
            }
        }
    }

    /// The next unnamed data event, skipping comments and the opening event.
    pub async fn next_data(&mut self) -> Option<Event> {
        loop {
            let event = self.next().await?;
            if event.data.is_some() && event.name.is_none() {
                return Some(event);
            }
        }
    }

    /// The opening `event: stream`, which must come first (after `retry:`): the stream id.
    pub async fn stream_id(&mut self) -> String {
        loop {
            let event = self.next().await.expect("an opening event");
            if event.retry.is_some() && event.data.is_none() {
                continue;
            }
            assert_eq!(event.name.as_deref(), Some("stream"), "the first event");
            return event.json()["stream"]
                .as_str()
                .expect("a stream id")
                .to_owned();
        }
    }

    pub async fn read_to_end(mut self) -> Answer {
        let (mut events, mut comments, mut opening, mut retry) =
            (Vec::new(), Vec::new(), None, None);
        while let Some(event) = self.next().await {
            retry = retry.or(event.retry);
            if event.name.is_some() {
                opening.get_or_insert(event);
            } else if event.data.is_some() {
                events.push(event)
            } else if event.comment.is_some() {
                comments.push(event)
            }
        }
        Answer {
            status: self.status,
            headers: self.headers,
            started: self.started,
            events,
            opening,
            retry,
            comments,
            body: String::from_utf8_lossy(&self.raw).into_owned(),
        }
    }
}

fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (p, p + 2))
}

fn parse_block(block: &str) -> Event {
    let mut event = Event {
        id: None,
        name: None,
        data: None,
        comment: None,
        retry: None,
        at: Instant::now(),
    };
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_owned());
        } else if let Some(name) = line.strip_prefix("event:") {
            event.name = Some(name.trim_start().to_owned());
        } else if let Some(retry) = line.strip_prefix("retry:") {
            event.retry = retry.trim().parse().ok();
        } else if let Some(id) = line.strip_prefix("id:") {
            event.id = Some(id.trim_start().to_owned());
        } else if let Some(data) = line.strip_prefix("data:") {
            let data = data.strip_prefix(' ').unwrap_or(data);
            event.data = Some(match event.data.take() {
                Some(previous) => format!("{previous}\n{data}"),
                None => data.to_owned(),
            });
        }
    }
    event
}

/// Waits until `check` holds, polling every 20 ms; panics with `what` after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !check().await {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a resume of an answer evicted from this process's memory gets: nothing (`204`) on this
/// process's own store; the rest (`200`) on Redis, which keeps it for its retention.
pub fn status_of_an_evicted_answer() -> u16 {
    match crate::stores::current() {
        crate::stores::Store::InProcess => 204,
        crate::stores::Store::Redis => 200,
    }
}
