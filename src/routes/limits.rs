//! `GET /api/limits`: the calling client's budget, and who it is (a signed-in user or anonymous),
//! so the page can explain a refusal (an EventSource cannot read the body of a refused request).
//! Under auth it is refused `401` like the stream, which is how the page learns it must sign in.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::{
    client::Client,
    config::Config,
    store::{LimitsView, Store},
};

#[derive(Serialize)]
struct View<'a> {
    #[serde(flatten)]
    limits: LimitsView,
    client: Who<'a>,
}

/// `{"kind":"user","sub":"…"}` or `{"kind":"anonymous"}`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Who<'a> {
    User { sub: &'a str },
    Anonymous,
}

pub async fn limits(
    request: HttpRequest,
    store: web::Data<Store>,
    config: web::Data<Config>,
) -> HttpResponse {
    let client = Client::of(&request, &config);
    let limits = store.view(client.id, client.plan(&config), &config).await;
    let client = match client.sub() {
        Some(sub) => Who::User { sub },
        None => Who::Anonymous,
    };
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(View { limits, client })
}
