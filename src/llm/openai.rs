//! OpenAI-compatible Chat Completions: the request we send and the chunks we read back.
//! The wire format stays in this file; everything else sees `LlmEvent`s.

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{
    EventStream, Finish, LlmEvent, Target, Turn, Usage,
    call::Attempts,
    upstream::{Decoder, Endpoint, Fault},
};
use crate::{config::Config, error::StreamError};

pub struct OpenAi {
    endpoint: Endpoint,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    max_tokens: u32,
    temperature: f32,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct Chunk {
    /// Empty in Azure's leading prompt-filter chunk and in usage-only final chunks.
    choices: Option<Vec<Choice>>,
    usage: Option<ChunkUsage>,
    /// Groq reports usage here, in its last chunk.
    x_groq: Option<XGroq>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    /// Absent in Azure's content-filter chunks.
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
    /// DeepSeek, vLLM and llama.cpp name it `reasoning_content`; OpenRouter and Ollama `reasoning`.
    #[serde(alias = "reasoning")]
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct XGroq {
    usage: Option<ChunkUsage>,
}

/// Reads the chunks of one answer: text and reasoning as they come, the finish reason and usage
/// kept until `[DONE]` (usage comes in its own chunk after the finish reason).
#[derive(Default)]
struct ChunkDecoder {
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Decoder for ChunkDecoder {
    fn feed(&mut self, data: &str) -> Result<Vec<LlmEvent>, Fault> {
        if data.trim() == "[DONE]" {
            return Ok(vec![finish(self.finish_reason.take(), self.usage.take())]);
        }
        let chunk: Chunk = serde_json::from_str(data)?;
        if let Some(error) = chunk.error {
            tracing::warn!(%error, "upstream reported an error in its stream");
            return Err(Fault::Upstream(StreamError::UpstreamError));
        }
        if let Some(u) = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)) {
            self.usage = Some(Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            });
        }
        let mut events = Vec::new();
        if let Some(choice) = chunk.choices.unwrap_or_default().into_iter().next() {
            let delta = choice.delta.unwrap_or_default();
            if let Some(text) = delta.reasoning_content.filter(|t| !t.is_empty()) {
                events.push(LlmEvent::Reasoning(text));
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                events.push(LlmEvent::Token(text));
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(events)
    }

    /// No `[DONE]`: the answer is complete only if the upstream said why it finished.
    fn end(self) -> Option<LlmEvent> {
        self.finish_reason
            .is_some()
            .then(|| finish(self.finish_reason, self.usage))
    }
}

impl OpenAi {
    pub fn new(config: &Config, target: &Target) -> Result<Self, reqwest::Error> {
        Ok(Self {
            endpoint: Endpoint::new(config, target, "chat/completions")?,
        })
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
        let endpoint = &self.endpoint;
        let request = endpoint
            .post(request_id)
            .bearer_auth(endpoint.api_key.expose_secret())
            .json(&ChatRequest {
                model: &endpoint.model,
                messages: std::iter::once(("system", endpoint.system_prompt.as_str()))
                    .chain(super::chat(history, question))
                    .map(|(role, content)| Message { role, content })
                    .collect(),
                max_tokens: max_tokens.unwrap_or(endpoint.max_tokens),
                temperature: endpoint.temperature,
                stream: true,
                stream_options: StreamOptions {
                    include_usage: true,
                },
            });
        endpoint.stream(request, ChunkDecoder::default(), attempts)
    }
}

fn finish(reason: Option<String>, usage: Option<Usage>) -> LlmEvent {
    LlmEvent::Finish(Finish::new(
        reason.unwrap_or_else(|| "stop".to_owned()),
        usage,
    ))
}
