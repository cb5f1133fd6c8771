//! `GET /api/conversations/<id>`: a conversation's stored turns, so that a reloaded page can show
//! them again; `404` once it is unknown or expired, or when it is another identity's (a signed-in
//! user's conversation is theirs alone; an anonymous one's id is its only credential).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::{client::Client, config::Config, error::Refusal, llm::Turn, store::Store};

#[derive(Serialize)]
struct View<'a> {
    conversation: &'a str,
    turns: Vec<Turn>,
}

pub async fn conversation(
    request: HttpRequest,
    id: web::Path<String>,
    store: web::Data<Store>,
    config: web::Data<Config>,
) -> Result<HttpResponse, Refusal> {
    let owner = Client::of(&request, &config).owner();
    let turns = store
        .turns(&id, owner)
        .await
        .ok_or(Refusal::UnknownConversation)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(View {
            conversation: &id,
            turns,
        }))
}
