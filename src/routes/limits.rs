//! `GET /api/limits`: the calling client's budget, and who it is (a signed-in user or anonymous),
//! so the page can explain a refusal (an EventSource cannot read the body of a refused request).
//! Under auth it is refused `401` like the stream, which is how the page learns it must sign in.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::{
    client::Client,
    config::Config,
    store::{Budget, Budgets, LimitsView, Store},
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
    let plan = client.plan(&config);
    let limits = store.view(client.id, plan, &config).await;
    let budgets = Budgets {
        rate: (limits.limit > 0).then_some(Budget {
            limit: limits.limit,
            remaining: limits.remaining,
            reset_secs: limits.reset_secs,
        }),
        tokens: limits.tokens,
    };
    let client = match client.sub() {
        Some(sub) => Who::User { sub },
        None => Who::Anonymous,
    };
    let mut response = HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(View { limits, client });
    super::stream::insert_headers(response.headers_mut(), budgets, plan.per_minute);
    response
}
