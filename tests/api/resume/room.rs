//! RESUME_MAX_BYTES is the room of the whole store: a running answer makes room by evicting the
//! oldest finished answers, and only an answer that would not fit even then is cut.

use std::time::Duration;

use crate::{
    helpers::{SseReader, TestApp, spawn_app_with},
    mock_upstream::{Reply, openai},
};

/// An app whose store holds `max_bytes`, answering `kib` KiB of text in 100-byte tokens.
async fn app_answering(max_bytes: u64, kib: usize) -> (TestApp, String) {
    let app = spawn_app_with(|c| c.resume_max_bytes = max_bytes).await;
    let token = "x".repeat(99) + " ";
    let tokens = vec![token.as_str(); kib * 1024 / 100];
    app.mock
        .always(Reply::sse(openai::answer(&tokens, Duration::ZERO)));
    (app, tokens.concat())
}

crate::both_stores! {
    async fn an_answer_of_a_tenth_of_the_store_is_not_cut() {
        let (app, text) = app_answering(1_000_000, 100).await;

        let answer = app.stream("long").await;

        assert!(answer.ended_with_done(), "{:?}", answer.error());
        assert_eq!(answer.text(), text);
    }

    async fn a_long_answer_evicts_the_oldest_finished_answers_to_make_room() {
        // Each answer's log holds about 180 bytes per 100-byte token (its frame and id): the first
        // takes some 180 KB, the second some 210 KB, and both do not fit in 300 KB.
        let (app, _) = app_answering(300_000, 100).await;
        let first = app.stream("first").await;
        assert!(first.ended_with_done());
        let first_event = first.events[0].id.clone().expect("an id");
        let token = "y".repeat(99) + " ";
        let long = vec![token.as_str(); 1200];
        app.mock
            .always(Reply::sse(openai::answer(&long, Duration::ZERO)));

        let second = app.stream("second").await;

        assert!(second.ended_with_done(), "{:?}", second.error());
        assert_eq!(second.text(), long.concat());
        let second_event = second.events[0].id.clone().expect("an id");
        let resume = |question: &'static str, id: String| {
            let url = app.stream_url(question);
            async move { SseReader::get(url, &[("Last-Event-ID", &id)]).await.status }
        };
        assert_eq!(
            resume("first", first_event).await,
            crate::helpers::status_of_an_evicted_answer(),
            "evicted for room"
        );
        assert_eq!(resume("second", second_event).await, 200, "kept");
    }

    async fn many_short_running_answers_share_the_store_without_being_cut() {
        // Twenty answers held open at once in a 64 KiB store: each holds a few hundred bytes, and
        // takes about a kilobyte of room (it took 16 KiB, and the fifth was cut after one token).
        let app = spawn_app_with(|c| {
            c.resume_max_bytes = 64 << 10;
            c.max_streams_per_client = 100;
        })
        .await;
        app.mock.always(Reply::sse(openai::answer(
            &["one ", "two ", "three "],
            Duration::from_millis(300),
        )));

        let answers = futures_util::future::join_all((0..20).map(|i| {
            let url = app.stream_url(&format!("short {i}"));
            async move { SseReader::get(url, &[]).await.read_to_end().await }
        }))
        .await;

        for answer in &answers {
            assert!(answer.ended_with_done(), "{:?}", answer.error());
            assert_eq!(answer.text(), "one two three ");
        }
    }

    async fn an_answer_larger_than_the_whole_store_is_cut_with_too_long() {
        let (app, text) = app_answering(100_000, 200).await;

        let answer = app.stream("too long").await;

        assert_eq!(
            answer.error().expect("an in-band error")["error"],
            "too_long"
        );
        let kept = answer.text().len();
        // The log holds each token's frame and id too: cut when the log, not the text, is full; far
        // past the sixteenth of the store one answer used to be allowed.
        assert!(
            kept > 40_000 && kept < text.len(),
            "cut near the store's size: {kept}"
        );
    }
}
