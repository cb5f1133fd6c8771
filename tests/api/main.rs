//! One test binary, so the suite links once.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on anything unexpected"
)]

mod auth;
mod browser;
mod budgets;
mod certs;
mod config;
mod conversations;
mod fetch_metadata;
mod helpers;
mod house;
mod http2;
mod limits;
mod metrics;
mod mock_upstream;
mod nginx;
mod page;
mod providers;
mod redis;
mod resume;
mod stores;
mod stream;
mod traces;
