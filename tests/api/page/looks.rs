//! How a rendered answer looks, light and dark, on a phone and on a desktop: screenshots under
//! `target/screenshots/` to look at (docs/screenshot.png is one of them), and nothing wider than
//! the screen.

use std::time::Duration;

use serde_json::json;

use super::{markdown::markdown_reply, *};

#[tokio::test]
async fn a_markdown_answer_with_code_is_screenshotted_light_and_dark_at_360_px_and_on_a_desktop() {
    // Arrange
    let app = spawn_app().await;
    let (_, reply) = markdown_reply(Duration::ZERO);
    app.mock.always(reply);
    let browser = Browser::start().await;

    for (width, height, scale, mobile, device) in [
        (1000, 1150, 1, false, "desktop"),
        (360, 800, 2, true, "360px"),
    ] {
        for scheme in ["light", "dark"] {
            // Act
            browser
                .cdp(
                    "Emulation.setDeviceMetricsOverride",
                    json!({ "width": width, "height": height, "deviceScaleFactor": scale,
                            "mobile": mobile }),
                )
                .await;
            browser
                .cdp(
                    "Emulation.setEmulatedMedia",
                    json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
                )
                .await;
            // Each look starts its own conversation (the tab's sessionStorage would keep it).
            browser
                .js("try { sessionStorage.clear(); } catch { /* not on a page of ours yet */ }")
                .await;
            browser.goto(&format!("{}/", app.address)).await;
            ask(&browser, "How do I print in Rust? Show a table too.").await;
            wait_for_state(&browser, "done").await;
            let layout = browser
                .js(
                    "document.querySelector('#turns > .turn:last-child .answer').scrollTop = 0;
                     document.querySelector('.code-block').scrollIntoView({ block: 'nearest' });
                     document.activeElement.blur();
                     const code = document.querySelector('pre code');
                     return {
                         page_width: document.documentElement.scrollWidth,
                         code_colour: getComputedStyle(code.querySelector('span')).color,
                         code_background: getComputedStyle(code).backgroundColor,
                     };",
                )
                .await;
            let path = browser
                .screenshot(&format!("markdown-{device}-{scheme}.png"))
                .await;

            // Assert: nothing wider than the screen; code coloured; a real image written.
            assert!(
                layout["page_width"].as_u64().expect("the page's width") <= width,
                "{device} {scheme}: {layout}"
            );
            assert_ne!(
                layout["code_colour"], layout["code_background"],
                "{device} {scheme}: {layout}"
            );
            let size = path.metadata().expect("the screenshot").len();
            assert!(size > 20_000, "{}: {size} bytes", path.display());
        }
    }
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}
