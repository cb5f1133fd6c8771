//! Token budgets: a token bucket per client, and one for the whole service, kept as the time at
//! which the bucket is full again ("theoretical arrival time", in whole milliseconds), exactly as
//! the Redis scripts keep it (see `store::scripts`), so that both sides of the store decide alike.
//! Admission reserves the most an answer can cost; the end of the answer settles it to what it
//! cost, and the rest comes back at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::admission::TokenBudget;
use crate::{client::ClientId, error::Refusal};

/// A bucket's size and the time it takes to refill from empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket {
    pub capacity: u64,
    pub window_ms: u64,
}

impl Bucket {
    /// `None` for a capacity of 0: no budget.
    pub fn new(capacity: u64, window: Duration) -> Option<Self> {
        (capacity > 0).then(|| Self {
            capacity,
            window_ms: (window.as_millis() as u64).max(1),
        })
    }

    /// The milliseconds `tokens` take to come back, rounded up (against the client, by under 1 ms).
    pub fn ms(&self, tokens: u64) -> u64 {
        let ms =
            (u128::from(tokens) * u128::from(self.window_ms)).div_ceil(u128::from(self.capacity));
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// The tokens there when the bucket is full again `ahead` ms from now.
    pub fn remaining(&self, ahead: u64) -> u64 {
        let left = u128::from(self.window_ms.saturating_sub(ahead));
        (u128::from(self.capacity) * left / u128::from(self.window_ms)) as u64
    }

    /// The milliseconds until `need` tokens are there (the whole window if they never fit).
    pub fn wait_for(&self, ahead: u64, need: u64) -> u64 {
        if need > self.capacity {
            return self.window_ms;
        }
        ahead.saturating_sub(self.window_ms - self.ms(need))
    }

    /// What a client is shown of this bucket.
    pub fn view(&self, ahead: u64) -> TokenBudget {
        TokenBudget {
            limit: self.capacity,
            remaining: self.remaining(ahead),
            reset_secs: ahead.div_ceil(1000),
            window_secs: self.window_ms.div_ceil(1000),
        }
    }
}

/// What a question asks of the budgets: its prompt (estimated), the answer's `max_tokens`, and
/// the fewest answer tokens worth admitting it for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub prompt: u64,
    pub answer: u32,
    pub min_answer: u32,
}

/// What the budgets decide for one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Reserve `tokens`; with `cap`, the answer's `max_tokens` lowered to fit.
    Reserve { tokens: u64, cap: Option<u32> },
    /// Not even a minimum answer fits: enough is back in `wait_ms` (the service's budget when
    /// `global`).
    Exhausted { wait_ms: u64, global: bool },
}

impl Decision {
    /// The refusal an exhausted budget answers with (the client's `429`, the service's `503`);
    /// `None` when the question may be asked.
    pub fn refusal(self) -> Option<Refusal> {
        let Self::Exhausted { wait_ms, global } = self else {
            return None;
        };
        let retry_after = Duration::from_millis(wait_ms);
        Some(if global {
            Refusal::ServiceBudgetExhausted { retry_after }
        } else {
            Refusal::TokenBudgetExhausted { retry_after }
        })
    }
}

/// Decides a question against the client's bucket and the service's (each with how far ahead of
/// now it is full again), the client's first.
pub fn decide(ask: Ask, client: Option<(Bucket, u64)>, global: Option<(Bucket, u64)>) -> Decision {
    let want = ask.prompt + u64::from(ask.answer);
    let min = ask.prompt + u64::from(ask.min_answer);
    let mut tokens = want;
    for (bucket, ahead, global) in [(client, false), (global, true)]
        .into_iter()
        .filter_map(|(b, global)| b.map(|(bucket, ahead)| (bucket, ahead, global)))
    {
        let remaining = bucket.remaining(ahead);
        if remaining < min {
            return Decision::Exhausted {
                wait_ms: bucket.wait_for(ahead, min),
                global,
            };
        }
        tokens = tokens.min(remaining);
    }
    let cap = (tokens < want).then(|| u32::try_from(tokens - ask.prompt).unwrap_or(u32::MAX));
    Decision::Reserve { tokens, cap }
}

/// The budgets one admission holds, for its settling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub tokens: u64,
    pub client: Option<Bucket>,
    pub global: Option<Bucket>,
}

/// What an answer cost, and whether the upstream said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub prompt: u64,
    pub completion: u64,
    /// `usage` (the upstream's figures) or `estimate` (characters / 4).
    pub source: &'static str,
}

impl Cost {
    pub fn total(&self) -> u64 {
        self.prompt + self.completion
    }
}

/// This process's token buckets (without REDIS_URL, and while Redis is away).
pub struct LocalTokens {
    start: Instant,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Each client's full-again time, in ms since `start`; absent: full.
    clients: HashMap<ClientId, u64>,
    global: u64,
}

impl Default for LocalTokens {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            state: Arc::default(),
        }
    }
}

/// A reservation in this process, settled (or left spent, if never settled) by its slot.
pub struct LocalReservation {
    pub reservation: Reservation,
    client: ClientId,
    start: Instant,
    state: Arc<Mutex<State>>,
}

impl LocalTokens {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides `ask`, spending nothing.
    pub fn decide(
        &self,
        client: ClientId,
        ask: Ask,
        buckets: (Option<Bucket>, Option<Bucket>),
    ) -> Decision {
        let now = self.now();
        let state = self.lock();
        let ahead = |tat: u64| tat.saturating_sub(now);
        decide(
            ask,
            buckets
                .0
                .map(|b| (b, ahead(state.clients.get(&client).copied().unwrap_or(0)))),
            buckets.1.map(|b| (b, ahead(state.global))),
        )
    }

    /// Spends what `decide` allowed (the caller holds admission's lock in between).
    pub fn reserve(&self, client: ClientId, reservation: Reservation) -> LocalReservation {
        let now = self.now();
        let mut state = self.lock();
        if let Some(bucket) = reservation.client {
            let tat = state.clients.entry(client).or_default();
            *tat = (*tat).max(now) + bucket.ms(reservation.tokens);
        }
        if let Some(bucket) = reservation.global {
            state.global = state.global.max(now) + bucket.ms(reservation.tokens);
        }
        LocalReservation {
            reservation,
            client,
            start: self.start,
            state: Arc::clone(&self.state),
        }
    }

    /// The client's budget now, spending nothing.
    pub fn view(&self, client: ClientId, bucket: Bucket) -> TokenBudget {
        let now = self.now();
        let tat = self.lock().clients.get(&client).copied().unwrap_or(0);
        bucket.view(tat.saturating_sub(now))
    }

    /// Forgets the clients whose budget is full again.
    pub fn forget_full(&self) {
        let now = self.now();
        self.lock().clients.retain(|_, tat| *tat > now);
    }
}

impl LocalReservation {
    /// Replaces the reservation by what the answer cost; the client's budget after it.
    pub fn settle(self, cost: u64) -> Option<TokenBudget> {
        let now = self.start.elapsed().as_millis() as u64;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let reserved = self.reservation.tokens;
        let moved = |tat: &mut u64, bucket: Bucket| {
            let (held, cost) = (bucket.ms(reserved), bucket.ms(cost));
            *tat = if cost >= held {
                (*tat).max(now) + (cost - held)
            } else {
                tat.saturating_sub(held - cost)
            };
        };
        if let Some(bucket) = self.reservation.global {
            moved(&mut state.global, bucket);
        }
        let bucket = self.reservation.client?;
        let tat = state.clients.entry(self.client).or_default();
        moved(tat, bucket);
        Some(bucket.view(tat.saturating_sub(now)))
    }
}

/// The estimate for text without usage: its characters / 4, rounded up.
pub fn estimate(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(capacity: u64, secs: u64) -> Bucket {
        Bucket::new(capacity, Duration::from_secs(secs)).unwrap_or_else(|| panic!("a bucket"))
    }

    #[test]
    fn half_a_window_after_spending_it_all_half_is_back() {
        let b = bucket(1000, 100);
        assert_eq!(b.remaining(0), 1000);
        assert_eq!(b.remaining(b.ms(1000)), 0);
        assert_eq!(b.remaining(b.ms(1000) / 2), 500);
        assert_eq!(b.remaining(b.ms(300)), 700, "spent exactly");
    }

    #[test]
    fn a_wait_for_a_minimum_answer_is_exactly_long_enough() {
        let b = bucket(1000, 100);
        let ahead = b.ms(1000);
        let wait = b.wait_for(ahead, 74);
        assert!(b.remaining(ahead - wait) >= 74);
        assert!(
            b.remaining(ahead - wait + 1) < 74,
            "not a millisecond longer"
        );
        assert_eq!(b.wait_for(0, 74), 0);
        assert_eq!(b.wait_for(0, 1001), 100_000, "never fits: the whole window");
    }

    #[test]
    fn a_low_budget_lowers_max_tokens_and_an_empty_one_refuses() {
        let ask = Ask {
            prompt: 10,
            answer: 800,
            min_answer: 64,
        };
        let b = bucket(1000, 100);
        assert_eq!(
            decide(ask, Some((b, 0)), None),
            Decision::Reserve {
                tokens: 810,
                cap: None
            }
        );
        assert_eq!(
            decide(ask, Some((b, b.ms(500))), None),
            Decision::Reserve {
                tokens: 500,
                cap: Some(490)
            }
        );
        assert!(matches!(
            decide(ask, Some((b, b.ms(950))), None),
            Decision::Exhausted { global: false, .. }
        ));
        assert!(matches!(
            decide(ask, None, Some((b, b.ms(950)))),
            Decision::Exhausted { global: true, .. }
        ));
    }

    #[test]
    fn settling_returns_the_unused_reservation_at_once() {
        let tokens = LocalTokens::default();
        let me = ClientId::from_ip(std::net::Ipv4Addr::LOCALHOST.into());
        let b = bucket(10_000, 86_400);
        let held = tokens.reserve(
            me,
            Reservation {
                tokens: 810,
                client: Some(b),
                global: None,
            },
        );
        assert_eq!(tokens.view(me, b).remaining, 10_000 - 810);
        let after = held.settle(123).map(|budget| budget.remaining);
        assert_eq!(after, Some(10_000 - 123));
    }
}
