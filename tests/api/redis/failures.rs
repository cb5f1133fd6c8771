//! Things going away: an instance killed mid-answer (the real binary, SIGKILL), and Redis killed
//! and started again under two running instances.

use std::time::{Duration, Instant};

use super::harness::{Process, RedisServer, stream_url};
use crate::helpers::eventually;
use crate::{
    helpers::{DEADLINE, SseReader},
    mock_upstream::{End, MockUpstream, Reply, openai},
};

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn killing_the_producing_instance_ends_a_resumed_reader_with_stream_interrupted_and_frees_its_slot()
 {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    mock.always(Reply::sse(openai::answer(&["tok "; 300], 50 * MS)).then(End::Hang));
    let flags = ["--max-streams-per-client", "1", "--resume-grace-secs", "30"];
    let mut a = Process::start(&redis, &mock, &flags).await;
    let b = Process::start(&redis, &mock, &flags).await;
    a.wait_redis_up(true, DEADLINE).await;
    b.wait_redis_up(true, DEADLINE).await;

    let mut on_a = SseReader::get(stream_url(&a.address, "long"), &[]).await;
    let stream = on_a.stream_id().await;
    for _ in 0..3 {
        on_a.next_data().await.expect("a token on A");
    }
    drop(on_a);
    let mut on_b = SseReader::get(
        stream_url(&b.address, "long"),
        &[("last-event-id", &format!("{stream}:3"))],
    )
    .await;
    assert_eq!(on_b.status, 200);
    let mut next = 4;
    let expect = |event: &crate::helpers::Event, next: &mut u64| {
        assert_eq!(event.id.as_deref(), Some(&*format!("{stream}:{next}")));
        *next += 1;
    };
    for _ in 0..3 {
        let event = on_b.next_data().await.expect("a token on B");
        expect(&event, &mut next);
    }

    a.kill();
    let killed = Instant::now();
    let end = loop {
        let event = on_b
            .next_data()
            .await
            .expect("an event or stream_interrupted on B");
        expect(&event, &mut next);
        if event.json().get("error").is_some() {
            break event;
        }
        assert!(event.json()["token"].is_string(), "{:?}", event.data);
    };
    let noticed = end.at - killed;
    eprintln!("A killed; B's reader got stream_interrupted after {noticed:?}");
    assert_eq!(end.json()["error"], "stream_interrupted");
    assert!(noticed < Duration::from_secs(10), "{noticed:?}");
    assert!(
        on_b.next().await.is_none(),
        "the stream ends after the error"
    );
    // An EventSource reconnects after the error: it is told to stop (204), not interrupted again.
    let end_id = end.id.clone().expect("an id");
    let again = SseReader::get(
        stream_url(&b.address, "long"),
        &[("last-event-id", &end_id)],
    )
    .await;
    assert_eq!(again.status, 204, "resumed after stream_interrupted");

    // A's slot was leased in Redis: still held, until the lease runs out with nobody renewing it.
    super::harness::assert_refused(&b.address, "again", 429, "too_many_streams").await;
    assert_eq!(redis.live_slots("127.0.0.1").await, 1);
    // Asked of Redis itself: an instance that found Redis slow for a moment would answer from its
    // own (empty) slots meanwhile.
    eventually("A's lease to run out", Duration::from_secs(35), || async {
        redis.live_slots("127.0.0.1").await == 0
    })
    .await;
    eprintln!("A's slot came back {:?} after the kill", killed.elapsed());
    let mut admitted = SseReader::get(stream_url(&b.address, "again"), &[]).await;
    assert_eq!(admitted.status, 200);
    admitted
        .next_data()
        .await
        .expect("a token on B's own stream");
}

#[tokio::test]
async fn without_redis_instances_serve_on_their_own_limits_and_share_again_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    mock.always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    let flags = ["--rate-limit-per-minute", "1", "--rate-limit-burst", "1"];
    let a = Process::start(&redis, &mock, &flags).await;
    let b = Process::start(&redis, &mock, &flags).await;
    a.wait_redis_up(true, DEADLINE).await;
    b.wait_redis_up(true, DEADLINE).await;
    let ask = |address: &str| {
        let url = stream_url(address, "hi");
        async move {
            let started = Instant::now();
            let answer = SseReader::get(url, &[]).await.read_to_end().await;
            (answer.status, started.elapsed())
        }
    };

    assert_eq!(ask(&a.address).await.0, 200);
    assert_eq!(ask(&b.address).await.0, 429, "shared: one for both");

    redis.kill();
    // Each instance finds Redis gone on its next call and goes on with its own (unspent) limits.
    for process in [&a, &b] {
        let (status, took) = ask(&process.address).await;
        eprintln!("{} with Redis dead: {status} in {took:?}", process.address);
        assert_eq!(status, 200, "{}", process.log());
        assert!(took < Duration::from_secs(1), "{took:?}");
        process.wait_redis_up(false, DEADLINE).await;
        let (status, took) = ask(&process.address).await;
        assert_eq!(status, 429, "its own limit holds");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    redis.restart().await;
    let back = Instant::now();
    a.wait_redis_up(true, DEADLINE).await;
    b.wait_redis_up(true, DEADLINE).await;
    eprintln!(
        "both instances on Redis again {:?} after its restart",
        back.elapsed()
    );
    assert_eq!(ask(&b.address).await.0, 200, "a fresh shared budget");
    assert_eq!(ask(&a.address).await.0, 429, "shared again: one for both");
    assert_eq!(mock.request_count(), 4);
}

#[tokio::test]
async fn an_instance_started_while_redis_is_down_serves_and_shares_once_redis_is_up() {
    let mut redis = RedisServer::reserve();
    let mock = MockUpstream::start().await;
    mock.always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    let flags = ["--rate-limit-per-minute", "1", "--rate-limit-burst", "1"];
    let a = Process::start(&redis, &mock, &flags).await;
    let b = Process::start(&redis, &mock, &flags).await;
    let status = |address: String| async move {
        let started = Instant::now();
        let answer = SseReader::get(stream_url(&address, "hi"), &[])
            .await
            .read_to_end()
            .await;
        (answer.status, started.elapsed())
    };

    assert_eq!(a.redis_up().await, Some(0.0));
    let (served, took) = status(a.address.clone()).await;
    assert_eq!(served, 200, "degraded, not down: {}", a.log());
    assert!(took < Duration::from_secs(1), "{took:?}");
    eventually("a warning that Redis is down", DEADLINE, || async {
        a.log()
            .contains("Redis (REDIS_URL) is unreachable at start-up")
    })
    .await;

    redis.restart().await;
    a.wait_redis_up(true, DEADLINE).await;
    b.wait_redis_up(true, DEADLINE).await;
    assert_eq!(status(b.address.clone()).await.0, 200);
    assert_eq!(
        status(a.address.clone()).await.0,
        429,
        "shared once Redis is up"
    );
}
