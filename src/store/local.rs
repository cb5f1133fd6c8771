//! This process's own admission: the question rate (a keyed GCRA limiter from `governor`) and the
//! stream slots. It decides alone without REDIS_URL, and while Redis is away.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock, Reference},
    middleware::StateInformationMiddleware,
    nanos::Nanos,
    state::{
        StateStore,
        keyed::{DashMapStateStore, ShrinkableKeyedStateStore},
    },
};

use super::{
    admission::{Budget, Budgets, LimitsView},
    tokens::{Ask, Bucket, Decision, LocalReservation, LocalTokens, Reservation},
};
use crate::{
    client::{ClientId, Plan},
    config::Config,
    error::Refusal,
};

type Store = DashMapStateStore<ClientId>;

/// The rate limiter, with a read-only look at a client's state for `/api/limits`.
struct Rate {
    limiter: RateLimiter<ClientId, SharedStore, DefaultClock, StateInformationMiddleware>,
    store: SharedStore,
    clock: DefaultClock,
    /// The limiter's own zero point, so that a peek measures time as the limiter does.
    start: <DefaultClock as Clock>::Instant,
    limit: u32,
    /// The time one request's worth of budget takes to come back.
    period: Duration,
}

/// The state store, shared between the limiter and our peeks.
#[derive(Clone, Default)]
struct SharedStore(Arc<Store>);

impl StateStore for SharedStore {
    type Key = ClientId;

    fn measure_and_replace<T, F, E>(&self, key: &ClientId, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<ClientId> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

impl Rate {
    fn new(per_minute: u32, burst: u32) -> Option<Self> {
        let per_minute = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst).unwrap_or(per_minute);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        let clock = DefaultClock::default();
        let store = SharedStore::default();
        let start = clock.now();
        let limiter = RateLimiter::<ClientId, SharedStore, DefaultClock>::new(
            quota,
            store.clone(),
            clock.clone(),
        )
        .with_middleware::<StateInformationMiddleware>();
        Some(Self {
            limiter,
            store,
            clock,
            start,
            limit: burst.get(),
            period: quota.replenish_interval(),
        })
    }

    /// Spends one request of the client's budget, or says how long until one is back.
    fn check(&self, client: ClientId) -> Result<Budget, Duration> {
        match self.limiter.check_key(&client) {
            Ok(snapshot) => Ok(self.budget(snapshot.remaining_burst_capacity())),
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// The client's budget now, spending nothing.
    fn peek(&self, client: ClientId) -> Budget {
        // Returning `Err` leaves the state as it was: a read, not a spend.
        let tat = match self
            .store
            .measure_and_replace(&client, Err::<((), Nanos), _>)
        {
            Ok(()) => None,
            Err(tat) => tat,
        };
        let Some(tat) = tat else {
            return self.budget(self.limit);
        };
        let now = Duration::from(self.clock.now().duration_since(self.start));
        let ahead = Duration::from(tat).saturating_sub(now);
        let capacity = self.period * self.limit;
        let remaining = capacity.saturating_sub(ahead).as_nanos() / self.period.as_nanos().max(1);
        self.budget(
            u32::try_from(remaining)
                .unwrap_or(self.limit)
                .min(self.limit),
        )
    }

    fn budget(&self, remaining: u32) -> Budget {
        Budget {
            limit: self.limit,
            remaining,
            reset_secs: (self.period * (self.limit - remaining.min(self.limit)))
                .as_secs_f64()
                .ceil() as u64,
        }
    }
}

/// One plan's limiter (none: that plan has no rate limit), shared while it is used.
type PlanRate = Arc<Option<Rate>>;

/// How many streams each client, and the whole server, holds open.
#[derive(Default)]
struct Open {
    total: u32,
    per_client: HashMap<ClientId, u32>,
}

/// The server's limits: shared by the middleware, the stream handler and `/api/limits`.
pub struct Limits {
    rate: Option<Rate>,
    /// The server's own rate and burst, which `rate` holds.
    default_rate: (u32, u32),
    /// Limiters for the other rates users' tokens name: one per distinct rate and burst (a plan),
    /// not per user, so there are as many as the operator has plans.
    plan_rates: Mutex<HashMap<(u32, u32), PlanRate>>,
    open: Arc<Mutex<Open>>,
    max_streams: u32,
    tokens: LocalTokens,
    /// GLOBAL_TOKEN_BUDGET, when set.
    global: Option<Bucket>,
}

/// An open stream's place: released when dropped, however the stream ends.
pub struct StreamSlot {
    client: ClientId,
    open: Arc<Mutex<Open>>,
    /// Its token reservation, when a budget applies: settled by the slot's owner, or left spent.
    pub tokens: Option<LocalReservation>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

/// How often idle clients are forgotten, so the limiter's memory stays bounded.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

impl Limits {
    pub fn new(config: &Config) -> Self {
        Self {
            rate: Rate::new(config.rate_limit_per_minute, config.rate_limit_burst()),
            default_rate: (config.rate_limit_per_minute, config.rate_limit_burst()),
            plan_rates: Mutex::default(),
            open: Arc::default(),
            max_streams: config.max_streams,
            tokens: LocalTokens::default(),
            global: Bucket::new(
                config.global_token_budget,
                config.global_token_budget_window,
            ),
        }
    }

    /// The global bucket (GLOBAL_TOKEN_BUDGET), the same for every instance's settings.
    pub fn global_bucket(&self) -> Option<Bucket> {
        self.global
    }

    /// Runs `f` with the rate limiter of `plan`'s rate (none: no rate limit).
    fn with_rate<T>(&self, plan: Plan, f: impl FnOnce(Option<&Rate>) -> T) -> T {
        let rate = (plan.per_minute, plan.burst);
        if rate == self.default_rate {
            return f(self.rate.as_ref());
        }
        let limiter = Arc::clone(
            self.plan_rates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(rate)
                .or_insert_with(|| Arc::new(Rate::new(rate.0, rate.1))),
        );
        f(limiter.as_ref().as_ref())
    }

    /// Every rate limiter: the server's and the plans'.
    fn rates(&self) -> Vec<PlanRate> {
        self.plan_rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Spends one question of the client's rate, reserves the most its answer can cost of the
    /// token budgets and takes a stream slot, or refuses and spends nothing of any of them; the
    /// answer's `max_tokens` lowered to fit, when the budget runs low.
    pub fn admit(
        &self,
        client: ClientId,
        plan: Plan,
        ask: Ask,
    ) -> Result<(StreamSlot, Budgets, Option<u32>), (Refusal, Budgets)> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = plan_bucket(plan);
        let tokens_now = bucket.map(|b| self.tokens.view(client, b));
        let refused = |refusal: Refusal, rate: Option<Budget>| {
            crate::metrics::refused(&refusal);
            Err((
                refusal,
                Budgets {
                    rate,
                    tokens: tokens_now,
                },
            ))
        };
        // The rate first: a question refused for it hears of the rate, whatever else refuses. An
        // empty budget is checked (which spends nothing when it refuses) for its wait.
        let mut spent = None;
        let rate_now = self.with_rate(plan, |rate| {
            let rate = rate?;
            let peek = rate.peek(client);
            if peek.remaining > 0 {
                return Some(Ok(peek));
            }
            Some(match rate.check(client) {
                Ok(budget) => {
                    spent = Some(budget);
                    Ok(budget)
                }
                Err(wait) => Err((wait, rate.budget(0).waiting(wait))),
            })
        });
        let rate_now = match rate_now {
            Some(Err((wait, budget))) => {
                return refused(Refusal::RateLimited { retry_after: wait }, Some(budget));
            }
            Some(Ok(budget)) => Some(budget),
            None => None,
        };
        let decision = self.decide_tokens(client, plan, ask);
        if let Some(refusal) = decision.and_then(Decision::refusal) {
            return refused(refusal, rate_now);
        }
        let (reserve, cap) = match decision {
            Some(Decision::Reserve { tokens, cap }) => (Some(tokens), cap),
            _ => (None, None),
        };
        if open.total >= self.max_streams {
            return refused(Refusal::AtCapacity, rate_now);
        }
        if open.per_client.get(&client).copied().unwrap_or(0) >= plan.max_streams {
            return refused(Refusal::TooManyStreams(plan.max_streams), rate_now);
        }
        let rate = match spent {
            Some(budget) => Some(budget),
            None => match self.with_rate(plan, |rate| {
                rate.map(|rate| (rate.check(client), rate.budget(0)))
            }) {
                Some((Err(wait), empty)) => {
                    return refused(
                        Refusal::RateLimited { retry_after: wait },
                        Some(empty.waiting(wait)),
                    );
                }
                Some((Ok(budget), _)) => Some(budget),
                None => None,
            },
        };
        let tokens = reserve.map(|tokens| {
            self.tokens.reserve(
                client,
                Reservation {
                    tokens,
                    client: bucket,
                    global: self.global,
                },
            )
        });
        let budgets = Budgets {
            rate,
            tokens: bucket.map(|b| self.tokens.view(client, b)),
        };
        *open.per_client.entry(client).or_default() += 1;
        open.total += 1;
        Ok((
            StreamSlot {
                client,
                open: Arc::clone(&self.open),
                tokens,
            },
            budgets,
            cap,
        ))
    }

    /// What the token budgets decide for `ask` now, spending nothing; `None` when no budget
    /// applies (neither the client's nor the service's).
    pub fn decide_tokens(&self, client: ClientId, plan: Plan, ask: Ask) -> Option<Decision> {
        let bucket = plan_bucket(plan);
        (bucket.is_some() || self.global.is_some())
            .then(|| self.tokens.decide(client, ask, (bucket, self.global)))
    }

    /// The client's token budget now, spending nothing; `None` without one.
    pub fn tokens(&self, client: ClientId, plan: Plan) -> Option<super::admission::TokenBudget> {
        plan_bucket(plan).map(|b| self.tokens.view(client, b))
    }

    /// The client's budget now, spending nothing; `None` without a rate limit.
    pub fn budget(&self, client: ClientId, plan: Plan) -> Option<Budget> {
        self.with_rate(plan, |rate| rate.map(|rate| rate.peek(client)))
    }

    pub fn view(&self, client: ClientId, plan: Plan, config: &Config) -> LimitsView {
        let budget = self.budget(client, plan);
        let streams_open = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .per_client
            .get(&client)
            .copied()
            .unwrap_or(0);
        LimitsView {
            limit: budget.map_or(0, |b| b.limit),
            remaining: budget.map_or(0, |b| b.remaining),
            reset_secs: budget.map_or(0, |b| b.reset_secs),
            streams_open,
            max_streams_per_client: plan.max_streams,
            max_query_chars: config.max_query_chars,
            tokens: self.tokens(client, plan),
        }
    }

    /// Forgets clients whose budget is full again; returns how many are still remembered.
    pub fn forget_idle_clients(&self) -> usize {
        self.tokens.forget_full();
        let forget = |rate: &Rate| {
            rate.limiter.retain_recent();
            rate.limiter.shrink_to_fit();
            rate.limiter.len()
        };
        let plans: usize = self
            .rates()
            .iter()
            .filter_map(|rate| rate.as_ref().as_ref())
            .map(forget)
            .sum();
        self.rate.as_ref().map_or(0, forget) + plans
    }

    /// Clients the rate limiters remember.
    pub fn tracked_clients(&self) -> usize {
        let plans: usize = self
            .rates()
            .iter()
            .filter_map(|rate| rate.as_ref().as_ref())
            .map(|rate| rate.limiter.len())
            .sum();
        self.rate.as_ref().map_or(0, |rate| rate.limiter.len()) + plans
    }
}

/// A plan's token bucket; `None` when it has no budget.
pub fn plan_bucket(plan: Plan) -> Option<Bucket> {
    Bucket::new(plan.tokens, plan.tokens_window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(text: &str) -> ClientId {
        ClientId::from_ip(text.parse().unwrap_or_else(|_| panic!("{text}")))
    }

    #[test]
    fn a_budget_refills_one_question_per_period_and_says_when_it_is_full() {
        // 6 a minute, burst 3: one question every 10 s.
        let Some(rate) = Rate::new(6, 3) else {
            panic!("a rate")
        };
        assert_eq!(
            rate.budget(3),
            Budget {
                limit: 3,
                remaining: 3,
                reset_secs: 0
            }
        );
        assert_eq!(rate.budget(1).reset_secs, 20);
        assert_eq!(rate.budget(0).reset_secs, 30);
    }

    #[test]
    fn spending_the_burst_leaves_a_wait_of_one_period_and_a_peek_spends_nothing() {
        let Some(rate) = Rate::new(6, 2) else {
            panic!("a rate")
        };
        let me = client("192.0.2.1");
        assert_eq!(rate.peek(me).remaining, 2);
        assert_eq!(rate.check(me).map(|b| b.remaining), Ok(1));
        assert_eq!(rate.peek(me).remaining, 1, "a peek spends nothing");
        assert_eq!(rate.check(me).map(|b| b.remaining), Ok(0));
        let Err(wait) = rate.check(me) else {
            panic!("refused")
        };
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert_eq!(rate.peek(client("192.0.2.2")).remaining, 2, "per client");
    }

    #[test]
    fn no_rate_is_no_limiter() {
        assert!(Rate::new(0, 5).is_none());
    }
}
