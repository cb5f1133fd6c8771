//! The server under test: the release binary, pinned to core 0, and what /proc says about it.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
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
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Server {
    /// Starts the server on core `core` in front of the mock, with the limits out of the way.
    pub fn start(core: usize, upstream: SocketAddr) -> Self {
        let mut child = Command::new("taskset")
            .args(["-c", &core.to_string(), env!("CARGO_BIN_EXE_llm-stream")])
            .env_clear()
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("LLM_PROVIDER", "openai")
            .env("LLM_BASE_URL", format!("http://{upstream}/v1"))
            .env("LLM_API_KEY", "bench")
            .env("LLM_RETRIES", "0")
            .env("RATE_LIMIT_PER_MINUTE", "0")
            .env("MAX_STREAMS", "1000000")
            .env("MAX_STREAMS_PER_CLIENT", "1000000")
            .env("STREAM_TIMEOUT_SECS", "600")
            .env("UPSTREAM_IDLE_TIMEOUT_SECS", "120")
            .env("SHUTDOWN_GRACE_SECS", "0")
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

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
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
        Duration::from_secs_f64((ticks(11) + ticks(12)) / clock_ticks())
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Open file descriptors now.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    pub fn log_tail(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
