//! Columns taking turns: a part runs through every column [`TURNS`] times in a rotating order, and
//! what each turn cost is read around it: the column's process's CPU, redis-server's for the
//! columns on Redis, and the connections the upstream accepted meanwhile.

use std::{future::Future, time::Duration};

use crate::{
    client::Target,
    mock::{Accepted, Mock},
    phases::Merge,
    redis::Redis,
    rows::CpuUse,
    server::{Server, cpu_of},
    table::Col,
};

/// One column: where its streams go and whose CPU they cost.
pub struct Subject {
    pub col: Col,
    pub target: Target,
    /// The process between client and mock (none for the mock itself).
    pub pid: Option<u32>,
}

impl Subject {
    /// Through an llm-stream process.
    pub fn server(col: Col, server: &Server) -> Self {
        Self {
            col,
            target: Target::Server(server.address),
            pid: Some(server.pid()),
        }
    }
}

/// What is read around each turn besides the column's own CPU.
pub struct Meters<'a> {
    pub redis: &'a Redis,
    /// The upstream whose accepted connections are counted.
    pub upstream: &'a Mock,
}

/// What a phase cost one subject (and, for the columns on Redis, redis-server).
#[derive(Default)]
pub struct Cost {
    pub user: Duration,
    pub system: Duration,
    pub redis_cpu: Duration,
    pub redis_commands: u64,
    /// The connections the upstream accepted during the phase: nothing else talks to it then.
    pub accepted: Accepted,
}

/// Runs `work`, reading the subject's CPU (and Redis's, for the columns on Redis) around it.
pub async fn costed<T>(
    subject: &Subject,
    meters: &Meters<'_>,
    work: impl Future<Output = T>,
) -> (T, Cost) {
    let redis = Some(meters.redis).filter(|_| subject.col.uses_redis());
    let cpu = || subject.pid.map(cpu_of).unwrap_or_default();
    let redis_cpu = || redis.map_or(Duration::ZERO, |r| sum(cpu_of(r.pid())));
    let commands = || redis.map_or(0, Redis::commands);
    let (before, redis_before, commands_before) = (cpu(), redis_cpu(), commands());
    let accepted_before = meters.upstream.accepted();
    let out = work.await;
    let (after, redis_after, commands_after) = (cpu(), redis_cpu(), commands());
    let cost = Cost {
        user: after.0.saturating_sub(before.0),
        system: after.1.saturating_sub(before.1),
        redis_cpu: redis_after.saturating_sub(redis_before),
        // Less the INFO that read the figure before.
        redis_commands: commands_after.saturating_sub(commands_before + 1),
        accepted: meters.upstream.accepted().since(accepted_before),
    };
    (out, cost)
}

impl Cost {
    fn add(&mut self, other: &Cost) {
        self.user += other.user;
        self.system += other.system;
        self.redis_cpu += other.redis_cpu;
        self.redis_commands += other.redis_commands;
        self.accepted += other.accepted;
    }

    pub fn cpu_use(&self, tokens: usize, wall: Option<Duration>) -> CpuUse {
        CpuUse {
            user: self.user,
            system: self.system,
            tokens,
            wall,
        }
    }
}

fn sum((user, system): (Duration, Duration)) -> Duration {
    user + system
}

/// How many times each column runs a timed part, taking turns with the others.
const TURNS: usize = 3;

/// Runs `phase` through every subject [`TURNS`] times, the columns taking turns (in an order that
/// rotates), so that a noisy moment of the shared machine falls on every column alike rather than
/// on whichever ran then; returns each column's runs merged and its costs summed.
pub async fn interleaved<T, F, Fut>(
    subjects: &[&Subject],
    meters: &Meters<'_>,
    phase: F,
) -> Vec<(Col, T, Cost)>
where
    T: Merge,
    F: Fn(&Subject) -> Fut,
    Fut: Future<Output = T>,
{
    let mut merged: Vec<(Col, T, Cost)> = subjects
        .iter()
        .map(|s| (s.col, T::default(), Cost::default()))
        .collect();
    for turn in 0..TURNS {
        for i in 0..subjects.len() {
            let i = (i + turn) % subjects.len();
            let (run, cost) = costed(subjects[i], meters, phase(subjects[i])).await;
            merged[i].1.merge(run);
            merged[i].2.add(&cost);
        }
    }
    merged
}
