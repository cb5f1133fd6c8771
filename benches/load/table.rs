//! The printed report: a markdown table, one row per figure, then notes on anything that failed.

use std::time::Duration;

use crate::phases::{CANCEL_PERIOD, CANCEL_STREAMS, Cancel, Cpu, GAP, Latency, Memory};

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

#[derive(Default)]
struct Row {
    figure: String,
    through: String,
    relayed: String,
    straight: String,
    added: String,
    added_beyond_relay: String,
    target: String,
}

const NONE: &str = "–";

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

fn diff_ms(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e3
}

fn signed_ms(diff: f64) -> String {
    format!("{diff:+.3} ms")
}

fn verdict(target: &str, met: bool) -> String {
    if met {
        format!("{target}: met")
    } else {
        format!("{target}: **not met**")
    }
}

impl Table {
    /// Time to first token and gaps between tokens, three ways.
    pub fn latency(
        &mut self,
        streams: usize,
        through: &Latency,
        relayed: &Latency,
        straight: &Latency,
    ) {
        let rows = [
            ("time to first token p50", 0.5, true, 0.2),
            ("time to first token p99", 0.99, true, 1.0),
            ("gap between tokens p50", 0.5, false, f64::NAN),
            ("gap between tokens p99", 0.99, false, 0.5),
        ];
        for (name, q, first, limit) in rows {
            let pick = |l: &Latency| percentile(if first { &l.first_token } else { &l.gaps }, q);
            let (t, r, s) = (pick(through), pick(relayed), pick(straight));
            let added = diff_ms(t, s);
            let target = if limit.is_nan() {
                // No token held back for the next: tokens sent 10 ms apart leave 10 ms apart.
                verdict(
                    "tokens 10 ms apart leave 10 ms apart",
                    diff_ms(t, GAP).abs() < 1.0,
                )
            } else {
                verdict(&format!("≤ {limit} ms added"), added <= limit)
            };
            self.rows.push(Row {
                figure: format!("{name}, {streams} streams"),
                through: ms(t),
                relayed: ms(r),
                straight: ms(s),
                added: signed_ms(added),
                added_beyond_relay: signed_ms(diff_ms(t, r)),
                target,
            });
        }
        for (path, run) in [
            ("through llm-stream", through),
            ("through the relay", relayed),
            ("straight from the mock", straight),
        ] {
            if run.failed > 0 {
                self.notes.push(format!(
                    "{} of {} streams {path} at {streams} concurrent failed or missed tokens",
                    run.failed, run.streams
                ));
            }
        }
    }

    /// CPU time (user, system) per stream in a latency run (its start, 30 tokens, its end), of
    /// the server and of the relay.
    pub fn stream_cpu(
        &mut self,
        streams: usize,
        server: (Duration, Duration),
        relay: (Duration, Duration),
        count: usize,
    ) {
        let describe = |(user, system): (Duration, Duration)| {
            let micros = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
            format!(
                "{:.0} µs ({:.0} user, {:.0} system)",
                micros(user + system),
                micros(user),
                micros(system)
            )
        };
        self.rows.push(Row {
            figure: format!("CPU per stream (start, 30 tokens, end), {streams} streams"),
            through: describe(server),
            relayed: describe(relay),
            ..Row::default()
        });
    }

    pub fn memory(&mut self, m: Memory) {
        let per_stream = m.peak.saturating_sub(m.idle) as f64 / m.served.max(1) as f64 / 1024.0;
        self.rows.push(Row {
            figure: "resident memory per open stream (1 token/s)".into(),
            through: format!(
                "{per_stream:.1} KiB ({:.0} MiB idle, {:.0} MiB with {} streams open)",
                m.idle as f64 / 1048576.0,
                m.peak as f64 / 1048576.0,
                m.served
            ),
            target: verdict("≤ 16 KiB", per_stream <= 16.0),
            ..Row::default()
        });
        self.rows.push(Row {
            figure: "streams held open at once".into(),
            through: format!(
                "{} of {} ({} open files allowed; {} descriptors at the peak; opened in {:.1} s)",
                m.served,
                m.wanted,
                m.limit,
                m.peak_fds,
                m.opening_took.as_secs_f64()
            ),
            target: verdict("every stream up to the limit", m.served == m.wanted),
            ..Row::default()
        });
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

    pub fn cancellation(&mut self, through: &Cancel, straight: &Cancel) {
        let pace = format!(
            "{CANCEL_STREAMS} clients, one question each per {} ms",
            CANCEL_PERIOD.as_millis()
        );
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (t, s) = (
                percentile(&through.closed, q),
                percentile(&straight.closed, q),
            );
            self.rows.push(Row {
                figure: format!("upstream closed after the client leaves, {name} ({pace})"),
                through: ms(t),
                straight: ms(s),
                added: signed_ms(diff_ms(t, s)),
                target: if q > 0.5 {
                    verdict("≤ 2 ms", t <= Duration::from_millis(2))
                } else {
                    String::new()
                },
                ..Row::default()
            });
        }
        self.rows.push(Row {
            figure: "upstream connections still open 2 s after their clients left".into(),
            through: format!("{} of {}", through.still_open, through.streams),
            straight: format!("{} of {}", straight.still_open, straight.streams),
            target: verdict("none", through.still_open == 0),
            ..Row::default()
        });
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
            if run.closed.len() < run.left {
                self.notes.push(format!(
                    "{} upstream connections {path} were never seen closed",
                    run.left - run.closed.len()
                ));
            }
        }
    }

    pub fn cpu(&mut self, through: &Cpu, relayed: &Cpu) {
        let per_million = |c: &Cpu| c.used.as_secs_f64() / c.tokens.max(1) as f64 * 1e6;
        let describe = |c: &Cpu| {
            format!(
                "{:.2} s ({} tokens in {:.1} s: {:.0} tokens/s)",
                per_million(c),
                c.tokens,
                c.wall.as_secs_f64(),
                c.tokens as f64 / c.wall.as_secs_f64()
            )
        };
        self.rows.push(Row {
            figure: "CPU seconds per million tokens (mock as fast as it can)".into(),
            through: describe(through),
            relayed: describe(relayed),
            target: verdict("≤ 5 s", per_million(through) <= 5.0),
            ..Row::default()
        });
        for (path, run) in [
            ("through llm-stream", through),
            ("through the relay", relayed),
        ] {
            if run.failed > 0 {
                self.notes.push(format!(
                    "{} fast streams {path} did not get every token",
                    run.failed
                ));
            }
        }
    }

    pub fn print(&self) {
        println!(
            "| figure | through llm-stream | through a byte relay | straight from the mock | llm-stream minus mock | llm-stream minus relay | target |"
        );
        println!("|---|---|---|---|---|---|---|");
        let or_none = |s: &str| {
            if s.is_empty() {
                NONE.to_owned()
            } else {
                s.to_owned()
            }
        };
        for row in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.figure,
                or_none(&row.through),
                or_none(&row.relayed),
                or_none(&row.straight),
                or_none(&row.added),
                or_none(&row.added_beyond_relay),
                or_none(&row.target)
            );
        }
        for note in &self.notes {
            println!("\nNote: {note}");
        }
    }
}
