//! REDIS_URL: one connection manager per instance (admissions, answer logs, signals), health and
//! fallback. No request waits on Redis more than REDIS_TIMEOUT_MS (100 ms): it goes on without it.
//! A failed call, or one that gets no answer in its time, marks Redis down (logged once,
//! `llm_stream_redis_up` 0), so that the next calls do not wait at all; the instance uses its own
//! limits and logs until a probe finds Redis back, without a restart. The probe and the renewal of
//! this instance's leases run in [`Redis::upkeep`], for as long as the server runs.

mod admission;
mod answers;
mod conversations;

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ::redis::{
    AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, RedisResult, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;

pub use admission::Lease;
pub use answers::Follow;

use super::Signal;
use crate::config::Config;

/// The longest a background write (an answer's log) waits.
const BACKGROUND_LIMIT: Duration = Duration::from_secs(1);
/// How often a down Redis is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// The channel the instances signal each other on.
const SIGNALS: &str = "llm-stream:signals";

#[derive(Clone)]
pub struct Redis(Arc<Inner>);

struct Inner {
    client: Client,
    manager: ConnectionManager,
    up: AtomicBool,
    request_limit: Duration,
    /// REDIS_URL without its user or password, for the log.
    shown: String,
    /// This instance's name in its signals, so that it ignores its own.
    instance: String,
    admission: admission::Settings,
    leases: Mutex<admission::Leases>,
    retention: Duration,
    budget: Duration,
}

impl Redis {
    /// Connects in the background: a Redis that is down at start-up leaves the instance degraded, not stopped.
    pub fn start(
        url: &SecretString,
        config: &Config,
        signals: mpsc::UnboundedSender<Signal>,
    ) -> Option<Self> {
        let client = match connection_info(url.expose_secret()).and_then(Client::open) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "REDIS_URL cannot be used: limits and answers stay in this process");
                return None;
            }
        };
        let instance = crate::id::new();
        let own = instance.clone();
        let request_limit = config.redis_timeout;
        let push = move |info: PushInfo| {
            if let Some(signal) = parse_signal(&info, &own) {
                let _ = signals.send(signal);
            }
            Ok::<(), ::redis::aio::SendError>(())
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(request_limit * 2))
            // Explicit: redis-rs's default would cut nothing we send, but say what we rely on.
            .set_response_timeout(Some(BACKGROUND_LIMIT))
            .set_number_of_retries(1)
            .set_push_sender(push)
            .set_automatic_resubscription();
        let manager = match ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
        {
            Ok(manager) => manager,
            Err(error) => {
                tracing::error!(%error, "REDIS_URL cannot be used: limits and answers stay in this process");
                return None;
            }
        };
        let redis = Self(Arc::new(Inner {
            client,
            manager,
            up: AtomicBool::new(false),
            request_limit,
            shown: shown_url(url.expose_secret()),
            instance,
            admission: admission::Settings::new(config),
            leases: Mutex::default(),
            retention: config.resume_retention,
            budget: config.stream_timeout,
        }));
        crate::metrics::redis_up(false);
        Some(redis)
    }

    /// Probes Redis while it is down and renews this instance's leases, until dropped.
    pub async fn upkeep(self) {
        tokio::join!(self.clone().probe(), self.renew_leases());
    }

    fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Relaxed)
    }

    fn manager(&self) -> ConnectionManager {
        self.0.manager.clone()
    }

    /// Runs one call within `limit`; on failure marks Redis down and gives `None`.
    async fn call<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        if !self.is_up() {
            return None;
        }
        let started = Instant::now();
        let result = tokio::time::timeout(limit, call).await;
        crate::metrics::redis_call(started.elapsed());
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.down(&error.to_string());
                None
            }
            // A stalled Redis: the next calls go on without it at once, not after another wait.
            Err(_) => {
                self.down("no answer in time");
                None
            }
        }
    }

    fn down(&self, why: &str) {
        if self.0.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                why,
                redis = %self.0.shown,
                "Redis (REDIS_URL) is unreachable: this instance uses its own limits and answers until it is back"
            );
            crate::metrics::redis_up(false);
        }
    }

    /// While Redis is down, asks it every [`PROBE_EVERY`]; when it answers, subscribes to the
    /// signals again and uses it again.
    async fn probe(self) {
        let mut first = true;
        loop {
            if !self.is_up() {
                let mut manager = self.manager();
                let ping = async {
                    ::redis::cmd("PING").query_async::<()>(&mut manager).await?;
                    manager.subscribe(SIGNALS).await
                };
                match tokio::time::timeout(BACKGROUND_LIMIT, ping).await {
                    Ok(Ok(())) => {
                        self.0.up.store(true, Ordering::Relaxed);
                        crate::metrics::redis_up(true);
                        tracing::info!("Redis is reachable: limits and answers are shared");
                        // Leases from before an outage may be lost with it: put them back at once.
                        self.renew_now().await;
                    }
                    _ if first => tracing::warn!(
                        redis = %self.0.shown,
                        "Redis (REDIS_URL) is unreachable at start-up: this instance runs on its own limits and answers until Redis answers"
                    ),
                    _ => {}
                }
                first = false;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// Tells the other instances, without waiting.
    pub fn announce(&self, signal: Signal) {
        if !self.is_up() {
            return;
        }
        let message = match &signal {
            Signal::Cancel(id) => format!("cancel {id}"),
            Signal::Reader { id, reader } => format!("reader {id} {reader}"),
            Signal::Left { id, reader } => format!("left {id} {reader}"),
        };
        let message = format!("{} {message}", self.0.instance);
        let redis = self.clone();
        tokio::spawn(async move {
            let mut manager = redis.manager();
            let mut publish = ::redis::cmd("PUBLISH");
            publish.arg(SIGNALS).arg(message);
            let publish = publish.query_async::<i64>(&mut manager);
            redis.call(BACKGROUND_LIMIT, publish).await;
        });
    }

    /// A connection of its own, for a blocking read that must not hold up the shared one.
    async fn dedicated(&self) -> Option<::redis::aio::MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.0.request_limit))
            .set_response_timeout(Some(answers::BLOCK + BACKGROUND_LIMIT));
        self.call(
            self.0.request_limit * 2,
            self.0
                .client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
    }
}

/// The URL as the log may show it: without a user or password.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "(not shown)".to_owned(),
    }
}

/// The URL's connection settings, with RESP3 so that signals arrive on the shared connection.
fn connection_info(url: &str) -> RedisResult<::redis::ConnectionInfo> {
    use ::redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok(info.set_redis_settings(settings))
}

/// A signal from another instance: `<instance> <kind> <stream> [<reader>]`; its own are ignored.
fn parse_signal(info: &PushInfo, own: &str) -> Option<Signal> {
    if info.kind != PushKind::Message {
        return None;
    }
    let text = match info.data.get(1)? {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
        _ => return None,
    };
    let mut words = text.split(' ');
    if words.next()? == own {
        return None;
    }
    let (kind, id) = (words.next()?, words.next()?.to_owned());
    let mut reader = || words.next().and_then(|r| r.parse().ok());
    match kind {
        "cancel" => Some(Signal::Cancel(id)),
        "reader" => Some(Signal::Reader {
            id,
            reader: reader()?,
        }),
        "left" => Some(Signal::Left {
            id,
            reader: reader()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(SIGNALS.as_bytes().to_vec()),
                Value::BulkString(text.as_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn signals_from_other_instances_are_read_and_its_own_ignored() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_signal(&message(&format!("other cancel {id}")), "me"),
            Some(Signal::Cancel(id.into()))
        );
        assert_eq!(
            parse_signal(&message(&format!("other reader {id} 7")), "me"),
            Some(Signal::Reader {
                id: id.into(),
                reader: 7
            })
        );
        assert_eq!(
            parse_signal(&message(&format!("other left {id} 7")), "me"),
            Some(Signal::Left {
                id: id.into(),
                reader: 7
            })
        );
        assert_eq!(
            parse_signal(&message(&format!("me cancel {id}")), "me"),
            None
        );
    }

    #[test]
    fn malformed_signals_are_ignored() {
        for text in [
            "",
            "other",
            "other cancel",
            "other reader abc",
            "other shout abc",
        ] {
            assert_eq!(parse_signal(&message(text), "me"), None, "{text:?}");
        }
    }

    #[test]
    fn the_log_shows_redis_url_without_its_password() {
        assert_eq!(
            shown_url("redis://user:s3cret@127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
