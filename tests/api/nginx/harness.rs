//! Runs a real nginx in front of test apps: the shipped site file with only the listen address
//! and the upstream servers substituted (plus whatever a variant changes, each substitution
//! checked to match exactly once), wrapped in a minimal nginx.conf under a temporary prefix.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::helpers::{DEADLINE, SseReader, TestApp};

/// A shipped site file with the test's substitutions applied.
#[derive(Clone)]
pub struct Site {
    text: String,
    /// Extra directives for the http{} context around the site.
    http: String,
}

impl Site {
    /// `nginx/<file>` as shipped.
    pub fn shipped(file: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("nginx")
            .join(file);
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read the shipped {}: {e}", path.display()));
        Self {
            text,
            http: String::new(),
        }
    }

    /// `nginx/llm-stream.conf` in front of these app instances, listening on loopback (the port is
    /// picked when nginx starts).
    pub fn plain(apps: &[&TestApp]) -> Self {
        Self::shipped("llm-stream.conf").upstreams(apps)
    }

    /// Replaces the one upstream `server` line with one line per app.
    pub fn upstreams(self, apps: &[&TestApp]) -> Self {
        let servers: String = apps
            .iter()
            .map(|app| format!("    server 127.0.0.1:{};\n", app.port))
            .collect();
        self.replace("    server 127.0.0.1:4001;\n", &servers)
    }

    /// Replaces text that must occur exactly once, so that a change to the shipped file makes the
    /// test fail by name instead of silently testing something else.
    pub fn replace(mut self, from: &str, to: &str) -> Self {
        self.text = replace_once(&self.text, from, to);
        self
    }

    /// Uncomments the optional first line of defence (limit_req / limit_conn), as shipped.
    pub fn with_first_line_of_defence(self) -> Self {
        [
            "# limit_req_zone ",
            "# limit_conn_zone ",
            "# limit_req  zone=",
            "# limit_conn llm_stream_conn",
            "# limit_req_status ",
            "# limit_conn_status ",
        ]
        .into_iter()
        .fold(self, |site, line| site.replace(line, &line[2..]))
    }

    pub fn http(mut self, directives: &str) -> Self {
        self.http.push_str(directives);
        self.http.push('\n');
        self
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    let found = text.matches(from).count();
    assert_eq!(
        found, 1,
        "the shipped nginx config should hold {from:?} exactly once, found {found}"
    );
    text.replacen(from, to, 1)
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
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
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
        text = replace_once(&text, line, &to);
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
pub struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx in front of the site and waits until its port accepts connections.
    pub async fn start(site: Site) -> Self {
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stream_url(&self, question: &str) -> String {
        let mut url = reqwest::Url::parse(&self.url("/api/stream")).expect("url");
        url.query_pairs_mut().append_pair("q", question);
        url.to_string()
    }

    pub async fn open(&self, headers: &[(&str, &str)]) -> SseReader {
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
pub fn nginx_accepts(site: &Site, listen: &[&str], dir: &TempDir) -> Result<String, String> {
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
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
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
