//! The streaming protocol, end to end: the real server in front of the mock upstream.

mod errors;
mod lifecycle;
mod protocol;
mod refusals;
