//! llm-stream: stream a language model's answer to the browser, token by token, over Server-Sent Events.
//!
//! The path of one request: `startup` wires actix → `fetch_metadata` (did a foreign page send it)
//! → `routes::auth` (with AUTH_*: who is asking, the token verified by `auth`; `client` is a
//! user or an address) → `routes::stream` (`query` held to UTF-8, validate `q`, admit it through
//! the `store`: rate and stream slot) → `answers` (a producer task per answer owns the upstream call
//! from `llm` and appends our events to the answer's log; a reader replays and follows that log, here
//! or on another instance) → `sse` (data lines, frames with ids) → the client.
//! `store` is what instances share: in this process by default, on Redis with REDIS_URL.
//! Beside it: `limits` (who the client is, this process's own limits), `request_id` (one id per
//! request, in its logs, its response and the upstream call), `telemetry` (logs, the line each
//! stream leaves) and `metrics` (what `GET /metrics` shows).

pub mod answers;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod fetch_metadata;
pub mod id;
pub mod llm;
pub mod metrics;
pub mod query;
pub mod request_id;
pub mod routes;
pub mod sse;
pub mod startup;
pub mod store;
pub mod telemetry;
