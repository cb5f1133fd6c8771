//! A cancel and a lost connection, over HTTP/2: each touches only its own answers.

use std::time::Duration;

use super::{MockH2, ask, open, serve, text_of};
use crate::helpers::{cancel, eventually};

#[tokio::test]
async fn a_cancel_resets_its_stream_within_a_second_and_leaves_the_others_streaming() {
    let mock = MockH2::start(100).await;
    let server = serve(&mock, &[]).await;
    let (kept, _) = open(&server, "kept t40g50").await;
    let (_stopped, id) = open(&server, "stopped t600g50").await;

    assert!(matches!(
        cancel(&server.address, &id).await,
        200 | 202 | 204
    ));

    eventually(
        "the upstream sees RST_STREAM",
        Duration::from_secs(1),
        || async { mock.stream("stopped").is_some_and(|s| s.reset) },
    )
    .await;
    let kept = kept.read_to_end().await;
    assert_eq!(
        kept.text(),
        text_of(40)[5..],
        "the rest of the other answer"
    );
    assert!(kept.ended_with_done());
    assert_eq!(
        mock.connections(),
        ["h2"],
        "both on one connection, which lives on"
    );
}

#[tokio::test]
async fn a_goaway_mid_answer_ends_only_the_answers_on_that_connection() {
    let mock = MockH2::start(2).await;
    let server = serve(&mock, &[]).await;
    let mut readers = Vec::new();
    for i in 0..4 {
        let tag = format!("away{i}");
        readers.push((
            tag.clone(),
            open(&server, &format!("{tag} t100g50")).await.0,
        ));
    }
    assert_eq!(mock.connections(), ["h2"; 2]);

    mock.shut(0);

    for (tag, reader) in readers {
        let answer = reader.read_to_end().await;
        if mock.stream(&tag).unwrap().connection == 0 {
            let error = answer
                .error()
                .unwrap_or_else(|| panic!("{tag} ends in an error: {:?}", answer.events));
            assert_eq!(error["error"], "stream_interrupted", "{tag}");
        } else {
            assert_eq!(answer.text(), text_of(100)[5..], "{tag} is whole");
            assert!(answer.ended_with_done(), "{tag}");
        }
    }
    // The next question gets a connection that works.
    let after = ask(&server, "after").await;
    assert_eq!(after.text(), text_of(5));
    assert_ne!(mock.stream("after").unwrap().connection, 0);
}

#[tokio::test]
async fn a_question_refused_by_a_connection_going_away_is_sent_again_at_once_on_a_new_one() {
    let mock = MockH2::start(100).await;
    // No retries: only the HTTP/2 layer's own second try can save the question.
    let server = serve(&mock, &["--llm-retries", "0"]).await;
    assert_eq!(ask(&server, "first").await.text(), text_of(5));

    mock.refuse_streams(0);
    let second = ask(&server, "second").await;

    assert_eq!(second.text(), text_of(5));
    assert!(second.ended_with_done());
    assert_eq!(mock.stream("second").unwrap().connection, 1);
    assert_eq!(mock.connections(), ["h2"; 2]);
}
