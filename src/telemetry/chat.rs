//! The chat span of one answer, kind CLIENT, named `chat <model>`, with the GenAI semantic
//! conventions (`gen_ai.*`): what was asked of which provider, then the usage, the finish reason
//! and the model that answered, an event at the first token, and `error.type` when it ends in an
//! error. The question and the answer's text only with OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT.
//! The upstream's HTTP attempts are its children ([`crate::otel::Attempt`]).

use std::time::Duration;

use actix_web::HttpRequest;
use opentelemetry::{
    Context, KeyValue,
    context::FutureExt as _,
    trace::{SpanKind, Status, TraceContextExt, Tracer as _},
};

use super::traces::{Traces, server_context, traceparent_of};
use crate::llm::{EventStream, Finish, Target, Turn};

/// The most characters of one message's text recorded on a span; the rest is cut.
const CONTENT_MAX_CHARS: usize = 8 * 1024;

/// What an answer asks of its upstream, for the chat span.
pub struct Asked<'a> {
    pub target: &'a Target,
    pub max_tokens: u32,
    pub temperature: f32,
    pub question: &'a str,
    pub history: &'a [Turn],
    pub conversation: &'a str,
}

/// An answer's chat span, with the tracer for the upstream calls made under it.
pub struct Chat {
    context: Context,
    capture_content: bool,
    finish_reason: Option<String>,
}

impl Traces {
    /// The chat span of a new answer, under the request's server span; nothing when traces are off.
    pub fn chat(&self, request: &HttpRequest, asked: Asked<'_>) -> Option<Chat> {
        let on = self.on()?;
        let target = asked.target;
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", target.kind.name()),
            KeyValue::new("gen_ai.request.model", target.model.clone()),
            KeyValue::new("gen_ai.conversation.id", asked.conversation.to_owned()),
        ];
        if target.kind != crate::config::ProviderKind::Demo {
            attributes.extend([
                KeyValue::new("gen_ai.request.max_tokens", i64::from(asked.max_tokens)),
                KeyValue::new("gen_ai.request.temperature", f64::from(asked.temperature)),
                KeyValue::new(
                    "server.address",
                    target.base_url.host_str().unwrap_or_default().to_owned(),
                ),
                KeyValue::new(
                    "server.port",
                    i64::from(target.base_url.port_or_known_default().unwrap_or_default()),
                ),
            ]);
        }
        if on.capture_content {
            attributes.push(KeyValue::new(
                "gen_ai.input.messages",
                input_messages(asked.history, asked.question),
            ));
        }
        let tracer = on.tracer();
        let span = tracer
            .span_builder(format!("chat {}", target.model))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &server_context(request));
        Some(Chat {
            context: on.carrying(server_context(request).with_span(span)),
            capture_content: on.capture_content,
            finish_reason: None,
        })
    }
}

impl Chat {
    /// `events` polled inside the span, so that each upstream attempt is its child.
    pub fn around(&self, events: EventStream) -> EventStream {
        Box::pin(events.with_context(self.context.clone()))
    }

    /// The span's `traceparent`, kept with the answer for the resumes to link to.
    pub fn traceparent(&self) -> Option<String> {
        traceparent_of(&self.context)
    }

    /// The trace id, for the stream's log line.
    pub fn trace_id(&self) -> String {
        self.context.span().span_context().trace_id().to_string()
    }

    pub(super) fn first_token(&self, after: Duration) {
        self.context.span().add_event(
            "gen_ai.first_token",
            vec![KeyValue::new(
                "gen_ai.response.time_to_first_chunk",
                after.as_secs_f64(),
            )],
        );
    }

    pub(super) fn finished(&mut self, finish: &Finish) {
        self.finish_reason = Some(finish.finish_reason.clone());
        let span = self.context.span();
        span.set_attribute(KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(
                vec![opentelemetry::StringValue::from(
                    finish.finish_reason.clone(),
                )]
                .into(),
            ),
        ));
        if let Some(usage) = finish.usage {
            span.set_attributes([
                KeyValue::new("gen_ai.usage.input_tokens", usage.prompt_tokens as i64),
                KeyValue::new("gen_ai.usage.output_tokens", usage.completion_tokens as i64),
            ]);
        }
        if let Some(model) = &finish.model {
            span.set_attribute(KeyValue::new("gen_ai.response.model", model.clone()));
        }
        if let Some(upstream) = finish.upstream {
            span.set_attribute(KeyValue::new("llm_stream.upstream", upstream));
        }
    }

    /// The answer as the person saw it, when content is captured.
    pub(super) fn output(&self, text: &str) {
        if !self.capture_content {
            return;
        }
        let message = serde_json::json!([{
            "role": "assistant",
            "parts": [{"type": "text", "content": bounded(text)}],
            "finish_reason": self.finish_reason.as_deref().unwrap_or("stop"),
        }]);
        self.context
            .span()
            .set_attribute(KeyValue::new("gen_ai.output.messages", message.to_string()));
    }

    /// Ends the span with the stream's `outcome`: `done`, `client_gone` (not an error: the person
    /// left), or our in-band error code, which becomes `error.type`.
    pub(super) fn end(&self, outcome: &'static str) {
        let span = self.context.span();
        match outcome {
            "done" => span.set_status(Status::Ok),
            "client_gone" => {}
            code => {
                span.set_attribute(KeyValue::new("error.type", code));
                span.set_status(Status::error(code));
            }
        }
        span.end();
    }
}

/// The chat as sent, in the conventions' message shape (the system prompt left out).
fn input_messages(history: &[Turn], question: &str) -> String {
    let message = |role, text: &str| serde_json::json!({"role": role, "parts": [{"type": "text", "content": bounded(text)}]});
    let mut messages: Vec<_> = history
        .iter()
        .flat_map(|turn| {
            [
                message("user", &turn.question),
                message("assistant", &turn.answer),
            ]
        })
        .collect();
    messages.push(message("user", question));
    serde_json::Value::Array(messages).to_string()
}

/// At most [`CONTENT_MAX_CHARS`] characters of `text`.
fn bounded(text: &str) -> &str {
    match text.char_indices().nth(CONTENT_MAX_CHARS) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_cut_at_a_character_boundary() {
        let long = "é".repeat(CONTENT_MAX_CHARS + 5);
        assert_eq!(bounded(&long).chars().count(), CONTENT_MAX_CHARS);
        assert_eq!(bounded("short"), "short");
    }
}
