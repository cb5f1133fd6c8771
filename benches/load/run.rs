//! One run: starts every process, measures each part through every column, fills the table.

use std::time::Instant;

use crate::{
    BENCH_CORE, SERVER_CORE,
    client::Target,
    hold::{self, Memory},
    https::Https,
    mock::Mock,
    nginx::Nginx,
    phases,
    redis::Redis,
    relay::Relay,
    server::{Launch, Server},
    table::{Col, Table},
    turns::{Meters, Subject, interleaved},
};

fn env_on(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// TOKEN_BUDGET for the budget columns: the most it takes (10^9 tokens a day), which a run never
/// spends, so that every question pays the budget's bookkeeping and none is refused.
const NEVER_SPENT: &str = "1000000000";

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
    let with_env = |env: Vec<(&'static str, String)>| {
        Server::start(
            SERVER_CORE,
            Launch {
                env,
                ..Launch::plain(mock.address)
            },
        )
    };
    let with_redis = with_env(vec![("REDIS_URL", redis.url())]);
    // LOAD_BUDGET=1 (issue 20): a token budget that never runs out, kept in the process and on Redis.
    let budget = env_on("LOAD_BUDGET").map(|_| {
        (
            with_env(vec![("TOKEN_BUDGET", NEVER_SPENT.to_owned())]),
            with_env(vec![
                ("TOKEN_BUDGET", NEVER_SPENT.to_owned()),
                ("REDIS_URL", redis.url()),
            ]),
        )
    });
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
    let mut subjects = vec![Subject::server(Col::Today, &server)];
    if let Some(before) = &before {
        subjects.push(Subject::server(Col::Before, before));
    }
    if let Some(fallback) = &fallback {
        subjects.push(Subject::server(Col::Fallback, fallback));
    }
    subjects.push(Subject::server(Col::Redis, &with_redis));
    if let Some((embedded, on_redis)) = &budget {
        subjects.push(Subject::server(Col::Budget, embedded));
        subjects.push(Subject::server(Col::BudgetRedis, on_redis));
    }
    subjects.extend([
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
        "load bench: llm-stream {}, before durable answers {:?}, with Redis {} (redis-server {}), with a token budget {:?}, nginx {}, relay {} on core {SERVER_CORE}; mock and clients on core {BENCH_CORE}",
        server.pid(),
        before.as_ref().map(Server::pid),
        with_redis.pid(),
        redis.pid(),
        budget.as_ref().map(|(e, r)| (e.pid(), r.pid())),
        nginx.pid(),
        relay.pid()
    );
    let meters = Meters {
        redis: &redis,
        upstream: &mock,
    };

    // Warm up: connections, the allocator, lazy statics, Redis's scripts.
    for s in &subjects {
        phases::latency(s.target, 20, 1, 5).await;
    }

    let mut table = Table::default();
    if part("latency") {
        let all: Vec<&Subject> = subjects.iter().collect();
        let runs = interleaved(&all, &meters, |s| phases::latency(s.target, 20, 5, 30))
            .await
            .into_iter()
            .map(|(col, run, _)| (col, run))
            .collect::<Vec<_>>();
        table.latency("20 streams of 30 tokens", &runs, false);
    }
    if part("paced") {
        const STREAMS: usize = 100;
        let (mut runs, mut cpu, mut redis_cpu, mut commands) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let all: Vec<&Subject> = subjects.iter().collect();
        let measured = interleaved(&all, &meters, |s| {
            phases::latency(s.target, STREAMS, 2, 100)
        })
        .await;
        for (s, (_, run, cost)) in subjects.iter().zip(measured) {
            if s.pid.is_some() {
                cpu.push((s.col, cost.cpu_use(run.tokens, None)));
            }
            if s.col.uses_redis() {
                redis_cpu.push((s.col, cost.redis_cpu));
                commands.push((s.col, (cost.redis_commands, run.tokens, run.streams)));
            }
            runs.push((s.col, run));
        }
        table.latency("100 paced streams of 100 tokens", &runs, true);
        table.cpu(
            "CPU seconds per million tokens, 100 streams paced at a token every 10 ms (one token per upstream write)",
            &cpu,
            &redis_cpu,
        );
        table.redis_commands("Redis commands per token, paced", &commands);
    }
    if part("saturated") {
        let (mut cpu, mut redis_cpu, mut commands) = (Vec::new(), Vec::new(), Vec::new());
        // The budget columns are for the latency and paced parts (issue 20's figures).
        let relaying: Vec<&Subject> = subjects
            .iter()
            .filter(|s| s.pid.is_some() && !matches!(s.col, Col::Budget | Col::BudgetRedis))
            .collect();
        let measured = interleaved(&relaying, &meters, |s| phases::saturated(s.target)).await;
        for (s, (_, run, cost)) in relaying.iter().zip(measured) {
            if run.failed > 0 {
                table.notes.push(format!(
                    "{} saturated streams ({:?}) did not get every token",
                    run.failed, s.col
                ));
            }
            if s.col.uses_redis() {
                redis_cpu.push((s.col, cost.redis_cpu));
                commands.push((s.col, (cost.redis_commands, run.tokens, run.tokens / 2_000)));
            }
            cpu.push((s.col, cost.cpu_use(run.tokens, Some(run.wall))));
        }
        table.cpu(
            "CPU seconds per million tokens, 50 streams as fast as the server goes (one token per upstream write)",
            &cpu,
            &redis_cpu,
        );
        table.redis_commands("Redis commands per token, saturated", &commands);
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
    let https = if part("https") {
        Some(Https::start().await)
    } else {
        None
    };
    if let Some(https) = &https {
        let plain: Vec<&Subject> = subjects
            .iter()
            .filter(|s| matches!(s.col, Col::Today | Col::Mock))
            .collect();
        https.timed(&plain, &redis, &mut table).await;
    }
    for (name, s) in [("llm-stream", &server), ("with Redis", &with_redis)]
        .into_iter()
        .chain(before.as_ref().map(|b| ("before durable answers", b)))
        .chain(budget.iter().flat_map(|(e, r)| {
            [
                ("with a token budget", e),
                ("with a token budget on Redis", r),
            ]
        }))
    {
        if !s.is_running() {
            eprintln!("{name} stopped during the run; its last lines:");
            s.log_tail().iter().for_each(|l| eprintln!("  {l}"));
        }
    }
    drop((server, before, with_redis, budget, fallback, nginx, relay));

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
    if let Some(https) = &https {
        https.held(&mut table).await;
    }
    eprintln!(
        "load bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    table.print();
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
