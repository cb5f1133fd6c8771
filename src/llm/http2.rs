//! HTTP/2 to an HTTPS upstream that offers `h2` by ALPN. Answers share TLS connections, each one
//! carrying up to the server's `SETTINGS_MAX_CONCURRENT_STREAMS` answers; when every connection
//! is full, another is opened, so that an answer never queues behind others (hyper's and so
//! reqwest's pool would queue it on the one connection: hyper #2197, reqwest #976). An upstream
//! that answers ALPN with HTTP/1.1 is remembered, and its questions go to reqwest's pool.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use reqwest::Url;
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, crypto::aws_lc_rs, pki_types::ServerName},
};

/// What failed while sending a question over HTTP/2; never carries a URL or a header.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Each answer's receive window. The producer reads every chunk as it comes, so the window only
/// bounds what a stalled reader could leave buffered: 64 KiB is hundreds of tokens ahead, and at
/// a 100 ms round trip still 640 KB/s, some twenty times the fastest model's output (hyper's
/// default is 2 MB per answer).
const STREAM_WINDOW: u32 = 64 * 1024;

/// Each connection's receive window (hyper's default: 5 MB): at a 100 ms round trip, 10 MB/s
/// shared by its answers, room for hundreds streaming at once.
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Until the server's SETTINGS say otherwise, a connection is assumed to carry this many answers:
/// the floor RFC 9113 recommends (section 6.5.2), and what the big providers advertise or more.
const ASSUMED_STREAMS: usize = 100;

/// The most answers put on one connection, whatever the server allows: past it, one lost
/// connection would end too many answers at once.
const MAX_STREAMS: usize = 1000;

/// What the stream limit reads before the server's SETTINGS arrive: a value no server sends.
const UNKNOWN: usize = usize::MAX - 1;

/// How often a new connection is looked at until its server's SETTINGS are in (one round trip).
const SETTINGS_LOOK: Duration = Duration::from_millis(1);

/// A connection with no answer on it for this long is closed (reqwest's pool idles as long).
const IDLE: Duration = Duration::from_secs(90);

/// A ping this often on an idle connection, and no pong within the timeout ends it, so that a
/// connection the network silently lost is not handed the next question.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 connections to one upstream's origin.
pub struct Http2 {
    /// Which upstream, for the connections' gauge.
    upstream: &'static str,
    origin: Origin,
    tls: TlsConnector,
    connect_timeout: Duration,
    user_agent: http::HeaderValue,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// Held while a connection is opened, so that questions arriving together fill one
    /// connection before the next is opened.
    opening: tokio::sync::Mutex<()>,
    /// The server answered ALPN with HTTP/1.1 (or nothing).
    http1_only: AtomicBool,
}

/// Where the connections go.
struct Origin {
    host: String,
    port: u16,
    name: ServerName<'static>,
}

/// One HTTP/2 connection and the answers on it.
struct Connection {
    send: SendRequest<reqwest::Body>,
    /// Answers open on it now.
    streams: AtomicUsize,
    /// hyper's side of the connection, driven by [`drive`], asked for the server's stream limit.
    driven: Arc<Mutex<Driven>>,
    /// Set by its driver when the connection has ended, or by a request it failed.
    closed: Arc<AtomicBool>,
    /// When its last answer ended, for [`IDLE`].
    idle_since: Mutex<Instant>,
}

type Driven = Pin<
    Box<
        http2::Connection<
            TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
            reqwest::Body,
            TokioExecutor,
        >,
    >,
>;

/// One answer's place on a connection, given back when its body is dropped.
struct Ticket(Arc<Connection>);

/// Whether a question's connection had carried others before it.
#[derive(Debug, Clone, Copy)]
enum Used {
    New,
    Before,
}

/// What sending a question gave.
pub enum Sent {
    Response(reqwest::Response),
    /// The upstream speaks only HTTP/1.1: the question, untouched, for reqwest's pool.
    Http1Only(reqwest::Request),
}

impl Http2 {
    /// HTTP/2 to `base`'s origin, when it is HTTPS and no proxy is set (a proxy is reqwest's to
    /// reach, over HTTP/1.1).
    pub fn for_upstream(
        upstream: &'static str,
        base: &Url,
        connect_timeout: Duration,
        user_agent: &str,
    ) -> Option<Self> {
        if base.scheme() != "https" || proxy_set() {
            return None;
        }
        let host = base
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).ok()?;
        let provider = Arc::new(aws_lc_rs::default_provider());
        // The same verifier as reqwest's: the system's roots, or SSL_CERT_FILE's.
        let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
            .inspect_err(
                |error| tracing::warn!(%error, "no TLS verifier for HTTP/2; HTTP/1.1 it is"),
            )
            .ok()?;
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Some(Self {
            upstream,
            origin: Origin {
                host: host.to_owned(),
                port: base.port_or_known_default()?,
                name,
            },
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            user_agent: http::HeaderValue::from_str(user_agent).ok()?,
            connections: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            http1_only: AtomicBool::new(false),
        })
    }

    /// Sends `request` on a connection with room for it, opening one when none has. A question
    /// that fails on a connection used before (the server sent GOAWAY or closed it while idle)
    /// is sent again at once on another.
    pub async fn send(&self, request: reqwest::Request) -> Result<Sent, Error> {
        let again = request.try_clone();
        match (self.send_once(request).await, again) {
            (Err((error, Used::Before)), Some(again)) => {
                tracing::debug!(%error, "an HTTP/2 connection failed a question; sending it on another");
                self.send_once(again).await.map_err(|(error, _)| error)
            }
            (sent, _) => sent.map_err(|(error, _)| error),
        }
    }

    async fn send_once(&self, request: reqwest::Request) -> Result<Sent, (Error, Used)> {
        let Some((ticket, used)) = self.ticket().await.map_err(|e| (e, Used::New))? else {
            return Ok(Sent::Http1Only(request));
        };
        let mut request =
            http::Request::<reqwest::Body>::try_from(request).map_err(|e| (e.into(), Used::New))?;
        *request.version_mut() = http::Version::HTTP_2;
        request
            .headers_mut()
            .entry(http::header::USER_AGENT)
            .or_insert_with(|| self.user_agent.clone());
        let mut send = ticket.0.send.clone();
        let response = send.send_request(request).await.map_err(|error| {
            // Whatever failed it (a GOAWAY, a reset, the network), the next question gets a
            // connection of its own.
            ticket.0.closed.store(true, Ordering::Relaxed);
            (error.into(), used)
        })?;
        let response = response.map(|body| reqwest::Body::wrap(Counted { body, ticket }));
        Ok(Sent::Response(reqwest::Response::from(response)))
    }

    /// A place on a connection, and whether that connection was opened for it; `None` when the
    /// upstream speaks only HTTP/1.1.
    async fn ticket(&self) -> Result<Option<(Ticket, Used)>, Error> {
        if self.http1_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if let Some(ticket) = self.room() {
            return Ok(Some((ticket, Used::Before)));
        }
        let _opening = self.opening.lock().await;
        // Opened while this question waited?
        if let Some(ticket) = self.room() {
            return Ok(Some((ticket, Used::New)));
        }
        if self.http1_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Some(connection) = self.connect().await? else {
            tracing::info!(
                host = %self.origin.host,
                "the upstream offers HTTP/1.1 only: one connection per answer"
            );
            self.http1_only.store(true, Ordering::Relaxed);
            return Ok(None);
        };
        let ticket = connection.take().ok_or("a new connection with no room")?;
        self.lock().push(connection);
        Ok(Some((ticket, Used::New)))
    }

    /// A place on the oldest connection with room, after forgetting ended and idle ones.
    fn room(&self) -> Option<Ticket> {
        let mut connections = self.lock();
        connections.retain(|c| c.usable());
        connections.iter().find_map(Connection::take)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Connection>>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new connection, once its server has said how many answers it takes; `None` when it
    /// chose HTTP/1.1.
    async fn connect(&self) -> Result<Option<Arc<Connection>>, Error> {
        let deadline = Instant::now() + self.connect_timeout;
        let within = |what: &'static str| move |_| Error::from(format!("{what} timed out"));
        let tcp = tokio::time::timeout_at(
            deadline,
            TcpStream::connect((self.origin.host.as_str(), self.origin.port)),
        )
        .await
        .map_err(within("connect"))??;
        tcp.set_nodelay(true)?;
        let tls =
            tokio::time::timeout_at(deadline, self.tls.connect(self.origin.name.clone(), tcp))
                .await
                .map_err(within("TLS handshake"))??;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Ok(None);
        }
        let (send, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_max_send_streams(UNKNOWN)
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await?;
        let driven = Arc::new(Mutex::new(Box::pin(connection)));
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(driven.clone(), closed.clone(), self.upstream));
        let connection = Arc::new(Connection {
            send,
            streams: AtomicUsize::new(0),
            driven,
            closed,
            idle_since: Mutex::new(Instant::now()),
        });
        // The server's SETTINGS come first thing, on hyper's own task, which tells no one: look
        // until they are in. A server that never sends them gets the assumed limit.
        while connection.server_limit().is_none() && Instant::now() < deadline {
            tokio::time::sleep(SETTINGS_LOOK).await;
        }
        Ok(Some(connection))
    }
}

impl Connection {
    /// The server's stream limit, once its SETTINGS are in.
    fn server_limit(&self) -> Option<usize> {
        let driven = self.driven.lock().ok()?;
        Some(driven.current_max_send_streams()).filter(|l| *l != UNKNOWN)
    }

    fn limit(&self) -> usize {
        self.server_limit()
            .map_or(ASSUMED_STREAMS, |l| l.min(MAX_STREAMS))
    }

    fn usable(&self) -> bool {
        let idle = self.streams.load(Ordering::Relaxed) == 0
            && self
                .idle_since
                .lock()
                .is_ok_and(|since| since.elapsed() >= IDLE);
        !(idle || self.closed.load(Ordering::Relaxed) || self.send.is_closed())
    }

    /// A place on it, if it has room.
    fn take(self: &Arc<Self>) -> Option<Ticket> {
        let limit = self.limit();
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Ticket(self.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = self.0.idle_since.lock()
        {
            *since = Instant::now();
        }
    }
}

/// Runs the connection until it ends.
async fn drive(driven: Arc<Mutex<Driven>>, closed: Arc<AtomicBool>, upstream: &'static str) {
    crate::metrics::upstream_connection(upstream, 1.0);
    let ended = std::future::poll_fn(|cx| {
        driven
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .poll(cx)
    })
    .await;
    closed.store(true, Ordering::Relaxed);
    crate::metrics::upstream_connection(upstream, -1.0);
    if let Err(error) = ended {
        tracing::debug!(%error, "an HTTP/2 connection to the upstream ended");
    }
}

/// An answer's body, holding its place on the connection until it is dropped: dropping it before
/// its end resets that one stream (`RST_STREAM`), the connection and its other answers live on.
struct Counted {
    body: hyper::body::Incoming,
    #[expect(dead_code, reason = "held for its Drop")]
    ticket: Ticket,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether reqwest would send through a proxy (its system proxy variables).
fn proxy_set() -> bool {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}
