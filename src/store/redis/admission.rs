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
        admission::{Budget, Budgets, Refused, TokenBudget},
        local::plan_bucket,
        scripts,
        tokens::{Ask, Bucket, Decision, Reservation, decide},
    },
};

/// How long a slot outlives its instance's last renewal.
const LEASE: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::ADMIT));
static PEEK: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::PEEK));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RENEW));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::SETTLE));

const ALL_SLOTS: &str = "llm-stream:slots";

/// A user's keys hold a hash of their `sub` (see `ClientId`'s Display), never the `sub` itself.
fn rate_key(client: ClientId) -> String {
    format!("llm-stream:rate:{{{client}}}")
}

fn slots_key(client: ClientId) -> String {
    format!("llm-stream:slots:{{{client}}}")
}

fn tokens_key(client: ClientId) -> String {
    format!("llm-stream:tokens:{{{client}}}")
}

fn reserved_key(client: ClientId) -> String {
    format!("llm-stream:reserved:{{{client}}}")
}

/// The whole service's token bucket (GLOBAL_TOKEN_BUDGET).
const GLOBAL_TOKENS: &str = "llm-stream:tokens";

/// A bucket as the scripts' two arguments: its capacity (0: none) and window ms.
fn bucket_args(bucket: Option<Bucket>) -> (u64, u64) {
    bucket.map_or((0, 1), |b| (b.capacity, b.window_ms))
}

pub struct Settings {
    /// Milliseconds for one question's worth of budget to come back; 0 when there is no rate limit.
    interval_ms: u64,
    burst: u32,
    max_per_client: u32,
    max_total: u32,
    /// GLOBAL_TOKEN_BUDGET, when set.
    global: Option<Bucket>,
}

impl Settings {
    pub fn new(config: &Config) -> Self {
        Self::of(
            Plan {
                per_minute: config.rate_limit_per_minute,
                burst: config.rate_limit_burst(),
                max_streams: config.max_streams_per_client,
                tokens: config.token_budget,
                tokens_window: config.token_budget_window,
            },
            config.max_streams,
            Bucket::new(
                config.global_token_budget,
                config.global_token_budget_window,
            ),
        )
    }

    fn of(plan: Plan, max_total: u32, global: Option<Bucket>) -> Self {
        let per_minute = u64::from(plan.per_minute);
        Self {
            interval_ms: 60_000_u64.checked_div(per_minute).unwrap_or(0),
            burst: plan.burst.max(1),
            max_per_client: plan.max_streams,
            max_total,
            global,
        }
    }

    /// These settings with a client's plan (the server's own, or its token's), passed to the
    /// scripts as arguments.
    fn plan(&self, plan: Plan) -> Self {
        Self::of(plan, self.max_total, self.global)
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

/// What PEEK read: the rate's questions left, the client's open streams, and how far ahead of
/// now the client's and the service's token buckets are full again (ms).
struct Peeked {
    remaining: u32,
    open: u32,
    ahead: u64,
    global_ahead: u64,
}

/// This instance's leases: id → client.
pub type Leases = HashMap<String, ClientId>;

/// A stream slot leased from Redis: released (in the background) when dropped.
pub struct Lease {
    id: String,
    client: ClientId,
    redis: Redis,
    /// Its token reservation, held in Redis under the lease's id, until [`Lease::settle`].
    tokens: Option<Reservation>,
}

impl Lease {
    /// Releases the lease and replaces its reservation by what the answer cost, in one script;
    /// the client's token budget after it. `None` when Redis cannot say (the reservation then
    /// stays spent in full, and the lease expires by itself).
    pub async fn settle(mut self, cost: u64) -> Option<TokenBudget> {
        let reservation = self.tokens.take()?;
        self.forget();
        let id = std::mem::take(&mut self.id);
        let (cap, win) = bucket_args(reservation.client);
        let (gcap, gwin) = bucket_args(reservation.global);
        let mut invocation = SETTLE.key(slots_key(self.client));
        invocation
            .key(ALL_SLOTS)
            .key(tokens_key(self.client))
            .key(reserved_key(self.client))
            .key(GLOBAL_TOKENS)
            .arg(&id)
            .arg(cost)
            .arg(cap)
            .arg(win)
            .arg(gcap)
            .arg(gwin);
        let mut manager = self.redis.manager();
        let ahead: u64 = self
            .redis
            .call(
                super::BACKGROUND_LIMIT,
                invocation.invoke_async(&mut manager),
            )
            .await?;
        reservation.client.map(|bucket| bucket.view(ahead))
    }

    fn forget(&self) {
        self.redis
            .0
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        self.forget();
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
        ask: Ask,
    ) -> Option<Result<(Lease, Budgets, Option<u32>), Refused>> {
        let settings = &self.0.admission.plan(plan);
        let bucket = plan_bucket(plan);
        let (cap, win) = bucket_args(bucket);
        let (gcap, gwin) = bucket_args(settings.global);
        let id = crate::id::new();
        let mut manager = self.manager();
        let mut invocation = ADMIT.key(rate_key(client));
        invocation
            .key(slots_key(client))
            .key(ALL_SLOTS)
            .key(tokens_key(client))
            .key(reserved_key(client))
            .key(GLOBAL_TOKENS)
            .arg(settings.interval_ms)
            .arg(settings.burst)
            .arg(settings.max_per_client)
            .arg(settings.max_total)
            .arg(&id)
            .arg(LEASE.as_millis() as u64)
            .arg(cap)
            .arg(win)
            .arg(gcap)
            .arg(gwin)
            .arg(ask.prompt)
            .arg(ask.answer)
            .arg(ask.min_answer);
        let (outcome, wait_ms, remaining, reserved, ahead): (String, u64, u32, u64, u64) = self
            .call(self.0.request_limit, invocation.invoke_async(&mut manager))
            .await?;
        let tokens = bucket.map(|b| b.view(ahead));
        let budget = settings.budget(remaining);
        let retry_after = Duration::from_millis(wait_ms);
        let refusal = match outcome.as_str() {
            "ok" => {
                let want = ask.prompt + u64::from(ask.answer);
                let cap = (reserved > 0 && reserved < want)
                    .then(|| u32::try_from(reserved - ask.prompt).unwrap_or(u32::MAX));
                let reservation = (reserved > 0).then_some(Reservation {
                    tokens: reserved,
                    client: bucket,
                    global: settings.global,
                });
                let mut lease = self.lease(id, client);
                lease.tokens = reservation;
                return Some(Ok((
                    lease,
                    Budgets {
                        rate: budget,
                        tokens,
                    },
                    cap,
                )));
            }
            "rate_limited" => Refusal::RateLimited { retry_after },
            "token_budget_exhausted" => Refusal::TokenBudgetExhausted { retry_after },
            "service_budget_exhausted" => Refusal::ServiceBudgetExhausted { retry_after },
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
        Some(Err(Refused {
            refusal,
            budgets: Budgets {
                rate: budget,
                tokens,
            },
        }))
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
            tokens: None,
        }
    }

    /// The client's budget and open streams, spending nothing; `None` when Redis cannot say.
    pub async fn peek(&self, client: ClientId, plan: Plan) -> Option<(Budgets, u32)> {
        let settings = &self.0.admission.plan(plan);
        let peeked = self.peek_raw(client, settings).await?;
        let budgets = Budgets {
            rate: settings.budget(peeked.remaining),
            tokens: plan_bucket(plan).map(|b| b.view(peeked.ahead)),
        };
        Some((budgets, peeked.open))
    }

    /// What the token budgets decide for `ask` now, as ADMIT would (the same arithmetic in
    /// `tokens::decide`), spending nothing: `Some(None)` when no budget applies, `None` when
    /// Redis cannot say.
    pub async fn decide(&self, client: ClientId, plan: Plan, ask: Ask) -> Option<Option<Decision>> {
        let settings = &self.0.admission.plan(plan);
        let (bucket, global) = (plan_bucket(plan), settings.global);
        if bucket.is_none() && global.is_none() {
            return Some(None);
        }
        let peeked = self.peek_raw(client, settings).await?;
        Some(Some(decide(
            ask,
            bucket.map(|b| (b, peeked.ahead)),
            global.map(|g| (g, peeked.global_ahead)),
        )))
    }

    async fn peek_raw(&self, client: ClientId, settings: &Settings) -> Option<Peeked> {
        let mut manager = self.manager();
        let mut invocation = PEEK.key(rate_key(client));
        invocation
            .key(slots_key(client))
            .key(tokens_key(client))
            .key(GLOBAL_TOKENS)
            .arg(settings.interval_ms)
            .arg(settings.burst);
        let (remaining, open, ahead, global_ahead): (u32, u32, u64, u64) = self
            .call(self.0.request_limit, invocation.invoke_async(&mut manager))
            .await?;
        Some(Peeked {
            remaining,
            open,
            ahead,
            global_ahead,
        })
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
            invocation
                .key(slots_key(*client))
                .key(reserved_key(*client))
                .arg(id);
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
            global: None,
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
