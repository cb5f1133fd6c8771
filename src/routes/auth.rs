//! Middleware, not an endpoint: who is asking, on every route that answers for a client (the
//! stream, its cancel, `/api/limits`, `/api/conversations/<id>`). Wired only when AUTH_* is set;
//! it lives here, above the store, because a refused token spends its address's rate like an
//! anonymous question, so that guessing tokens is as slow as asking questions.

use actix_web::{
    Error, HttpMessage, ResponseError,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};

use crate::{
    auth::Auth,
    client::{Client, ClientId},
    config::Config,
    error::Refusal,
    store::Store,
};

/// Verifies the request's token: the user goes into the request's extensions for the handler
/// ([`Client::of`]); a request refused gets its `401` (or `503 auth_unavailable`) here.
pub async fn who_is_asking(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let decided = match request.app_data::<web::Data<Auth>>() {
        Some(auth) => auth.identify(request.request()),
        None => Ok(None),
    };
    let refusal = match decided {
        Ok(Some(client)) => {
            request.extensions_mut().insert(client);
            return Ok(next.call(request).await?.map_into_boxed_body());
        }
        Ok(None) => return Ok(next.call(request).await?.map_into_boxed_body()),
        Err(refusal) => refusal,
    };
    // The rate's own refusal, when there is one, was counted by the admission.
    let refusal = match refusal {
        Refusal::Unauthorized { invalid: true, .. } => match spend_address_rate(&request).await {
            Some(rate_limited) => rate_limited,
            None => counted(refusal),
        },
        other => counted(other),
    };
    let login_url = request
        .app_data::<web::Data<Config>>()
        .and_then(|config| config.auth_login_url.as_ref().map(|url| url.to_string()));
    let response = match (&refusal, login_url) {
        // The page links a person who is not signed in to AUTH_LOGIN_URL.
        (Refusal::Unauthorized { message, invalid }, Some(login_url)) => {
            actix_web::HttpResponse::Unauthorized()
                .insert_header((
                    "WWW-Authenticate",
                    crate::error::www_authenticate(message, *invalid),
                ))
                .json(serde_json::json!({
                    "error": refusal.code(),
                    "message": message,
                    "login_url": login_url,
                }))
        }
        _ => refusal.error_response(),
    };
    Ok(request.into_response(response))
}

fn counted(refusal: Refusal) -> Refusal {
    crate::metrics::refused(&refusal);
    refusal
}

/// Spends one question of the address's rate for a refused token; the rate's own refusal when it
/// has none left (the slot taken to spend it is released at once).
async fn spend_address_rate(request: &ServiceRequest) -> Option<Refusal> {
    let store = request.app_data::<web::Data<Store>>()?;
    let config = request.app_data::<web::Data<Config>>()?;
    let address = Client::anonymous(ClientId::of(request.request(), config));
    // No tokens asked: a refused token spends a question of the rate, none of any token budget.
    let nothing = crate::store::Ask {
        prompt: 0,
        answer: 0,
        min_answer: 0,
    };
    match store.admit(address.id, address.plan(config), nothing).await {
        Ok(_spent) => None,
        Err(refused) => {
            matches!(refused.refusal, Refusal::RateLimited { .. }).then_some(refused.refusal)
        }
    }
}
