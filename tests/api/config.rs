//! Start-up: settings from flags and the environment, refused with one clear line when wrong,
//! and a key that never shows up in a log line. These run the real binary.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn llm_stream(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llm-stream"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    // The tests' working directory is the repository: keep a developer's .env out of them.
    command.current_dir(std::env::temp_dir());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_that_names_it() {
    for (env, names) in [
        (vec![("STREAM_TIMEOUT_SECS", "-1")], "STREAM_TIMEOUT_SECS"),
        (vec![("LLM_BASE_URL", "not a url")], "LLM_BASE_URL"),
        (vec![("LLM_PROVIDER", "openai")], "LLM_API_KEY"),
        (vec![("LLM_TEMPERATURE", "7")], "LLM_TEMPERATURE"),
        (vec![("MAX_STREAMS", "lots")], "MAX_STREAMS"),
        (vec![("TRUSTED_PROXIES", "10.0.0.0/99")], "TRUSTED_PROXIES"),
        (vec![("LISTEN_ADDR", "not-an-address")], "LISTEN_ADDR"),
        (vec![("LISTEN_ADDR", "127.0.0.1:99999")], "LISTEN_ADDR"),
        (vec![("METRICS_ADDR", "not-an-address")], "METRICS_ADDR"),
        (vec![("METRICS_ADDR", "127.0.0.1")], "METRICS_ADDR"),
        (
            vec![("LLM_FALLBACK_BASE_URL", "not a url")],
            "LLM_FALLBACK_BASE_URL",
        ),
        (
            vec![("LLM_FALLBACK_PROVIDER", "gemini")],
            "LLM_FALLBACK_PROVIDER",
        ),
        (
            vec![("LLM_FALLBACK_PROVIDER", "anthropic")],
            "LLM_FALLBACK_API_KEY",
        ),
        (vec![("LLM_FALLBACK_API_KEY", " ")], "LLM_FALLBACK_API_KEY"),
        (vec![("LLM_FALLBACK_MODEL", "gpt-4o")], "LLM_FALLBACK_MODEL"),
        (
            vec![("UPSTREAM_BREAKER_FAILURES", "0")],
            "UPSTREAM_BREAKER_FAILURES",
        ),
        (
            vec![("UPSTREAM_BREAKER_OPEN_SECS", "-1")],
            "UPSTREAM_BREAKER_OPEN_SECS",
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            vec![("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "yes")],
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
        ),
        (
            vec![("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
    ] {
        let output = exit_of(llm_stream(&env));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(names), "{env:?} must be named: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[test]
fn a_listen_address_may_name_a_host_or_any_interface() {
    for address in ["localhost:4001", "0.0.0.0:4001", "[::]:4001", "[::1]:0"] {
        let parsed = llm_stream::config::Config::from_args_only([
            "llm-stream",
            "--llm-provider",
            "demo",
            "--listen-addr",
            address,
            "--metrics-addr",
            address,
        ]);
        assert!(parsed.is_ok(), "{address}: {parsed:?}");
    }
}

#[test]
fn an_address_already_in_use_stops_start_up_naming_its_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    for (setting, env) in [
        ("LISTEN_ADDR", vec![("LISTEN_ADDR", address.as_str())]),
        (
            "METRICS_ADDR",
            vec![("LISTEN_ADDR", "127.0.0.1:0"), ("METRICS_ADDR", &address)],
        ),
    ] {
        let output = exit_of(llm_stream(&env));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{setting}: {stderr}");
        assert!(
            stderr.contains(setting) && stderr.contains(&address),
            "{setting} must be named: {stderr}"
        );
    }
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let output = llm_stream(&[]).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for setting in [
        "LISTEN_ADDR",
        "LLM_PROVIDER",
        "LLM_BASE_URL",
        "LLM_API_KEY",
        "LLM_MODEL",
        "LLM_MAX_TOKENS",
        "LLM_TEMPERATURE",
        "LLM_SYSTEM_PROMPT",
        "MAX_QUERY_CHARS",
        "STREAM_TIMEOUT_SECS",
        "UPSTREAM_CONNECT_TIMEOUT_SECS",
        "UPSTREAM_IDLE_TIMEOUT_SECS",
        "KEEPALIVE_SECS",
        "SHUTDOWN_GRACE_SECS",
        "DEMO_TOKEN_MS",
        "RATE_LIMIT_PER_MINUTE",
        "RATE_LIMIT_BURST",
        "MAX_STREAMS_PER_CLIENT",
        "MAX_STREAMS",
        "TRUSTED_PROXIES",
        "CORS_ALLOWED_ORIGINS",
        "LLM_FALLBACK_PROVIDER",
        "LLM_FALLBACK_BASE_URL",
        "LLM_FALLBACK_API_KEY",
        "LLM_FALLBACK_MODEL",
        "UPSTREAM_BREAKER_FAILURES",
        "UPSTREAM_BREAKER_OPEN_SECS",
    ] {
        assert!(
            help.contains(&format!("[env: {setting}")),
            "--help lacks {setting}"
        );
    }
    assert!(help.contains("[default: 127.0.0.1:4001]"));
}

/// How the binary ended; a binary that keeps running past the deadline fails the test.
fn exit_of(mut command: Command) -> std::process::Output {
    let mut child = Running(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < until,
            "the binary did not stop within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    std::process::Output {
        status: child.0.wait().unwrap(),
        stdout: Vec::new(),
        stderr,
    }
}

/// The running binary, killed when the test ends however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on a free port and returns it with its address, read from its log.
fn start(env: &[(&str, &str)]) -> (Running, String, std::sync::mpsc::Receiver<String>) {
    let mut child = llm_stream(env)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let child = Running(child);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let line = lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .expect("the server logs its address");
        if let Some(address) = line.split("address=").nth(1) {
            let address = address
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_owned();
            return (child, address, lines);
        }
    }
}

/// The whole answer to "hello", as text.
async fn ask_hello(address: &str) -> String {
    let url = format!("http://{address}/api/stream?q=hello");
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn with_no_configuration_the_binary_serves_the_demo_model() {
    let (child, address, _logs) = start(&[("DEMO_TOKEN_MS", "1")]);

    let body = ask_hello(&address).await;

    drop(child);
    assert!(body.contains(r#"data: {"token":"demo "}"#), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn the_api_key_never_appears_in_a_log_line_or_an_event() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let key = "sk-live-DO-NOT-LEAK-1234567890";
    let (child, address, logs) = start(&[
        ("LLM_API_KEY", key),
        ("LLM_BASE_URL", &upstream),
        ("RUST_LOG", "trace"),
    ]);

    let body = ask_hello(&address).await;
    let help = llm_stream(&[("LLM_API_KEY", key)])
        .arg("--help")
        .output()
        .unwrap();
    drop(child);

    assert!(body.contains("upstream_unavailable"), "{body}");
    assert!(!body.contains(key));
    let logged: Vec<String> = logs.try_iter().collect();
    assert!(
        logged.iter().any(|l| l.contains("stream ended")),
        "the stream's log line is there: {logged:?}"
    );
    assert!(
        logged.iter().all(|l| !l.contains(key)),
        "the key leaked into the log"
    );
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains(key),
        "--help shows no key"
    );
}

#[tokio::test]
async fn neither_key_appears_in_a_log_line_when_the_fallback_answers_or_fails() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let primary = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let fallback = crate::mock_upstream::MockUpstream::start().await;
    fallback.always(crate::mock_upstream::Reply::status(
        401,
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
    ));
    let (key, fallback_key) = ("sk-live-PRIMARY-1234567890", "sk-ant-FALLBACK-0987654321");
    let (child, address, logs) = start(&[
        ("LLM_API_KEY", key),
        ("LLM_BASE_URL", &primary),
        ("LLM_FALLBACK_PROVIDER", "anthropic"),
        ("LLM_FALLBACK_BASE_URL", &fallback.url()),
        ("LLM_FALLBACK_API_KEY", fallback_key),
        ("RUST_LOG", "trace"),
    ]);

    let body = ask_hello(&address).await;
    drop(child);

    assert!(body.contains("upstream_auth"), "{body}");
    assert_eq!(
        fallback.requests()[0].header("x-api-key").as_deref(),
        Some(fallback_key)
    );
    let logged: Vec<String> = logs.try_iter().collect();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("the fallback answers") && l.contains("upstream=\"primary\"")),
        "the primary's failure is logged as a warning naming it: {logged:?}"
    );
    for secret in [key, fallback_key] {
        assert!(!body.contains(secret));
        assert!(
            logged.iter().all(|l| !l.contains(secret)),
            "a key leaked into the log"
        );
    }
}
