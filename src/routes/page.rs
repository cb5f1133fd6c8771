//! `GET /`: the page, rendered with askama from the running configuration.

use actix_web::{Responder, web};
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
    pub provider: String,
    pub is_demo: bool,
    pub max_query_chars: usize,
    pub version: String,
}

/// No inline script or style anywhere: the page needs nothing but its own origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

pub async fn page(config: web::Data<Config>, provider: web::Data<Provider>) -> impl Responder {
    let kind = config.provider();
    let page = IndexPage {
        model: provider.model().to_owned(),
        provider: match kind {
            ProviderKind::Demo => "demo",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
        .to_owned(),
        is_demo: kind == ProviderKind::Demo,
        max_query_chars: config.max_query_chars as usize,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    page.customize()
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-cache"))
}
