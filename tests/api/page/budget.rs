//! The page with a token budget: what is left after each answer, an answer the budget cut short
//! said in words, a question the budget refuses counted down until Ask comes back, and the
//! service's budget refusal said in words.

use super::*;
use crate::budgets::costing;

#[tokio::test]
async fn the_page_shows_the_budget_left_after_each_answer_and_says_when_it_cut_one_short() {
    let app = spawn_app_with(crate::budgets::budget(200, 150)).await;
    app.mock.then_reply(costing(100, "stop"));
    app.mock.then_reply(costing(94, "length"));
    let browser = open_page(&app).await;

    ask(&browser, "hi").await;
    let first = wait_for_state(&browser, "done").await;
    assert_eq!(
        first.usage,
        "Usage: prompt 3 tokens · completion 100 tokens · 97 tokens left in your budget"
    );
    assert!(!first.status.contains("budget"), "{first:?}");

    ask(&browser, "and again").await;
    let second = browser
        .wait_for(
            "the second answer done",
            &format!("{VIEW} return view.state === 'done' && view.turns === 2 ? view : null;"),
            &describe(),
        )
        .await;
    let second: View = serde_json::from_value(second).unwrap();
    assert!(
        second
            .status
            .ends_with("the answer stopped early because your token budget ran low."),
        "{second:?}"
    );
    assert!(
        second.usage.ends_with("0 tokens left in your budget"),
        "{second:?}"
    );
}

/// The N of "… back in N s" or "… try again in N s" at the end of `error`, if it ends so.
fn counted(error: &str) -> Option<u64> {
    error.strip_suffix(" s")?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn a_question_the_token_budget_refuses_counts_down_and_ask_comes_back_and_answers_when_it_ends()
 {
    // 200 tokens that refill in 2 s (100 a second). The first answer reports 433: enough for a
    // minimum answer (3 + 64) is back 3 s after it ends.
    let app = spawn_app_with(|c| {
        crate::budgets::budget(200, 100)(c);
        c.token_budget_window = Duration::from_secs(2);
    })
    .await;
    app.mock.then_reply(costing(430, "stop"));
    app.mock.always(Reply::sse(openai::answer(
        &["Back", " again."],
        Duration::ZERO,
    )));
    let browser = open_page(&app).await;
    ask(&browser, "hi").await;
    wait_for_state(&browser, "done").await;

    ask(&browser, "and again").await;
    let refused = wait_for_state(&browser, "refused").await;

    assert_eq!(refused.status, "Refused — your token budget is spent");
    let secs = counted(&refused.error).unwrap_or_else(|| panic!("{refused:?}"));
    assert_eq!(
        refused.error,
        format!("Your token budget is spent — enough for another answer is back in {secs} s")
    );
    assert!((1..=3).contains(&secs), "{refused:?}");
    assert!(refused.ask_disabled, "Ask waits while the budget refills");
    assert_eq!(refused.turns, 1, "{refused:?}");
    // The page asked about this very question, in its conversation.
    let asked: Vec<String> = serde_json::from_value(
        browser
            .js(
                "return performance.getEntriesByType('resource').map((e) => e.name)
                     .filter((n) => n.includes('/api/limits'));",
            )
            .await,
    )
    .unwrap();
    assert!(
        asked
            .iter()
            .any(|url| url.contains("q=and%20again") && url.contains("&conversation=")),
        "{asked:?}"
    );

    if secs > 1 {
        browser
            .wait_for(
                "the countdown to go down",
                &format!(
                    "{VIEW} const m = /back in (\\d+) s$/.exec(view.error);
                     return m && Number(m[1]) < {secs} && view.ask_disabled ? view : null;"
                ),
                &describe(),
            )
            .await;
    }
    let ready = browser
        .wait_for(
            "Ask to come back when the countdown ends",
            &format!("{VIEW} return view.ask_disabled ? null : view;"),
            &describe(),
        )
        .await;
    let ready: View = serde_json::from_value(ready).unwrap();
    assert_eq!(
        ready.error,
        "Your token budget has enough for another answer — you can ask again now."
    );
    assert_eq!(ready.status, "Ready — your token budget has refilled");

    // The refused question is still in its box: asked again, it is answered.
    browser.click("#ask").await;
    let answered = browser
        .wait_for(
            "the question asked again to be answered",
            &format!("{VIEW} return view.state === 'done' && view.turns === 2 ? view : null;"),
            &describe(),
        )
        .await;
    let answered: View = serde_json::from_value(answered).unwrap();
    assert_eq!(answered.answer, "Back again.");
    assert_eq!(app.mock.request_count(), 2);
}

#[tokio::test]
async fn a_question_the_service_budget_refuses_is_explained_in_words() {
    let app = spawn_app_with(|c| {
        c.llm_max_tokens = 100;
        c.llm_system_prompt = crate::budgets::SYSTEM.into();
        // Two worst-case answers of 3 + 100, both held open by other people.
        c.global_token_budget = 206;
    })
    .await;
    app.mock
        .always(Reply::sse(vec![openai::token("held")]).then(End::Hang));
    let url = app.stream_url("hi");
    let mut held = Vec::new();
    for person in ["198.51.100.71", "198.51.100.72"] {
        let mut reader =
            crate::helpers::SseReader::get(url.clone(), &[("x-real-ip", person)]).await;
        reader.next_data().await.expect("a token");
        held.push(reader);
    }
    let browser = open_page(&app).await;

    ask(&browser, "hi").await;
    let refused = wait_for_state(&browser, "refused").await;

    assert_eq!(
        refused.status,
        "Refused — the service's token budget is used up"
    );
    let secs = counted(&refused.error).unwrap_or_else(|| panic!("{refused:?}"));
    assert_eq!(
        refused.error,
        format!("The service has used up its token budget for now — try again in {secs} s")
    );
    assert!((1..=60).contains(&secs), "{refused:?}");
    assert!(refused.ask_disabled, "{refused:?}");
    assert_eq!(
        app.mock.request_count(),
        2,
        "nothing more reached the upstream"
    );
}
