//! Anthropic's Messages API: the request we send and the stream events we read back.
//! The wire format stays in this file; everything else sees `LlmEvent`s.

use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{
    EventStream, Finish, LlmEvent, Target, Turn, Usage,
    call::Attempts,
    upstream::{Decoder, Endpoint, Fault},
};
use crate::{config::Config, error::StreamError};

/// The API version whose stream format this file reads.
const API_VERSION: &str = "2023-06-01";

/// Anthropic accepts temperatures from 0 to 1; LLM_TEMPERATURE goes to 2 for OpenAI's sake.
const MAX_TEMPERATURE: f32 = 1.0;

pub struct Anthropic {
    endpoint: Endpoint,
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    system: &'a str,
    messages: Vec<Message<'a>>,
    stream: bool,
    temperature: f32,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// One stream event; its `type` is repeated in the data, so the SSE event name is not needed.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: MessageStart,
    },
    ContentBlockDelta {
        delta: ContentDelta,
    },
    MessageDelta {
        delta: MessageDelta,
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: ApiError,
    },
    /// `ping`, `content_block_start`, `content_block_stop`, and whatever a later version adds.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageStart {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentDelta {
    TextDelta {
        text: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    /// `signature_delta`, `input_json_delta`, `citations_delta`…
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDelta {
    stop_reason: Option<String>,
}

/// Counts are cumulative: a later report replaces an earlier one.
#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

/// Reads the events of one message: text and thinking as they come, the stop reason and usage
/// kept until `message_stop`. A body that ends before `message_stop` gives no `Finish`.
#[derive(Default)]
struct EventDecoder {
    stop_reason: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl EventDecoder {
    fn count(&mut self, usage: WireUsage) {
        // Cached input is input too, as OpenAI's `prompt_tokens` counts it.
        let cached = [
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
        ];
        if let Some(input) = usage.input_tokens {
            self.prompt_tokens = Some(input + cached.into_iter().flatten().sum::<u64>());
        }
        if usage.output_tokens.is_some() {
            self.completion_tokens = usage.output_tokens;
        }
    }

    fn finish(&mut self) -> Finish {
        let finish_reason = match self.stop_reason.take().as_deref() {
            None | Some("end_turn" | "stop_sequence") => "stop".to_owned(),
            Some("max_tokens") => "length".to_owned(),
            Some(other) => other.to_owned(),
        };
        let usage =
            (self.prompt_tokens.is_some() || self.completion_tokens.is_some()).then(|| Usage {
                prompt_tokens: self.prompt_tokens.unwrap_or(0),
                completion_tokens: self.completion_tokens.unwrap_or(0),
            });
        Finish::new(finish_reason, usage)
    }
}

impl Decoder for EventDecoder {
    fn feed(&mut self, data: &str) -> Result<Vec<LlmEvent>, Fault> {
        let event = match serde_json::from_str(data)? {
            StreamEvent::MessageStart { message } => {
                if let Some(usage) = message.usage {
                    self.count(usage);
                }
                None
            }
            StreamEvent::ContentBlockDelta { delta } => match delta {
                ContentDelta::TextDelta { text } if !text.is_empty() => Some(LlmEvent::Token(text)),
                ContentDelta::ThinkingDelta { thinking } if !thinking.is_empty() => {
                    Some(LlmEvent::Reasoning(thinking))
                }
                _ => None,
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                if let Some(usage) = usage {
                    self.count(usage);
                }
                None
            }
            StreamEvent::MessageStop => Some(LlmEvent::Finish(self.finish())),
            StreamEvent::Error { error } => {
                tracing::warn!(kind = %error.kind, message = %error.message, "upstream reported an error in its stream");
                return Err(Fault::Upstream(match error.kind.as_str() {
                    "overloaded_error" => StreamError::UpstreamUnavailable,
                    _ => StreamError::UpstreamError,
                }));
            }
            StreamEvent::Other => None,
        };
        Ok(event.into_iter().collect())
    }

    /// Without `message_stop` the answer may be cut short: never complete.
    fn end(self) -> Option<LlmEvent> {
        None
    }
}

impl Anthropic {
    pub fn new(config: &Config, target: &Target) -> Result<Self, reqwest::Error> {
        if config.llm_temperature > MAX_TEMPERATURE {
            tracing::warn!(
                temperature = config.llm_temperature,
                upstream = target.role.name(),
                "LLM_TEMPERATURE is above Anthropic's maximum; sending {MAX_TEMPERATURE}"
            );
        }
        let mut endpoint = Endpoint::new(config, target, "messages")?;
        endpoint.temperature = endpoint.temperature.min(MAX_TEMPERATURE);
        Ok(Self { endpoint })
    }

    pub fn model(&self) -> &str {
        &self.endpoint.model
    }

    pub fn stream(
        &self,
        question: &str,
        history: &[Turn],
        request_id: &str,
        attempts: Attempts,
        max_tokens: Option<u32>,
    ) -> EventStream {
        // A key that is no header value is sent empty, so that Anthropic answers 401.
        let endpoint = &self.endpoint;
        let mut api_key = HeaderValue::from_str(endpoint.api_key.expose_secret())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        api_key.set_sensitive(true);
        let request = endpoint
            .post(request_id)
            .header("x-api-key", api_key)
            .header("anthropic-version", API_VERSION)
            .json(&MessagesRequest {
                model: &endpoint.model,
                max_tokens: max_tokens.unwrap_or(endpoint.max_tokens),
                system: &endpoint.system_prompt,
                messages: super::chat(history, question)
                    .map(|(role, content)| Message { role, content })
                    .collect(),
                stream: true,
                temperature: endpoint.temperature,
            });
        endpoint.stream(request, EventDecoder::default(), attempts)
    }
}
