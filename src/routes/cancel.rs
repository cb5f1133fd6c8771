//! `POST /api/stream/<stream>/cancel`: stops an answer for real, whichever instance produces it.
//! A signed-in user's answer only by that user (any other identity is told `404`, as for an unknown
//! id); an anonymous answer's id is its only credential. A browser's request from another site is
//! refused before this (`fetch_metadata`), so that no foreign page can stop (or probe) someone's
//! answer.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::{answers::Answers, client::Client, config::Config, error::Refusal};

pub async fn cancel(
    request: HttpRequest,
    id: web::Path<String>,
    config: web::Data<Config>,
    answers: web::Data<Answers>,
) -> Result<HttpResponse, Refusal> {
    let id = id.into_inner();
    let owner = Client::of(&request, &config).owner();
    if crate::id::is_valid(&id) && answers.cancel(&id, owner).await {
        crate::metrics::cancelled();
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Refusal::UnknownStream)
    }
}
