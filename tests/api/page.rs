//! The page, proven in a real headless Chromium against the real server and the mock upstream:
//! what a person sees while an answer streams, stops, fails or is refused; the answer as Markdown,
//! safe whatever the model writes; what a screen reader hears; how it looks.

use std::time::Duration;

use serde::Deserialize;

mod access;
mod answers;
mod budget;
mod conversation;
mod fallback;
mod hostile;
mod ids;
mod long;
mod looks;
mod markdown;
mod problems;
mod resume;
mod signin;

use crate::{
    browser::Browser,
    helpers::{DEADLINE, TestApp, spawn_app, spawn_app_with},
    mock_upstream::{End, Reply, Step, openai},
};

/// What the page shows, read in one script.
/// The answer and usage are the last turn's: the question asked last.
const VIEW: &str = "
    const $ = (id) => document.getElementById(id);
    const turn = document.querySelector('#turns > .turn:last-child');
    const usage = turn ? turn.querySelector('.usage') : null;
    const view = {
        state: document.body.dataset.state,
        status: $('status').textContent,
        answer: turn ? turn.querySelector('.answer').innerText : '',
        error: $('error').hidden ? '' : $('error').textContent,
        usage: usage && !usage.hidden ? usage.textContent : '',
        ask_disabled: $('ask').disabled,
        stop_disabled: $('stop').disabled,
        turns: document.querySelectorAll('#turns > .turn').length,
    };";

#[derive(Debug, Deserialize)]
struct View {
    state: String,
    status: String,
    /// The rendered answer's `innerText`: its text as laid out, without the Markdown's markup.
    answer: String,
    error: String,
    usage: String,
    ask_disabled: bool,
    stop_disabled: bool,
    /// How many turns the conversation on screen has.
    turns: usize,
}

/// An answer with CJK, emoji, accents, a line break and runs of spaces, one token per event.
const TOKENS: [&str; 20] = [
    "Streaming",
    " answers",
    " arrive",
    " token",
    " by",
    " token",
    ".\n",
    "Unicode:",
    " 你好，世界",
    " — ",
    "日本語",
    " ",
    "🦀",
    "🚀",
    " café",
    " naïve",
    " Ångström",
    "\n\n",
    "  two  spaces  kept",
    " — the end.",
];

/// The tokens 100–150 ms apart after a pause of `first`, then finish, usage and `[DONE]`.
fn slow_answer(tokens: &[&str], first: Duration) -> Vec<Step> {
    openai::paced(tokens, |i| match i {
        0 => first,
        _ => Duration::from_millis(100 + 50 * (i as u64 % 2)),
    })
}

async fn open_page(app: &TestApp) -> Browser {
    let browser = Browser::start().await;
    browser.goto(&format!("{}/", app.address)).await;
    browser
}

/// The script that reads the whole view, for a wait to report what the page showed.
fn describe() -> String {
    format!("{VIEW} return view;")
}

async fn view(browser: &Browser) -> View {
    serde_json::from_value(browser.js(&describe()).await).expect("a view")
}

/// Waits until the page's `data-state` is `state`, and returns what it shows then.
async fn wait_for_state(browser: &Browser, state: &str) -> View {
    let found = browser
        .wait_for(
            &format!("data-state={state}"),
            &format!("{VIEW} return view.state === '{state}' ? view : null;"),
            &describe(),
        )
        .await;
    serde_json::from_value(found).expect("a view")
}

/// The page's requests to `/api/stream`, by the browser's own record (query strings included).
async fn stream_urls(browser: &Browser) -> Vec<String> {
    serde_json::from_value(
        browser
            .js(
                "return performance.getEntriesByType('resource').map((e) => e.name)
                     .filter((n) => n.includes('/api/stream'));",
            )
            .await,
    )
    .expect("names")
}

async fn ask(browser: &Browser, question: &str) {
    browser.type_into("#question", question).await;
    browser.click("#ask").await;
}

#[tokio::test]
async fn the_page_is_served_with_security_headers_and_long_cached_versioned_assets() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.llm_model = Some("model-x-42".into());
        c.max_query_chars = 1234;
    })
    .await;

    // Act
    let page = app.get("/").await;

    // Assert: the page.
    assert_eq!(page.status(), 200);
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header(&page, "content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    let html = page.text().await.expect("the page");
    assert!(html.contains("model-x-42"), "the model's name is shown");
    assert!(html.contains(r#"maxlength="1234""#));
    assert!(html.contains("0 / 1234"));
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "nothing inline"
    );

    // Assert: the versioned script, cached for a year and still revalidatable.
    let script = html
        .split('"')
        .find(|part| part.starts_with("/static/app.js?v="))
        .expect("a versioned script link")
        .to_owned();
    let asset = app.get(&script).await;
    assert_eq!(asset.status(), 200);
    let etag = header(&asset, "etag");
    assert!(!etag.is_empty());
    assert!(!header(&asset, "last-modified").is_empty());
    assert_eq!(
        header(&asset, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let revalidated = crate::helpers::CLIENT
        .get(format!("{}{script}", app.address))
        .header("If-None-Match", etag)
        .send()
        .await
        .expect("a response");
    assert_eq!(revalidated.status(), 304);
    let unversioned = app.get("/static/app.js").await;
    assert_eq!(header(&unversioned, "cache-control"), "no-cache");
    let missing = app.get(&script.replace("app.js", "nope.js")).await;
    assert_eq!(missing.status(), 404);
    assert!(!header(&missing, "cache-control").contains("max-age"));
}

/// Records every EventSource the page opens from now on, and the text of every token they
/// receive (read with [`event_sources`]). Run before the page asks.
const RECORD_EVENT_SOURCES: &str = "
    window.__sources = [];
    window.__received = '';
    const Original = window.EventSource;
    window.EventSource = class extends Original {
        constructor(...args) {
            super(...args);
            window.__sources.push(this);
            this.__errors = 0;
            this.addEventListener('error', () => { this.__errors += 1; });
            this.addEventListener('message', (ev) => {
                try {
                    const msg = JSON.parse(ev.data);
                    if (msg && typeof msg.token === 'string') window.__received += msg.token;
                } catch { /* [DONE] */ }
            });
        }
    };";

/// What the EventSources the page opened since [`RECORD_EVENT_SOURCES`] did.
#[derive(Debug, Deserialize)]
struct EventSources {
    /// The URL of each, in order.
    opened: Vec<String>,
    /// How many are not closed: connecting, reconnecting or open.
    not_closed: usize,
    /// Their error events: each lost connection (before it reconnects) and each failed attempt.
    errors: usize,
    /// The text of every token they received.
    received: String,
}

async fn event_sources(browser: &Browser) -> EventSources {
    let found = browser
        .js("return {
                 opened: window.__sources.map((s) => s.url),
                 not_closed: window.__sources.filter((s) => s.readyState !== EventSource.CLOSED).length,
                 errors: window.__sources.reduce((n, s) => n + s.__errors, 0),
                 received: window.__received,
             };")
        .await;
    serde_json::from_value(found).expect("the page's EventSources, recorded")
}

/// The clipboard's text, read by the page (needs `clipboard-read` granted).
async fn clipboard(browser: &Browser) -> String {
    browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.clipboard.readText().then(done, (e) => done('failed: ' + e));",
            vec![],
        )
        .await
        .expect("read the clipboard")
        .as_str()
        .expect("text")
        .to_owned()
}

/// Clicks the Copy of the turn `turn` (`first-child`, `last-child`, …), waits for it to say
/// Copied, and returns what it put on the clipboard.
async fn copy_answer(browser: &Browser, turn: &str) -> String {
    let button = format!("#turns > .turn:{turn} .answer-copy");
    browser.click(&button).await;
    browser
        .wait_for(
            "the answer's Copy to say Copied",
            &format!("return document.querySelector('{button}').textContent === 'Copied';"),
            &format!("return document.querySelector('{button}').textContent;"),
        )
        .await;
    clipboard(browser).await
}

/// The tokens `gap` apart, pausing `pause` after the first `pause_after` of them, then finish,
/// usage and `[DONE]`.
fn answer_with_pause(
    tokens: &[&str],
    gap: Duration,
    pause_after: usize,
    pause: Duration,
) -> Vec<Step> {
    openai::paced(tokens, |i| match i {
        _ if i == pause_after => pause,
        0 => Duration::ZERO,
        _ => gap,
    })
}

/// Splits text into pieces of about `size` characters, as a model's tokens would come.
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// White space runs as one space, ends trimmed: to compare text across layout differences.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
