//! The HTTPS upstream (issue 22): one TLS mock offering ALPN `h2` and `http/1.1`, and in front of
//! it llm-stream over HTTP/2 (the default), llm-stream with LLM_HTTP2=off (HTTP/1.1 over TLS) and
//! nginx over HTTPS (HTTP/1.1, as its proxy_pass speaks), each column measured in the same run:
//! time to first token with warm connections, CPU per paced token, memory per held stream, and
//! how many upstream connections each used.

use crate::{
    SERVER_CORE,
    client::Target,
    hold,
    mock::{Accepted, Mock, max_h2_streams},
    nginx::Nginx,
    phases,
    redis::Redis,
    server::{Launch, Server},
    table::{Col, Table},
    tls::{self, Certs},
    turns::{Meters, Subject, costed, interleaved},
};

pub struct Https {
    certs: Certs,
    mock: Mock,
}

impl Https {
    /// The throw-away certificate and the TLS mock, on the bench's core.
    pub async fn start() -> Self {
        let certs = Certs::make();
        let mock = Mock::start(Some(tls::acceptor(&certs))).await;
        Self { certs, mock }
    }

    /// llm-stream in front of the TLS mock, trusting its authority; over HTTP/2 or not.
    fn server(&self, http2: bool) -> Server {
        let mut env = vec![("SSL_CERT_FILE", self.certs.authority.display().to_string())];
        if !http2 {
            env.push(("LLM_HTTP2", "off".to_owned()));
        }
        Server::start(
            SERVER_CORE,
            Launch {
                binary: None,
                upstream: format!("https://{}/v1", self.mock.address),
                env,
            },
        )
    }

    fn nginx(&self, name: &str) -> Nginx {
        Nginx::start(SERVER_CORE, self.mock.address, Some(&self.certs), name)
    }

    /// Time to first token (warm connections) and CPU per paced token through the three HTTPS
    /// columns, taking turns; `plain` (this tree's llm-stream and the mock, over plain HTTP) join
    /// the latency's turns, as its reference: what the HTTPS columns add is read against the
    /// mock, and issue 22 wants no more added than over plain HTTP.
    pub async fn timed(&self, plain: &[&Subject], redis: &Redis, table: &mut Table) {
        let http2 = self.server(true);
        let off = self.server(false);
        let nginx = self.nginx("https-timed");
        let columns = [
            Subject::server(Col::Http2, &http2),
            Subject::server(Col::Http1Tls, &off),
            Subject {
                col: Col::NginxHttps,
                target: Target::Mock(nginx.address),
                pid: Some(nginx.pid()),
            },
        ];
        eprintln!(
            "load bench, HTTPS: llm-stream HTTP/2 {}, HTTP/1.1 {}, nginx {} on core {SERVER_CORE}; the TLS mock advertises {} streams per HTTP/2 connection",
            http2.pid(),
            off.pid(),
            nginx.pid(),
            max_h2_streams()
        );
        let meters = Meters {
            redis,
            upstream: &self.mock,
        };
        // The connections each column opened, phase by phase.
        let mut opened: Vec<(Col, Vec<String>)> =
            columns.iter().map(|s| (s.col, Vec::new())).collect();
        // Warm up: the connections (and their handshakes) that the timed streams then find open.
        warm_up(&columns, &meters, 20, "warm-up ", &mut opened).await;
        let all: Vec<&Subject> = columns.iter().chain(plain.iter().copied()).collect();
        let measured = interleaved(&all, &meters, |s| phases::latency(s.target, 20, 5, 30)).await;
        let mut runs = Vec::new();
        for (col, run, cost) in measured {
            if let Some((_, cells)) = opened.iter_mut().find(|(c, _)| *c == col) {
                cells.push(format!("latency +{}", cost.accepted));
            }
            runs.push((col, run));
        }
        table.latency(
            "HTTPS upstream, warm connections, 20 streams of 30 tokens (llm-stream and the mock: plain HTTP, for reference)",
            &runs,
            false,
        );
        paced(&columns, &meters, table, &mut opened).await;
        let cells = opened
            .into_iter()
            .map(|(col, cells)| (col, cells.join(", ")))
            .collect();
        table.connections(
            "upstream TLS connections opened, phase by phase (warm-ups: 20 then 100 streams of 5 tokens)",
            cells,
            None,
        );
        for (name, s) in [("llm-stream HTTP/2", &http2), ("llm-stream HTTP/1.1", &off)] {
            if !s.is_running() {
                eprintln!("{name} stopped during the run; its last lines:");
                s.log_tail().iter().for_each(|l| eprintln!("  {l}"));
            }
        }
    }

    /// Streams held through a fresh process of each HTTPS column, one after another (so that the
    /// connections the TLS mock accepts meanwhile are that column's).
    pub async fn held(&self, table: &mut Table) {
        let wanted = hold::streams_to_hold();
        let (mut memory, mut used) = (Vec::new(), Vec::new());
        for col in [Col::Http2, Col::Http1Tls, Col::NginxHttps] {
            let before = self.mock.accepted();
            let m = match col {
                Col::NginxHttps => {
                    let nginx = self.nginx("https-held");
                    let via = Target::Mock(nginx.address);
                    hold::memory(nginx.pid(), via, wanted).await
                }
                _ => {
                    let server = self.server(col == Col::Http2);
                    let via = Target::Server(server.address);
                    hold::memory(server.pid(), via, wanted).await
                }
            };
            used.push((col, self.mock.accepted().since(before), m.served));
            memory.push((col, m));
        }
        table.memory(
            "resident memory per held stream, HTTPS upstream (1 token/s)",
            &memory,
        );
        held_connections(table, &used);
    }
}

/// `streams` streams of 5 tokens through each column, one column after another, noting the
/// connections each opened under `phase`.
async fn warm_up(
    columns: &[Subject],
    meters: &Meters<'_>,
    streams: usize,
    phase: &str,
    opened: &mut [(Col, Vec<String>)],
) {
    for (s, (_, cells)) in columns.iter().zip(opened) {
        let (_, cost) = costed(s, meters, phases::latency(s.target, streams, 1, 5)).await;
        cells.push(format!("{phase}{}", cost.accepted));
    }
}

/// CPU per million tokens, 100 paced streams, after a warm-up that opens the connections they
/// need (so that the figure is of streaming, not of handshakes a keep-alive pool amortizes).
async fn paced(
    columns: &[Subject],
    meters: &Meters<'_>,
    table: &mut Table,
    opened: &mut [(Col, Vec<String>)],
) {
    const STREAMS: usize = 100;
    warm_up(columns, meters, STREAMS, "paced warm-up +", opened).await;
    let all: Vec<&Subject> = columns.iter().collect();
    let measured = interleaved(&all, meters, |s| phases::latency(s.target, STREAMS, 2, 100)).await;
    let mut cpu = Vec::new();
    for ((col, run, cost), (_, cells)) in measured.into_iter().zip(opened) {
        cells.push(format!("paced +{}", cost.accepted));
        if run.failed > 0 {
            table.notes.push(format!(
                "{} of {} paced HTTPS streams ({col:?}) failed or missed tokens",
                run.failed, run.streams
            ));
        }
        cpu.push((col, cost.cpu_use(run.tokens, None)));
    }
    table.cpu(
        "CPU seconds per million tokens, HTTPS upstream, 100 streams paced at a token every 10 ms (one token per upstream write or DATA frame)",
        &cpu,
        &[],
    );
}

/// The connections the held streams used, and issue 22's target for HTTP/2: as few as the
/// server's stream limit allows.
fn held_connections(table: &mut Table, used: &[(Col, Accepted, usize)]) {
    let limit = max_h2_streams() as usize;
    let cells = used
        .iter()
        .map(|(col, accepted, served)| (*col, format!("{accepted} for {served} streams")))
        .collect();
    let target = used
        .iter()
        .find(|(c, _, _)| *c == Col::Http2)
        .map(|(_, a, served)| {
            let fewest = served.div_ceil(limit);
            (
                format!("issue 22, HTTP/2: ≤ ⌈streams / {limit} per connection⌉ = {fewest}"),
                a.total() <= fewest && a.http1 == 0,
            )
        });
    table.connections(
        "upstream TLS connections the held streams used",
        cells,
        target,
    );
}
