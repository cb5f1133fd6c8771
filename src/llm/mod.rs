//! The model side: one event type for every provider, and the `Provider` enum that dispatches to
//! each provider's wire format. Nothing outside a provider's file knows its JSON.

pub mod anthropic;
pub mod demo;
pub mod openai;
pub mod upstream;
mod utf8_guard;

use std::pin::Pin;

use futures_util::Stream;
use serde::Serialize;

use crate::{
    config::{Config, ProviderKind},
    error::StreamError,
};

/// What a provider yields, in order: text and reasoning deltas, then one `Finish`.
/// A stream that ends without `Finish` was cut short.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    Token(String),
    Reasoning(String),
    Finish(Finish),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finish {
    pub finish_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One earlier exchange of a conversation: the question, and the answer as the person saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Turn {
    pub question: String,
    pub answer: String,
}

/// The newest `turns` that fit in `max_chars` together with `question`: the oldest are left out
/// first, never the question.
pub fn window<'a>(turns: &'a [Turn], question: &str, max_chars: usize) -> &'a [Turn] {
    let mut left = max_chars.saturating_sub(question.chars().count());
    let mut start = turns.len();
    for turn in turns.iter().rev() {
        let chars = turn.question.chars().count() + turn.answer.chars().count();
        if chars > left {
            break;
        }
        left -= chars;
        start -= 1;
    }
    &turns[start..]
}

/// The chat as the model reads it: each earlier turn as a user and an assistant message, then the
/// question. Both HTTP providers send these in their own message shape.
fn chat<'a>(
    history: &'a [Turn],
    question: &'a str,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    history
        .iter()
        .flat_map(|turn| {
            [
                ("user", turn.question.as_str()),
                ("assistant", turn.answer.as_str()),
            ]
        })
        .chain(std::iter::once(("user", question)))
}

/// A provider's answer as it arrives. Dropping it cancels the upstream call.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, StreamError>> + Send>>;

/// The configured upstream.
pub enum Provider {
    Demo(demo::Demo),
    OpenAi(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
}

impl Provider {
    pub fn from_config(config: &Config) -> Result<Self, reqwest::Error> {
        Ok(match config.provider() {
            ProviderKind::Demo => Self::Demo(demo::Demo::new(config)),
            ProviderKind::OpenAi => Self::OpenAi(openai::OpenAi::new(config)?),
            ProviderKind::Anthropic => Self::Anthropic(anthropic::Anthropic::new(config)?),
        })
    }

    /// Starts answering `question` after the conversation's earlier turns; `request_id` goes
    /// upstream as `X-Request-Id`. Nothing is sent upstream until the stream is first polled.
    pub fn stream(&self, question: &str, history: &[Turn], request_id: &str) -> EventStream {
        match self {
            Self::Demo(demo) => demo.stream(question, history.len()),
            Self::OpenAi(openai) => openai.stream(question, history, request_id),
            Self::Anthropic(anthropic) => anthropic.stream(question, history, request_id),
        }
    }

    /// The model's name, as shown to people.
    pub fn model(&self) -> &str {
        match self {
            Self::Demo(_) => "demo",
            Self::OpenAi(openai) => openai.model(),
            Self::Anthropic(anthropic) => anthropic.model(),
        }
    }
}
