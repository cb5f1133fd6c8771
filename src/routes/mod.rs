//! One file per endpoint, and `auth`, the middleware that says who is asking.

pub mod auth;
pub mod cancel;
pub mod conversations;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod page;
pub mod stream;

use actix_web::HttpResponse;

use crate::error::Refusal;

/// Unknown routes: JSON, like every other refusal.
pub async fn not_found() -> Result<HttpResponse, Refusal> {
    Err(Refusal::NotFound)
}

/// Known routes asked with the wrong method.
pub async fn method_not_allowed() -> Result<HttpResponse, Refusal> {
    Err(Refusal::MethodNotAllowed)
}
