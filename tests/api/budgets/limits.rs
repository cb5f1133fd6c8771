//! `GET /api/limits?q=…[&conversation=…]`: what the token budgets would decide for a question now,
//! so that the page can explain a refused EventSource. Its wait is the `Retry-After` a real ask
//! gets; asking it spends nothing; a follow-up's history counts; the service's budget shows only
//! its refusal.

use serde_json::Value;

use super::{ask, budget, costing, costing_with, wait_tokens_left};
use crate::{
    helpers::{Answer, SseReader, get_with, spawn_app_with},
    mock_upstream::{End, Reply, openai},
};

const ME: &str = "198.51.100.60";

/// `url` with the query pairs `pairs`.
fn with_pairs(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(url).expect("a URL");
    for (name, value) in pairs {
        url.query_pairs_mut().append_pair(name, value);
    }
    url.to_string()
}

/// `/api/limits` as `client`, with the query pairs `pairs`.
async fn limits_for(address: &str, client: &str, pairs: &[(&str, &str)]) -> Value {
    let url = with_pairs(&format!("{address}/api/limits"), pairs);
    let response = get_with(url, &[("x-real-ip", client)]).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("limits JSON")
}

/// Asks `q` as `client`, in `conversation` when given, reading the whole response.
async fn ask_in(address: &str, client: &str, q: &str, conversation: Option<&str>) -> Answer {
    let mut pairs = vec![("q", q)];
    pairs.extend(conversation.map(|id| ("conversation", id)));
    let url = with_pairs(&format!("{address}/api/stream"), &pairs);
    SseReader::get(url, &[("x-real-ip", client)])
        .await
        .read_to_end()
        .await
}

/// What `/api/limits` says of `q` (in `conversation`) and the refused ask of it between two such
/// looks, taken when both looks say the same (the wait only shrinks, so the ask's lies between
/// them; a second boundary passed in between is looked at again).
async fn looked_and_asked(
    address: &str,
    client: &str,
    q: &str,
    conversation: Option<&str>,
) -> (Value, Answer) {
    let mut pairs = vec![("q", q)];
    pairs.extend(conversation.map(|id| ("conversation", id)));
    for _ in 0..5 {
        let before = limits_for(address, client, &pairs).await["question"].clone();
        let asked = ask_in(address, client, q, conversation).await;
        let after = limits_for(address, client, &pairs).await["question"].clone();
        if before == after {
            return (before, asked);
        }
    }
    panic!("the wait kept changing between looks");
}

/// Asserts `asked` is the refusal `said` describes: its code, and a `Retry-After` of its wait.
fn assert_said(said: &Value, asked: &Answer, status: u16, code: &str) {
    assert_eq!(asked.status, status, "{}", asked.body);
    assert_eq!(said["error"], code, "{said}");
    let retry_after: u64 = asked
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert_eq!(said["retry_after"], retry_after, "{said}");
    let body: Value = serde_json::from_str(&asked.body).expect("a refusal body");
    assert_eq!(said["message"], body["message"]);
}

crate::both_stores! {
    async fn api_limits_says_a_question_the_budget_refuses_with_the_retry_after_a_refused_ask_gets() {
        let app = spawn_app_with(|c| {
            budget(200, 150)(c);
            c.rate_limit_per_minute = 10;
            c.rate_limit_burst = Some(10);
        })
        .await;
        app.mock.always(costing(194, "stop"));
        assert_eq!(ask(&app.address, ME, "hi").await.status, 200);
        wait_tokens_left(&app.address, ME, 3).await;
        let rate_before = super::limits(&app.address, ME).await["remaining"].clone();

        let (said, asked) = looked_and_asked(&app.address, ME, "hi", None).await;

        assert_said(&said, &asked, 429, "token_budget_exhausted");
        // 64 tokens of a 200-a-day budget come back in 64 × 432 s.
        let wait = said["retry_after"].as_u64().unwrap();
        assert!((27_600..=27_648).contains(&wait), "{wait}");
        let after = super::limits(&app.address, ME).await;
        assert_eq!(after["tokens"]["remaining"], 3, "nothing spent");
        assert_eq!(after["remaining"], rate_before, "nothing of the rate spent");
        assert_eq!(app.mock.request_count(), 1);
    }

    async fn api_limits_says_null_for_a_question_the_budgets_admit_and_asking_it_spends_nothing() {
        let app = spawn_app_with(|c| {
            budget(1000, 100)(c);
            c.rate_limit_per_minute = 10;
            c.rate_limit_burst = Some(10);
        })
        .await;
        app.mock.always(costing(10, "stop"));

        for _ in 0..5 {
            let limits = limits_for(&app.address, ME, &[("q", "hi")]).await;
            assert_eq!(limits.get("question"), Some(&Value::Null), "{limits}");
            assert_eq!(limits["tokens"]["remaining"], 1000, "{limits}");
            assert_eq!(limits["remaining"], 10, "{limits}");
        }

        let answer = ask(&app.address, ME, "hi").await;
        assert_eq!(answer.status, 200);
        assert_eq!(super::max_tokens_sent(&app, 0), 100, "the whole budget was there");
        assert_eq!(answer.header("ratelimit-remaining").as_deref(), Some("9"));
    }

    async fn api_limits_leaves_out_the_question_when_there_is_none_or_the_stream_would_refuse_its_form() {
        let app = spawn_app_with(|c| {
            budget(1000, 100)(c);
            c.max_query_chars = 10;
        })
        .await;
        let long = "a".repeat(11);
        for pairs in [
            &[][..],
            &[("q", "")][..],
            &[("q", "   ")][..],
            &[("q", long.as_str())][..],
            &[("q", "bell\u{7}")][..],
            &[("conversation", "0123")][..],
        ] {
            let limits = limits_for(&app.address, ME, pairs).await;
            assert!(limits.get("question").is_none(), "{pairs:?}: {limits}");
            assert_eq!(limits["tokens"]["remaining"], 1000);
        }
        // Not UTF-8, and a malformed query: still the limits, without a question.
        for query in ["q=%FF%FE", "q=%zz&conversation", "q=hi&q=again"] {
            let response = get_with(
                format!("{}/api/limits?{query}", app.address),
                &[("x-real-ip", ME)],
            )
            .await;
            assert_eq!(response.status(), 200, "{query}");
            let limits: Value = response.json().await.unwrap();
            assert_eq!(limits["tokens"]["limit"], 1000, "{query}: {limits}");
            if query.starts_with("q=%FF") {
                assert!(limits.get("question").is_none(), "{query}: {limits}");
            }
        }
    }

    async fn api_limits_counts_a_follow_ups_history_in_the_question_as_the_stream_does() {
        let app = spawn_app_with(budget(300, 100)).await;
        // 1 000 characters of answer: about 250 tokens of history in a follow-up's prompt.
        app.mock.always(costing_with(&"a".repeat(1000), 10, "stop"));
        let first = ask(&app.address, ME, "hi").await;
        assert_eq!(first.status, 200);
        let conversation = first.opening.as_ref().expect("an opening event").json()["conversation"]
            .as_str()
            .expect("a conversation id")
            .to_owned();
        wait_tokens_left(&app.address, ME, 287).await;

        let alone = limits_for(&app.address, ME, &[("q", "hi")]).await;
        assert_eq!(alone.get("question"), Some(&Value::Null), "a new question fits: {alone}");
        let (said, asked) = looked_and_asked(&app.address, ME, "hi", Some(&conversation)).await;
        assert_said(&said, &asked, 429, "token_budget_exhausted");
        // Another conversation id (unknown here) has no history: the question fits.
        let unknown = limits_for(
            &app.address,
            ME,
            &[("q", "hi"), ("conversation", &llm_stream::id::new())],
        )
        .await;
        assert_eq!(unknown.get("question"), Some(&Value::Null), "{unknown}");
        assert_eq!(app.mock.request_count(), 1);
    }

    async fn api_limits_says_the_service_budget_refuses_a_question_and_shows_none_of_its_figures() {
        let app = spawn_app_with(|c| {
            c.llm_max_tokens = 100;
            c.llm_system_prompt = super::SYSTEM.into();
            // Two worst-case answers of 3 + 100.
            c.global_token_budget = 206;
        })
        .await;
        app.mock
            .always(Reply::sse(vec![openai::token("held")]).then(End::Hang));
        let url = app.stream_url("hi");
        let mut one = SseReader::get(url.clone(), &[("x-real-ip", "198.51.100.61")]).await;
        let mut two = SseReader::get(url, &[("x-real-ip", "198.51.100.62")]).await;
        one.next_data().await.expect("a token");
        two.next_data().await.expect("a token");

        let other = "198.51.100.63";
        let (said, asked) = looked_and_asked(&app.address, other, "hi", None).await;

        assert_said(&said, &asked, 503, "service_budget_exhausted");
        let mut fields: Vec<&str> = said
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["error", "message", "retry_after"], "{said}");
        let limits = super::limits(&app.address, other).await;
        assert!(limits.get("tokens").is_none(), "{limits}");
        let shown = limits.as_object().expect("an object");
        assert!(shown.values().all(|v| v != 206), "{limits}");
        assert_eq!(app.mock.request_count(), 2);
    }
}
