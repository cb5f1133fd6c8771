//! The load benchmark: `cargo bench --bench load`.
//!
//! Starts the release server pinned to core 0 in front of a fast mock upstream, drives SSE clients
//! from core 1 (mock and clients share it), and prints a markdown table. Every latency is measured
//! side by side with the same read straight from the mock in the same run: these machines are
//! shared and noisy, so the differences hold where absolute times do not.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on anything unexpected"
)]

mod client;
mod mock;
mod server;

use std::{
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use client::{Reading, Target, Until};
use mock::{Mock, Script};
use server::Server;
use tokio_util::sync::CancellationToken;

/// Set in the relaunched, pinned process.
const PINNED: &str = "LLM_STREAM_LOAD_BENCH_PINNED";
const SERVER_CORE: usize = 0;
const BENCH_CORE: usize = 1;

/// Tokens 10 ms apart, as a fast model sends them.
const GAP: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
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
/// (the server, started from it, inherits both the limit and nothing of the core).
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
            r#"ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec taskset -c {BENCH_CORE} "$0""#
        ))
        .arg(std::env::current_exe().unwrap())
        .env(PINNED, "1")
        .status()
        .expect("relaunch the benchmark under taskset");
    ExitCode::from(status.code().unwrap_or(1) as u8)
}

async fn run() {
    let mock = Mock::start().await;
    let mut server = Server::start(SERVER_CORE, mock.address);
    let via = Target::Server(server.address);
    let direct = Target::Mock(mock.address);
    eprintln!(
        "load bench: server pid {} on core {SERVER_CORE} at {}, mock and clients on core {BENCH_CORE}",
        server.pid(),
        server.address
    );

    // Warm up: connections, allocator, lazy statics.
    for target in [via, direct] {
        latency(target, 20, 1, 5).await;
    }

    let mut table = Table::default();
    memory(&mut server, via, &mut table).await;
    for (streams, rounds) in [(20, 15), (100, 6)] {
        let through = latency(via, streams, rounds, 30).await;
        let straight = latency(direct, streams, rounds, 30).await;
        table.latency(streams, &through, &straight);
    }
    cancellation(&mock, via, direct, &mut table).await;
    cpu(&server, via, &mut table).await;

    if !server.is_running() {
        eprintln!("the server stopped during the run; its last lines:");
        server.log_tail().iter().for_each(|l| eprintln!("  {l}"));
    }
    table.print();
}

/// Times and counts from one latency run.
struct Latency {
    first_token: Vec<Duration>,
    gaps: Vec<Duration>,
    streams: usize,
    failed: usize,
}

/// `streams` concurrent clients, each reading `rounds` answers of `tokens` tokens 10 ms apart.
/// Starts are spread over one gap so that the streams' tokens do not all fall on the same instant.
async fn latency(target: Target, streams: usize, rounds: usize, tokens: u64) -> Latency {
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..streams {
        workers.spawn(async move {
            tokio::time::sleep(GAP * i as u32 / streams as u32).await;
            let mut readings = Vec::new();
            for _ in 0..rounds {
                let script = Script {
                    tokens,
                    gap: GAP,
                    id: 0,
                };
                readings.push(client::read(target, script, Until::End).await);
            }
            readings
        });
    }
    let readings: Vec<Reading> = workers.join_all().await.into_iter().flatten().collect();
    let failed = readings
        .iter()
        .filter(|r| r.error.is_some() || r.tokens.len() as u64 != tokens)
        .count();
    Latency {
        first_token: readings.iter().filter_map(Reading::first_token).collect(),
        gaps: readings.iter().flat_map(Reading::gaps).collect(),
        streams: readings.len(),
        failed,
    }
}

/// Streams held open at one token a second: resident memory at the peak minus idle, per stream.
async fn memory(server: &mut Server, via: Target, table: &mut Table) {
    let limit = open_files_limit();
    let cap = std::env::var("LOAD_MAX_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    // Each stream holds two descriptors in the server (client and upstream) and two here
    // (client and mock); keep 100 for everything else.
    let wanted = (limit.saturating_sub(100) / 2).min(cap);
    const BATCH: usize = 500;
    const OPENING: Duration = Duration::from_secs(60);

    let idle_fds = server.fds();
    let idle = settle_rss(server).await;
    let started = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let close = CancellationToken::new();
    let mut streams = tokio::task::JoinSet::new();
    let opening = Instant::now();
    let mut opened = 0;
    while opened < wanted && opening.elapsed() < OPENING {
        let batch = BATCH.min(wanted - opened);
        for _ in 0..batch {
            let (started, failed, close) = (started.clone(), failed.clone(), close.clone());
            streams.spawn(async move {
                let script = Script {
                    tokens: 3600,
                    gap: Duration::from_secs(1),
                    id: 0,
                };
                let mut first = true;
                let mut on_tokens = |_| {
                    if std::mem::take(&mut first) {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                };
                tokio::select! {
                    reading = client::read_with(via, script, Until::End, &mut on_tokens) => {
                        if reading.count == 0 {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    () = close.cancelled() => {}
                }
            });
        }
        opened += batch;
        let until = Instant::now() + Duration::from_secs(20);
        while started.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < opened
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let opening_took = opening.elapsed();
    // Two more tokens each at 1/s, sampling the peak.
    let mut peak = 0;
    let mut peak_fds = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(2) {
        peak = peak.max(server.rss());
        peak_fds = peak_fds.max(server.fds());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = started.load(Ordering::Relaxed);
    close.cancel();
    streams.join_all().await;
    // Let the server wind every stream down before the next figures.
    let until = Instant::now() + Duration::from_secs(30);
    while server.fds() > idle_fds + 10 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    table.memory(Memory {
        limit,
        wanted,
        opened,
        served,
        failed: failed.load(Ordering::Relaxed),
        idle,
        peak,
        peak_fds,
        opening_took,
    });
}

/// The idle server's resident memory: the least of a few samples.
async fn settle_rss(server: &Server) -> u64 {
    let mut least = u64::MAX;
    for _ in 0..5 {
        least = least.min(server.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    least
}

fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

struct Memory {
    limit: usize,
    wanted: usize,
    opened: usize,
    served: usize,
    failed: usize,
    idle: u64,
    peak: u64,
    peak_fds: usize,
    opening_took: Duration,
}

/// Clients that leave after three tokens: how soon the upstream connection closes, and how many
/// are still open two seconds after the last client left.
async fn cancellation(mock: &Mock, via: Target, direct: Target, table: &mut Table) {
    const STREAMS: u64 = 100;
    const ROUNDS: u64 = 3;
    let mut results = Vec::new();
    for (target, base) in [(via, 1_000_000), (direct, 2_000_000)] {
        let mut workers = tokio::task::JoinSet::new();
        for i in 0..STREAMS {
            workers.spawn(async move {
                tokio::time::sleep(GAP * i as u32 / STREAMS as u32).await;
                let mut left = Vec::new();
                for round in 0..ROUNDS {
                    let id = base + round * STREAMS + i + 1;
                    let script = Script {
                        tokens: 1000,
                        gap: GAP,
                        id,
                    };
                    let reading = client::read(target, script, Until::Tokens(3)).await;
                    left.push((id, reading.left));
                }
                left
            });
        }
        let left: Vec<(u64, Option<Instant>)> =
            workers.join_all().await.into_iter().flatten().collect();
        let last = left
            .iter()
            .filter_map(|(_, l)| *l)
            .max()
            .unwrap_or_else(Instant::now);
        tokio::time::sleep_until((last + Duration::from_secs(2)).into()).await;
        let closed: Vec<Duration> = left
            .iter()
            .filter_map(|(id, l)| Some(mock.closed_at(*id)?.saturating_duration_since((*l)?)))
            .collect();
        let still_open = mock.still_open(left.iter().map(|(id, _)| *id));
        results.push(Cancel {
            streams: left.len(),
            left: left.iter().filter(|(_, l)| l.is_some()).count(),
            closed,
            still_open,
        });
    }
    let straight = results.pop().unwrap();
    let through = results.pop().unwrap();
    table.cancellation(&through, &straight);
}

struct Cancel {
    streams: usize,
    left: usize,
    closed: Vec<Duration>,
    still_open: usize,
}

/// The server's CPU seconds per million tokens, with the mock writing as fast as it can.
async fn cpu(server: &Server, via: Target, table: &mut Table) {
    const STREAMS: usize = 50;
    const TOKENS_PER_STREAM: u64 = 20_000;
    const TARGET_TOKENS: usize = 2_000_000;
    const BUDGET: Duration = Duration::from_secs(25);
    let total = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let before = server.cpu();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let (total, failed) = (total.clone(), failed.clone());
        workers.spawn(async move {
            while total.load(Ordering::Relaxed) < TARGET_TOKENS && started.elapsed() < BUDGET {
                let script = Script {
                    tokens: TOKENS_PER_STREAM,
                    gap: Duration::ZERO,
                    id: 0,
                };
                let reading = client::read(via, script, Until::CountOnly).await;
                total.fetch_add(reading.count, Ordering::Relaxed);
                if reading.error.is_some() || reading.count as u64 != TOKENS_PER_STREAM {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    workers.join_all().await;
    let wall = started.elapsed();
    let used = server.cpu().saturating_sub(before);
    table.cpu(Cpu {
        tokens: total.load(Ordering::Relaxed),
        used,
        wall,
        failed: failed.load(Ordering::Relaxed),
    });
}

struct Cpu {
    tokens: usize,
    used: Duration,
    wall: Duration,
    failed: usize,
}

/// The printed table: one row per figure, and notes for anything that went wrong.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 5]>,
    notes: Vec<String>,
}

fn percentile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn added(through: Duration, straight: Duration) -> String {
    let diff = through.as_secs_f64() - straight.as_secs_f64();
    format!("{:+.3} ms", diff * 1e3)
}

fn met(ok: bool) -> String {
    if ok { "yes".into() } else { "**no**".into() }
}

impl Table {
    fn row(
        &mut self,
        figure: String,
        through: String,
        straight: String,
        added: String,
        target: String,
    ) {
        self.rows.push([figure, through, straight, added, target]);
    }

    fn latency(&mut self, streams: usize, through: &Latency, straight: &Latency) {
        for (name, q, limit) in [("p50", 0.5, 0.2), ("p99", 0.99, 1.0)] {
            let (t, s) = (
                percentile(&through.first_token, q),
                percentile(&straight.first_token, q),
            );
            let ok = (t.as_secs_f64() - s.as_secs_f64()) * 1e3 <= limit;
            self.row(
                format!("time to first token {name}, {streams} streams"),
                ms(t),
                ms(s),
                added(t, s),
                format!("≤ {limit} ms added: {}", met(ok)),
            );
        }
        let (t, s) = (
            percentile(&through.gaps, 0.5),
            percentile(&straight.gaps, 0.5),
        );
        let held_back = (t.as_secs_f64() - GAP.as_secs_f64()).abs() > 0.002;
        self.row(
            format!("gap between tokens p50, {streams} streams"),
            ms(t),
            ms(s),
            added(t, s),
            format!("sent 10 ms apart, leave 10 ms apart: {}", met(!held_back)),
        );
        let (t, s) = (
            percentile(&through.gaps, 0.99),
            percentile(&straight.gaps, 0.99),
        );
        let ok = (t.as_secs_f64() - s.as_secs_f64()) * 1e3 <= 0.5;
        self.row(
            format!("gap between tokens p99, {streams} streams"),
            ms(t),
            ms(s),
            added(t, s),
            format!("≤ 0.5 ms added: {}", met(ok)),
        );
        for (path, run) in [
            ("through llm-stream", through),
            ("straight from the mock", straight),
        ] {
            if run.failed > 0 {
                self.notes.push(format!(
                    "{} of {} streams {path} at {streams} concurrent did not get every token",
                    run.failed, run.streams
                ));
            }
        }
    }

    fn memory(&mut self, m: Memory) {
        let per_stream = m.peak.saturating_sub(m.idle) as f64 / m.served.max(1) as f64 / 1024.0;
        self.row(
            "resident memory per open stream".into(),
            format!(
                "{per_stream:.1} KiB ({} MiB idle → {} MiB with {} streams)",
                m.idle / (1 << 20),
                m.peak / (1 << 20),
                m.served
            ),
            "–".into(),
            "–".into(),
            format!("≤ 16 KiB: {}", met(per_stream <= 16.0)),
        );
        self.row(
            "streams held open at once (1 token/s)".into(),
            format!(
                "{} of {} served ({} open-files limit, {} descriptors at the peak; opened in {:.1} s)",
                m.served,
                m.wanted,
                m.limit,
                m.peak_fds,
                m.opening_took.as_secs_f64()
            ),
            "–".into(),
            "–".into(),
            format!("every stream up to the limit: {}", met(m.served == m.wanted)),
        );
        if m.opened < m.wanted {
            self.notes.push(format!(
                "opening streams took too long: stopped at {} of {}",
                m.opened, m.wanted
            ));
        }
        if m.failed > 0 {
            self.notes.push(format!(
                "{} held streams failed before their first token",
                m.failed
            ));
        }
    }

    fn cancellation(&mut self, through: &Cancel, straight: &Cancel) {
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (t, s) = (
                percentile(&through.closed, q),
                percentile(&straight.closed, q),
            );
            self.row(
                format!("upstream closed after the client leaves, {name}"),
                ms(t),
                ms(s),
                added(t, s),
                if name == "p99" {
                    format!("≤ 2 ms: {}", met(t <= Duration::from_millis(2)))
                } else {
                    "–".into()
                },
            );
        }
        self.row(
            "upstream connections still open 2 s later".into(),
            format!("{} of {}", through.still_open, through.streams),
            format!("{} of {}", straight.still_open, straight.streams),
            "–".into(),
            format!("none: {}", met(through.still_open == 0)),
        );
        for (path, run) in [
            ("through llm-stream", through),
            ("straight from the mock", straight),
        ] {
            if run.left < run.streams {
                self.notes.push(format!(
                    "{} of {} leaving clients {path} never got three tokens",
                    run.streams - run.left,
                    run.streams
                ));
            }
        }
    }

    fn cpu(&mut self, c: Cpu) {
        let per_million = c.used.as_secs_f64() / c.tokens.max(1) as f64 * 1e6;
        self.row(
            "server CPU per million tokens".into(),
            format!(
                "{per_million:.2} s ({} tokens forwarded in {:.1} s, {:.0} tokens/s; {:.2} CPU s)",
                c.tokens,
                c.wall.as_secs_f64(),
                c.tokens as f64 / c.wall.as_secs_f64(),
                c.used.as_secs_f64()
            ),
            "–".into(),
            "–".into(),
            format!("≤ 5 s: {}", met(per_million <= 5.0)),
        );
        if c.failed > 0 {
            self.notes
                .push(format!("{} fast streams did not get every token", c.failed));
        }
    }

    fn print(&self) {
        println!(
            "| figure | through llm-stream | straight from the mock | added by llm-stream | target |"
        );
        println!("|---|---|---|---|---|");
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        for note in &self.notes {
            println!("\nNote: {note}");
        }
    }
}
