//! What an operator watches: the metric names, the one recorder the process holds, and a helper
//! for each thing worth counting. `GET /metrics` renders them in Prometheus text format.
//!
//! Streams are counted once, when their [`crate::telemetry::StreamReport`] is dropped; requests
//! refused before any stream are counted apart, by the refusal's code.

use std::{sync::OnceLock, time::Duration};

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::Refusal;

/// Streams open now (gauge).
pub const STREAMS_OPEN: &str = "llm_stream_streams_open";
/// Streams ended, by `outcome`: `done`, an in-band error code, or `client_gone`.
pub const STREAMS: &str = "llm_stream_streams_total";
/// Requests refused before any stream, by `reason`: `rate_limited`, `token_budget_exhausted`,
/// `service_budget_exhausted`, `too_many_streams`, `at_capacity`, `invalid_query`, `cross_site`,
/// `conversation_busy`.
pub const REFUSALS: &str = "llm_stream_refusals_total";
/// Time from the request to the first token or reasoning delta sent.
pub const FIRST_TOKEN: &str = "llm_stream_first_token_seconds";
/// Time from the request to the end of the stream.
pub const DURATION: &str = "llm_stream_stream_duration_seconds";
/// Tokens sent to clients.
pub const TOKENS: &str = "llm_stream_tokens_sent_total";
/// Tokens answers cost, by `kind` (`prompt`, `completion`) and `source`: `usage` (as the upstream
/// reported them) or `estimate` (characters / 4, when it reported none).
pub const TOKENS_SPENT: &str = "llm_stream_tokens_total";
/// Upstream responses, by `upstream` (`primary`, `fallback`) and `status`: the HTTP status, or
/// `error` when no response came.
pub const UPSTREAM: &str = "llm_stream_upstream_responses_total";
/// HTTP/2 connections open to an upstream, by `upstream` (gauge).
pub const UPSTREAM_CONNECTIONS: &str = "llm_stream_upstream_http2_connections";
/// With a fallback: 1 while an upstream's breaker is open, by `upstream` (gauge).
pub const BREAKER_OPEN: &str = "llm_stream_upstream_breaker_open";
/// Questions moved to the fallback, by `reason`: the primary's in-band error code, or
/// `breaker_open` when the primary was not tried.
pub const FALLBACKS: &str = "llm_stream_fallbacks_total";

/// Resumes asked for, by `outcome`: `resumed` (the rest was sent) or `refused` (204).
pub const RESUMES: &str = "llm_stream_resumes_total";
/// Answers stopped by `POST /api/stream/<id>/cancel`.
pub const CANCELS: &str = "llm_stream_cancels_total";
/// Bytes of finished answers kept in this process for resuming.
pub const STORE_BYTES: &str = "llm_stream_resume_store_bytes";
/// 1 while Redis (REDIS_URL) is reachable, 0 while this instance falls back to itself.
pub const REDIS_UP: &str = "llm_stream_redis_up";
/// Time each Redis call took (or until it was given up).
pub const REDIS_CALL: &str = "llm_stream_redis_call_seconds";
/// With traces on: finished spans not exported, by `reason`: `queue_full` (the export queue held
/// OTEL_BSP_MAX_QUEUE_SIZE already) or `export_failed` (the collector refused, failed or timed out).
pub const SPANS_DROPPED: &str = "llm_stream_trace_spans_dropped_total";

/// Bucket bounds: a first token is expected within a second or two, an answer within a minute.
const FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const REDIS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// How often histogram samples are folded in when nobody scrapes, so they never pile up.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use: the global recorder can be set only once, and
/// the tests build many applications in one process, so they all share it.
pub fn handle() -> PrometheusHandle {
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(FIRST_TOKEN.into()), FIRST_TOKEN_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DURATION.into()), DURATION_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REDIS_CALL.into()), REDIS_BUCKETS))
        .unwrap_or_else(|_| unreachable!("the bucket lists are not empty"));
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Another recorder came first (an embedding program's): /metrics renders nothing of ours.
        tracing::warn!("a metrics recorder was already installed; /metrics will stay empty");
    }
    describe_gauge!(STREAMS_OPEN, "Streams open now.");
    describe_counter!(STREAMS, "Streams ended, by outcome.");
    describe_counter!(REFUSALS, "Requests refused before any stream, by reason.");
    describe_histogram!(FIRST_TOKEN, Unit::Seconds, "Time to the first token sent.");
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Time from request to the stream's end."
    );
    describe_counter!(TOKENS, "Tokens sent to clients.");
    describe_counter!(
        TOKENS_SPENT,
        "Tokens answers cost, by kind (prompt, completion) and source (usage, estimate)."
    );
    describe_counter!(
        UPSTREAM,
        "Upstream responses, by upstream and HTTP status (error: none came)."
    );
    describe_gauge!(
        UPSTREAM_CONNECTIONS,
        "HTTP/2 connections open to an upstream, by upstream."
    );
    describe_gauge!(
        BREAKER_OPEN,
        "1 while an upstream's breaker is open, by upstream."
    );
    describe_counter!(
        FALLBACKS,
        "Questions moved to the fallback upstream, by reason."
    );
    describe_counter!(RESUMES, "Resumes asked for, by outcome (resumed, refused).");
    describe_counter!(CANCELS, "Answers stopped by an explicit cancel.");
    describe_gauge!(
        STORE_BYTES,
        Unit::Bytes,
        "Bytes of finished answers kept here for resuming."
    );
    describe_gauge!(REDIS_UP, "1 while Redis is reachable, 0 while not.");
    describe_histogram!(REDIS_CALL, Unit::Seconds, "Time each Redis call took.");
    describe_counter!(
        SPANS_DROPPED,
        "Trace spans dropped instead of exported, by reason (queue_full, export_failed)."
    );
    handle
}

pub fn resumed(outcome: &'static str) {
    counter!(RESUMES, "outcome" => outcome).increment(1);
}

pub fn cancelled() {
    counter!(CANCELS).increment(1);
}

pub fn store_bytes(bytes: usize) {
    gauge!(STORE_BYTES).set(bytes as f64);
}

pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn redis_call(took: Duration) {
    histogram!(REDIS_CALL).record(took.as_secs_f64());
}

/// Sets the open-streams gauge; read from the stream slots at each scrape, so it cannot drift.
pub fn streams_open(open: u32) {
    gauge!(STREAMS_OPEN).set(f64::from(open));
}

/// One stream's end, however it ended.
pub fn stream_ended(
    outcome: &'static str,
    first_token: Option<Duration>,
    duration: Duration,
    tokens: u64,
) {
    counter!(STREAMS, "outcome" => outcome).increment(1);
    if let Some(first_token) = first_token {
        histogram!(FIRST_TOKEN).record(first_token.as_secs_f64());
    }
    histogram!(DURATION).record(duration.as_secs_f64());
    counter!(TOKENS).increment(tokens);
}

/// What one answer cost, in tokens, and where the figures come from (`usage`, `estimate`).
pub fn tokens_spent(prompt: u64, completion: u64, source: &'static str) {
    counter!(TOKENS_SPENT, "kind" => "prompt", "source" => source).increment(prompt);
    counter!(TOKENS_SPENT, "kind" => "completion", "source" => source).increment(completion);
}

/// A request refused before any stream (by a limit, or for its query).
pub fn refused(refusal: &Refusal) {
    counter!(REFUSALS, "reason" => refusal.code()).increment(1);
}

/// The `upstream`'s answer to a request: its status, or `error` when the request failed.
pub fn upstream_response<E>(upstream: &'static str, sent: &Result<reqwest::Response, E>) {
    let status = match sent {
        Ok(response) => response.status().as_str().to_owned(),
        Err(_) => "error".to_owned(),
    };
    counter!(UPSTREAM, "upstream" => upstream, "status" => status).increment(1);
}

/// An upstream's breaker opened or closed.
/// An HTTP/2 connection to `upstream` opened (`1.0`) or ended (`-1.0`).
pub fn upstream_connection(upstream: &'static str, change: f64) {
    gauge!(UPSTREAM_CONNECTIONS, "upstream" => upstream).increment(change);
}

pub fn breaker_open(upstream: &'static str, open: bool) {
    gauge!(BREAKER_OPEN, "upstream" => upstream).set(if open { 1.0 } else { 0.0 });
}

/// `spans` finished spans were dropped, for `reason`.
pub fn spans_dropped(reason: &'static str, spans: usize) {
    counter!(SPANS_DROPPED, "reason" => reason).increment(spans as u64);
}

/// A question went to the fallback, for `reason`.
pub fn fell_back(reason: &'static str) {
    counter!(FALLBACKS, "reason" => reason).increment(1);
}
