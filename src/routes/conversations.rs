//! `GET /api/conversations/<id>`: a conversation's stored turns, so that a reloaded page can show
//! them again; `404` once it is unknown or expired. The id is the only credential.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::{error::Refusal, llm::Turn, store::Store};

#[derive(Serialize)]
struct View<'a> {
    conversation: &'a str,
    turns: Vec<Turn>,
}

pub async fn conversation(
    id: web::Path<String>,
    store: web::Data<Store>,
) -> Result<HttpResponse, Refusal> {
    let turns = store.turns(&id).await.ok_or(Refusal::UnknownConversation)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(View {
            conversation: &id,
            turns,
        }))
}
