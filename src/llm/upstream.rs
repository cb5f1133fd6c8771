//! What every HTTP provider shares: the client with its timeouts, the mapping of HTTP failures
//! onto our error codes, and the upstream's SSE decoded with an idle timeout.

use std::time::Duration;

use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::{RequestBuilder, Response, StatusCode};
use sse_stream::SseByteStream;

use crate::{config::Config, error::StreamError};

/// The upstream HTTP client and the timeouts that bound each call.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    idle_timeout: Duration,
}

/// The most of an error body kept for the log: enough to diagnose, never sent to the client.
const ERROR_BODY_LOG_BYTES: usize = 2048;

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
            .connect_timeout(config.upstream_connect_timeout())
            .user_agent(concat!("llm-stream/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            idle_timeout: config.upstream_idle_timeout(),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request and maps a failure onto the in-band error the client will see.
    pub async fn open(&self, request: RequestBuilder) -> Result<Response, StreamError> {
        let response = tokio::time::timeout(self.idle_timeout, request.send())
            .await
            .map_err(|_| StreamError::Timeout)?
            .map_err(|error| {
                tracing::warn!(error = %error.without_url(), "upstream request failed");
                StreamError::UpstreamUnavailable
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let error = status_error(status, &response);
        let body = error_body(response).await;
        tracing::warn!(status = status.as_u16(), body = %body, "upstream refused the request");
        Err(error)
    }

    /// The upstream's SSE events' data, in order; ends at the end of the body.
    /// A read error ends it with `StreamInterrupted`, silence longer than the idle timeout with `Timeout`.
    pub fn events(
        &self,
        response: Response,
    ) -> impl Stream<Item = Result<String, StreamError>> + Send + use<> {
        let idle = self.idle_timeout;
        let bytes =
            futures_util::stream::unfold(Some(response.bytes_stream()), move |body| async move {
                let mut body = body?;
                match tokio::time::timeout(idle, body.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                    Ok(Some(Err(error))) => Some((Err(ReadError::Transport(error)), None)),
                    Ok(None) => None,
                    Err(_) => Some((Err(ReadError::Idle), None)),
                }
            });
        SseByteStream::new(bytes)
            .map_err(|error| {
                let idle = matches!(&error, sse_stream::Error::Body(inner) if matches!(inner.downcast_ref(), Some(ReadError::Idle)));
                tracing::debug!(%error, "upstream stream ended early");
                if idle { StreamError::Timeout } else { StreamError::StreamInterrupted }
            })
            .try_filter_map(|event| async move { Ok(event.data) })
    }
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
