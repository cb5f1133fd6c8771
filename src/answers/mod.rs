//! Answers that outlive a connection. A producer task per answer owns the upstream call, the stream
//! slot, the deadline, the grace after its last reader and the cancel; it appends our events to the
//! answer's log. A reader replays the log from any event and follows its live tail, here or, through
//! the shared store, on another instance. Finished answers stay for RESUME_RETENTION_SECS, within
//! RESUME_MAX_BYTES.

mod control;
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

use crate::store::log::{Kind, Log};
use crate::{
    client::{Client, Owner},
    config::Config,
    llm::EventStream,
    store::{Signal, Slot, Store},
    telemetry::StreamReport,
};

/// Who reads an answer now: the latest reader wins, and an older one still attached ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub reader: u64,
    pub attached: bool,
}

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
}

impl Answer {
    /// Changes who reads the answer (`change` says whether it did); the producer and the readers
    /// then look again.
    fn change_presence(&self, change: impl FnOnce(&mut Presence) -> bool) {
        if self.presence.send_if_modified(change) {
            self.control.presence_changed();
            self.log.wake();
        }
    }
}

/// The settings answers live by.
#[derive(Clone)]
struct Settings {
    retention: Duration,
    grace: Duration,
    max_bytes: usize,
    /// The most one answer's log may hold: a sixteenth of RESUME_MAX_BYTES (4 MiB by default). A
    /// real answer is `LLM_MAX_TOKENS` tokens, kilobytes; this only stops an upstream that streams
    /// without end (the log is kept for resuming, so it does not hold the upstream back by itself).
    max_answer_bytes: usize,
    keepalive: Duration,
    budget: Duration,
}

#[derive(Default)]
struct Registry {
    answers: HashMap<String, Arc<Answer>>,
    /// Finished answers, oldest first, with the time they may be forgotten.
    finished: VecDeque<(Instant, String)>,
    finished_bytes: usize,
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
    /// The rest of the answer, to send.
    Rest(S),
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
                retention: config.resume_retention(),
                grace: config.resume_grace(),
                max_bytes: usize::try_from(config.resume_max_bytes).unwrap_or(usize::MAX),
                max_answer_bytes: usize::try_from(config.resume_max_bytes / 16)
                    .unwrap_or(usize::MAX),
                keepalive: config.keepalive(),
                budget: config.stream_timeout(),
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
            &answer.question,
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
            return Resume::Rest(futures_util::future::Either::Left(reader::local(
                answer,
                Some(after),
                self.clone(),
            )));
        }
        match self.store.follow(id, after, question, owner).await {
            Some(follow) => Resume::Rest(futures_util::future::Either::Right(reader::remote(
                id.to_owned(),
                follow,
                self.clone(),
            ))),
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

    /// A signal from another instance.
    pub fn on_signal(&self, signal: Signal) {
        let registry = self.lock();
        match signal {
            Signal::Cancel(id) => {
                if let Some(answer) = registry.answers.get(&id) {
                    answer.control.cancel();
                }
            }
            Signal::Reader { id, reader } => {
                let presence = Presence {
                    reader,
                    attached: true,
                };
                if let Some(answer) = registry.answers.get(&id) {
                    answer.change_presence(|p| std::mem::replace(p, presence) != presence);
                }
                if let Some(follower) = registry.followers.get(&id) {
                    follower.send_replace(presence);
                }
            }
            Signal::Left { id, reader } => {
                let left = |p: &mut Presence| {
                    let mine = p.reader == reader && p.attached;
                    if mine {
                        p.attached = false;
                    }
                    mine
                };
                if let Some(answer) = registry.answers.get(&id) {
                    answer.change_presence(left);
                }
            }
        }
    }

    /// The producer of `answer` is done: keep it for the retention, then forget it; forget the
    /// oldest finished answers first when over RESUME_MAX_BYTES.
    fn finished(&self, answer: &Answer) {
        let now = Instant::now();
        let mut registry = self.lock();
        registry
            .finished
            .push_back((now + self.settings.retention, answer.id.clone()));
        registry.finished_bytes += answer.log.bytes();
        while let Some((until, id)) = registry.finished.front().cloned() {
            if until > now && registry.finished_bytes <= self.settings.max_bytes {
                break;
            }
            registry.finished.pop_front();
            if let Some(gone) = registry.answers.remove(&id) {
                registry.finished_bytes = registry.finished_bytes.saturating_sub(gone.log.bytes());
            }
        }
        let bytes = registry.finished_bytes;
        drop(registry);
        crate::metrics::store_bytes(bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a reader here of an answer produced elsewhere; the watch says when it is superseded.
    fn follower(&self, id: &str, presence: Presence) -> watch::Receiver<Presence> {
        let mut registry = self.lock();
        let sender = registry
            .followers
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(presence).0);
        sender.send_replace(presence);
        sender.subscribe()
    }

    /// Forgets a follower, unless a newer reader here took its place.
    fn unfollow(&self, id: &str, reader: u64) {
        let mut registry = self.lock();
        if registry
            .followers
            .get(id)
            .is_some_and(|sender| sender.borrow().reader == reader)
        {
            registry.followers.remove(id);
        }
    }

    /// Forgets the finished answers whose retention is over.
    fn sweep(&self) {
        let now = Instant::now();
        let mut registry = self.lock();
        while let Some((until, id)) = registry.finished.front().cloned() {
            if until > now {
                break;
            }
            registry.finished.pop_front();
            if let Some(gone) = registry.answers.remove(&id) {
                registry.finished_bytes = registry.finished_bytes.saturating_sub(gone.log.bytes());
            }
        }
    }
}

/// A reader's own id, to tell readers of one answer apart (not a secret).
fn new_reader_id() -> u64 {
    fastrand::u64(1..)
}
