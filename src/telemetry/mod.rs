//! Logs: the tracing subscriber (readable by default, JSON on request) and the one line each stream
//! leaves behind when it ends, however it ends (also where the stream's metrics are recorded and
//! its chat span ends); traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (`traces`, `chat`,
//! `export`).

pub mod chat;
mod export;
pub mod traces;

use std::time::{Duration, Instant};

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` refines the default `info` level.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// What is known about one stream; logged and counted once, when it is dropped.
pub struct StreamReport {
    /// The request's span (carrying its request id): the body outlives the handler, so the line
    /// logged at its end enters the span again.
    span: tracing::Span,
    stream_id: String,
    client: String,
    chars_in: usize,
    started: Instant,
    first_output: Option<Duration>,
    tokens_out: u64,
    outcome: &'static str,
    resumed: u32,
    /// With a fallback configured: which upstream answered, and its model.
    upstream: Option<&'static str>,
    model: Option<String>,
    /// What the answer cost: prompt and completion tokens, and their source (`usage`, `estimate`).
    cost: Option<(u64, u64, &'static str)>,
    /// `token_budget` when the budget lowered the answer's `max_tokens` and the answer ran into it.
    limited_by: Option<&'static str>,
    /// With traces on: the answer's chat span, ended with the report.
    chat: Option<chat::Chat>,
}

impl StreamReport {
    /// Made in the handler, inside the request's span, which it keeps.
    pub fn new(stream_id: String, client: String, chars_in: usize) -> Self {
        Self {
            span: tracing::Span::current(),
            stream_id,
            client,
            chars_in,
            started: Instant::now(),
            first_output: None,
            tokens_out: 0,
            // Whatever does not finish on its own was ended by the client going away.
            outcome: "client_gone",
            resumed: 0,
            upstream: None,
            model: None,
            cost: None,
            limited_by: None,
            chat: None,
        }
    }

    /// The answer's chat span (traces on), ended when the report is.
    pub fn traced(mut self, chat: Option<chat::Chat>) -> Self {
        self.chat = chat;
        self
    }

    /// The answer's chat span, when traced.
    pub fn chat(&self) -> Option<&chat::Chat> {
        self.chat.as_ref()
    }

    /// The chat span's `traceparent`, when traced.
    pub fn traceparent(&self) -> Option<String> {
        self.chat.as_ref().and_then(chat::Chat::traceparent)
    }

    pub fn first_output(&mut self) {
        if self.first_output.is_none() {
            let after = self.started.elapsed();
            self.first_output = Some(after);
            if let Some(chat) = &self.chat {
                chat.first_token(after);
            }
        }
    }

    /// The upstream's finish: its reason, usage and model, for the chat span.
    pub fn finished(&mut self, finish: &crate::llm::Finish) {
        if let Some(chat) = &mut self.chat {
            chat.finished(finish);
        }
    }

    /// The answer's text as the person saw it, for a chat span that captures content.
    pub fn answer(&self, text: &str) {
        if let Some(chat) = &self.chat {
            chat.output(text);
        }
    }

    pub fn token(&mut self) {
        self.first_output();
        self.tokens_out += 1;
    }

    pub fn finish(&mut self, outcome: &'static str) {
        self.outcome = outcome;
    }

    /// The upstream (`primary`, `fallback`) and model that answered, when a fallback is configured.
    pub fn answered_by(&mut self, upstream: &'static str, model: Option<String>) {
        self.upstream = Some(upstream);
        self.model = model;
    }

    /// What the answer cost, in tokens, and the source of the figures; counted at once.
    pub fn spent(&mut self, prompt: u64, completion: u64, source: &'static str) {
        crate::metrics::tokens_spent(prompt, completion, source);
        self.cost = Some((prompt, completion, source));
    }

    pub fn limited_by(&mut self, limit: &'static str) {
        self.limited_by = Some(limit);
    }

    /// How many times a reconnecting client picked the answer up again.
    pub fn resumed(&mut self, times: u32) {
        self.resumed = times;
    }
}

impl Drop for StreamReport {
    fn drop(&mut self) {
        let duration = self.started.elapsed();
        crate::metrics::stream_ended(self.outcome, self.first_output, duration, self.tokens_out);
        let trace_id = self.chat.as_ref().map(|chat| {
            chat.end(self.outcome);
            chat.trace_id()
        });
        let _entered = self.span.enter();
        tracing::info!(
            stream_id = %self.stream_id,
            client = %self.client,
            chars_in = self.chars_in,
            tokens_out = self.tokens_out,
            first_token_ms = self.first_output.map(|d| d.as_secs_f64() * 1e3),
            duration_ms = duration.as_secs_f64() * 1e3,
            outcome = self.outcome,
            resumed = self.resumed,
            upstream = self.upstream,
            model = self.model.as_deref(),
            prompt_tokens = self.cost.map(|c| c.0),
            completion_tokens = self.cost.map(|c| c.1),
            tokens_source = self.cost.map(|c| c.2),
            limited_by = self.limited_by,
            trace_id = trace_id.as_deref(),
            "stream ended"
        );
    }
}
