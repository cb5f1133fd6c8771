//! An answer from the server's fallback model says so, in small text under it; one from the
//! primary does not.

use secrecy::SecretString;

use super::*;
use crate::mock_upstream::MockUpstream;

#[tokio::test]
async fn an_answer_from_the_fallback_model_is_noted_under_it_and_one_from_the_primary_is_not() {
    // Arrange: the primary fails the first question, then answers.
    let fallback = MockUpstream::start().await;
    fallback.always(Reply::sse(openai::answer(
        &["From ", "the fallback."],
        Duration::ZERO,
    )));
    let fallback_url = format!("{}/", fallback.url());
    let app = spawn_app_with(|c| {
        c.llm_fallback_base_url = Some(fallback_url.parse().expect("a URL"));
        c.llm_fallback_api_key = Some(SecretString::from("sk-fallback".to_owned()));
        c.llm_fallback_model = Some("fallback-x".into());
    })
    .await;
    app.mock.then_reply(Reply::status(503, "{}"));
    app.mock.always(Reply::sse(openai::answer(
        &["From ", "the primary."],
        Duration::ZERO,
    )));
    let browser = open_page(&app).await;
    let notes = "return [...document.querySelectorAll('#turns > .turn')].map((turn) => {
                     const note = turn.querySelector('.answered-by');
                     return note && !note.hidden ? note.textContent : '';
                 });";

    // Act
    ask(&browser, "First?").await;
    let first = wait_for_state(&browser, "done").await;
    ask(&browser, "Second?").await;
    browser
        .wait_for(
            "the second answer",
            &format!(
                "{VIEW} return view.turns === 2 && view.state === 'done'
                     && view.answer === 'From the primary.' ? true : null;"
            ),
            &describe(),
        )
        .await;

    // Assert
    assert_eq!(first.answer, "From the fallback.");
    assert_eq!(first.error, "");
    assert_eq!(
        browser.js(notes).await,
        serde_json::json!(["Answered by the fallback model (fallback-x).", ""])
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}
