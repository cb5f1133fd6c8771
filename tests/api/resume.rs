//! Durable answers on one instance: the opening event, resuming with `Last-Event-ID` or
//! `last_event_id=`, the grace after the last reader, explicit cancel, takeover and retention.

mod room;

use std::time::{Duration, Instant};

use crate::{
    helpers::{CLIENT, DEADLINE, SseReader, TestApp, eventually, spawn_app_with},
    mock_upstream::{Reply, openai},
};

const MS: Duration = Duration::from_millis(1);

/// Tokens "t0 " … "t39 ", 20 ms apart: long enough to drop and come back mid-answer.
fn numbered(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("t{i} ")).collect()
}

async fn app_with_answer(count: usize, gap: Duration, grace: f64) -> (TestApp, String) {
    let app = spawn_app_with(|c| c.resume_grace = std::time::Duration::from_secs_f64(grace)).await;
    let tokens = numbered(count);
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    app.mock.always(Reply::sse(openai::answer(&refs, gap)));
    (app, tokens.concat())
}

/// Opens a stream, reads `n` tokens, drops the connection; returns the stream id, the text read and the last event id.
async fn read_then_drop(app: &TestApp, n: usize) -> (String, String, String) {
    let mut reader = app.open("hi").await;
    let id = reader.stream_id().await;
    let (mut text, mut last) = (String::new(), String::new());
    for _ in 0..n {
        let event = reader.next_data().await.expect("a token");
        text.push_str(event.json()["token"].as_str().expect("a token"));
        last = event.id.expect("an id");
    }
    drop(reader);
    (id, text, last)
}

fn resume_url(app: &TestApp, question: &str, last_event_id: &str) -> String {
    let mut url = reqwest::Url::parse(&app.stream_url(question)).expect("url");
    url.query_pairs_mut()
        .append_pair("last_event_id", last_event_id);
    url.to_string()
}

/// A series' value in Prometheus text; 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0.0)
}

crate::both_stores! {
    async fn every_stream_opens_with_retry_and_a_stream_event_naming_an_unguessable_id() {
        let (app, _) = app_with_answer(2, Duration::ZERO, 0.0).await;

        let answer = app.stream("hi").await;

        assert_eq!(answer.retry, Some(1000));
        let opening = answer.opening.as_ref().expect("an opening event");
        assert_eq!(opening.name.as_deref(), Some("stream"));
        let id = answer.stream_id();
        assert_eq!(id.len(), 32, "128 bits as hex: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(opening.id.as_deref(), Some(format!("{id}:0").as_str()));
        assert_eq!(answer.events[0].id, Some(format!("{id}:1")));
        let other = app.stream("hi").await.stream_id();
        assert_ne!(id, other);
    }

    async fn a_dropped_stream_resumed_with_last_event_id_gets_exactly_the_rest() {
        let (app, full) = app_with_answer(40, 20 * MS, 5.0).await;
        let (id, before, last) = read_then_drop(&app, 5).await;
        assert_eq!(last, format!("{id}:5"));

        let rest = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &last)])
            .await
            .read_to_end()
            .await;

        assert_eq!(rest.status, 200);
        assert_eq!(format!("{before}{}", rest.text()), full);
        let ids: Vec<String> = rest.events.iter().filter_map(|e| e.id.clone()).collect();
        let expected: Vec<String> = (6..6 + ids.len()).map(|n| format!("{id}:{n}")).collect();
        assert_eq!(ids, expected, "each event with its original id, in order");
        assert!(rest.ended_with_done());
        assert_eq!(app.mock.request_count(), 1, "the model was asked once");
    }

    async fn a_reloaded_page_resumes_with_the_last_event_id_parameter() {
        let (app, full) = app_with_answer(40, 20 * MS, 5.0).await;
        let (_, before, last) = read_then_drop(&app, 3).await;

        let rest = SseReader::get(resume_url(&app, "hi", &last), &[])
            .await
            .read_to_end()
            .await;

        assert_eq!(format!("{before}{}", rest.text()), full);
        assert!(rest.ended_with_done());
        assert_eq!(app.mock.request_count(), 1);
    }

    async fn a_resume_after_the_end_is_told_to_stop_and_one_before_it_gets_the_end() {
        let (app, _) = app_with_answer(3, Duration::ZERO, 5.0).await;
        let answer = app.stream("hi").await;
        let done_id = answer.last().id.clone().expect("an id");
        let before_done = answer.events[answer.events.len() - 2]
            .id
            .clone()
            .expect("an id");

        let after_end = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &done_id)]).await;
        let before_end = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &before_done)])
            .await
            .read_to_end()
            .await;

        assert_eq!(after_end.status, 204, "the client already saw the end");
        assert_eq!(before_end.status, 200);
        assert_eq!(before_end.events.len(), 1);
        assert!(before_end.ended_with_done());
    }

    async fn a_resume_with_another_question_an_unknown_id_or_an_event_never_sent_is_told_to_stop() {
        let (app, _) = app_with_answer(40, 20 * MS, 5.0).await;
        let (id, _, last) = read_then_drop(&app, 2).await;

        let other_question = SseReader::get(app.stream_url("bye"), &[("Last-Event-ID", &last)]).await;
        let unknown = SseReader::get(
            app.stream_url("hi"),
            &[("Last-Event-ID", "0123456789abcdef0123456789abcdef:2")],
        )
        .await;
        let malformed = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &id)]).await;
        let never_sent = SseReader::get(
            app.stream_url("hi"),
            &[("Last-Event-ID", &format!("{id}:999"))],
        )
        .await;

        assert_eq!(other_question.status, 204);
        assert_eq!(unknown.status, 204);
        assert_eq!(malformed.status, 204);
        assert_eq!(never_sent.status, 204, "an event the answer never sent");
        assert_eq!(app.mock.request_count(), 1, "no resume asks the model");
    }

    async fn a_finished_answer_is_forgotten_after_its_retention() {
        let app =
            spawn_app_with(|c| c.resume_retention = std::time::Duration::from_secs_f64(0.3)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["a", "b", "c"], Duration::ZERO)));
        let answer = app.stream("hi").await;
        let first = answer.events[0].id.clone().expect("an id");

        let kept = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &first)]).await;
        assert_eq!(kept.status, 200, "resumable within the retention");
        eventually(
            "the answer to be forgotten after its retention",
            DEADLINE,
            || async {
                let later = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &first)]).await;
                later.status == 204
            },
        )
        .await;
    }

    async fn a_dropped_answer_goes_on_for_the_grace_then_its_upstream_is_closed() {
        let (app, _) = app_with_answer(400, 20 * MS, 2.0).await;
        let dropped = Instant::now();
        read_then_drop(&app, 1).await;

        app.mock.wait_for_closed(1, DEADLINE).await;
        let closed = app.mock.closed_at()[0].duration_since(dropped);
        // The grace is 2 s: the upstream goes on for it (read_then_drop's own time counts from the
        // same start), and is closed soon after.
        assert!(
            closed >= Duration::from_millis(1900) && closed < Duration::from_secs(3),
            "closed {closed:?} after the drop"
        );
        assert_eq!(app.store.streams_open_here(), 0, "its slot is free again");
    }

    async fn without_a_grace_a_dropped_answer_is_cancelled_at_once() {
        let (app, _) = app_with_answer(400, 20 * MS, 0.0).await;
        read_then_drop(&app, 1).await;

        app.mock.wait_for_closed(1, Duration::from_secs(1)).await;
    }

    async fn an_explicit_cancel_stops_the_answer_at_once_despite_a_long_grace() {
        let (app, _) = app_with_answer(400, 20 * MS, 60.0).await;
        let mut reader = app.open("hi").await;
        let id = reader.stream_id().await;
        reader.next_data().await.expect("a token");

        let cancel = |id: String| {
            CLIENT
                .post(format!("{}/api/stream/{id}/cancel", app.address))
                .send()
        };
        let sent = Instant::now();
        let response = cancel(id.clone()).await.expect("cancel");
        assert_eq!(response.status(), 204);
        app.mock.wait_for_closed(1, Duration::from_secs(1)).await;
        assert!(app.mock.closed_at()[0].duration_since(sent) < Duration::from_secs(1));

        let rest = reader.read_to_end().await;
        assert_eq!(
            rest.error().expect("an in-band error")["error"],
            "cancelled"
        );
        assert_eq!(
            cancel(id).await.expect("cancel").status(),
            204,
            "idempotent"
        );
        let unknown = cancel("0123456789abcdef0123456789abcdef".into())
            .await
            .expect("cancel");
        assert_eq!(unknown.status(), 404);
        let body: serde_json::Value = unknown.json().await.expect("JSON");
        assert_eq!(body["error"], "unknown_stream");
    }

    async fn a_cancel_from_a_foreign_page_is_refused() {
        let (app, _) = app_with_answer(400, 20 * MS, 60.0).await;
        let mut reader = app.open("hi").await;
        let id = reader.stream_id().await;
        // The opening event comes before the upstream call: cancel once there is one to close.
        app.mock.wait_for_requests(1, DEADLINE).await;
        let url = format!("{}/api/stream/{id}/cancel", app.address);

        let foreign = CLIENT
            .post(&url)
            .header("Origin", "https://evil.example")
            .header("Sec-Fetch-Site", "cross-site")
            .send()
            .await
            .expect("cancel");
        let own = CLIENT
            .post(&url)
            .header("Origin", &app.address)
            .send()
            .await
            .expect("cancel");

        assert_eq!(foreign.status(), 403);
        assert_eq!(own.status(), 204, "the page's own origin may cancel");
        app.mock.wait_for_closed(1, DEADLINE).await;
    }

    async fn a_second_reader_ends_the_first_connection_so_nothing_is_read_twice() {
        let (app, full) = app_with_answer(60, 20 * MS, 5.0).await;
        let mut first = app.open("hi").await;
        first.stream_id().await;
        let mut before = String::new();
        let mut last = String::new();
        for _ in 0..3 {
            let event = first.next_data().await.expect("a token");
            before.push_str(event.json()["token"].as_str().expect("token"));
            last = event.id.expect("an id");
        }

        let second = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &last)]).await;
        let old = first.read_to_end().await;
        let rest = second.read_to_end().await;

        assert!(!old.ended_with_done(), "the older connection ended early");
        assert_eq!(format!("{before}{}", rest.text()), full);
        assert_eq!(app.mock.request_count(), 1);
    }

    async fn a_resume_spends_no_rate_budget_and_keeps_the_streams_slot() {
        let app = spawn_app_with(|c| {
            c.resume_grace = std::time::Duration::from_secs_f64(5.0);
            c.rate_limit_per_minute = 1;
            c.rate_limit_burst = Some(1);
            c.max_streams_per_client = 1;
        })
        .await;
        let tokens = numbered(40);
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        app.mock.always(Reply::sse(openai::answer(&refs, 20 * MS)));
        let (_, _, last) = read_then_drop(&app, 2).await;

        let rest = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &last)]).await;

        assert_eq!(
            rest.status, 200,
            "no budget left, no free slot, and still resumed"
        );
        assert_eq!(
            app.store.streams_open_here(),
            1,
            "one slot for the one answer"
        );
        assert!(rest.read_to_end().await.ended_with_done());
    }

    async fn the_oldest_finished_answers_are_forgotten_first_when_over_the_byte_limit() {
        // Room for a few dozen answers of five tokens (one answer may hold a sixteenth: 4 KiB).
        let app = spawn_app_with(|c| c.resume_max_bytes = 64 << 10).await;
        let tokens = numbered(5);
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        app.mock
            .always(Reply::sse(openai::answer(&refs, Duration::ZERO)));
        let mut first_events = Vec::new();
        for i in 0..120 {
            let answer = app.stream("hi").await;
            assert!(answer.ended_with_done(), "answer {i}: {}", answer.body);
            first_events.push(answer.events[0].id.clone().expect("an id"));
        }

        let oldest = SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &first_events[0])]).await;
        let newest = SseReader::get(
            app.stream_url("hi"),
            &[("Last-Event-ID", first_events.last().expect("an answer"))],
        )
        .await;

        assert_eq!(
            oldest.status,
            crate::helpers::status_of_an_evicted_answer(),
            "the oldest went first"
        );
        assert_eq!(newest.status, 200, "the newest is kept");
    }

    async fn resumes_cancels_and_kept_bytes_are_counted_in_the_metrics() {
        let (app, _) = app_with_answer(40, 20 * MS, 5.0).await;
        let before = app.get("/metrics").await.text().await.expect("metrics");
        let (id, _, last) = read_then_drop(&app, 2).await;

        SseReader::get(app.stream_url("hi"), &[("Last-Event-ID", &last)])
            .await
            .read_to_end()
            .await;
        SseReader::get(app.stream_url("bye"), &[("Last-Event-ID", &last)]).await;
        let cancel = CLIENT
            .post(format!("{}/api/stream/{id}/cancel", app.address))
            .send()
            .await
            .expect("cancel");
        assert_eq!(cancel.status(), 204);
        let after = app.get("/metrics").await.text().await.expect("metrics");

        let delta = |series: &str| metric(&after, series) - metric(&before, series);
        assert!(
            delta(r#"llm_stream_resumes_total{outcome="resumed"}"#) >= 1.0,
            "{after}"
        );
        assert!(
            delta(r#"llm_stream_resumes_total{outcome="refused"}"#) >= 1.0,
            "{after}"
        );
        assert!(delta("llm_stream_cancels_total") >= 1.0, "{after}");
        assert!(
            metric(&after, "llm_stream_resume_store_bytes") > 0.0,
            "{after}"
        );
    }
}
