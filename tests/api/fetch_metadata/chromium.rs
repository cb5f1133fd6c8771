//! The policy in a real Chromium, which sends the fetch metadata itself: this site's page and an
//! allowed origin's EventSource still stream; another site's `<img>`, `<script>`, stylesheet and
//! frame pointing at the endpoint reach no upstream.

use std::time::Duration;

use super::cross_site_refusals;
use crate::{
    browser::Browser,
    helpers::{spawn_app, spawn_app_with},
    mock_upstream::{End, MockUpstream, Reply, Step, openai},
};

const TOKENS: [&str; 3] = ["Still ", "streams ", "here."];

/// Another site's page: a small HTML document served by a server of its own.
fn page(body: &str) -> Reply {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>another site</title></head>\
         <body>{body}</body></html>"
    );
    Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
        steps: vec![Step::Write(html.into_bytes())],
        end: End::Close,
    }
}

#[tokio::test]
async fn this_sites_own_page_still_streams_an_answer_in_chromium() {
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&TOKENS, Duration::ZERO)));
    let browser = Browser::start().await;
    browser.goto(&format!("{}/", app.address)).await;

    browser
        .type_into("#question", "Does the page still work?")
        .await;
    browser.click("#ask").await;

    let answer = browser
        .wait_for(
            "the answer on the page",
            "return document.body.dataset.state === 'done'
                 ? document.querySelector('#turns > .turn:last-child .answer').innerText : null;",
            "return document.body.dataset.state + ': '
                 + document.getElementById('status').textContent;",
        )
        .await;
    assert_eq!(answer, TOKENS.concat());
}

#[tokio::test]
async fn an_allowed_origins_eventsource_still_streams_in_chromium() {
    // 127.0.0.1 on another port: same site, another origin, named in CORS_ALLOWED_ORIGINS.
    let other_site = MockUpstream::start().await;
    let origin = format!("http://127.0.0.1:{}", other_site.address.port());
    let app = spawn_app_with(|c| c.cors_allowed_origins = vec![origin.clone()]).await;
    app.mock
        .always(Reply::sse(openai::answer(&TOKENS, Duration::ZERO)));
    other_site.always(page(&format!(
        "<script>
            const tokens = [];
            const source = new EventSource('{}/api/stream?q=hello');
            source.onmessage = (event) => {{
                if (event.data === '[DONE]') {{
                    source.close();
                    window.result = tokens.join('');
                }} else {{
                    tokens.push(JSON.parse(event.data).token ?? '');
                }}
            }};
            source.onerror = () => {{
                source.close();
                window.result = 'failed after: ' + tokens.join('');
            }};
        </script>",
        app.address
    )));
    let browser = Browser::start().await;

    browser.goto(&format!("{origin}/")).await;

    let result = browser
        .wait_for(
            "the EventSource to end",
            "return window.result ?? null;",
            "return 'no result yet';",
        )
        .await;
    assert_eq!(result, TOKENS.concat());
}

#[tokio::test]
async fn another_sites_img_script_stylesheet_and_frame_reach_no_upstream_in_chromium() {
    // localhost and 127.0.0.1 are different sites.
    let foreign = MockUpstream::start().await;
    let app = spawn_app().await;
    app.mock
        .always(Reply::sse(openai::answer(&TOKENS, Duration::ZERO)));
    let stream = format!("{}/api/stream?q=", app.address);
    let ended =
        |what: &str| format!("onload=\"ended('{what} load')\" onerror=\"ended('{what} error')\"");
    foreign.always(page(&format!(
        "<script>window.outcomes = []; function ended(what) {{ outcomes.push(what); }}</script>
         <img src=\"{stream}img\" {}>
         <link rel=\"stylesheet\" href=\"{stream}style\" {}>
         <iframe src=\"{stream}frame\" {}></iframe>
         <script src=\"{stream}script\" {}></script>",
        ended("img"),
        ended("style"),
        ended("frame"),
        ended("script"),
    )));
    let before = cross_site_refusals(&app).await;
    let browser = Browser::start().await;

    browser
        .goto(&format!("http://localhost:{}/", foreign.address.port()))
        .await;

    let outcomes = browser
        .wait_for(
            "the four loads to end",
            "return outcomes.length === 4 ? outcomes.sort() : null;",
            "return outcomes;",
        )
        .await;
    assert_eq!(
        outcomes,
        serde_json::json!(["frame load", "img error", "script error", "style error"])
    );
    assert_eq!(
        app.mock.request_count(),
        0,
        "no model call for another site's page"
    );
    assert!(
        cross_site_refusals(&app).await >= before + 4.0,
        "the four requests reached the server and were refused"
    );
}
