//! `GET /api/stream?q=…`: validate the question, take a stream slot, ask the provider, and answer
//! with its events as SSE. Dropping the response body (the client left) ends the task that owns
//! the upstream call and the slot, which closes the upstream connection and frees the slot.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, Responder, web};
use actix_web_lab::sse::Sse;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    error::{Refusal, StreamError},
    limits::{ClientId, Limits, StreamSlot},
    llm::{EventStream, LlmEvent, Provider},
    request_id::RequestId,
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
    crate::query::require_utf8(&request)?;
    // An EventSource reconnects by itself when a response ends; 204 tells it to stop,
    // so that nobody asks the model the same question twice by accident.
    if request.headers().contains_key("last-event-id") {
        return Ok(HttpResponse::NoContent().finish());
    }
    let question = validate(params.into_inner().q, config.max_query_chars as usize)
        .inspect_err(crate::metrics::refused)?;
    let client = ClientId::of(&request, &config);
    let slot = limits.acquire(client)?;

    let stream_id = new_stream_id();
    let events = pump(
        provider.stream(&question, RequestId::of(&request).as_str()),
        config.stream_timeout(),
        shutdown.0.clone(),
        slot,
    );
    let report = StreamReport::new(
        stream_id.clone(),
        client.to_string(),
        question.chars().count(),
    );
    Ok(
        Sse::from_infallible_stream(frames(stream_id, events, config.keepalive(), report))
            .customize()
            .insert_header(("X-Accel-Buffering", "no"))
            .respond_to(&request)
            .map_into_boxed_body(),
    )
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

/// Room for events between the upstream and a slow client: enough to absorb a burst, small
/// enough that a client that stops reading holds back the upstream (backpressure, flat memory).
const EVENT_BUFFER: usize = 16;

/// Drives the provider's stream in a task of its own, so that the answer's budget and the
/// shutdown grace are enforced even while a client that stopped reading leaves the body unpolled.
/// The task lives no longer than the stream: it ends when the body is dropped (the client left),
/// at the deadline, at shutdown, or after the last event, and it owns the upstream call and the slot.
fn pump(
    mut events: EventStream,
    budget: Duration,
    shutdown: CancellationToken,
    slot: StreamSlot,
) -> impl Stream<Item = Result<LlmEvent, StreamError>> {
    let deadline = tokio::time::Instant::now() + budget;
    let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
    // The reason a stream ended early travels apart from the events, so that it is never stuck
    // behind a full buffer; the body reads it after the events it follows.
    let (end_tx, end_rx) = oneshot::channel();
    // In the request's span, so that its log lines carry the request id.
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _slot = slot;
        let end = loop {
            let event = tokio::select! {
                biased;
                () = events_tx.closed() => return,
                () = shutdown.cancelled() => break StreamError::ServerShutdown,
                () = tokio::time::sleep_until(deadline) => break StreamError::Timeout,
                event = events.next() => match event {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => break error,
                    None => return,
                },
            };
            let last = matches!(event, LlmEvent::Finish(_));
            tokio::select! {
                biased;
                sent = events_tx.send(event) => if sent.is_err() { return },
                () = shutdown.cancelled() => break StreamError::ServerShutdown,
                () = tokio::time::sleep_until(deadline) => break StreamError::Timeout,
            }
            if last {
                return;
            }
        };
        let _ = end_tx.send(end);
    }));
    let events = futures_util::stream::unfold(events_rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    let end =
        futures_util::stream::once(end_rx).filter_map(|end| std::future::ready(end.ok().map(Err)));
    events.chain(end)
}
