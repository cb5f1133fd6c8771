//! The ids a page keeps in sessionStorage (its conversation's, the answer in progress's) go back to
//! the server only in the one shape the server makes: 32 lowercase hex digits. Anything else left
//! there (an older page's, a hand-edited one) is ignored, and the page starts fresh.

use std::time::Duration;

use serde_json::Value;

use super::*;

/// The page's requests to the API, by the browser's own record (query strings included).
async fn api_requests(browser: &Browser) -> Vec<String> {
    serde_json::from_value(
        browser
            .js(
                "return performance.getEntriesByType('resource').map((e) => new URL(e.name))
                     .filter((u) => u.pathname.startsWith('/api/'))
                     .map((u) => u.pathname + u.search);",
            )
            .await,
    )
    .expect("names")
}

/// Reloads the page with `key` set to `value` in sessionStorage, and waits until it is ready to
/// be asked (whatever it did with the value on load has ended by then).
async fn reload_with(browser: &Browser, key: &str, value: &str) -> View {
    browser
        .js_with(
            "sessionStorage.clear(); sessionStorage.setItem(arguments[0], arguments[1]);",
            vec![Value::from(key), Value::from(value)],
        )
        .await;
    browser.client.refresh().await.expect("reload");
    let found = browser
        .wait_for(
            "the reloaded page to be ready",
            &format!(
                "{VIEW} return !view.ask_disabled && view.state !== 'connecting' ? view : null;"
            ),
            &describe(),
        )
        .await;
    serde_json::from_value(found).expect("a view")
}

async fn wait_for_done(browser: &Browser) -> View {
    wait_for_state(browser, "done").await
}

#[tokio::test]
async fn a_kept_conversation_id_of_another_shape_is_never_sent_and_a_well_formed_one_is() {
    // Arrange: a conversation of one turn, so the server knows its (well-formed) id.
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["Noted", "."], Duration::ZERO)));
    let browser = open_page(&app).await;
    ask(&browser, "Remember this").await;
    wait_for_done(&browser).await;
    let id = browser
        .js("return sessionStorage.getItem('llm-stream.conversation');")
        .await;
    let id = id.as_str().expect("a conversation id").to_owned();
    assert_eq!(id.len(), 32, "{id}");

    for malformed in [
        id[..16].to_owned(),
        id.to_uppercase(),
        format!("{id}{id}"),
        format!("{}g", &id[..31]),
    ] {
        // Act: a page that kept a malformed id, and a question on it.
        let idle = reload_with(&browser, "llm-stream.conversation", &malformed).await;
        ask(&browser, "Fresh?").await;
        let done = wait_for_done(&browser).await;

        // Assert: nothing fetched back, the question asked in a new conversation.
        assert_eq!(
            (idle.turns, idle.status.as_str()),
            (0, "Ready"),
            "{malformed}"
        );
        assert_eq!(done.turns, 1, "{malformed}");
        let requests = api_requests(&browser).await;
        assert_eq!(requests.len(), 1, "{malformed}: {requests:?}");
        assert!(
            requests[0].starts_with("/api/stream?") && !requests[0].contains("conversation="),
            "{malformed}: {requests:?}"
        );
    }

    // Act: a page that kept the well-formed id.
    let restored = reload_with(&browser, "llm-stream.conversation", &id).await;
    ask(&browser, "And now?").await;
    wait_for_done(&browser).await;

    // Assert: its turn fetched back, and the follow-up asked in it.
    assert_eq!(restored.turns, 1, "{restored:?}");
    let requests = api_requests(&browser).await;
    assert_eq!(
        requests[0],
        format!("/api/conversations/{id}"),
        "{requests:?}"
    );
    assert!(
        requests[1].ends_with(&format!("&conversation={id}")),
        "{requests:?}"
    );
    assert_eq!(app.mock.request_count(), 6);
}

#[tokio::test]
async fn a_kept_answer_whose_stream_id_is_of_another_shape_is_not_resumed_and_a_well_formed_one_is()
{
    // Arrange
    let app = spawn_app().await;
    let browser = open_page(&app).await;
    let well_formed = "0123456789abcdef0123456789abcdef";
    let kept = |stream: &str| {
        serde_json::json!({ "q": "An old question", "stream": stream, "lastId": format!("{stream}:7") })
            .to_string()
    };

    for malformed in [
        &well_formed[..16],
        &well_formed.to_uppercase(),
        &format!("{well_formed}{well_formed}"),
    ] {
        // Act
        let idle = reload_with(&browser, "llm-stream.answer", &kept(malformed)).await;

        // Assert: nothing asked of the server, nothing said to have failed.
        assert_eq!(
            (
                idle.state.as_str(),
                idle.status.as_str(),
                idle.error.as_str()
            ),
            ("idle", "Ready", ""),
            "{malformed}"
        );
        assert_eq!(
            api_requests(&browser).await,
            Vec::<String>::new(),
            "{malformed}"
        );
    }

    // Act: the well-formed one (the server does not know it).
    let refused = reload_with(&browser, "llm-stream.answer", &kept(well_formed)).await;

    // Assert: it was asked for, from its start.
    assert_eq!(
        refused.status, "Ready — the answer in progress could not be continued",
        "{refused:?}"
    );
    let requests = api_requests(&browser).await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].ends_with(&format!("&last_event_id={well_formed}%3A0")),
        "{requests:?}"
    );
    assert_eq!(app.mock.request_count(), 0);
}
