//! However an answer ends (a cancel, the grace running out, an upstream error, the timeout), its
//! reservation is replaced by what it streamed, and the rest is back at once.

use std::time::Duration;

use super::{budget, prompt_estimate, tokens_left, wait_tokens_left};
use crate::{
    helpers::{SseReader, TestApp, cancel, spawn_app_with},
    mock_upstream::{End, Reply, Step, openai},
};

const ME: &str = "198.51.100.40";
const BUDGET: u64 = 10_000;

/// An app whose answers stream one 4-character token (1 token by the estimate), then `rest`.
async fn app_streaming(
    rest: Vec<Step>,
    end: End,
    adjust: impl FnOnce(&mut llm_stream::config::Config),
) -> TestApp {
    let app = spawn_app_with(|c| {
        budget(BUDGET, 100)(c);
        adjust(c);
    })
    .await;
    let mut steps = vec![openai::token("abcd")];
    steps.extend(rest);
    app.mock.always(Reply::sse(steps).then(end));
    app
}

/// Opens an answer as [`ME`] and reads its first token, while its worst case is reserved.
async fn first_token(app: &TestApp) -> (SseReader, String) {
    let mut reader = SseReader::get(app.stream_url("hi"), &[("x-real-ip", ME)]).await;
    let id = reader.stream_id().await;
    reader.next_data().await.expect("a token");
    assert_eq!(
        tokens_left(&app.address, ME).await,
        BUDGET - prompt_estimate("hi") - 100,
        "the worst case is reserved while it streams"
    );
    (reader, id)
}

/// What an answer cut after its first token costs: its prompt and that token, estimated.
fn cut_cost() -> u64 {
    prompt_estimate("hi") + 1
}

crate::both_stores! {
    async fn a_cancelled_answer_returns_its_unused_reservation() {
        let app = app_streaming(vec![], End::Hang, |_| {}).await;
        let (reader, id) = first_token(&app).await;

        assert_eq!(cancel(&app.address, &id).await, 204);

        let rest = reader.read_to_end().await;
        assert_eq!(rest.error().expect("an error")["error"], "cancelled");
        wait_tokens_left(&app.address, ME, BUDGET - cut_cost()).await;
    }

    async fn an_answer_nobody_reads_returns_its_unused_reservation_when_the_grace_runs_out() {
        let app = app_streaming(vec![], End::Hang, |c| c.resume_grace = Duration::from_millis(300)).await;
        let (reader, _) = first_token(&app).await;

        drop(reader);

        wait_tokens_left(&app.address, ME, BUDGET - cut_cost()).await;
    }

    async fn an_upstream_error_returns_the_unused_reservation() {
        let error = openai::chunk(r#"{"error":{"message":"overloaded","type":"server_error"}}"#);
        let app = app_streaming(vec![Step::Sleep(Duration::from_millis(300)), error], End::Close, |_| {}).await;
        let (reader, _) = first_token(&app).await;

        let rest = reader.read_to_end().await;

        assert_eq!(rest.error().expect("an error")["error"], "upstream_error");
        wait_tokens_left(&app.address, ME, BUDGET - cut_cost()).await;
    }

    async fn a_timed_out_answer_returns_the_unused_reservation() {
        let app = app_streaming(vec![], End::Hang, |c| c.stream_timeout = Duration::from_secs(1)).await;
        let (reader, _) = first_token(&app).await;

        let rest = reader.read_to_end().await;

        assert_eq!(rest.error().expect("an error")["error"], "timeout");
        wait_tokens_left(&app.address, ME, BUDGET - cut_cost()).await;
    }

    async fn a_resume_spends_nothing_and_a_follow_up_counts_its_history_in_its_prompt() {
        let app = spawn_app_with(|c| {
            budget(BUDGET, 100)(c);
            c.resume_grace = Duration::from_secs(10);
        })
        .await;
        // 12 characters: 3 tokens; no usage, so the estimate counts.
        app.mock.always(Reply::sse(vec![
            openai::token("twelve chars"),
            openai::finish("stop"),
            openai::done(),
        ]));
        let first = super::ask(&app.address, ME, "hi").await;
        let first_cost = prompt_estimate("hi") + 3;
        assert_eq!(tokens_left(&app.address, ME).await, BUDGET - first_cost);

        let conversation = first.opening.as_ref().unwrap().json()["conversation"]
            .as_str()
            .unwrap()
            .to_owned();
        let last = first.events.last().and_then(|e| e.id.clone()).unwrap();
        let resumed = SseReader::get(app.stream_url("hi"), &[("x-real-ip", ME), ("last-event-id", &last)])
            .await
            .read_to_end()
            .await;
        assert_eq!(resumed.status, 204);
        assert_eq!(tokens_left(&app.address, ME).await, BUDGET - first_cost, "a resume spends nothing");

        let follow_up = format!("{}&conversation={conversation}", app.stream_url("and?"));
        let second = SseReader::get(follow_up, &[("x-real-ip", ME)]).await.read_to_end().await;
        assert_eq!(second.status, 200, "{}", second.body);
        // The prompt: the system prompt, the first turn (2 + 12 characters) and the question.
        let prompt = ((super::SYSTEM.len() + 2 + 12 + 4) as u64).div_ceil(4);
        assert_eq!(tokens_left(&app.address, ME).await, BUDGET - first_cost - prompt - 3);
    }
}
