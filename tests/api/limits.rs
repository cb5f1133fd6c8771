//! Abuse protection: per-client rate limits, stream caps, who the client is, CORS, and /api/limits.

use std::time::Duration;

use futures_util::StreamExt;

use crate::{
    helpers::{CLIENT, DEADLINE, TestApp, eventually, spawn_app_with},
    mock_upstream::{End, Reply, openai},
};

/// A rate of `per_minute` with a burst of `burst`, for `spawn_app_with`.
pub fn limited(per_minute: u32, burst: u32) -> impl FnOnce(&mut llm_stream::config::Config) {
    move |c| {
        c.rate_limit_per_minute = per_minute;
        c.rate_limit_burst = Some(burst);
    }
}

/// Asks as `client` (an X-Real-IP the trusted loopback proxy passes on) and returns status, headers, JSON.
async fn ask_as(
    app: &TestApp,
    client: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut request = CLIENT.get(app.stream_url("hi"));
    if let Some(ip) = client {
        request = request.header("X-Real-IP", ip);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn status_as(app: &TestApp, client: Option<&str>, extra: &[(&str, &str)]) -> u16 {
    ask_as(app, client, extra).await.0
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

async fn wait_for_open_streams(app: &TestApp, n: u32) {
    eventually(&format!("{n} open streams"), DEADLINE, || async {
        app.store.streams_open_here() == n
    })
    .await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_change_who_it_is_with_headers() {
    let app = spawn_app_with(|c| {
        limited(1, 1)(c);
        c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    assert_eq!(status_as(&app, None, &[]).await, 200);

    for spoof in [
        ("X-Forwarded-For", "203.0.113.50"),
        ("X-Real-IP", "203.0.113.51"),
        ("Forwarded", "for=203.0.113.52"),
    ] {
        assert_eq!(
            status_as(&app, None, &[spoof]).await,
            429,
            "{spoof:?} changed who the client is"
        );
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_x_real_ip_names_the_client() {
    let app = spawn_app_with(limited(1, 1)).await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    assert_eq!(status_as(&app, Some("203.0.113.1"), &[]).await, 200);
    assert_eq!(status_as(&app, Some("203.0.113.2"), &[]).await, 200);
    assert_eq!(status_as(&app, Some("203.0.113.1"), &[]).await, 429);
}

#[tokio::test]
async fn behind_trusted_proxies_the_rightmost_untrusted_forwarded_for_address_is_the_client() {
    let app = spawn_app_with(limited(1, 1)).await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    // The client may put anything on the left; the proxies append what they saw on the right.
    let first = [("X-Forwarded-For", "1.1.1.1, 203.0.113.5")];
    let second = [("X-Forwarded-For", "9.9.9.9, 203.0.113.5, 127.0.0.1")];
    let other = [("X-Forwarded-For", "203.0.113.5, 198.51.100.7")];

    assert_eq!(status_as(&app, None, &first).await, 200);
    assert_eq!(
        status_as(&app, None, &second).await,
        429,
        "same client behind two proxies"
    );
    assert_eq!(
        status_as(&app, None, &other).await,
        200,
        "198.51.100.7 is another client"
    );
}

#[tokio::test]
async fn cross_origin_pages_are_refused_unless_named() {
    let app =
        spawn_app_with(|c| c.cors_allowed_origins = vec!["https://allowed.example".into()]).await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    let (status, headers, _) = ask_as(&app, None, &[("Origin", "https://allowed.example")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("access-control-allow-origin").unwrap(),
        "https://allowed.example"
    );

    let (status, headers, _) = ask_as(&app, None, &[("Origin", "https://evil.example")]).await;
    assert_ne!(status, 200);
    assert!(headers.get("access-control-allow-origin").is_none());
    assert_eq!(
        app.mock.request_count(),
        1,
        "the refused origin never reached the upstream"
    );
}

#[tokio::test]
async fn by_default_no_other_origin_may_call_the_api() {
    let app = spawn_app_with(|_| {}).await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    let (status, headers, _) = ask_as(&app, None, &[("Origin", "https://any.example")]).await;

    assert_ne!(status, 200);
    assert!(headers.get("access-control-allow-origin").is_none());
    assert_eq!(app.mock.request_count(), 0);
}

#[tokio::test]
async fn the_limiters_memory_stays_bounded_under_many_distinct_clients() {
    let app = spawn_app_with(limited(60, 1)).await;
    let url = format!("{}/api/stream", app.address);
    const CLIENTS: u32 = 100_000;

    // Blank questions: refused with 400 after the rate limiter has counted them, so no upstream is needed.
    let statuses = futures_util::stream::iter(0..CLIENTS)
        .map(|n| {
            let url = url.clone();
            async move {
                let ip = std::net::Ipv4Addr::from(0x0A00_0000 + n).to_string();
                CLIENT
                    .get(&url)
                    .header("X-Real-IP", ip)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert!(statuses.iter().all(|s| *s == 400));
    // Every identity was remembered while its budget refilled; the server's own minute-by-minute
    // cleanup may already have forgotten the earliest ones on a slow machine, never the latest.
    let remembered = app.store.local_limits().tracked_clients();
    assert!(
        (1_000..=CLIENTS as usize).contains(&remembered),
        "{remembered} clients tracked"
    );

    // Once their budgets are full again, cleanup forgets them.
    eventually("cleanup to forget every client", DEADLINE, || async {
        app.store.local_limits().forget_idle_clients() == 0
    })
    .await;
    assert_eq!(app.store.local_limits().tracked_clients(), 0);
}

crate::both_stores! {
    async fn a_client_over_its_rate_is_refused_with_429_and_never_reaches_the_upstream() {
        let app = spawn_app_with(limited(2, 2)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

        let (first, h1, _) = ask_as(&app, None, &[]).await;
        let (second, h2, _) = ask_as(&app, None, &[]).await;
        let (third, h3, body) = ask_as(&app, None, &[]).await;

        assert_eq!((first, second, third), (200, 200, 429));
        assert_eq!(
            (
                header(&h1, "ratelimit-limit"),
                header(&h1, "ratelimit-remaining")
            ),
            (Some(2), Some(1))
        );
        assert_eq!(
            (
                header(&h2, "ratelimit-limit"),
                header(&h2, "ratelimit-remaining")
            ),
            (Some(2), Some(0))
        );
        assert_eq!(
            (
                header(&h3, "ratelimit-limit"),
                header(&h3, "ratelimit-remaining")
            ),
            (Some(2), Some(0))
        );
        assert!(header(&h1, "ratelimit-reset").is_some() && header(&h3, "ratelimit-reset").is_some());
        assert_eq!(body["error"], "rate_limited");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        let retry_after = header(&h3, "retry-after").expect("a Retry-After header");
        assert_eq!(body["retry_after"], retry_after);
        assert!(
            (1..=30).contains(&retry_after),
            "one request comes back every 30 s: {retry_after}"
        );
        assert_eq!(
            app.mock.request_count(),
            2,
            "the refused request never reached the upstream"
        );
    }

    async fn a_client_that_waits_the_retry_after_is_admitted_again() {
        // 60 a minute with a burst of 1: one request a second.
        let app = spawn_app_with(limited(60, 1)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
        assert_eq!(status_as(&app, None, &[]).await, 200);

        let (status, headers, _) = ask_as(&app, None, &[]).await;
        let refused_at = tokio::time::Instant::now();
        assert_eq!(status, 429);
        let retry_after = Duration::from_secs(header(&headers, "retry-after").unwrap());
        assert_eq!(retry_after, Duration::from_secs(1), "right to the second");

        // Waiting is what is being tested: a moment before the Retry-After it is still refused, at it
        // the budget is back.
        tokio::time::sleep_until(refused_at + retry_after - Duration::from_millis(200)).await;
        assert_eq!(status_as(&app, None, &[]).await, 429, "too early");
        tokio::time::sleep_until(refused_at + retry_after).await;
        assert_eq!(status_as(&app, None, &[]).await, 200);
    }

    async fn a_refusal_says_the_same_wait_in_its_sentence_and_its_retry_after() {
        // 150 a minute with a burst of 1: one request every 0.4 s, a wait of under a second.
        let app = spawn_app_with(limited(150, 1)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
        assert_eq!(status_as(&app, None, &[]).await, 200);

        let (status, headers, body) = ask_as(&app, None, &[]).await;

        assert_eq!(status, 429);
        let retry_after = header(&headers, "retry-after").expect("a Retry-After");
        assert_eq!(retry_after, 1, "rounded up");
        assert_eq!(body["retry_after"], retry_after);
        let message = body["message"].as_str().expect("a message");
        assert!(
            message.contains(&format!("try again in {retry_after} s")),
            "{message}"
        );
    }

    async fn an_eventsource_reconnect_spends_no_budget() {
        let app = spawn_app_with(limited(1, 1)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

        let (reconnect, headers, _) = ask_as(&app, None, &[("Last-Event-ID", "abc:3")]).await;

        assert_eq!(reconnect, 204);
        assert_eq!(header(&headers, "ratelimit-remaining"), Some(1));
        assert_eq!(status_as(&app, None, &[]).await, 200, "the budget is whole");
    }

    async fn a_rate_of_zero_turns_rate_limiting_off() {
        let app = spawn_app_with(limited(0, 0)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

        for _ in 0..25 {
            assert_eq!(status_as(&app, None, &[]).await, 200);
        }
    }

    async fn one_stream_too_many_from_a_client_is_refused_and_slots_come_back_when_streams_end() {
        let app = spawn_app_with(|c| c.max_streams_per_client = 2).await;
        app.mock
            .always(Reply::sse(vec![openai::token("held ")]).then(End::Hang));

        let mut first = app.open("one").await;
        let mut second = app.open("two").await;
        first.next_data().await.unwrap();
        second.next_data().await.unwrap();
        let (status, _, body) = ask_as(&app, None, &[]).await;
        assert_eq!(status, 429);
        assert_eq!(body["error"], "too_many_streams");
        assert_eq!(app.mock.request_count(), 2);

        drop(first);
        app.mock.wait_for_closed(1, DEADLINE).await;
        wait_for_open_streams(&app, 1).await;
        let mut third = app.open("three").await;
        assert_eq!(third.status, 200);
        third.next_data().await.unwrap();

        drop(second);
        drop(third);
        wait_for_open_streams(&app, 0).await;
    }

    async fn slots_are_released_however_a_stream_ends() {
        let app = spawn_app_with(|c| {
            c.max_streams_per_client = 1;
            c.stream_timeout = std::time::Duration::from_secs_f64(0.5);
            // Each scripted reply answers exactly one question.
            c.llm_retries = 0;
        })
        .await;
        // Done, upstream error, timeout: each frees the client's only slot for the next question.
        app.mock
            .then_reply(Reply::sse(openai::answer(&["done"], Duration::ZERO)));
        app.mock.then_reply(Reply::status(500, "{}"));
        app.mock.then_reply(Reply::sse(vec![]).then(End::Hang));
        app.mock
            .then_reply(Reply::sse(openai::answer(&["again"], Duration::ZERO)));

        assert!(app.stream("1").await.ended_with_done());
        wait_for_open_streams(&app, 0).await;
        assert_eq!(
            app.stream("2").await.error().unwrap()["error"],
            "upstream_unavailable"
        );
        wait_for_open_streams(&app, 0).await;
        assert_eq!(app.stream("3").await.error().unwrap()["error"], "timeout");
        wait_for_open_streams(&app, 0).await;
        assert!(app.stream("4").await.ended_with_done());
    }

    async fn past_max_streams_the_server_answers_503_at_capacity() {
        let app = spawn_app_with(|c| c.max_streams = 1).await;
        app.mock
            .always(Reply::sse(vec![openai::token("held ")]).then(End::Hang));
        let mut held =
            crate::helpers::SseReader::get(app.stream_url("hi"), &[("X-Real-IP", "203.0.113.1")]).await;
        held.next_data().await.unwrap();

        let (status, headers, body) = ask_as(&app, Some("203.0.113.2"), &[]).await;

        assert_eq!(status, 503);
        assert_eq!(body["error"], "at_capacity");
        assert!(header(&headers, "retry-after").is_some_and(|s| s >= 1));
    }

    async fn ipv6_clients_are_grouped_by_their_64() {
        let app = spawn_app_with(limited(1, 1)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

        assert_eq!(status_as(&app, Some("2001:db8:1:2::1"), &[]).await, 200);
        assert_eq!(
            status_as(&app, Some("2001:db8:1:2:ffff:eeee:dddd:9"), &[]).await,
            429,
            "same /64"
        );
        assert_eq!(
            status_as(&app, Some("2001:db8:1:3::1"), &[]).await,
            200,
            "another /64"
        );
    }

    async fn api_limits_tells_a_client_its_budget_without_spending_it() {
        let app = spawn_app_with(|c| {
            limited(5, 5)(c);
            c.max_streams_per_client = 4;
        })
        .await;
        app.mock
            .always(Reply::sse(vec![openai::token("held ")]).then(End::Hang));
        let mut held = app.open("hi").await;
        held.next_data().await.unwrap();

        let mut views = Vec::new();
        for _ in 0..10 {
            let response = app.get("/api/limits").await;
            assert_eq!(response.status(), 200, "/api/limits is not itself limited");
            views.push(response.json::<serde_json::Value>().await.unwrap());
        }

        let view = &views[9];
        assert_eq!(view["limit"], 5);
        assert_eq!(view["remaining"], 4, "asking /api/limits spends nothing");
        assert!(
            view["reset_secs"]
                .as_u64()
                .is_some_and(|s| (1..=12).contains(&s))
        );
        assert_eq!(view["streams_open"], 1);
        assert_eq!(view["max_streams_per_client"], 4);
        assert_eq!(view["max_query_chars"], 1000);
    }

    async fn api_limits_explains_a_rate_limit_refusal() {
        let app = spawn_app_with(limited(1, 1)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
        assert_eq!(status_as(&app, None, &[]).await, 200);
        let (_, headers, _) = ask_as(&app, None, &[]).await;

        let view: serde_json::Value = app.get("/api/limits").await.json().await.unwrap();

        assert_eq!(view["remaining"], 0);
        let retry_after = header(&headers, "retry-after").unwrap();
        assert!(
            view["reset_secs"].as_u64().unwrap().abs_diff(retry_after) <= 1,
            "{view} vs Retry-After {retry_after}"
        );
    }
}
