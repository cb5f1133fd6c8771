//! Conversations in this process: each one's turns, oldest first, whether an answer is running in
//! it, and when it is forgotten (CONVERSATION_TTL_SECS after its last turn).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::llm::Turn;

/// What beginning a turn finds.
#[derive(Debug)]
pub enum Begun {
    /// The turn may begin: here are the earlier ones.
    Ready(Vec<Turn>),
    /// No such conversation (never, or expired).
    Unknown,
    /// An answer is still running in it.
    Busy,
}

struct Conversation {
    turns: VecDeque<Turn>,
    /// The stream answering in it now.
    busy: Option<String>,
    expires: Instant,
}

pub struct Conversations {
    all: Mutex<HashMap<String, Conversation>>,
    ttl: Duration,
    max_turns: usize,
    /// Bytes of turns kept, at most `max_bytes`: the conversations that expire soonest go first.
    bytes: std::sync::atomic::AtomicUsize,
    max_bytes: usize,
    /// Expired conversations are looked for at most once a second, not on every question.
    next_sweep: Mutex<Instant>,
}

/// What one turn costs, roughly.
fn cost(turn: &Turn) -> usize {
    turn.question.len() + turn.answer.len() + 64
}

impl Conversations {
    pub fn new(ttl: Duration, max_turns: usize, max_bytes: usize) -> Self {
        Self {
            all: Mutex::default(),
            ttl,
            max_turns,
            bytes: 0.into(),
            max_bytes,
            next_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Forgets expired conversations (at most once a second), then, while over `max_bytes`, the
    /// idle ones that would expire soonest.
    fn sweep(&self, all: &mut HashMap<String, Conversation>, now: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut next = self
            .next_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let over = self.bytes.load(Relaxed) > self.max_bytes;
        if now < *next && !over {
            return;
        }
        *next = now + Duration::from_secs(1);
        let mut freed = 0;
        all.retain(|_, c| {
            let keep = c.expires > now || c.busy.is_some();
            if !keep {
                freed += c.turns.iter().map(cost).sum::<usize>();
            }
            keep
        });
        let mut bytes = self.bytes.load(Relaxed).saturating_sub(freed);
        if bytes > self.max_bytes {
            let mut idle: Vec<(Instant, String)> = all
                .iter()
                .filter(|(_, c)| c.busy.is_none())
                .map(|(id, c)| (c.expires, id.clone()))
                .collect();
            idle.sort();
            for (_, id) in idle {
                if bytes <= self.max_bytes {
                    break;
                }
                if let Some(gone) = all.remove(&id) {
                    bytes = bytes.saturating_sub(gone.turns.iter().map(cost).sum());
                }
            }
        }
        self.bytes.store(bytes, Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conversation>> {
        self.all.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks conversation `id` busy with `stream` and gives its turns; `new` starts it.
    pub fn begin(&self, id: &str, stream: &str, new: bool) -> Begun {
        let now = Instant::now();
        let mut all = self.lock();
        self.sweep(&mut all, now);
        if new {
            all.insert(
                id.to_owned(),
                Conversation {
                    turns: VecDeque::new(),
                    busy: Some(stream.to_owned()),
                    expires: now + self.ttl,
                },
            );
            return Begun::Ready(Vec::new());
        }
        match all.get_mut(id) {
            None => Begun::Unknown,
            Some(conversation) if conversation.expires <= now && conversation.busy.is_none() => {
                Begun::Unknown
            }
            Some(conversation) if conversation.busy.is_some() => Begun::Busy,
            Some(conversation) => {
                conversation.busy = Some(stream.to_owned());
                Begun::Ready(conversation.turns.iter().cloned().collect())
            }
        }
    }

    /// Ends `stream`'s turn in conversation `id`, keeping `turn` when there is one.
    pub fn end(&self, id: &str, stream: &str, turn: Option<Turn>) {
        let mut all = self.lock();
        let Some(conversation) = all.get_mut(id) else {
            return;
        };
        if conversation.busy.as_deref() == Some(stream) {
            conversation.busy = None;
        }
        if let Some(turn) = turn {
            use std::sync::atomic::Ordering::Relaxed;
            self.bytes.fetch_add(cost(&turn), Relaxed);
            conversation.turns.push_back(turn);
            while conversation.turns.len() > self.max_turns {
                if let Some(gone) = conversation.turns.pop_front() {
                    self.bytes.fetch_sub(cost(&gone), Relaxed);
                }
            }
            conversation.expires = Instant::now() + self.ttl;
        }
    }

    /// The turns of conversation `id`, unless it is unknown or expired.
    pub fn turns(&self, id: &str) -> Option<Vec<Turn>> {
        let all = self.lock();
        all.get(id)
            .filter(|c| c.expires > Instant::now() || c.busy.is_some())
            .map(|c| c.turns.iter().cloned().collect())
    }
}
