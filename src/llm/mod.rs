//! The model side: one event type for every provider, the `Model` enum that dispatches to each
//! provider's wire format, and the `Provider` the routes ask: the primary model, with a fallback
//! behind it when one is configured. Nothing outside a provider's file knows its JSON.

pub mod anthropic;
mod breaker;
mod call;
pub mod demo;
mod fallback;
mod http2;
pub mod openai;
pub mod upstream;
mod utf8_guard;

use std::{pin::Pin, time::Duration};

use futures_util::Stream;
use reqwest::Url;
use secrecy::SecretString;
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    config::{Config, ProviderKind},
    error::StreamError,
};

pub use call::Attempts;

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
    /// With a fallback configured: the model that answered…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// … and which upstream it is (`primary`, `fallback`). Without a fallback, neither is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'static str>,
    /// `token_budget` when the answer's `max_tokens` was lowered to fit the budget and it ran out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<&'static str>,
    /// The client's token budget once this answer is settled, when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<FinishBudget>,
}

/// What the finish event tells a client of its token budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FinishBudget {
    pub tokens_remaining: u64,
}

impl Finish {
    /// A provider's finish, before anything names who answered.
    pub fn new(finish_reason: String, usage: Option<Usage>) -> Self {
        Self {
            finish_reason,
            usage,
            model: None,
            upstream: None,
            limited_by: None,
            budget: None,
        }
    }
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

/// The characters of the prompt a question sends: the system prompt, the earlier turns sent and
/// the question, for the token estimate (characters / 4) that admission reserves by.
pub fn prompt_chars(system_prompt: &str, history: &[Turn], question: &str) -> usize {
    let turns: usize = history
        .iter()
        .map(|turn| turn.question.chars().count() + turn.answer.chars().count())
        .sum();
    system_prompt.chars().count() + turns + question.chars().count()
}

/// A provider's answer as it arrives. Dropping it cancels the upstream call.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, StreamError>> + Send>>;

/// Which of the two upstreams a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// LLM_PROVIDER, LLM_BASE_URL, LLM_API_KEY, LLM_MODEL.
    Primary,
    /// LLM_FALLBACK_PROVIDER, LLM_FALLBACK_BASE_URL, LLM_FALLBACK_API_KEY, LLM_FALLBACK_MODEL.
    Fallback,
}

impl Role {
    /// Its name in the finish event, the logs and the metrics' `upstream` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Fallback => "fallback",
        }
    }
}

/// Where one upstream is and which model it runs, from its four settings.
pub struct Target {
    pub role: Role,
    pub kind: ProviderKind,
    pub base_url: Url,
    pub api_key: Option<SecretString>,
    pub model: String,
}

impl Target {
    pub fn primary(config: &Config) -> Self {
        Self {
            role: Role::Primary,
            kind: config.provider(),
            base_url: config.base_url(),
            api_key: config.llm_api_key.clone(),
            model: config.model(),
        }
    }

    /// The fallback, when one is configured.
    pub fn fallback(config: &Config) -> Option<Self> {
        Some(Self {
            role: Role::Fallback,
            kind: config.fallback_provider()?,
            base_url: config.fallback_base_url(),
            api_key: config.llm_fallback_api_key.clone(),
            model: config.fallback_model(),
        })
    }
}

/// One model, spoken to in its provider's wire format.
pub enum Model {
    Demo(demo::Demo),
    OpenAi(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
}

impl Model {
    pub fn new(config: &Config, target: &Target) -> Result<Self, reqwest::Error> {
        Ok(match target.kind {
            ProviderKind::Demo => Self::Demo(demo::Demo::new(config)),
            ProviderKind::OpenAi => Self::OpenAi(openai::OpenAi::new(config, target)?),
            ProviderKind::Anthropic => Self::Anthropic(anthropic::Anthropic::new(config, target)?),
        })
    }

    /// Starts answering `question` after the conversation's earlier turns, trying as hard as
    /// `attempts` says; `request_id` goes upstream as `X-Request-Id`; `max_tokens` lowers
    /// LLM_MAX_TOKENS for this answer (a low token budget). Nothing is sent upstream until the
    /// stream is first polled.
    pub fn stream(
        &self,
        question: &str,
        history: &[Turn],
        request_id: &str,
        attempts: Attempts,
        max_tokens: Option<u32>,
    ) -> EventStream {
        match self {
            Self::Demo(demo) => demo.stream(question, history.len()),
            Self::OpenAi(openai) => {
                openai.stream(question, history, request_id, attempts, max_tokens)
            }
            Self::Anthropic(anthropic) => {
                anthropic.stream(question, history, request_id, attempts, max_tokens)
            }
        }
    }

    /// The model's name, as shown to people.
    pub fn name(&self) -> &str {
        match self {
            Self::Demo(_) => "demo",
            Self::OpenAi(openai) => openai.model(),
            Self::Anthropic(anthropic) => anthropic.model(),
        }
    }
}

/// The configured upstreams: the primary model, and the fallback (with a breaker for each) when
/// LLM_FALLBACK_* names one. Without a fallback, a question goes to the primary exactly as it
/// always did: no breaker, nothing in between.
pub struct Provider {
    primary: Model,
    fallback: Option<fallback::Fallback>,
    retries: u32,
    budget: Duration,
}

impl Provider {
    pub fn from_config(config: &Config) -> Result<Self, reqwest::Error> {
        let primary = Target::primary(config);
        let fallback = match Target::fallback(config) {
            Some(target) => Some(fallback::Fallback::new(
                config,
                &primary,
                &target,
                Model::new(config, &target)?,
            )),
            None => None,
        };
        Ok(Self {
            primary: Model::new(config, &primary)?,
            fallback,
            retries: config.llm_retries,
            budget: config.stream_timeout,
        })
    }

    /// Starts answering `question` after the conversation's earlier turns; `request_id` goes
    /// upstream as `X-Request-Id`; `max_tokens` lowers LLM_MAX_TOKENS for this answer. Nothing is
    /// sent upstream until the stream is first polled.
    pub fn stream(
        &self,
        question: &str,
        history: &[Turn],
        request_id: &str,
        max_tokens: Option<u32>,
    ) -> EventStream {
        let attempts = Attempts {
            retries: self.retries,
            // Taken now, a moment before the handler starts the same budget's clock: never later
            // than it, and one deadline for every upstream the question tries.
            deadline: Instant::now() + self.budget,
        };
        match &self.fallback {
            None => self
                .primary
                .stream(question, history, request_id, attempts, max_tokens),
            Some(fallback) => fallback.stream(
                &self.primary,
                (question, history, request_id),
                attempts,
                max_tokens,
            ),
        }
    }

    /// The primary model's name, as shown to people.
    pub fn model(&self) -> &str {
        self.primary.name()
    }
}
