//! The query string held to UTF-8. `web::Query` decodes percent-escapes lossily: `q=%FF%FE`
//! would reach the model as two U+FFFD characters, a question nobody asked. This refuses instead.

use actix_web::HttpRequest;
use percent_encoding::percent_decode_str;

use crate::error::Refusal;

/// Refuses a request when any parameter's name or value percent-decodes to bytes that are not
/// UTF-8, naming the parameter; counted like every refusal. Call it before reading any parameter.
pub fn require_utf8(request: &HttpRequest) -> Result<(), Refusal> {
    let Some(name) = undecodable(request) else {
        return Ok(());
    };
    // A name is echoed only when it looks like one of ours, so that the message stays short.
    let plain = |name: &str| {
        !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let what = match name.as_str() {
        "q" => "The question".to_owned(),
        name if plain(name) => format!("The {name} parameter"),
        _ => "A parameter".to_owned(),
    };
    let refusal = Refusal::InvalidQuery(format!(
        "{what} is not valid UTF-8: its percent-encoding must spell UTF-8 text."
    ));
    crate::metrics::refused(&refusal);
    Err(refusal)
}

/// Whether every parameter's name and value percent-decodes to UTF-8 (checked without counting
/// a refusal, for an endpoint that only describes).
pub fn is_utf8(request: &HttpRequest) -> bool {
    undecodable(request).is_none()
}

/// The first parameter whose name or value is not UTF-8: its name (empty when the name is the
/// undecodable part).
fn undecodable(request: &HttpRequest) -> Option<String> {
    request.query_string().split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // `+` stands for a space, which is ASCII: it cannot change whether a pair is UTF-8.
        match percent_decode_str(name).decode_utf8() {
            Ok(name) => percent_decode_str(value)
                .decode_utf8()
                .is_err()
                .then(|| name.into_owned()),
            Err(_) => Some(String::new()),
        }
    })
}
