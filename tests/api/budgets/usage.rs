//! What an answer costs: the prompt and completion tokens each provider reports (OpenAI-compatible
//! `usage`, Groq's `x_groq.usage`, Anthropic's `message_start` and `message_delta`), else the
//! documented estimate (characters / 4, rounded up).

use std::time::Duration;

use llm_stream::config::ProviderKind;

use super::{SYSTEM, ask, budget, finish, prompt_estimate, tokens_left};
use crate::{
    helpers::spawn_app_with,
    mock_upstream::{Reply, anthropic, openai},
};

const ME: &str = "198.51.100.20";

crate::both_stores! {
    async fn the_budget_moves_by_exactly_the_usage_the_upstream_reports_or_the_estimate_without_it() {
        let app = spawn_app_with(budget(10_000, 100)).await;
        // OpenAI-compatible: usage in its own last chunk.
        app.mock.then_reply(Reply::sse(vec![
            openai::token("Hello"),
            openai::token(" there"),
            openai::finish("stop"),
            openai::usage(40, 7),
            openai::done(),
        ]));
        // Groq: usage under x_groq, in the chunk that finishes.
        app.mock.then_reply(Reply::sse(vec![
            openai::token("Hi"),
            openai::chunk(&serde_json::json!({
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "x_groq": {"usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}},
            }).to_string()),
            openai::done(),
        ]));
        // A server that reports no usage: 8 characters streamed are 2 tokens.
        app.mock.then_reply(Reply::sse(vec![
            openai::token("abcdefgh"),
            openai::finish("stop"),
            openai::done(),
        ]));

        let first = ask(&app.address, ME, "hi").await;
        assert_eq!(finish(&first)["budget"]["tokens_remaining"], 10_000 - 47);
        assert_eq!(tokens_left(&app.address, ME).await, 10_000 - 47);

        let groq = ask(&app.address, ME, "hi").await;
        assert_eq!(finish(&groq)["budget"]["tokens_remaining"], 10_000 - 47 - 35);

        let estimated = ask(&app.address, ME, "hi").await;
        let cost = prompt_estimate("hi") + 2;
        assert_eq!(
            finish(&estimated)["budget"]["tokens_remaining"],
            10_000 - 47 - 35 - cost
        );
        assert_eq!(tokens_left(&app.address, ME).await, 10_000 - 47 - 35 - cost);
        assert_eq!(SYSTEM.len() + 2, 11, "3 tokens of prompt: 11 characters / 4, rounded up");

        let metrics = crate::metrics::scrape(&app).await;
        for series in [
            r#"llm_stream_tokens_total{kind="prompt",source="usage"}"#,
            r#"llm_stream_tokens_total{kind="completion",source="estimate"}"#,
        ] {
            assert!(metrics.contains(series), "{series} in {metrics}");
        }
    }

    async fn an_anthropic_answer_costs_its_message_start_input_and_message_delta_output() {
        let app = spawn_app_with(|c| {
            budget(10_000, 100)(c);
            c.llm_provider = Some(ProviderKind::Anthropic);
        })
        .await;
        // message_start reports 12 input tokens; message_delta 2 output tokens.
        app.mock.always(Reply::sse(anthropic::answer(&["Hel", "lo"], "end_turn")));

        let answer = ask(&app.address, ME, "hi").await;

        assert_eq!(finish(&answer)["budget"]["tokens_remaining"], 10_000 - 14);
        assert_eq!(tokens_left(&app.address, ME).await, 10_000 - 14);
    }

    async fn without_a_budget_nothing_is_shown_or_counted_against_the_client() {
        let app = spawn_app_with(|c| c.llm_system_prompt = SYSTEM.into()).await;
        app.mock.always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

        let answer = ask(&app.address, ME, "hi").await;

        assert!(finish(&answer).get("budget").is_none(), "{}", answer.body);
        assert!(answer.header("ratelimit").is_none_or(|h| !h.contains("tokens")));
        let limits = super::limits(&app.address, ME).await;
        assert!(limits.get("tokens").is_none(), "{limits}");
    }
}
