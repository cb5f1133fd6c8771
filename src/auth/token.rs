//! One token: where it comes from, and what makes it valid. The signature is checked by
//! `jsonwebtoken` with the algorithm the key allows (never the token's own choice alone: `none`
//! does not exist for it, and an HMAC token needs AUTH_JWT_SECRET, so an RSA public key can never
//! serve as an HMAC secret); then `exp` (required), `nbf`, `iat`, `iss`, `aud` within the leeway,
//! `sub`, and the `llm_stream` claim's shape.

use std::collections::HashMap;

use actix_web::HttpRequest;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, Validation, errors::ErrorKind, get_current_timestamp,
};
use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::jwks::{Jwks, Lookup};
use crate::{
    client::{Client, UserLimits},
    config::Config,
    error::Refusal,
};

/// The longest `sub` accepted, in bytes.
const MAX_SUB_BYTES: usize = 256;

/// The token a request carries: `Authorization: Bearer <token>` (another scheme is not ours and is
/// ignored), else the cookie. Never the query string: URLs end up in logs and histories.
pub fn token_of<'a>(request: &'a HttpRequest, cookie: &str) -> Option<&'a str> {
    let headers = request.headers();
    let bearer = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    if bearer.is_some() {
        return bearer;
    }
    headers
        .get_all("cookie")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// What every token must satisfy, one `Validation` per algorithm, made once.
pub struct Rules {
    validations: HashMap<Algorithm, Validation>,
    leeway: u64,
}

const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Rules {
    pub fn new(config: &Config) -> Self {
        let mut required = vec!["exp", "sub"];
        if config.auth_audience.is_some() {
            required.push("aud");
        }
        if config.auth_issuer.is_some() {
            required.push("iss");
        }
        let validations = ALGORITHMS
            .into_iter()
            .map(|alg| {
                let mut validation = Validation::new(alg);
                validation.leeway = config.auth_leeway_secs;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.validate_aud = config.auth_audience.is_some();
                if let Some(audience) = &config.auth_audience {
                    validation.set_audience(&[audience]);
                }
                if let Some(issuer) = &config.auth_issuer {
                    validation.set_issuer(&[issuer]);
                }
                validation.set_required_spec_claims(&required);
                (alg, validation)
            })
            .collect();
        Self {
            validations,
            leeway: config.auth_leeway_secs,
        }
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::Unauthorized {
        message: message.into(),
        invalid: true,
    }
}

/// Verifies `token` and names its user, or says why not, in words a person can act on.
pub fn verify(
    token: &str,
    secret: Option<&DecodingKey>,
    jwks: Option<&Jwks>,
    rules: &Rules,
) -> Result<Client, Refusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        invalid(
            "The token is not a valid JWT, or its header names an algorithm this server never \
             accepts (such as none).",
        )
    })?;
    let alg = header.alg;
    let validation = rules.validations.get(&alg).ok_or_else(|| {
        invalid(format!(
            "The token is signed with {alg:?}, which this server does not accept."
        ))
    })?;
    let found;
    let key = match (alg.family(), secret, jwks) {
        (AlgorithmFamily::Hmac, Some(secret), _) => secret,
        (AlgorithmFamily::Hmac, None, _) => {
            return Err(invalid(format!(
                "The token is signed with {alg:?}, a shared-secret algorithm; this server \
                 accepts only tokens signed with its identity provider's keys."
            )));
        }
        (_, _, None) => {
            return Err(invalid(format!(
                "The token is signed with {alg:?}; this server accepts only tokens signed with \
                 its shared secret (HS256, HS384, HS512)."
            )));
        }
        (_, _, Some(jwks)) => match jwks.lookup(header.kid.as_deref(), alg) {
            Lookup::Found(entry) => {
                found = entry;
                &found.key
            }
            Lookup::NotFetched => return Err(Refusal::AuthUnavailable),
            Lookup::Refused(why) => return Err(invalid(why)),
        },
    };
    let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
        Ok(data) => data.claims,
        Err(error) => return Err(invalid(explain(error.kind(), token, rules.leeway))),
    };
    let now = get_current_timestamp();
    if let Some(iat) = claims.get("iat") {
        let iat = iat
            .as_f64()
            .ok_or_else(|| invalid("The token's iat claim is not a number of seconds."))?;
        if iat > (now + rules.leeway) as f64 {
            return Err(invalid(format!(
                "The token was issued {} from now: check the clocks of the server that signs it.",
                span(iat as u64 - now)
            )));
        }
    }
    let sub = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= MAX_SUB_BYTES => sub,
        _ => {
            return Err(invalid(format!(
                "The token's sub claim must name the user: a string of 1 to {MAX_SUB_BYTES} bytes."
            )));
        }
    };
    let limits = match claims.get("llm_stream") {
        None => UserLimits::default(),
        Some(claim) => UserLimits::deserialize_claim(claim).map_err(|why| {
            invalid(format!(
                "The token's llm_stream claim is not valid ({why}): it may hold only \
                 requests_per_minute, burst, max_streams, tokens and tokens_window_secs, each a \
                 whole number of at least 0 (max_streams at least 1)."
            ))
        })?,
    };
    Ok(Client::user(sub, limits))
}

impl UserLimits {
    fn deserialize_claim(claim: &Value) -> Result<Self, String> {
        let limits = Self::deserialize(claim).map_err(|e| e.to_string())?;
        if limits.max_streams == Some(0) {
            return Err("max_streams is 0".into());
        }
        Ok(limits)
    }
}

/// Why a token whose header was readable was refused.
fn explain(kind: &ErrorKind, token: &str, leeway: u64) -> String {
    // The signature was verified before any of the time claims was looked at, so they can be
    // read again for the message.
    let claim = |name: &str| {
        jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
            .ok()
            .and_then(|claims| claims.get(name).and_then(Value::as_f64))
            .map(|secs| secs as u64)
    };
    let now = get_current_timestamp();
    match kind {
        ErrorKind::InvalidSignature => {
            "The token's signature does not verify: it was not signed by a key this server trusts."
                .into()
        }
        ErrorKind::ExpiredSignature => match claim("exp") {
            Some(exp) => format!(
                "The token expired {} ago (allowing {leeway} s of clock skew): sign in again.",
                span(now.saturating_sub(exp))
            ),
            None => "The token has expired: sign in again.".into(),
        },
        ErrorKind::ImmatureSignature => match claim("nbf") {
            Some(nbf) => format!(
                "The token is not valid yet: it becomes valid in {}.",
                span(nbf.saturating_sub(now))
            ),
            None => "The token is not valid yet.".into(),
        },
        ErrorKind::InvalidAudience => {
            "The token is meant for another audience: its aud claim does not name this server."
                .into()
        }
        ErrorKind::InvalidIssuer => {
            "The token was issued by another issuer: its iss claim is not the one this server trusts."
                .into()
        }
        ErrorKind::MissingRequiredClaim(name) => match name.as_str() {
            "exp" => "The token has no exp claim: it must say when it expires.".into(),
            "sub" => "The token's sub claim must name the user: a string of 1 to 256 bytes.".into(),
            other => format!("The token has no {other} claim, which this server requires."),
        },
        ErrorKind::InvalidClaimFormat(name) => {
            format!("The token's {name} claim has the wrong type.")
        }
        ErrorKind::InvalidAlgorithm => {
            "The token's algorithm does not fit the key it names.".into()
        }
        _ => "The token is malformed: it is not three base64url parts of JSON.".into(),
    }
}

/// A length of time as a person says it: "40 seconds", "3 minutes", "2 hours", "5 days".
pub fn span(secs: u64) -> String {
    let (n, unit) = match secs {
        0..120 => (secs, "second"),
        120..7200 => (secs / 60, "minute"),
        7200..172_800 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn a_span_reads_as_a_person_says_it() {
        assert_eq!(span(1), "1 second");
        assert_eq!(span(45), "45 seconds");
        assert_eq!(span(185), "3 minutes");
        assert_eq!(span(3 * 3600), "3 hours");
        assert_eq!(span(5 * 86_400), "5 days");
    }
}
