//! The shipped nginx block in front of two instances sharing one Redis.

use std::time::Duration;

use super::harness::{RedisServer, instance};
use crate::{
    mock_upstream::{MockUpstream, Reply, openai},
    nginx::harness::{Nginx, Site},
};

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn through_nginx_a_clients_rate_limit_holds_across_both_instances() {
    let redis = RedisServer::start().await;
    // A mock each, to tell which instance served.
    let (one_mock, two_mock) = (MockUpstream::start().await, MockUpstream::start().await);
    let limit = |c: &mut llm_stream::config::Config| {
        c.rate_limit_per_minute = 2;
        c.rate_limit_burst = Some(2);
    };
    let one = instance(&redis, &one_mock, limit).await;
    let two = instance(&redis, &two_mock, limit).await;
    for mock in [&one_mock, &two_mock] {
        mock.always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    }
    let nginx = Nginx::start(Site::plain(&[&one, &two])).await;

    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(nginx.open(&[]).await.read_to_end().await.status);
    }

    // Without Redis each instance would give its own two: [200, 200, 200, 200, 429].
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert_eq!(
        (one_mock.request_count(), two_mock.request_count()),
        (1, 1),
        "each instance served one"
    );
}

#[tokio::test]
async fn a_connection_cut_at_nginx_resumes_through_nginx() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    let grace = |c: &mut llm_stream::config::Config| {
        c.resume_grace = std::time::Duration::from_secs_f64(5.0)
    };
    let one = instance(&redis, &mock, grace).await;
    let two = instance(&redis, &mock, grace).await;
    let tokens: Vec<String> = (0..20).map(|i| format!("t{i} ")).collect();
    let texts: Vec<&str> = tokens.iter().map(String::as_str).collect();
    mock.always(Reply::sse(openai::answer(&texts, 50 * MS)));
    let nginx = Nginx::start(Site::plain(&[&one, &two])).await;

    let mut first = nginx.open(&[]).await;
    let stream = first.stream_id().await;
    let mut seen = String::new();
    for _ in 0..5 {
        let event = first.next_data().await.expect("a token");
        seen.push_str(event.json()["token"].as_str().expect("a token"));
    }
    drop(first);
    let last = format!("{stream}:5");
    let rest = nginx
        .open(&[("last-event-id", &last)])
        .await
        .read_to_end()
        .await;

    assert_eq!(rest.status, 200, "{}", rest.body);
    assert_eq!(format!("{seen}{}", rest.text()), tokens.concat());
    assert!(rest.ended_with_done(), "{}", rest.body);
    assert_eq!(mock.request_count(), 1);
}
