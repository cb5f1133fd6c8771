//! Admission on Redis: the rate and the stream slots in one script (see `store::scripts`), and the
//! leases this instance holds, renewed every [`RENEW_EVERY`] so that they expire within
//! [`LEASE`] of a crash.

use std::{collections::HashMap, sync::PoisonError, time::Duration};

use ::redis::Script;
use std::sync::LazyLock;

use super::Redis;
use crate::{
    client::{ClientId, Plan},
    config::Config,
    error::Refusal,
    store::{
        admission::{Budget, Refused},
        scripts,
    },
};

/// How long a slot outlives its instance's last renewal.
const LEASE: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::ADMIT));
static PEEK: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::PEEK));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RENEW));

const ALL_SLOTS: &str = "llm-stream:slots";

/// A user's keys hold a hash of their `sub` (see `ClientId`'s Display), never the `sub` itself.
fn rate_key(client: ClientId) -> String {
    format!("llm-stream:rate:{{{client}}}")
}

fn slots_key(client: ClientId) -> String {
    format!("llm-stream:slots:{{{client}}}")
}

pub struct Settings {
    /// Milliseconds for one question's worth of budget to come back; 0 when there is no rate limit.
    interval_ms: u64,
    burst: u32,
    max_per_client: u32,
    max_total: u32,
}

impl Settings {
    pub fn new(config: &Config) -> Self {
        Self::of(
            Plan {
                per_minute: config.rate_limit_per_minute,
                burst: config.rate_limit_burst(),
                max_streams: config.max_streams_per_client,
            },
            config.max_streams,
        )
    }

    fn of(plan: Plan, max_total: u32) -> Self {
        let per_minute = u64::from(plan.per_minute);
        Self {
            interval_ms: 60_000_u64.checked_div(per_minute).unwrap_or(0),
            burst: plan.burst.max(1),
            max_per_client: plan.max_streams,
            max_total,
        }
    }

    /// These settings with a client's plan (the server's own, or its token's), passed to the
    /// scripts as arguments.
    fn plan(&self, plan: Plan) -> Self {
        Self::of(plan, self.max_total)
    }

    fn budget(&self, remaining: u32) -> Option<Budget> {
        (self.interval_ms > 0).then(|| {
            let remaining = remaining.min(self.burst);
            Budget {
                limit: self.burst,
                remaining,
                reset_secs: (self.interval_ms * u64::from(self.burst - remaining)).div_ceil(1000),
            }
        })
    }
}

/// This instance's leases: id → client.
pub type Leases = HashMap<String, ClientId>;

/// A stream slot leased from Redis: released (in the background) when dropped.
pub struct Lease {
    id: String,
    client: ClientId,
    redis: Redis,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.redis
            .0
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        let redis = self.redis.clone();
        let (id, client) = (std::mem::take(&mut self.id), self.client);
        tokio::spawn(async move {
            let mut manager = redis.manager();
            let mut pipe = ::redis::pipe();
            pipe.zrem(slots_key(client), &id).zrem(ALL_SLOTS, &id);
            let release = pipe.query_async::<()>(&mut manager);
            redis.call(super::BACKGROUND_LIMIT, release).await;
        });
    }
}

impl Redis {
    /// `None` when Redis cannot say (the caller decides locally).
    pub async fn admit(
        &self,
        client: ClientId,
        plan: Plan,
    ) -> Option<Result<(Lease, Option<Budget>), Refused>> {
        let settings = &self.0.admission.plan(plan);
        let id = crate::id::new();
        let mut manager = self.manager();
        let mut invocation = ADMIT.key(rate_key(client));
        invocation
            .key(slots_key(client))
            .key(ALL_SLOTS)
            .arg(settings.interval_ms)
            .arg(settings.burst)
            .arg(settings.max_per_client)
            .arg(settings.max_total)
            .arg(&id)
            .arg(LEASE.as_millis() as u64);
        let (outcome, wait_ms, remaining): (String, u64, u32) = self
            .call(self.0.request_limit, invocation.invoke_async(&mut manager))
            .await?;
        let budget = settings.budget(remaining);
        let refusal = match outcome.as_str() {
            "ok" => return Some(Ok((self.lease(id, client), budget))),
            "rate_limited" => Refusal::RateLimited {
                retry_after: Duration::from_millis(wait_ms),
            },
            "too_many_streams" => Refusal::TooManyStreams(settings.max_per_client),
            _ => Refusal::AtCapacity,
        };
        let budget = match &refusal {
            Refusal::RateLimited { retry_after } => {
                settings.budget(0).map(|b| b.waiting(*retry_after))
            }
            _ => budget,
        };
        crate::metrics::refused(&refusal);
        Some(Err(Refused { refusal, budget }))
    }

    /// A lease for a stream admitted in this process while Redis could not say: it is taken in
    /// Redis at the next renewal, which runs as soon as Redis is back.
    pub fn pending_lease(&self, client: ClientId) -> Lease {
        self.lease(crate::id::new(), client)
    }

    fn lease(&self, id: String, client: ClientId) -> Lease {
        self.0
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), client);
        Lease {
            id,
            client,
            redis: self.clone(),
        }
    }

    /// The client's budget and open streams, spending nothing; `None` when Redis cannot say.
    pub async fn peek(&self, client: ClientId, plan: Plan) -> Option<(Option<Budget>, u32)> {
        let settings = &self.0.admission.plan(plan);
        let mut manager = self.manager();
        let mut invocation = PEEK.key(rate_key(client));
        invocation
            .key(slots_key(client))
            .arg(settings.interval_ms)
            .arg(settings.burst);
        let (remaining, open): (u32, u32) = self
            .call(self.0.request_limit, invocation.invoke_async(&mut manager))
            .await?;
        Some((settings.budget(remaining), open))
    }

    /// Renews this instance's leases for ever, every [`RENEW_EVERY`].
    pub(super) async fn renew_leases(self) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        loop {
            tick.tick().await;
            self.renew_now().await;
        }
    }

    pub(super) async fn renew_now(&self) {
        let leases: Vec<(String, ClientId)> = self
            .0
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, client)| (id.clone(), *client))
            .collect();
        if leases.is_empty() {
            return;
        }
        let mut invocation = RENEW.key(ALL_SLOTS);
        invocation.arg(LEASE.as_millis() as u64);
        for (id, client) in &leases {
            invocation.key(slots_key(*client)).arg(id);
        }
        let mut manager = self.manager();
        self.call::<u64>(
            super::BACKGROUND_LIMIT,
            invocation.invoke_async(&mut manager),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_minute: u64, burst: u32) -> Settings {
        Settings {
            interval_ms: 60_000_u64.checked_div(per_minute).unwrap_or(0),
            burst,
            max_per_client: 3,
            max_total: 10,
        }
    }

    #[test]
    fn the_shared_budget_reads_as_the_local_one() {
        let six = settings(6, 3);
        assert_eq!(
            six.budget(3),
            Some(Budget {
                limit: 3,
                remaining: 3,
                reset_secs: 0
            })
        );
        assert_eq!(six.budget(1).map(|b| b.reset_secs), Some(20));
        assert_eq!(six.budget(7).map(|b| b.remaining), Some(3), "capped");
        // 7 a minute: 8 571 ms a question, rounded up to whole seconds.
        assert_eq!(settings(7, 1).budget(0).map(|b| b.reset_secs), Some(9));
        assert_eq!(settings(0, 1).budget(0), None, "no rate limit");
    }
}
