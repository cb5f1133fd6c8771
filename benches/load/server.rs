//! The server under test: a llm-stream binary (this tree's release build, or the baseline's),
//! pinned to core 0, and what /proc says about it and the other processes measured.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

pub struct Server {
    child: Child,
    pub address: SocketAddr,
    /// The last lines it logged, for a failure's report.
    log: Arc<Mutex<Vec<String>>>,
}

/// Clock ticks per second, for /proc's utime and stime.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// How to start one server.
pub struct Launch<'a> {
    /// The binary; this tree's release build when `None`.
    pub binary: Option<&'a str>,
    /// The upstream's base URL, e.g. `http://127.0.0.1:1234/v1`.
    pub upstream: String,
    /// More environment: `REDIS_URL`, `SSL_CERT_FILE`.
    pub env: Vec<(&'static str, String)>,
}

impl Launch<'_> {
    pub fn plain(upstream: SocketAddr) -> Self {
        Self {
            binary: None,
            upstream: format!("http://{upstream}/v1"),
            env: Vec::new(),
        }
    }
}

impl Server {
    /// Starts the server on core `core` in front of the mock, with the limits out of the way and
    /// no grace after a client leaves (a leaving client's upstream closes at once, as before
    /// durable answers, so that cancellation is measured and held streams wind down promptly).
    pub fn start(core: usize, launch: Launch) -> Self {
        // LOAD_SERVER_PREFIX runs the server under a profiler, e.g. "valgrind --tool=callgrind".
        let prefix = std::env::var("LOAD_SERVER_PREFIX").unwrap_or_default();
        let mut child = Command::new("taskset")
            .args(["-c", &core.to_string()])
            .args(prefix.split_whitespace())
            .arg(launch.binary.unwrap_or(env!("CARGO_BIN_EXE_llm-stream")))
            .env_clear()
            .envs(launch.env)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("LLM_PROVIDER", "openai")
            .env("LLM_BASE_URL", launch.upstream)
            .env("LLM_API_KEY", "bench")
            .env("LLM_RETRIES", "0")
            .env("RATE_LIMIT_PER_MINUTE", "0")
            .env("MAX_STREAMS", "1000000")
            .env("MAX_STREAMS_PER_CLIENT", "1000000")
            .env("STREAM_TIMEOUT_SECS", "600")
            .env("UPSTREAM_IDLE_TIMEOUT_SECS", "120")
            .env("SHUTDOWN_GRACE_SECS", "0")
            .env("RESUME_GRACE_SECS", "0")
            .env("STATIC_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/static"))
            // Away from any .env file.
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server (taskset and the llm-stream binary)");
        let stderr = child.stderr.take().expect("server stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut address = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if json["message"] == "llm-stream listening" {
                address = json["address"].as_str().and_then(|a| a.parse().ok());
                break;
            }
            eprintln!("server: {line}");
        }
        let Some(address) = address else {
            let _ = child.kill();
            panic!("the server did not start; see its lines above");
        };
        // Keep draining its log (a full pipe would stall it), remembering the tail.
        let log = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut tail = tail.lock().unwrap();
                if tail.len() >= 20 {
                    tail.remove(0);
                }
                tail.push(line);
            }
        });
        Self {
            child,
            address,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Whether the process is still there (and not a zombie).
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
    }
}

/// A process's resident memory now, in bytes.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A process's open file descriptors now.
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A process's CPU time so far, from /proc: user, system.
pub fn cpu_of(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is the 3rd field, utime the 14th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let secs = |ticks: f64| Duration::from_secs_f64(ticks / clock_ticks());
    (secs(ticks(11)), secs(ticks(12)))
}

impl Drop for Server {
    /// SIGTERM first, so that a profiler around it writes its report; SIGKILL after 30 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < until {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
