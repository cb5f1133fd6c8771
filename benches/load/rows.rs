//! The table's rows: what each figure is, each column's cell, and the target's verdict.

use std::time::Duration;

use crate::{
    hold::{CANCEL_PERIOD, CANCEL_STREAMS, Cancel, Memory},
    phases::{GAP, Latency},
    table::{Col, Row, Table, diff_ms, ms, percentile, verdict},
};

/// CPU used by one column's process over a phase, and what passed through it.
pub struct CpuUse {
    pub user: Duration,
    pub system: Duration,
    pub tokens: usize,
    /// The phase's length, when the throughput is worth saying (saturated).
    pub wall: Option<Duration>,
}

impl CpuUse {
    /// CPU seconds per million tokens.
    pub fn per_million(&self) -> f64 {
        (self.user + self.system).as_secs_f64() / self.tokens.max(1) as f64 * 1e6
    }
}

fn find<T>(runs: &[(Col, T)], col: Col) -> Option<&T> {
    runs.iter().find(|(c, _)| *c == col).map(|(_, t)| t)
}

impl Table {
    /// Time to first token and gaps between tokens, every column, with what each adds to the
    /// mock. `strict`: issue 13's targets for added time to first token apply (100 streams).
    pub fn latency(&mut self, label: &str, runs: &[(Col, Latency)], strict: bool) {
        let Some(mock) = find(runs, Col::Mock) else {
            return;
        };
        let rows = [
            ("time to first token p50", 0.5, true, 0.1),
            ("time to first token p99", 0.99, true, 0.5),
            ("gap between tokens p50", 0.5, false, f64::NAN),
            ("gap between tokens p99", 0.99, false, 0.5),
        ];
        for (name, q, first, limit) in rows {
            let pick = |l: &Latency| percentile(if first { &l.first_token } else { &l.gaps }, q);
            let added = |l: &Latency| diff_ms(pick(l), pick(mock));
            let mut row = Row::new(format!("{name}, {label}"));
            for (col, run) in runs {
                row.set(
                    *col,
                    if *col == Col::Mock {
                        ms(pick(run))
                    } else {
                        format!("{} ({:+.3})", ms(pick(run)), added(run))
                    },
                );
            }
            let mut targets = Vec::new();
            if let Some(http2) = find(runs, Col::Http2) {
                // Issue 22: over HTTPS with warm connections, no more added than over plain HTTP,
                // and a p99 no more than twice nginx's.
                if first {
                    if let Some(plain) = find(runs, Col::Today) {
                        targets.push(verdict(
                            &format!(
                                "issue 22, HTTP/2 added ≤ plain HTTP's ({:+.3} ms)",
                                added(plain)
                            ),
                            added(http2) <= added(plain),
                        ));
                    }
                    if let Some(nginx) = find(runs, Col::NginxHttps)
                        && q > 0.5
                    {
                        targets.push(verdict(
                            &format!(
                                "issue 22, HTTP/2 p99 added ≤ 2 × nginx HTTPS's ({:+.3} ms)",
                                added(nginx)
                            ),
                            added(http2) <= 2.0 * added(nginx),
                        ));
                    }
                }
            } else if let Some(today) = find(runs, Col::Today) {
                if first {
                    if let Some(before) = find(runs, Col::Before) {
                        targets.push(verdict(
                            &format!("issue 10, added ≤ before's ({:+.3} ms)", added(before)),
                            added(today) <= added(before),
                        ));
                    }
                    if strict {
                        targets.push(verdict(
                            &format!("issue 13, ≤ {limit} ms added"),
                            added(today) <= limit,
                        ));
                    }
                } else if limit.is_nan() {
                    targets.push(verdict(
                        "tokens 10 ms apart leave 10 ms apart",
                        diff_ms(pick(today), GAP).abs() < 1.0,
                    ));
                } else {
                    targets.push(verdict(
                        &format!("≤ {limit} ms added"),
                        added(today) <= limit,
                    ));
                }
            }
            row.target = targets.join("; ");
            self.push(row);
        }
        for (col, run) in runs {
            if run.failed > 0 {
                self.notes.push(format!(
                    "{} of {} streams ({col:?}, {label}) failed or missed tokens",
                    run.failed, run.streams
                ));
            }
        }
    }

    /// CPU seconds per million tokens; the columns on Redis add redis-server's own CPU.
    pub fn cpu(&mut self, figure: &str, runs: &[(Col, CpuUse)], redis_server: &[(Col, Duration)]) {
        let mut row = Row::new(figure);
        for (col, run) in runs {
            let mut cell = format!(
                "{:.1} s ({:.1} user, {:.1} system",
                run.per_million(),
                run.user.as_secs_f64() / run.tokens.max(1) as f64 * 1e6,
                run.system.as_secs_f64() / run.tokens.max(1) as f64 * 1e6,
            );
            if let Some(wall) = run.wall {
                cell += &format!(
                    "; {:.0} k tokens/s",
                    run.tokens as f64 / wall.as_secs_f64() / 1e3
                );
            }
            cell += ")";
            if let Some(redis) = find(redis_server, *col) {
                cell += &format!(
                    " + redis-server {:.1} s",
                    redis.as_secs_f64() / run.tokens.max(1) as f64 * 1e6
                );
            }
            row.set(*col, cell);
        }
        let mut targets = Vec::new();
        if let Some(today) = find(runs, Col::Today) {
            if let Some(before) = find(runs, Col::Before) {
                let ratio = today.per_million() / before.per_million();
                targets.push(verdict(
                    &format!("issue 10, ≤ 110 % of before ({:.0} %)", ratio * 100.0),
                    ratio <= 1.10,
                ));
            }
            if let Some(nginx) = find(runs, Col::Nginx) {
                targets.push(verdict(
                    "issue 13, ≤ nginx",
                    today.per_million() <= nginx.per_million(),
                ));
            }
        }
        if let (Some(http2), Some(nginx)) = (find(runs, Col::Http2), find(runs, Col::NginxHttps)) {
            targets.push(verdict(
                "issue 22, HTTP/2 ≤ nginx HTTPS",
                http2.per_million() <= nginx.per_million(),
            ));
        }
        row.target = targets.join("; ");
        self.push(row);
    }

    /// Commands Redis ran for each Redis column's streams of a phase (commands, tokens,
    /// streams), per token and per stream.
    pub fn redis_commands(&mut self, figure: &str, runs: &[(Col, (u64, usize, usize))]) {
        if runs.is_empty() {
            return;
        }
        let mut row = Row::new(figure);
        for (col, (commands, tokens, streams)) in runs {
            row.set(
                *col,
                format!(
                    "{:.3} per token ({:.1} per stream; {commands} commands, {tokens} tokens)",
                    *commands as f64 / (*tokens).max(1) as f64,
                    *commands as f64 / (*streams).max(1) as f64
                ),
            );
        }
        self.push(row);
    }

    /// Through llm-stream, through the binary before durable answers when given, and straight.
    pub fn cancellation(&mut self, through: &Cancel, before: Option<&Cancel>, straight: &Cancel) {
        let pace = format!(
            "{CANCEL_STREAMS} clients, one question each per {} ms",
            CANCEL_PERIOD.as_millis()
        );
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (t, s) = (
                percentile(&through.closed, q),
                percentile(&straight.closed, q),
            );
            let mut row = Row::new(format!(
                "upstream closed after the client leaves, {name} ({pace})"
            ));
            row.set(Col::Today, format!("{} ({:+.3})", ms(t), diff_ms(t, s)));
            if let Some(before) = before {
                let b = percentile(&before.closed, q);
                row.set(Col::Before, format!("{} ({:+.3})", ms(b), diff_ms(b, s)));
            }
            row.set(Col::Mock, ms(s));
            if q > 0.5 {
                row.target = verdict("≤ 2 ms", t <= Duration::from_millis(2));
            }
            self.push(row);
        }
        let mut row = Row::new("upstream connections still open 2 s after their clients left");
        row.set(
            Col::Today,
            format!("{} of {}", through.still_open, through.streams),
        );
        row.set(
            Col::Mock,
            format!("{} of {}", straight.still_open, straight.streams),
        );
        if let Some(before) = before {
            row.set(
                Col::Before,
                format!("{} of {}", before.still_open, before.streams),
            );
        }
        row.target = verdict("none", through.still_open == 0);
        self.push(row);
        for (path, run) in [("through llm-stream", through), ("straight", straight)] {
            if run.left < run.streams || run.closed.len() < run.left {
                self.notes.push(format!(
                    "cancellation {path}: {} of {} clients got three tokens, {} upstream closes seen",
                    run.left,
                    run.streams,
                    run.closed.len()
                ));
            }
        }
    }

    /// Resident memory per held stream, each column's process on its own.
    pub fn memory(&mut self, figure: &str, runs: &[(Col, Memory)]) {
        let mut row = Row::new(figure);
        for (col, m) in runs {
            row.set(
                *col,
                format!(
                    "{:.1} KiB ({:.0} MiB idle, {:.0} MiB with {} streams)",
                    m.per_stream_kib(),
                    m.idle as f64 / 1048576.0,
                    m.peak as f64 / 1048576.0,
                    m.served
                ),
            );
            if m.served < m.wanted {
                self.notes.push(format!(
                    "{figure}, {col:?}: {} of {} streams served ({} opened, {} failed)",
                    m.served, m.wanted, m.opened, m.failed
                ));
            }
        }
        if let (Some(today), Some(nginx)) = (find(runs, Col::Today), find(runs, Col::Nginx)) {
            row.target = verdict(
                "issue 13, ≤ nginx",
                today.per_stream_kib() <= nginx.per_stream_kib(),
            );
        }
        if let (Some(http2), Some(nginx)) = (find(runs, Col::Http2), find(runs, Col::NginxHttps)) {
            row.target = verdict(
                &format!(
                    "issue 22, HTTP/2 ≤ half of nginx HTTPS ({:.1} KiB)",
                    nginx.per_stream_kib() / 2.0
                ),
                http2.per_stream_kib() <= nginx.per_stream_kib() / 2.0,
            );
        }
        self.push(row);
    }

    /// Upstream connections each column used (the cells say over which phases), and a target.
    pub fn connections(
        &mut self,
        figure: &str,
        cells: Vec<(Col, String)>,
        target: Option<(String, bool)>,
    ) {
        let mut row = Row::new(figure);
        for (col, cell) in cells {
            row.set(col, cell);
        }
        if let Some((target, met)) = target {
            row.target = verdict(&target, met);
        }
        self.push(row);
    }

    /// How many streams llm-stream held at once, up to the open-files limit.
    pub fn held(&mut self, m: &Memory) {
        let mut row = Row::new("streams held open at once");
        row.set(
            Col::Today,
            format!(
                "{} of {} ({} open files allowed; {} descriptors at the peak; opened in {:.1} s)",
                m.served,
                m.wanted,
                m.limit,
                m.peak_fds,
                m.opening_took.as_secs_f64()
            ),
        );
        row.target = verdict("every stream up to the limit", m.served == m.wanted);
        self.push(row);
    }
}
