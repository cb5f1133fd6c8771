//! `POST /api/stream/<stream>/cancel`: stops an answer for real, whichever instance produces it.
//! The stream id is the only credential; a browser's request from another site is refused before
//! this (`fetch_metadata`), so that no foreign page can stop (or probe) someone's answer.

use actix_web::{HttpResponse, web};

use crate::{answers::Answers, error::Refusal};

pub async fn cancel(
    id: web::Path<String>,
    answers: web::Data<Answers>,
) -> Result<HttpResponse, Refusal> {
    let id = id.into_inner();
    if crate::id::is_valid(&id) && answers.cancel(&id).await {
        crate::metrics::cancelled();
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Refusal::UnknownStream)
    }
}
