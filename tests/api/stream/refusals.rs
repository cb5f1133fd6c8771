//! Refusals before any stream: bad questions, unknown routes and wrong methods, and the health check.

use std::time::Duration;

use crate::{
    helpers::{SseReader, spawn_app},
    mock_upstream::{Reply, openai},
};

async fn refusal(app: &crate::helpers::TestApp, url: String) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(
        app.mock.request_count(),
        0,
        "a refused request never reaches the upstream"
    );
    (status, json)
}

#[tokio::test]
async fn bad_questions_are_refused_with_400_before_any_stream() {
    let app = spawn_app().await;
    let base = format!("{}/api/stream", app.address);
    for url in [
        base.clone(),
        format!("{base}?q="),
        format!("{base}?q=%20%0A%09"),
        app.stream_url(&"中".repeat(1001)),
        app.stream_url("nul\0byte"),
        app.stream_url("bell\u{7}"),
        app.stream_url("escape\u{1b}[31m"),
    ] {
        let (status, json) = refusal(&app, url.clone()).await;
        assert_eq!(status, 400, "{url}");
        assert_eq!(json["error"], "invalid_query", "{url}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn a_question_is_measured_in_characters_not_bytes() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    let answer = app.stream(&"中".repeat(1000)).await;
    assert_eq!(answer.status, 200);
    let answer = app.stream("tabs\tand\nnewlines are fine").await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_wrong_methods_405() {
    let app = spawn_app().await;

    let response = app.get("/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );

    let response = crate::helpers::CLIENT
        .post(format!("{}/api/stream?q=hi", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    for path in ["/", "/healthz", "/api/limits", "/metrics"] {
        let response = crate::helpers::CLIENT
            .delete(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{path}");
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_question_whose_percent_encoding_is_not_utf8_is_refused_not_changed() {
    let app = spawn_app().await;
    let base = format!("{}/api/stream", app.address);
    for (query, named) in [
        ("q=%FF%FE", "The question"),
        ("q=caf%E9", "The question"),
        // A character cut short, and one whose bytes are split by another parameter.
        ("q=%E4%B8", "The question"),
        ("q=%E4%B8&x=%AD", "The question"),
        ("q=hello&last_event_id=%C3", "The last_event_id parameter"),
        ("conversation=%80&q=hello", "The conversation parameter"),
        ("%FF=1&q=hello", "A parameter"),
    ] {
        let (status, json) = refusal(&app, format!("{base}?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(json["error"], "invalid_query", "{query}");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.starts_with(named) && message.contains("not valid UTF-8"),
            "{query}: {message}"
        );
    }
}

#[tokio::test]
async fn percent_encoded_utf8_and_plus_signs_still_reach_the_model_intact() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    let url = format!(
        "{}/api/stream?q=caf%C3%A9+%E4%B8%AD+%F0%9F%A6%80",
        app.address
    );
    let answer = SseReader::get(url, &[]).await.read_to_end().await;

    assert_eq!(answer.status, 200);
    assert_eq!(
        app.mock.requests()[0].json()["messages"][1]["content"],
        "café 中 🦀"
    );
}
