//! The page under sign-in: with the app's cookie a person's answer streams as ever; without it,
//! the page says in words that they are not signed in, with the sign-in link.

use std::time::Duration;

use super::*;
use crate::auth::{token_for, with_secret};

async fn signed_in_app() -> TestApp {
    let app = spawn_app_with(|c| {
        with_secret(c);
        c.auth_login_url = Some("https://app.example/login".parse().unwrap());
    })
    .await;
    app.mock.always(Reply::sse(openai::answer(
        &["Hello", " signed-in", " person."],
        Duration::ZERO,
    )));
    app
}

#[tokio::test]
async fn with_the_cookie_the_answer_streams() {
    let app = signed_in_app().await;
    let browser = open_page(&app).await;
    browser
        .js_with(
            "document.cookie = 'llm_stream_token=' + arguments[0] + '; path=/'; return null;",
            vec![serde_json::json!(token_for("alice"))],
        )
        .await;

    ask(&browser, "Who am I?").await;
    let done = wait_for_state(&browser, "done").await;

    assert_eq!(done.answer, "Hello signed-in person.");
    assert_eq!(done.error, "");
    assert_eq!(app.mock.request_count(), 1);
}

#[tokio::test]
async fn without_the_cookie_the_page_explains_sign_in_and_links_to_it() {
    let app = signed_in_app().await;
    let browser = open_page(&app).await;

    ask(&browser, "Who am I?").await;
    let refused = wait_for_state(&browser, "refused").await;

    assert_eq!(refused.status, "Refused — not signed in");
    assert!(
        refused
            .error
            .starts_with("You are not signed in, or your session has expired."),
        "{refused:?}"
    );
    assert_eq!(
        browser
            .js("const a = document.getElementById('sign-in'); return a && a.href;")
            .await,
        "https://app.example/login"
    );
    assert_eq!(app.mock.request_count(), 0, "nothing reached the upstream");
}
