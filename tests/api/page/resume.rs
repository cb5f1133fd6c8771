//! Drops, reloads and stopping: a cut connection reconnects and the answer completes exactly, a
//! refused resume keeps the partial text and says why, a reload or a return from the back-forward
//! cache continues the answer, and Stop or Escape cancel the model at once whatever the grace.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use fantoccini::key::Key;
use serde_json::Value;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::*;

/// A TCP proxy between the browser and the server that the test can cut: every connection open
/// at that moment is closed, later ones pass.
struct CutProxy {
    address: SocketAddr,
    cuts: Arc<watch::Sender<u64>>,
    /// Once set, new connections are accepted and then left hanging: nothing comes back.
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let cuts = Arc::new(watch::channel(0_u64).0);
        let sender = cuts.clone();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hang = silent.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if hang.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::spawn(async move {
                        let mut sink = Vec::new();
                        let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
                    });
                    continue;
                }
                let mut cut = sender.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            address,
            cuts,
            silent,
        }
    }

    /// From now on the server seems to have vanished: connections open and nothing comes back.
    fn fall_silent(&self) {
        self.silent
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// "w0 " … "w59 ", 50 ms apart: 3 s, long enough to cut, reload or stop in the middle.
fn numbered() -> (Vec<String>, Reply) {
    let tokens: Vec<String> = (0..60).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let reply = Reply::sse(openai::answer(&refs, Duration::from_millis(50)));
    (tokens, reply)
}

/// Records every status line the page shows, and what the status and alert regions say.
const RECORD: &str = "
    window.__statuses = [];
    window.__said = [];
    const status = document.getElementById('status');
    new MutationObserver(() => window.__statuses.push(status.textContent))
        .observe(status, { childList: true, subtree: true, characterData: true });
    for (const id of ['announcer', 'alert']) {
        const region = document.getElementById(id);
        new MutationObserver(() => { if (region.textContent) window.__said.push(region.textContent); })
            .observe(region, { childList: true, subtree: true, characterData: true });
    }";

async fn recorded(browser: &Browser, what: &str) -> Vec<String> {
    serde_json::from_value(browser.js(&format!("return window.{what};")).await).expect("texts")
}

async fn wait_for_words(browser: &Browser, words: usize) {
    browser
        .wait_for(
            &format!("{words} words of the answer"),
            &format!(
                "return (document.querySelector('#turns > .turn:last-child .answer')?.innerText ?? '').split(/\\s+/).length >= {words};"
            ),
            &describe(),
        )
        .await;
}

/// After a drop the page could not recover from: it said "Reconnecting…" first, and now offers
/// to ask again; the model was asked once.
async fn assert_gave_up_after_reconnecting(browser: &Browser, app: &crate::helpers::TestApp) {
    let statuses = recorded(browser, "__statuses").await;
    assert!(
        statuses.iter().any(|s| s == "Reconnecting…"),
        "{statuses:?}"
    );
    assert_eq!(
        browser
            .js("return document.getElementById('ask-again').hidden;")
            .await,
        false
    );
    assert_eq!(app.mock.request_count(), 1, "the model was asked once");
}

/// The page through a proxy that can cut its connections, ten words into counting to sixty.
async fn counting_through_a_proxy(
    adjust: impl FnOnce(&mut llm_stream::config::Config),
) -> (crate::helpers::TestApp, CutProxy, Browser, Vec<String>) {
    let app = spawn_app_with(adjust).await;
    let (tokens, reply) = numbered();
    app.mock.always(reply);
    let proxy = CutProxy::start(app.port).await;
    let browser = Browser::start().await;
    browser.goto(&proxy.url()).await;
    browser.js(RECORD).await;
    ask(&browser, "Count to sixty").await;
    wait_for_words(&browser, 10).await;
    (app, proxy, browser, tokens)
}

#[tokio::test]
async fn a_connection_cut_mid_answer_reconnects_and_the_answer_completes_exactly_from_one_request()
{
    // Arrange: the page through a proxy that can cut its connections.
    let (app, proxy, browser, tokens) =
        counting_through_a_proxy(|c| c.resume_grace = std::time::Duration::from_secs_f64(10.0))
            .await;

    // Act
    proxy.cut();
    let done = wait_for_state(&browser, "done").await;

    // Assert: the whole answer, once, from one upstream request; the page said it reconnected.
    assert_eq!(done.answer, tokens.concat().trim_end());
    assert_eq!(app.mock.request_count(), 1);
    let statuses = recorded(&browser, "__statuses").await;
    assert!(
        statuses.iter().any(|s| s == "Reconnecting…"),
        "{statuses:?}"
    );
    // The end is said a moment after Done; progress notes ("N words so far") come every 10 s.
    browser
        .wait_for(
            "the end to be said",
            "return window.__said.some((s) => s.startsWith('Answer complete'));",
            "return window.__said;",
        )
        .await;
    let said: Vec<String> = recorded(&browser, "__said")
        .await
        .into_iter()
        .filter(|s| !s.ends_with(" so far"))
        .collect();
    assert_eq!(
        said,
        [
            "Answer started",
            "Connection lost, reconnecting",
            "Reconnected, the answer continues",
            "Answer complete, 60 words",
        ]
    );
    assert_eq!(done.error, "");
}

#[tokio::test]
async fn a_resume_the_server_refuses_keeps_the_partial_answer_and_explains() {
    // Arrange: no grace and a short retention, so the cut answer is cancelled and soon forgotten:
    // the EventSource's reconnection is answered 204.
    let (app, proxy, browser, tokens) = counting_through_a_proxy(|c| {
        c.resume_grace = std::time::Duration::from_secs_f64(0.0);
        c.resume_retention = std::time::Duration::from_secs_f64(0.05);
    })
    .await;

    // Act
    proxy.cut();
    let failed = wait_for_state(&browser, "error").await;

    // Assert: the partial text stays, the page says what happened and offers to ask again.
    let full = tokens.concat();
    assert!(
        failed.answer.len() < full.len() && full.starts_with(&failed.answer),
        "{failed:?}"
    );
    assert!(failed.answer.split_whitespace().count() >= 10, "{failed:?}");
    assert_eq!(
        failed.error,
        "The connection to the server was lost and the server could not continue the answer. \
         The partial answer is kept above. Ask again for a complete answer."
    );
    assert!(failed.status.ends_with(" — connection lost"), "{failed:?}");
    assert_gave_up_after_reconnecting(&browser, &app).await;
}

#[tokio::test]
async fn a_reload_mid_answer_shows_the_question_and_continues_the_answer_without_asking_again() {
    // Arrange
    let app = spawn_app_with(|c| c.resume_grace = std::time::Duration::from_secs_f64(10.0)).await;
    let (tokens, reply) = numbered();
    app.mock.always(reply);
    let browser = open_page(&app).await;
    ask(&browser, "Count to sixty").await;
    wait_for_words(&browser, 10).await;
    let stream = browser
        .js("return JSON.parse(sessionStorage.getItem('llm-stream.answer')).stream;")
        .await;

    // Act
    browser.client.refresh().await.expect("reload");
    let done = wait_for_state(&browser, "done").await;

    // Assert: the question shown again (as its turn's heading, once), the whole answer, one
    // upstream request, no cancel.
    assert_eq!(
        browser
            .js(
                "return Array.from(document.querySelectorAll('#turns .turn-question'),
                     (h) => h.textContent);"
            )
            .await,
        serde_json::json!(["Count to sixty"])
    );
    assert_eq!(done.turns, 1);
    assert_eq!(done.answer, tokens.concat().trim_end());
    assert_eq!(app.mock.request_count(), 1);
    // No cancel: the upstream connection stayed open until the mock had written it all.
    app.mock.wait_for_closed(1, DEADLINE).await;
    let last_write = app.mock.last_write_at().expect("the mock wrote");
    assert!(
        app.mock
            .closed_at()
            .iter()
            .all(|closed| *closed >= last_write),
        "the upstream was closed before the answer's end"
    );
    let requests = stream_urls(&browser).await;
    let stream = stream.as_str().expect("a stream id");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].ends_with(&format!("&last_event_id={stream}%3A0")),
        "resumed from the start, to replay what the reload lost: {requests:?}"
    );
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('llm-stream.answer');")
            .await,
        Value::Null,
        "nothing left to resume once done"
    );
}

#[tokio::test]
async fn back_from_the_back_forward_cache_mid_answer_the_page_continues_the_answer_exactly() {
    // Arrange: the page ten words into counting to sixty, recording how it is shown again.
    let app = spawn_app_with(|c| c.resume_grace = std::time::Duration::from_secs(10)).await;
    let (tokens, reply) = numbered();
    app.mock.always(reply);
    let browser = open_page(&app).await;
    browser
        .js("window.__shown_again = [];
             window.addEventListener('pageshow', (ev) => window.__shown_again.push(ev.persisted));")
        .await;
    ask(&browser, "Count to sixty").await;
    wait_for_words(&browser, 10).await;
    let stream = browser
        .js("return JSON.parse(sessionStorage.getItem('llm-stream.answer')).stream;")
        .await;

    // Act: away to another page, and back.
    browser.goto(&format!("{}/healthz", app.address)).await;
    browser.client.back().await.expect("back");
    let done = wait_for_state(&browser, "done").await;

    // Assert: the same page, out of the cache; the stream continued from its start, the whole
    // answer once in its one turn, from one upstream request.
    assert_eq!(
        browser.js("return window.__shown_again;").await,
        serde_json::json!([true]),
        "the page came back from the back-forward cache"
    );
    assert_eq!(done.turns, 1, "{done:?}");
    assert_eq!(done.answer, tokens.concat().trim_end());
    assert_eq!(done.error, "");
    assert_eq!(app.mock.request_count(), 1);
    let stream = stream.as_str().expect("a stream id");
    let requests = stream_urls(&browser).await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[1].ends_with(&format!("&last_event_id={stream}%3A0")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn stop_and_escape_cancel_the_upstream_within_a_second_despite_a_long_grace() {
    // Arrange: a minute of grace, and an upstream that never ends by itself.
    let app = spawn_app_with(|c| c.resume_grace = std::time::Duration::from_secs_f64(60.0)).await;
    let steps: Vec<Step> = (0..100)
        .flat_map(|i| {
            [
                Step::Sleep(Duration::from_millis(50)),
                openai::token(&format!("w{i} ")),
            ]
        })
        .collect();
    app.mock.always(Reply::sse(steps).then(End::Hang));
    let browser = open_page(&app).await;

    // Act: Stop.
    ask(&browser, "Go on").await;
    wait_for_words(&browser, 3).await;
    let stopped_at = Instant::now();
    browser.click("#stop").await;
    app.mock.wait_for_closed(1, DEADLINE).await;
    let stopped = view(&browser).await;

    // Act: Escape, on a second question.
    ask(&browser, "Go on again").await;
    wait_for_state(&browser, "generating").await;
    wait_for_words(&browser, 3).await;
    let escaped_at = Instant::now();
    browser
        .type_into("#question", &Key::Escape.to_string())
        .await;
    app.mock.wait_for_closed(2, DEADLINE).await;
    let escaped = view(&browser).await;

    // Assert: each upstream connection closed within a second; the page stopped at once.
    let closed = app.mock.closed_at();
    assert!(
        closed[0] >= stopped_at && closed[1] >= escaped_at,
        "an upstream connection closed before its Stop or Escape"
    );
    let after_stop = closed[0].duration_since(stopped_at);
    let after_escape = closed[1].duration_since(escaped_at);
    println!("upstream closed {after_stop:?} after Stop, {after_escape:?} after Escape");
    assert!(after_stop < Duration::from_secs(1), "{after_stop:?}");
    assert!(after_escape < Duration::from_secs(1), "{after_escape:?}");
    assert_eq!(stopped.state, "stopped");
    assert_eq!(escaped.state, "stopped");
    assert_eq!(app.mock.request_count(), 2);
}

#[tokio::test]
async fn a_reload_whose_answer_cannot_be_continued_shows_the_question_and_forgets_it() {
    // Arrange: the page left an answer in progress that the server does not know.
    let app = spawn_app().await;
    let browser = open_page(&app).await;
    browser
        .js(
            "sessionStorage.setItem('llm-stream.answer', JSON.stringify({
                 q: 'An old question', stream: '0123456789abcdef0123456789abcdef',
                 lastId: '0123456789abcdef0123456789abcdef:7' }));",
        )
        .await;

    // Act
    browser.client.refresh().await.expect("reload");
    let idle = browser
        .wait_for(
            "the page to say the answer could not be continued",
            &format!("{VIEW} return view.error !== '' ? view : null;"),
            &describe(),
        )
        .await;

    // Assert: the question back in its box, a sentence saying why, nothing left to resume.
    let idle: View = serde_json::from_value(idle).expect("a view");
    assert_eq!(idle.state, "idle");
    assert_eq!(
        idle.status,
        "Ready — the answer in progress could not be continued"
    );
    assert!(idle.error.contains("could not be continued"), "{idle:?}");
    assert_eq!(
        browser
            .js("return [document.getElementById('question').value,
                         sessionStorage.getItem('llm-stream.answer')];")
            .await,
        serde_json::json!(["An old question", null])
    );
    assert!(!idle.ask_disabled);
    assert_eq!(app.mock.request_count(), 0, "the model was not asked");
}

#[tokio::test]
async fn a_reconnect_that_brings_nothing_back_for_30_s_is_given_up_in_words() {
    // Arrange: a long grace, so only the silence decides.
    let (app, proxy, browser, tokens) =
        counting_through_a_proxy(|c| c.resume_grace = std::time::Duration::from_secs_f64(120.0))
            .await;

    // Act: the connection drops and every reconnection hangs with nothing coming back.
    proxy.fall_silent();
    let cut_at = Instant::now();
    proxy.cut();
    let found = browser
        .wait_for_within(
            "the page to give up",
            &format!("{VIEW} return view.state === 'error' ? view : null;"),
            &describe(),
            Duration::from_secs(45),
        )
        .await;
    let failed: View = serde_json::from_value(found).expect("a view");

    // Assert: not before 30 s, then said in words, the partial text kept, Ask again offered.
    assert!(
        cut_at.elapsed() >= Duration::from_secs(29),
        "gave up after {:?}",
        cut_at.elapsed()
    );
    let full = tokens.concat();
    assert!(
        full.starts_with(&failed.answer) && failed.answer.len() < full.len(),
        "{failed:?}"
    );
    assert!(failed.answer.split_whitespace().count() >= 10, "{failed:?}");
    assert_eq!(
        failed.error,
        "The connection to the server was lost and nothing came back for 30 seconds. \
         The partial answer is kept above. Ask again for a complete answer."
    );
    assert_gave_up_after_reconnecting(&browser, &app).await;
}
