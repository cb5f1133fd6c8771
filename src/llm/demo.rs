//! The offline demo model: a deterministic answer, one word at a time, with no network.

use std::time::Duration;

use async_stream::stream;

use super::{EventStream, Finish, LlmEvent, Usage};
use crate::config::Config;

pub struct Demo {
    token_interval: Duration,
}

impl Demo {
    pub fn new(config: &Config) -> Self {
        Self {
            token_interval: config.demo_token_interval,
        }
    }

    /// `earlier` turns of the conversation come before the question.
    pub fn stream(&self, question: &str, earlier: usize) -> EventStream {
        let answer = match earlier {
            0 => answer(question),
            1 => format!(
                "I remember 1 earlier turn of this conversation. {}",
                answer(question)
            ),
            n => format!(
                "I remember {n} earlier turns of this conversation. {}",
                answer(question)
            ),
        };
        let interval = self.token_interval;
        let prompt_tokens = question.split_whitespace().count() as u64;
        Box::pin(stream! {
            let mut completion_tokens = 0;
            for word in answer.split_inclusive([' ', '\n']) {
                tokio::time::sleep(interval).await;
                completion_tokens += 1;
                yield Ok(LlmEvent::Token(word.to_owned()));
            }
            yield Ok(LlmEvent::Finish(Finish::new(
                "stop".to_owned(),
                Some(Usage { prompt_tokens, completion_tokens }),
            )));
        })
    }
}

/// The demo's answer: it quotes the question, says what it is, and how to connect a real model.
pub fn answer(question: &str) -> String {
    format!(
        "This is the llm-stream demo model, not a real language model. You asked: \u{201c}{question}\u{201d}\n\n\
         Each word you see arrived as its own Server-Sent Event, the moment it was produced, just as a real model's tokens would. \
         Streaming works with any text: caf\u{e9}, na\u{ef}ve, \u{4f60}\u{597d}\u{4e16}\u{754c}, \u{1f680}.\n\n\
         To connect a real model, restart the server with three settings:\n\
         LLM_BASE_URL=https://api.openai.com/v1\n\
         LLM_API_KEY=<your key>\n\
         LLM_MODEL=gpt-4o-mini\n\n\
         Any OpenAI-compatible server works (vLLM, llama.cpp, Ollama, LiteLLM, OpenRouter, Groq, DeepSeek), and so does Anthropic with LLM_PROVIDER=anthropic."
    )
}
