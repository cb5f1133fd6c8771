//! When the budget runs low: an answer admitted with a lower `max_tokens` that ends `limited_by`
//! the budget; a refusal whose `Retry-After` is exactly long enough; the service's budget shared by
//! every client; the headers; the settings refused at start-up.

use std::time::Duration;

use llm_stream::config::{Config, ConfigExit};

use super::{ask, budget, costing, finish, max_tokens_sent, prompt_estimate, tokens_left};
use crate::{
    helpers::{SseReader, spawn_app_with, test_config},
    mock_upstream::{End, Reply, openai},
};

const ME: &str = "198.51.100.30";

crate::both_stores! {
    async fn a_question_whose_worst_case_does_not_fit_gets_a_lower_max_tokens_and_ends_limited_by_the_budget() {
        let app = spawn_app_with(budget(200, 150)).await;
        assert_eq!(prompt_estimate("hi"), 3);
        app.mock.then_reply(costing(100, "stop"));
        app.mock.then_reply(costing(94, "length"));

        let first = ask(&app.address, ME, "hi").await;
        assert!(finish(&first).get("limited_by").is_none(), "{}", first.body);
        assert_eq!(max_tokens_sent(&app, 0), 150);
        assert_eq!(tokens_left(&app.address, ME).await, 97);

        // 97 left: less than 3 + 150, more than 3 + 64. The answer may have what remains.
        let second = ask(&app.address, ME, "hi").await;
        assert_eq!(second.status, 200);
        assert_eq!(max_tokens_sent(&app, 1), 94);
        let end = finish(&second);
        assert_eq!(end["finish_reason"], "length");
        assert_eq!(end["limited_by"], "token_budget");
        assert_eq!(end["budget"]["tokens_remaining"], 0);

        let refused = ask(&app.address, ME, "hi").await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["error"], "token_budget_exhausted");
        let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert_eq!(body["retry_after"], retry_after);
        // 67 tokens of a 200-a-day budget come back in 67 × 432 s.
        assert!((28_900..=28_944).contains(&retry_after), "{retry_after}");
        assert_eq!(app.mock.request_count(), 2, "nothing reached the upstream");
    }

    async fn a_client_refused_for_its_budget_is_admitted_once_it_waits_the_retry_after() {
        let app = spawn_app_with(|c| {
            budget(200, 100)(c);
            // 200 tokens in 4 s: 50 a second.
            c.token_budget_window = Duration::from_secs(4);
        })
        .await;
        // It costs the whole budget, more than was reserved (3 + 100): charged as reported.
        app.mock.then_reply(costing(197, "stop"));
        app.mock.always(costing(10, "stop"));
        assert_eq!(ask(&app.address, ME, "hi").await.status, 200);

        let refused = ask(&app.address, ME, "hi").await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        // 3 + 64 tokens back at 50 a second: 1.34 s, rounded up.
        assert!((1..=2).contains(&wait), "{wait}");

        tokio::time::sleep(Duration::from_secs(wait)).await;
        let admitted = ask(&app.address, ME, "hi").await;
        assert_eq!(admitted.status, 200, "{}", admitted.body);
        assert_eq!(finish(&admitted)["limited_by"], serde_json::Value::Null);
    }

    async fn the_service_budget_is_shared_by_every_client_and_refused_with_503() {
        let app = spawn_app_with(|c| {
            c.llm_max_tokens = 100;
            c.llm_system_prompt = super::SYSTEM.into();
            // Two worst-case answers of 3 + 100.
            c.global_token_budget = 206;
        })
        .await;
        app.mock.always(
            Reply::sse(vec![openai::token("held")]).then(End::Hang),
        );
        let url = app.stream_url("hi");
        let mut one = SseReader::get(url.clone(), &[("x-real-ip", "198.51.100.31")]).await;
        let mut two = SseReader::get(url.clone(), &[("x-real-ip", "198.51.100.32")]).await;
        one.next_data().await.expect("a token");
        two.next_data().await.expect("a token");

        let third = SseReader::get(url, &[("x-real-ip", "198.51.100.33")])
            .await
            .read_to_end()
            .await;
        assert_eq!(third.status, 503, "{}", third.body);
        assert!(third.body.contains("service_budget_exhausted"), "{}", third.body);
        let wait: u64 = third.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(
            third.header("ratelimit-policy").is_none_or(|p| !p.contains("tokens")),
            "the service's budget is not shown to clients"
        );
        assert_eq!(app.mock.request_count(), 2);
    }

    async fn every_answer_and_api_limits_carry_both_policies_in_the_ratelimit_headers() {
        let app = spawn_app_with(|c| {
            budget(1000, 100)(c);
            c.rate_limit_per_minute = 10;
            c.rate_limit_burst = Some(10);
        })
        .await;
        app.mock.always(costing(10, "stop"));

        let answer = ask(&app.address, ME, "hi").await;
        assert_eq!(
            answer.header("ratelimit-policy").as_deref(),
            Some(r#""requests";q=10;w=60, "tokens";q=1000;w=86400"#)
        );
        // While the answer streams, its worst case (3 + 100) is reserved: 897 left, full again in
        // 103 × 86.4 s.
        assert_eq!(
            answer.header("ratelimit").as_deref(),
            Some(r#""requests";r=9;t=6, "tokens";r=897;t=8900"#)
        );
        assert_eq!(answer.header("ratelimit-remaining").as_deref(), Some("9"));

        let limits = crate::helpers::get_with(
            format!("{}/api/limits", app.address),
            &[("x-real-ip", ME)],
        )
        .await;
        let state = limits.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(state.contains(r#""tokens";r=987;t=1124"#), "{state}");
        let body: serde_json::Value = limits.json().await.unwrap();
        assert_eq!(
            body["tokens"],
            serde_json::json!({"limit": 1000, "remaining": 987, "reset_secs": 1124, "window_secs": 86400})
        );
    }
}

fn refused(args: &[&str]) -> String {
    let mut all = vec!["llm-stream"];
    all.extend_from_slice(args);
    match Config::from_args_only(all) {
        Err(ConfigExit::Invalid(line)) => line,
        Ok(_) => panic!("{args:?} accepted"),
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn bad_budget_settings_stop_start_up_with_one_line_naming_the_setting() {
    for (args, setting) in [
        (&["--token-budget", "10"][..], "TOKEN_BUDGET"),
        (
            &["--token-budget-window-secs", "0"][..],
            "TOKEN_BUDGET_WINDOW_SECS",
        ),
        (&["--global-token-budget", "12"][..], "GLOBAL_TOKEN_BUDGET"),
        (
            &["--global-token-budget-window-secs", "x"][..],
            "GLOBAL_TOKEN_BUDGET_WINDOW_SECS",
        ),
        (
            &["--token-budget-min-answer", "0"][..],
            "TOKEN_BUDGET_MIN_ANSWER",
        ),
    ] {
        let line = refused(args);
        assert!(
            line.to_uppercase().replace('-', "_").contains(setting),
            "{args:?}: {line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
    let defaults = test_config(&[]);
    assert_eq!(
        (defaults.token_budget, defaults.global_token_budget),
        (0, 0),
        "off by default"
    );
}
