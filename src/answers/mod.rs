//! Answers that outlive a connection. A producer task per answer owns the upstream call, the stream
//! slot, the deadline, the grace after its last reader and the cancel; it appends our events to the
//! answer's log. A reader replays the log from any event and follows its live tail, here or, through
//! the shared store, on another instance. This file is the registry: the answers this process
//! produces, resume, cancel, and retention (finished answers stay for RESUME_RETENTION_SECS, within
//! RESUME_MAX_BYTES); `presence` is who reads each answer.

mod control;
mod presence;
mod producer;
mod reader;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use actix_web_lab::sse;
use futures_util::Stream;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

pub use presence::Presence;

use crate::store::log::{Kind, Log};
use crate::{
    client::{Client, Owner},
    config::Config,
    llm::EventStream,
    store::{Slot, Store},
    telemetry::StreamReport,
};

/// One answer produced by this process.
pub struct Answer {
    pub id: String,
    question: String,
    /// The conversation whose turn this answer is.
    conversation: String,
    /// Who alone may resume or cancel it (anyone with its id, when anonymous).
    owner: Owner,
    pub log: Arc<Log>,
    control: control::Control,
    presence: watch::Sender<Presence>,
    resumed: std::sync::atomic::AtomicU32,
    /// With traces on: the `traceparent` of its chat span, for a resume's span to link to.
    traceparent: Option<String>,
}

/// The settings answers live by.
#[derive(Clone)]
struct Settings {
    retention: Duration,
    grace: Duration,
    /// RESUME_MAX_BYTES: what the running answers and the finished ones kept for resuming hold
    /// together. A running answer makes room by evicting the oldest finished ones; one that would
    /// not fit even then is cut (`too_long`). A real answer is `LLM_MAX_TOKENS` tokens, kilobytes;
    /// this stops an upstream that streams without end (the log is kept for resuming, so it does
    /// not hold the upstream back by itself).
    max_bytes: usize,
    keepalive: Duration,
    budget: Duration,
}

#[derive(Default)]
struct Registry {
    answers: HashMap<String, Arc<Answer>>,
    /// Finished answers, oldest first, with the time they may be forgotten.
    finished: VecDeque<(Instant, String)>,
    finished_bytes: usize,
    /// The room the running answers have taken for their logs.
    running_bytes: usize,
    /// Readers here of answers produced elsewhere, so that a takeover signal reaches them.
    followers: HashMap<String, watch::Sender<Presence>>,
}

/// Every answer this process produces or follows; cheap to clone.
#[derive(Clone)]
pub struct Answers {
    registry: Arc<Mutex<Registry>>,
    store: Arc<Store>,
    settings: Settings,
    shutdown: CancellationToken,
}

/// What a resume finds.
pub enum Resume<S> {
    /// The rest of the answer, to send, and the `traceparent` of the answer's chat span (traces on).
    Rest(S, Option<String>),
    /// Nothing to send: unknown, expired, another question, or the client saw the end.
    Nothing,
}

impl Answers {
    pub fn new(config: &Config, store: Arc<Store>, shutdown: CancellationToken) -> Self {
        let registry: Arc<Mutex<Registry>> = Arc::default();
        let running = Arc::clone(&registry);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            let registry = running.lock().unwrap_or_else(PoisonError::into_inner);
            for answer in registry.answers.values() {
                answer.control.shut_down();
            }
        });
        Self {
            registry,
            store,
            settings: Settings {
                retention: config.resume_retention,
                grace: config.resume_grace,
                max_bytes: usize::try_from(config.resume_max_bytes).unwrap_or(usize::MAX),
                keepalive: config.keepalive,
                budget: config.stream_timeout,
            },
            shutdown,
        }
    }

    /// Starts producing an answer and returns its first reader, from the opening event on.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one part of what an answer owns"
    )]
    pub fn start(
        &self,
        id: String,
        question: String,
        (conversation, turn): (String, u32),
        client: &Client,
        slot: Slot,
        events: EventStream,
        report: StreamReport,
    ) -> impl Stream<Item = sse::Event> + use<> {
        self.sweep();
        let (presence, _) = watch::channel(Presence {
            reader: 0,
            attached: false,
        });
        let answer = Arc::new(Answer {
            id: id.clone(),
            question,
            conversation,
            owner: client.owner(),
            log: Arc::default(),
            control: control::Control::default(),
            presence,
            resumed: 0.into(),
            traceparent: report.traceparent(),
        });
        if self.shutdown.is_cancelled() {
            answer.control.shut_down();
        }
        answer.log.append(
            Kind::Opening,
            crate::sse::opening(&id, &answer.conversation, turn).into(),
        );
        self.lock().answers.insert(id, Arc::clone(&answer));
        self.store.mirror(
            &answer.id,
            (&answer.question, answer.traceparent.as_deref()),
            (client.id, answer.owner),
            Arc::clone(&answer.log),
        );
        let reader = reader::local(Arc::clone(&answer), None, self.clone());
        tokio::spawn(tracing::Instrument::in_current_span(producer::produce(
            answer,
            events,
            slot,
            self.clone(),
            report,
        )));
        reader
    }

    /// The rest of answer `id` after event `after`, if it is known, asked with `question`,
    /// `owner`'s, and not over for this client.
    pub async fn resume(
        &self,
        id: &str,
        after: u64,
        question: &str,
        owner: Owner,
    ) -> Resume<impl Stream<Item = sse::Event> + use<>> {
        self.sweep();
        let local = self.lock().answers.get(id).cloned();
        if let Some(answer) = local {
            // Nothing left after `after`, or an event this answer never sent.
            let over = answer
                .log
                .last()
                .is_some_and(|(last, end)| (end && last <= after) || after > last);
            if answer.question != question || answer.owner != owner || over {
                return Resume::Nothing;
            }
            answer
                .resumed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let traceparent = answer.traceparent.clone();
            return Resume::Rest(
                futures_util::future::Either::Left(reader::local(
                    answer,
                    Some(after),
                    self.clone(),
                )),
                traceparent,
            );
        }
        match self.store.follow(id, after, question, owner).await {
            Some(follow) => {
                let traceparent = follow.traceparent.clone();
                Resume::Rest(
                    futures_util::future::Either::Right(reader::remote(
                        id.to_owned(),
                        follow,
                        self.clone(),
                    )),
                    traceparent,
                )
            }
            None => Resume::Nothing,
        }
    }

    /// Stops `owner`'s answer `id` wherever it runs; false when no instance knows it as theirs.
    pub async fn cancel(&self, id: &str, owner: Owner) -> bool {
        let local = self.lock().answers.get(id).cloned();
        if let Some(answer) = local {
            if answer.owner != owner {
                return false;
            }
            answer.control.cancel();
            return true;
        }
        self.store.cancel_elsewhere(id, owner).await
    }

    /// Grows a running answer's `room` to hold its `kept` bytes and a step more, evicting the
    /// oldest finished answers while the store is over RESUME_MAX_BYTES; false when the answer would
    /// not fit even with every finished answer evicted.
    fn make_room(&self, room: &mut usize, kept: usize) -> bool {
        let max = self.settings.max_bytes;
        let step = kept.clamp(ROOM_FIRST, ROOM_STEP);
        let wanted = kept.saturating_add(step).min(max).max(kept);
        let mut registry = self.lock();
        registry.running_bytes = registry.running_bytes - *room + wanted;
        *room = wanted;
        let others = registry.running_bytes - wanted;
        if others.saturating_add(kept) > max {
            return false;
        }
        let now = Instant::now();
        self.evict(&mut registry, now);
        true
    }

    /// The producer of `answer` is done: give back its `room`, keep it for the retention, then
    /// forget it; forget the oldest finished answers first when over RESUME_MAX_BYTES.
    fn finished(&self, answer: &Answer, room: usize) {
        let now = Instant::now();
        let mut registry = self.lock();
        registry.running_bytes -= room;
        registry
            .finished
            .push_back((now + self.settings.retention, answer.id.clone()));
        registry.finished_bytes += answer.log.bytes();
        self.evict(&mut registry, now);
        let bytes = registry.finished_bytes;
        drop(registry);
        crate::metrics::store_bytes(bytes);
    }

    /// Forgets finished answers, oldest first, while their retention is over or the store holds
    /// more than RESUME_MAX_BYTES.
    fn evict(&self, registry: &mut Registry, now: Instant) {
        while let Some((until, id)) = registry.finished.front().cloned() {
            let over = registry.finished_bytes + registry.running_bytes > self.settings.max_bytes;
            if until > now && !over {
                break;
            }
            registry.finished.pop_front();
            if let Some(gone) = registry.answers.remove(&id) {
                registry.finished_bytes = registry.finished_bytes.saturating_sub(gone.log.bytes());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the finished answers whose retention is over (and the oldest while over RESUME_MAX_BYTES).
    fn sweep(&self) {
        self.evict(&mut self.lock(), Instant::now());
    }
}

/// How much room a running answer takes in the store at a time: as much again as it holds, from
/// 1 KiB up to 16 KiB, so a few calls for a long answer and none per event, while a short one
/// holds about a kilobyte (at 16 KiB from the first token, RESUME_MAX_BYTES' 64 MiB held only
/// 4 096 running answers, and the next ones were cut with `too_long` after one token).
const ROOM_FIRST: usize = 1 << 10;
const ROOM_STEP: usize = 16 << 10;

/// A reader's own id, to tell readers of one answer apart (not a secret).
fn new_reader_id() -> u64 {
    fastrand::u64(1..)
}
