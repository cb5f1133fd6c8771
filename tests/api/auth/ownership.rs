//! Answers and conversations belong to their user: another user, or an anonymous request, cannot
//! resume, cancel, read or follow up on them, and is told exactly what an unknown id is told; the
//! owner can, from another address and through the other instance.

use std::time::Duration;

use super::{bearer, get, token_for, with_secret};
use crate::{
    helpers::{CLIENT, SseReader, spawn_app_with},
    mock_upstream::{End, Reply, openai},
    redis::harness::{pair, stream_url},
};

fn resume_url(url: &str, last: &str) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    url.query_pairs_mut().append_pair("last_event_id", last);
    url.to_string()
}

async fn cancel(address: &str, stream: &str, auth: Option<&str>) -> u16 {
    let mut request = CLIENT.post(format!("{address}/api/stream/{stream}/cancel"));
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn another_user_cannot_follow_up_or_read_a_conversation_and_learns_nothing() {
    let app = spawn_app_with(|c| {
        with_secret(c);
        c.auth_anonymous = Some(true);
    })
    .await;
    app.mock.always(Reply::sse(openai::answer(
        &["secret ", "answer"],
        Duration::ZERO,
    )));
    let (alice, bob) = (bearer(&token_for("alice")), bearer(&token_for("bob")));
    let first = SseReader::get(
        app.stream_url("alice's private question"),
        &[("Authorization", &alice)],
    )
    .await
    .read_to_end()
    .await;
    let conversation = first.opening.as_ref().unwrap().json()["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = format!("{}/api/conversations/{conversation}", app.address);

    let (by_alice, _, turns) = get(
        &read,
        &[("Authorization", &alice), ("X-Real-IP", "203.0.113.9")],
    )
    .await;
    let (by_bob, _, bob_body) = get(&read, &[("Authorization", &bob)]).await;
    let (by_nobody, _, _) = get(&read, &[]).await;
    let (unknown, _, unknown_body) = get(
        &format!("{}/api/conversations/{}", app.address, "ab".repeat(16)),
        &[("Authorization", &bob)],
    )
    .await;
    let mut url = reqwest::Url::parse(&app.stream_url("follow up")).unwrap();
    url.query_pairs_mut()
        .append_pair("conversation", &conversation);
    let follow_up = SseReader::get(url.to_string(), &[("Authorization", &bob)])
        .await
        .read_to_end()
        .await;

    assert_eq!(by_alice, 200);
    assert_eq!(turns["turns"].as_array().unwrap().len(), 1);
    assert_eq!((by_bob, by_nobody), (404, 404));
    assert_eq!(bob_body, unknown_body, "the same answer as an unknown id");
    assert_eq!(unknown, 404);
    let bobs = follow_up.opening.as_ref().unwrap().json();
    assert_ne!(
        bobs["conversation"], conversation,
        "a new conversation, as for an unknown id"
    );
    assert_eq!(bobs["turn"], 1);
    let upstream = app.mock.requests().last().unwrap().json().to_string();
    assert!(
        !upstream.contains("private question") && !upstream.contains("secret answer"),
        "{upstream}"
    );
}

#[tokio::test]
async fn across_two_instances_only_the_owner_resumes_and_cancels_an_answer() {
    let shared = pair(|c| {
        with_secret(c);
        c.auth_anonymous = Some(true);
        c.resume_grace = std::time::Duration::from_secs_f64(30.0);
    })
    .await;
    let tokens: Vec<String> = (0..200).map(|i| format!("t{i} ")).collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    shared
        .mock
        .always(Reply::sse(openai::answer(&refs, Duration::from_millis(20))).then(End::Hang));
    let (alice, bob) = (bearer(&token_for("alice")), bearer(&token_for("bob")));
    let (a, b) = (&shared.a.address, &shared.b.address);
    let mut reader = SseReader::get(stream_url(a, "hi"), &[("Authorization", &alice)]).await;
    let stream = reader.stream_id().await;
    let last = reader.next_data().await.unwrap().id.unwrap();
    drop(reader);

    for (address, auth) in [(a, Some(&bob)), (b, Some(&bob)), (b, None)] {
        let mut headers = vec![];
        if let Some(auth) = auth {
            headers.push(("Authorization", auth.as_str()));
        }
        let resumed = SseReader::get(resume_url(&stream_url(address, "hi"), &last), &headers).await;
        assert_eq!(resumed.status, 204, "{address} {auth:?}");
        assert_eq!(
            cancel(address, &stream, auth.map(String::as_str)).await,
            404
        );
    }
    let mut resumed = SseReader::get(
        resume_url(&stream_url(b, "hi"), &last),
        &[("Authorization", &alice), ("X-Real-IP", "198.51.100.3")],
    )
    .await;
    assert_eq!(resumed.status, 200);
    assert!(resumed.next_data().await.is_some());
    assert_eq!(cancel(b, &stream, Some(&alice)).await, 204);
}
