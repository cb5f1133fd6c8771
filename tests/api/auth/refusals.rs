//! Every refusal of a token, with its status, its `WWW-Authenticate` and its message; `alg: none`;
//! the HS/RS confusion; the leeway; the header before the cookie; refusals counted and spending
//! the address's rate; bad settings stopping start-up.

use base64::Engine as _;
use llm_stream::config::{Config, ConfigExit};
use serde_json::json;

use super::{
    JwksServer, SECRET, bearer, claims, get, hs256, keys, now, refused, token_for, with_secret,
};
use crate::helpers::{CLIENT, DEADLINE, TestApp, eventually, spawn_demo_app_with};

async fn app() -> TestApp {
    spawn_demo_app_with(|c| {
        with_secret(c);
        c.auth_audience = Some("llm-stream".into());
        c.auth_issuer = Some("https://app.example".into());
    })
    .await
}

/// Claims that satisfy [`app`]'s issuer and audience.
fn good(sub: &str) -> serde_json::Value {
    let mut claims = claims(sub);
    claims["iss"] = json!("https://app.example");
    claims["aud"] = json!(["other", "llm-stream"]);
    claims
}

fn with(mut claims: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

fn b64(json: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

#[tokio::test]
async fn a_request_without_a_token_is_refused_401_with_a_bare_bearer_challenge() {
    let app = app().await;

    for path in [
        "/api/stream?q=hi",
        "/api/limits",
        "/api/conversations/0123456789abcdef0123456789abcdef",
    ] {
        let refusal = refused(&format!("{}{path}", app.address), &[]).await;

        assert_eq!(refusal.status, 401, "{path}");
        assert_eq!(
            refusal.www_authenticate.as_deref(),
            Some(r#"Bearer realm="llm-stream""#),
            "{path}"
        );
        assert_eq!(refusal.code, "unauthorized", "{path}");
        assert!(
            refusal.message.contains("You are not signed in"),
            "{path}: {}",
            refusal.message
        );
    }
    let cancel = CLIENT
        .post(format!(
            "{}/api/stream/0123456789abcdef0123456789abcdef/cancel",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 401);
    assert_eq!(app.mock.request_count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_valid_token_in_the_header_or_the_cookie_streams_as_that_user() {
    let app = app().await;
    let token = hs256(&good("alice"));

    let by_header =
        crate::helpers::SseReader::get(app.stream_url("hi"), &[("Authorization", &bearer(&token))])
            .await
            .read_to_end()
            .await;
    let cookie = format!("other=1; llm_stream_token={token}");
    let by_cookie = crate::helpers::SseReader::get(app.stream_url("hi"), &[("Cookie", &cookie)])
        .await
        .read_to_end()
        .await;
    let (status, _, limits) = get(
        &format!("{}/api/limits", app.address),
        &[("Cookie", &cookie)],
    )
    .await;

    assert!(by_header.ended_with_done(), "{}", by_header.body);
    assert!(by_cookie.ended_with_done(), "{}", by_cookie.body);
    assert_eq!(status, 200);
    assert_eq!(limits["client"], json!({"kind": "user", "sub": "alice"}));
}

#[tokio::test]
async fn the_header_wins_over_the_cookie() {
    let app = app().await;
    let (alice, bob) = (hs256(&good("alice")), hs256(&good("bob")));
    let limits = format!("{}/api/limits", app.address);

    let (_, _, both) = get(
        &limits,
        &[
            ("Authorization", &bearer(&alice)),
            ("Cookie", &format!("llm_stream_token={bob}")),
        ],
    )
    .await;
    let bad_header = refused(
        &limits,
        &[
            ("Authorization", "Bearer not.a.jwt"),
            ("Cookie", &format!("llm_stream_token={bob}")),
        ],
    )
    .await;

    assert_eq!(both["client"]["sub"], "alice");
    assert_eq!(
        bad_header.status, 401,
        "a refused header is not saved by a good cookie"
    );
}

#[tokio::test]
async fn every_invalid_token_is_refused_with_invalid_token_and_a_reason_a_person_can_act_on() {
    let app = app().await;
    let other_secret = {
        let key =
            jsonwebtoken::EncodingKey::from_secret(b"another-secret-entirely-0123456789").unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &good("alice"), &key).unwrap()
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good("alice"))
    );
    let cases = [
        (
            hs256(&with(good("alice"), "exp", json!(now() - 180 - 30))),
            "expired 3 minutes ago",
        ),
        (other_secret, "signature does not verify"),
        (
            hs256(&with(good("alice"), "aud", json!("someone-else"))),
            "another audience",
        ),
        (
            hs256(&with(good("alice"), "iss", json!("https://evil.example"))),
            "another issuer",
        ),
        (
            hs256(&with(good("alice"), "nbf", json!(now() + 630))),
            "not valid yet: it becomes valid in 10 minutes",
        ),
        (
            hs256(&with(good("alice"), "iat", json!(now() + 630))),
            "issued 10 minutes from now",
        ),
        (
            hs256(&with(good("alice"), "exp", json!(null))),
            "no exp claim",
        ),
        (
            hs256(&with(good("alice"), "sub", json!(null))),
            "sub claim must name the user",
        ),
        (
            hs256(&with(good("alice"), "sub", json!(""))),
            "sub claim must name the user",
        ),
        (
            hs256(&with(good("alice"), "sub", json!(42))),
            "sub claim must name the user",
        ),
        (
            hs256(&with(good("alice"), "sub", json!("x".repeat(257)))),
            "sub claim must name the user",
        ),
        (
            hs256(&with(good("alice"), "llm_stream", json!({"burst": -1}))),
            "llm_stream claim is not valid",
        ),
        (
            hs256(&with(good("alice"), "llm_stream", json!({"burst": 2.5}))),
            "llm_stream claim is not valid",
        ),
        (
            hs256(&with(good("alice"), "llm_stream", json!({"plan": "gold"}))),
            "unknown field `plan`",
        ),
        (
            hs256(&with(
                good("alice"),
                "llm_stream",
                json!({"max_streams": 0}),
            )),
            "max_streams is 0",
        ),
        ("abc".to_owned(), "not a valid JWT"),
        (none, "such as none"),
    ];

    for (token, reason) in cases {
        let refusal = refused(&app.stream_url("hi"), &[("Authorization", &bearer(&token))]).await;

        assert_eq!(refusal.status, 401, "{reason}");
        assert_eq!(refusal.code, "unauthorized", "{reason}");
        assert!(
            refusal.message.contains(reason),
            "{reason}: {}",
            refusal.message
        );
        let challenge = refusal.www_authenticate.unwrap();
        assert!(
            challenge.starts_with(
                r#"Bearer realm="llm-stream", error="invalid_token", error_description=""#
            ),
            "{challenge}"
        );
        assert!(
            challenge.contains(reason.split('`').next().unwrap()),
            "{challenge}"
        );
        assert!(
            !refusal.message.contains(&token) && !challenge.contains(&token),
            "the token is never echoed"
        );
    }
    assert_eq!(app.mock.request_count(), 0);
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_accepted_and_one_beyond_it_is_not() {
    let app = spawn_demo_app_with(|c| {
        with_secret(c);
        c.auth_leeway_secs = 30;
    })
    .await;
    let limits = format!("{}/api/limits", app.address);
    let within = hs256(&with(claims("alice"), "exp", json!(now() - 10)));
    let beyond = hs256(&with(claims("alice"), "exp", json!(now() - 45)));

    let (status, _, _) = get(&limits, &[("Authorization", &bearer(&within))]).await;
    let refusal = refused(&limits, &[("Authorization", &bearer(&beyond))]).await;

    assert_eq!(status, 200);
    assert_eq!(refusal.status, 401);
    assert!(
        refusal.message.contains("expired 45 seconds ago")
            || refusal.message.contains("expired 46 seconds ago"),
        "{}",
        refusal.message
    );
}

#[tokio::test]
async fn with_anonymous_requests_served_a_bad_token_is_still_refused_never_downgraded() {
    let app = spawn_demo_app_with(|c| {
        with_secret(c);
        c.auth_anonymous = Some(true);
    })
    .await;
    let limits = format!("{}/api/limits", app.address);
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&claims("alice"))
    );

    let (status, _, anonymous) = get(&limits, &[]).await;
    let refusal = refused(&limits, &[("Authorization", &bearer(&none))]).await;
    let (_, _, user) = get(&limits, &[("Authorization", &bearer(&token_for("alice")))]).await;

    assert_eq!(status, 200);
    assert_eq!(anonymous["client"], json!({"kind": "anonymous"}));
    assert_eq!(refusal.status, 401);
    assert_eq!(user["client"]["kind"], "user");
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let rsa = keys::Key::rsa("rsa-1");
    let jwks = JwksServer::start(Some(keys::set(&[&rsa]))).await;
    let pem = rsa.public_pem.clone().unwrap();
    let confused = {
        let key = jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims("mallory"), &key).unwrap()
    };
    let jwks_only =
        spawn_demo_app_with(|c| c.auth_jwks_url = Some(jwks.url.parse().unwrap())).await;
    let both = spawn_demo_app_with(|c| {
        with_secret(c);
        c.auth_jwks_url = Some(jwks.url.parse().unwrap());
    })
    .await;
    let genuine = rsa.sign(&claims("alice"));
    eventually("the key set to be fetched", DEADLINE, || async {
        get(
            &format!("{}/api/limits", jwks_only.address),
            &[("Authorization", &bearer(&genuine))],
        )
        .await
        .0 == 200
    })
    .await;

    let refused_alone = refused(
        &format!("{}/api/limits", jwks_only.address),
        &[("Authorization", &bearer(&confused))],
    )
    .await;
    let refused_with_secret = refused(
        &format!("{}/api/limits", both.address),
        &[("Authorization", &bearer(&confused))],
    )
    .await;

    assert_eq!(refused_alone.status, 401);
    assert!(
        refused_alone.message.contains("shared-secret algorithm"),
        "{}",
        refused_alone.message
    );
    assert_eq!(refused_with_secret.status, 401);
    assert!(
        refused_with_secret
            .message
            .contains("signature does not verify"),
        "{}",
        refused_with_secret.message
    );
    let _ = SECRET;
}

#[tokio::test]
async fn refusals_are_counted_and_spend_the_address_rate_like_questions() {
    let app = spawn_demo_app_with(|c| {
        with_secret(c);
        c.rate_limit_per_minute = 2;
    })
    .await;
    let bad = [
        ("Authorization", "Bearer bad.token.here"),
        ("X-Real-IP", "198.51.100.77"),
    ];

    let first = refused(&app.stream_url("hi"), &bad).await;
    let second = refused(&format!("{}/api/limits", app.address), &bad).await;
    let third = refused(&app.stream_url("hi"), &bad).await;
    let metrics = crate::metrics::scrape(&app).await;

    assert_eq!((first.status, second.status), (401, 401));
    assert_eq!(
        third.status, 429,
        "guessing tokens is as slow as asking questions"
    );
    assert_eq!(third.code, "rate_limited");
    assert!(
        metrics.contains(r#"llm_stream_refusals_total{reason="unauthorized"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains("bad.token.here"));
}

#[test]
fn a_bad_auth_setting_stops_start_up_with_one_line_that_names_it() {
    for (args, names) in [
        (vec!["--auth-jwks-url", "not a url"], "AUTH_JWKS_URL"),
        (
            vec!["--auth-jwks-url", "ftp://keys.example/jwks"],
            "AUTH_JWKS_URL",
        ),
        (vec!["--auth-jwt-secret", "  "], "AUTH_JWT_SECRET"),
        (vec!["--auth-issuer", "https://app.example"], "AUTH_ISSUER"),
        (vec!["--auth-audience", "llm-stream"], "AUTH_AUDIENCE"),
        (
            vec!["--auth-login-url", "https://app.example/login"],
            "AUTH_LOGIN_URL",
        ),
        (
            vec!["--auth-jwt-secret", "s3cret", "--auth-cookie", "a b"],
            "AUTH_COOKIE",
        ),
        (
            vec!["--auth-jwt-secret", "s3cret", "--auth-leeway-secs", "99999"],
            "AUTH_LEEWAY_SECS",
        ),
    ] {
        let mut argv = vec!["llm-stream"];
        argv.extend(args.iter().copied());
        match Config::from_args(argv) {
            Err(ConfigExit::Invalid(line)) => {
                assert!(line.contains(names), "{args:?}: {line}");
                assert_eq!(line.lines().count(), 1, "{line}");
                assert!(!line.contains("s3cret"), "{line}");
            }
            other => panic!("{args:?} was accepted: {}", other.is_ok()),
        }
    }
}
