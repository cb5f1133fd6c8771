//! Fetch Metadata resource isolation: a foreign page must not make its visitors' browsers spend
//! this server's model budget. CORS stops another page's `fetch` or `EventSource` (they send
//! `Origin`), but not an `<img src>`, `<script src>`, frame or prefetch pointing at the endpoint:
//! those are plain no-cors requests. Browsers say who asked in `Sec-Fetch-*` headers; this reads them.

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{Method, header::HeaderMap},
    middleware::Next,
    web,
};

use crate::{config::Config, error::Refusal};

/// Middleware: refuses with `403 {"error":"cross_site",…}` a request that a browser made for a
/// page of another site (or of the same site on another origin), counted like every refusal.
///
/// Allowed, as the resource isolation policy of web-security guides has it:
/// - no `Sec-Fetch-Site` at all: curl, server-side clients, browsers that predate the headers;
/// - `Sec-Fetch-Site: same-origin` (this site's own page) or `none` (typed in the address bar);
/// - a CORS request (`Sec-Fetch-Mode: cors`, preflights included) whose `Origin` is in
///   CORS_ALLOWED_ORIGINS;
/// - a top-level navigation by GET (`Sec-Fetch-Mode: navigate`, `Sec-Fetch-Dest: document`): a
///   person followed a link, which stays their own choice.
///
/// Everything else from another site or origin is refused: images, scripts, styles, frames,
/// objects, prefetches, no-cors fetches, and a form POST from a foreign page (a navigation, but
/// not a GET). A browser too old to send `Sec-Fetch-Site` still sends `Origin` with every POST:
/// such a request is allowed only from this site's own origin (as the proxy in front saw it) or
/// CORS_ALLOWED_ORIGINS. It fits any method, so it also guards state-changing endpoints (a cancel): wrap
/// it outermost on the resource, so that a refused request spends nothing (no rate budget, no
/// stream slot, no upstream call).
pub async fn resource_isolation(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let allowed = match request.app_data::<web::Data<Config>>() {
        Some(config) => allows(&request, config),
        None => false,
    };
    if allowed {
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    let sent = |name| header(request.headers(), name).unwrap_or("-");
    tracing::info!(
        site = sent("sec-fetch-site"),
        mode = sent("sec-fetch-mode"),
        dest = sent("sec-fetch-dest"),
        origin = sent("origin"),
        "refused a request made by another site's page"
    );
    let refusal = Refusal::CrossSite;
    crate::metrics::refused(&refusal);
    Ok(request.error_response(refusal).map_into_boxed_body())
}

/// The policy itself, on the request's headers.
fn allows(request: &ServiceRequest, config: &Config) -> bool {
    let (headers, method) = (request.headers(), request.method());
    let origin = header(headers, "origin");
    let Some(site) = header(headers, "sec-fetch-site") else {
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        return safe
            || origin
                .is_none_or(|origin| own_origin(request, origin) || config.allows_origin(origin));
    };
    if matches!(site, "same-origin" | "none") {
        return true;
    }
    match (
        header(headers, "sec-fetch-mode"),
        header(headers, "sec-fetch-dest"),
    ) {
        (Some("cors"), _) => origin.is_some_and(|origin| config.allows_origin(origin)),
        (Some("navigate"), Some("document")) => matches!(*method, Method::GET | Method::HEAD),
        _ => false,
    }
}

/// Whether `origin` is the scheme and host the request was made to, as the proxy in front saw it.
fn own_origin(request: &ServiceRequest, origin: &str) -> bool {
    let info = request.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    origin.eq_ignore_ascii_case(&own)
}

/// A header's value; one that is present but not text reads as empty, so it allows nothing.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap_or_default())
}
