//! A lean mock of an OpenAI-compatible upstream, over plain TCP or TLS. Each request names its
//! own script in the question (`scn.<tokens>.<gap µs>.<id>`, found anywhere in the request), so
//! the same mock answers llm-stream's POSTs and the bench's direct GETs alike. Every token is one
//! SSE event in one chunk in one write, paced or as fast as the reader takes them, as real APIs
//! send them. It records when each scripted connection was seen closed by its client. Over TLS it
//! offers ALPN `h2` and `http/1.1`: a client that picks `h2` (llm-stream) is served by `http2`,
//! one token per DATA frame; any other (nginx offers no ALPN) gets the HTTP/1.1 answer below. It
//! counts the connections it accepted, by protocol, so that the table can say how many upstream
//! connections each column used.

mod http2;

pub use http2::max_streams as max_h2_streams;

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    time::Instant as TokioInstant,
};
use tokio_rustls::TlsAcceptor;

/// What one stream asks of the mock.
#[derive(Clone, Copy, Debug)]
pub struct Script {
    pub tokens: u64,
    /// Between tokens; zero: as fast as the reader takes them.
    pub gap: Duration,
    /// Unique per stream when the bench wants to know when its connection closed; else 0.
    pub id: u64,
}

impl Script {
    /// The text put in the question (through llm-stream) or the path (direct).
    pub fn tag(&self) -> String {
        format!("scn.{}.{}.{}", self.tokens, self.gap.as_micros(), self.id)
    }

    fn find(request: &[u8]) -> Option<Self> {
        let start = request.windows(4).position(|w| w == b"scn.")? + 4;
        let rest = &request[start..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .unwrap_or(rest.len());
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        let mut parts = text.split('.').map(|p| p.parse::<u64>().ok());
        Some(Self {
            tokens: parts.next()??,
            gap: Duration::from_micros(parts.next()??),
            id: parts.next()??,
        })
    }
}

pub const TOKEN_CHUNK: &[u8] =
    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"},\"finish_reason\":null}]}\n\n";
const END: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

#[derive(Default)]
struct Seen {
    /// When each scripted connection (id > 0) was seen closed by its client.
    closed: HashMap<u64, Instant>,
    opened: HashMap<u64, Instant>,
}

/// Connections accepted (after the TLS handshake, over TLS), by the protocol they speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    pub h2: usize,
    pub http1: usize,
}

impl Accepted {
    /// Those accepted since `before`.
    pub fn since(self, before: Accepted) -> Accepted {
        Accepted {
            h2: self.h2.saturating_sub(before.h2),
            http1: self.http1.saturating_sub(before.http1),
        }
    }

    pub fn total(self) -> usize {
        self.h2 + self.http1
    }
}

impl std::ops::AddAssign for Accepted {
    fn add_assign(&mut self, other: Accepted) {
        self.h2 += other.h2;
        self.http1 += other.http1;
    }
}

impl fmt::Display for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.h2, self.http1) {
            (0, 0) => write!(f, "0"),
            (h2, 0) => write!(f, "{h2} h2"),
            (0, http1) => write!(f, "{http1} HTTP/1.1"),
            (h2, http1) => write!(f, "{h2} h2 + {http1} HTTP/1.1"),
        }
    }
}

#[derive(Default)]
struct Counts {
    h2: AtomicUsize,
    http1: AtomicUsize,
}

#[derive(Clone)]
pub struct Mock {
    pub address: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    accepted: Arc<Counts>,
}

impl Mock {
    /// Listens on a free port; with `tls`, every connection is TLS first.
    pub async fn start(tls: Option<TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_reuseaddr(true).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = listener.listen(4096).unwrap();
        let mock = Self {
            address: listener.local_addr().unwrap(),
            seen: Arc::default(),
            accepted: Arc::default(),
        };
        let server = mock.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((socket, _)) => {
                        socket.set_nodelay(true).ok();
                        let server = server.clone();
                        match &tls {
                            None => {
                                server.accepted.http1.fetch_add(1, Ordering::Relaxed);
                                tokio::spawn(server.serve(socket));
                            }
                            Some(tls) => {
                                let accept = tls.accept(socket);
                                tokio::spawn(async move {
                                    let Ok(stream) = accept.await else { return };
                                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                        server.accepted.h2.fetch_add(1, Ordering::Relaxed);
                                        server.serve_h2(stream).await;
                                    } else {
                                        server.accepted.http1.fetch_add(1, Ordering::Relaxed);
                                        server.serve(stream).await;
                                    }
                                });
                            }
                        }
                    }
                    Err(error) => {
                        eprintln!("mock: accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        mock
    }

    /// The connections accepted so far, by protocol.
    pub fn accepted(&self) -> Accepted {
        Accepted {
            h2: self.accepted.h2.load(Ordering::Relaxed),
            http1: self.accepted.http1.load(Ordering::Relaxed),
        }
    }

    /// When the connection of stream `id` was seen closed, if it was.
    pub fn closed_at(&self, id: u64) -> Option<Instant> {
        self.seen.lock().unwrap().closed.get(&id).copied()
    }

    /// Of these ids, how many connections the mock saw open and not yet closed.
    pub fn still_open(&self, ids: impl Iterator<Item = u64>) -> usize {
        let seen = self.seen.lock().unwrap();
        ids.filter(|id| seen.opened.contains_key(id) && !seen.closed.contains_key(id))
            .count()
    }

    /// Notes when a scripted stream (id > 0) reached the mock.
    fn opened(&self, script: Script) {
        if script.id > 0 {
            self.seen
                .lock()
                .unwrap()
                .opened
                .insert(script.id, Instant::now());
        }
    }

    /// Answers requests on one connection until the client closes it or asks for `close`
    /// (llm-stream keeps its upstream connections alive, as it would with a real API).
    async fn serve(self, mut socket: impl AsyncRead + AsyncWrite + Unpin) {
        let mut pending = Vec::new();
        loop {
            let Some((script, close)) = read_request(&mut socket, &mut pending).await else {
                return;
            };
            self.opened(script);
            // None: the client closed first; else whether the answer was written.
            let written = {
                let (mut reader, mut writer) = tokio::io::split(&mut socket);
                // The client sends nothing while it reads an answer: its side ending is a close.
                let closed = async {
                    let mut buf = [0_u8; 1024];
                    loop {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                };
                tokio::select! {
                    () = closed => None,
                    written = write_script(&mut writer, script) => Some(written),
                }
            };
            match written {
                None => {
                    if script.id > 0 {
                        self.seen
                            .lock()
                            .unwrap()
                            .closed
                            .insert(script.id, Instant::now());
                    }
                    return;
                }
                Some(false) => return,
                Some(true) => {}
            }
            if close {
                let _ = socket.shutdown().await;
                // Hold the socket until the client has read the end and closed its side.
                let mut buf = [0_u8; 256];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        }
    }
}

/// One chunk of a chunked body.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Writes one answer as a chunked body; false when the client went away.
async fn write_script(writer: &mut (impl AsyncWriteExt + Unpin), script: Script) -> bool {
    if writer.write_all(HEAD).await.is_err() {
        return false;
    }
    let mut token = Vec::new();
    chunk(&mut token, TOKEN_CHUNK);
    // The first token at once, then one every `gap` from the request (no drift), or as fast as
    // the reader takes them; either way one token per write.
    let start = TokioInstant::now();
    for k in 0..script.tokens {
        if k > 0 && !script.gap.is_zero() {
            tokio::time::sleep_until(start + script.gap * k as u32).await;
        }
        if writer.write_all(&token).await.is_err() {
            return false;
        }
    }
    let mut end = Vec::new();
    chunk(&mut end, END);
    end.extend_from_slice(b"0\r\n\r\n");
    writer.write_all(&end).await.is_ok()
}

/// Reads one request (head and body) and finds its script; also says whether the client asked
/// to close after the answer.
async fn read_request(
    socket: &mut (impl AsyncRead + Unpin),
    pending: &mut Vec<u8>,
) -> Option<(Script, bool)> {
    let mut data = std::mem::take(pending);
    let mut buf = [0_u8; 2048];
    let head_end = loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let close = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    *pending = data.split_off(head_end + length);
    Some((Script::find(&data)?, close))
}
