//! The load benchmark: `cargo bench --bench load`.
//!
//! Starts the release server pinned to core 0 in front of a mock upstream that sends one token per
//! write, drives SSE clients from core 1 (mock, clients and redis-server share it), and prints a
//! markdown table. Every figure is measured side by side, in the same run: through llm-stream,
//! through the binary before durable answers (LOAD_BASELINE_BIN), through llm-stream with
//! REDIS_URL, through nginx and a plain byte relay (both on the server's core), and straight from
//! the mock: these machines are shared and noisy, so the differences hold where absolute times do
//! not.
//!
//! LOAD_FALLBACK=1 adds a column: llm-stream whose primary refuses connections, with the mock as
//! its fallback and the primary's breaker open.
//!
//! LOAD_BUDGET=1 adds two columns to the latency and paced parts (issue 20): llm-stream with a
//! TOKEN_BUDGET that never runs out in a run (10^9 tokens a day, the most it takes), kept in the
//! process, and the same with REDIS_URL (redis-server's CPU and commands counted as for the Redis
//! column).
//!
//! The `https` part (issue 22) puts a TLS mock (ALPN `h2` and `http/1.1`; h2's own server, one
//! token per DATA frame, when the client picks `h2`) behind three columns: llm-stream over
//! HTTP/2 (the default), llm-stream with LLM_HTTP2=off (HTTP/1.1 over TLS) and nginx over HTTPS
//! (HTTP/1.1). It measures time to first token with warm connections (20 streams, beside this
//! tree's llm-stream and the mock over plain HTTP for reference), CPU per million paced tokens
//! (100 streams, after a warm-up of 100 that opens their connections), and, last, memory per held
//! stream, each with the upstream TLS connections the column opened, by protocol. LOAD_H2_STREAMS sets the mock's SETTINGS_MAX_CONCURRENT_STREAMS
//! (100 unless).
//!
//! For profiling: LOAD_ONLY=latency,paced,saturated,cancellation,memory,https runs some parts
//! (`cpu` is paced and saturated), LOAD_MAX_STREAMS caps the held streams, LOAD_SERVER_PREFIX runs
//! the server under a tool that keeps it in its own process, e.g. "valgrind --tool=callgrind"
//! (CPU and memory figures are then the tool's).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on anything unexpected"
)]

#[path = "../../tests/api/certs.rs"]
mod certs;
mod chunked;
mod client;
mod hold;
mod https;
mod mock;
mod nginx;
mod phases;
mod redis;
mod relay;
mod rows;
mod run;
mod server;
mod table;
mod tls;
mod turns;

use std::process::{Command, ExitCode};

/// Set in the relaunched, pinned process.
const PINNED: &str = "LLM_STREAM_LOAD_BENCH_PINNED";
pub const SERVER_CORE: usize = 0;
pub const BENCH_CORE: usize = 1;

fn main() -> ExitCode {
    if let Ok(upstream) = std::env::var(relay::UPSTREAM) {
        relay::serve(upstream.parse().expect("the relay's upstream address"));
        return ExitCode::SUCCESS;
    }
    // `cargo test --all-targets` runs bench targets too, without `--bench`: the load run takes
    // minutes and wants quiet cores, so it runs only when asked for by `cargo bench`.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("load bench: skipped (run it with `cargo bench --bench load`)");
        return ExitCode::SUCCESS;
    }
    if std::env::var_os(PINNED).is_none() {
        return relaunch_pinned();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run::run());
    ExitCode::SUCCESS
}

/// Runs this benchmark again on its own core, with the open-files limit raised to the hard limit
/// (the server, started from it, inherits the limit but not the core).
fn relaunch_pinned() -> ExitCode {
    if Command::new("taskset").arg("--version").output().is_err() {
        eprintln!(
            "load bench: `taskset` (util-linux) is needed to pin the server and the clients to separate cores; install util-linux"
        );
        return ExitCode::from(2);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!(
            "load bench: needs 2 cores (server on core {SERVER_CORE}, mock and clients on core {BENCH_CORE}); this machine offers {cpus}"
        );
        return ExitCode::from(2);
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec taskset -c {BENCH_CORE} "$0" "$@""#
        ))
        .arg(std::env::current_exe().unwrap())
        .args(std::env::args_os().skip(1))
        .env(PINNED, "1")
        .status()
        .expect("relaunch the benchmark under taskset");
    ExitCode::from(status.code().unwrap_or(1) as u8)
}
