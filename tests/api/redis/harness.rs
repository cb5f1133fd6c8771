//! A real `redis-server` per test (a free loopback port, nothing saved), which a test can kill and
//! start again on the same port; app instances sharing it, in this process or as processes of the
//! real binary (for an abrupt kill, and for `/metrics`, whose recorder is one per process).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use llm_stream::config::Config;
use secrecy::SecretString;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    certs::Certs,
    helpers::{CLIENT, DEADLINE, SseReader, TestApp, eventually, spawn_with_config},
    mock_upstream::MockUpstream,
    nginx::harness::TempDir,
};

/// A client no test is: a slot leased to it for ever in Redis, so that an instance reporting it
/// through `/api/limits` is reading Redis (a readiness check that spends nothing, per instance).
const PROBE_CLIENT: &str = "198.51.100.77";

/// A free loopback port: bound, read back and released. Another process may take it in between;
/// the starters below then try again with another.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

/// Debian's `redis-server`, or a loud failure naming the package: these tests never skip.
fn redis_binary() -> &'static str {
    const DEBIAN: &str = "/usr/bin/redis-server";
    if Path::new(DEBIAN).exists() {
        return DEBIAN;
    }
    match Command::new("redis-server").arg("--version").output() {
        Ok(_) => "redis-server",
        Err(_) => panic!(
            "redis-server is not installed; the Redis tests need it: `sudo apt-get install redis-server` \
             (Debian/Ubuntu package `redis-server`)"
        ),
    }
}

/// A `redis-server` of this test's own, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Also TLS on this port, with this certificate (`rediss://`).
    tls: Option<(u16, Certs)>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(|| None).await
    }

    /// One that also serves TLS (`rediss://`), on a certificate of a throw-away authority.
    pub async fn start_tls() -> Self {
        Self::start_with(|| Some((free_port(), Certs::make()))).await
    }

    async fn start_with(tls: impl Fn() -> Option<(u16, Certs)>) -> Self {
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
                tls: tls(),
            };
            if server.run().await.is_ok() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// A free port and no server on it yet: [`RedisServer::restart`] starts it.
    pub fn reserve() -> Self {
        Self {
            child: None,
            port: free_port(),
            tls: None,
        }
    }

    /// The TLS port's URL, and the authority a client must trust for it.
    pub fn tls_url(&self) -> (String, &Path) {
        let (port, certs) = self.tls.as_ref().expect("a server started with start_tls");
        (format!("rediss://127.0.0.1:{port}"), &certs.authority)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The same server through its unix socket (it listens on both).
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        std::env::temp_dir().join(format!("llm-stream-test-redis-{}.sock", self.port))
    }

    /// Starts the server on its port and waits for PONG (and seeds the probe client); the error
    /// when it exited instead (its port taken).
    async fn run(&mut self) -> Result<(), String> {
        let mut child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700"])
            .args(self.tls.iter().flat_map(|(port, certs)| {
                [
                    "--tls-port".into(),
                    port.to_string().into(),
                    "--tls-cert-file".into(),
                    certs.cert.clone().into_os_string(),
                    "--tls-key-file".into(),
                    certs.key.clone().into_os_string(),
                    "--tls-ca-cert-file".into(),
                    certs.authority.clone().into_os_string(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]
            }))
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let until = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut log = String::new();
                if let Some(mut out) = child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut out, &mut log);
                }
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if self.ping().await {
                break;
            }
            assert!(
                Instant::now() < until,
                "redis-server not answering PING after {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Its log would fill the pipe: nobody reads it from here on.
        drop(child.stdout.take());
        self.child = Some(child);
        self.command(&[
            "ZADD",
            &format!("llm-stream:slots:{{{PROBE_CLIENT}}}"),
            "99999999999999",
            "probe",
        ])
        .await;
        Ok(())
    }

    async fn ping(&self) -> bool {
        let Ok(mut socket) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut reply = [0_u8; 7];
        socket.write_all(b"PING\r\n").await.is_ok()
            && socket.read_exact(&mut reply).await.is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// One command, as `redis-cli` would send it.
    pub async fn command(&self, args: &[&str]) -> ::redis::Value {
        let client = ::redis::Client::open(self.url()).expect("a Redis URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's Redis");
        let mut command = ::redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// The leases of `client`'s stream slots that have not expired, as Redis counts them.
    pub async fn live_slots(&self, client: &str) -> i64 {
        const LIVE: &str = "local t = redis.call('TIME') \
            return redis.call('ZCOUNT', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), '+inf')";
        let key = format!("llm-stream:slots:{{{client}}}");
        match self.command(&["EVAL", LIVE, "1", &key]).await {
            ::redis::Value::Int(n) => n,
            other => panic!("ZCOUNT answered {other:?}"),
        }
    }

    /// Kills the server at once (SIGKILL): connections drop, nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server would not die until it goes on.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Stops the server without closing anything (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..20 {
            match self.run().await {
                Ok(()) => return,
                // The port may take a moment to be free again.
                Err(error) => last = error,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "redis-server did not start again on port {}: {last}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An instance in this process sharing `redis`, on `mock`, once it reads Redis.
pub async fn instance(
    redis: &RedisServer,
    mock: &MockUpstream,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = crate::helpers::openai_config(mock);
    share(&mut config, redis);
    adjust(&mut config);
    let app = spawn_with_config(config, mock.clone()).await;
    wait_shared(&app.address).await;
    app
}

/// Points `config` at `redis`.
pub fn share(config: &mut Config, redis: &RedisServer) {
    config.redis_url = Some(SecretString::from(redis.url()));
    // These machines are shared and noisy: a slow Redis reply must not make a test's instance
    // decide alone what the shared limits decide (the 100 ms default is for production).
    config.redis_timeout = Duration::from_millis(1000);
}

/// Two instances in this process sharing one Redis and one mock upstream (which so counts every
/// upstream call of both).
pub struct Pair {
    pub a: TestApp,
    pub b: TestApp,
    pub mock: MockUpstream,
    pub redis: RedisServer,
}

pub async fn pair(adjust: impl Fn(&mut Config)) -> Pair {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await;
    let a = instance(&redis, &mock, &adjust).await;
    let b = instance(&redis, &mock, &adjust).await;
    Pair { a, b, mock, redis }
}

/// Asks `question` on `address` and asserts it is refused with `status` and the error `code`.
pub async fn assert_refused(address: &str, question: &str, status: u16, code: &str) {
    let refused = SseReader::get(stream_url(address, question), &[])
        .await
        .read_to_end()
        .await;
    assert_eq!(refused.status, status, "{}", refused.body);
    assert!(refused.body.contains(code), "{}", refused.body);
}

/// `GET <address>/api/limits` as `client` (loopback is a trusted proxy, so `X-Real-IP` is believed).
pub async fn limits_of(address: &str, client: Option<&str>) -> serde_json::Value {
    let mut request = CLIENT.get(format!("{address}/api/limits"));
    if let Some(client) = client {
        request = request.header("x-real-ip", client);
    }
    tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("/api/limits in time")
        .expect("/api/limits")
        .json()
        .await
        .expect("limits JSON")
}

/// Waits until the instance reads its limits from Redis: it sees the probe client's leased slot.
/// (`llm_stream_redis_up` is one gauge for the whole test process, so it cannot say which
/// in-process instance is connected.)
pub async fn wait_shared(address: &str) {
    eventually(
        &format!("{address} to read its limits from Redis"),
        DEADLINE,
        || async {
            limits_of(address, Some(PROBE_CLIENT)).await["streams_open"].as_u64() == Some(1)
        },
    )
    .await;
}

pub fn stream_url(address: &str, question: &str) -> String {
    let mut url = reqwest::Url::parse(&format!("{address}/api/stream")).expect("url");
    url.query_pairs_mut().append_pair("q", question);
    url.to_string()
}

/// The real binary as a process of its own: its own metrics recorder, and a kill that is a crash.
pub struct Process {
    child: Option<Child>,
    pub address: String,
    dir: TempDir,
}

impl Process {
    /// Starts the binary on `mock` and `redis`, with these extra flags, and waits until it serves
    /// (not until it reaches Redis: see [`Process::wait_redis_up`]).
    pub async fn start(redis: &RedisServer, mock: &MockUpstream, extra: &[&str]) -> Self {
        Self::start_on(&redis.url(), &[], mock, extra).await
    }

    /// Starts the binary on the Redis at `redis_url`, with this extra environment.
    pub async fn start_on(
        redis_url: &str,
        env: &[(&str, &std::ffi::OsStr)],
        mock: &MockUpstream,
        extra: &[&str],
    ) -> Self {
        let upstream = ["--llm-base-url", &mock.url(), "--redis-url", redis_url];
        Self::launch(&upstream, env, extra).await
    }

    /// Starts the binary alone (no Redis) on the OpenAI-compatible upstream at `base_url`, with
    /// this extra environment.
    pub async fn alone(base_url: &str, env: &[(&str, &std::ffi::OsStr)], extra: &[&str]) -> Self {
        Self::launch(&["--llm-base-url", base_url], env, extra).await
    }

    async fn launch(upstream: &[&str], env: &[(&str, &std::ffi::OsStr)], extra: &[&str]) -> Self {
        for _ in 0..5 {
            let dir = TempDir::new();
            let port = free_port();
            let log = std::fs::File::create(dir.0.join("log")).expect("create the log");
            let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
            let child = Command::new(env!("CARGO_BIN_EXE_llm-stream"))
                .env_clear()
                .current_dir(&dir.0)
                .args(["--listen-addr", &format!("127.0.0.1:{port}")])
                .args(["--llm-provider", "openai", "--llm-api-key", "sk-test"])
                .args(upstream)
                .envs(env.iter().copied())
                // Defaults, as the environment: a flag in `extra` overrides them.
                .env("RATE_LIMIT_PER_MINUTE", "0")
                .env("SHUTDOWN_GRACE_SECS", "1")
                .env("REDIS_TIMEOUT_MS", "1000")
                .arg("--static-dir")
                .arg(static_dir)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start the llm-stream binary");
            let mut process = Self {
                child: Some(child),
                address: format!("http://127.0.0.1:{port}"),
                dir,
            };
            match process.serving().await {
                Ok(()) => return process,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("llm-stream did not start:\n{log}"),
            }
        }
        panic!("llm-stream did not start on any of 5 free ports");
    }

    async fn serving(&mut self) -> Result<(), String> {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            let health = CLIENT.get(format!("{}/healthz", self.address)).send();
            if let Ok(Ok(response)) = tokio::time::timeout(DEADLINE, health).await
                && response.status() == 200
            {
                return Ok(());
            }
            assert!(
                Instant::now() < until,
                "llm-stream not serving after {DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("log")
    }

    /// `llm_stream_redis_up` as this process's `/metrics` says it.
    pub async fn redis_up(&self) -> Option<f64> {
        self.metric("llm_stream_redis_up").await
    }

    /// An unlabelled metric's value as this process's `/metrics` says it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = CLIENT
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    pub async fn wait_redis_up(&self, up: bool, deadline: Duration) {
        let want = if up { 1.0 } else { 0.0 };
        eventually(
            &format!("llm_stream_redis_up {want} at {}", self.address),
            deadline,
            || async { self.redis_up().await == Some(want) },
        )
        .await;
    }

    /// Kills the process at once (SIGKILL): no shutdown, no goodbye to Redis.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
