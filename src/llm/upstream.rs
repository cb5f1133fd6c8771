//! What every HTTP provider shares: the client with its timeouts, the call with its retries before
//! the first event, the mapping of HTTP failures onto our error codes, and the upstream's SSE
//! decoded with an idle timeout and handed, event by event, to the provider's [`Decoder`].

use std::{future::Future, task::Poll, time::Duration};

use async_stream::stream;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use secrecy::SecretString;
use sse_stream::SseByteStream;
use tokio::time::Instant;

use super::{EventStream, LlmEvent, utf8_guard};
use crate::{config::Config, error::StreamError};

/// The longest the rest of a finished answer's body is read for, to keep its connection.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// The upstream HTTP client and the limits that bound each call.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    idle_timeout: Duration,
    /// The whole answer's budget: no retry wait may run past it.
    budget: Duration,
    retries: u32,
}

/// What every HTTP provider sends a question with: where, which key, and the model's settings.
pub struct Endpoint {
    pub upstream: Upstream,
    pub url: Url,
    pub api_key: SecretString,
    pub model: String,
    pub max_tokens: u32,
    pub temperature: f32,
    pub system_prompt: String,
}

impl Endpoint {
    /// The endpoint at `path` under LLM_BASE_URL (`chat/completions`, `messages`).
    pub fn new(config: &Config, path: &str) -> Result<Self, reqwest::Error> {
        Ok(Self {
            upstream: Upstream::new(config)?,
            url: config
                .base_url()
                .join(path)
                .unwrap_or_else(|_| config.base_url()),
            api_key: config
                .llm_api_key
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
            model: config.model(),
            max_tokens: config.llm_max_tokens,
            temperature: config.llm_temperature,
            system_prompt: config.llm_system_prompt.clone(),
        })
    }

    /// A POST to the endpoint carrying the request's id; the provider adds its key and body.
    pub fn post(&self, request_id: &str) -> RequestBuilder {
        self.upstream
            .client()
            .post(self.url.clone())
            .header("X-Request-Id", request_id)
    }
}

/// A provider's reading of its upstream's SSE: each event's data in, our events out.
/// Each provider keeps its wire format private behind one of these.
pub trait Decoder: Send + 'static {
    /// One upstream event's data: the events to pass on (a `Finish` completes the answer).
    fn feed(&mut self, data: &str) -> Result<Vec<LlmEvent>, Fault>;

    /// The body ended before a `Finish`: the last event, if the answer is complete anyway.
    fn end(self) -> Option<LlmEvent>;
}

/// Why an upstream event gave no events.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// Not the JSON we expect: skipped, counted and logged, never fatal.
    #[error("not the JSON expected: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Bytes that are not UTF-8 in its data, name or id: skipped, counted and logged like a
    /// malformed event (found before any decoder sees it).
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The upstream reported an error inside its stream: it ends the answer.
    #[error("the upstream reported an error: {0}")]
    Upstream(StreamError),
}

/// One upstream event, as the decoding loop receives it.
enum Received {
    /// Its data, for the provider's decoder.
    Data(String),
    /// It held bytes that are not UTF-8.
    NotUtf8,
}

/// The most of an error body kept for the log: enough to diagnose, never sent to the client.
const ERROR_BODY_LOG_BYTES: usize = 2048;

/// The first retry's wait before jitter; each further retry doubles it.
const RETRY_BASE: Duration = Duration::from_millis(250);

/// The longest `Retry-After` we wait out: past it, a person is better told to come back later.
const RETRY_AFTER_CAP_SECS: u64 = 10;

/// A failed attempt: what the client would be told, and what decides whether to try again.
struct Failure {
    error: StreamError,
    status: Option<u16>,
    retry_after: Option<u64>,
}

/// Why reading the upstream's body stopped.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("no byte from the upstream within the idle timeout")]
    Idle,
    #[error("reading the upstream failed: {0}")]
    Transport(#[from] reqwest::Error),
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .user_agent(concat!("llm-stream/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            idle_timeout: config.upstream_idle_timeout,
            budget: config.stream_timeout,
            retries: config.llm_retries,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The answer to `request`, decoded by `decoder`: the call (with its retries), then each
    /// upstream event through the decoder, until a `Finish`, an error or the end of the body.
    /// Nothing is sent until the stream is first polled; dropping it closes the connection.
    pub fn stream<D: Decoder>(&self, request: RequestBuilder, mut decoder: D) -> EventStream {
        let upstream = self.clone();
        // Taken now, a moment before the handler starts the same budget's clock: never later than it.
        let deadline = Instant::now() + self.budget;
        Box::pin(stream! {
            // Retries happen only here, before the first event: once one has gone out, never.
            let response = match upstream.open(request, deadline).await {
                Ok(response) => response,
                Err(error) => { yield Err(error); return; }
            };
            let mut events = std::pin::pin!(upstream.events(response));
            let mut malformed = 0_u32;
            while let Some(received) = events.next().await {
                let fed = match received {
                    Ok(Received::Data(data)) => decoder.feed(&data),
                    Ok(Received::NotUtf8) => Err(Fault::NotUtf8),
                    Err(error) => { yield Err(error); return; }
                };
                match fed {
                    Ok(decoded) => for event in decoded {
                        let last = matches!(event, LlmEvent::Finish(_));
                        yield Ok(event);
                        if last {
                            // Whoever still polls after the finish reads the body to its end
                            // (briefly), so that its connection goes back to the pool instead of
                            // being closed: the next answer skips a new TCP and TLS handshake.
                            let drain = async { while events.next().await.is_some() {} };
                            let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
                            return;
                        }
                    },
                    Err(Fault::Upstream(error)) => { yield Err(error); return; }
                    Err(fault) => {
                        malformed += 1;
                        tracing::debug!(error = %fault, malformed, "skipped a malformed upstream event");
                    }
                }
            }
            if let Some(event) = decoder.end() {
                yield Ok(event);
            }
        })
    }

    /// Sends the request, retrying connect errors, 5xx (529 included) and 429 up to
    /// LLM_RETRIES times with jittered exponential backoff or the upstream's `Retry-After`, as
    /// long as the wait ends before `deadline`; a failure is mapped onto the in-band error the
    /// client will see.
    async fn open(
        &self,
        request: RequestBuilder,
        deadline: Instant,
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
            let Some(wait) = self.retry_wait(&failure, attempt, deadline) else {
                return Err(failure.error);
            };
            tracing::warn!(
                attempt,
                retries = self.retries,
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
        let response = tokio::time::timeout(self.idle_timeout, request.send())
            .await
            .inspect(crate::metrics::upstream_response)
            .map_err(|_| failed(StreamError::Timeout))?
            .map_err(|error| {
                tracing::warn!(error = %error.without_url(), "upstream request failed");
                failed(StreamError::UpstreamUnavailable)
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let failure = Failure {
            error: status_error(status, &response),
            status: Some(status.as_u16()),
            retry_after: retry_after(&response),
        };
        let body = error_body(response).await;
        tracing::warn!(status = status.as_u16(), body = %body, "upstream refused the request");
        Err(failure)
    }

    /// How long to wait before trying `failure`'s call again, or `None` to give up: it cannot
    /// help (4xx but 429, a timeout), the retries are spent, the upstream asks for a longer wait
    /// than we hold a person for, or the wait would outlast the answer's budget.
    fn retry_wait(&self, failure: &Failure, attempt: u32, deadline: Instant) -> Option<Duration> {
        let transient = matches!(
            failure.error,
            StreamError::UpstreamUnavailable | StreamError::UpstreamRateLimited { .. }
        );
        if !transient || attempt > self.retries {
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
        (Instant::now() + wait < deadline).then_some(wait)
    }

    /// The upstream's SSE events' data, in order; ends at the end of the body. An event with bytes
    /// that are not UTF-8 is only marked, so that it cannot end the stream.
    /// A read error ends it with `StreamInterrupted`, silence longer than the idle timeout with `Timeout`.
    fn events(
        &self,
        response: Response,
    ) -> impl Stream<Item = Result<Received, StreamError>> + Send + use<> {
        let bytes = idle_limited(response.bytes_stream(), self.idle_timeout);
        SseByteStream::new(utf8_guard::guard(bytes))
            .map_err(|error| {
                let idle = matches!(&error, sse_stream::Error::Body(inner) if matches!(inner.downcast_ref(), Some(ReadError::Idle)));
                tracing::debug!(%error, "upstream stream ended early");
                if idle { StreamError::Timeout } else { StreamError::StreamInterrupted }
            })
            .try_filter_map(|event| async move {
                let not_utf8 = [&event.data, &event.event, &event.id]
                    .into_iter()
                    .flatten()
                    .any(|field| field.contains(utf8_guard::SUBSTITUTE));
                Ok(if not_utf8 {
                    Some(Received::NotUtf8)
                } else {
                    event.data.map(Received::Data)
                })
            })
    }
}

/// The body's chunks, ended with [`ReadError::Idle`] when none comes for `idle`. One timer for
/// the whole body, moved on in place at each chunk (a cheap atomic step while it is pending), not a
/// timer made and unregistered per chunk.
fn idle_limited(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
    let mut body = Box::pin(body);
    let mut timer = Box::pin(tokio::time::sleep(idle));
    let mut done = false;
    futures_util::stream::poll_fn(move |cx| {
        if done {
            return Poll::Ready(None);
        }
        let next = match body.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                timer.as_mut().reset(Instant::now() + idle);
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(error))) => Some(Err(ReadError::Transport(error))),
            Poll::Ready(None) => None,
            Poll::Pending => match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Some(Err(ReadError::Idle)),
                Poll::Pending => return Poll::Pending,
            },
        };
        done = true;
        Poll::Ready(next)
    })
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
