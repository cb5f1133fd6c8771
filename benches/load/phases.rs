//! The timed measurements: each drives clients against one target and returns what it saw (the
//! caller reads the CPU of whatever process it measures around them). Held streams and
//! cancellation are in `hold`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use crate::{
    client::{self, Reading, Target, Until},
    mock::Script,
};

/// Tokens 10 ms apart, as a fast model sends them.
pub const GAP: Duration = Duration::from_millis(10);

/// Times and counts from one latency run.
#[derive(Default)]
pub struct Latency {
    pub first_token: Vec<Duration>,
    pub gaps: Vec<Duration>,
    pub streams: usize,
    /// Tokens received, all streams together.
    pub tokens: usize,
    /// Streams that failed or missed a token.
    pub failed: usize,
}

/// Runs of one part through one column, taken in turns and added up.
pub trait Merge: Default {
    fn merge(&mut self, other: Self);
}

impl Merge for Latency {
    /// Adds another run's times and counts to these.
    fn merge(&mut self, other: Latency) {
        self.first_token.extend(other.first_token);
        self.gaps.extend(other.gaps);
        self.streams += other.streams;
        self.tokens += other.tokens;
        self.failed += other.failed;
    }
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
        tokens: readings.iter().map(|r| r.count).sum(),
        failed: readings
            .iter()
            .filter(|r| r.error.is_some() || r.tokens.len() as u64 != tokens)
            .count(),
    }
}

/// Tokens forwarded with the mock writing them as fast as it can, one token per write.
#[derive(Default)]
pub struct Saturated {
    pub tokens: usize,
    pub wall: Duration,
    pub failed: usize,
}

/// 50 streams of 2 000 tokens each, one after another per stream, until 135 000 tokens have
/// passed or 1 s (the streams under way then finish); the bench takes three such turns per column.
impl Merge for Saturated {
    fn merge(&mut self, other: Saturated) {
        self.tokens += other.tokens;
        self.wall += other.wall;
        self.failed += other.failed;
    }
}

pub async fn saturated(target: Target) -> Saturated {
    const STREAMS: usize = 50;
    const TOKENS_PER_STREAM: u64 = 2_000;
    const TARGET_TOKENS: usize = 135_000;
    const BUDGET: Duration = Duration::from_secs(1);
    let total = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
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
    Saturated {
        tokens: total.load(Ordering::Relaxed),
        wall: started.elapsed(),
        failed: failed.load(Ordering::Relaxed),
    }
}
