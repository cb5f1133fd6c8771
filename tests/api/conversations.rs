//! Follow-up questions: the `conversation` parameter, the history sent upstream, what is stored,
//! the limits on turns and characters, expiry, one answer at a time, `GET /api/conversations/<id>`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    helpers::{
        Answer, CLIENT, DEADLINE, SseReader, TestApp, eventually, spawn_app_with,
        spawn_demo_app_with,
    },
    mock_upstream::{Reply, anthropic, openai},
    providers::spawn_anthropic_with,
};

/// Asks `question` in `conversation` (a new one when `None`) and reads the whole answer.
async fn ask(app: &TestApp, question: &str, conversation: Option<&str>) -> Answer {
    SseReader::get(url(app, question, conversation), &[])
        .await
        .read_to_end()
        .await
}

fn url(app: &TestApp, question: &str, conversation: Option<&str>) -> String {
    let mut url = reqwest::Url::parse(&app.stream_url(question)).unwrap();
    if let Some(id) = conversation {
        url.query_pairs_mut().append_pair("conversation", id);
    }
    url.to_string()
}

fn opening(answer: &Answer) -> Value {
    answer.opening.as_ref().expect("an opening event").json()
}

fn conversation_of(answer: &Answer) -> String {
    opening(answer)["conversation"]
        .as_str()
        .expect("a conversation id")
        .to_owned()
}

/// The messages of the `n`th upstream request (from 0), as (role, content).
fn messages(app: &TestApp, n: usize, field: &str) -> Vec<(String, String)> {
    app.mock.requests()[n].json()[field]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
        .collect()
}

async fn conversation_view(app: &TestApp, id: &str) -> reqwest::Response {
    app.get(&format!("/api/conversations/{id}")).await
}

crate::both_stores! {
    async fn a_follow_up_sends_the_earlier_turns_in_order_to_an_openai_compatible_upstream() {
        let app = spawn_app_with(|c| c.llm_system_prompt = "Be brief.".into()).await;
        app.mock
            .then_reply(Reply::sse(openai::answer(&["Paris", "."], Duration::ZERO)));
        app.mock
            .then_reply(Reply::sse(openai::answer(&["2.1", "M"], Duration::ZERO)));
        app.mock
            .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));

        let first = ask(&app, "Capital of France?", None).await;
        let id = conversation_of(&first);
        assert_eq!(id.len(), 32, "128 bits as hex");
        assert_eq!(opening(&first)["turn"], 1);
        let second = ask(&app, "Its population?", Some(&id)).await;
        let third = ask(&app, "Thanks", Some(&id)).await;

        assert_eq!(conversation_of(&second), id);
        assert_eq!(opening(&second)["turn"], 2);
        assert_eq!(opening(&third)["turn"], 3);
        assert_eq!(
            messages(&app, 2, "messages"),
            pairs(&[
                ("system", "Be brief."),
                ("user", "Capital of France?"),
                ("assistant", "Paris."),
                ("user", "Its population?"),
                ("assistant", "2.1M"),
                ("user", "Thanks"),
            ])
        );
    }

    async fn a_follow_up_sends_the_earlier_turns_in_order_to_anthropic() {
        let app = spawn_anthropic_with(|_| {}).await;
        app.mock
            .then_reply(Reply::sse(anthropic::answer(&["Paris"], "end_turn")));
        app.mock
            .always(Reply::sse(anthropic::answer(&["ok"], "end_turn")));

        let first = ask(&app, "Capital of France?", None).await;
        ask(&app, "Its population?", Some(&conversation_of(&first))).await;

        assert_eq!(
            messages(&app, 1, "messages"),
            pairs(&[
                ("user", "Capital of France?"),
                ("assistant", "Paris"),
                ("user", "Its population?"),
            ])
        );
    }

    async fn a_stopped_answer_is_stored_as_the_text_the_person_saw() {
        let app = spawn_app_with(|c| c.resume_grace = std::time::Duration::from_secs_f64(30.0)).await;
        app.mock.always(Reply::sse(openai::answer(
            &["one ", "two ", "three ", "four ", "five "],
            Duration::from_millis(300),
        )));
        let mut reader = SseReader::get(url(&app, "Count", None), &[]).await;
        let mut opening = None;
        while opening.is_none() {
            let event = reader.next().await.expect("the opening event");
            opening = event.name.is_some().then(|| event.json());
        }
        let opening = opening.unwrap();
        let (stream, conversation) = (
            opening["stream"].as_str().unwrap().to_owned(),
            opening["conversation"].as_str().unwrap().to_owned(),
        );
        for _ in 0..2 {
            reader.next_data().await.expect("a token");
        }
        let cancelled = CLIENT
            .post(format!("{}/api/stream/{stream}/cancel", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 204);
        reader.read_to_end().await;

        let mut view = Value::Null;
        let until = tokio::time::Instant::now() + DEADLINE;
        while view["turns"].as_array().is_none_or(Vec::is_empty) {
            assert!(tokio::time::Instant::now() < until, "the turn is stored");
            view = conversation_view(&app, &conversation)
                .await
                .json()
                .await
                .unwrap();
        }
        assert_eq!(
            view["turns"],
            json!([{"question": "Count", "answer": "one two "}])
        );
    }

    async fn the_oldest_turns_are_left_out_first_to_respect_the_limits() {
        let app = spawn_app_with(|c| {
            c.conversation_max_turns = 2;
            c.conversation_max_chars = 30;
        })
        .await;
        app.mock
            .always(Reply::sse(openai::answer(&["aaaa"], Duration::ZERO)));

        let id = conversation_of(&ask(&app, "q1", None).await);
        ask(&app, "q2", Some(&id)).await;
        ask(&app, "q3", Some(&id)).await;
        // Turns kept: q2 and q3 (max 2). Characters: q4 (20) leaves 10, room for q3 (6) only.
        let question = "q4-long-question-20c";
        ask(&app, question, Some(&id)).await;

        assert_eq!(
            messages(&app, 2, "messages")[1..],
            pairs(&[
                ("user", "q1"),
                ("assistant", "aaaa"),
                ("user", "q2"),
                ("assistant", "aaaa"),
                ("user", "q3")
            ])[..],
            "before the limits bite, every turn"
        );
        assert_eq!(
            messages(&app, 3, "messages")[1..],
            pairs(&[("user", "q3"), ("assistant", "aaaa"), ("user", question)])[..]
        );
        let view: Value = conversation_view(&app, &id).await.json().await.unwrap();
        assert_eq!(
            view["turns"].as_array().unwrap().len(),
            2,
            "at most two turns kept"
        );
    }

    async fn a_question_longer_than_the_character_limit_still_goes_alone() {
        let app = spawn_app_with(|c| c.conversation_max_chars = 5).await;
        app.mock
            .always(Reply::sse(openai::answer(&["x"], Duration::ZERO)));

        let id = conversation_of(&ask(&app, "first", None).await);
        ask(&app, "a question over five", Some(&id)).await;

        assert_eq!(
            messages(&app, 1, "messages")[1..],
            pairs(&[("user", "a question over five")])[..]
        );
    }

    async fn an_unknown_or_expired_conversation_starts_afresh_with_a_new_id() {
        let app =
            spawn_app_with(|c| c.conversation_ttl = std::time::Duration::from_secs_f64(0.3)).await;
        app.mock
            .always(Reply::sse(openai::answer(&["x"], Duration::ZERO)));
        let unknown = "0123456789abcdef0123456789abcdef";

        let fresh = ask(&app, "hi", Some(unknown)).await;
        let id = conversation_of(&fresh);
        assert_ne!(id, unknown);
        assert_eq!(opening(&fresh)["turn"], 1);
        assert_eq!(conversation_view(&app, unknown).await.status(), 404);

        eventually(
            "the conversation to expire after its TTL",
            DEADLINE,
            || async { conversation_view(&app, &id).await.status() == 404 },
        )
        .await;
        let later = ask(&app, "again", Some(&id)).await;
        assert_ne!(conversation_of(&later), id);
        assert_eq!(opening(&later)["turn"], 1);
        assert_eq!(
            messages(&app, 1, "messages").len(),
            2,
            "system and the question only"
        );
    }

    async fn a_second_question_while_the_answer_runs_is_refused_as_busy() {
        let app = spawn_app_with(|_| {}).await;
        app.mock.always(Reply::sse(openai::answer(
            &["slow "; 20],
            Duration::from_millis(50),
        )));
        let mut running = SseReader::get(url(&app, "first", None), &[]).await;
        let mut id = None;
        while id.is_none() {
            let event = running.next().await.expect("the opening event");
            id = event.json()["conversation"].as_str().map(str::to_owned);
        }
        let id = id.unwrap();

        let busy = CLIENT
            .get(url(&app, "second", Some(&id)))
            .send()
            .await
            .unwrap();
        assert_eq!(busy.status(), 409);
        let body: Value = busy.json().await.unwrap();
        assert_eq!(body["error"], "conversation_busy");
        assert_eq!(
            app.mock.request_count(),
            1,
            "no upstream call for the busy one"
        );

        running.read_to_end().await;
        let after = ask(&app, "second", Some(&id)).await;
        assert!(after.ended_with_done(), "free again once the answer ended");
        assert_eq!(opening(&after)["turn"], 2);
    }

    async fn the_demo_model_says_how_many_earlier_turns_it_remembers() {
        let app = spawn_demo_app_with(|_| {}).await;

        let first = ask(&app, "hello", None).await;
        let second = ask(&app, "again", Some(&conversation_of(&first))).await;

        assert!(!first.text().contains("remember"));
        assert!(
            second.text().starts_with("I remember 1 earlier turn"),
            "{}",
            second.text()
        );
    }

    async fn the_stored_turns_can_be_read_back() {
        let app = spawn_app_with(|_| {}).await;
        app.mock
            .always(Reply::sse(openai::answer(&["A", "1"], Duration::ZERO)));

        let id = conversation_of(&ask(&app, "Q1", None).await);
        ask(&app, "Q2", Some(&id)).await;
        let response = conversation_view(&app, &id).await;

        assert_eq!(response.status(), 200);
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["conversation"], id.as_str());
        assert_eq!(
            view["turns"],
            json!([{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A1"}])
        );
    }
}
