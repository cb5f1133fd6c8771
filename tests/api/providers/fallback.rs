//! A fallback upstream (LLM_FALLBACK_*): a question the primary fails before its first token is
//! answered whole by the fallback, at once and named so; never after a token; a breaker per
//! upstream stops a dead one from being asked, lets one probe through after its open time, and
//! closes on the probe's success. Each pairing is tried both ways: an OpenAI-compatible primary
//! with an Anthropic fallback, and the reverse.

use std::time::Duration;

use llm_stream::config::{Config, ProviderKind};
use reqwest::Url;
use secrecy::SecretString;
use serde_json::json;

use super::finish;
use crate::{
    helpers::{
        Answer, CLIENT, DEADLINE, SseReader, TestApp, openai_config, spawn_app_with,
        spawn_with_config,
    },
    metrics::{scrape, scrape_until, value},
    mock_upstream::{
        End, Fault, Faulty, Gate, MockUpstream, Reply, Step, Unreachable, anthropic, openai,
        refusing_url,
    },
};

const PRIMARY_MODEL: &str = "primary-model";
const FALLBACK_MODEL: &str = "fallback-model";
const PRIMARY_KEY: &str = "sk-test-SECRET-KEY";
const FALLBACK_KEY: &str = "sk-fallback-SECRET-KEY";
const FROM_PRIMARY: [&str; 2] = ["Answered ", "by the primary."];
const FROM_FALLBACK: [&str; 2] = ["Answered ", "by the fallback."];

/// The shortest wait before a retry: 250 ms less its jitter of up to 50 %.
const SHORTEST_BACKOFF: Duration = Duration::from_millis(125);

/// One upstream's wire format.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    OpenAi,
    Anthropic,
}

/// The primary's shape in each pairing; the fallback has the other.
const PAIRINGS: [Shape; 2] = [Shape::OpenAi, Shape::Anthropic];

impl Shape {
    fn kind(self) -> ProviderKind {
        match self {
            Self::OpenAi => ProviderKind::OpenAi,
            Self::Anthropic => ProviderKind::Anthropic,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::OpenAi => Self::Anthropic,
            Self::Anthropic => Self::OpenAi,
        }
    }

    /// A whole answer of these tokens.
    fn answer(self, tokens: &[&str]) -> Reply {
        Reply::sse(match self {
            Self::OpenAi => openai::answer(tokens, Duration::ZERO),
            Self::Anthropic => anthropic::answer(tokens, "end_turn"),
        })
    }

    /// The opening of a stream, before any token.
    fn preamble(self) -> Vec<Step> {
        match self {
            Self::OpenAi => vec![openai::chunk(
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            )],
            Self::Anthropic => vec![
                anthropic::message_start(5),
                anthropic::block_start(0, "text"),
                anthropic::ping(),
            ],
        }
    }

    fn token(self, text: &str) -> Step {
        match self {
            Self::OpenAi => openai::token(text),
            Self::Anthropic => anthropic::text(0, text),
        }
    }

    /// An error reported inside the stream.
    fn error(self) -> Step {
        match self {
            Self::OpenAi => {
                openai::chunk(r#"{"error":{"message":"overloaded","type":"server_error"}}"#)
            }
            Self::Anthropic => anthropic::error("overloaded_error", "Overloaded"),
        }
    }

    /// The messages a request carried, as (role, content), the system prompt first.
    fn messages(self, request: &serde_json::Value) -> Vec<(String, String)> {
        let pair = |m: &serde_json::Value| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        };
        let listed = request["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(pair);
        match self {
            Self::OpenAi => listed.collect(),
            Self::Anthropic => {
                let system = (
                    "system".to_owned(),
                    request["system"].as_str().unwrap().to_owned(),
                );
                std::iter::once(system).chain(listed).collect()
            }
        }
    }

    /// The key a request carried, in this format's header.
    fn key(self, request: &crate::mock_upstream::Recorded) -> Option<String> {
        match self {
            Self::OpenAi => request
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned)),
            Self::Anthropic => request.header("x-api-key"),
        }
    }
}

/// The app with a primary of one shape (its own mock `app.mock`, unless `primary_url` points
/// elsewhere) and a fallback of the other shape on `fallback`, answering `FROM_FALLBACK`.
struct Pair {
    app: TestApp,
    fallback: MockUpstream,
}

impl Pair {
    /// The primary's mock (when the primary is one).
    fn mock(&self) -> &MockUpstream {
        &self.app.mock
    }
}

fn base_url(url: &str) -> Url {
    format!("{url}/").parse().unwrap()
}

async fn spawn_pair(
    primary: Shape,
    primary_url: Option<String>,
    adjust: impl FnOnce(&mut Config),
) -> Pair {
    let mock = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    fallback.always(primary.other().answer(&FROM_FALLBACK));
    let mut config = openai_config(&mock);
    config.llm_provider = Some(primary.kind());
    config.llm_model = Some(PRIMARY_MODEL.into());
    if let Some(url) = primary_url {
        config.llm_base_url = Some(base_url(&url));
    }
    config.llm_fallback_provider = Some(primary.other().kind());
    config.llm_fallback_base_url = Some(base_url(&fallback.url()));
    config.llm_fallback_api_key = Some(SecretString::from(FALLBACK_KEY.to_owned()));
    config.llm_fallback_model = Some(FALLBACK_MODEL.into());
    adjust(&mut config);
    Pair {
        app: spawn_with_config(config, mock).await,
        fallback,
    }
}

/// The answer came whole from the fallback, says so, and the person saw no error.
fn assert_from_fallback(answer: &Answer, what: &str) {
    assert_eq!(
        answer.text(),
        FROM_FALLBACK.concat(),
        "{what}: {}",
        answer.body
    );
    assert!(
        answer.error().is_none(),
        "{what}: no error shown: {}",
        answer.body
    );
    let finish = finish(answer);
    assert_eq!(finish["upstream"], "fallback", "{what}: {finish}");
    assert_eq!(finish["model"], FALLBACK_MODEL, "{what}: {finish}");
}

fn assert_from_primary(answer: &Answer, what: &str) {
    assert_eq!(
        answer.text(),
        FROM_PRIMARY.concat(),
        "{what}: {}",
        answer.body
    );
    let finish = finish(answer);
    assert_eq!(finish["upstream"], "primary", "{what}: {finish}");
    assert_eq!(finish["model"], PRIMARY_MODEL, "{what}: {finish}");
}

/// Asks `question` in `conversation` (a new one when `None`) and reads the whole answer.
async fn ask_in(app: &TestApp, question: &str, conversation: Option<&str>) -> Answer {
    let mut url = Url::parse(&app.stream_url(question)).unwrap();
    if let Some(id) = conversation {
        url.query_pairs_mut().append_pair("conversation", id);
    }
    SseReader::get(url.to_string(), &[])
        .await
        .read_to_end()
        .await
}

#[tokio::test]
async fn an_answer_from_the_primary_names_the_primary_and_the_fallback_is_not_asked() {
    for shape in PAIRINGS {
        let pair = spawn_pair(shape, None, |_| {}).await;
        pair.mock().always(shape.answer(&FROM_PRIMARY));

        let answer = pair.app.stream("hi").await;

        assert_from_primary(&answer, &format!("{shape:?} primary"));
        assert_eq!(pair.fallback.request_count(), 0);
    }
}

#[tokio::test]
async fn each_http_failure_of_the_primary_is_answered_by_the_fallback_without_a_retry() {
    for shape in PAIRINGS {
        let failures = [
            ("500", Reply::status(500, r#"{"error":{"message":"boom"}}"#)),
            (
                "529",
                Reply::status(
                    529,
                    r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
                ),
            ),
            ("429", Reply::status(429, "{}").header("Retry-After", "1")),
            (
                "401",
                Reply::status(401, r#"{"error":{"message":"bad key"}}"#),
            ),
            ("403", Reply::status(403, "{}")),
            (
                "404",
                Reply::status(404, r#"{"error":{"message":"no such model"}}"#),
            ),
            (
                "a stream that ends before its first token",
                Reply::sse(shape.preamble()),
            ),
            ("an error in the stream before the first token", {
                let mut steps = shape.preamble();
                steps.push(shape.error());
                Reply::sse(steps)
            }),
        ];
        for (failure, reply) in failures {
            let what = format!("{shape:?} primary, {failure}");
            let pair = spawn_pair(shape, None, |c| c.llm_retries = 2).await;
            pair.mock().always(reply);

            let answer = pair.app.stream("hi").await;

            assert_from_fallback(&answer, &what);
            assert_eq!(
                pair.mock().request_count(),
                1,
                "{what}: the primary is not retried"
            );
            assert_eq!(pair.fallback.request_count(), 1, "{what}");
        }
    }
}

#[tokio::test]
async fn a_primary_that_refuses_connections_is_answered_by_the_fallback() {
    for shape in PAIRINGS {
        let pair = spawn_pair(shape, Some(refusing_url()), |_| {}).await;

        let answer = pair.app.stream("hi").await;

        assert_from_fallback(&answer, &format!("{shape:?} primary"));
        assert_eq!(pair.fallback.request_count(), 1);
    }
}

#[tokio::test]
async fn a_primary_that_closes_each_connection_costs_one_attempt_and_no_retry_wait() {
    for shape in PAIRINGS {
        let primary = Faulty::start(Fault::Close).await;
        let pair = spawn_pair(shape, Some(primary.url()), |c| c.llm_retries = 3).await;

        let answer = pair.app.stream("hi").await;

        assert_from_fallback(&answer, &format!("{shape:?} primary"));
        let tried = primary.accepted_at();
        assert_eq!(tried.len(), 1, "one attempt at the primary, no retries");
        let asked = pair.fallback.requests()[0].received_at;
        let gap = asked - tried[0];
        assert!(
            gap < SHORTEST_BACKOFF,
            "the fallback was asked {gap:?} after the primary's attempt: a backoff was waited"
        );
    }
}

#[tokio::test]
async fn a_primary_rate_limiting_with_a_retry_after_is_not_waited_for() {
    let pair = spawn_pair(Shape::OpenAi, None, |c| c.llm_retries = 2).await;
    pair.mock()
        .always(Reply::status(429, "{}").header("Retry-After", "3"));

    let answer = pair.app.stream("hi").await;

    assert_from_fallback(&answer, "429 with Retry-After: 3");
    let gap = pair.fallback.requests()[0].received_at - pair.mock().requests()[0].received_at;
    assert!(
        gap < Duration::from_secs(3),
        "the fallback was asked {gap:?} after the 429: its Retry-After was waited"
    );
    assert_eq!(pair.mock().request_count(), 1);
}

#[tokio::test]
async fn a_primary_that_never_answers_is_left_at_the_header_timeout_with_keep_alives_meanwhile() {
    for shape in PAIRINGS {
        let primary = Faulty::start(Fault::Silent).await;
        let pair = spawn_pair(shape, Some(primary.url()), |c| {
            c.upstream_idle_timeout = std::time::Duration::from_secs_f64(0.6);
            c.keepalive = std::time::Duration::from_secs_f64(0.1);
        })
        .await;

        let answer = pair.app.stream("hi").await;

        assert_from_fallback(&answer, &format!("{shape:?} primary"));
        assert_eq!(primary.accepted_at().len(), 1);
        let kept = answer.keep_alives_before_first_event();
        assert!(
            kept >= 2,
            "keep-alive comments while the primary hung: {kept}"
        );
    }
}

#[tokio::test]
async fn a_primary_that_cannot_be_connected_to_is_left_at_the_connect_timeout() {
    for shape in PAIRINGS {
        let primary = Unreachable::start().await;
        let pair = spawn_pair(shape, Some(primary.url()), |c| {
            c.upstream_connect_timeout = std::time::Duration::from_secs_f64(0.3);
        })
        .await;

        let answer = pair.app.stream("hi").await;

        assert_from_fallback(&answer, &format!("{shape:?} primary"));
    }
}

#[tokio::test]
async fn a_failure_after_the_first_token_is_an_in_band_error_and_the_fallback_gets_nothing() {
    for shape in PAIRINGS {
        let pair = spawn_pair(shape, None, |_| {}).await;
        let mut steps = shape.preamble();
        steps.push(shape.token("half an ans"));
        pair.mock().always(Reply::sse(steps));

        let answer = pair.app.stream("hi").await;

        assert_eq!(answer.tokens(), ["half an ans"], "{shape:?}");
        assert_eq!(answer.error().unwrap()["error"], "stream_interrupted");
        assert_eq!(
            pair.fallback.request_count(),
            0,
            "{shape:?}: one model per answer"
        );
    }
}

#[tokio::test]
async fn the_fallback_is_sent_its_own_key_and_model_with_the_shared_settings() {
    for shape in PAIRINGS {
        let pair = spawn_pair(shape, None, |c| {
            c.llm_max_tokens = 321;
            c.llm_system_prompt = "Be brief.".into();
        })
        .await;
        pair.mock().always(Reply::status(503, "{}"));

        pair.app.stream("what is SSE?").await;

        let request = &pair.fallback.requests()[0];
        let fallback = shape.other();
        assert_eq!(
            fallback.key(request).as_deref(),
            Some(FALLBACK_KEY),
            "{shape:?}"
        );
        assert!(!request.head.contains(PRIMARY_KEY) && !request.body.contains(PRIMARY_KEY));
        let body = request.json();
        assert_eq!(body["model"], FALLBACK_MODEL);
        assert_eq!(body["max_tokens"], 321);
        assert_eq!(
            fallback.messages(&body),
            [("system", "Be brief."), ("user", "what is SSE?")]
                .map(|(r, c)| (r.to_owned(), c.to_owned()))
        );
    }
}

#[tokio::test]
async fn a_follow_up_answered_by_the_fallback_carries_the_history_in_the_fallbacks_format() {
    for shape in PAIRINGS {
        let pair = spawn_pair(shape, None, |c| c.llm_system_prompt = "Be brief.".into()).await;
        pair.mock().then_reply(shape.answer(&["Paris", "."]));
        pair.mock().always(Reply::status(503, "{}"));

        let first = ask_in(&pair.app, "Capital of France?", None).await;
        let conversation = first.opening.as_ref().unwrap().json()["conversation"]
            .as_str()
            .unwrap()
            .to_owned();
        let second = ask_in(&pair.app, "And its population?", Some(&conversation)).await;

        assert_eq!(first.text(), "Paris.");
        assert_from_fallback(&second, &format!("{shape:?} primary, follow-up"));
        let fallback = shape.other();
        assert_eq!(
            fallback.messages(&pair.fallback.requests()[0].json()),
            [
                ("system", "Be brief."),
                ("user", "Capital of France?"),
                ("assistant", "Paris."),
                ("user", "And its population?"),
            ]
            .map(|(r, c)| (r.to_owned(), c.to_owned())),
            "{shape:?} primary: the fallback's own message shape"
        );
    }
}

#[tokio::test]
async fn llm_retries_apply_to_the_fallback() {
    let pair = spawn_pair(Shape::OpenAi, None, |c| c.llm_retries = 2).await;
    pair.mock().always(Reply::status(503, "{}"));
    pair.fallback.then_reply(Reply::status(503, "{}"));

    let answer = pair.app.stream("hi").await;

    assert_from_fallback(&answer, "the fallback's second attempt");
    assert_eq!(pair.mock().request_count(), 1);
    assert_eq!(pair.fallback.request_count(), 2);
}

#[tokio::test]
async fn both_down_gives_the_in_band_error_after_the_fallbacks_retries_only() {
    for shape in PAIRINGS {
        let pair = spawn_pair(shape, None, |c| c.llm_retries = 1).await;
        pair.mock().always(Reply::status(503, "{}"));
        pair.fallback.always(Reply::status(503, "{}"));

        let answer = pair.app.stream("hi").await;

        assert_eq!(
            answer.error().unwrap()["error"],
            "upstream_unavailable",
            "{shape:?}"
        );
        assert!(answer.tokens().is_empty());
        assert_eq!(
            pair.mock().request_count(),
            1,
            "{shape:?}: the primary once"
        );
        assert_eq!(
            pair.fallback.request_count(),
            2,
            "{shape:?}: the fallback and its retry"
        );
    }
}

#[tokio::test]
async fn a_cancel_stops_the_fallbacks_call() {
    let pair = spawn_pair(Shape::OpenAi, None, |_| {}).await;
    pair.mock().always(Reply::status(503, "{}"));
    pair.fallback.always(
        Reply::sse(vec![
            anthropic::message_start(3),
            anthropic::block_start(0, "text"),
            anthropic::text(0, "first"),
        ])
        .then(End::Hang),
    );
    let mut reader = pair.app.open("hi").await;
    let stream = reader.stream_id().await;
    assert_eq!(reader.next_data().await.unwrap().json()["token"], "first");

    let cancelled = CLIENT
        .post(format!("{}/api/stream/{stream}/cancel", pair.app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(cancelled.status(), 204);
    pair.fallback.wait_for_closed(1, DEADLINE).await;
}

#[tokio::test]
async fn after_the_breaker_opens_the_primary_is_not_asked_and_the_fallback_answers_at_once() {
    let pair = spawn_pair(Shape::OpenAi, None, |c| {
        c.upstream_breaker_failures = 2;
        c.upstream_breaker_open = Duration::from_secs(60);
    })
    .await;
    pair.mock().always(Reply::status(500, "{}"));
    let before = scrape(&pair.app).await;

    for question in 0..5 {
        let answer = pair.app.stream(&format!("question {question}")).await;
        assert_from_fallback(&answer, &format!("question {question}"));
    }

    assert_eq!(
        pair.mock().request_count(),
        2,
        "no request while the breaker is open"
    );
    assert_eq!(pair.fallback.request_count(), 5);
    const SKIPPED: &str = r#"llm_stream_fallbacks_total{reason="breaker_open"}"#;
    const FAILED: &str = r#"llm_stream_fallbacks_total{reason="upstream_unavailable"}"#;
    const ANSWERED: &str =
        r#"llm_stream_upstream_responses_total{upstream="fallback",status="200"}"#;
    let after = scrape_until(&pair.app, "the fallbacks counted", |after| {
        value(after, SKIPPED) >= value(&before, SKIPPED) + 3.0
            && value(after, FAILED) >= value(&before, FAILED) + 2.0
            && value(after, ANSWERED) >= value(&before, ANSWERED) + 5.0
    })
    .await;
    assert!(
        after.contains("# TYPE llm_stream_upstream_breaker_open gauge"),
        "{after}"
    );
}

#[tokio::test]
async fn after_its_open_time_one_probe_reaches_the_primary_and_its_success_brings_questions_back() {
    const OPEN: Duration = Duration::from_millis(500);
    let pair = spawn_pair(Shape::Anthropic, None, |c| {
        c.upstream_breaker_failures = 1;
        c.upstream_breaker_open = OPEN;
    })
    .await;
    let gate = Gate::new();
    let mut slow = Shape::Anthropic.preamble();
    slow.push(Step::Gate(gate.clone()));
    slow.extend(
        Shape::Anthropic
            .answer(&FROM_PRIMARY)
            .steps
            .into_iter()
            .skip(3),
    );
    pair.mock().then_reply(Reply::status(500, "{}"));
    pair.mock().then_reply(Reply::sse(slow));
    pair.mock().always(Shape::Anthropic.answer(&FROM_PRIMARY));
    assert_from_fallback(&pair.app.stream("opens the breaker").await, "the failure");
    // The breaker is open for OPEN from that failure: let it pass.
    tokio::time::sleep(OPEN).await;

    let probe = pair.app.open("the probe").await;
    pair.mock().wait_for_requests(2, DEADLINE).await;
    for question in ["while probing", "still probing"] {
        let answer = pair.app.stream(question).await;
        assert_from_fallback(&answer, question);
    }
    assert_eq!(pair.mock().request_count(), 2, "exactly one probe");
    gate.open();
    assert_from_primary(&probe.read_to_end().await, "the probe");

    let after = pair.app.stream("after the probe").await;

    assert_from_primary(&after, "after the probe");
    assert_eq!(pair.mock().request_count(), 3);
    assert_eq!(pair.fallback.request_count(), 3);
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    const OPEN: Duration = Duration::from_millis(800);
    let pair = spawn_pair(Shape::OpenAi, None, |c| {
        c.upstream_breaker_failures = 1;
        c.upstream_breaker_open = OPEN;
    })
    .await;
    pair.mock().always(Reply::status(500, "{}"));
    pair.app.stream("opens the breaker").await;
    tokio::time::sleep(OPEN).await;

    assert_from_fallback(&pair.app.stream("the probe").await, "the probe");
    assert_eq!(pair.mock().request_count(), 2);
    assert_from_fallback(&pair.app.stream("after it").await, "after the probe");

    assert_eq!(
        pair.mock().request_count(),
        2,
        "open again after the failed probe"
    );
}

#[tokio::test]
async fn with_both_breakers_open_the_primary_is_tried_and_its_success_closes_its_breaker() {
    let pair = spawn_pair(Shape::OpenAi, None, |c| {
        c.upstream_breaker_failures = 1;
        c.upstream_breaker_open = Duration::from_secs(60);
        c.llm_retries = 0;
    })
    .await;
    pair.mock().then_reply(Reply::status(500, "{}"));
    pair.mock().always(Shape::OpenAi.answer(&FROM_PRIMARY));
    pair.fallback.always(Reply::status(500, "{}"));
    let down = pair.app.stream("both down").await;
    assert_eq!(down.error().unwrap()["error"], "upstream_unavailable");

    let back = pair.app.stream("the primary is back").await;
    let after = pair.app.stream("and stays").await;

    assert_from_primary(&back, "both open");
    assert_from_primary(&after, "the primary's breaker closed");
    assert_eq!(pair.mock().request_count(), 3);
    assert_eq!(
        pair.fallback.request_count(),
        1,
        "the fallback's breaker is still open"
    );
}

#[tokio::test]
async fn without_a_fallback_there_is_no_breaker_and_the_finish_is_as_before() {
    let app = spawn_app_with(|c| c.llm_retries = 0).await;
    app.mock
        .then_reply(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    app.mock.always(Reply::status(500, "{}"));

    let answered = app.stream("hi").await;
    for question in 0..7 {
        let answer = app.stream(&format!("question {question}")).await;
        assert_eq!(answer.error().unwrap()["error"], "upstream_unavailable");
    }

    assert_eq!(
        finish(&answered),
        json!({"finish_reason":"stop","usage":{"prompt_tokens":9,"completion_tokens":1}}),
        "no model or upstream named without a fallback"
    );
    assert_eq!(
        app.mock.request_count(),
        8,
        "every question asked the upstream"
    );
}
