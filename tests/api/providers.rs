//! The providers: Anthropic's Messages stream, reasoning text from both families, retries before
//! the first token, a fallback upstream and its breaker, and transcripts of the OpenAI-compatible
//! servers people run.

mod anthropic;
mod fallback;
mod junk_events;
mod keep_alive;
mod reasoning;
mod retries;
mod transcripts;

use llm_stream::config::{Config, ProviderKind};

use crate::{
    helpers::{Answer, TestApp, spawn_app_with},
    mock_upstream::Step,
};

/// The app on the Anthropic provider, in front of a fresh mock upstream.
pub async fn spawn_anthropic_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|config| {
        config.llm_provider = Some(ProviderKind::Anthropic);
        adjust(config);
    })
    .await
}

/// What the client saw of the answer, in order: `("token" | "reasoning", text)`.
/// Each event is checked to carry one kind only, so reasoning can never pass as text.
pub fn outputs(answer: &Answer) -> Vec<(&'static str, String)> {
    answer
        .events
        .iter()
        .filter_map(|event| {
            let json = event.json();
            let object = json.as_object()?;
            ["token", "reasoning"].into_iter().find_map(|kind| {
                let text = object.get(kind)?.as_str()?.to_owned();
                assert_eq!(object.len(), 1, "one kind per event: {json}");
                Some((kind, text))
            })
        })
        .collect()
}

/// `outputs` for an expectation written as `[("reasoning", "…"), ("token", "…")]`.
pub fn expect(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, t)| (*k, (*t).to_owned())).collect()
}

/// The finish event's JSON (the one before `[DONE]`).
pub fn finish(answer: &Answer) -> serde_json::Value {
    assert!(
        answer.ended_with_done(),
        "the answer completed: {}",
        answer.body
    );
    answer.events[answer.events.len() - 2].json()
}

/// A raw upstream body split into one write per SSE event, as a server flushes them.
pub fn writes(raw: &str) -> Vec<Step> {
    raw.split_inclusive("\n\n")
        .map(|event| Step::Write(event.as_bytes().to_vec()))
        .collect()
}
