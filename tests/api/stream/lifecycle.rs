//! Who owns what: a client that leaves or stops reading cancels or holds back the upstream, a
//! reconnecting EventSource is told to stop, and shutdown finishes or ends the streams.

use std::time::Duration;

use crate::{
    helpers::{DEADLINE, SseReader, spawn_app, spawn_app_with, spawn_demo_app_with},
    mock_upstream::{End, Reply, Step, openai},
};

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["tok "; 200], 20 * MS)));

    let mut reader = app.open("hi").await;
    reader.next_data().await.expect("a first token");
    drop(reader);

    app.mock.wait_for_closed(1, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_that_disconnects_while_the_upstream_is_silent_cancels_it() {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(vec![]).then(End::Hang));

    let reader = app.open("hi").await;
    app.mock.wait_for_requests(1, DEADLINE).await;
    drop(reader);

    app.mock.wait_for_closed(1, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_upstream_that_streams_without_end_cannot_grow_an_answer_without_bound() {
    let app = spawn_app_with(|c| {
        c.stream_timeout = std::time::Duration::from_secs_f64(30.0);
        // One answer may hold the whole store, no more.
        c.resume_max_bytes = 1 << 20;
    })
    .await;
    app.mock.always(Reply::sse(vec![Step::Flood]));

    // Open the stream but never read the body: the answer is kept for resuming meanwhile.
    let response = reqwest::get(app.stream_url("hi")).await.unwrap();
    // The answer is cut at its size limit long before its timeout, closing the upstream.
    app.mock.wait_for_closed(1, DEADLINE).await;
    let read = app.mock.flooded_bytes();

    assert!(
        read < 32 << 20,
        "the server read {read} bytes for a client that read nothing"
    );
    app.mock
        .wait_until("the slot to be free", DEADLINE, |_| {
            app.store.streams_open_here() == 0
        })
        .await;
    let answer = SseReader::from_response(response).read_to_end().await;
    assert_eq!(
        answer.error().expect("an in-band error")["error"],
        "too_long"
    );
}

#[tokio::test]
async fn a_resume_of_an_unknown_stream_is_told_not_to_reconnect() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&["x"], Duration::ZERO)));

    let reader = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", "abc:3")]).await;

    assert_eq!(reader.status, 204);
    assert_eq!(app.mock.request_count(), 0, "the model is not asked again");
}

#[tokio::test]
async fn on_shutdown_running_streams_finish_within_the_grace() {
    let mut app = spawn_demo_app_with(|c| {
        c.demo_token_interval = std::time::Duration::from_millis(5);
        c.shutdown_grace = std::time::Duration::from_secs_f64(10.0);
    })
    .await;
    let mut reader = app.open("hi").await;
    reader.next_data().await.expect("a first token");

    app.begin_shutdown();
    let answer = reader.read_to_end().await;

    assert!(
        answer.ended_with_done(),
        "a stream that fits in the grace finishes normally"
    );
    app.stopped().await.unwrap();
}

#[tokio::test]
async fn on_shutdown_streams_past_the_grace_end_with_server_shutdown() {
    let mut app =
        spawn_app_with(|c| c.shutdown_grace = std::time::Duration::from_secs_f64(0.5)).await;
    app.mock
        .always(Reply::sse(vec![openai::token("still going")]).then(End::Hang));
    let mut reader = app.open("hi").await;
    reader.next_data().await.expect("a first token");

    app.begin_shutdown();
    let answer = reader.read_to_end().await;

    assert_eq!(
        answer.error().expect("an in-band error, not a silent cut")["error"],
        "server_shutdown"
    );
    app.stopped().await.unwrap();
    app.mock.wait_for_closed(1, DEADLINE).await;
}

#[tokio::test]
async fn after_shutdown_begins_no_new_connection_is_accepted() {
    let mut app = spawn_demo_app_with(|_| {}).await;
    app.stopped().await.unwrap();

    let result = reqwest::get(format!("{}/healthz", app.address)).await;

    assert!(result.is_err(), "the listener is closed");
}
