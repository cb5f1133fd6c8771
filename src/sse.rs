//! Our events → SSE frames: a JSON `data:` line per event, each with an `id:` of the stream's id and
//! the event's number, `[DONE]` after a finish, an in-band error that ends the stream otherwise,
//! and keep-alive comments while nothing else is sent.

use std::time::Duration;

use actix_web_lab::sse;
use async_stream::stream;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

use crate::{error::StreamError, llm::LlmEvent, telemetry::StreamReport};

#[derive(Serialize)]
struct TokenFrame<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct ReasoningFrame<'a> {
    reasoning: &'a str,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

/// Turns a provider's events into SSE frames. Whatever happens, the stream ends with either
/// `[DONE]` (after a finish) or one error frame: a provider that stops without finishing is
/// reported as `stream_interrupted`, so a truncated answer never looks complete.
///
/// While nothing else is sent for `keepalive` (a slow first token, a retry wait), a `: keep-alive`
/// comment goes out, so that proxies and browsers keep the connection open.
pub fn frames<S>(
    stream_id: String,
    events: S,
    keepalive: Duration,
    mut report: StreamReport,
) -> impl Stream<Item = sse::Event>
where
    S: Stream<Item = Result<LlmEvent, StreamError>>,
{
    stream! {
        let mut events = std::pin::pin!(events);
        let quiet = tokio::time::sleep(keepalive);
        let mut quiet = std::pin::pin!(quiet);
        let mut seq = 0_u64;
        let mut next_id = move || {
            seq += 1;
            format!("{stream_id}:{seq}")
        };
        let error = loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = &mut quiet => {
                    quiet.as_mut().reset(Instant::now() + keepalive);
                    yield sse::Event::Comment("keep-alive".into());
                    continue;
                }
            };
            quiet.as_mut().reset(Instant::now() + keepalive);
            match event {
                Some(Ok(LlmEvent::Token(text))) => {
                    report.token();
                    yield frame(&TokenFrame { token: &text }, next_id());
                }
                Some(Ok(LlmEvent::Reasoning(text))) => {
                    report.first_output();
                    yield frame(&ReasoningFrame { reasoning: &text }, next_id());
                }
                Some(Ok(LlmEvent::Finish(finish))) => {
                    report.finish("done");
                    yield frame(&finish, next_id());
                    yield sse::Data::new("[DONE]").id(next_id()).into();
                    return;
                }
                Some(Err(error)) => break error,
                None => break StreamError::StreamInterrupted,
            }
        };
        report.finish(error.code());
        yield frame(&ErrorFrame { error: error.code(), message: error.to_string(), retry_after: error.retry_after() }, next_id());
    }
}

fn frame(value: &impl Serialize, id: String) -> sse::Event {
    let data = sse::Data::new_json(value).unwrap_or_else(|_| {
        sse::Data::new(r#"{"error":"upstream_error","message":"The answer could not be encoded."}"#)
    });
    data.id(id).into()
}

/// A short random id for a stream, shared by its log line and its event ids.
pub fn new_stream_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}
