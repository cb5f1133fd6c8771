//! `GET /api/limits`: the calling client's budget, so the page can explain a refusal
//! (an EventSource cannot read the body of a refused request).

use actix_web::{HttpRequest, HttpResponse, web};

use crate::{client::ClientId, config::Config, store::Store};

pub async fn limits(
    request: HttpRequest,
    store: web::Data<Store>,
    config: web::Data<Config>,
) -> HttpResponse {
    let client = ClientId::of(&request, &config);
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(store.view(client, &config).await)
}
