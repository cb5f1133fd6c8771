//! Token budgets (TOKEN_BUDGET, GLOBAL_TOKEN_BUDGET): what an answer costs by each provider's
//! usage or the documented estimate, the reservation at admission and its settling however the
//! answer ends, the lowered `max_tokens`, the refusals and their waits, the headers, and the same
//! figures across instances on a real Redis.

mod ends;
mod fit;
mod limits;
mod shared;
mod usage;

use std::time::Duration;

use llm_stream::config::Config;

use crate::{
    helpers::{DEADLINE, TestApp},
    mock_upstream::{Reply, openai},
};

/// The system prompt every budget test sends: 9 characters.
pub const SYSTEM: &str = "Be brief.";

/// The estimate of question `q`'s prompt: the system prompt and the question, characters / 4
/// rounded up.
pub fn prompt_estimate(q: &str) -> u64 {
    ((SYSTEM.chars().count() + q.chars().count()) as u64).div_ceil(4)
}

/// A budget of `tokens` a day for each client, answers of at most `max_tokens`.
pub fn budget(tokens: u64, max_tokens: u32) -> impl Fn(&mut Config) {
    move |c| {
        c.token_budget = tokens;
        c.token_budget_window = Duration::from_secs(86_400);
        c.llm_max_tokens = max_tokens;
        c.llm_system_prompt = SYSTEM.into();
    }
}

/// `GET /api/limits` as `client` (an X-Real-IP the loopback proxy passes on).
pub async fn limits(address: &str, client: &str) -> serde_json::Value {
    crate::redis::harness::limits_of(address, Some(client)).await
}

/// The tokens `client` has left, as `/api/limits` says.
pub async fn tokens_left(address: &str, client: &str) -> u64 {
    let limits = limits(address, client).await;
    limits["tokens"]["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("a token budget in {limits}"))
}

/// Asks `q` as `client`, reading the whole response.
pub async fn ask(address: &str, client: &str, q: &str) -> crate::helpers::Answer {
    crate::helpers::SseReader::get(
        crate::redis::harness::stream_url(address, q),
        &[("x-real-ip", client)],
    )
    .await
    .read_to_end()
    .await
}

/// The finish event (the one before `[DONE]`).
pub fn finish(answer: &crate::helpers::Answer) -> serde_json::Value {
    crate::providers::finish(answer)
}

/// The `max_tokens` of the upstream request number `n`.
pub fn max_tokens_sent(app: &TestApp, n: usize) -> u64 {
    app.mock.requests()[n].json()["max_tokens"]
        .as_u64()
        .expect("max_tokens in the request")
}

/// Waits until `client` has `want` tokens left.
pub async fn wait_tokens_left(address: &str, client: &str, want: u64) {
    let mut last = 0;
    let until = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < until {
        last = tokens_left(address, client).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{client} has {last} tokens left, not {want}");
}

/// An answer "ok" that reports 3 prompt and `completion` tokens of usage, ending with `reason`.
pub fn costing(completion: u64, reason: &str) -> Reply {
    costing_with("ok", completion, reason)
}

/// The same, of `text`.
pub fn costing_with(text: &str, completion: u64, reason: &str) -> Reply {
    Reply::sse(vec![
        openai::token(text),
        openai::finish(reason),
        openai::usage(3, completion),
        openai::done(),
    ])
}
