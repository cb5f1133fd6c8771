//! Exact across instances: two instances on one real Redis admit exactly what one client's budget
//! fits; an instance killed mid-answer keeps its reservation spent; Redis stopped, each instance
//! keeps the budget on its own, and shares it again once Redis is back; a user's `llm_stream`
//! claim sets its own budget.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use super::{ask, budget, costing, tokens_left, wait_tokens_left};
use crate::{
    auth::{claims, hs256, with_secret},
    helpers::{DEADLINE, SseReader, spawn_app_with},
    mock_upstream::{End, MockUpstream, Reply, openai},
    redis::harness::{Process, RedisServer, instance, pair, stream_url},
};

const ME: &str = "198.51.100.50";

#[tokio::test]
async fn two_instances_admit_exactly_the_answers_one_clients_budget_fits() {
    // Five worst cases of 3 + 100 tokens.
    let pair = pair(|c| {
        budget(515, 100)(c);
        c.max_streams_per_client = 100;
    })
    .await;
    pair.mock
        .always(Reply::sse(vec![openai::token("held")]).then(End::Hang));

    let asks = (0..30).map(|i| {
        let address = if i % 2 == 0 {
            &pair.a.address
        } else {
            &pair.b.address
        };
        SseReader::get(stream_url(address, "hi"), &[("x-real-ip", ME)])
    });
    let readers = join_all(asks).await;

    let admitted = readers.iter().filter(|r| r.status == 200).count();
    let refused = readers.iter().filter(|r| r.status == 429).count();
    assert_eq!((admitted, refused), (5, 25));
    assert_eq!(tokens_left(&pair.a.address, ME).await, 0);
    assert_eq!(tokens_left(&pair.b.address, ME).await, 0);
}

#[tokio::test]
async fn an_instance_killed_mid_answer_keeps_its_reservation_spent() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    mock.then_reply(Reply::sse(vec![openai::token("held")]).then(End::Hang));
    mock.always(costing(10, "stop"));
    let flags = [
        "--token-budget",
        "1000",
        "--llm-max-tokens",
        "100",
        "--llm-system-prompt",
        super::SYSTEM,
    ];
    let mut dying = Process::start(&redis, &mock, &flags).await;
    dying.wait_redis_up(true, DEADLINE).await;
    let other = instance(&redis, &mock, budget(1000, 100)).await;

    let mut reader = SseReader::get(stream_url(&dying.address, "hi"), &[("x-real-ip", ME)]).await;
    reader.next_data().await.expect("a token");
    dying.kill();
    drop(reader);

    assert_eq!(
        tokens_left(&other.address, ME).await,
        1000 - 103,
        "still spent"
    );
    let answer = ask(&other.address, ME, "hi").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        tokens_left(&other.address, ME).await,
        1000 - 103 - 13,
        "the dead instance's reservation is never returned"
    );
}

#[tokio::test]
async fn with_redis_stopped_each_instance_keeps_the_budget_on_its_own_and_shares_it_again_once_redis_is_back()
 {
    let mut redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    // Each answer reports 200 tokens: the whole budget.
    mock.always(costing(197, "stop"));
    let flags = [
        "--token-budget",
        "200",
        "--llm-max-tokens",
        "100",
        "--llm-system-prompt",
        super::SYSTEM,
    ];
    let a = Process::start(&redis, &mock, &flags).await;
    let b = Process::start(&redis, &mock, &flags).await;
    a.wait_redis_up(true, DEADLINE).await;
    b.wait_redis_up(true, DEADLINE).await;
    let refused_for_tokens = |answer: &crate::helpers::Answer| {
        answer.status == 429 && answer.body.contains("token_budget_exhausted")
    };

    // Shared: what A spent, B sees (B never spent anything of its own).
    assert_eq!(ask(&a.address, ME, "hi").await.status, 200);
    wait_tokens_left(&b.address, ME, 0).await;
    assert!(refused_for_tokens(&ask(&b.address, ME, "hi").await));

    redis.kill();
    // A finds Redis gone on its next call and admits on its own budget, which is full …
    assert_eq!(ask(&a.address, ME, "hi").await.status, 200, "{}", a.log());
    a.wait_redis_up(false, DEADLINE).await;
    // … until that answer has spent it: then its own budget refuses, and says when.
    wait_tokens_left(&a.address, ME, 0).await;
    let refused = ask(&a.address, ME, "hi").await;
    assert!(refused_for_tokens(&refused), "{}", refused.body);
    assert!(refused.header("retry-after").is_some());
    // B keeps its own budget meanwhile, untouched by A's.
    assert_eq!(tokens_left(&b.address, ME).await, 200);
    b.wait_redis_up(false, DEADLINE).await;
    assert!(
        a.log()
            .contains("Redis (REDIS_URL) is unreachable: this instance uses its own limits"),
        "{}",
        a.log()
    );

    redis.restart().await;
    a.wait_redis_up(true, DEADLINE).await;
    b.wait_redis_up(true, DEADLINE).await;
    // Shared again, on the restarted (empty) Redis: A's own budget is spent, yet it admits …
    assert_eq!(ask(&a.address, ME, "hi").await.status, 200);
    // … and B's own is full, yet it refuses what A spent.
    wait_tokens_left(&b.address, ME, 0).await;
    assert!(refused_for_tokens(&ask(&b.address, ME, "hi").await));
    assert_eq!(mock.request_count(), 3);
}

crate::both_stores! {
    async fn a_users_llm_stream_claim_replaces_the_default_budget() {
        let app = spawn_app_with(|c| {
            budget(1000, 100)(c);
            with_secret(c);
            c.auth_anonymous = Some(true);
        })
        .await;
        app.mock.always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
        let mut pro = claims("pro");
        pro["llm_stream"] = json!({"tokens": 50_000, "tokens_window_secs": 3600});
        let auth = format!("Bearer {}", hs256(&pro));
        let plain = format!("Bearer {}", hs256(&claims("plain")));

        let of = |auth: String| {
            let address = app.address.clone();
            async move {
                crate::helpers::get_with(format!("{address}/api/limits"), &[("authorization", &auth)])
                    .await
                    .json::<serde_json::Value>()
                    .await
                    .unwrap()["tokens"]
                    .clone()
            }
        };
        let pro_tokens = of(auth).await;
        assert_eq!((pro_tokens["limit"].as_u64(), pro_tokens["window_secs"].as_u64()), (Some(50_000), Some(3600)));
        let plain_tokens = of(plain).await;
        assert_eq!((plain_tokens["limit"].as_u64(), plain_tokens["window_secs"].as_u64()), (Some(1000), Some(86_400)));
    }
}
