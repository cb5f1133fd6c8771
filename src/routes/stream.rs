//! `GET /api/stream?q=…`: validate the question, take a stream slot, ask the provider, and answer
//! with its events as SSE. The response body owns everything: dropping it (the client left)
//! drops the upstream call and releases the slot.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, Responder, web};
use actix_web_lab::sse::Sse;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    error::{Refusal, StreamError},
    limits::{ClientId, Limits},
    llm::{LlmEvent, Provider},
    sse::{frames, new_stream_id},
    telemetry::StreamReport,
};

#[derive(Deserialize)]
pub struct StreamParams {
    q: Option<String>,
}

/// Fires when the server's shutdown grace has run out.
#[derive(Clone, Default)]
pub struct Shutdown(pub CancellationToken);

pub async fn stream(
    request: HttpRequest,
    params: web::Query<StreamParams>,
    config: web::Data<Config>,
    provider: web::Data<Provider>,
    limits: web::Data<Limits>,
    shutdown: web::Data<Shutdown>,
) -> Result<HttpResponse, Refusal> {
    // An EventSource reconnects by itself when a response ends; 204 tells it to stop,
    // so that nobody asks the model the same question twice by accident.
    if request.headers().contains_key("last-event-id") {
        return Ok(HttpResponse::NoContent().finish());
    }
    let question = validate(params.into_inner().q, config.max_query_chars as usize)?;
    let client = ClientId::of(&request, &config);
    let slot = limits.acquire(client)?;

    let stream_id = new_stream_id();
    let report = StreamReport::new(
        stream_id.clone(),
        client.to_string(),
        question.chars().count(),
    );
    let events = bounded(
        provider.stream(&question),
        config.stream_timeout(),
        shutdown.0.clone(),
    );
    let frames = frames(stream_id, events, report).map(move |frame| {
        // The slot lives exactly as long as the body.
        let _ = &slot;
        frame
    });
    Ok(Sse::from_infallible_stream(frames)
        .with_keep_alive(config.keepalive())
        .customize()
        .insert_header(("X-Accel-Buffering", "no"))
        .respond_to(&request)
        .map_into_boxed_body())
}

/// A question is 1 to MAX_QUERY_CHARS characters (not bytes) with no control characters but newlines and tabs.
fn validate(question: Option<String>, max_chars: usize) -> Result<String, Refusal> {
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

/// Ends the provider's events with `timeout` once the answer's budget is spent, or with
/// `server_shutdown` once the shutdown grace has run out.
fn bounded<S>(
    events: S,
    budget: Duration,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<LlmEvent, StreamError>>
where
    S: Stream<Item = Result<LlmEvent, StreamError>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + budget;
    futures_util::stream::unfold(Some(events), move |events| {
        let shutdown = shutdown.clone();
        async move {
            let mut events = events?;
            tokio::select! {
                biased;
                item = events.next() => item.map(|item| (item, Some(events))),
                () = tokio::time::sleep_until(deadline) => Some((Err(StreamError::Timeout), None)),
                () = shutdown.cancelled() => Some((Err(StreamError::ServerShutdown), None)),
            }
        }
    })
}
