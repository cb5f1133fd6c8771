//! The printed report: a markdown table, one row per figure and one column per way a stream went
//! (columns nobody measured are left out), then notes on anything that failed. The figures'
//! rows are built in `rows`.

use std::time::Duration;

/// Where the streams of a column went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    /// Through this tree's llm-stream, without REDIS_URL.
    Today,
    /// Through the binary of LOAD_BASELINE_BIN (the commit before durable answers).
    Before,
    /// Through this tree's llm-stream with REDIS_URL.
    Redis,
    /// Through this tree's llm-stream with a TOKEN_BUDGET that never runs out, kept in the process
    /// (LOAD_BUDGET=1).
    Budget,
    /// The same budget on Redis: REDIS_URL and TOKEN_BUDGET (LOAD_BUDGET=1).
    BudgetRedis,
    /// Through this tree's llm-stream whose primary refuses connections, its breaker open: the
    /// fallback (the mock) answers (LOAD_FALLBACK=1).
    Fallback,
    /// Through nginx, passing bytes through.
    Nginx,
    /// Through the byte relay.
    Relay,
    /// Through this tree's llm-stream to the HTTPS mock, over HTTP/2 (LLM_HTTP2=auto, the default).
    Http2,
    /// Through this tree's llm-stream to the HTTPS mock, over HTTP/1.1 (LLM_HTTP2=off).
    Http1Tls,
    /// Through nginx to the HTTPS mock (HTTP/1.1, as its proxy_pass speaks).
    NginxHttps,
    /// Straight from the mock.
    Mock,
}

const COLS: [Col; 12] = [
    Col::Today,
    Col::Before,
    Col::Redis,
    Col::Budget,
    Col::BudgetRedis,
    Col::Fallback,
    Col::Nginx,
    Col::Relay,
    Col::Http2,
    Col::Http1Tls,
    Col::NginxHttps,
    Col::Mock,
];

impl Col {
    fn header(self) -> &'static str {
        match self {
            Self::Today => "llm-stream",
            Self::Before => "before durable answers",
            Self::Redis => "llm-stream with REDIS_URL",
            Self::Budget => "llm-stream with TOKEN_BUDGET",
            Self::BudgetRedis => "llm-stream with TOKEN_BUDGET and REDIS_URL",
            Self::Fallback => "primary down, fallback answering (breaker open)",
            Self::Nginx => "nginx pass-through",
            Self::Relay => "byte relay",
            Self::Http2 => "llm-stream HTTP/2",
            Self::Http1Tls => "llm-stream HTTP/1.1 (LLM_HTTP2=off)",
            Self::NginxHttps => "nginx HTTPS",
            Self::Mock => "straight from the mock",
        }
    }

    /// Whether its llm-stream keeps its state on Redis (so that redis-server's CPU is its too).
    pub fn uses_redis(self) -> bool {
        matches!(self, Self::Redis | Self::BudgetRedis)
    }
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Row {
    pub figure: String,
    pub cells: [String; COLS.len()],
    pub target: String,
}

impl Row {
    pub fn new(figure: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            ..Self::default()
        }
    }

    pub fn set(&mut self, col: Col, cell: String) {
        self.cells[col as usize] = cell;
    }
}

pub(crate) fn percentile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn diff_ms(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e3
}

pub(crate) fn verdict(target: &str, met: bool) -> String {
    if met {
        format!("{target}: met")
    } else {
        format!("{target}: **not met**")
    }
}

impl Table {
    pub(crate) fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn print(&self) {
        let used: Vec<Col> = COLS
            .into_iter()
            .filter(|&c| self.rows.iter().any(|r| !r.cells[c as usize].is_empty()))
            .collect();
        let headers: Vec<&str> = used.iter().map(|c| c.header()).collect();
        println!("| figure | {} | target |", headers.join(" | "));
        println!("|---|{}---|", "---|".repeat(used.len()));
        let or_none = |s: &str| {
            if s.is_empty() {
                "–".to_owned()
            } else {
                s.to_owned()
            }
        };
        for row in &self.rows {
            let cells: Vec<String> = used
                .iter()
                .map(|&c| or_none(&row.cells[c as usize]))
                .collect();
            println!(
                "| {} | {} | {} |",
                row.figure,
                cells.join(" | "),
                or_none(&row.target)
            );
        }
        for note in &self.notes {
            println!("\nNote: {note}");
        }
    }
}
