//! The measurements: each drives clients against one target and returns what it saw.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    client::{self, Reading, Target, Until},
    mock::{Mock, Script},
    server::Server,
};

/// Tokens 10 ms apart, as a fast model sends them.
pub const GAP: Duration = Duration::from_millis(10);

/// Times and counts from one latency run.
pub struct Latency {
    pub first_token: Vec<Duration>,
    pub gaps: Vec<Duration>,
    pub streams: usize,
    /// Streams that failed or missed a token.
    pub failed: usize,
}

/// `streams` concurrent clients, each reading `rounds` answers of `tokens` tokens 10 ms apart.
/// Starts are spread over one answer's length, so that streams begin and end at a steady pace
/// (as people's questions do) rather than all at once.
pub async fn latency(target: Target, streams: usize, rounds: usize, tokens: u64) -> Latency {
    let mut workers = JoinSet::new();
    for i in 0..streams {
        workers.spawn(async move {
            tokio::time::sleep(GAP * tokens as u32 * i as u32 / streams as u32).await;
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
    Latency {
        first_token: readings.iter().filter_map(Reading::first_token).collect(),
        gaps: readings.iter().flat_map(Reading::gaps).collect(),
        streams: readings.len(),
        failed: readings
            .iter()
            .filter(|r| r.error.is_some() || r.tokens.len() as u64 != tokens)
            .count(),
    }
}

/// What holding many streams open cost.
pub struct Memory {
    pub limit: usize,
    pub wanted: usize,
    pub opened: usize,
    pub served: usize,
    pub failed: usize,
    pub idle: u64,
    pub peak: u64,
    pub peak_fds: usize,
    pub opening_took: Duration,
}

/// Streams held open at one token a second, as many as the open-files limit allows: resident
/// memory at the peak minus idle.
pub async fn memory(server: &Server, via: Target) -> Memory {
    let limit = open_files_limit();
    // Each stream holds two descriptors in the server (client and upstream) and two here
    // (client and mock); 100 are kept for everything else.
    let wanted = (limit.saturating_sub(100) / 2).min(env_or("LOAD_MAX_STREAMS", usize::MAX));
    const BATCH: usize = 500;
    const OPENING: Duration = Duration::from_secs(60);

    let idle_fds = server.fds();
    let idle = least_rss(server).await;
    let started = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let close = CancellationToken::new();
    let mut streams = JoinSet::new();
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
        // Each batch has its first tokens before the next opens (bounded, in case some never do).
        let until = Instant::now() + Duration::from_secs(20);
        while started.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < opened
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let opening_took = opening.elapsed();
    // Two more tokens each at one a second, sampling the peak.
    let (mut peak, mut peak_fds) = (0, 0);
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
    Memory {
        limit,
        wanted,
        opened,
        served,
        failed: failed.load(Ordering::Relaxed),
        idle,
        peak,
        peak_fds,
        opening_took,
    }
}

/// The idle server's resident memory: the least of a few samples.
async fn least_rss(server: &Server) -> u64 {
    let mut least = u64::MAX;
    for _ in 0..5 {
        least = least.min(server.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    least
}

/// A number from the environment, for trying other sizes; `default` when unset.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// How soon upstream connections closed after their clients left.
pub struct Cancel {
    pub streams: usize,
    /// Clients that got their three tokens and left.
    pub left: usize,
    pub closed: Vec<Duration>,
    pub still_open: usize,
}

pub const CANCEL_STREAMS: u64 = 100;
pub const CANCEL_PERIOD: Duration = Duration::from_millis(300);

/// 100 clients each ask a question every 300 ms (the pace of the 100-stream latency run, so
/// that new streams do not swamp the server) and leave after three tokens. Stream ids start
/// after `base`, so that the mock can tell when each one's connection closed.
pub async fn cancellation(mock: &Mock, target: Target, base: u64) -> Cancel {
    const ROUNDS: u64 = 3;
    let streams = env_or("LOAD_CANCEL_STREAMS", CANCEL_STREAMS);
    let mut workers = JoinSet::new();
    let start = tokio::time::Instant::now();
    for i in 0..streams {
        workers.spawn(async move {
            let offset = CANCEL_PERIOD * i as u32 / streams as u32;
            let mut left = Vec::new();
            for round in 0..ROUNDS {
                tokio::time::sleep_until(start + offset + CANCEL_PERIOD * round as u32).await;
                let id = base + round * streams + i + 1;
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
    Cancel {
        streams: left.len(),
        left: left.iter().filter(|(_, l)| l.is_some()).count(),
        closed: left
            .iter()
            .filter_map(|(id, l)| Some(mock.closed_at(*id)?.saturating_duration_since((*l)?)))
            .collect(),
        still_open: mock.still_open(left.iter().map(|(id, _)| *id)),
    }
}

/// CPU time per token forwarded, with the mock writing as fast as it can.
pub struct Cpu {
    pub tokens: usize,
    pub used: Duration,
    pub wall: Duration,
    pub failed: usize,
}

/// 50 streams of 20 000 tokens each, until 2 million tokens have passed (or 20 s); `cpu` reads
/// the CPU time of the process in the middle.
pub async fn cpu(target: Target, cpu: impl Fn() -> Duration) -> Cpu {
    const STREAMS: usize = 50;
    const TOKENS_PER_STREAM: u64 = 20_000;
    const TARGET_TOKENS: usize = 2_000_000;
    const BUDGET: Duration = Duration::from_secs(20);
    let total = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let before = cpu();
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..STREAMS {
        let (total, failed) = (total.clone(), failed.clone());
        workers.spawn(async move {
            while total.load(Ordering::Relaxed) < TARGET_TOKENS && started.elapsed() < BUDGET {
                let script = Script {
                    tokens: TOKENS_PER_STREAM,
                    gap: Duration::ZERO,
                    id: 0,
                };
                let reading = client::read(target, script, Until::CountOnly).await;
                total.fetch_add(reading.count, Ordering::Relaxed);
                if reading.error.is_some() || reading.count as u64 != TOKENS_PER_STREAM {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    workers.join_all().await;
    Cpu {
        tokens: total.load(Ordering::Relaxed),
        used: cpu().saturating_sub(before),
        wall: started.elapsed(),
        failed: failed.load(Ordering::Relaxed),
    }
}
