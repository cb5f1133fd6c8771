//! Two instances in this process sharing one Redis: an answer resumed on the other, the limits
//! held across both (also when one reaches Redis through its unix socket or over TLS), a cancel
//! that reaches the producer; and one instance on Redis doing the basics.

use std::time::{Duration, Instant};

use llm_stream::config::Config;
use secrecy::SecretString;

use super::harness::{Process, RedisServer, assert_refused, instance, limits_of, pair, stream_url};
use crate::{
    helpers::{Answer, CLIENT, DEADLINE, SseReader},
    mock_upstream::{End, MockUpstream, Reply, openai},
};

const MS: Duration = Duration::from_millis(1);

/// `t0 ` … `t<n-1> `.
fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i} ")).collect()
}

fn answer_of(tokens: &[String], gap: Duration) -> Reply {
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    Reply::sse(openai::answer(&tokens, gap))
}

/// Reads `n` data events; their ids and tokens.
async fn read_tokens(reader: &mut SseReader, n: usize) -> (Vec<String>, String) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    for _ in 0..n {
        let event = reader.next_data().await.expect("a token");
        ids.push(event.id.clone().expect("an event id"));
        text.push_str(event.json()["token"].as_str().expect("a token event"));
    }
    (ids, text)
}

/// A `tokens`-token answer `gap` apart that never closes, in the pair's mock.
fn hanging(shared: &super::harness::Pair, tokens: usize, gap: Duration) {
    shared
        .mock
        .always(answer_of(&numbered(tokens), gap).then(End::Hang));
}

/// Opens `question` on `address` and reads `n` tokens: the reader and its stream id.
async fn opened(address: &str, question: &str, n: usize) -> (SseReader, String) {
    let mut reader = SseReader::get(stream_url(address, question), &[]).await;
    let stream = reader.stream_id().await;
    read_tokens(&mut reader, n).await;
    (reader, stream)
}

/// The events' ids are `<stream>:<from>`, `<stream>:<from + 1>`, … with no gap.
fn assert_ids_follow_on(answer: &Answer, stream: &str, from: u64) {
    let ids: Vec<String> = answer
        .events
        .iter()
        .map(|e| e.id.clone().unwrap_or_default())
        .collect();
    let expected: Vec<String> = (from..from + ids.len() as u64)
        .map(|n| format!("{stream}:{n}"))
        .collect();
    assert_eq!(ids, expected, "{}", answer.body);
}

#[tokio::test]
async fn a_stream_started_on_one_instance_and_dropped_is_resumed_on_the_other_exactly() {
    let shared = pair(|c| c.resume_grace = std::time::Duration::from_secs_f64(5.0)).await;
    let tokens = numbered(20);
    shared.mock.always(answer_of(&tokens, 50 * MS));
    let question = "what is a resume?";

    let mut on_a = SseReader::get(stream_url(&shared.a.address, question), &[]).await;
    let stream = on_a.stream_id().await;
    let (ids, seen) = read_tokens(&mut on_a, 5).await;
    drop(on_a);
    assert_eq!(
        ids.last().map(String::as_str),
        Some(&*format!("{stream}:5"))
    );

    let last = format!("{stream}:5");
    let rest = SseReader::get(
        stream_url(&shared.b.address, question),
        &[("last-event-id", &last)],
    )
    .await
    .read_to_end()
    .await;

    assert_eq!(rest.status, 200, "{}", rest.body);
    assert!(rest.opening.is_none(), "a resume does not open again");
    assert_eq!(format!("{seen}{}", rest.text()), tokens.concat());
    assert!(rest.ended_with_done(), "{}", rest.body);
    assert_ids_follow_on(&rest, &stream, 6);
    assert_eq!(shared.mock.request_count(), 1, "the model was asked once");
    // Everything seen: nothing left to resume, on either instance.
    let end = rest.last().id.clone().expect("an id");
    for address in [&shared.a.address, &shared.b.address] {
        let again = SseReader::get(stream_url(address, question), &[("last-event-id", &end)]).await;
        assert_eq!(again.status, 204, "after the end, from {address}");
    }
}

#[tokio::test]
async fn with_a_burst_of_two_the_third_stream_is_refused_whichever_instance_gets_it() {
    let shared = pair(|c| {
        c.rate_limit_per_minute = 2;
        c.rate_limit_burst = Some(2);
    })
    .await;
    shared
        .mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    let (a, b) = (&shared.a.address, &shared.b.address);
    let ask = |address: &str| SseReader::get(stream_url(address, "hi"), &[]);

    let first = ask(a).await.read_to_end().await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(limits_of(b, None).await["remaining"], 1, "B sees A's spend");
    let second = ask(b).await.read_to_end().await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("ratelimit-remaining").as_deref(), Some("0"));

    for address in [a, b, a] {
        let refused = ask(address).await.read_to_end().await;
        assert_eq!(refused.status, 429, "from {address}: {}", refused.body);
        assert!(refused.body.contains("rate_limited"), "{}", refused.body);
        assert_eq!(refused.header("ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(refused.header("ratelimit-limit").as_deref(), Some("2"));
    }
    for address in [a, b] {
        let view = limits_of(address, None).await;
        assert_eq!(
            (view["limit"].as_u64(), view["remaining"].as_u64()),
            (Some(2), Some(0))
        );
        assert!(view["reset_secs"].as_u64() > Some(30), "{view}");
    }
    assert_eq!(shared.mock.request_count(), 2);
}

/// With a burst of one shared through Redis: a question on `a` is answered, the next on `b` refused.
async fn assert_one_budget(a: &str, b: &str, mock: &MockUpstream) {
    mock.always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    let first = SseReader::get(stream_url(a, "hi"), &[])
        .await
        .read_to_end()
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_refused(b, "hi", 429, "rate_limited").await;
    assert_eq!(mock.request_count(), 1);
}

fn burst_of_one(c: &mut Config) {
    c.rate_limit_per_minute = 1;
    c.rate_limit_burst = Some(1);
}

#[tokio::test]
async fn an_instance_on_redis_unix_socket_shares_the_limits_of_one_on_tcp() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    let unix = redis.unix_url();
    let a = instance(&redis, &mock, |c| {
        burst_of_one(c);
        c.redis_url = Some(SecretString::from(unix));
    })
    .await;
    let b = instance(&redis, &mock, burst_of_one).await;

    assert_one_budget(&a.address, &b.address, &mock).await;
}

#[tokio::test]
async fn an_instance_on_rediss_shares_the_limits_of_one_on_tcp() {
    let redis = RedisServer::start_tls().await;
    let mock = MockUpstream::start().await;
    let (url, authority) = redis.tls_url();
    // The real binary, so that it trusts the test's authority (SSL_CERT_FILE) alone.
    let a = Process::start_on(
        &url,
        &[("SSL_CERT_FILE", authority.as_os_str())],
        &mock,
        &["--rate-limit-per-minute", "1", "--rate-limit-burst", "1"],
    )
    .await;
    a.wait_redis_up(true, DEADLINE).await;
    let b = instance(&redis, &mock, burst_of_one).await;

    assert_one_budget(&a.address, &b.address, &mock).await;
}

#[tokio::test]
async fn one_stream_per_client_holds_across_instances_and_frees_when_the_stream_ends() {
    let shared = pair(|c| c.max_streams_per_client = 1).await;
    shared.mock.always(answer_of(&numbered(5), 100 * MS));
    let (a, b) = (&shared.a.address, &shared.b.address);

    let mut running = SseReader::get(stream_url(a, "long"), &[]).await;
    running.next_data().await.expect("a first token on A");
    super::harness::assert_refused(b, "second", 429, "too_many_streams").await;
    assert_eq!(limits_of(b, None).await["streams_open"], 1);

    let rest = running.read_to_end().await;
    assert!(rest.ended_with_done(), "{}", rest.body);
    crate::helpers::eventually("A's slot to be released in Redis", DEADLINE, || async {
        limits_of(b, None).await["streams_open"].as_u64() == Some(0)
    })
    .await;
    let admitted = SseReader::get(stream_url(b, "second"), &[])
        .await
        .read_to_end()
        .await;
    assert_eq!(admitted.status, 200, "{}", admitted.body);
    assert!(admitted.ended_with_done(), "{}", admitted.body);
}

#[tokio::test]
async fn max_streams_holds_across_instances_for_every_client() {
    let shared = pair(|c| c.max_streams = 1).await;
    hanging(&shared, 50, 100 * MS);

    let mut running = SseReader::get(stream_url(&shared.a.address, "one"), &[]).await;
    running.next_data().await.expect("a first token on A");
    let other_client = [("x-real-ip", "203.0.113.5")];
    let refused = SseReader::get(stream_url(&shared.b.address, "two"), &other_client)
        .await
        .read_to_end()
        .await;

    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("at_capacity"), "{}", refused.body);
    assert_eq!(shared.mock.request_count(), 1);
}

#[tokio::test]
async fn a_cancel_sent_to_one_instance_stops_the_producer_on_the_other() {
    let shared = pair(|c| c.resume_grace = std::time::Duration::from_secs_f64(30.0)).await;
    hanging(&shared, 50, 100 * MS);

    let (on_a, stream) = opened(&shared.a.address, "stop me", 1).await;

    let cancel = |address: String| {
        let url = format!("{address}/api/stream/{stream}/cancel");
        async move { CLIENT.post(url).send().await.expect("cancel").status() }
    };
    let sent = Instant::now();
    assert_eq!(cancel(shared.b.address.clone()).await, 204);
    shared.mock.wait_for_closed(1, Duration::from_secs(1)).await;
    let latency = shared.mock.closed_at()[0] - sent;
    eprintln!("cancel on B to the upstream closed on A: {latency:?}");

    let rest = on_a.read_to_end().await;
    assert_eq!(
        rest.error().map(|e| e["error"].clone()),
        Some("cancelled".into()),
        "{}",
        rest.body
    );
    assert_eq!(cancel(shared.b.address.clone()).await, 204, "idempotent");
    let unknown = CLIENT
        .post(format!(
            "{}/api/stream/{}/cancel",
            shared.b.address,
            "0".repeat(32)
        ))
        .send()
        .await
        .expect("cancel");
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn on_redis_one_instance_answers_and_resumes_as_without_it() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    let app = instance(&redis, &mock, |c| {
        c.resume_grace = std::time::Duration::from_secs_f64(5.0)
    })
    .await;
    let tokens = numbered(12);
    mock.always(answer_of(&tokens, 30 * MS));

    let plain = app.stream("plain").await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(plain.text(), tokens.concat());
    assert!(plain.ended_with_done(), "{}", plain.body);
    assert_eq!(plain.retry, Some(1000), "{}", plain.body);
    assert_eq!(plain.stream_id().len(), 32, "{}", plain.body);

    let mut first = app.open("resume").await;
    let stream = first.stream_id().await;
    let (_, seen) = read_tokens(&mut first, 4).await;
    drop(first);
    let url = format!(
        "{}&last_event_id={stream}:4",
        stream_url(&app.address, "resume")
    );
    let rest = SseReader::get(url, &[]).await.read_to_end().await;

    assert_eq!(rest.status, 200, "{}", rest.body);
    assert_eq!(format!("{seen}{}", rest.text()), tokens.concat());
    assert!(rest.ended_with_done(), "{}", rest.body);
    assert_ids_follow_on(&rest, &stream, 5);
    assert_eq!(mock.request_count(), 2, "one upstream call per question");
}

#[tokio::test]
async fn after_redis_restarts_a_cancel_still_reaches_the_producer_on_the_other_instance() {
    let mut shared = pair(|_| {}).await;
    hanging(&shared, 50, 100 * MS);
    shared.redis.kill();
    // Each finds Redis gone on its next call.
    for address in [&shared.a.address, &shared.b.address] {
        assert_eq!(limits_of(address, None).await["streams_open"], 0);
    }
    shared.redis.restart().await;
    super::harness::wait_shared(&shared.a.address).await;
    super::harness::wait_shared(&shared.b.address).await;

    let (on_a, stream) = opened(&shared.a.address, "stop me", 1).await;
    let cancelled = CLIENT
        .post(format!("{}/api/stream/{stream}/cancel", shared.b.address))
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancelled.status(), 204);
    shared.mock.wait_for_closed(1, Duration::from_secs(1)).await;
    let rest = on_a.read_to_end().await;
    assert_eq!(
        rest.error().map(|e| e["error"].clone()),
        Some("cancelled".into()),
        "{}",
        rest.body
    );
}

#[tokio::test]
async fn a_reader_resuming_on_one_instance_ends_the_older_connection_on_the_other() {
    let shared = pair(|c| c.resume_grace = std::time::Duration::from_secs_f64(5.0)).await;
    hanging(&shared, 100, 50 * MS);
    let (a, b) = (&shared.a.address, &shared.b.address);

    let (mut first, stream) = opened(a, "q", 2).await;
    // A resume on B while A's connection still looks open: A's connection ends…
    let mut second = SseReader::get(
        stream_url(b, "q"),
        &[("last-event-id", &format!("{stream}:2"))],
    )
    .await;
    assert_eq!(second.status, 200);
    let (ids, _) = read_tokens(&mut second, 2).await;
    assert_eq!(ids[0], format!("{stream}:3"));
    while let Some(event) = first.next().await {
        assert!(event.json().get("error").is_none(), "{:?}", event.data);
    }
    // … and a resume back on A ends B's.
    let last = second
        .next_data()
        .await
        .expect("a token")
        .id
        .expect("an id");
    let mut third = SseReader::get(stream_url(a, "q"), &[("last-event-id", &last)]).await;
    assert_eq!(third.status, 200);
    third.next_data().await.expect("a token on the third");
    while second.next().await.is_some() {}
    assert_eq!(shared.mock.request_count(), 1);
}

#[tokio::test]
async fn a_reader_that_leaves_another_instance_starts_the_producers_grace() {
    let shared = pair(|c| c.resume_grace = std::time::Duration::from_secs_f64(1.0)).await;
    hanging(&shared, 100, 50 * MS);

    let (on_a, stream) = opened(&shared.a.address, "q", 2).await;
    drop(on_a);
    let mut on_b = SseReader::get(
        stream_url(&shared.b.address, "q"),
        &[("last-event-id", &format!("{stream}:2"))],
    )
    .await;
    // Read past the grace A started when its own reader left: B's reader keeps the answer going.
    let read_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < read_until {
        on_b.next_data().await.expect("a token on B");
    }
    assert_eq!(
        shared.mock.closed_count(),
        0,
        "B's reader counts as reading"
    );
    let left = Instant::now();
    drop(on_b);

    shared.mock.wait_for_closed(1, Duration::from_secs(3)).await;
    let closed = shared.mock.closed_at()[0] - left;
    eprintln!("B's reader left; the upstream closed on A after {closed:?}");
    assert!(
        closed >= Duration::from_millis(900),
        "before the grace: {closed:?}"
    );
}
