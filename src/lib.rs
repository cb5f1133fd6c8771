//! llm-stream: stream a language model's answer to the browser, token by token, over Server-Sent Events.
//!
//! The path of one request: `startup` wires actix → `fetch_metadata` (did a foreign page send it)
//! → `routes::auth` (with AUTH_*: who is asking, the token verified by `auth`) → `routes::stream` (`query` held to UTF-8, validate `q`, admit it through the `store`: rate, token budget and
//! stream slot) → `answers` (a producer task per answer owns the upstream call from `llm` and
//! appends our events to the answer's log; a reader replays and follows that log, here or on
//! another instance) → `sse` frames → the client.
//!
//! The floors, from the bottom: a module uses only modules on lower floors, so no arrow points back
//! up (`tests/api/house.rs` checks every `crate::` path against this table):
//!
//! | floor | modules | what |
//! |---|---|---|
//! | 1 | `config`, `error`, `id` | settings; refusals and in-band codes; random ids and their one shape |
//! | 2 | `metrics`, `client`, `otel` | what `/metrics` shows; who the client is; the trace context the upstream calls run in, and each attempt's span |
//! | 3 | `request_id`, `query`, `fetch_metadata`, `llm`, `auth` | request ids; UTF-8 queries; resource isolation; the upstream providers; signed identities (JWT, JWKS) |
//! | 4 | `store`, `telemetry` | what instances share: admission (`local` in this process, or Redis), answer logs, signals, conversations; logs, the per-stream line, and traces over OTLP (server, chat and resume spans) |
//! | 5 | `sse` | our events as the data lines an answer's log keeps, and SSE frames |
//! | 6 | `answers` | producers and readers of durable answers |
//! | 7 | `routes` | one file per endpoint |
//! | 8 | `startup` | the listener, every route and middleware, run and shut down |

pub mod answers;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod fetch_metadata;
pub mod id;
pub mod llm;
pub mod metrics;
pub mod otel;
pub mod query;
pub mod request_id;
pub mod routes;
pub mod sse;
pub mod startup;
pub mod store;
pub mod telemetry;
