//! Configuration: every setting is a flag and an environment variable of the same name, parsed and
//! validated once at start-up. Times are `Duration`s as parsed; derived values are methods, so no caller
//! repeats the arithmetic.

use std::{net::IpAddr, process::ExitCode, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use ipnet::IpNet;
use reqwest::Url;
use secrecy::SecretString;

/// Which upstream answers the questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// The built-in offline demo model.
    Demo,
    /// Any OpenAI-compatible Chat Completions API.
    #[value(name = "openai")]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

impl ProviderKind {
    /// The name LLM_PROVIDER takes for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Demo => "demo",
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// Whether answers from an HTTPS upstream may share HTTP/2 connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Http2Mode {
    /// HTTP/2 when the upstream offers it by ALPN: answers share connections, as many on each as
    /// the server allows.
    Auto,
    /// HTTP/1.1 always: one connection per answer.
    Off,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable by a person.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "llm-stream",
    version,
    about = "Streams a language model's answer to the browser over Server-Sent Events."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:4001", value_parser = parse_listen_addr)]
    pub listen_addr: String,

    /// Upstream provider [default: demo, or openai when LLM_BASE_URL or LLM_API_KEY is set].
    #[arg(long, env = "LLM_PROVIDER", value_enum)]
    pub llm_provider: Option<ProviderKind>,

    /// Base URL of the upstream API [default: https://api.openai.com/v1, or https://api.anthropic.com/v1 for anthropic].
    #[arg(long, env = "LLM_BASE_URL", value_parser = parse_base_url)]
    pub llm_base_url: Option<Url>,

    /// API key of the upstream (never logged).
    #[arg(long, env = "LLM_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub llm_api_key: Option<SecretString>,

    /// Model name sent upstream [default: gpt-4o-mini, or claude-haiku-4-5 for anthropic].
    #[arg(long, env = "LLM_MODEL")]
    pub llm_model: Option<String>,

    /// Most tokens the model may generate for one answer.
    #[arg(long, env = "LLM_MAX_TOKENS", default_value_t = 800, value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_max_tokens: u32,

    /// Sampling temperature, 0 to 2.
    #[arg(long, env = "LLM_TEMPERATURE", default_value_t = 0.3, value_parser = parse_temperature)]
    pub llm_temperature: f32,

    /// System prompt sent before the question.
    #[arg(
        long,
        env = "LLM_SYSTEM_PROMPT",
        default_value = "You are a helpful technical assistant. Be concise and accurate."
    )]
    pub llm_system_prompt: String,

    /// Attempts after a failed upstream call, made only before the first token reaches the client.
    #[arg(long, env = "LLM_RETRIES", default_value_t = 2)]
    pub llm_retries: u32,

    /// Provider of the fallback upstream, asked when the primary fails before its first token [default: none, or openai when LLM_FALLBACK_BASE_URL or LLM_FALLBACK_API_KEY is set].
    #[arg(long, env = "LLM_FALLBACK_PROVIDER", value_enum)]
    pub llm_fallback_provider: Option<ProviderKind>,

    /// Base URL of the fallback upstream [default: https://api.openai.com/v1, or https://api.anthropic.com/v1 for anthropic].
    #[arg(long, env = "LLM_FALLBACK_BASE_URL", value_parser = parse_base_url)]
    pub llm_fallback_base_url: Option<Url>,

    /// API key of the fallback upstream (never logged).
    #[arg(long, env = "LLM_FALLBACK_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub llm_fallback_api_key: Option<SecretString>,

    /// Model name sent to the fallback upstream [default: gpt-4o-mini, or claude-haiku-4-5 for anthropic].
    #[arg(long, env = "LLM_FALLBACK_MODEL")]
    pub llm_fallback_model: Option<String>,

    /// With a fallback: consecutive failures before the first token that open an upstream's breaker.
    #[arg(long, env = "UPSTREAM_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub upstream_breaker_failures: u32,

    /// With a fallback: seconds an open breaker sends questions to the other upstream before one probes it again.
    #[arg(long = "upstream-breaker-open-secs", env = "UPSTREAM_BREAKER_OPEN_SECS", value_name = "UPSTREAM_BREAKER_OPEN_SECS", default_value = "30", value_parser = parse_secs)]
    pub upstream_breaker_open: Duration,

    /// Longest question, in characters.
    #[arg(long, env = "MAX_QUERY_CHARS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_query_chars: u32,

    /// The whole answer's time budget, in seconds.
    #[arg(long = "stream-timeout-secs", env = "STREAM_TIMEOUT_SECS", value_name = "STREAM_TIMEOUT_SECS", default_value = "60", value_parser = parse_secs)]
    pub stream_timeout: Duration,

    /// HTTP/2 to HTTPS upstreams that offer it: auto (answers share connections, up to the server's stream limit on each) or off (HTTP/1.1, a connection per answer). Plain http:// upstreams always get HTTP/1.1.
    #[arg(long, env = "LLM_HTTP2", value_enum, default_value = "auto")]
    pub llm_http2: Http2Mode,

    /// Time allowed to connect to the upstream, in seconds.
    #[arg(long = "upstream-connect-timeout-secs", env = "UPSTREAM_CONNECT_TIMEOUT_SECS", value_name = "UPSTREAM_CONNECT_TIMEOUT_SECS", default_value = "10", value_parser = parse_secs)]
    pub upstream_connect_timeout: Duration,

    /// No byte from the upstream for this long ends the stream, in seconds.
    #[arg(long = "upstream-idle-timeout-secs", env = "UPSTREAM_IDLE_TIMEOUT_SECS", value_name = "UPSTREAM_IDLE_TIMEOUT_SECS", default_value = "30", value_parser = parse_secs)]
    pub upstream_idle_timeout: Duration,

    /// Seconds between keep-alive comments while nothing else is sent (15: under nginx's default 60 s read timeout).
    #[arg(long = "keepalive-secs", env = "KEEPALIVE_SECS", value_name = "KEEPALIVE_SECS", default_value = "15", value_parser = parse_secs)]
    pub keepalive: Duration,

    /// On SIGTERM/SIGINT, seconds that running streams may take to finish.
    #[arg(long = "shutdown-grace-secs", env = "SHUTDOWN_GRACE_SECS", value_name = "SHUTDOWN_GRACE_SECS", default_value = "30", value_parser = parse_secs_or_zero)]
    pub shutdown_grace: Duration,

    /// Milliseconds between the demo model's tokens.
    #[arg(long = "demo-token-ms", env = "DEMO_TOKEN_MS", value_name = "DEMO_TOKEN_MS", default_value = "30", value_parser = millis(0, 60_000))]
    pub demo_token_interval: Duration,

    /// New streams one client may start per minute (0 turns rate limiting off).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 10)]
    pub rate_limit_per_minute: u32,

    /// Streams one client may start at once before the per-minute rate applies [default: the per-minute figure].
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// Open streams one client may hold at once.
    #[arg(long, env = "MAX_STREAMS_PER_CLIENT", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_client: u32,

    /// Open streams the whole server may hold at once.
    #[arg(long, env = "MAX_STREAMS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,

    /// Proxies whose X-Real-IP / X-Forwarded-For are believed (comma-separated CIDRs).
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "127.0.0.1/32,::1/128", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,

    /// Origins whose pages may call the API from the browser (comma-separated; same-origin only when empty).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allowed_origins: Vec<String>,

    /// Folder the page's assets are served from (relative to the working directory).
    #[arg(long, env = "STATIC_DIR", default_value = "static")]
    pub static_dir: std::path::PathBuf,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Serve /metrics on this separate address instead of the main listener.
    #[arg(long, env = "METRICS_ADDR", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<String>,

    /// Milliseconds an EventSource waits before it reconnects (the `retry:` that opens each stream).
    #[arg(long = "resume-retry-ms", env = "RESUME_RETRY_MS", value_name = "RESUME_RETRY_MS", default_value = "1000", value_parser = millis(1, 600_000))]
    pub resume_retry: Duration,

    /// Seconds a finished answer stays resumable.
    #[arg(long = "resume-retention-secs", env = "RESUME_RETENTION_SECS", value_name = "RESUME_RETENTION_SECS", default_value = "300", value_parser = parse_secs)]
    pub resume_retention: Duration,

    /// Seconds a running answer goes on with nobody reading it, so that a reconnect finds it (0: stop at once).
    #[arg(long = "resume-grace-secs", env = "RESUME_GRACE_SECS", value_name = "RESUME_GRACE_SECS", default_value = "10", value_parser = parse_secs_or_zero)]
    pub resume_grace: Duration,

    /// Bytes of answers this process keeps for resuming; the oldest finished answers go first.
    #[arg(long, env = "RESUME_MAX_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub resume_max_bytes: u64,

    /// Seconds a conversation is kept after its last turn.
    #[arg(long = "conversation-ttl-secs", env = "CONVERSATION_TTL_SECS", value_name = "CONVERSATION_TTL_SECS", default_value = "1800", value_parser = parse_secs)]
    pub conversation_ttl: Duration,

    /// Most earlier turns a conversation keeps.
    #[arg(long, env = "CONVERSATION_MAX_TURNS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub conversation_max_turns: u32,

    /// Most characters of earlier turns sent upstream with a follow-up (the oldest turns are left out first).
    #[arg(long, env = "CONVERSATION_MAX_CHARS", default_value_t = 24_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub conversation_max_chars: u32,

    /// Tokens (prompt and completion) one client may spend per TOKEN_BUDGET_WINDOW_SECS, refilled evenly (0: no budget).
    #[arg(long, env = "TOKEN_BUDGET", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub token_budget: u64,

    /// Seconds in which a spent TOKEN_BUDGET refills completely.
    #[arg(long = "token-budget-window-secs", env = "TOKEN_BUDGET_WINDOW_SECS", value_name = "TOKEN_BUDGET_WINDOW_SECS", default_value = "86400", value_parser = parse_secs)]
    pub token_budget_window: Duration,

    /// The fewest answer tokens a question is admitted with when its budget runs low.
    #[arg(long, env = "TOKEN_BUDGET_MIN_ANSWER", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_budget_min_answer: u32,

    /// Tokens the whole service may spend per GLOBAL_TOKEN_BUDGET_WINDOW_SECS, typically the provider's quota (0: none).
    #[arg(long, env = "GLOBAL_TOKEN_BUDGET", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub global_token_budget: u64,

    /// Seconds in which a spent GLOBAL_TOKEN_BUDGET refills completely.
    #[arg(long = "global-token-budget-window-secs", env = "GLOBAL_TOKEN_BUDGET_WINDOW_SECS", value_name = "GLOBAL_TOKEN_BUDGET_WINDOW_SECS", default_value = "60", value_parser = parse_secs)]
    pub global_token_budget_window: Duration,

    /// A Redis that several instances share for limits and resumable answers (redis://, rediss://, redis+unix://).
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = parse_redis_url)]
    pub redis_url: Option<SecretString>,

    /// Milliseconds a request waits on Redis before it goes on without it (this process's own limits and answers).
    #[arg(long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS", value_name = "REDIS_TIMEOUT_MS", default_value = "100", value_parser = millis(10, 10_000))]
    pub redis_timeout: Duration,

    /// An HMAC secret (HS256, HS384, HS512) that verifies the tokens naming each user (never logged).
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub auth_jwt_secret: Option<SecretString>,

    /// The URL of a JSON Web Key Set whose keys verify the tokens (RS*, PS*, ES256/384, EdDSA).
    #[arg(long, env = "AUTH_JWKS_URL", value_parser = parse_http_url)]
    pub auth_jwks_url: Option<Url>,

    /// The `iss` every token must carry.
    #[arg(long, env = "AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// The `aud` every token must carry (one of its values, when it is an array).
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    #[arg(long, env = "AUTH_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub auth_leeway_secs: u64,

    /// Also serve requests without a token, as anonymous clients by address [default: false when a secret or key set is set].
    #[arg(long, env = "AUTH_ANONYMOUS", action = clap::ArgAction::Set)]
    pub auth_anonymous: Option<bool>,

    /// The cookie a browser's token travels in (an EventSource cannot set headers).
    #[arg(long, env = "AUTH_COOKIE", default_value = "llm_stream_token", value_parser = parse_cookie_name)]
    pub auth_cookie: String,

    /// Where the page sends a person who is not signed in.
    #[arg(long, env = "AUTH_LOGIN_URL", value_parser = parse_http_url)]
    pub auth_login_url: Option<Url>,

    /// Export traces over OTLP/HTTP to this collector (`/v1/traces` is added); no traces when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = parse_http_url)]
    pub otel_exporter_otlp_endpoint: Option<Url>,

    /// The collector's full URL for traces, as is (wins over OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_parser = parse_http_url)]
    pub otel_exporter_otlp_traces_endpoint: Option<Url>,

    /// Record the question and the answer's text on the chat span (bounded); off, no text leaves the process.
    #[arg(long, env = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", value_name = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", default_value_t = false, action = clap::ArgAction::Set)]
    pub otel_capture_message_content: bool,

    /// Finished spans waiting for export at most; more are dropped and counted.
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub otel_bsp_max_queue_size: u32,

    /// Milliseconds between two exports of the waiting spans.
    #[arg(long = "otel-bsp-schedule-delay", env = "OTEL_BSP_SCHEDULE_DELAY", value_name = "OTEL_BSP_SCHEDULE_DELAY", default_value = "5000", value_parser = millis(1, 600_000))]
    pub otel_bsp_schedule_delay: Duration,

    /// Most spans in one export.
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub otel_bsp_max_export_batch_size: u32,
}

/// Why start-up stopped before the server ran.
#[derive(Debug)]
pub enum ConfigExit {
    /// `--help` or `--version` was asked for: print it and exit successfully.
    Info(clap::Error),
    /// A setting is wrong: one line that names it.
    Invalid(String),
}

impl ConfigExit {
    /// Prints what start-up stopped for and gives the process's exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Self::Info(info) => {
                let _ = info.print();
                ExitCode::SUCCESS
            }
            Self::Invalid(line) => {
                eprintln!("llm-stream: invalid configuration: {line}");
                ExitCode::from(2)
            }
        }
    }
}

impl Config {
    /// Reads `.env` when present, then the flags and the environment, then validates.
    pub fn load() -> Result<Self, ConfigExit> {
        let _ = dotenvy::dotenv();
        Self::from_args(std::env::args_os())
    }

    /// Parses and validates the given arguments (and the environment).
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigExit>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::parse_with(Self::command(), args)
    }

    /// Parses and validates the given arguments alone, as if the environment were empty: what a
    /// test configures is then all it tests, whatever the shell that runs it exports.
    pub fn from_args_only<I, T>(args: I) -> Result<Self, ConfigExit>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::parse_with(Self::command().mut_args(|arg| arg.env(None)), args)
    }

    fn parse_with<I, T>(command: clap::Command, args: I) -> Result<Self, ConfigExit>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let invalid = |error: clap::Error| match error.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ConfigExit::Info(error)
            }
            _ => ConfigExit::Invalid(first_line(&error.render().to_string())),
        };
        let matches = command.try_get_matches_from(args).map_err(invalid)?;
        let config = Self::from_arg_matches(&matches).map_err(invalid)?;
        config.validate().map_err(ConfigExit::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.provider() != ProviderKind::Demo && self.llm_api_key.is_none() {
            return Err(format!(
                "LLM_API_KEY is required when LLM_PROVIDER is {} (set any value for a local server that needs none)",
                self.provider().name()
            ));
        }
        self.validate_fallback()?;
        if let Some(origin) = self.cors_allowed_origins.iter().find(|o| *o == "*") {
            return Err(format!(
                "CORS_ALLOWED_ORIGINS must name sites, not {origin:?}: an open endpoint lets any page spend the model budget"
            ));
        }
        if !self.auth_enabled() {
            let needs = [
                ("AUTH_ISSUER", self.auth_issuer.is_some()),
                ("AUTH_AUDIENCE", self.auth_audience.is_some()),
                ("AUTH_LOGIN_URL", self.auth_login_url.is_some()),
            ];
            if let Some((setting, _)) = needs.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{setting} needs AUTH_JWT_SECRET or AUTH_JWKS_URL: without one, no token is verified"
                ));
            }
        }
        for (setting, budget) in [
            ("TOKEN_BUDGET", self.token_budget),
            ("GLOBAL_TOKEN_BUDGET", self.global_token_budget),
        ] {
            if budget != 0 && budget < u64::from(self.token_budget_min_answer) {
                return Err(format!(
                    "{setting} must be 0 (off) or at least TOKEN_BUDGET_MIN_ANSWER ({}): no answer could ever fit",
                    self.token_budget_min_answer
                ));
            }
        }
        for (setting, value) in [
            ("AUTH_ISSUER", &self.auth_issuer),
            ("AUTH_AUDIENCE", &self.auth_audience),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{setting} must not be blank"));
            }
        }
        Ok(())
    }

    /// The provider in force: the explicit one, else openai when an upstream is configured, else demo.
    pub fn provider(&self) -> ProviderKind {
        self.llm_provider.unwrap_or(
            if self.llm_base_url.is_some() || self.llm_api_key.is_some() {
                ProviderKind::OpenAi
            } else {
                ProviderKind::Demo
            },
        )
    }

    /// The upstream's base URL, defaulting per provider.
    pub fn base_url(&self) -> Url {
        let default = match self.provider() {
            ProviderKind::Anthropic => "https://api.anthropic.com/v1",
            _ => "https://api.openai.com/v1",
        };
        self.llm_base_url.clone().unwrap_or_else(|| {
            parse_base_url(default).unwrap_or_else(|_| unreachable!("valid default URL"))
        })
    }

    /// The model in force: the explicit one, else a sensible one for the provider.
    pub fn model(&self) -> String {
        let default = match self.provider() {
            ProviderKind::Anthropic => "claude-haiku-4-5",
            _ => "gpt-4o-mini",
        };
        self.llm_model.clone().unwrap_or_else(|| default.to_owned())
    }

    /// The burst in force: the explicit one, else the per-minute figure.
    pub fn rate_limit_burst(&self) -> u32 {
        self.rate_limit_burst.unwrap_or(self.rate_limit_per_minute)
    }

    /// Whether CORS_ALLOWED_ORIGINS names `origin` (an `Origin` header's value).
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    /// Whether a peer address belongs to a trusted proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The fallback upstream's provider: the explicit one, else openai when its base URL or key is
    /// set, else none (no fallback, no breaker).
    pub fn fallback_provider(&self) -> Option<ProviderKind> {
        self.llm_fallback_provider
            .or(
                (self.llm_fallback_base_url.is_some() || self.llm_fallback_api_key.is_some())
                    .then_some(ProviderKind::OpenAi),
            )
    }

    /// The fallback upstream's base URL, defaulting per its provider.
    pub fn fallback_base_url(&self) -> Url {
        let default = match self.fallback_provider() {
            Some(ProviderKind::Anthropic) => "https://api.anthropic.com/v1",
            _ => "https://api.openai.com/v1",
        };
        self.llm_fallback_base_url.clone().unwrap_or_else(|| {
            parse_base_url(default).unwrap_or_else(|_| unreachable!("valid default URL"))
        })
    }

    /// The fallback's model: the explicit one, else a sensible one for its provider.
    pub fn fallback_model(&self) -> String {
        let default = match self.fallback_provider() {
            Some(ProviderKind::Anthropic) => "claude-haiku-4-5",
            _ => "gpt-4o-mini",
        };
        self.llm_fallback_model
            .clone()
            .unwrap_or_else(|| default.to_owned())
    }

    /// The fallback's settings hold together: a key where its provider needs one, and no model
    /// named for a fallback that is not there.
    fn validate_fallback(&self) -> Result<(), String> {
        match self.fallback_provider() {
            None if self.llm_fallback_model.is_some() => Err(
                "LLM_FALLBACK_MODEL is set but no fallback upstream is: set LLM_FALLBACK_BASE_URL or LLM_FALLBACK_API_KEY (and LLM_FALLBACK_PROVIDER for anthropic)".into(),
            ),
            Some(kind) if kind != ProviderKind::Demo && self.llm_fallback_api_key.is_none() => {
                Err(format!(
                    "LLM_FALLBACK_API_KEY is required when LLM_FALLBACK_PROVIDER is {} (set any value for a local server that needs none)",
                    kind.name()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether tokens are verified: a secret or a key set is configured.
    pub fn auth_enabled(&self) -> bool {
        self.auth_jwt_secret.is_some() || self.auth_jwks_url.is_some()
    }

    /// Where traces are sent, when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as is) or
    /// OTEL_EXPORTER_OTLP_ENDPOINT (with `v1/traces` under it) names a collector; no traces otherwise.
    pub fn otlp_traces_endpoint(&self) -> Option<String> {
        if let Some(url) = &self.otel_exporter_otlp_traces_endpoint {
            return Some(url.to_string());
        }
        let base = self.otel_exporter_otlp_endpoint.as_ref()?;
        Some(format!("{}/v1/traces", base.as_str().trim_end_matches('/')))
    }

    /// Whether a request without a token is served, anonymously by address.
    pub fn auth_allows_anonymous(&self) -> bool {
        self.auth_anonymous.unwrap_or(!self.auth_enabled())
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or(text)
        .trim_start_matches("error: ")
        .to_owned()
}

fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://".into());
    }
    // A trailing slash makes `join` keep the last path segment (`…/v1/` + `chat/completions`).
    let mut url = url;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// `host:port`, checked here rather than at bind time, so that a bad one stops start-up with a
/// line naming its setting like every other. A host name is resolved (`localhost:4001` works).
fn parse_listen_addr(text: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    match text.to_socket_addrs().map(|mut addresses| addresses.next()) {
        Ok(Some(_)) => Ok(text.to_owned()),
        Ok(None) => Err("names no address to listen on".into()),
        Err(error) => Err(format!(
            "must be an address and port to listen on, such as 127.0.0.1:4001 or [::]:4001 ({error})"
        )),
    }
}

/// An absolute http:// or https:// URL, kept as given.
fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with http:// or https://".into());
    }
    Ok(url)
}

/// A cookie name: RFC 6265's token characters.
fn parse_cookie_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err("must be a cookie name: letters, digits and !#$%&'*+-.^_`|~".into());
    }
    Ok(text.to_owned())
}

fn parse_secret(text: &str) -> Result<SecretString, String> {
    if text.trim().is_empty() {
        return Err("must not be blank".into());
    }
    Ok(SecretString::from(text.to_owned()))
}

fn parse_temperature(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(t) if (0.0..=2.0).contains(&t) => Ok(t),
        _ => Err("must be a number from 0 to 2".into()),
    }
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err("must be a number of seconds above 0 and at most 86400".into()),
    }
}

fn parse_secs_or_zero(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err("must be a number of seconds from 0 to 86400".into()),
    }
}

/// A whole number of milliseconds from `min` to `max`, as a `Duration`.
fn millis(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| match text.parse::<u64>() {
        Ok(ms) if (min..=max).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "must be a whole number of milliseconds from {min} to {max}"
        )),
    }
}

fn parse_redis_url(text: &str) -> Result<SecretString, String> {
    let scheme = text.split("://").next().unwrap_or_default();
    if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") {
        return Err("must start with redis://, rediss:// or redis+unix://".into());
    }
    // Parsed here only to name the problem at start-up; the text (it may hold a password) is not echoed.
    redis::Client::open(text).map_err(|_| "is not a Redis URL".to_owned())?;
    Ok(SecretString::from(text.to_owned()))
}

/// An origin as browsers send it in `Origin`: trimmed, lowercase, no trailing slash.
fn parse_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/').to_ascii_lowercase();
    if origin.is_empty() {
        return Err("holds an empty origin: separate origins with single commas".into());
    }
    Ok(origin)
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or CIDR"))
}
