//! The page with a token budget: what is left after each answer, and an answer the budget cut
//! short said in words.

use super::*;

/// An answer that reports `completion` tokens of usage (and 3 of prompt), ending with `reason`.
fn costing(completion: u64, reason: &str) -> Reply {
    Reply::sse(vec![
        openai::token("ok"),
        openai::finish(reason),
        openai::usage(3, completion),
        openai::done(),
    ])
}

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
