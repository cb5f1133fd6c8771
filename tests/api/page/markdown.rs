//! The answer rendered as Markdown while it streams: finished blocks formatted at once, code
//! highlighted when its fence closes, each code block's Copy, the reasoning folding away.

use std::time::Duration;

use super::*;

/// An answer with most of what models write. The stream pauses inside the code block.
pub(super) const MARKDOWN: &str = "# Streaming Markdown

Here is a **bold** claim and some `inline code`, with *emphasis* and 中文 🦀.

- first item
- second item with **strong** text

1. one
2. two

> a quoted line

| Name | Value |
|------|------:|
| alpha | 1 |
| beta | 22 |

```rust
fn main() {
    println!(\"hi <there> & \\\"you\\\"\");
}
```

Done.
";

/// Where the stream pauses: inside the code block, after its first line.
const PAUSE_AT: &str = "fn main() {\n";

/// The text a reader sees, white space aside: the source without its markup.
const MARKDOWN_TEXT: &str = "Streaming Markdown Here is a bold claim and some inline code, with \
    emphasis and 中文 🦀. first item second item with strong text one two a quoted line Name Value \
    alpha 1 beta 22 fn main() { println!(\"hi <there> & \\\"you\\\"\"); } Done.";

/// The Markdown in pieces of 4 characters, 10 ms apart, with a pause of `pause` inside the code.
pub(super) fn markdown_reply(pause: Duration) -> (Vec<String>, Reply) {
    let split = MARKDOWN.find(PAUSE_AT).expect("the pause point") + PAUSE_AT.len();
    let mut tokens = pieces(&MARKDOWN[..split], 4);
    let pause_after = tokens.len();
    tokens.extend(pieces(&MARKDOWN[split..], 4));
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let steps = answer_with_pause(&refs, Duration::from_millis(10), pause_after, pause);
    (tokens, Reply::sse(steps))
}

/// What the answer's DOM holds, read in one script.
const ELEMENTS: &str = "
    const a = document.querySelector('#turns > .turn:last-child .answer');
    const code = a.querySelector('pre code');
    const elements = {
        state: document.body.dataset.state,
        h1: Array.from(a.querySelectorAll('h1'), (e) => e.textContent),
        items: Array.from(a.querySelectorAll('ul > li'), (e) => e.textContent),
        numbered: a.querySelectorAll('ol > li').length,
        strong: Array.from(a.querySelectorAll('strong'), (e) => e.textContent),
        em: Array.from(a.querySelectorAll('em'), (e) => e.textContent),
        inline_code: Array.from(a.querySelectorAll(':not(pre) > code'), (e) => e.textContent),
        quote: Array.from(a.querySelectorAll('blockquote'), (e) => e.textContent.trim()),
        headers: Array.from(a.querySelectorAll('table th'), (e) => e.textContent),
        cells: Array.from(a.querySelectorAll('table td'), (e) => e.textContent),
        right_aligned: Array.from(a.querySelectorAll('td[align=right]'), (e) => e.textContent),
        code: code ? code.textContent : null,
        code_class: code ? code.className : null,
        highlighted: a.querySelectorAll('pre code span[class^=\"hljs-\"]').length,
        copy_buttons: a.querySelectorAll('.code-block > .code-head > button.code-copy').length,
        text: a.innerText,
    };";

#[tokio::test]
async fn a_markdown_answer_is_formatted_while_it_streams_and_whole_at_the_end() {
    // Arrange
    let app = spawn_app().await;
    let (_, reply) = markdown_reply(Duration::from_secs(3));
    app.mock.always(reply);
    let browser = open_page(&app).await;

    // Act: wait for the pause inside the code block.
    ask(&browser, "Show me some Markdown").await;
    let partial = browser
        .wait_for(
            "the finished blocks formatted and the open code block shown",
            &format!(
                "{ELEMENTS} return elements.state === 'generating'
                     && elements.code !== null && elements.code.includes('fn main() {{')
                     ? elements : null;"
            ),
            &format!("{ELEMENTS} return elements;"),
        )
        .await;
    let done = wait_for_state(&browser, "done").await;
    let end = browser.js(&format!("{ELEMENTS} return elements;")).await;

    // Assert: while streaming, what was finished was already formatted; the open code block grew
    // as code, not yet highlighted.
    assert_eq!(partial["h1"], serde_json::json!(["Streaming Markdown"]));
    assert_eq!(
        partial["items"],
        serde_json::json!(["first item", "second item with strong text"])
    );
    assert_eq!(partial["strong"], serde_json::json!(["bold", "strong"]));
    assert_eq!(partial["code"], "fn main() {");
    assert_eq!(partial["code_class"], "hljs language-rust");
    assert_eq!(partial["highlighted"], 0, "{partial}");

    // Assert: at the end, every element, the code highlighted, the text the source's.
    assert_eq!(end["h1"], serde_json::json!(["Streaming Markdown"]));
    assert_eq!(end["numbered"], 2);
    assert_eq!(end["em"], serde_json::json!(["emphasis"]));
    assert_eq!(end["inline_code"], serde_json::json!(["inline code"]));
    assert_eq!(end["quote"], serde_json::json!(["a quoted line"]));
    assert_eq!(end["headers"], serde_json::json!(["Name", "Value"]));
    assert_eq!(
        end["cells"],
        serde_json::json!(["alpha", "1", "beta", "22"])
    );
    assert_eq!(end["right_aligned"], serde_json::json!(["1", "22"]));
    assert_eq!(
        end["code"],
        "fn main() {\n    println!(\"hi <there> & \\\"you\\\"\");\n}"
    );
    assert_eq!(end["code_class"], "hljs language-rust");
    assert!(end["highlighted"].as_u64() > Some(2), "{end}");
    assert_eq!(end["copy_buttons"], 1);
    assert_eq!(squeeze(&done.answer), MARKDOWN_TEXT);
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

#[tokio::test]
async fn each_code_blocks_copy_copies_its_code_and_the_answers_copy_copies_the_markdown() {
    // Arrange: two code blocks, the second with tabs, trailing spaces and a blank line.
    let app = spawn_app().await;
    let second = "for f in *.txt; do\n\techo \"$f\"  \n\ndone";
    let source = format!(
        "Two blocks:\n\n```python\nprint('one')\n```\n\nand\n\n```sh\n{second}\n```\n\nThat is all."
    );
    let tokens = pieces(&source, 5);
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    app.mock
        .always(Reply::sse(openai::answer(&refs, Duration::ZERO)));
    let browser = open_page(&app).await;
    browser.grant("clipboard-read").await;
    ask(&browser, "Two code blocks").await;
    wait_for_state(&browser, "done").await;

    // Act: the second block's Copy, then the answer's.
    browser.click(".code-block:nth-of-type(2) .code-copy").await;
    browser
        .wait_for(
            "the block's Copy to say Copied",
            "return document.querySelectorAll('.code-copy[data-copied=yes]').length === 1;",
            "return document.querySelector('#turns > .turn:last-child .answer').innerHTML;",
        )
        .await;
    let block = clipboard(&browser).await;
    let page = copy_answer(&browser, "last-child").await;

    // Assert
    assert_eq!(block, second);
    assert_eq!(page, source);
    let label = browser
        .js("return document.querySelectorAll('.code-copy')[1].getAttribute('aria-label');")
        .await;
    assert_eq!(label, "Copy the sh code");
}

#[tokio::test]
async fn the_reasoning_stays_plain_text_and_folds_into_thought_for_n_seconds_when_the_answer_starts()
 {
    // Arrange: 2 s of reasoning with Markdown-looking text, then the answer.
    let app = spawn_app().await;
    let reasoning = |text: &str| {
        openai::chunk(
            &serde_json::json!({"choices":[{"index":0,"delta":{"reasoning_content":text}}]})
                .to_string(),
        )
    };
    let mut steps = vec![reasoning("Let me **think**")];
    for _ in 0..6 {
        steps.push(Step::Sleep(Duration::from_millis(300)));
        steps.push(reasoning(" <b>more</b>…"));
    }
    steps.push(Step::Sleep(Duration::from_millis(200)));
    steps.extend(openai::answer(&["The **answer**."], Duration::ZERO));
    app.mock.always(Reply::sse(steps));
    let browser = open_page(&app).await;
    const THINKING: &str = "const t = document.querySelector('#turns > .turn:last-child .thinking');
        const thinking = { hidden: t.hidden, open: t.open,
            summary: t.querySelector('summary').textContent,
            text: document.querySelector('#turns > .turn:last-child .reasoning').textContent,
            elements: document.querySelector('#turns > .turn:last-child .reasoning').children.length };";

    // Act
    ask(&browser, "Think first").await;
    let while_thinking = browser
        .wait_for(
            "the reasoning shown, open",
            &format!("{THINKING} return thinking.text.includes('more') ? thinking : null;"),
            &format!("{THINKING} return thinking;"),
        )
        .await;
    let done = wait_for_state(&browser, "done").await;
    let after = browser.js(&format!("{THINKING} return thinking;")).await;

    // Assert
    assert_eq!(while_thinking["hidden"], false);
    assert_eq!(while_thinking["open"], true, "{while_thinking}");
    assert_eq!(after["open"], false, "folded once the answer started");
    assert_eq!(after["summary"], "Thought for 2 s");
    assert_eq!(
        after["text"],
        format!("Let me **think**{}", " <b>more</b>…".repeat(6))
    );
    assert_eq!(after["elements"], 0, "plain text, never markup");
    assert_eq!(done.answer, "The answer.");
}
