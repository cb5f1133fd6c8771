//! REDIS_URL: instances sharing a real `redis-server` (one per test, on a free port) for their
//! limits, their answers and their signals; and what happens when an instance or Redis goes away.

mod behind_nginx;
mod conversations;
mod failures;
pub mod harness;
mod shared;
mod stalls;
