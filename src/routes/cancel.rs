//! `POST /api/stream/<stream>/cancel`: stops an answer for real, whichever instance produces it.
//! A signed-in user's answer only by that user (any other identity is told `404`, as for an unknown
//! id); an anonymous answer's id is its only credential. A browser's request from another site is
//! refused, so that no foreign page can stop (or probe) someone's answer.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::{answers::Answers, client::Client, config::Config, error::Refusal};

pub async fn cancel(
    request: HttpRequest,
    id: web::Path<String>,
    config: web::Data<Config>,
    answers: web::Data<Answers>,
) -> Result<HttpResponse, Refusal> {
    if !from_own_or_allowed_origin(&request, &config) {
        return Err(Refusal::CrossSite).inspect_err(crate::metrics::refused);
    }
    let id = id.into_inner();
    let owner = Client::of(&request, &config).owner();
    if crate::id::is_valid(&id) && answers.cancel(&id, owner).await {
        crate::metrics::cancelled();
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Refusal::UnknownStream)
    }
}

/// Browsers send `Origin` on every POST. Accept none (curl, a server), the page's own origin (as the
/// proxy in front saw it: `Sec-Fetch-Site: same-origin` says so directly, or `Origin` matches the
/// scheme and host of the request), and CORS_ALLOWED_ORIGINS.
fn from_own_or_allowed_origin(request: &HttpRequest, config: &Config) -> bool {
    let headers = request.headers();
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(fetch_site, Some("same-origin" | "none")) {
        return true;
    }
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return fetch_site.is_none();
    };
    let info = request.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    origin.eq_ignore_ascii_case(&own)
        || config
            .cors_allowed_origins
            .iter()
            .any(|allowed| allowed.trim().eq_ignore_ascii_case(origin))
}
