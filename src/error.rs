//! Errors sized to the boundary: `Refusal` answers a request with HTTP before any stream begins;
//! `StreamError` ends a stream that has begun with an in-band error event.

use std::time::Duration;

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;

/// A request refused before any stream: an HTTP status with a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    InvalidQuery(String),
    #[error("Too many questions from this address; try again in {} s.", ceil_secs(*retry_after))]
    RateLimited { retry_after: Duration },
    /// Not even a minimum answer fits in the client's token budget.
    #[error("Your token budget is spent; enough for another answer is back in {} s.", ceil_secs(*retry_after))]
    TokenBudgetExhausted { retry_after: Duration },
    /// Not even a minimum answer fits in the whole service's token budget (GLOBAL_TOKEN_BUDGET).
    #[error("The service has used up its token budget for now; try again in {} s.", ceil_secs(*retry_after))]
    ServiceBudgetExhausted { retry_after: Duration },
    #[error("This address already has {0} answers streaming; wait for one to finish or stop it.")]
    TooManyStreams(u32),
    #[error("The server is answering as many questions as it can; try again in a few seconds.")]
    AtCapacity,
    #[error("There is nothing at this address.")]
    NotFound,
    #[error("This address does not accept that method.")]
    MethodNotAllowed,
    #[error("No answer has this id here: it never existed, or it ended too long ago.")]
    UnknownStream,
    #[error("No conversation has this id here: it never existed, or it expired.")]
    UnknownConversation,
    #[error("An answer is still running in this conversation; wait for it to end or stop it.")]
    ConversationBusy,
    /// A browser asked on behalf of another site's page (an image, a script, a frame…).
    #[error(
        "Another site's page cannot ask this server for answers; open this site's own page to ask."
    )]
    CrossSite,
    /// No token, or one that was refused (`invalid`: it was there), saying why in words.
    #[error("{message}")]
    Unauthorized { message: String, invalid: bool },
    /// Tokens need the key set, and none has been fetched yet.
    #[error(
        "The server cannot check sign-ins yet (its key set has not been fetched); try again in a few seconds."
    )]
    AuthUnavailable,
}

/// The refusal's JSON body.
#[derive(Serialize)]
struct RefusalBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

/// What a client at capacity is told to wait: long enough for some streams to finish.
const AT_CAPACITY_RETRY_SECS: u64 = 5;
/// What a client is told to wait for the key set: about one fetch attempt.
const AUTH_UNAVAILABLE_RETRY_SECS: u64 = 2;

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidQuery(_) => "invalid_query",
            Self::RateLimited { .. } => "rate_limited",
            Self::TokenBudgetExhausted { .. } => "token_budget_exhausted",
            Self::ServiceBudgetExhausted { .. } => "service_budget_exhausted",
            Self::TooManyStreams(_) => "too_many_streams",
            Self::AtCapacity => "at_capacity",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnknownStream => "unknown_stream",
            Self::ConversationBusy => "conversation_busy",
            Self::UnknownConversation => "unknown_conversation",
            Self::CrossSite => "cross_site",
            Self::Unauthorized { .. } => "unauthorized",
            Self::AuthUnavailable => "auth_unavailable",
        }
    }

    /// Whole seconds to wait, rounded up so that a client that waits that long is admitted.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after }
            | Self::TokenBudgetExhausted { retry_after }
            | Self::ServiceBudgetExhausted { retry_after } => Some(ceil_secs(*retry_after)),
            Self::AtCapacity => Some(AT_CAPACITY_RETRY_SECS),
            Self::AuthUnavailable => Some(AUTH_UNAVAILABLE_RETRY_SECS),
            _ => None,
        }
    }
}

/// Rounds a wait up to whole seconds, never below one.
pub fn ceil_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. }
            | Self::TooManyStreams(_)
            | Self::TokenBudgetExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::AtCapacity | Self::AuthUnavailable | Self::ServiceBudgetExhausted { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::UnknownStream | Self::UnknownConversation => {
                StatusCode::NOT_FOUND
            }
            Self::CrossSite => StatusCode::FORBIDDEN,
            Self::ConversationBusy => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let retry_after = self.retry_after_secs();
        let mut response = HttpResponse::build(self.status_code());
        if let Some(secs) = retry_after {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        if let Self::Unauthorized { message, invalid } = self {
            response.insert_header(("WWW-Authenticate", www_authenticate(message, *invalid)));
        }
        response.json(RefusalBody {
            error: self.code(),
            message: self.to_string(),
            retry_after,
        })
    }
}

/// RFC 6750 §3: no error code for a request that carried no token (§3.1), else `invalid_token`
/// and the reason (quoted-string: our own words, with any quote or backslash left out).
pub fn www_authenticate(message: &str, invalid: bool) -> String {
    if !invalid {
        return r#"Bearer realm="llm-stream""#.to_owned();
    }
    let description: String = message
        .chars()
        .filter(|c| (' '..='~').contains(c) && !matches!(c, '"' | '\\'))
        .collect();
    format!(
        r#"Bearer realm="llm-stream", error="invalid_token", error_description="{description}""#
    )
}

/// Why a stream that has begun ended early; each maps one-to-one onto an in-band error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("The model's service cannot be reached right now; please try again shortly.")]
    UpstreamUnavailable,
    #[error(
        "The server's credentials for the model's service were refused; the operator must fix its API key."
    )]
    UpstreamAuth,
    #[error("The model's service is rate-limiting this server; please try again later.")]
    UpstreamRateLimited { retry_after: Option<u64> },
    #[error("The model's service refused the request.")]
    UpstreamRejected,
    #[error("The model's service reported an error while answering.")]
    UpstreamError,
    #[error("The answer took too long and was stopped.")]
    Timeout,
    #[error("The model's answer was cut off before it finished.")]
    StreamInterrupted,
    #[error("The server is restarting; please ask again in a moment.")]
    ServerShutdown,
    #[error("The answer was stopped before it finished.")]
    Cancelled,
    #[error("The answer grew past what the server keeps for one answer and was stopped.")]
    TooLong,
}

impl StreamError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamAuth => "upstream_auth",
            Self::UpstreamRateLimited { .. } => "upstream_rate_limited",
            Self::UpstreamRejected => "upstream_rejected",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::StreamInterrupted => "stream_interrupted",
            Self::ServerShutdown => "server_shutdown",
            Self::Cancelled => "cancelled",
            Self::TooLong => "too_long",
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::UpstreamRateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}
