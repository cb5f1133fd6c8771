//! Follow-up questions on the page: each question and its answer stay on screen as a turn, the box
//! asks the follow-up in the same conversation (the upstream sees the earlier turns), New
//! conversation forgets them, a reload keeps them, and an expired conversation starts afresh and
//! says so.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::helpers::eventually;

const Q1: &str = "What is Rust?";
const A1: &str = "Rust is a **systems programming language** focused on:\n\n\
                  - memory safety without a garbage collector\n\
                  - fearless concurrency\n\
                  - zero-cost abstractions";
const Q2: &str = "How do I start a new project?";
const A2: &str = "Use Cargo, Rust's build tool:\n\n```sh\ncargo new hello\ncd hello\ncargo run\n```\n\n\
                  It creates `Cargo.toml` and `src/main.rs`.";

/// The turns on screen: each one's question (its heading) and its answer as laid out.
const TURNS: &str =
    "return Array.from(document.querySelectorAll('#turns > article.turn'), (t) => ({
        question: t.querySelector('h3.turn-question').textContent,
        answer: t.querySelector('.answer').innerText,
        busy: t.querySelector('.answer').getAttribute('aria-busy'),
        note: t.querySelector('.turn-note')?.textContent ?? '',
    }));";

#[derive(Debug, Deserialize)]
struct Shown {
    question: String,
    answer: String,
    busy: String,
    note: String,
}

async fn turns(browser: &Browser) -> Vec<Shown> {
    serde_json::from_value(browser.js(TURNS).await).expect("turns")
}

/// A reply that streams `text` in pieces of about 8 characters.
fn reply(text: &str) -> Reply {
    let pieces = pieces(text, 8);
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    Reply::sse(openai::answer(&refs, Duration::from_millis(5)))
}

/// The `n`th upstream request's messages (from 0) after the system prompt, as (role, content).
fn history(app: &TestApp, n: usize) -> Vec<(String, String)> {
    let messages = app.mock.requests()[n].json()["messages"].clone();
    messages
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] != "system")
        .map(|m| {
            (
                m["role"].as_str().expect("a role").to_owned(),
                m["content"].as_str().expect("text").to_owned(),
            )
        })
        .collect()
}

fn said(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
        .collect()
}

/// Waits until the page is done with `n` turns on screen.
async fn wait_for_turns_done(browser: &Browser, n: usize) -> View {
    let found = browser
        .wait_for(
            &format!("the answer of turn {n} to be done"),
            &format!("{VIEW} return view.state === 'done' && view.turns === {n} ? view : null;"),
            &describe(),
        )
        .await;
    serde_json::from_value(found).expect("a view")
}

/// Waits until a reloaded page has its earlier turns back and can be asked again.
async fn wait_for_restored(browser: &Browser, n: usize) -> View {
    let found = browser
        .wait_for(
            &format!("{n} turns back after the reload"),
            &format!("{VIEW} return view.turns === {n} && !view.ask_disabled ? view : null;"),
            &describe(),
        )
        .await;
    serde_json::from_value(found).expect("a view")
}

async fn saved_conversation(browser: &Browser) -> Value {
    browser
        .js("return sessionStorage.getItem('llm-stream.conversation');")
        .await
}

#[tokio::test]
async fn two_questions_stay_on_screen_as_turns_the_follow_up_carries_the_first_and_new_conversation_forgets_them()
 {
    // Arrange
    let app = spawn_app().await;
    app.mock.then_reply(reply(A1));
    app.mock.then_reply(reply(A2));
    app.mock.always(reply("A fresh start."));
    let browser = Browser::start().await;
    browser
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1000, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": "light" }] }),
        )
        .await;
    browser.goto(&format!("{}/", app.address)).await;
    browser.grant("clipboard-read").await;

    // Act: a question, then its follow-up.
    ask(&browser, Q1).await;
    wait_for_turns_done(&browser, 1).await;
    let first_id = saved_conversation(&browser).await;
    ask(&browser, Q2).await;
    let done = wait_for_turns_done(&browser, 2).await;

    // Assert: both turns on screen, in order, rendered, not busy; the box empty for the next one,
    // and focused.
    let shown = turns(&browser).await;
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(
        (shown[0].question.as_str(), shown[1].question.as_str()),
        (Q1, Q2)
    );
    assert!(
        shown[0]
            .answer
            .starts_with("Rust is a systems programming language focused on:")
            && shown[0]
                .answer
                .contains("memory safety without a garbage collector"),
        "{shown:?}"
    );
    assert!(
        shown[1].answer.contains("cargo new hello") && shown[1].answer.ends_with("src/main.rs."),
        "{shown:?}"
    );
    assert!(shown.iter().all(|t| t.busy == "false" && t.note.is_empty()));
    assert_eq!(done.error, "");
    assert_eq!(
        browser
            .js(
                "return [document.activeElement.id, document.getElementById('question').value,
                         document.getElementById('question').placeholder];"
            )
            .await,
        json!(["question", "", "Ask a follow-up…"])
    );
    // The upstream saw the first question and its answer (its Markdown source) before the second.
    assert_eq!(history(&app, 0), said(&[("user", Q1)]));
    assert_eq!(
        history(&app, 1),
        said(&[("user", Q1), ("assistant", A1), ("user", Q2)])
    );
    // One conversation: the follow-up went to the id the first answer named.
    assert!(
        first_id.as_str().is_some_and(|id| id.len() == 32),
        "{first_id}"
    );
    assert_eq!(saved_conversation(&browser).await, first_id);
    let asked = stream_urls(&browser).await;
    assert!(!asked[0].contains("conversation="), "{asked:?}");
    assert!(
        asked[1].ends_with(&format!("&conversation={}", first_id.as_str().unwrap())),
        "{asked:?}"
    );

    // The screenshot: a two-turn conversation, light, on a desktop.
    browser.js("window.scrollTo(0, 0);").await;
    let path = browser.screenshot("conversation-desktop-light.png").await;
    assert!(path.metadata().expect("the screenshot").len() > 20_000);

    // Act: the first answer's own Copy.
    let copied = copy_answer(&browser, "first-child").await;

    // Assert: the first answer's Markdown source, not the last one's.
    assert_eq!(copied, A1);

    // Act: New conversation, then a question.
    browser.click("#new-conversation").await;
    let cleared = view(&browser).await;
    let forgotten = saved_conversation(&browser).await;
    ask(&browser, "Something else?").await;
    wait_for_turns_done(&browser, 1).await;

    // Assert: the screen and the id were cleared; the upstream got no earlier turns.
    assert_eq!(cleared.turns, 0, "{cleared:?}");
    assert_eq!(cleared.status, "Ready — a new conversation");
    assert_eq!(forgotten, Value::Null);
    let shown = turns(&browser).await;
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].question, "Something else?");
    assert_eq!(shown[0].answer, "A fresh start.");
    assert_eq!(history(&app, 2), said(&[("user", "Something else?")]));
    let new_id = saved_conversation(&browser).await;
    assert!(new_id.is_string() && new_id != first_id, "{new_id}");
    assert_eq!(app.mock.request_count(), 3);
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_reload_keeps_the_turns_continues_the_running_answer_once_and_a_follow_up_sends_them_all()
{
    // Arrange: the second answer runs ~3 s, long enough to reload in the middle.
    let app = spawn_app_with(|c| c.resume_grace = std::time::Duration::from_secs_f64(10.0)).await;
    let words: Vec<String> = (0..60).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let a2 = words.concat();
    app.mock.then_reply(reply(A1));
    app.mock
        .then_reply(Reply::sse(openai::answer(&refs, Duration::from_millis(50))));
    app.mock.always(reply("Third answer."));
    let browser = open_page(&app).await;
    ask(&browser, Q1).await;
    wait_for_turns_done(&browser, 1).await;
    ask(&browser, "Count to sixty").await;
    browser
        .wait_for(
            "ten words of the second answer",
            &format!(
                "{VIEW} return view.turns === 2 && view.answer.includes('w9 ') ? view : null;"
            ),
            &describe(),
        )
        .await;

    // Act: reload while the second answer streams.
    browser.client.refresh().await.expect("reload");
    let resumed = browser
        .wait_for(
            "the second answer to be done after the reload",
            &format!("{VIEW} return view.state === 'done' ? view : null;"),
            &describe(),
        )
        .await;

    // Assert: the first turn back from the server, the second continued as the last turn, once.
    let resumed: View = serde_json::from_value(resumed).expect("a view");
    assert_eq!(resumed.turns, 2, "{resumed:?}");
    let shown = turns(&browser).await;
    assert_eq!(shown[0].question, Q1);
    assert!(
        shown[0]
            .answer
            .contains("memory safety without a garbage collector"),
        "{shown:?}"
    );
    assert_eq!(shown[1].question, "Count to sixty");
    assert_eq!(shown[1].answer, a2.trim_end());
    assert_eq!(app.mock.request_count(), 2, "nothing was asked again");

    // Act: reload again, with nothing running.
    browser.client.refresh().await.expect("reload");
    let restored = wait_for_restored(&browser, 2).await;

    // Assert: both turns, rendered, and the page ready for the follow-up.
    let again = turns(&browser).await;
    assert_eq!(
        again
            .iter()
            .map(|t| (t.question.as_str(), t.answer.as_str()))
            .collect::<Vec<_>>(),
        shown
            .iter()
            .map(|t| (t.question.as_str(), t.answer.as_str()))
            .collect::<Vec<_>>()
    );
    assert_eq!(restored.state, "idle");
    assert_eq!(
        restored.status,
        "Ready — 2 earlier questions in this conversation"
    );

    // Act: a follow-up.
    ask(&browser, "And then?").await;
    wait_for_turns_done(&browser, 3).await;

    // Assert: the upstream got every earlier turn, in order.
    assert_eq!(
        history(&app, 2),
        said(&[
            ("user", Q1),
            ("assistant", A1),
            ("user", "Count to sixty"),
            ("assistant", &a2),
            ("user", "And then?"),
        ])
    );
    assert_eq!(turns(&browser).await[2].answer, "Third answer.");
}

#[tokio::test]
async fn an_expired_conversation_starts_afresh_and_the_page_says_so() {
    // Arrange: conversations forgotten half a second after their last turn.
    let app =
        spawn_app_with(|c| c.conversation_ttl = std::time::Duration::from_secs_f64(0.5)).await;
    app.mock.then_reply(reply("First."));
    // Slow enough for the start to be said before the end.
    app.mock.always(Reply::sse(openai::answer(
        &["Second,", " from", " scratch."],
        Duration::from_millis(300),
    )));
    let browser = open_page(&app).await;
    browser
        .js("window.__said = [];
             const region = document.getElementById('announcer');
             new MutationObserver(() => { if (region.textContent) window.__said.push(region.textContent); })
                 .observe(region, { childList: true, subtree: true, characterData: true });")
        .await;
    ask(&browser, "Hello?").await;
    wait_for_turns_done(&browser, 1).await;
    let old = saved_conversation(&browser).await;
    let old = old.as_str().expect("a conversation id").to_owned();
    eventually(
        "the conversation to expire after its TTL",
        DEADLINE,
        || async { app.get(&format!("/api/conversations/{old}")).await.status() == 404 },
    )
    .await;

    // Act
    browser.js("window.__said = [];").await;
    ask(&browser, "Still there?").await;
    let done = wait_for_turns_done(&browser, 2).await;

    // Assert: answered without history, in a new conversation the page adopted, and said so.
    assert_eq!(history(&app, 1), said(&[("user", "Still there?")]));
    let new = saved_conversation(&browser).await;
    assert!(new.as_str().is_some_and(|id| id != old), "{new}");
    let shown = turns(&browser).await;
    let note = "The earlier conversation expired; this question starts a new one.";
    assert_eq!(shown[1].note, note);
    assert_eq!(shown[1].answer, "Second, from scratch.");
    assert_eq!(shown[0].note, "");
    assert_eq!(done.error, "");
    let said = browser
        .wait_for(
            "the end to be said",
            "return window.__said.some((s) => s.startsWith('Answer complete'))
                 ? window.__said : null;",
            "return window.__said;",
        )
        .await;
    assert!(
        said.as_array()
            .expect("texts")
            .contains(&json!(format!("Answer started. {note}"))),
        "{said}"
    );
}

#[tokio::test]
async fn a_reload_with_a_conversation_the_server_forgot_starts_empty_and_quietly_forgets_it() {
    // Arrange: the page kept a conversation the server does not know.
    let app = spawn_app().await;
    app.mock.always(reply("Fresh."));
    let browser = open_page(&app).await;
    browser
        .js("sessionStorage.setItem('llm-stream.conversation', '0123456789abcdef0123456789abcdef');")
        .await;

    // Act
    browser.client.refresh().await.expect("reload");
    browser
        .wait_for(
            "the forgotten id to be cleared",
            "return sessionStorage.getItem('llm-stream.conversation') === null;",
            &describe(),
        )
        .await;
    let idle = view(&browser).await;
    ask(&browser, "Hi").await;
    wait_for_turns_done(&browser, 1).await;

    // Assert: no turns, no error, Ask ready; the next question starts a new conversation.
    assert_eq!(idle.turns, 0, "{idle:?}");
    assert_eq!(
        (idle.state.as_str(), idle.status.as_str()),
        ("idle", "Ready")
    );
    assert_eq!(idle.error, "");
    assert!(!idle.ask_disabled);
    assert_eq!(history(&app, 0), said(&[("user", "Hi")]));
    assert!(
        !stream_urls(&browser).await[0].contains("conversation="),
        "no conversation asked in"
    );
    assert_eq!(
        turns(&browser).await[0].note,
        "",
        "nothing expired that was asked in"
    );
}
