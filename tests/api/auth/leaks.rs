//! A token never leaves the request it came in: not in a response, not in a metric, not in a log
//! line at any level (the real binary at `RUST_LOG=trace`, its whole log searched).

use std::ffi::OsStr;

use super::{SECRET, bearer, claims, get, hs256, token_for};
use crate::{
    helpers::{CLIENT, SseReader},
    mock_upstream::{MockUpstream, Reply, openai},
    redis::harness::{Process, RedisServer, stream_url},
};

#[tokio::test]
async fn the_server_never_writes_a_token_or_the_secret_to_its_log_a_response_or_a_metric() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    mock.always(Reply::sse(openai::answer(
        &["ok"],
        std::time::Duration::ZERO,
    )));
    let app = Process::start_on(
        &redis.url(),
        &[
            ("RUST_LOG", OsStr::new("trace")),
            ("AUTH_JWT_SECRET", OsStr::new(SECRET)),
        ],
        &mock,
        &[],
    )
    .await;
    let good = token_for("alice");
    let mut expired = claims("bob");
    expired["exp"] = serde_json::json!(super::now() - 3600);
    let expired = hs256(&expired);
    let forged = format!("{}x", &good[..good.len() - 1]);
    let malformed = "not-a-jwt.at-all.but-secret-looking".to_owned();
    let mut seen = String::new();

    let answered = SseReader::get(
        stream_url(&app.address, "hi"),
        &[("Authorization", &bearer(&good))],
    )
    .await
    .read_to_end()
    .await;
    assert!(answered.ended_with_done(), "{}", answered.body);
    seen.push_str(&answered.body);
    let cookie = format!("llm_stream_token={good}");
    for headers in [
        vec![("Cookie", cookie.clone())],
        vec![("Authorization", bearer(&expired))],
        vec![("Authorization", bearer(&forged))],
        vec![("Cookie", format!("llm_stream_token={malformed}"))],
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        for path in [
            stream_url(&app.address, "hi"),
            format!("{}/api/limits", app.address),
        ] {
            let (status, response_headers, body) = get(&path, &headers).await;
            assert!(status == 200 || status == 401, "{path}: {status}");
            seen.push_str(&format!("{response_headers:?}{body}"));
        }
    }
    let metrics = CLIENT
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    seen.push_str(&metrics);
    let log = app.log();

    assert!(
        log.contains("user:alice"),
        "the stream's line names its user:\n{log}"
    );
    assert!(
        log.lines().count() > 20,
        "trace-level logging was on:\n{log}"
    );
    for (what, secret) in [
        ("the token", good.as_str()),
        ("the expired token", &expired),
        ("the forged token", &forged),
        ("the malformed token", &malformed),
        ("the secret", SECRET),
        ("the upstream API key", "sk-test"),
    ] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "{what} is in the log");
        assert!(
            !seen.contains(signature),
            "{what} is in a response or a metric"
        );
    }
}
