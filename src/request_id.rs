//! Every request has an id: the caller's `X-Request-Id` when it is sane, else one we make. It is
//! echoed in the response, carried by every log line of the request (a `request` span), and sent
//! upstream, so one id follows a question from nginx to the model's API and back.

use actix_web::{
    Error, HttpMessage, HttpRequest,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
};
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id kept from a caller: enough for a UUID or a trace id, short enough for a log line.
const MAX_LEN: usize = 128;

/// The request's id, in the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The caller's id if it is 1 to 128 characters of `[A-Za-z0-9._:-]`, else a new one.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        value
            .and_then(|v| v.to_str().ok())
            .filter(|id| is_sane(id))
            .map_or_else(Self::new, |id| Self(id.to_owned()))
    }

    /// A fresh id: 16 hex digits.
    pub fn new() -> Self {
        Self(format!("{:016x}", fastrand::u64(..)))
    }

    /// The id the middleware gave this request (a fresh one where it did not run).
    pub fn of(request: &HttpRequest) -> Self {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or_else(Self::new)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a caller's id may go into our logs and the upstream's headers as it is.
fn is_sane(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Middleware (outermost): gives the request its id, runs it inside a `request` span that
/// carries the id, and puts the id in the response's `X-Request-Id`.
pub async fn request_id(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = RequestId::from_header(request.headers().get(HEADER));
    let header = HeaderValue::from_str(id.as_str()).ok();
    let span = tracing::info_span!("request", request_id = %id);
    request.extensions_mut().insert(id);
    // Handlers' errors are already responses here; an error from a middleware passes through
    // without the header (holding a clone of the request would stop NormalizePath rewriting it).
    let mut response = next.call(request).instrument(span).await?;
    if let Some(header) = header {
        response.headers_mut().insert(HEADER, header);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        for id in ["a", "req-1.2_3:4", &"x".repeat(128)] {
            let value = HeaderValue::from_str(id).ok();
            assert_eq!(RequestId::from_header(value.as_ref()).as_str(), id);
        }
        for id in ["", "has space", "semi;colon", &"x".repeat(129), "é"] {
            let value = HeaderValue::from_bytes(id.as_bytes()).ok();
            let made = RequestId::from_header(value.as_ref());
            assert_ne!(made.as_str(), id);
            assert_eq!(made.as_str().len(), 16);
        }
    }
}
