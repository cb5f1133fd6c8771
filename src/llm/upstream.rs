//! What every HTTP provider shares past the call: where its questions go (the endpoint), and the
//! upstream's SSE decoded with an idle timeout and handed, event by event, to the provider's
//! [`Decoder`]. The call itself, with its retries, is [`super::call`]'s.

use std::{future::Future, task::Poll, time::Duration};

use async_stream::stream;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::{RequestBuilder, Response, Url};
use secrecy::SecretString;
use sse_stream::SseByteStream;
use tokio::time::Instant;

use super::{
    EventStream, LlmEvent, Target,
    call::{Attempts, Upstream},
    utf8_guard,
};
use crate::{config::Config, error::StreamError};

/// The longest the rest of a finished answer's body is read for, to keep its connection.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// What every HTTP provider sends a question with: where, which key, and the model's settings.
pub struct Endpoint {
    upstream: Upstream,
    pub url: Url,
    pub api_key: SecretString,
    pub model: String,
    pub max_tokens: u32,
    pub temperature: f32,
    pub system_prompt: String,
}

impl Endpoint {
    /// The endpoint at `path` under the target's base URL (`chat/completions`, `messages`).
    pub fn new(config: &Config, target: &Target, path: &str) -> Result<Self, reqwest::Error> {
        Ok(Self {
            upstream: Upstream::new(config, target.role, &target.base_url)?,
            url: target
                .base_url
                .join(path)
                .unwrap_or_else(|_| target.base_url.clone()),
            api_key: target
                .api_key
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
            model: target.model.clone(),
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

/// Why reading the upstream's body stopped.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("no byte from the upstream within the idle timeout")]
    Idle,
    #[error("reading the upstream failed: {0}")]
    Transport(#[from] reqwest::Error),
}

impl Endpoint {
    /// The answer to `request`, decoded by `decoder`: the call (with its `attempts`), then each
    /// upstream event through the decoder, until a `Finish`, an error or the end of the body.
    /// Nothing is sent until the stream is first polled; dropping it closes the connection.
    pub fn stream<D: Decoder>(
        &self,
        request: RequestBuilder,
        mut decoder: D,
        attempts: Attempts,
    ) -> EventStream {
        let upstream = self.upstream.clone();
        Box::pin(stream! {
            // Retries happen only here, before the first event: once one has gone out, never.
            let response = match upstream.open(request, attempts).await {
                Ok(response) => response,
                Err(error) => { yield Err(error); return; }
            };
            let mut events = std::pin::pin!(events(response, upstream.idle_timeout()));
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
}

/// The upstream's SSE events' data, in order; ends at the end of the body. An event with bytes
/// that are not UTF-8 is only marked, so that it cannot end the stream.
/// A read error ends it with `StreamInterrupted`, silence longer than the idle timeout with `Timeout`.
fn events(
    response: Response,
    idle_timeout: Duration,
) -> impl Stream<Item = Result<Received, StreamError>> + Send + use<> {
    let bytes = idle_limited(response.bytes_stream(), idle_timeout);
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
