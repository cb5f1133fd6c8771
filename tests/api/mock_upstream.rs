//! A real HTTP server standing in for the model's API: it answers each request with a scripted
//! reply (status, headers, then body writes with pauses and faults) and records what it saw,
//! including when the client closed the connection.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// One step of a scripted body.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes in one write (one TCP segment, as nodelay is on).
    Write(Vec<u8>),
    /// Pause.
    Sleep(Duration),
    /// Write as fast as the client takes it, counting the bytes, until the client stops reading long enough.
    Flood,
    /// Wait until the test opens this gate.
    Gate(Gate),
}

/// A point in a scripted body that waits for the test: `open` lets every reply waiting on it go on.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    pub fn open(&self) {
        // A closed semaphore turns every wait, present and future, away at once.
        self.0.close();
    }

    async fn passed(&self) {
        let _ = self.0.acquire().await;
    }
}

/// How the reply ends after its steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum End {
    /// Close the connection (the body ends).
    Close,
    /// Keep the connection open and silent until the client closes it.
    Hang,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub steps: Vec<Step>,
    pub end: End,
}

impl Reply {
    /// A 200 event stream with these steps, closing at the end.
    pub fn sse(steps: Vec<Step>) -> Self {
        Self {
            status: 200,
            headers: vec![("Content-Type".into(), "text/event-stream".into())],
            steps,
            end: End::Close,
        }
    }

    /// An error status with a JSON body.
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            steps: vec![Step::Write(body.as_bytes().to_vec())],
            end: End::Close,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn then(mut self, end: End) -> Self {
        self.end = end;
        self
    }
}

/// A request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub head: String,
    pub body: String,
    /// When the whole request had arrived.
    pub received_at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct State {
    replies: VecDeque<Reply>,
    default: Option<Reply>,
    requests: Vec<Recorded>,
    /// When each connection was seen closed by the client, in order.
    closed: Vec<Instant>,
    flooded: usize,
    /// When the latest `Step::Write` of any reply was written.
    last_write: Option<Instant>,
}

#[derive(Clone)]
pub struct MockUpstream {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl MockUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let mock = Self {
            address: listener.local_addr().expect("mock address"),
            state: Arc::default(),
            changed: Arc::default(),
        };
        let server = mock.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let mock = server.clone();
                tokio::spawn(async move { mock.serve(socket).await });
            }
        });
        mock
    }

    /// The base URL, as LLM_BASE_URL.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Every request is answered with this reply, unless a queued one comes first.
    pub fn always(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    /// The next request is answered with this reply.
    pub fn then_reply(&self, reply: Reply) {
        self.state.lock().unwrap().replies.push_back(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn closed_count(&self) -> usize {
        self.state.lock().unwrap().closed.len()
    }

    pub fn closed_at(&self) -> Vec<Instant> {
        self.state.lock().unwrap().closed.clone()
    }

    /// When the mock last wrote a scripted step (a token, say) to anyone.
    pub fn last_write_at(&self) -> Option<Instant> {
        self.state.lock().unwrap().last_write
    }

    pub fn flooded_bytes(&self) -> usize {
        self.state.lock().unwrap().flooded
    }

    /// Waits until `check` holds, or panics after `deadline`.
    pub async fn wait_until(&self, what: &str, deadline: Duration, check: impl Fn(&Self) -> bool) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.changed.notified();
            if check(self) {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                assert!(
                    check(self),
                    "mock upstream: timed out after {deadline:?} waiting for {what}"
                );
                return;
            }
        }
    }

    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) {
        self.wait_until(&format!("{n} request(s)"), deadline, |m| {
            m.request_count() >= n
        })
        .await;
    }

    pub async fn wait_for_closed(&self, n: usize, deadline: Duration) {
        self.wait_until(&format!("{n} closed connection(s)"), deadline, |m| {
            m.closed_count() >= n
        })
        .await;
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
    }

    async fn serve(self, mut socket: TcpStream) {
        socket.set_nodelay(true).ok();
        let Some(request) = read_request(&mut socket).await else {
            return;
        };
        let reply = {
            let mut state = self.state.lock().unwrap();
            state.replies.pop_front().or_else(|| state.default.clone())
        };
        self.update(|s| s.requests.push(request));
        let reply = reply.unwrap_or_else(|| Reply::status(500, r#"{"error":"mock has no reply"}"#));
        let (mut reader, mut writer) = socket.into_split();
        // Watch the read side: EOF means the client closed the connection.
        let watcher = {
            let mock = self.clone();
            tokio::spawn(async move {
                let mut buf = [0_u8; 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                mock.update(|s| s.closed.push(Instant::now()));
            })
        };
        let mut head = format!("HTTP/1.1 {} Mock\r\nConnection: close\r\n", reply.status);
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for step in reply.steps {
            match step {
                Step::Write(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        return;
                    }
                    self.state.lock().unwrap().last_write = Some(Instant::now());
                }
                Step::Sleep(pause) => tokio::time::sleep(pause).await,
                Step::Gate(gate) => gate.passed().await,
                Step::Flood => {
                    let chunk = b"data: {\"choices\":[{\"delta\":{\"content\":\"flood \"}}]}\n\n"
                        .repeat(64);
                    while let Ok(Ok(())) =
                        tokio::time::timeout(Duration::from_millis(500), writer.write_all(&chunk))
                            .await
                    {
                        self.update(|s| s.flooded += chunk.len());
                    }
                }
            }
        }
        match reply.end {
            End::Close => {
                let _ = writer.shutdown().await;
                drop(writer);
                // Wait for the client's side to close too (it always does once the body ends).
                let _ = tokio::time::timeout(Duration::from_secs(30), watcher).await;
            }
            End::Hang => {
                let _ = watcher.await;
            }
        }
    }
}

/// How an upstream fails below HTTP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Accept each connection and close it at once, as a restarting server or a proxy does.
    Close,
    /// Read the request and never answer, holding the connection until the client closes it.
    Silent,
}

/// An upstream that fails below HTTP, recording when each connection was accepted.
pub struct Faulty {
    pub address: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
}

impl Faulty {
    pub async fn start(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind faulty upstream");
        let address = listener.local_addr().expect("faulty address");
        let accepted: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let seen = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                seen.lock().unwrap().push(Instant::now());
                if fault == Fault::Silent {
                    tokio::spawn(async move {
                        let mut buf = [0_u8; 4096];
                        while let Ok(1..) = socket.read(&mut buf).await {}
                    });
                }
            }
        });
        Self { address, accepted }
    }

    /// The base URL, as LLM_BASE_URL.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// When each connection was accepted, in order.
    pub fn accepted_at(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

/// A base URL on which nothing listens: every connection is refused.
pub fn refusing_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to free");
    let address = listener.local_addr().expect("its address");
    drop(listener);
    format!("http://{address}/v1")
}

/// A listener whose accept queue is full and never served: a connection to it waits out the
/// connect timeout, as one to a host that drops packets does.
pub struct Unreachable {
    pub address: SocketAddr,
    _listener: TcpListener,
    _filler: TcpStream,
}

impl Unreachable {
    pub async fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind unreachable upstream");
        // A backlog of 0 holds one connection: the filler takes it, and the kernel drops the
        // SYNs of every later one.
        let listener = socket.listen(0).expect("listen");
        let address = listener.local_addr().expect("unreachable address");
        let filler = TcpStream::connect(address).await.expect("fill the backlog");
        Self {
            address,
            _listener: listener,
            _filler: filler,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.address)
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut data = Vec::new();
    let mut buf = [0_u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    Some(Recorded {
        head,
        body: String::from_utf8_lossy(&data[head_end..]).into_owned(),
        received_at: Instant::now(),
    })
}

/// OpenAI-format chunks: a helper to script a stream.
pub mod openai {
    use super::Step;
    use std::time::Duration;

    pub fn chunk(json: &str) -> Step {
        Step::Write(format!("data: {json}\n\n").into_bytes())
    }

    pub fn token(text: &str) -> Step {
        chunk(&serde_json::json!({"choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]}).to_string())
    }

    pub fn finish(reason: &str) -> Step {
        chunk(
            &serde_json::json!({"choices":[{"index":0,"delta":{},"finish_reason":reason}]})
                .to_string(),
        )
    }

    pub fn usage(prompt: u64, completion: u64) -> Step {
        chunk(&serde_json::json!({"choices":[],"usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt+completion}}).to_string())
    }

    pub fn done() -> Step {
        Step::Write(b"data: [DONE]\n\n".to_vec())
    }

    /// A whole answer: the tokens `gap` apart, then finish, usage and [DONE].
    pub fn answer(tokens: &[&str], gap: Duration) -> Vec<Step> {
        paced(tokens, |_| gap)
    }

    /// The tokens, token `i` after a wait of `wait(i)` (none when zero), then finish, usage and
    /// `[DONE]`.
    pub fn paced(tokens: &[&str], wait: impl Fn(usize) -> Duration) -> Vec<Step> {
        let mut steps = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let wait = wait(i);
            if !wait.is_zero() {
                steps.push(Step::Sleep(wait));
            }
            steps.push(token(t));
        }
        steps.extend([finish("stop"), usage(9, tokens.len() as u64), done()]);
        steps
    }
}

/// Anthropic Messages stream events: a helper to script a stream.
pub mod anthropic {
    use super::Step;
    use serde_json::json;

    /// One event, named as Anthropic names it, its `type` repeated in the data.
    pub fn event(json: serde_json::Value) -> Step {
        let name = json["type"].as_str().unwrap_or("message").to_owned();
        Step::Write(format!("event: {name}\ndata: {json}\n\n").into_bytes())
    }

    pub fn message_start(input_tokens: u64) -> Step {
        event(json!({"type":"message_start","message":{
            "id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],
            "model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,
            "usage":{"input_tokens":input_tokens,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}))
    }

    pub fn block_start(index: u32, kind: &str) -> Step {
        let block = match kind {
            "thinking" => json!({"type":"thinking","thinking":""}),
            _ => json!({"type":"text","text":""}),
        };
        event(json!({"type":"content_block_start","index":index,"content_block":block}))
    }

    pub fn text(index: u32, text: &str) -> Step {
        event(
            json!({"type":"content_block_delta","index":index,"delta":{"type":"text_delta","text":text}}),
        )
    }

    pub fn thinking(index: u32, thinking: &str) -> Step {
        event(
            json!({"type":"content_block_delta","index":index,"delta":{"type":"thinking_delta","thinking":thinking}}),
        )
    }

    pub fn signature(index: u32) -> Step {
        event(
            json!({"type":"content_block_delta","index":index,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}}),
        )
    }

    pub fn block_stop(index: u32) -> Step {
        event(json!({"type":"content_block_stop","index":index}))
    }

    pub fn ping() -> Step {
        event(json!({"type":"ping"}))
    }

    pub fn message_delta(stop_reason: &str, output_tokens: u64) -> Step {
        event(
            json!({"type":"message_delta","delta":{"stop_reason":stop_reason,"stop_sequence":null},"usage":{"output_tokens":output_tokens}}),
        )
    }

    pub fn message_stop() -> Step {
        event(json!({"type":"message_stop"}))
    }

    pub fn error(kind: &str, message: &str) -> Step {
        event(json!({"type":"error","error":{"type":kind,"message":message}}))
    }

    /// A whole message: start, a ping, one text block of these deltas, the stop reason and usage, stop.
    pub fn answer(texts: &[&str], stop_reason: &str) -> Vec<Step> {
        let mut steps = vec![message_start(12), block_start(0, "text"), ping()];
        steps.extend(texts.iter().map(|t| text(0, t)));
        steps.extend([
            block_stop(0),
            message_delta(stop_reason, texts.len() as u64),
            message_stop(),
        ]);
        steps
    }
}
