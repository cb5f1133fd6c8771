//! Who is asking, when AUTH_JWT_SECRET or AUTH_JWKS_URL is set: the token a request carries
//! (`Authorization: Bearer`, else the AUTH_COOKIE cookie; never the URL), its verification with
//! the configured algorithms only, and the key set fetched from AUTH_JWKS_URL with its refresher.
//! Without either setting there is no `Auth` at all, and every client is anonymous by address.
//!
//! The token itself is never logged, counted or sent back: only why it was refused.

mod jwks;
mod token;

use actix_web::HttpRequest;
use jsonwebtoken::DecodingKey;
use secrecy::ExposeSecret;

use crate::{client::Client, config::Config, error::Refusal};

pub use token::token_of;

/// The verifier: the HMAC secret, the key set, and what every token must satisfy.
pub struct Auth {
    secret: Option<DecodingKey>,
    jwks: Option<std::sync::Arc<jwks::Jwks>>,
    rules: token::Rules,
    cookie: String,
    anonymous: bool,
}

impl Auth {
    /// The verifier the settings ask for (`None` without AUTH_JWT_SECRET or AUTH_JWKS_URL); the key
    /// set starts being fetched in the background: nothing waits on it.
    pub fn new(config: &Config) -> Result<Option<Self>, String> {
        if !config.auth_enabled() {
            return Ok(None);
        }
        let secret = config
            .auth_jwt_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.expose_secret().as_bytes()))
            .transpose()
            .map_err(|_| "AUTH_JWT_SECRET cannot be used as an HMAC key".to_owned())?;
        let jwks = config.auth_jwks_url.clone().map(jwks::Jwks::start);
        Ok(Some(Self {
            secret,
            jwks,
            rules: token::Rules::new(config),
            cookie: config.auth_cookie.clone(),
            anonymous: config.auth_allows_anonymous(),
        }))
    }

    /// The user a request's token names; `Ok(None)` for a request without a token when anonymous
    /// requests are served. A token that is there but refused is refused even then.
    pub fn identify(&self, request: &HttpRequest) -> Result<Option<Client>, Refusal> {
        match token_of(request, &self.cookie) {
            Some(token) => self.verify(token).map(Some),
            None if self.anonymous => Ok(None),
            None => Err(Refusal::Unauthorized {
                message: "You are not signed in: this server answers only requests that carry a \
                          token (Authorization: Bearer, or the sign-in cookie)."
                    .into(),
                invalid: false,
            }),
        }
    }

    /// Verifies one token: its signature with a configured key and algorithm, then its claims.
    pub fn verify(&self, token: &str) -> Result<Client, Refusal> {
        token::verify(
            token,
            self.secret.as_ref(),
            self.jwks.as_deref(),
            &self.rules,
        )
    }
}
