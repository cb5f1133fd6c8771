//! `GET /api/limits`: the calling client's budget, and who it is (a signed-in user or anonymous),
//! so the page can explain a refusal (an EventSource cannot read the body of a refused request).
//! With `q` (and `conversation` for a follow-up), also what the token budgets would decide for
//! that question now, spending nothing. Under auth it is refused `401` like the stream, which is
//! how the page learns it must sign in.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::{
    client::Client,
    config::Config,
    llm::window,
    store::{Budget, Budgets, LimitsView, Store},
};

#[derive(Serialize)]
struct View<'a> {
    #[serde(flatten)]
    limits: LimitsView,
    client: Who<'a>,
    /// With a valid `q`: `null` when the token budgets admit it, else their refusal. Absent
    /// without `q`, or with one the stream would refuse for its form.
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<Option<Refused>>,
}

/// `{"kind":"user","sub":"…"}` or `{"kind":"anonymous"}`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Who<'a> {
    User { sub: &'a str },
    Anonymous,
}

/// The refusal's body, as the stream would send it: its code, words, and the seconds of its
/// `Retry-After`. The service's budget shows only this, never its figures.
#[derive(Serialize)]
struct Refused {
    error: &'static str,
    message: String,
    retry_after: Option<u64>,
}

#[derive(Deserialize)]
pub struct Params {
    q: Option<String>,
    conversation: Option<String>,
}

pub async fn limits(
    request: HttpRequest,
    params: Option<web::Query<Params>>,
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
    // A query that is not UTF-8, or a question the stream refuses for its form, gets no answer
    // about the budgets: the stream would never reach them.
    let params = params
        .filter(|_| crate::query::is_utf8(&request))
        .map(web::Query::into_inner);
    let question = match params {
        Some(Params {
            q: q @ Some(_),
            conversation,
        }) => match super::stream::validate(q, config.max_query_chars as usize) {
            Ok(q) => Some(question(&store, &config, &client, &q, conversation.as_deref()).await),
            Err(_) => None,
        },
        _ => None,
    };
    let client = match client.sub() {
        Some(sub) => Who::User { sub },
        None => Who::Anonymous,
    };
    let mut response = HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(View {
            limits,
            client,
            question,
        });
    super::stream::insert_headers(response.headers_mut(), budgets, plan.per_minute);
    response
}

/// What the token budgets would refuse `q` with now, asked in `conversation` (its history the
/// client may read counts in the prompt, as the stream counts it); `None` when they admit it.
async fn question(
    store: &Store,
    config: &Config,
    client: &Client,
    q: &str,
    conversation: Option<&str>,
) -> Option<Refused> {
    let history = match conversation.filter(|id| crate::id::is_valid(id)) {
        Some(id) => store.turns(id, client.owner()).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let history = window(&history, q, config.conversation_max_chars as usize);
    let ask = super::stream::ask_of(config, history, q);
    let refusal = store
        .token_refusal(client.id, client.plan(config), ask)
        .await?;
    Some(Refused {
        error: refusal.code(),
        message: refusal.to_string(),
        retry_after: refusal.retry_after_secs(),
    })
}
