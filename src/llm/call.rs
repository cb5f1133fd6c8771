//! One upstream call: the HTTP client with its timeouts, the request sent with its retries before
//! the first event, and HTTP failures mapped onto our error codes. Decoding the body that comes
//! back is [`super::upstream`]'s; choosing between two upstreams is [`super::fallback`]'s.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::time::Instant;

use super::{
    Role,
    http2::{self, Http2, Sent},
};
use crate::{
    config::{Config, Http2Mode},
    error::StreamError,
};

/// The most of an error body kept for the log: enough to diagnose, never sent to the client.
const ERROR_BODY_LOG_BYTES: usize = 2048;

/// The first retry's wait before jitter; each further retry doubles it.
const RETRY_BASE: Duration = Duration::from_millis(250);

/// The longest `Retry-After` we wait out: past it, a person is better told to come back later.
const RETRY_AFTER_CAP_SECS: u64 = 10;

/// One upstream's HTTP client and the limits that bound each call to it.
#[derive(Clone)]
pub struct Upstream {
    /// HTTP/1.1: plain-`http://` upstreams, LLM_HTTP2=off, and HTTPS ones that offer nothing else.
    client: reqwest::Client,
    /// HTTP/2 to an HTTPS upstream that offers it.
    http2: Option<Arc<Http2>>,
    idle_timeout: Duration,
    /// Which upstream this is, for its metrics and warnings.
    role: Role,
}

/// How hard one call tries before its first event: how many retries, and the deadline that no
/// retry wait may run past (the answer's budget, taken once for every upstream it tries).
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    pub retries: u32,
    pub deadline: Instant,
}

/// A failed attempt: what the client would be told, and what decides whether to try again.
struct Failure {
    error: StreamError,
    status: Option<u16>,
    retry_after: Option<u64>,
}

impl Upstream {
    pub fn new(config: &Config, role: Role, base: &reqwest::Url) -> Result<Self, reqwest::Error> {
        let user_agent = concat!("llm-stream/", env!("CARGO_PKG_VERSION"));
        let client = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .user_agent(user_agent)
            .http1_only()
            .build()?;
        let http2 = match config.llm_http2 {
            Http2Mode::Auto => Http2::for_upstream(
                role.name(),
                base,
                config.upstream_connect_timeout,
                user_agent,
            ),
            Http2Mode::Off => None,
        };
        Ok(Self {
            client,
            http2: http2.map(Arc::new),
            idle_timeout: config.upstream_idle_timeout,
            role,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// No byte for this long ends a call: before the response's head, and between body chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Sends the request, retrying connect errors, 5xx (529 included) and 429 up to
    /// `attempts.retries` times with jittered exponential backoff or the upstream's `Retry-After`,
    /// as long as the wait ends before `attempts.deadline`; a failure is mapped onto the in-band
    /// error the client will see.
    pub async fn open(
        &self,
        request: RequestBuilder,
        attempts: Attempts,
    ) -> Result<Response, StreamError> {
        let mut attempt = 0_u32;
        loop {
            attempt += 1;
            // A JSON body always clones; a streaming one could not be sent twice.
            let Some(this_try) = request.try_clone() else {
                return self.send(request).await.map_err(|failure| failure.error);
            };
            let failure = match self.send(this_try).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let Some(wait) = retry_wait(&failure, attempt, attempts) else {
                return Err(failure.error);
            };
            tracing::warn!(
                upstream = self.role.name(),
                attempt,
                retries = attempts.retries,
                status = failure.status,
                wait_ms = wait.as_millis() as u64,
                error = failure.error.code(),
                "upstream call failed before the first token; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt.
    async fn send(&self, request: RequestBuilder) -> Result<Response, Failure> {
        let failed = |error| Failure {
            error,
            status: None,
            retry_after: None,
        };
        let upstream = self.role.name();
        // Built here rather than by `send`, so that the attempt's span can carry `traceparent`.
        let (client, request) = request.build_split();
        let mut request = request.map_err(|error| {
            tracing::warn!(upstream, error = %error.without_url(), "upstream request failed");
            failed(StreamError::UpstreamUnavailable)
        })?;
        let attempt = crate::otel::Attempt::start(&mut request, upstream);
        let response = tokio::time::timeout(self.idle_timeout, self.execute(client, request))
            .await
            .inspect(|sent| crate::metrics::upstream_response(upstream, sent))
            .map_err(|_| failed(StreamError::Timeout))
            .and_then(|sent| {
                sent.map_err(|error| {
                    tracing::warn!(upstream, %error, "upstream request failed");
                    failed(StreamError::UpstreamUnavailable)
                })
            })
            .inspect_err(|failure| attempt.failed(failure.error.code()))?;
        let status = response.status();
        attempt.status(status.as_u16());
        if status.is_success() {
            return Ok(response);
        }
        let failure = Failure {
            error: status_error(status, &response),
            status: Some(status.as_u16()),
            retry_after: retry_after(&response),
        };
        let body = error_body(response).await;
        tracing::warn!(upstream, status = status.as_u16(), body = %body, "upstream refused the request");
        Err(failure)
    }

    /// Over HTTP/2 when the upstream speaks it, else over reqwest's HTTP/1.1 pool.
    async fn execute(
        &self,
        client: reqwest::Client,
        request: reqwest::Request,
    ) -> Result<Response, http2::Error> {
        let request = match &self.http2 {
            Some(http2) => match http2.send(request).await? {
                Sent::Response(response) => return Ok(response),
                Sent::Http1Only(request) => request,
            },
            None => request,
        };
        Ok(client
            .execute(request)
            .await
            .map_err(reqwest::Error::without_url)?)
    }
}

/// How long to wait before trying `failure`'s call again, or `None` to give up: it cannot help
/// (4xx but 429, a timeout), the retries are spent, the upstream asks for a longer wait than we
/// hold a person for, or the wait would outlast the answer's budget.
fn retry_wait(failure: &Failure, attempt: u32, attempts: Attempts) -> Option<Duration> {
    let transient = matches!(
        failure.error,
        StreamError::UpstreamUnavailable | StreamError::UpstreamRateLimited { .. }
    );
    if !transient || attempt > attempts.retries {
        return None;
    }
    // 250 ms, 500 ms, 1 s … each ±50%, so that many streams failing together spread out.
    let backoff = RETRY_BASE
        .saturating_mul(1 << (attempt - 1).min(16))
        .mul_f64(0.5 + fastrand::f64());
    let wait = match failure.retry_after {
        Some(secs) if secs > RETRY_AFTER_CAP_SECS => return None,
        Some(secs) => backoff.max(Duration::from_secs(secs)),
        None => backoff,
    };
    (Instant::now() + wait < attempts.deadline).then_some(wait)
}

/// Maps an HTTP failure status onto our error codes.
fn status_error(status: StatusCode, response: &Response) -> StreamError {
    match status.as_u16() {
        401 | 403 => StreamError::UpstreamAuth,
        429 => StreamError::UpstreamRateLimited {
            retry_after: retry_after(response),
        },
        400..=499 => StreamError::UpstreamRejected,
        _ => StreamError::UpstreamUnavailable,
    }
}

/// The upstream's `Retry-After`, in whole seconds, when it gives one.
pub fn retry_after(response: &Response) -> Option<u64> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| s.ceil() as u64)
}

/// The start of an error body, for the log only.
async fn error_body(response: Response) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while body.len() < ERROR_BODY_LOG_BYTES {
        match tokio::time::timeout(Duration::from_secs(2), chunks.next()).await {
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LOG_BYTES);
    String::from_utf8_lossy(&body).into_owned()
}
