//! Streams held open (memory per stream, streams up to the open-files limit) and clients that
//! leave early (how soon the upstream connection closes).

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
    client::{self, Target, Until},
    mock::{Mock, Script},
    phases::GAP,
    server::{fds_of, rss_of},
};

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

impl Memory {
    pub fn per_stream_kib(&self) -> f64 {
        self.peak.saturating_sub(self.idle) as f64 / self.served.max(1) as f64 / 1024.0
    }
}

/// As many streams as the open-files limit allows: each holds two descriptors in the proxy
/// (client and upstream) and two here (client and mock); 100 are kept for everything else.
/// LOAD_MAX_STREAMS caps it.
pub fn streams_to_hold() -> usize {
    (open_files_limit().saturating_sub(100) / 2).min(env_or("LOAD_MAX_STREAMS", usize::MAX))
}

/// `wanted` streams held open through the proxy `pid` at one token a second: its resident
/// memory at the peak minus idle.
pub async fn memory(pid: u32, via: Target, wanted: usize) -> Memory {
    let limit = open_files_limit();
    const BATCH: usize = 500;
    const OPENING: Duration = Duration::from_secs(60);

    let idle_fds = fds_of(pid);
    let idle = least_rss(pid).await;
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
        peak = peak.max(rss_of(pid));
        peak_fds = peak_fds.max(fds_of(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = started.load(Ordering::Relaxed);
    close.cancel();
    streams.join_all().await;
    // Let the server wind every stream down before the next figures.
    let until = Instant::now() + Duration::from_secs(30);
    while fds_of(pid) > idle_fds + 10 && Instant::now() < until {
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
async fn least_rss(pid: u32) -> u64 {
    let mut least = u64::MAX;
    for _ in 0..5 {
        least = least.min(rss_of(pid));
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
