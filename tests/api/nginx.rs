//! The shipped nginx configuration, proven through a real nginx: each test takes the file in
//! `nginx/` itself, substitutes only the listen address and the upstream servers (plus, for a
//! variant, the one directive it is about), and runs nginx in the foreground with a temporary
//! prefix in front of the real application and the mock upstream.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use futures_util::StreamExt;

use crate::{
    helpers::{Answer, CLIENT, DEADLINE, SseReader, TestApp, spawn_app_with, spawn_with_config},
    mock_upstream::{End, MockUpstream, Reply, Step, openai},
};

const MS: Duration = Duration::from_millis(1);

// --- The harness -------------------------------------------------------------------------------

/// A shipped site file with the test's substitutions applied.
struct Site {
    text: String,
    /// Extra directives for the http{} context around the site.
    http: String,
}

impl Site {
    /// `nginx/<file>` as shipped.
    fn shipped(file: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx").join(file);
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read the shipped {}: {e}", path.display()));
        Self {
            text,
            http: String::new(),
        }
    }

    /// `nginx/llm-stream.conf` in front of these app instances, listening on loopback (the port is
    /// picked when nginx starts).
    fn plain(apps: &[&TestApp]) -> Self {
        Self::shipped("llm-stream.conf").upstreams(apps)
    }

    /// Replaces the one upstream `server` line with one line per app.
    fn upstreams(self, apps: &[&TestApp]) -> Self {
        let servers: String = apps
            .iter()
            .map(|app| format!("    server 127.0.0.1:{};\n", app.port))
            .collect();
        self.replace("    server 127.0.0.1:4001;\n", &servers)
    }

    /// Replaces text that must occur exactly once, so that a change to the shipped file makes the
    /// test fail by name instead of silently testing something else.
    fn replace(mut self, from: &str, to: &str) -> Self {
        let found = self.text.matches(from).count();
        assert_eq!(
            found, 1,
            "the shipped nginx config should hold {from:?} exactly once, found {found}"
        );
        self.text = self.text.replacen(from, to, 1);
        self
    }

    fn http(mut self, directives: &str) -> Self {
        self.http.push_str(directives);
        self.http.push('\n');
        self
    }
}

/// The nginx binary, or a loud failure naming the package: these tests are never skipped.
fn nginx_binary() -> &'static str {
    const DEBIAN: &str = "/usr/sbin/nginx";
    if Path::new(DEBIAN).exists() {
        return DEBIAN;
    }
    match Command::new("nginx").arg("-v").output() {
        Ok(_) => "nginx",
        Err(_) => panic!(
            "nginx is not installed; the nginx tests need it: `sudo apt-get install nginx` \
             (Debian/Ubuntu package `nginx`)"
        ),
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "llm-stream-nginx-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the nginx prefix");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port: bound, read back and released for nginx to take. Another process may
/// take it in between; [`Nginx::start`] then tries again with a new one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

/// Writes `nginx.conf` around the site: one foreground process, everything under `dir`.
fn write_config(dir: &Path, site: &Site, listen: &[(&str, u16)]) -> PathBuf {
    let mut text = site.text.clone();
    for (line, port) in listen {
        let to = line.replacen("listen 80", &format!("listen 127.0.0.1:{port}"), 1);
        let to = to.replacen("listen 443", &format!("listen 127.0.0.1:{port}"), 1);
        text = Site { text, http: String::new() }.replace(line, &to).text;
    }
    fs::write(dir.join("llm-stream.conf"), text).expect("write the site");
    let d = dir.display();
    let config = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}
    include {d}/llm-stream.conf;
}}
",
        http = site.http
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, config).expect("write nginx.conf");
    path
}

/// A running nginx, killed (and its prefix removed) on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx in front of the site and waits until its port accepts connections.
    async fn start(site: Site) -> Self {
        const LISTEN: &str = "    listen 80;\n";
        let mut attempts = 0;
        loop {
            attempts += 1;
            let dir = TempDir::new();
            let port = free_port();
            let config = write_config(&dir.0, &site, &[(LISTEN, port)]);
            let log = fs::File::create(dir.0.join("stderr.log")).expect("create the log");
            let child = Command::new(nginx_binary())
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start nginx");
            let mut nginx = Self { child, port, dir };
            match nginx.ready().await {
                Ok(()) => return nginx,
                Err(log) if log.contains("Address already in use") && attempts < 5 => continue,
                Err(log) => panic!("nginx did not start:\n{log}"),
            }
        }
    }

    /// Polls the port until it accepts a connection; the log if nginx exited instead.
    async fn ready(&mut self) -> Result<(), String> {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < until,
                "nginx not listening after {DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(20 * MS).await;
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stream_url(&self, question: &str) -> String {
        let mut url = reqwest::Url::parse(&self.url("/api/stream")).expect("url");
        url.query_pairs_mut().append_pair("q", question);
        url.to_string()
    }

    async fn open(&self, headers: &[(&str, &str)]) -> SseReader {
        SseReader::get(self.stream_url("hello"), headers).await
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nginx -t` on a site, with every listen line moved to a free loopback port.
fn nginx_accepts(site: &Site, listen: &[&str], dir: &TempDir) -> Result<String, String> {
    let ports: Vec<(&str, u16)> = listen.iter().map(|line| (*line, free_port())).collect();
    let config = write_config(&dir.0, site, &ports);
    let output = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(&config)
        .output()
        .expect("run nginx -t");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(log)
    } else {
        Err(log)
    }
}

/// A throwaway self-signed certificate and key in `dir`, made by the openssl CLI.
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the openssl CLI is needed for the TLS config test: `sudo apt-get install openssl` ({e})"
            )
        });
    assert!(
        output.status.success(),
        "openssl could not make a certificate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

/// The app on the OpenAI-compatible provider, its mock answering 20 tokens 100 ms apart.
async fn app_with_twenty_slow_tokens() -> TestApp {
    let app = spawn_app_with(|_| {}).await;
    let tokens: Vec<String> = (0..20).map(|i| format!("t{i} ")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    app.mock
        .always(Reply::sse(openai::answer(&tokens, 100 * MS)));
    app
}

/// The 20 tokens came one by one: the first more than a second before the last, and most of the
/// 100 ms gaps between them kept.
fn assert_arrived_token_by_token(answer: &Answer) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let tokens: Vec<_> = answer
        .events
        .iter()
        .filter(|e| e.json()["token"].is_string())
        .collect();
    assert_eq!(tokens.len(), 20, "{}", answer.body);
    assert!(answer.ended_with_done(), "{}", answer.body);
    let spread = tokens[19].at - tokens[0].at;
    assert!(
        spread > Duration::from_secs(1),
        "the first token came only {spread:?} before the last: nginx held the stream back"
    );
    let gaps: Vec<Duration> = tokens.windows(2).map(|w| w[1].at - w[0].at).collect();
    let kept = gaps.iter().filter(|gap| **gap > 50 * MS).count();
    assert!(
        kept >= 15,
        "only {kept} of 19 gaps between tokens survived nginx: {gaps:?}"
    );
}

// --- The tests ---------------------------------------------------------------------------------

#[tokio::test]
async fn nginx_accepts_the_shipped_plain_and_tls_configs() {
    let plain = Site::shipped("llm-stream.conf");
    let dir = TempDir::new();
    if let Err(log) = nginx_accepts(&plain, &["    listen 80;\n"], &dir) {
        panic!("nginx -t refused nginx/llm-stream.conf:\n{log}");
    }

    let dir = TempDir::new();
    let (cert, key) = self_signed_certificate(&dir.0);
    let tls = Site::shipped("llm-stream-tls.conf")
        .replace(
            "/etc/letsencrypt/live/example.com/fullchain.pem",
            &cert.display().to_string(),
        )
        .replace(
            "/etc/letsencrypt/live/example.com/privkey.pem",
            &key.display().to_string(),
        );
    let listen = ["    listen 80;\n", "    listen 443 ssl http2;\n"];
    if let Err(log) = nginx_accepts(&tls, &listen, &dir) {
        panic!("nginx -t refused nginx/llm-stream-tls.conf:\n{log}");
    }
}

#[tokio::test]
async fn tokens_reach_the_client_through_nginx_as_they_are_produced() {
    let app = app_with_twenty_slow_tokens().await;
    let nginx = Nginx::start(Site::plain(&[&app])).await;

    let answer = nginx.open(&[]).await.read_to_end().await;

    assert_arrived_token_by_token(&answer);
    assert!(answer.header("content-encoding").is_none(), "{answer:?}");
}

#[tokio::test]
async fn the_apps_x_accel_buffering_header_keeps_the_stream_live_when_proxy_buffering_is_on() {
    let app = app_with_twenty_slow_tokens().await;
    let buffered = || {
        Site::plain(&[&app]).replace("        proxy_buffering off;", "        proxy_buffering on;")
    };
    let nginx = Nginx::start(buffered()).await;

    let answer = nginx.open(&[]).await.read_to_end().await;

    assert_arrived_token_by_token(&answer);

    // Control: the same nginx told to ignore the app's header holds the answer back.
    let ignoring = Nginx::start(
        buffered().replace(
            "        proxy_cache off;",
            "        proxy_cache off;\n        proxy_ignore_headers X-Accel-Buffering;",
        ),
    )
    .await;
    let answer = ignoring.open(&[]).await.read_to_end().await;
    let tokens: Vec<_> = answer.events.iter().filter(|e| e.json()["token"].is_string()).collect();
    assert_eq!(tokens.len(), 20, "{}", answer.body);
    let spread = tokens[19].at - tokens[0].at;
    assert!(
        spread < 500 * MS,
        "control: with the header ignored nginx should buffer the answer, yet it spread over {spread:?}"
    );
}

#[tokio::test]
async fn a_server_wide_gzip_for_event_streams_does_not_compress_or_hold_back_the_stream() {
    let app = app_with_twenty_slow_tokens().await;
    // The common setting, server-wide: gzip on, and text/event-stream among the types.
    let gzipping = || {
        Site::plain(&[&app])
            .http("    gzip on;\n    gzip_types text/event-stream;")
            .replace(
                "    gzip_types text/css application/javascript application/json image/svg+xml;",
                "    gzip_types text/css application/javascript application/json image/svg+xml text/event-stream;",
            )
    };
    let nginx = Nginx::start(gzipping()).await;

    let answer = nginx
        .open(&[("accept-encoding", "gzip")])
        .await
        .read_to_end()
        .await;

    assert!(
        answer.header("content-encoding").is_none(),
        "the stream was compressed: {:?}",
        answer.headers
    );
    assert_arrived_token_by_token(&answer);

    // Control: without the stream location's "gzip off" this request is compressed, so the
    // request above did ask for it.
    let compressing = Nginx::start(gzipping().replace("        gzip off;\n", "")).await;
    let response = CLIENT
        .get(compressing.stream_url("hello"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "control: {:?}",
        response.headers()
    );
}

#[tokio::test]
async fn the_app_counts_the_real_client_through_nginx_and_a_forged_address_changes_nothing() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = Some(1);
    })
    .await;
    app.mock
        .always(Reply::sse(openai::answer(&["ok"], Duration::ZERO)));
    let nginx = Nginx::start(Site::plain(&[&app])).await;
    let forged = [
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-for", "203.0.113.9"),
    ];

    let first = nginx.open(&[]).await.read_to_end().await;
    let second = nginx.open(&[]).await.read_to_end().await;
    let posing = nginx.open(&forged).await.read_to_end().await;

    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(second.status, 429, "{}", second.body);
    assert_eq!(
        posing.status, 429,
        "a client sending its own X-Real-IP/X-Forwarded-For through nginx got a fresh budget: {}",
        posing.body
    );
    assert_eq!(app.mock.request_count(), 1);
    let remaining = |request: reqwest::RequestBuilder| async move {
        let view: serde_json::Value = request
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("limits JSON");
        view["remaining"].as_u64().expect("remaining")
    };
    let mut through_nginx = CLIENT.get(nginx.url("/api/limits"));
    for (name, value) in forged {
        through_nginx = through_nginx.header(name, value);
    }
    assert_eq!(remaining(through_nginx).await, 0);
    // The forged header would have mattered had nginx passed it on: from a trusted peer, the app
    // takes it as another client, with its whole budget.
    let direct = CLIENT
        .get(format!("{}/api/limits", app.address))
        .header("x-real-ip", "203.0.113.9");
    assert_eq!(remaining(direct).await, 1);
}

#[tokio::test]
async fn keep_alive_comments_hold_a_slow_stream_open_past_nginxs_read_timeout() {
    let slow = Reply::sse(vec![
        Step::Sleep(1500 * MS),
        openai::token("late"),
        openai::finish("stop"),
        openai::done(),
    ]);
    let read_timeout_1s =
        |app: &TestApp| Site::plain(&[app]).replace("proxy_read_timeout 75s;", "proxy_read_timeout 1s;");
    let app = spawn_app_with(|c| c.keepalive_secs = 0.3).await;
    app.mock.always(slow.clone());
    let nginx = Nginx::start(read_timeout_1s(&app)).await;

    let answer = nginx.open(&[]).await.read_to_end().await;

    assert_eq!(answer.tokens(), ["late"], "{}", answer.body);
    assert!(answer.ended_with_done(), "{}", answer.body);
    let token_at = answer.events[0].at;
    let before = answer.comments.iter().filter(|c| c.at < token_at).count();
    assert!(before >= 2, "keep-alive comments before the token: {before}");

    // Control: without keep-alives inside the timeout, nginx cuts the same stream.
    let quiet = spawn_app_with(|c| c.keepalive_secs = 30.0).await;
    quiet.mock.always(slow);
    let nginx = Nginx::start(read_timeout_1s(&quiet)).await;
    let response = CLIENT
        .get(nginx.stream_url("hello"))
        .send()
        .await
        .expect("request");
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    while let Some(Ok(chunk)) = tokio::time::timeout(DEADLINE, body.next())
        .await
        .expect("nginx ends the stream in time")
    {
        received.extend_from_slice(&chunk);
    }
    let received = String::from_utf8_lossy(&received);
    assert!(
        !received.contains("late"),
        "control: nginx should have cut the silent stream, yet it delivered: {received}"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_from_nginx_cancels_the_upstream_request() {
    let app = spawn_app_with(|_| {}).await;
    let tokens = ["a "; 50];
    // Five seconds of tokens, then silence until the app hangs up: only a cancellation closes it.
    app.mock
        .always(Reply::sse(openai::answer(&tokens, 100 * MS)).then(End::Hang));
    let nginx = Nginx::start(Site::plain(&[&app])).await;
    let mut reader = nginx.open(&[]).await;
    reader.next_data().await.expect("a first token");
    assert_eq!(app.mock.closed_count(), 0);

    let left = Instant::now();
    drop(reader);

    app.mock.wait_for_closed(1, Duration::from_secs(3)).await;
    let closed = app.mock.closed_at()[0];
    assert!(
        closed - left < Duration::from_secs(3),
        "the upstream was released {:?} after the client left",
        closed - left
    );
}

#[tokio::test]
async fn two_app_instances_behind_the_upstream_block_both_serve_streams() {
    let mock = MockUpstream::start().await;
    let tokens = ["a "; 50];
    mock.always(Reply::sse(openai::answer(&tokens, 100 * MS)).then(End::Hang));
    let instance = || {
        spawn_with_config(
            crate::helpers::test_config(&[
                "--llm-provider",
                "openai",
                "--llm-base-url",
                &mock.url(),
                "--llm-api-key",
                "sk-test",
            ]),
            mock.clone(),
        )
    };
    let (one, two) = (instance().await, instance().await);
    let nginx = Nginx::start(Site::plain(&[&one, &two])).await;

    let mut first = nginx.open(&[]).await;
    first.next_data().await.expect("a token on the first stream");
    let mut second = nginx.open(&[]).await;
    second.next_data().await.expect("a token on the second stream");

    assert_eq!(
        (one.limits.streams_open(), two.limits.streams_open()),
        (1, 1),
        "each instance should hold one of the two open streams"
    );
}
