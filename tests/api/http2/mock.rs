//! A real HTTPS upstream of the tests' own: TLS with a throw-away authority (llm-stream trusts it
//! through `SSL_CERT_FILE`), ALPN `h2` served by h2's own server with a chosen
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, and `http/1.1` by hand when that is what the client
//! offers. Each answer is OpenAI-shaped, one token per event: `tok0 tok1 …`, as many as the
//! question's word `t<N>g<ms>` says, that far apart (5, 20 ms apart, unless). It records every connection and
//! every stream it answered: which connection carried it, whether it ended, whether the client reset it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::certs::Certs;
use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::oneshot,
};

/// One answer the mock gave.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Which connection carried it: 0 for the first the mock accepted.
    pub connection: usize,
    pub question: String,
    pub ended: bool,
    /// The client reset it (`RST_STREAM`) before its end.
    pub reset: bool,
}

#[derive(Default)]
struct Seen {
    /// The protocol of each connection that carried a request (`h2` or `http/1.1`).
    connections: Vec<&'static str>,
    streams: Vec<Stream>,
    /// Ends an HTTP/2 connection with a GOAWAY, by its index.
    shut: Vec<Option<oneshot::Sender<()>>>,
    /// Connections that refuse every new stream (`REFUSED_STREAM`), as one going away does.
    refusing: Vec<usize>,
}

pub struct MockH2 {
    pub url: String,
    pub certs: Certs,
    seen: Arc<Mutex<Seen>>,
}

impl MockH2 {
    /// Offers `h2` and `http/1.1`; `max_streams` answers at most on one HTTP/2 connection.
    pub async fn start(max_streams: u32) -> Self {
        Self::serve(max_streams, &[b"h2", b"http/1.1"]).await
    }

    /// Offers only `http/1.1`.
    pub async fn http1_only() -> Self {
        Self::serve(100, &[b"http/1.1"]).await
    }

    async fn serve(max_streams: u32, alpn: &[&[u8]]) -> Self {
        let certs = Certs::make();
        let acceptor = certs.acceptor(alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/v1",
            listener.local_addr().unwrap().port()
        );
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        serve_h2(tls, max_streams, seen).await;
                    } else {
                        serve_http1(tls, seen).await;
                    }
                });
            }
        });
        Self { url, certs, seen }
    }

    /// The environment that makes llm-stream trust this mock.
    pub fn trust(&self) -> [(&'static str, &std::ffi::OsStr); 1] {
        [("SSL_CERT_FILE", self.certs.authority.as_os_str())]
    }

    /// The protocol of each connection accepted so far.
    pub fn connections(&self) -> Vec<&'static str> {
        self.seen.lock().unwrap().connections.clone()
    }

    pub fn streams(&self) -> Vec<Stream> {
        self.seen.lock().unwrap().streams.clone()
    }

    /// The stream whose question contains `tag`.
    pub fn stream(&self, tag: &str) -> Option<Stream> {
        self.streams()
            .into_iter()
            .find(|s| s.question.contains(tag))
    }

    /// Makes HTTP/2 connection `index` refuse every new stream from now on.
    pub fn refuse_streams(&self, index: usize) {
        self.seen.lock().unwrap().refusing.push(index);
    }

    /// Sends HTTP/2 connection `index` a GOAWAY (INTERNAL_ERROR) and closes it.
    pub fn shut(&self, index: usize) {
        let shut = self.seen.lock().unwrap().shut[index].take();
        shut.expect("an HTTP/2 connection not shut yet")
            .send(())
            .unwrap();
    }
}

/// The answer the question asks for, by its word `t<tokens>g<gap ms>`: `(tokens, gap)`.
fn script(question: &str) -> (usize, Duration) {
    let asked = question.split(' ').find_map(|word| {
        let (tokens, gap) = word.strip_prefix('t')?.split_once('g')?;
        Some((tokens.parse().ok()?, gap.parse().ok()?))
    });
    let (tokens, gap) = asked.unwrap_or((5, 20));
    (tokens, Duration::from_millis(gap))
}

fn token(i: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
    ))
}

const END: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

/// Records a new stream; returns its index.
fn begin(seen: &Mutex<Seen>, connection: usize, body: &[u8]) -> usize {
    let question = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| {
            Some(
                json["messages"].as_array()?.last()?["content"]
                    .as_str()?
                    .to_owned(),
            )
        })
        .unwrap_or_default();
    let mut seen = seen.lock().unwrap();
    seen.streams.push(Stream {
        connection,
        question,
        ended: false,
        reset: false,
    });
    seen.streams.len() - 1
}

async fn serve_h2<T>(tls: T, max_streams: u32, seen: Arc<Mutex<Seen>>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut connection) = h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .handshake::<_, Bytes>(tls)
        .await
    else {
        return;
    };
    let (shut, mut shut_asked) = oneshot::channel();
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.connections.push("h2");
        seen.shut.push(Some(shut));
        seen.connections.len() - 1
    };
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    tokio::spawn(answer_h2(request, respond, index, seen.clone()));
                }
                _ => return,
            },
            _ = &mut shut_asked => {
                connection.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                let closed = std::future::poll_fn(|cx| connection.poll_closed(cx));
                let _ = tokio::time::timeout(Duration::from_secs(1), closed).await;
                return;
            }
        }
    }
}

async fn answer_h2(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    connection: usize,
    seen: Arc<Mutex<Seen>>,
) {
    let mut body = request.into_body();
    let mut read = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        read.extend_from_slice(&chunk);
    }
    if seen.lock().unwrap().refusing.contains(&connection) {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    }
    let stream = begin(&seen, connection, &read);
    let question = seen.lock().unwrap().streams[stream].question.clone();
    let (tokens, gap) = script(&question);
    let head = http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    for i in 0..tokens {
        if send.send_data(token(i), false).is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(gap) => {}
            reset = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                if reset.is_ok() {
                    seen.lock().unwrap().streams[stream].reset = true;
                }
                return;
            }
        }
    }
    if send
        .send_data(Bytes::from_static(END.as_bytes()), true)
        .is_ok()
    {
        seen.lock().unwrap().streams[stream].ended = true;
    }
}

/// One HTTP/1.1 request on the connection, answered and closed.
async fn serve_http1<T>(mut tls: T, seen: Arc<Mutex<Seen>>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = Vec::new();
    let mut buf = [0_u8; 4096];
    let body = loop {
        let Ok(n) = tls.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        read.extend_from_slice(&buf[..n]);
        let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        if read.len() >= end + 4 + length {
            break read[end + 4..end + 4 + length].to_vec();
        }
    };
    // Counted once a request came: a client that only looked at the ALPN answer and left
    // carried no answer.
    let connection = {
        let mut seen = seen.lock().unwrap();
        seen.connections.push("http/1.1");
        seen.shut.push(None);
        seen.connections.len() - 1
    };
    let stream = begin(&seen, connection, &body);
    let question = seen.lock().unwrap().streams[stream].question.clone();
    let (tokens, gap) = script(&question);
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    if tls.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for i in 0..tokens {
        if tls.write_all(&token(i)).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
    }
    if tls.write_all(END.as_bytes()).await.is_ok() && tls.shutdown().await.is_ok() {
        seen.lock().unwrap().streams[stream].ended = true;
    }
}
