//! The load benchmark: `cargo bench --bench load`.
//!
//! Starts the release server pinned to core 0 in front of a fast mock upstream, drives SSE clients
//! from core 1 (mock and clients share it), and prints a markdown table. Every figure is measured
//! side by side, in the same run, with the same read straight from the mock and through a plain
//! byte relay on the server's core: these machines are shared and noisy, so the differences hold
//! where absolute times do not.
//!
//! For profiling: LOAD_ONLY=memory,latency,cancellation,cpu runs some parts, LOAD_MAX_STREAMS caps
//! the held streams, LOAD_SERVER_PREFIX runs the server under a tool that keeps it in its own
//! process, e.g. "valgrind --tool=callgrind" (CPU and memory figures are then the tool's).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on anything unexpected"
)]

mod client;
mod mock;
mod phases;
mod relay;
mod server;
mod table;

use std::{
    process::{Command, ExitCode},
    time::Duration,
};

use client::Target;
use mock::Mock;
use relay::Relay;
use server::Server;
use table::Table;

/// Set in the relaunched, pinned process.
const PINNED: &str = "LLM_STREAM_LOAD_BENCH_PINNED";
const SERVER_CORE: usize = 0;
const BENCH_CORE: usize = 1;

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
    runtime.block_on(run());
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

/// CPU time (user, system) used between two readings.
fn since(before: (Duration, Duration), after: (Duration, Duration)) -> (Duration, Duration) {
    (
        after.0.saturating_sub(before.0),
        after.1.saturating_sub(before.1),
    )
}

async fn run() {
    let started = std::time::Instant::now();
    let mock = Mock::start().await;
    let mut server = Server::start(SERVER_CORE, mock.address);
    let relay = Relay::start(SERVER_CORE, mock.address);
    let via = Target::Server(server.address);
    let relayed = Target::Mock(relay.address);
    let direct = Target::Mock(mock.address);
    eprintln!(
        "load bench: server pid {} and relay pid {} on core {SERVER_CORE}, mock and clients on core {BENCH_CORE}",
        server.pid(),
        relay.pid()
    );

    // Warm up: connections, the allocator, lazy statics.
    for target in [via, relayed, direct] {
        phases::latency(target, 20, 1, 5).await;
    }

    let only = std::env::var("LOAD_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    let mut table = Table::default();
    if part("latency") {
        for (streams, rounds) in [(20, 40), (100, 15)] {
            let server_cpu = server.cpu_split();
            let through = phases::latency(via, streams, rounds, 30).await;
            let server_cpu = since(server_cpu, server.cpu_split());
            let relay_cpu = server::cpu_of(relay.pid());
            let relayed = phases::latency(relayed, streams, rounds, 30).await;
            let relay_cpu = since(relay_cpu, server::cpu_of(relay.pid()));
            let straight = phases::latency(direct, streams, rounds, 30).await;
            table.latency(streams, &through, &relayed, &straight);
            table.stream_cpu(streams, server_cpu, relay_cpu, through.streams);
        }
    }
    if part("cancellation") {
        let through = phases::cancellation(&mock, via, 1_000_000).await;
        let straight = phases::cancellation(&mock, direct, 2_000_000).await;
        table.cancellation(&through, &straight);
    }
    if part("cpu") {
        let through = phases::cpu(via, || server.cpu()).await;
        let relayed = phases::cpu(relayed, || {
            let (user, system) = server::cpu_of(relay.pid());
            user + system
        })
        .await;
        table.cpu(&through, &relayed);
    }

    // Last: holding thousands of streams leaves the server's heap and the kernel's socket tables
    // larger, which would disturb the timings above.
    if part("memory") {
        table.memory(phases::memory(&server, via).await);
    }

    if !server.is_running() {
        eprintln!("the server stopped during the run; its last lines:");
        server.log_tail().iter().for_each(|l| eprintln!("  {l}"));
    }
    eprintln!(
        "load bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    table.print();
}
