//! One run: starts every process, measures each part through every column, fills the table.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use crate::{
    BENCH_CORE, SERVER_CORE,
    client::Target,
    hold::{self, Memory},
    mock::Mock,
    nginx::Nginx,
    phases::{self, Merge},
    redis::Redis,
    relay::Relay,
    rows::CpuUse,
    server::{Launch, Server, cpu_of},
    table::{Col, Table},
    tls::{self, Certs},
};

/// One column: where its streams go and whose CPU they cost.
struct Subject {
    col: Col,
    target: Target,
    /// The process between client and mock (none for the mock itself).
    pid: Option<u32>,
}

/// What a phase cost one subject (and, for the Redis column, redis-server).
#[derive(Default)]
struct Cost {
    user: Duration,
    system: Duration,
    redis_cpu: Duration,
    redis_commands: u64,
}

/// Runs `work`, reading the subject's CPU (and Redis's, for the Redis column) around it.
async fn costed<T>(
    subject: &Subject,
    redis: Option<&Redis>,
    work: impl Future<Output = T>,
) -> (T, Cost) {
    let redis = redis.filter(|_| subject.col == Col::Redis);
    let cpu = || subject.pid.map(cpu_of).unwrap_or_default();
    let redis_cpu = || redis.map_or(Duration::ZERO, |r| sum(cpu_of(r.pid())));
    let commands = || redis.map_or(0, Redis::commands);
    let (before, redis_before, commands_before) = (cpu(), redis_cpu(), commands());
    let out = work.await;
    let (after, redis_after, commands_after) = (cpu(), redis_cpu(), commands());
    let cost = Cost {
        user: after.0.saturating_sub(before.0),
        system: after.1.saturating_sub(before.1),
        redis_cpu: redis_after.saturating_sub(redis_before),
        // Less the INFO that read the figure before.
        redis_commands: commands_after.saturating_sub(commands_before + 1),
    };
    (out, cost)
}

impl Cost {
    fn add(&mut self, other: &Cost) {
        self.user += other.user;
        self.system += other.system;
        self.redis_cpu += other.redis_cpu;
        self.redis_commands += other.redis_commands;
    }
}

fn sum((user, system): (Duration, Duration)) -> Duration {
    user + system
}

fn env_on(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub async fn run() {
    let started = Instant::now();
    let only = std::env::var("LOAD_ONLY").unwrap_or_default();
    let part = |name: &str| {
        only.is_empty()
            || only.split(',').any(|p| {
                let p = p.trim();
                p == name || (p == "cpu" && (name == "paced" || name == "saturated"))
            })
    };
    let mock = Mock::start(None).await;
    let server = Server::start(SERVER_CORE, Launch::plain(mock.address));
    let baseline_bin = env_on("LOAD_BASELINE_BIN");
    let before = baseline_bin.as_deref().map(|bin| {
        Server::start(
            SERVER_CORE,
            Launch {
                binary: Some(bin),
                ..Launch::plain(mock.address)
            },
        )
    });
    let redis = Redis::start(BENCH_CORE);
    let with_redis = Server::start(
        SERVER_CORE,
        Launch {
            env: vec![("REDIS_URL", redis.url())],
            ..Launch::plain(mock.address)
        },
    );
    // LOAD_FALLBACK=1: a primary that refuses connections, the mock as the fallback; the warm-up's
    // first failures open the primary's breaker, and it stays open for the run.
    let fallback = env_on("LOAD_FALLBACK").map(|_| {
        let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let primary = format!("http://{}/v1", refusing.local_addr().unwrap());
        drop(refusing);
        Server::start(
            SERVER_CORE,
            Launch {
                binary: None,
                upstream: primary,
                env: vec![
                    (
                        "LLM_FALLBACK_BASE_URL",
                        format!("http://{}/v1", mock.address),
                    ),
                    ("LLM_FALLBACK_API_KEY", "bench".to_owned()),
                    ("UPSTREAM_BREAKER_OPEN_SECS", "86400".to_owned()),
                ],
            },
        )
    });
    let nginx = Nginx::start(SERVER_CORE, mock.address, None, "timed");
    let relay = Relay::start(SERVER_CORE, mock.address);
    let mut subjects = vec![Subject {
        col: Col::Today,
        target: Target::Server(server.address),
        pid: Some(server.pid()),
    }];
    if let Some(before) = &before {
        subjects.push(Subject {
            col: Col::Before,
            target: Target::Server(before.address),
            pid: Some(before.pid()),
        });
    }
    if let Some(fallback) = &fallback {
        subjects.push(Subject {
            col: Col::Fallback,
            target: Target::Server(fallback.address),
            pid: Some(fallback.pid()),
        });
    }
    subjects.extend([
        Subject {
            col: Col::Redis,
            target: Target::Server(with_redis.address),
            pid: Some(with_redis.pid()),
        },
        Subject {
            col: Col::Nginx,
            target: Target::Mock(nginx.address),
            pid: Some(nginx.pid()),
        },
        Subject {
            col: Col::Relay,
            target: Target::Mock(relay.address),
            pid: Some(relay.pid()),
        },
        Subject {
            col: Col::Mock,
            target: Target::Mock(mock.address),
            pid: None,
        },
    ]);
    eprintln!(
        "load bench: llm-stream {}, before durable answers {:?}, with Redis {} (redis-server {}), nginx {}, relay {} on core {SERVER_CORE}; mock and clients on core {BENCH_CORE}",
        server.pid(),
        before.as_ref().map(Server::pid),
        with_redis.pid(),
        redis.pid(),
        nginx.pid(),
        relay.pid()
    );

    // Warm up: connections, the allocator, lazy statics, Redis's scripts.
    for s in &subjects {
        phases::latency(s.target, 20, 1, 5).await;
    }

    let mut table = Table::default();
    if part("latency") {
        let all: Vec<&Subject> = subjects.iter().collect();
        let runs = interleaved(&all, &redis, |s| phases::latency(s.target, 20, 5, 30))
            .await
            .into_iter()
            .map(|(col, run, _)| (col, run))
            .collect::<Vec<_>>();
        table.latency("20 streams of 30 tokens", &runs, false);
    }
    if part("paced") {
        const STREAMS: usize = 100;
        let (mut runs, mut cpu, mut redis_cpu) = (Vec::new(), Vec::new(), None);
        let mut commands = None;
        let all: Vec<&Subject> = subjects.iter().collect();
        let measured =
            interleaved(&all, &redis, |s| phases::latency(s.target, STREAMS, 2, 100)).await;
        for (s, (_, run, cost)) in subjects.iter().zip(measured) {
            if s.pid.is_some() {
                cpu.push((s.col, cpu_use(&cost, run.tokens, None)));
            }
            if s.col == Col::Redis {
                redis_cpu = Some(cost.redis_cpu);
                commands = Some((cost.redis_commands, run.tokens, run.streams));
            }
            runs.push((s.col, run));
        }
        table.latency("100 paced streams of 100 tokens", &runs, true);
        table.cpu(
            "CPU seconds per million tokens, 100 streams paced at a token every 10 ms (one token per upstream write)",
            &cpu,
            redis_cpu,
        );
        if let Some((commands, tokens, streams)) = commands {
            table.redis_commands("Redis commands per token, paced", commands, tokens, streams);
        }
    }
    if part("saturated") {
        let (mut cpu, mut redis_cpu, mut commands) = (Vec::new(), None, None);
        let relaying: Vec<&Subject> = subjects.iter().filter(|s| s.pid.is_some()).collect();
        let measured = interleaved(&relaying, &redis, |s| phases::saturated(s.target)).await;
        for (s, (_, run, cost)) in relaying.iter().zip(measured) {
            if run.failed > 0 {
                table.notes.push(format!(
                    "{} saturated streams ({:?}) did not get every token",
                    run.failed, s.col
                ));
            }
            if s.col == Col::Redis {
                redis_cpu = Some(cost.redis_cpu);
                commands = Some((cost.redis_commands, run.tokens, run.tokens / 2_000));
            }
            cpu.push((s.col, cpu_use(&cost, run.tokens, Some(run.wall))));
        }
        table.cpu(
            "CPU seconds per million tokens, 50 streams as fast as the server goes (one token per upstream write)",
            &cpu,
            redis_cpu,
        );
        if let Some((commands, tokens, streams)) = commands {
            table.redis_commands(
                "Redis commands per token, saturated",
                commands,
                tokens,
                streams,
            );
        }
    }
    if part("cancellation") {
        let through = hold::cancellation(&mock, subjects[0].target, 1_000_000).await;
        let mut earlier = None;
        if let Some(before) = &before {
            let target = Target::Server(before.address);
            earlier = Some(hold::cancellation(&mock, target, 3_000_000).await);
        }
        let straight = hold::cancellation(&mock, Target::Mock(mock.address), 2_000_000).await;
        table.cancellation(&through, earlier.as_ref(), &straight);
    }
    for (name, s) in [("llm-stream", &server), ("with Redis", &with_redis)]
        .into_iter()
        .chain(before.as_ref().map(|b| ("before durable answers", b)))
    {
        if !s.is_running() {
            eprintln!("{name} stopped during the run; its last lines:");
            s.log_tail().iter().for_each(|l| eprintln!("  {l}"));
        }
    }
    drop((server, before, with_redis, fallback, nginx, relay));

    // Last: holding thousands of streams leaves heaps and the kernel's socket tables larger,
    // which would disturb the timings above. Each figure is a fresh process's.
    if part("memory") {
        let plain = held_plain(&mock).await;
        table.held(&plain[0].1);
        table.memory(
            "resident memory per held stream, plain upstream (1 token/s)",
            &plain,
        );
    }
    if part("https") {
        let certs = Certs::make();
        let tls_mock = Mock::start(Some(tls::acceptor(&certs))).await;
        table.memory(
            "resident memory per held stream, HTTPS upstream (1 token/s)",
            &held_https(&tls_mock, &certs).await,
        );
    }
    eprintln!(
        "load bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    table.print();
}

/// How many times each column runs a timed part, taking turns with the others.
const TURNS: usize = 3;

/// Runs `phase` through every subject [`TURNS`] times, the columns taking turns (in an order that
/// rotates), so that a noisy moment of the shared machine falls on every column alike rather than
/// on whichever ran then; returns each column's runs merged and its costs summed.
async fn interleaved<T, F, Fut>(
    subjects: &[&Subject],
    redis: &Redis,
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
            let (run, cost) = costed(subjects[i], Some(redis), phase(subjects[i])).await;
            merged[i].1.merge(run);
            merged[i].2.add(&cost);
        }
    }
    merged
}

fn cpu_use(cost: &Cost, tokens: usize, wall: Option<Duration>) -> CpuUse {
    CpuUse {
        user: cost.user,
        system: cost.system,
        tokens,
        wall,
    }
}

/// Streams held through fresh llm-stream, nginx and relay processes in front of the plain mock.
async fn held_plain(mock: &Mock) -> Vec<(Col, Memory)> {
    let wanted = hold::streams_to_hold();
    let mut runs = Vec::new();
    let server = Server::start(SERVER_CORE, Launch::plain(mock.address));
    let via = Target::Server(server.address);
    runs.push((Col::Today, hold::memory(server.pid(), via, wanted).await));
    drop(server);
    let nginx = Nginx::start(SERVER_CORE, mock.address, None, "held");
    let via = Target::Mock(nginx.address);
    runs.push((Col::Nginx, hold::memory(nginx.pid(), via, wanted).await));
    drop(nginx);
    let relay = Relay::start(SERVER_CORE, mock.address);
    let via = Target::Mock(relay.address);
    runs.push((Col::Relay, hold::memory(relay.pid(), via, wanted).await));
    runs
}

/// Streams held through fresh llm-stream and nginx processes in front of the HTTPS mock.
async fn held_https(mock: &Mock, certs: &Certs) -> Vec<(Col, Memory)> {
    let wanted = hold::streams_to_hold();
    let mut runs = Vec::new();
    let server = Server::start(
        SERVER_CORE,
        Launch {
            binary: None,
            upstream: format!("https://{}/v1", mock.address),
            env: vec![("SSL_CERT_FILE", certs.authority.display().to_string())],
        },
    );
    let via = Target::Server(server.address);
    runs.push((Col::Today, hold::memory(server.pid(), via, wanted).await));
    drop(server);
    let nginx = Nginx::start(SERVER_CORE, mock.address, Some(certs), "https");
    let via = Target::Mock(nginx.address);
    runs.push((Col::Nginx, hold::memory(nginx.pid(), via, wanted).await));
    runs
}
