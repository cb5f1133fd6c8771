//! AUTH_JWKS_URL: RSA, ECDSA and Ed25519 tokens verified against a key set served by the test's
//! own server; a rotation; a stalled key server that no request waits on; a key server down at start.

use std::time::{Duration, Instant};

use super::{
    JwksServer, bearer, claims, get,
    keys::{Key, set},
    refused,
};
use crate::helpers::{DEADLINE, TestApp, eventually, spawn_demo_app_with};

async fn app(jwks: &JwksServer) -> TestApp {
    let url = jwks.url.parse().unwrap();
    spawn_demo_app_with(|c| c.auth_jwks_url = Some(url)).await
}

async fn status(app: &TestApp, token: &str) -> u16 {
    get(
        &format!("{}/api/limits", app.address),
        &[("Authorization", &bearer(token))],
    )
    .await
    .0
}

#[tokio::test]
async fn rsa_ecdsa_and_ed25519_tokens_verify_against_the_key_set_and_a_new_kid_once_served() {
    let (rsa, ec, ed) = (Key::rsa("rsa-1"), Key::ec("ec-1"), Key::ed25519("ed-1"));
    let jwks = JwksServer::start(Some(set(&[&rsa, &ec]))).await;
    let app = app(&jwks).await;
    eventually("the key set", DEADLINE, || async {
        status(&app, &rsa.sign(&claims("a"))).await == 200
    })
    .await;

    assert_eq!(status(&app, &ec.sign(&claims("b"))).await, 200);
    let unknown = refused(
        &format!("{}/api/limits", app.address),
        &[("Authorization", &bearer(&ed.sign(&claims("c"))))],
    )
    .await;
    assert_eq!(unknown.status, 401);
    assert!(
        unknown.message.contains("signing key (kid)"),
        "{}",
        unknown.message
    );

    jwks.serve(set(&[&rsa, &ec, &ed]));
    // The refusal above asked for one refetch, throttled: it may have come before the new set.
    eventually(
        "the rotated key to be accepted",
        Duration::from_secs(40),
        || async { status(&app, &ed.sign(&claims("c"))).await == 200 },
    )
    .await;
}

#[tokio::test]
async fn with_the_key_server_stalled_known_keys_keep_working_and_no_request_waits() {
    let (rsa, other) = (Key::rsa("rsa-1"), Key::ec("ec-new"));
    let jwks = JwksServer::start(Some(set(&[&rsa]))).await;
    let app = app(&jwks).await;
    eventually("the key set", DEADLINE, || async {
        status(&app, &rsa.sign(&claims("a"))).await == 200
    })
    .await;
    let fetched = jwks.fetches();
    jwks.stall();

    let started = Instant::now();
    assert_eq!(
        status(&app, &other.sign(&claims("b"))).await,
        401,
        "an unknown kid asks for a refetch"
    );
    eventually(
        "the refetch to reach the stalled server",
        DEADLINE,
        || async { jwks.fetches() > fetched },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(status(&app, &rsa.sign(&claims("a"))).await, 200);
        assert_eq!(status(&app, &other.sign(&claims("b"))).await, 401);
    }

    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no request waited: {:?}",
        started.elapsed()
    );
    assert_eq!(
        jwks.fetches(),
        fetched + 1,
        "at most one refetch for unknown kids"
    );
}

#[tokio::test]
async fn at_start_with_the_key_server_down_tokens_get_503_auth_unavailable_until_it_is_up() {
    let rsa = Key::rsa("rsa-1");
    let jwks = JwksServer::start(None).await;
    let app = app(&jwks).await;
    let token = rsa.sign(&claims("a"));

    let (code, headers, body) = get(
        &format!("{}/api/limits", app.address),
        &[("Authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(code, 503);
    assert_eq!(body["error"], "auth_unavailable");
    assert!(headers.contains_key("retry-after"));

    jwks.serve(set(&[&rsa]));
    eventually(
        "the key set once the server is up",
        Duration::from_secs(20),
        || async { status(&app, &token).await == 200 },
    )
    .await;
}
