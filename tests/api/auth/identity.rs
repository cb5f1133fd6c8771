//! The identity in every limit: two users behind one address have a budget each, one user from
//! two addresses has one; the `llm_stream` claim; `/api/limits` names who is asking; across two
//! instances sharing a real Redis, one budget, with the `sub` never raw in a key.

use serde_json::json;

use super::{bearer, claims, get, hs256, refused, token_for, with_secret};
use crate::{
    helpers::{SseReader, spawn_app_with},
    mock_upstream::{End, Reply, openai},
    redis::harness::pair,
};

fn rate_two(c: &mut llm_stream::config::Config) {
    with_secret(c);
    c.rate_limit_per_minute = 2;
}

#[tokio::test]
async fn two_users_behind_one_address_have_a_budget_each_and_one_user_from_two_addresses_one() {
    let app = spawn_app_with(rate_two).await;
    app.mock.always(Reply::sse(openai::answer(
        &["ok"],
        std::time::Duration::ZERO,
    )));
    let (alice, bob) = (bearer(&token_for("alice")), bearer(&token_for("bob")));
    let ask = |auth: &str, ip: &str| {
        let (url, auth, ip) = (app.stream_url("hi"), auth.to_owned(), ip.to_owned());
        async move {
            refused(&url, &[("Authorization", &auth), ("X-Real-IP", &ip)])
                .await
                .status
        }
    };

    assert_eq!(ask(&alice, "203.0.113.1").await, 200);
    assert_eq!(ask(&alice, "203.0.113.2").await, 200);
    assert_eq!(
        ask(&alice, "203.0.113.1").await,
        429,
        "one user from two addresses: one budget"
    );
    assert_eq!(
        ask(&bob, "203.0.113.1").await,
        200,
        "another user behind the same address"
    );
}

#[tokio::test]
async fn the_llm_stream_claim_raises_one_users_burst_and_lowers_anothers_stream_cap() {
    let app = spawn_app_with(rate_two).await;
    app.mock
        // No finish: each answer stays open (holding its slot) until the test ends.
        .always(Reply::sse(vec![openai::token("t ")]).then(End::Hang));
    let mut pro = claims("pro");
    pro["llm_stream"] = json!({"burst": 5});
    let mut tight = claims("tight");
    tight["llm_stream"] = json!({"max_streams": 1});
    let (pro, tight) = (bearer(&hs256(&pro)), bearer(&hs256(&tight)));

    let (_, _, pro_limits) = get(
        &format!("{}/api/limits", app.address),
        &[("Authorization", &pro)],
    )
    .await;
    let (_, _, tight_limits) = get(
        &format!("{}/api/limits", app.address),
        &[("Authorization", &tight)],
    )
    .await;
    assert_eq!(pro_limits["limit"], 5);
    assert_eq!(pro_limits["client"], json!({"kind": "user", "sub": "pro"}));
    assert_eq!(tight_limits["max_streams_per_client"], 1);

    let mut open = Vec::new();
    for _ in 0..3 {
        let mut reader = SseReader::get(app.stream_url("hi"), &[("Authorization", &pro)]).await;
        assert_eq!(reader.status, 200);
        reader.stream_id().await;
        open.push(reader);
    }
    let first = SseReader::get(app.stream_url("hi"), &[("Authorization", &tight)]).await;
    assert_eq!(first.status, 200);
    let second = refused(&app.stream_url("hi"), &[("Authorization", &tight)]).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.code, "too_many_streams");
    assert!(second.message.contains('1'), "{}", second.message);
}

#[tokio::test]
async fn across_two_instances_sharing_redis_one_user_has_one_budget_and_no_raw_sub_in_a_key() {
    let shared = pair(|c| {
        rate_two(c);
        // The harness's probe asks anonymously.
        c.auth_anonymous = Some(true);
    })
    .await;
    shared.mock.always(Reply::sse(openai::answer(
        &["ok"],
        std::time::Duration::ZERO,
    )));
    let user = bearer(&token_for("{user 42}"));
    let ask = |address: &str| {
        let (url, user) = (
            crate::redis::harness::stream_url(address, "hi"),
            user.clone(),
        );
        async move { refused(&url, &[("Authorization", &user)]).await.status }
    };

    assert_eq!(ask(&shared.a.address).await, 200);
    assert_eq!(ask(&shared.b.address).await, 200);
    assert_eq!(ask(&shared.a.address).await, 429);

    let keys = format!("{:?}", shared.redis.command(&["KEYS", "*"]).await);
    assert!(keys.contains("llm-stream:rate:{user:"), "{keys}");
    assert!(!keys.contains("user 42"), "{keys}");
}
