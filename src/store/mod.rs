//! What instances share: admission (the rate and the stream slots), the answers' logs, and the
//! signals between instances (cancel, a new reader). In this process by default; on Redis with
//! REDIS_URL, falling back to this process's own limits and logs while Redis is away.

pub mod admission;
mod conversations;
pub mod local;
pub mod log;
mod redis;
mod scripts;
pub mod tokens;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    client::{ClientId, Owner, Plan},
    config::Config,
    error::Refusal,
    llm::Turn,
};
pub use admission::{Budget, Budgets, LimitsView, Refused, TokenBudget};
use conversations::{Begun, Conversations};
use local::{Limits, StreamSlot};
pub use redis::Follow;
use redis::{Lease, Redis};
use tokens::Decision;
pub use tokens::{Ask, Cost};

/// A signal from one instance to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Stop this answer.
    Cancel(String),
    /// A new reader of this answer: older ones end; the producer counts it as read.
    Reader { id: String, reader: u64 },
    /// This reader of this answer left.
    Left { id: String, reader: u64 },
}

/// An open stream's place, released when dropped: leased from Redis, or taken in this process (and,
/// with REDIS_URL, registered as a lease to take in Redis as soon as it answers again).
pub struct Slot {
    _local: Option<StreamSlot>,
    _lease: Option<Lease>,
    _open: OpenHere,
    /// The prompt's estimate it was admitted with, for a cost without usage.
    prompt: u64,
    /// Whether the answer's `max_tokens` was lowered to fit the token budget.
    capped: bool,
}

/// One stream open on this instance, whatever kind of slot it holds.
struct OpenHere(Arc<AtomicU32>);

impl OpenHere {
    fn new(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for OpenHere {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slot {
    /// The prompt's estimate (characters / 4) it was admitted with.
    pub fn prompt_estimate(&self) -> u64 {
        self.prompt
    }

    /// Whether the answer's `max_tokens` was lowered to fit the token budget.
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// Frees the slot and replaces its token reservation by what the answer cost, so that the
    /// rest returns to the budget at once; the client's token budget after it, when one applies.
    /// A slot dropped without settling frees its place and leaves its reservation spent.
    pub async fn settle(self, cost: &Cost) -> Option<TokenBudget> {
        let Self {
            _local: local,
            _lease: lease,
            _open: open,
            ..
        } = self;
        // Settled here: either in this process (admitted while Redis was away) or in Redis.
        let mut budget = None;
        if let Some(mut local) = local {
            if let Some(held) = local.tokens.take() {
                budget = held.settle(cost.total());
            }
            drop(local);
        }
        if let Some(lease) = lease {
            budget = lease.settle(cost.total()).await.or(budget);
        }
        drop(open);
        budget
    }
}

/// A stream admitted: its slot, the client's budgets after it (for the `RateLimit-*` headers),
/// and the answer's `max_tokens` lowered to what its token budget holds, when it is low.
pub struct Admitted {
    pub slot: Slot,
    pub budgets: Budgets,
    pub max_tokens: Option<u32>,
}

/// Where a question stands in its conversation.
#[derive(Debug)]
pub enum Conversation {
    /// It may be asked: its conversation (a new one when the asked one is unknown), its turn
    /// number and the earlier turns.
    Ready {
        id: String,
        turn: u32,
        history: Vec<Turn>,
    },
    /// An answer is still running in the asked conversation.
    Busy,
}

pub struct Store {
    limits: Limits,
    /// Streams open on this instance.
    open_here: Arc<AtomicU32>,
    redis: Option<Redis>,
    conversations: Conversations,
    /// How long a conversation stays marked busy if its answer's end is never recorded.
    busy_for: Duration,
    max_turns: usize,
    conversation_ttl: Duration,
}

impl Store {
    /// The store, and the signals other instances send (none without Redis).
    pub fn new(config: &Config) -> (Self, mpsc::UnboundedReceiver<Signal>) {
        let (signals_tx, signals) = mpsc::unbounded_channel();
        let redis = config
            .redis_url
            .as_ref()
            .and_then(|url| Redis::start(url, config, signals_tx));
        let store = Self {
            limits: Limits::new(config),
            open_here: Arc::default(),
            redis,
            // Conversations in this process get as many bytes as answers kept for resuming.
            conversations: Conversations::new(
                config.conversation_ttl,
                config.conversation_max_turns as usize,
                usize::try_from(config.resume_max_bytes).unwrap_or(usize::MAX),
            ),
            busy_for: config.stream_timeout + config.resume_grace + Duration::from_secs(10),
            max_turns: config.conversation_max_turns as usize,
            conversation_ttl: config.conversation_ttl,
        };
        (store, signals)
    }

    /// What keeps the shared store healthy while the server runs (a probe while Redis is down, the
    /// renewal of this instance's leases); `None` without Redis.
    pub fn upkeep(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.redis.clone().map(Redis::upkeep)
    }

    /// Spends one question of the client's rate, reserves the most its answer can cost of the
    /// token budgets and takes a stream slot, by its plan, or refuses and spends nothing.
    pub async fn admit(&self, client: ClientId, plan: Plan, ask: Ask) -> Result<Admitted, Refused> {
        if let Some(redis) = &self.redis
            && let Some(admission) = redis.admit(client, plan, ask).await
        {
            return admission.map(|(lease, budgets, max_tokens)| Admitted {
                slot: self.slot(None, Some(lease), (ask.prompt, max_tokens.is_some())),
                budgets,
                max_tokens,
            });
        }
        let (local, budgets, max_tokens) = self
            .limits
            .admit(client, plan, ask)
            .map_err(|(refusal, budgets)| Refused { refusal, budgets })?;
        // Taken while Redis is away: leased there as soon as it is back, so that the shared caps
        // count this stream again at once.
        let lease = self.redis.as_ref().map(|redis| redis.pending_lease(client));
        Ok(Admitted {
            slot: self.slot(Some(local), lease, (ask.prompt, max_tokens.is_some())),
            budgets,
            max_tokens,
        })
    }

    fn slot(
        &self,
        local: Option<StreamSlot>,
        lease: Option<Lease>,
        (prompt, capped): (u64, bool),
    ) -> Slot {
        Slot {
            _local: local,
            _lease: lease,
            _open: OpenHere::new(&self.open_here),
            prompt,
            capped,
        }
    }

    /// Streams open on this instance, whatever kind of slot they hold.
    pub fn streams_open_here(&self) -> u32 {
        self.open_here.load(Ordering::Relaxed)
    }

    /// This process's own limits (the rate limiter's memory, for its cleanup).
    pub fn local_limits(&self) -> &Limits {
        &self.limits
    }

    /// The client's budgets now, spending nothing.
    pub async fn budgets(&self, client: ClientId, plan: Plan) -> Budgets {
        if let Some(redis) = &self.redis
            && let Some((budgets, _)) = redis.peek(client, plan).await
        {
            return budgets;
        }
        Budgets {
            rate: self.limits.budget(client, plan),
            tokens: self.limits.tokens(client, plan),
        }
    }

    /// What the token budgets would refuse `ask` with now (the refusal a real ask would get, its
    /// wait included), spending nothing; `None` when they would admit it. On Redis while it
    /// answers, else this process's own budgets, as admission decides.
    pub async fn token_refusal(&self, client: ClientId, plan: Plan, ask: Ask) -> Option<Refusal> {
        if let Some(redis) = &self.redis
            && let Some(decision) = redis.decide(client, plan, ask).await
        {
            return decision.and_then(Decision::refusal);
        }
        self.limits
            .decide_tokens(client, plan, ask)
            .and_then(Decision::refusal)
    }

    /// What `/api/limits` tells a client about itself.
    pub async fn view(&self, client: ClientId, plan: Plan, config: &Config) -> LimitsView {
        let mut view = self.limits.view(client, plan, config);
        if let Some(redis) = &self.redis
            && let Some((budgets, open)) = redis.peek(client, plan).await
        {
            if let Some(budget) = budgets.rate {
                view.limit = budget.limit;
                view.remaining = budget.remaining;
                view.reset_secs = budget.reset_secs;
            }
            view.tokens = budgets.tokens;
            view.streams_open = open;
        }
        view
    }

    /// Copies an answer's log to Redis as it grows, so that other instances can resume it (and
    /// link their resume's span to the answer's `traceparent`, when traced).
    pub fn mirror(
        &self,
        id: &str,
        (question, traceparent): (&str, Option<&str>),
        (client, owner): (ClientId, Owner),
        log: Arc<log::Log>,
    ) {
        if let Some(redis) = &self.redis {
            redis.mirror(id, (question, traceparent), client, owner, log);
        }
    }

    /// Follows an answer produced by another instance, after event `after`, if it is there, asked
    /// with `question`, `owner`'s, and not over after `after`.
    pub async fn follow(
        &self,
        id: &str,
        after: u64,
        question: &str,
        owner: Owner,
    ) -> Option<Follow> {
        self.redis
            .as_ref()?
            .follow(id, after, question, owner)
            .await
    }

    /// Asks the other instances to stop answer `id`; false when none knows it as `owner`'s.
    pub async fn cancel_elsewhere(&self, id: &str, owner: Owner) -> bool {
        match &self.redis {
            Some(redis) => redis.cancel(id, owner).await,
            None => false,
        }
    }

    /// Tells the other instances, without waiting.
    pub fn announce(&self, signal: Signal) {
        if let Some(redis) = &self.redis {
            redis.announce(signal);
        }
    }

    /// Begins `stream`'s turn in conversation `asked` (a new conversation when it is `None`,
    /// malformed, unknown, expired or another identity's), marking the conversation busy until
    /// [`Store::end_turn`].
    pub async fn begin_turn(
        &self,
        asked: Option<&str>,
        stream: &str,
        owner: Owner,
    ) -> Conversation {
        let asked = asked.filter(|id| crate::id::is_valid(id));
        if let Some(id) = asked {
            match self.begin(&owned(id, owner), stream, false).await {
                Begun::Ready(history) => {
                    return Conversation::Ready {
                        id: id.to_owned(),
                        turn: history.len() as u32 + 1,
                        history,
                    };
                }
                Begun::Busy => return Conversation::Busy,
                Begun::Unknown => {}
            }
        }
        let id = crate::id::new();
        self.begin(&owned(&id, owner), stream, true).await;
        Conversation::Ready {
            id,
            turn: 1,
            history: Vec::new(),
        }
    }

    async fn begin(&self, id: &str, stream: &str, new: bool) -> Begun {
        if let Some(redis) = &self.redis
            && let Some(begun) = redis.begin_turn(id, stream, new, self.busy_for).await
        {
            return begun;
        }
        self.conversations.begin(id, stream, new)
    }

    /// Ends `stream`'s turn in `owner`'s conversation `id`, keeping `turn` (none: the person saw
    /// nothing).
    pub async fn end_turn(&self, id: &str, owner: Owner, stream: &str, turn: Option<Turn>) {
        let id = &*owned(id, owner);
        if let Some(redis) = &self.redis {
            redis
                .end_turn(
                    id,
                    stream,
                    turn.as_ref(),
                    self.max_turns,
                    self.conversation_ttl,
                )
                .await;
        }
        self.conversations.end(id, stream, turn);
    }

    /// The turns of `owner`'s conversation `id`; `None` when it is unknown, expired or another
    /// identity's.
    pub async fn turns(&self, id: &str, owner: Owner) -> Option<Vec<Turn>> {
        let id = &*owned(id, owner);
        if let Some(redis) = &self.redis
            && let Some(turns) = redis.turns(id).await
        {
            return turns;
        }
        self.conversations.turns(id)
    }
}

/// A conversation's key in the store: its id, followed by its owner's hash when a user owns it, so
/// that a lookup by any other identity finds nothing, exactly as for an unknown id. Anonymous
/// conversations keep their bare id (the id is their only credential, as always).
fn owned(id: &str, owner: Owner) -> std::borrow::Cow<'_, str> {
    match owner {
        Owner::Anonymous => id.into(),
        Owner::User(key) => format!("{id}.{key}").into(),
    }
}
