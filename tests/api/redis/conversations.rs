//! Conversations on Redis: a follow-up that lands on another instance sees the history, and a
//! conversation's answer running on one instance makes it busy on the other.

use std::time::Duration;

use serde_json::Value;

use super::harness::{pair, stream_url};
use crate::{
    helpers::{CLIENT, SseReader, eventually},
    mock_upstream::{Reply, openai},
};

fn with_conversation(address: &str, question: &str, conversation: &str) -> String {
    let mut url = reqwest::Url::parse(&stream_url(address, question)).unwrap();
    url.query_pairs_mut()
        .append_pair("conversation", conversation);
    url.to_string()
}

#[tokio::test]
async fn a_follow_up_on_the_other_instance_sees_the_history() {
    let pair = pair(|_| {}).await;
    pair.mock
        .then_reply(Reply::sse(openai::answer(&["Paris"], Duration::ZERO)));
    pair.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

    let first = SseReader::get(stream_url(&pair.a.address, "Capital of France?"), &[])
        .await
        .read_to_end()
        .await;
    let id = first.opening.as_ref().unwrap().json()["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    // The turn is filed as the answer ends, in the background: ask for it until it is there.
    eventually("B to see the turn", crate::helpers::DEADLINE, || async {
        let view: Value = CLIENT
            .get(format!("{}/api/conversations/{id}", pair.b.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        view["turns"].as_array().is_some_and(|t| t.len() == 1)
    })
    .await;
    let second = SseReader::get(
        with_conversation(&pair.b.address, "Its population?", &id),
        &[],
    )
    .await
    .read_to_end()
    .await;

    assert_eq!(second.opening.as_ref().unwrap().json()["turn"], 2);
    let messages = pair.mock.requests()[1].json()["messages"].clone();
    let contents: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents[1..],
        ["Capital of France?", "Paris", "Its population?"]
    );
}

#[tokio::test]
async fn a_conversation_answering_on_one_instance_is_busy_on_the_other() {
    let pair = pair(|_| {}).await;
    pair.mock.always(Reply::sse(openai::answer(
        &["slow "; 20],
        Duration::from_millis(50),
    )));
    let mut running = SseReader::get(stream_url(&pair.a.address, "first"), &[]).await;
    let mut id = None;
    while id.is_none() {
        let event = running.next().await.expect("the opening event");
        id = event.json()["conversation"].as_str().map(str::to_owned);
    }

    let busy = CLIENT
        .get(with_conversation(&pair.b.address, "second", &id.unwrap()))
        .send()
        .await
        .unwrap();

    assert_eq!(busy.status(), 409);
    assert_eq!(pair.mock.request_count(), 1);
}
