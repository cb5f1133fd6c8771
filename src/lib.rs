//! llm-stream: stream a language model's answer to the browser, token by token, over Server-Sent Events.
//!
//! The path of one request: `startup` wires actix → `limits` (who is this, is there budget) →
//! `routes::stream` (validate `q`, take a stream slot, ask the provider) → `llm` (the upstream call,
//! its SSE decoded into our events) → `sse` (frames, ids, keep-alive) → the client.

pub mod config;
pub mod error;
pub mod limits;
pub mod llm;
pub mod routes;
pub mod sse;
pub mod startup;
pub mod telemetry;
