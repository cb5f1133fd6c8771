//! How answers spread over connections.

use futures_util::future::join_all;

use super::{MockH2, ask, open, serve, text_of};
use crate::helpers::{DEADLINE, eventually};

#[tokio::test]
async fn concurrent_answers_share_as_few_connections_as_the_servers_stream_limit_allows() {
    let mock = MockH2::start(4).await;
    let server = serve(&mock, &[]).await;

    // Ten answers of two seconds each, all asked at once.
    let questions: Vec<String> = (0..10).map(|i| format!("many{i} t40g50")).collect();
    let answers = join_all(questions.iter().map(|q| ask(&server, q))).await;

    for (question, answer) in questions.iter().zip(&answers) {
        assert_eq!(answer.text(), text_of(40), "the answer to {question:?}");
        assert!(answer.ended_with_done(), "{question:?} ends with [DONE]");
    }
    assert_eq!(
        mock.connections(),
        ["h2"; 3],
        "ten answers, four a connection"
    );
    let streams = mock.streams();
    assert_eq!(streams.len(), 10, "one stream per answer");
    for connection in 0..3 {
        let on = streams
            .iter()
            .filter(|s| s.connection == connection)
            .count();
        assert!(
            on <= 4,
            "connection {connection} carried {on} answers at once"
        );
    }
}

#[tokio::test]
async fn an_answer_beyond_the_servers_stream_limit_does_not_wait_for_the_earlier_ones() {
    let mock = MockH2::start(2).await;
    let server = serve(&mock, &[]).await;
    // Two answers of thirty seconds fill the first connection.
    let (_a, _) = open(&server, "long-a t600g50").await;
    let (_b, _) = open(&server, "long-b t600g50").await;

    let quick = ask(&server, "quick t3g10").await;

    assert_eq!(quick.text(), text_of(3));
    assert!(quick.ended_with_done());
    let (a, b) = (
        mock.stream("long-a").unwrap(),
        mock.stream("long-b").unwrap(),
    );
    assert!(!a.ended && !b.ended, "the long answers are still streaming");
    assert_eq!(a.connection, b.connection);
    assert_ne!(mock.stream("quick").unwrap().connection, a.connection);
    assert_eq!(mock.connections(), ["h2"; 2]);
}

#[tokio::test]
async fn an_upstream_that_offers_only_http1_answers_over_a_connection_each() {
    let mock = MockH2::http1_only().await;
    let server = serve(&mock, &[]).await;

    let questions: Vec<String> = (0..3).map(|i| format!("h1-{i} t20g50")).collect();
    let answers = join_all(questions.iter().map(|q| ask(&server, q))).await;

    for answer in &answers {
        assert_eq!(answer.text(), text_of(20));
        assert!(answer.ended_with_done());
    }
    assert_eq!(mock.connections(), ["http/1.1"; 3]);
    // And it is remembered: the next answer goes straight to HTTP/1.1.
    assert_eq!(ask(&server, "h1-again").await.text(), text_of(5));
    assert_eq!(mock.connections(), ["http/1.1"; 4]);
}

#[tokio::test]
async fn with_llm_http2_off_an_upstream_offering_http2_gets_http1() {
    let mock = MockH2::start(100).await;
    let server = serve(&mock, &["--llm-http2", "off"]).await;

    let questions: Vec<String> = (0..3).map(|i| format!("off-{i} t20g50")).collect();
    let answers = join_all(questions.iter().map(|q| ask(&server, q))).await;

    for answer in &answers {
        assert_eq!(answer.text(), text_of(20));
    }
    eventually("three HTTP/1.1 connections", DEADLINE, || async {
        mock.connections() == ["http/1.1"; 3]
    })
    .await;
}

#[tokio::test]
async fn a_fallback_upstream_over_https_gets_http2_too() {
    let mock = MockH2::start(100).await;
    let refusing = crate::mock_upstream::refusing_url();
    let fallback = [
        "--llm-fallback-base-url",
        &mock.url,
        "--llm-fallback-api-key",
        "sk-fallback",
        "--max-streams-per-client",
        "100",
    ];
    let server = crate::redis::harness::Process::alone(&refusing, &mock.trust(), &fallback).await;

    let questions: Vec<String> = (0..3).map(|i| format!("fb-{i} t20g50")).collect();
    let answers = join_all(questions.iter().map(|q| ask(&server, q))).await;

    for answer in &answers {
        assert_eq!(answer.text(), text_of(20));
        assert!(answer.ended_with_done());
    }
    assert_eq!(
        mock.connections(),
        ["h2"],
        "three answers on one connection"
    );
}
