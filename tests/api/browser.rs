//! WebDriver plumbing for the browser tests: Debian's chromedriver on a free port, a fresh headless
//! Chromium session on it, at most two browsers at once (the machine has two cores), and all of it
//! shut down when the test ends, whether it passed or panicked.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::helpers::{CLIENT, DEADLINE};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Two browsers at once: each Chromium takes most of a core while it renders.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(25);

/// A headless Chromium session with its own chromedriver. Fields drop in order: the session,
/// then the driver (which closes the browser), then the permit.
pub struct Browser {
    pub client: Client,
    driver: Driver,
    _permit: SemaphorePermit<'static>,
}

impl Browser {
    /// Starts chromedriver and a fresh browser. Panics, naming the Debian package, when either
    /// is missing: a browser test never skips.
    pub async fn start() -> Self {
        Self::start_holding(1).await
    }

    /// A browser that runs alone, for a test that measures timings: no other test's browser
    /// competes with it for the two cores.
    pub async fn start_alone() -> Self {
        Self::start_holding(2).await
    }

    async fn start_holding(permits: u32) -> Self {
        let permit = BROWSERS
            .acquire_many(permits)
            .await
            .expect("the semaphore is never closed");
        require(CHROMEDRIVER, "chromium-driver");
        require(CHROMIUM, "chromium");
        let driver = Driver::start().await;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1000,800",
                ],
            },
            // Keeps the console, so a test can check the page logged no error (CSP, 404 …).
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let client = ClientBuilder::rustls()
            .expect("rustls with the system's roots (Debian's ca-certificates package)")
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "{CHROMIUM} did not start under chromedriver: {error}\nchromedriver said:\n{}",
                    driver.output()
                )
            });
        Self {
            client,
            driver,
            _permit: permit,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// Runs `script` (a function body: `return …`) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.js_with(script, vec![]).await
    }

    pub async fn js_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Waits until `script` returns something other than `null`, `false` or `undefined`, and
    /// returns it; past the deadline, panics with `what` and what `describe` says of the page.
    pub async fn wait_for(&self, what: &str, script: &str, describe: &str) -> Value {
        self.wait_for_within(what, script, describe, DEADLINE).await
    }

    /// As [`Browser::wait_for`], for something that takes longer than the usual deadline.
    pub async fn wait_for_within(
        &self,
        what: &str,
        script: &str,
        describe: &str,
        deadline: Duration,
    ) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let value = self.js(script).await;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if Instant::now() > until {
                panic!(
                    "timed out after {deadline:?} waiting for {what}; the page: {}",
                    self.js(describe).await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no {css} on the page: {error}"))
            .click()
            .await
            .unwrap_or_else(|error| panic!("{css} cannot be clicked: {error}"));
    }

    /// Types into an element as a person would (WebDriver key events; `fantoccini::key::Key`
    /// characters for special keys).
    pub async fn type_into(&self, css: &str, keys: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no {css} on the page: {error}"))
            .send_keys(keys)
            .await
            .unwrap_or_else(|error| panic!("typing into {css} failed: {error}"));
    }

    /// Whether an alert, confirm or prompt dialog is open.
    pub async fn has_dialog(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    /// The console's messages at level SEVERE since the last call (errors, CSP violations,
    /// failed loads), through chromedriver's log endpoint.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .session_command("se/log", json!({ "type": "browser" }))
            .await;
        log.as_array()
            .unwrap_or_else(|| panic!("chromedriver's log: {log}"))
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Grants the page a permission (WebDriver's Set Permission: e.g. `clipboard-read`).
    pub async fn grant(&self, permission: &str) {
        self.session_command(
            "permissions",
            json!({ "descriptor": { "name": permission }, "state": "granted" }),
        )
        .await;
    }

    /// A Chrome DevTools Protocol command (`Emulation.setEmulatedMedia` …), through chromedriver.
    pub async fn cdp(&self, command: &str, params: Value) -> Value {
        self.session_command(
            "goog/cdp/execute",
            json!({ "cmd": command, "params": params }),
        )
        .await
    }

    /// A command fantoccini has no method for, posted to chromedriver for this session.
    async fn session_command(&self, command: &str, body: Value) -> Value {
        let session = self
            .client
            .session_id()
            .await
            .expect("session id")
            .expect("an open session");
        let response: Value = CLIENT
            .post(format!("{}/session/{session}/{command}", self.driver.url()))
            .json(&body)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver's answer as JSON");
        assert!(
            response["value"]["error"].is_null(),
            "chromedriver refused {command}: {response}"
        );
        response["value"].clone()
    }

    /// Saves a PNG of the window under `target/screenshots/`, and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = target_dir().join("screenshots");
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

/// Fails the test, naming the package to install, when a tool is missing.
fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: the browser tests need Debian's `{package}` package \
         (`sudo apt-get install {package}`; tests/run.sh installs it)"
    );
}

/// The Cargo target directory, found from this test binary's path (target/<profile>/deps/api-…).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}

/// A chromedriver child process, asked to shut down (closing its browsers) when dropped.
struct Driver {
    child: Child,
    port: u16,
    output: Arc<Mutex<Vec<String>>>,
}

impl Driver {
    /// Starts chromedriver on a port it picks itself, and waits until its `/status` says it is
    /// ready. The port it picks is free on IPv6 and may be taken on IPv4 ("IPv4 port not
    /// available. Exiting..."): then it is started again, up to five times.
    async fn start() -> Self {
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(driver) => return driver,
                Err(output) if output.contains("port not available") => continue,
                Err(output) => panic!("{CHROMEDRIVER} exited before it was ready:\n{output}"),
            }
        }
        panic!("{CHROMEDRIVER} found no free port in five starts");
    }

    /// One start: the driver, or its output when it exited before it was ready.
    async fn try_start() -> Result<Self, String> {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {CHROMEDRIVER}: {error}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        // Keep both pipes drained for the driver's whole life, so it never blocks on a full one.
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let drained = [
            drain(stdout, output.clone(), Some(port_tx)),
            drain(stderr, output.clone(), None),
        ];
        let mut driver = Self {
            child,
            port: 0,
            output,
        };
        let started = Instant::now();
        driver.port = loop {
            if let Ok(port) = port_rx.recv_timeout(POLL) {
                break port;
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                // Its last lines may still be in its pipes: until they are read to their end.
                let until = Instant::now() + DEADLINE;
                while !drained.iter().all(std::thread::JoinHandle::is_finished)
                    && Instant::now() < until
                {
                    tokio::time::sleep(POLL).await;
                }
                return Err(format!("exited ({status})\n{}", driver.output()));
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{CHROMEDRIVER} did not say its port within {DEADLINE:?}:\n{}",
                driver.output()
            );
        };
        loop {
            let ready = match CLIENT.get(format!("{}/status", driver.url())).send().await {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|status| status["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return Ok(driver);
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{CHROMEDRIVER} was not ready within {DEADLINE:?}:\n{}",
                driver.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // `/shutdown` makes chromedriver close its browsers and exit; killing it outright would
        // leave Chromium running. A plain blocking request: Drop may run while a panic unwinds.
        if self.port != 0
            && let Ok(mut socket) = TcpStream::connect(("127.0.0.1", self.port))
        {
            let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = socket.write_all(
                b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let _ = socket.read_to_end(&mut Vec::new());
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a pipe line by line on a thread until it closes, keeping the lines; sends the port
/// from chromedriver's "started successfully on port N." line.
fn drain(
    pipe: impl Read + Send + 'static,
    output: Arc<Mutex<Vec<String>>>,
    port: Option<mpsc::Sender<u16>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(port) = &port
                && let Some(number) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse().ok())
            {
                let _ = port.send(number);
            }
            if let Ok(mut lines) = output.lock() {
                lines.push(line);
            }
        }
    })
}
