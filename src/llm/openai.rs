//! OpenAI-compatible Chat Completions: the request we send and the chunks we read back.
//! The wire format stays in this file; everything else sees `LlmEvent`s.

use async_stream::stream;
use futures_util::StreamExt;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{EventStream, Finish, LlmEvent, Usage, upstream::Upstream};
use crate::{config::Config, error::StreamError};

pub struct OpenAi {
    upstream: Upstream,
    url: Url,
    api_key: SecretString,
    model: String,
    max_tokens: u32,
    temperature: f32,
    system_prompt: String,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
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
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<ChunkUsage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
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

impl OpenAi {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        Ok(Self {
            upstream: Upstream::new(config)?,
            url: config
                .base_url()
                .join("chat/completions")
                .unwrap_or_else(|_| config.base_url()),
            api_key: config
                .llm_api_key
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
            model: config.llm_model.clone(),
            max_tokens: config.llm_max_tokens,
            temperature: config.llm_temperature,
            system_prompt: config.llm_system_prompt.clone(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn stream(&self, question: &str, request_id: &str) -> EventStream {
        let request = self
            .upstream
            .client()
            .post(self.url.clone())
            .bearer_auth(self.api_key.expose_secret())
            .header("X-Request-Id", request_id)
            .json(&ChatRequest {
                model: &self.model,
                messages: [
                    Message {
                        role: "system",
                        content: &self.system_prompt,
                    },
                    Message {
                        role: "user",
                        content: question,
                    },
                ],
                max_tokens: self.max_tokens,
                temperature: self.temperature,
                stream: true,
                stream_options: StreamOptions {
                    include_usage: true,
                },
            });
        let upstream = self.upstream.clone();
        Box::pin(stream! {
            let response = match upstream.open(request).await {
                Ok(response) => response,
                Err(error) => { yield Err(error); return; }
            };
            let mut events = std::pin::pin!(upstream.events(response));
            let mut finish_reason = None;
            let mut usage = None;
            let mut malformed = 0_u32;
            while let Some(data) = events.next().await {
                let data = match data {
                    Ok(data) => data,
                    Err(error) => { yield Err(error); return; }
                };
                if data.trim() == "[DONE]" {
                    yield Ok(finish(finish_reason.take(), usage.take()));
                    return;
                }
                let chunk: Chunk = match serde_json::from_str(&data) {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        malformed += 1;
                        tracing::debug!(%error, malformed, "skipped a malformed upstream chunk");
                        continue;
                    }
                };
                if let Some(error) = chunk.error {
                    tracing::warn!(%error, "upstream reported an error in its stream");
                    yield Err(StreamError::UpstreamError);
                    return;
                }
                if let Some(u) = chunk.usage {
                    usage = Some(Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens });
                }
                for choice in chunk.choices.into_iter().take(1) {
                    if let Some(text) = choice.delta.reasoning_content.filter(|t| !t.is_empty()) {
                        yield Ok(LlmEvent::Reasoning(text));
                    }
                    if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                        yield Ok(LlmEvent::Token(text));
                    }
                    if choice.finish_reason.is_some() {
                        finish_reason = choice.finish_reason;
                    }
                }
            }
            // No [DONE]: the answer is complete only if the upstream said why it finished.
            if finish_reason.is_some() {
                yield Ok(finish(finish_reason, usage));
            }
        })
    }
}

fn finish(reason: Option<String>, usage: Option<Usage>) -> LlmEvent {
    LlmEvent::Finish(Finish {
        finish_reason: reason.unwrap_or_else(|| "stop".to_owned()),
        usage,
    })
}
