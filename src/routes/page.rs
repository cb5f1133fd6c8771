//! `GET /`: the page, rendered with askama from the running configuration; and how its static
//! assets are cached.

use actix_web::{
    Error, HttpResponse, Responder,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{
        StatusCode,
        header::{CACHE_CONTROL, HeaderValue},
    },
    middleware::Next,
    web,
};
use askama::Template;
use askama_web::WebTemplate;

use crate::{
    config::{Config, ProviderKind},
    llm::Provider,
};

#[derive(Template, WebTemplate)]
#[template(path = "index.html")]
pub struct IndexPage {
    pub model: String,
    pub provider: &'static str,
    pub is_demo: bool,
    pub max_query_chars: usize,
    pub version: &'static str,
    pub asset_version: &'static str,
}

/// No inline script or style anywhere: the page needs nothing but its own origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// The `?v=` of the page's asset links: a hash of the assets' bytes, so that a browser holding an
/// asset as `immutable` is given a new URL as soon as a file changes, even within one release.
pub const ASSET_VERSION: &str = match std::str::from_utf8(&ASSET_DIGITS) {
    Ok(version) => version,
    Err(_) => panic!("hex digits are ASCII"),
};
/// Every file of ours under static/ (the modules app.js imports are fetched without `?v=` and
/// revalidated by ETag, but a change to any of them still gives the page new asset URLs), and for
/// the vendored libraries their manifest, whose versions change with them (hashing their 280 KB
/// at compile time would be slow).
const ASSET_DIGITS: [u8; 16] = hex_digest(&[
    include_bytes!("../../static/app.js"),
    include_bytes!("../../static/announce.js"),
    include_bytes!("../../static/clipboard.js"),
    include_bytes!("../../static/conversation.js"),
    include_bytes!("../../static/endings.js"),
    include_bytes!("../../static/id.js"),
    include_bytes!("../../static/lifecycle.js"),
    include_bytes!("../../static/markdown.js"),
    include_bytes!("../../static/refusals.js"),
    include_bytes!("../../static/resume.js"),
    include_bytes!("../../static/run.js"),
    include_bytes!("../../static/stream.js"),
    include_bytes!("../../static/turns.js"),
    include_bytes!("../../static/view.js"),
    include_bytes!("../../static/app.css"),
    include_bytes!("../../static/markdown.css"),
    include_bytes!("../../static/favicon.svg"),
    include_bytes!("../../static/vendor/README.md"),
]);

/// Versioned assets never change under their URL: a year, and no revalidation.
const CACHE_VERSIONED: &str = "public, max-age=31536000, immutable";
/// An asset asked for without the current version: revalidate each time (ETag, Last-Modified).
const CACHE_UNVERSIONED: &str = "no-cache";

pub async fn page(config: web::Data<Config>, provider: web::Data<Provider>) -> impl Responder {
    let kind = config.provider();
    let page = IndexPage {
        model: provider.model().to_owned(),
        provider: kind.name(),
        is_demo: kind == ProviderKind::Demo,
        max_query_chars: config.max_query_chars as usize,
        version: env!("CARGO_PKG_VERSION"),
        asset_version: ASSET_VERSION,
    };
    page.customize()
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-cache"))
}

/// Wraps the `/static` files: assets asked for with the current `?v=` may be kept for a year;
/// anything else (no version, an old one, a missing file) is revalidated or not kept.
pub async fn cache_static(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let current = web::Query::<AssetQuery>::from_query(request.query_string())
        .is_ok_and(|query| query.v.as_deref() == Some(ASSET_VERSION));
    let mut response = next.call(request).await?;
    let policy = match response.status() {
        StatusCode::OK | StatusCode::NOT_MODIFIED if current => CACHE_VERSIONED,
        StatusCode::OK | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT => {
            CACHE_UNVERSIONED
        }
        _ => "no-store",
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(policy));
    headers.insert(
        actix_web::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

#[derive(serde::Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

/// `GET /favicon.ico`: browsers ask for it whatever the page links; the page's icon is an SVG.
pub async fn favicon() -> HttpResponse {
    HttpResponse::build(StatusCode::NO_CONTENT)
        .insert_header((CACHE_CONTROL, "public, max-age=86400"))
        .finish()
}

/// FNV-1a over the files, as 16 hex digits; `const`, so the version is fixed at compile time.
const fn hex_digest(files: &[&[u8]]) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut f = 0;
    while f < files.len() {
        let file = files[f];
        let mut i = 0;
        while i < file.len() {
            hash ^= file[i] as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        f += 1;
    }
    let mut digits = [0_u8; 16];
    let mut d = 0;
    while d < 16 {
        digits[d] = HEX[((hash >> (60 - 4 * d)) & 0xf) as usize];
        d += 1;
    }
    digits
}
