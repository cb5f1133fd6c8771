//! A breaker per upstream, when a fallback is configured: after UPSTREAM_BREAKER_FAILURES failures
//! in a row before the first token, the upstream is not tried for UPSTREAM_BREAKER_OPEN_SECS; then
//! one question probes it (half-open) while the others still go elsewhere, and the probe decides.
//! Per instance: each keeps its own, so an instance learns of an outage from its own questions.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use super::{Role, Target};

/// One upstream's breaker, and who it stands for (named in its log lines).
pub struct Breaker {
    upstream: Role,
    model: String,
    /// The base URL without credentials, query or fragment.
    url: String,
    failures_to_open: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// Not tried until `until`; the first question after it probes.
    Open {
        until: Instant,
    },
    /// The open time is over and one question is trying the upstream.
    Probing,
}

/// How a pass was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// The breaker was closed.
    Closed,
    /// The one question that probes a breaker whose open time is over.
    Probe,
    /// Past an open breaker, because the other upstream's is open too: nowhere else to go.
    Forced,
}

/// What a pass found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The upstream's first event came.
    Success,
    /// It failed before its first event.
    Failure,
    /// The question went away first (a cancel, a client gone, the deadline): not counted.
    Abandoned,
}

/// What a settled pass changed, to log and gauge outside the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Opened,
    OpenedAgain,
    Closed,
    Nothing,
}

/// Leave to try the upstream once. Tell the breaker how it went; dropped untold, it counts for
/// nothing (and a probe's turn goes to the next question).
pub struct Pass {
    breaker: Arc<Breaker>,
    admission: Admission,
    settled: bool,
}

impl Breaker {
    pub fn new(target: &Target, failures_to_open: u32, open_for: Duration) -> Arc<Self> {
        let mut url = target.base_url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        crate::metrics::breaker_open(target.role.name(), false);
        Arc::new(Self {
            upstream: target.role,
            model: target.model.clone(),
            url: url.to_string(),
            failures_to_open,
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        })
    }

    pub fn upstream(&self) -> Role {
        self.upstream
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pass to try the upstream: while closed, or as the one probe once the open time is over;
    /// `None` while it is open (or another question is probing it).
    pub fn admit(self: &Arc<Self>) -> Option<Pass> {
        let admission = {
            let mut state = self.lock();
            match *state {
                State::Closed { .. } => Admission::Closed,
                State::Open { until } if Instant::now() >= until => {
                    *state = State::Probing;
                    Admission::Probe
                }
                State::Open { .. } | State::Probing => return None,
            }
        };
        Some(self.pass(admission))
    }

    /// A pass whatever the state, for when the other upstream is open too: a success closes the
    /// breaker, so that recovery never waits on our own bookkeeping.
    pub fn force(self: &Arc<Self>) -> Pass {
        self.pass(Admission::Forced)
    }

    fn pass(self: &Arc<Self>, admission: Admission) -> Pass {
        Pass {
            breaker: Arc::clone(self),
            admission,
            settled: false,
        }
    }

    fn settle(&self, admission: Admission, outcome: Outcome) {
        let change = {
            let mut state = self.lock();
            let (next, change) = step(
                *state,
                admission,
                outcome,
                Instant::now(),
                (self.failures_to_open, self.open_for),
            );
            *state = next;
            change
        };
        let upstream = self.upstream.name();
        let open_secs = self.open_for.as_secs_f64();
        match change {
            Change::Opened => {
                crate::metrics::breaker_open(upstream, true);
                tracing::warn!(
                    upstream,
                    model = %self.model,
                    url = %self.url,
                    failures = self.failures_to_open,
                    open_secs,
                    "upstream breaker opened: questions skip this upstream until a probe succeeds"
                );
            }
            Change::OpenedAgain => {
                tracing::debug!(
                    upstream,
                    open_secs,
                    "upstream probe failed; breaker open again"
                );
            }
            Change::Closed => {
                crate::metrics::breaker_open(upstream, false);
                tracing::info!(
                    upstream,
                    model = %self.model,
                    url = %self.url,
                    "upstream breaker closed: questions go to this upstream again"
                );
            }
            Change::Nothing => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The breaker's next state after a pass given as `admission` found `outcome`. A pass given
/// before the state changed under it is heard only where it still means something: a success
/// or failure while closed, the probe's verdict while probing, a forced success whenever.
fn step(
    state: State,
    admission: Admission,
    outcome: Outcome,
    now: Instant,
    (failures_to_open, open_for): (u32, Duration),
) -> (State, Change) {
    match (state, admission, outcome) {
        (State::Closed { .. }, _, Outcome::Success) => {
            (State::Closed { failures: 0 }, Change::Nothing)
        }
        (State::Closed { failures }, _, Outcome::Failure) => {
            let failures = failures + 1;
            if failures >= failures_to_open {
                (
                    State::Open {
                        until: now + open_for,
                    },
                    Change::Opened,
                )
            } else {
                (State::Closed { failures }, Change::Nothing)
            }
        }
        (State::Probing, Admission::Probe, Outcome::Success)
        | (State::Open { .. } | State::Probing, Admission::Forced, Outcome::Success) => {
            (State::Closed { failures: 0 }, Change::Closed)
        }
        (State::Probing, Admission::Probe, Outcome::Failure) => (
            State::Open {
                until: now + open_for,
            },
            Change::OpenedAgain,
        ),
        // The probe's question went away: the next question probes instead.
        (State::Probing, Admission::Probe, Outcome::Abandoned) => {
            (State::Open { until: now }, Change::Nothing)
        }
        (state, _, _) => (state, Change::Nothing),
    }
}

impl Pass {
    /// The upstream's breaker, and who it stands for.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The upstream's first event came.
    pub fn succeeded(mut self) {
        self.settle(Outcome::Success);
    }

    /// The upstream failed before its first event.
    pub fn failed(mut self) {
        self.settle(Outcome::Failure);
    }

    fn settle(&mut self, outcome: Outcome) {
        self.settled = true;
        self.breaker.settle(self.admission, outcome);
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        // Only a probe's going away changes anything; the others skip the lock.
        if !self.settled && self.admission == Admission::Probe {
            self.breaker.settle(self.admission, Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: (u32, Duration) = (2, Duration::from_secs(30));

    fn run(start: State, passes: &[(Admission, Outcome)]) -> (State, Vec<Change>) {
        let now = Instant::now();
        let mut state = start;
        let mut changes = Vec::new();
        for &(admission, outcome) in passes {
            let (next, change) = step(state, admission, outcome, now, LIMITS);
            state = next;
            changes.push(change);
        }
        (state, changes)
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_between_them_starts_the_count_again() {
        let closed = State::Closed { failures: 0 };
        let (state, _) = run(
            closed,
            &[
                (Admission::Closed, Outcome::Failure),
                (Admission::Closed, Outcome::Success),
                (Admission::Closed, Outcome::Failure),
            ],
        );
        assert_eq!(state, State::Closed { failures: 1 });
        let (state, changes) = run(state, &[(Admission::Closed, Outcome::Failure)]);
        assert!(matches!(state, State::Open { .. }));
        assert_eq!(changes, [Change::Opened]);
    }

    #[test]
    fn a_cancelled_question_counts_for_nothing() {
        let (state, _) = run(
            State::Closed { failures: 1 },
            &[(Admission::Closed, Outcome::Abandoned)],
        );
        assert_eq!(state, State::Closed { failures: 1 });
    }

    #[test]
    fn the_probe_decides_and_an_abandoned_probe_leaves_the_turn_to_the_next_question() {
        let now = Instant::now();
        let (state, changes) = run(State::Probing, &[(Admission::Probe, Outcome::Success)]);
        assert_eq!(
            (state, changes[0]),
            (State::Closed { failures: 0 }, Change::Closed)
        );
        let (state, _) = run(State::Probing, &[(Admission::Probe, Outcome::Failure)]);
        assert!(matches!(state, State::Open { until } if until >= now + LIMITS.1));
        let (state, _) = run(State::Probing, &[(Admission::Probe, Outcome::Abandoned)]);
        assert!(matches!(state, State::Open { until } if until <= Instant::now()));
    }

    #[test]
    fn late_verdicts_of_passes_given_before_it_opened_change_nothing() {
        let open = State::Open {
            until: Instant::now() + LIMITS.1,
        };
        let (state, changes) = run(
            open,
            &[
                (Admission::Closed, Outcome::Failure),
                (Admission::Closed, Outcome::Success),
            ],
        );
        assert_eq!(state, open);
        assert_eq!(changes, [Change::Nothing, Change::Nothing]);
    }

    #[test]
    fn a_forced_success_closes_an_open_breaker_and_a_forced_failure_leaves_it_as_it_was() {
        let open = State::Open {
            until: Instant::now() + LIMITS.1,
        };
        let (state, _) = run(open, &[(Admission::Forced, Outcome::Failure)]);
        assert_eq!(state, open);
        let (state, changes) = run(open, &[(Admission::Forced, Outcome::Success)]);
        assert_eq!(
            (state, changes[0]),
            (State::Closed { failures: 0 }, Change::Closed)
        );
    }
}
