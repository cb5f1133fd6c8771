//! One test binary, so the suite links once.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on anything unexpected"
)]

mod helpers;
mod mock_upstream;
mod stream;
mod limits;
mod nginx;
