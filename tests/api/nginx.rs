//! The shipped nginx configuration, proven through a real nginx: each test takes the file in
//! `nginx/` itself, substitutes only the listen address and the upstream servers (plus, for a
//! variant, the one directive it is about), and runs nginx in the foreground with a temporary
//! prefix in front of the real application and the mock upstream.

pub mod harness;

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::{
    helpers::{Answer, CLIENT, DEADLINE, TestApp, spawn_app_with, spawn_with_config},
    mock_upstream::{End, MockUpstream, Reply, Step, openai},
};
use harness::{Nginx, Site, TempDir, nginx_accepts, self_signed_certificate};

const MS: Duration = Duration::from_millis(1);

/// The app on the OpenAI-compatible provider, its mock answering 20 tokens 100 ms apart.
async fn app_with_twenty_slow_tokens() -> TestApp {
    let app = spawn_app_with(|_| {}).await;
    let tokens: Vec<String> = (0..20).map(|i| format!("t{i} ")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    app.mock
        .always(Reply::sse(openai::answer(&tokens, 100 * MS)));
    app
}

/// The 20 tokens came one by one: the first more than a second before the last, and most of the
/// 100 ms gaps between them kept.
fn assert_arrived_token_by_token(answer: &Answer) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let tokens: Vec<_> = answer
        .events
        .iter()
        .filter(|e| e.json()["token"].is_string())
        .collect();
    assert_eq!(tokens.len(), 20, "{}", answer.body);
    assert!(answer.ended_with_done(), "{}", answer.body);
    let spread = tokens[19].at - tokens[0].at;
    assert!(
        spread > Duration::from_secs(1),
        "the first token came only {spread:?} before the last: nginx held the stream back"
    );
    let gaps: Vec<Duration> = tokens.windows(2).map(|w| w[1].at - w[0].at).collect();
    let kept = gaps.iter().filter(|gap| **gap > 50 * MS).count();
    assert!(
        kept >= 15,
        "only {kept} of 19 gaps between tokens survived nginx: {gaps:?}"
    );
}

// --- The tests ---------------------------------------------------------------------------------

#[tokio::test]
async fn nginx_accepts_the_shipped_plain_and_tls_configs_with_and_without_the_optional_limits() {
    let plain = Site::shipped("llm-stream.conf");
    for (name, site) in [
        ("nginx/llm-stream.conf", plain.clone()),
        (
            "nginx/llm-stream.conf with limit_req",
            plain.with_first_line_of_defence(),
        ),
    ] {
        if let Err(log) = nginx_accepts(&site, &["    listen 80;\n"], &TempDir::new()) {
            panic!("nginx -t refused {name}:\n{log}");
        }
    }

    let dir = TempDir::new();
    let (cert, key) = self_signed_certificate(&dir.0);
    let tls = Site::shipped("llm-stream-tls.conf")
        .replace(
            "/etc/letsencrypt/live/example.com/fullchain.pem",
            &cert.display().to_string(),
        )
        .replace(
            "/etc/letsencrypt/live/example.com/privkey.pem",
            &key.display().to_string(),
        );
    let listen = ["    listen 80;\n", "    listen 443 ssl http2;\n"];
    for (name, site) in [
        ("nginx/llm-stream-tls.conf", tls.clone()),
        (
            "nginx/llm-stream-tls.conf with limit_req",
            tls.with_first_line_of_defence(),
        ),
    ] {
        if let Err(log) = nginx_accepts(&site, &listen, &dir) {
            panic!("nginx -t refused {name}:\n{log}");
        }
    }
}

#[tokio::test]
async fn tokens_reach_the_client_through_nginx_as_they_are_produced() {
    let app = app_with_twenty_slow_tokens().await;
    let nginx = Nginx::start(Site::plain(&[&app])).await;

    let answer = nginx.open(&[]).await.read_to_end().await;

    assert_arrived_token_by_token(&answer);
    assert_eq!(compressed(&answer.headers), None, "{:?}", answer.headers);
}

/// The response's Content-Encoding, when it is not the identity.
fn compressed(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .filter(|e| *e != "identity")
        .map(str::to_owned)
}

/// The common setting, server-wide: gzip on, and text/event-stream among its types.
fn gzip_event_streams(site: Site) -> Site {
    site.http("    gzip on;\n    gzip_types text/event-stream;").replace(
        "    gzip_types text/css application/javascript application/json image/svg+xml;",
        "    gzip_types text/css application/javascript application/json image/svg+xml text/event-stream;",
    )
}

/// Adds a directive to the stream location (after its `proxy_cache off;`).
fn in_stream_location(site: Site, directive: &str) -> Site {
    site.replace(
        "        proxy_cache off;\n",
        &format!("        proxy_cache off;\n        {directive}\n"),
    )
}

/// Hides the app's `Content-Encoding: identity` from nginx, which alone would stop its gzip.
fn hide_app_content_encoding(site: Site) -> Site {
    in_stream_location(site, "proxy_hide_header Content-Encoding;")
}

/// How long after the first piece of the body the last one arrived, read raw (no decoding).
async fn body_spread(url: String, headers: &[(&str, &str)]) -> Duration {
    let mut body = crate::helpers::get_with(url, headers).await.bytes_stream();
    let mut arrivals = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.next())
        .await
        .expect("the body ends in time")
    {
        if !chunk.expect("read the body").is_empty() {
            arrivals.push(Instant::now());
        }
    }
    match (arrivals.first(), arrivals.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => panic!("an empty body"),
    }
}

#[tokio::test]
async fn the_apps_x_accel_buffering_header_keeps_the_stream_live_when_proxy_buffering_is_on() {
    let app = app_with_twenty_slow_tokens().await;
    let buffering = || {
        Site::plain(&[&app]).replace(
            "        proxy_buffering off;",
            "        proxy_buffering on;",
        )
    };
    // Buffering alone passes each complete chunk of the app's chunked response on, so to see the
    // header at work something must hold data back: gzip does, when nginx buffers. Honoured, the
    // header keeps even that compressed stream live; ignored, the answer comes in one piece.
    let compressing = || {
        hide_app_content_encoding(gzip_event_streams(buffering()))
            .replace("        gzip off;\n", "")
    };
    let nginx = Nginx::start(buffering()).await;
    let honouring = Nginx::start(compressing()).await;
    let ignoring = Nginx::start(in_stream_location(
        compressing(),
        "proxy_ignore_headers X-Accel-Buffering;",
    ))
    .await;
    let gzip = [("accept-encoding", "gzip")];

    let (answer, honoured, ignored) = tokio::join!(
        async { nginx.open(&[]).await.read_to_end().await },
        body_spread(honouring.stream_url("hello"), &gzip),
        body_spread(ignoring.stream_url("hello"), &gzip),
    );

    assert_arrived_token_by_token(&answer);
    assert!(
        honoured > Duration::from_secs(1),
        "with the header honoured the compressed stream came in {honoured:?}"
    );
    assert!(
        ignored < 500 * MS,
        "control: with the header ignored nginx should hold the answer back, yet it spread over {ignored:?}"
    );
}

#[tokio::test]
async fn a_server_wide_gzip_for_event_streams_neither_compresses_nor_holds_back_the_stream() {
    let app = app_with_twenty_slow_tokens().await;
    let nginx = Nginx::start(gzip_event_streams(Site::plain(&[&app]))).await;

    let answer = nginx
        .open(&[("accept-encoding", "gzip")])
        .await
        .read_to_end()
        .await;

    assert_eq!(compressed(&answer.headers), None, "{:?}", answer.headers);
    assert_arrived_token_by_token(&answer);

    // Two defences stop gzip: the location's "gzip off" and the app's "Content-Encoding:
    // identity". The shipped one holds by itself when the app's header is hidden from nginx,
    // and without either this request is compressed, so the request above did ask for it.
    let location_only = Nginx::start(hide_app_content_encoding(gzip_event_streams(Site::plain(
        &[&app],
    ))))
    .await;
    let neither = Nginx::start(
        hide_app_content_encoding(gzip_event_streams(Site::plain(&[&app])))
            .replace("        gzip off;\n", ""),
    )
    .await;
    for (nginx, expected) in [(&location_only, None), (&neither, Some("gzip"))] {
        let response = tokio::time::timeout(
            DEADLINE,
            CLIENT
                .get(nginx.stream_url("hello"))
                .header("accept-encoding", "gzip")
                .send(),
        )
        .await
        .expect("response head in time")
        .expect("request");
        assert_eq!(
            compressed(response.headers()).as_deref(),
            expected,
            "{:?}",
            response.headers()
        );
    }
}

#[tokio::test]
async fn the_app_counts_the_real_client_through_nginx_and_a_forged_address_changes_nothing() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = Some(1);
    })
    .await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    let nginx = Nginx::start(Site::plain(&[&app])).await;
    let forged = [
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-for", "203.0.113.9"),
    ];

    let first = nginx.open(&[]).await.read_to_end().await;
    let second = nginx.open(&[]).await.read_to_end().await;
    let posing = nginx.open(&forged).await.read_to_end().await;

    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(second.status, 429, "{}", second.body);
    assert_eq!(
        posing.status, 429,
        "a client sending its own X-Real-IP/X-Forwarded-For through nginx got a fresh budget: {}",
        posing.body
    );
    assert_eq!(app.mock.request_count(), 1);
    let remaining = |request: reqwest::RequestBuilder| async move {
        let view: serde_json::Value = request
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("limits JSON");
        view["remaining"].as_u64().expect("remaining")
    };
    let mut through_nginx = CLIENT.get(nginx.url("/api/limits"));
    for (name, value) in forged {
        through_nginx = through_nginx.header(name, value);
    }
    assert_eq!(remaining(through_nginx).await, 0);
    // The forged header would have mattered had nginx passed it on: from a trusted peer, the app
    // takes it as another client, with its whole budget.
    let direct = CLIENT
        .get(format!("{}/api/limits", app.address))
        .header("x-real-ip", "203.0.113.9");
    assert_eq!(remaining(direct).await, 1);
}

#[tokio::test]
async fn keep_alive_comments_hold_a_slow_stream_open_past_nginxs_read_timeout() {
    let slow = Reply::sse(vec![
        Step::Sleep(1500 * MS),
        openai::token("late"),
        openai::finish("stop"),
        openai::done(),
    ]);
    let read_timeout_1s = |app: &TestApp| {
        Site::plain(&[app]).replace("proxy_read_timeout 75s;", "proxy_read_timeout 1s;")
    };
    let app = spawn_app_with(|c| c.keepalive = std::time::Duration::from_secs_f64(0.3)).await;
    app.mock.always(slow.clone());
    let nginx = Nginx::start(read_timeout_1s(&app)).await;

    let answer = nginx.open(&[]).await.read_to_end().await;

    assert_eq!(answer.tokens(), ["late"], "{}", answer.body);
    assert!(answer.ended_with_done(), "{}", answer.body);
    let before = answer.keep_alives_before_first_event();
    assert!(
        before >= 2,
        "keep-alive comments before the token: {before}"
    );

    // Control: without keep-alives inside the timeout, nginx cuts the same stream.
    let quiet = spawn_app_with(|c| c.keepalive = std::time::Duration::from_secs_f64(30.0)).await;
    quiet.mock.always(slow);
    let nginx = Nginx::start(read_timeout_1s(&quiet)).await;
    let response = CLIENT
        .get(nginx.stream_url("hello"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    while let Some(Ok(chunk)) = tokio::time::timeout(DEADLINE, body.next())
        .await
        .expect("nginx ends the stream in time")
    {
        received.extend_from_slice(&chunk);
    }
    let received = String::from_utf8_lossy(&received);
    assert!(
        !received.contains("late"),
        "control: nginx should have cut the silent stream, yet it delivered: {received}"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_from_nginx_cancels_the_upstream_request() {
    let app = spawn_app_with(|_| {}).await;
    let tokens = ["a "; 50];
    // Five seconds of tokens, then silence until the app hangs up: only a cancellation closes it.
    app.mock
        .always(Reply::sse(openai::answer(&tokens, 100 * MS)).then(End::Hang));
    let nginx = Nginx::start(Site::plain(&[&app])).await;
    let mut reader = nginx.open(&[]).await;
    reader.next_data().await.expect("a first token");
    assert_eq!(app.mock.closed_count(), 0);

    let left = Instant::now();
    drop(reader);

    app.mock.wait_for_closed(1, Duration::from_secs(3)).await;
    assert!(
        app.mock.closed_at()[0] >= left,
        "closed before the client left"
    );
}

#[tokio::test]
async fn two_app_instances_behind_the_upstream_block_both_serve_streams() {
    let mock = MockUpstream::start().await;
    let tokens = ["a "; 50];
    mock.always(Reply::sse(openai::answer(&tokens, 100 * MS)).then(End::Hang));
    let instance = || spawn_with_config(crate::helpers::openai_config(&mock), mock.clone());
    let (one, two) = (instance().await, instance().await);
    let nginx = Nginx::start(Site::plain(&[&one, &two])).await;

    let mut first = nginx.open(&[]).await;
    first
        .next_data()
        .await
        .expect("a token on the first stream");
    let mut second = nginx.open(&[]).await;
    second
        .next_data()
        .await
        .expect("a token on the second stream");

    assert_eq!(
        (one.store.streams_open_here(), two.store.streams_open_here()),
        (1, 1),
        "each instance should hold one of the two open streams"
    );
}

/// One short answer per request through nginx, in turn; the statuses.
async fn statuses(nginx: &Nginx, requests: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..requests {
        statuses.push(nginx.open(&[]).await.read_to_end().await.status);
    }
    statuses
}

#[tokio::test]
async fn each_instance_counts_its_own_quota_so_a_client_gets_one_per_instance() {
    let instance = || {
        spawn_app_with(|c| {
            c.rate_limit_per_minute = 1;
            c.rate_limit_burst = Some(1);
        })
    };
    let (one, two) = (instance().await, instance().await);
    for app in [&one, &two] {
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    }
    let nginx = Nginx::start(Site::plain(&[&one, &two])).await;

    // The documented trade-off of least_conn: a quota of 1 per instance is 2 in all.
    assert_eq!(statuses(&nginx, 3).await, [200, 200, 429]);
    assert_eq!((one.mock.request_count(), two.mock.request_count()), (1, 1));
}

#[tokio::test]
async fn the_optional_limit_req_caps_a_client_across_all_instances() {
    let (one, two) = (spawn_app_with(|_| {}).await, spawn_app_with(|_| {}).await);
    for app in [&one, &two] {
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    }
    let nginx = Nginx::start(Site::plain(&[&one, &two]).with_first_line_of_defence()).await;

    // As shipped: 30 a minute with a burst of 10, so the 12th request at once is refused.
    let statuses = statuses(&nginx, 12).await;

    assert_eq!(statuses[..11], [200; 11], "{statuses:?}");
    assert_eq!(statuses[11], 429, "{statuses:?}");
    let served = (one.mock.request_count(), two.mock.request_count());
    assert!(
        served.0 > 0 && served.1 > 0 && served.0 + served.1 == 11,
        "both instances should have served, 11 in all: {served:?}"
    );
}
