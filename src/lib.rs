//! llm-stream: stream a language model's answer to the browser, token by token, over Server-Sent Events.
//!
//! The path of one request: `startup` wires actix → `fetch_metadata` (did a foreign page send it)
//! → `limits` (who is this, is there budget) → `routes::stream` (`query` held to UTF-8, validate
//! `q`, take a stream slot, ask the provider) → `llm` (the upstream call,
//! its SSE decoded into our events) → `sse` (frames, ids, keep-alive) → the client.
//! Beside it: `request_id` (one id per request, in its logs, its response and the upstream call),
//! `telemetry` (logs, the line each stream leaves) and `metrics` (what `GET /metrics` shows).

pub mod config;
pub mod error;
pub mod fetch_metadata;
pub mod limits;
pub mod llm;
pub mod metrics;
pub mod query;
pub mod request_id;
pub mod routes;
pub mod sse;
pub mod startup;
pub mod telemetry;
