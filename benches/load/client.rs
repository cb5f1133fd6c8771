//! A lean SSE client on a raw socket: one request, then every read timestamped and the tokens in
//! it counted, so thousands of streams cost the bench little.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{chunked::Body, mock::Script};

/// Where a stream is read from.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Through llm-stream: `GET /api/stream`, counting its token frames (`{"token":`): the
    /// opening `retry:` and `event: stream` (`{"stream":…}`) are no token, so they never count
    /// as the first one.
    Server(SocketAddr),
    /// Straight from the mock, or through a proxy that passes its bytes (nginx, the relay),
    /// counting its chunks.
    Mock(SocketAddr),
}

/// What one stream saw.
#[derive(Debug, Default)]
pub struct Reading {
    pub started: Option<Instant>,
    /// When each token arrived (tokens that came in one read share a time); empty for `CountOnly`.
    pub tokens: Vec<Instant>,
    pub count: usize,
    /// When the client closed the connection early, if it did.
    pub left: Option<Instant>,
    pub error: Option<String>,
}

impl Reading {
    pub fn first_token(&self) -> Option<Duration> {
        Some(self.tokens.first()?.duration_since(self.started?))
    }

    pub fn gaps(&self) -> impl Iterator<Item = Duration> + '_ {
        self.tokens.windows(2).map(|w| w[1].duration_since(w[0]))
    }
}

/// Counts a pattern across reads (the pattern's first byte does not recur in it, so a mismatch
/// can restart from the current byte).
struct Counter {
    pattern: &'static [u8],
    matched: usize,
}

impl Counter {
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut found = 0;
        for &b in bytes {
            if b == self.pattern[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(b == self.pattern[0]);
            }
            if self.matched == self.pattern.len() {
                found += 1;
                self.matched = 0;
            }
        }
        found
    }
}

/// How a stream is read.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// The end of the response.
    End,
    /// This many tokens, then close the connection (a client that leaves).
    Tokens(usize),
    /// Record no per-token times, only the count (fast streams).
    CountOnly,
}

pub async fn read(target: Target, script: Script, until: Until) -> Reading {
    read_with(target, script, until, &mut |_| {}).await
}

/// Like [`read`], calling `on_tokens` with each read's count of tokens.
pub async fn read_with(
    target: Target,
    script: Script,
    until: Until,
    on_tokens: &mut impl FnMut(usize),
) -> Reading {
    let mut reading = Reading::default();
    if let Err(error) = read_into(target, script, until, &mut reading, on_tokens).await {
        reading.error = Some(error.to_string());
    }
    reading
}

async fn read_into(
    target: Target,
    script: Script,
    until: Until,
    reading: &mut Reading,
    on_tokens: &mut impl FnMut(usize),
) -> std::io::Result<()> {
    let (address, request, pattern): (_, _, &'static [u8]) = match target {
        Target::Server(address) => (
            address,
            format!(
                "GET /api/stream?q={} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
                script.tag()
            ),
            b"{\"token\":",
        ),
        Target::Mock(address) => (
            address,
            format!(
                "GET /{} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
                script.tag()
            ),
            b"\"content\":",
        ),
    };
    reading.started = Some(Instant::now());
    let mut socket = TcpStream::connect(address).await?;
    socket.set_nodelay(true)?;
    socket.write_all(request.as_bytes()).await?;
    let mut counter = Counter {
        pattern,
        matched: 0,
    };
    let mut buf = vec![
        0_u8;
        if matches!(until, Until::CountOnly) {
            65_536
        } else {
            4096
        }
    ];
    let mut body = Body::new();
    let mut count = 0_usize;
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut found = 0;
        body.feed(&buf[..n], &mut |data| found += counter.feed(data));
        if found == 0 {
            continue;
        }
        count += found;
        reading.count = count;
        on_tokens(found);
        match until {
            Until::CountOnly => {}
            _ => reading.tokens.extend(std::iter::repeat_n(now, found)),
        }
        if let Until::Tokens(leave) = until
            && count >= leave
        {
            reading.left = Some(Instant::now());
            return Ok(());
        }
    }
}
