//! Anthropic's Messages API. (Filled in by the providers issue; until then it refuses clearly.)

use reqwest::Url;

use super::{EventStream, upstream::Upstream};
use crate::{config::Config, error::StreamError};

pub struct Anthropic {
    #[expect(dead_code, reason = "used once the Messages API is wired in")]
    upstream: Upstream,
    #[expect(dead_code, reason = "used once the Messages API is wired in")]
    url: Url,
    model: String,
}

impl Anthropic {
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        Ok(Self {
            upstream: Upstream::new(config)?,
            url: config
                .base_url()
                .join("messages")
                .unwrap_or_else(|_| config.base_url()),
            model: config.llm_model.clone(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn stream(&self, _question: &str, _request_id: &str) -> EventStream {
        Box::pin(futures_util::stream::iter([Err(
            StreamError::UpstreamRejected,
        )]))
    }
}
