//! `GET /api/stream?q=…`: validate the question, admit it (rate and stream slot), start the answer
//! and answer with its first reader as SSE. With `Last-Event-ID` (or `last_event_id=`), the rest of
//! an answer already started instead, or `204` when there is none to send.

use actix_web::{
    Error, HttpMessage, HttpRequest, HttpResponse, Responder,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    web,
};
use actix_web_lab::sse::{self, Sse};
use futures_util::Stream;
use serde::Deserialize;

use crate::{
    answers::{Answers, Resume},
    client::Client,
    config::Config,
    error::Refusal,
    llm::{Provider, Target, Turn, prompt_chars, window},
    request_id::RequestId,
    sse::parse_event_id,
    store::{Ask, Budgets, Conversation, Store, tokens::estimate},
    telemetry::{StreamReport, chat::Asked, traces::Traces},
};

#[derive(Deserialize)]
pub struct StreamParams {
    q: Option<String>,
    /// For a client that cannot send `Last-Event-ID` (a reloaded page); the header wins.
    last_event_id: Option<String>,
    /// The conversation this question follows up; a new one when absent, unknown or expired.
    conversation: Option<String>,
}

pub async fn stream(
    request: HttpRequest,
    params: web::Query<StreamParams>,
    config: web::Data<Config>,
    provider: web::Data<Provider>,
    store: web::Data<Store>,
    answers: web::Data<Answers>,
    traces: web::Data<Traces>,
) -> Result<HttpResponse, Refusal> {
    crate::query::require_utf8(&request)?;
    let params = params.into_inner();
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id);
    let client = Client::of(&request, &config);
    if let Some(last_event_id) = last_event_id {
        let question = params.q.unwrap_or_default();
        return Ok(resume(
            &request,
            (&answers, &traces),
            &config,
            &client,
            &last_event_id,
            &question,
        )
        .await);
    }
    let question =
        validate(params.q, config.max_query_chars as usize).inspect_err(crate::metrics::refused)?;
    let stream_id = crate::id::new();
    // Before admission, so that a busy conversation spends no budget.
    let (conversation, turn, history) = match store
        .begin_turn(params.conversation.as_deref(), &stream_id, client.owner())
        .await
    {
        Conversation::Ready { id, turn, history } => (id, turn, history),
        Conversation::Busy => {
            return Err(Refusal::ConversationBusy).inspect_err(crate::metrics::refused);
        }
    };
    let history = window(&history, &question, config.conversation_max_chars as usize);
    let ask = ask_of(&config, history, &question);
    let admitted = match store.admit(client.id, client.plan(&config), ask).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            store
                .end_turn(&conversation, client.owner(), &stream_id, None)
                .await;
            request.extensions_mut().insert(Decided(refused.budgets));
            return Err(refused.refusal);
        }
    };
    request.extensions_mut().insert(Decided(admitted.budgets));

    let chat = traces.is_on().then(|| {
        let target = Target::primary(&config);
        traces.chat(
            &request,
            Asked {
                target: &target,
                max_tokens: admitted.max_tokens.unwrap_or(config.llm_max_tokens),
                temperature: config.llm_temperature,
                question: &question,
                history,
                conversation: &conversation,
            },
        )
    });
    let report = StreamReport::new(
        stream_id.clone(),
        client.log_name(),
        question.chars().count(),
    )
    .traced(chat.flatten());
    let mut events = provider.stream(
        &question,
        history,
        RequestId::of(&request).as_str(),
        admitted.max_tokens,
    );
    if let Some(chat) = report.chat() {
        events = chat.around(events);
    }
    let reader = answers.start(
        stream_id,
        question,
        (conversation, turn),
        &client,
        admitted.slot,
        events,
        report,
    );
    Ok(respond(&request, &config, reader))
}

/// The rest of the answer the client saw up to `last_event_id`, whatever instance produced it, for
/// no rate budget; `204` (the EventSource stops) when there is nothing to send.
/// Another identity's answer is answered as an unknown one.
async fn resume(
    request: &HttpRequest,
    (answers, traces): (&Answers, &Traces),
    config: &Config,
    client: &Client,
    last_event_id: &str,
    question: &str,
) -> HttpResponse {
    let Some((id, after)) = parse_event_id(last_event_id) else {
        crate::metrics::resumed("refused");
        return HttpResponse::NoContent().finish();
    };
    match answers.resume(id, after, question, client.owner()).await {
        Resume::Rest(reader, traceparent) => {
            crate::metrics::resumed("resumed");
            // With traces on, the resume's span lasts as long as its reader.
            let span = traces.resume(request, id, after, traceparent.as_deref());
            respond(
                request,
                config,
                futures_util::StreamExt::map(reader, move |event| {
                    let _held = &span;
                    event
                }),
            )
        }
        Resume::Nothing => {
            crate::metrics::resumed("refused");
            HttpResponse::NoContent().finish()
        }
    }
}

/// An answer's reader as the SSE response, opened with `retry:` (how soon an EventSource reconnects).
fn respond(
    request: &HttpRequest,
    config: &Config,
    reader: impl Stream<Item = sse::Event> + 'static,
) -> HttpResponse {
    Sse::from_infallible_stream(reader)
        .with_retry_duration(config.resume_retry)
        .customize()
        .insert_header(("X-Accel-Buffering", "no"))
        .respond_to(request)
        .map_into_boxed_body()
}

/// What `question` asks of the token budgets after `history` (the turns sent with it): the
/// most its answer can cost, its prompt as sent (estimated) and the longest answer.
pub(super) fn ask_of(config: &Config, history: &[Turn], question: &str) -> Ask {
    Ask {
        prompt: estimate(prompt_chars(&config.llm_system_prompt, history, question)),
        answer: config.llm_max_tokens,
        min_answer: config.token_budget_min_answer,
    }
}

/// A question is 1 to MAX_QUERY_CHARS characters (not bytes) with no control characters but newlines and tabs.
pub(super) fn validate(question: Option<String>, max_chars: usize) -> Result<String, Refusal> {
    let question = question.unwrap_or_default();
    if question.trim().is_empty() {
        return Err(Refusal::InvalidQuery(
            "Ask a question: the q parameter is missing or blank.".into(),
        ));
    }
    let chars = question.chars().count();
    if chars > max_chars {
        return Err(Refusal::InvalidQuery(format!(
            "The question is {chars} characters long; the limit is {max_chars}."
        )));
    }
    if question
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Refusal::InvalidQuery(
            "The question holds control characters; only text, newlines and tabs are accepted."
                .into(),
        ));
    }
    Ok(question)
}

/// The budgets a handler decided on, for [`rate_limit_headers`] to show.
#[derive(Clone, Copy)]
struct Decided(Budgets);

/// Middleware around `/api/stream`: adds the rate-limit headers to every answer, with the budgets
/// the handler's admission left, or the client's budgets now when it decided none (a resume, a
/// question refused for its form).
pub async fn rate_limit_headers(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let store = request.app_data::<web::Data<Store>>().cloned();
    let config = request.app_data::<web::Data<Config>>().cloned();
    let client = config.as_ref().map(|config| {
        let client = Client::of(request.request(), config);
        (client.id, client.plan(config))
    });
    let mut response = next.call(request).await?.map_into_boxed_body();
    let decided = response.request().extensions().get::<Decided>().copied();
    let budgets = match (decided, store, client) {
        (Some(Decided(budgets)), _, _) => budgets,
        (None, Some(store), Some((client, plan))) => store.budgets(client, plan).await,
        _ => Budgets::default(),
    };
    let per_minute = client.map_or(0, |(_, plan)| plan.per_minute);
    insert_headers(response.headers_mut(), budgets, per_minute);
    Ok(response)
}

/// `RateLimit-Limit`/`-Remaining`/`-Reset` for the question rate (as existing clients read them),
/// and the IETF draft's `RateLimit-Policy` and `RateLimit` lists with one member per policy
/// (`requests`, `tokens`). The requests' window is the time its whole burst takes to come back at
/// `per_minute`.
pub fn insert_headers(
    headers: &mut actix_web::http::header::HeaderMap,
    budgets: Budgets,
    per_minute: u32,
) {
    let mut policies = Vec::new();
    let mut states = Vec::new();
    if let Some(budget) = budgets.rate {
        for (name, value) in [
            ("ratelimit-limit", u64::from(budget.limit)),
            ("ratelimit-remaining", u64::from(budget.remaining)),
            ("ratelimit-reset", budget.reset_secs),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
        }
        let window = (u64::from(budget.limit) * 60).div_ceil(u64::from(per_minute.max(1)));
        policies.push(format!("\"requests\";q={};w={window}", budget.limit));
        states.push(format!(
            "\"requests\";r={};t={}",
            budget.remaining, budget.reset_secs
        ));
    }
    if let Some(tokens) = budgets.tokens {
        policies.push(format!(
            "\"tokens\";q={};w={}",
            tokens.limit, tokens.window_secs
        ));
        states.push(format!(
            "\"tokens\";r={};t={}",
            tokens.remaining, tokens.reset_secs
        ));
    }
    for (name, members) in [("ratelimit-policy", policies), ("ratelimit", states)] {
        if let Ok(value) = HeaderValue::from_str(&members.join(", "))
            && !members.is_empty()
        {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}
