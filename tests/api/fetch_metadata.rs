//! Fetch Metadata resource isolation on `/api/stream`: each kind of request with the headers a
//! browser sends for it, then the same in a real Chromium. A foreign page's `<img>`, `<script>`,
//! frame or prefetch is refused before it spends anything; this site's page, an allowed origin,
//! a followed link and clients that send no fetch metadata are answered.

mod chromium;

use std::time::Duration;

use reqwest::Method;

use crate::{
    helpers::{CLIENT, DEADLINE, TestApp, spawn_app_with},
    mock_upstream::{Reply, openai},
};

/// An origin in CORS_ALLOWED_ORIGINS for these tests.
const ALLOWED: &str = "https://allowed.example";

/// What Chromium sends for each kind of request, besides `Accept` and the like.
fn eventsource(site: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("Accept", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("Sec-Fetch-Site", site),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Dest", "empty"),
    ]
}

fn navigation(site: &'static str, dest: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("Upgrade-Insecure-Requests", "1"),
        ("Sec-Fetch-Site", site),
        ("Sec-Fetch-Mode", "navigate"),
        ("Sec-Fetch-User", "?1"),
        ("Sec-Fetch-Dest", dest),
    ]
}

fn no_cors(site: &'static str, dest: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("Accept", "*/*"),
        ("Sec-Fetch-Site", site),
        ("Sec-Fetch-Mode", "no-cors"),
        ("Sec-Fetch-Dest", dest),
    ]
}

fn with<'a>(
    mut headers: Vec<(&'a str, &'a str)>,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    headers.extend_from_slice(more);
    headers
}

async fn app() -> TestApp {
    let app = spawn_app_with(|c| {
        c.cors_allowed_origins = vec![ALLOWED.into()];
        // One stream a minute: a refused request that spent budget would show as a 429 after it.
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = Some(1);
    })
    .await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    app
}

/// Sends `method /api/stream?q=hi` with `headers`; the status, the headers and the body.
async fn ask(
    app: &TestApp,
    method: Method,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = CLIENT.request(method, format!("{}/api/stream?q=hi", app.address));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("an answer in time")
        .expect("a response");
    let status = response.status().as_u16();
    let response_headers = response.headers().clone();
    let body = tokio::time::timeout(DEADLINE, response.text())
        .await
        .expect("the body in time")
        .expect("a body");
    (status, response_headers, body)
}

/// `llm_stream_refusals_total{reason="cross_site"}` now (the recorder is one per process: compare deltas).
async fn cross_site_refusals(app: &TestApp) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(r#"llm_stream_refusals_total{reason="cross_site"} "#))
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn this_sites_page_the_address_bar_a_followed_link_and_plain_clients_get_their_answer() {
    for (what, headers) in [
        ("curl, a server, an old browser", vec![]),
        ("this site's EventSource", eventsource("same-origin")),
        ("the address bar", navigation("none", "document")),
        (
            "a link on another site",
            navigation("cross-site", "document"),
        ),
        (
            "a link on a sibling site",
            navigation("same-site", "document"),
        ),
    ] {
        let app = app().await;

        let (status, _, body) = ask(&app, Method::GET, &headers).await;

        assert_eq!(status, 200, "{what}: {body}");
        assert!(body.contains(r#"data: {"token":"ok"}"#), "{what}: {body}");
    }
}

#[tokio::test]
async fn an_allowed_origins_eventsource_gets_its_answer_from_another_site_or_port() {
    for site in ["cross-site", "same-site"] {
        let app = app().await;
        let headers = with(eventsource(site), &[("Origin", ALLOWED)]);

        let (status, response_headers, body) = ask(&app, Method::GET, &headers).await;

        assert_eq!(status, 200, "{site}: {body}");
        assert_eq!(response_headers["access-control-allow-origin"], ALLOWED);
        assert!(body.contains(r#"data: {"token":"ok"}"#), "{site}: {body}");
    }
}

#[tokio::test]
async fn what_another_sites_page_embeds_or_fetches_is_refused_with_403_and_spends_nothing() {
    let app = app().await;
    let before = cross_site_refusals(&app).await;
    let refused = [
        ("<img>", no_cors("cross-site", "image")),
        ("<img> on a sibling site", no_cors("same-site", "image")),
        ("<script>", no_cors("cross-site", "script")),
        ("<link rel=stylesheet>", no_cors("cross-site", "style")),
        (
            "<link rel=prefetch>",
            with(
                no_cors("cross-site", "empty"),
                &[("Sec-Purpose", "prefetch")],
            ),
        ),
        (
            "fetch(…, {mode: 'no-cors'})",
            no_cors("cross-site", "empty"),
        ),
        ("<video>", no_cors("cross-site", "video")),
        ("<iframe>", navigation("cross-site", "iframe")),
        ("<object>", navigation("cross-site", "object")),
        ("<embed>", navigation("cross-site", "embed")),
        (
            "an EventSource from an origin not allowed",
            with(
                eventsource("cross-site"),
                &[("Origin", "https://evil.example")],
            ),
        ),
        (
            "an EventSource from another port of this host",
            with(
                eventsource("same-site"),
                &[("Origin", "http://127.0.0.1:1")],
            ),
        ),
        ("a cors request without Origin", eventsource("cross-site")),
        ("an unknown site", vec![("Sec-Fetch-Site", "elsewhere")]),
    ];

    for (what, headers) in &refused {
        let (status, response_headers, body) = ask(&app, Method::GET, headers).await;

        assert_eq!(status, 403, "{what}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "cross_site", "{what}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(
            !response_headers.contains_key("access-control-allow-origin"),
            "{what}: no page of another site may read the refusal"
        );
    }

    assert_eq!(
        app.mock.request_count(),
        0,
        "no refused request reached the upstream"
    );
    let (status, _, body) = ask(&app, Method::GET, &eventsource("same-origin")).await;
    assert_eq!(
        status, 200,
        "the one stream a minute is still there: {body}"
    );
    assert!(cross_site_refusals(&app).await >= before + refused.len() as f64);
}

#[tokio::test]
async fn a_post_from_another_sites_page_is_refused_while_one_from_this_site_passes_the_policy() {
    let app = app().await;
    let form_post = with(
        navigation("cross-site", "document"),
        &[("Origin", "https://evil.example")],
    );
    let foreign_fetch = with(
        eventsource("cross-site"),
        &[("Origin", "https://evil.example")],
    );
    let own_fetch = with(
        eventsource("same-origin"),
        &[("Origin", app.address.as_str())],
    );
    let allowed_fetch = with(eventsource("cross-site"), &[("Origin", ALLOWED)]);

    for headers in [&form_post, &foreign_fetch] {
        let (status, _, body) = ask(&app, Method::POST, headers).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("cross_site"), "{body}");
    }
    // Past the policy, this resource answers no POST (405); CORS, inside it, refuses (400) an
    // Origin it does not list, this site's own included. Neither is the policy's refusal.
    for headers in [&own_fetch, &allowed_fetch] {
        let (status, _, body) = ask(&app, Method::POST, headers).await;
        assert!(matches!(status, 400 | 405), "{status}: {body}");
        assert!(!body.contains("cross_site"), "{body}");
    }
}

#[tokio::test]
async fn an_allowed_origin_is_read_once_trimmed_and_in_any_case_for_streams_and_cancels() {
    let mock = crate::mock_upstream::MockUpstream::start().await;
    mock.always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    let config = crate::helpers::test_config(&[
        "--llm-provider",
        "openai",
        "--llm-base-url",
        &mock.url(),
        "--llm-api-key",
        "sk-test",
        "--cors-allowed-origins",
        " HTTPS://Allowed.Example/ ,https://other.example",
    ]);
    let app = crate::helpers::spawn_with_config(config, mock).await;

    let (status, headers, _) = ask(
        &app,
        Method::GET,
        &with(eventsource("cross-site"), &[("Origin", ALLOWED)]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], ALLOWED);

    // A browser too old for fetch metadata still sends Origin with a POST.
    let cancel = |origin: &'static str| {
        CLIENT
            .post(format!(
                "{}/api/stream/0123456789abcdef0123456789abcdef/cancel",
                app.address
            ))
            .header("Origin", origin)
            .send()
    };
    assert_eq!(cancel(ALLOWED).await.expect("cancel").status(), 404);
    assert_eq!(
        cancel("https://evil.example")
            .await
            .expect("cancel")
            .status(),
        403
    );
}
