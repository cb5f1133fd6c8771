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
}

impl Conversations {
    pub fn new(ttl: Duration, max_turns: usize) -> Self {
        Self {
            all: Mutex::default(),
            ttl,
            max_turns,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conversation>> {
        self.all.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks conversation `id` busy with `stream` and gives its turns; `new` starts it.
    pub fn begin(&self, id: &str, stream: &str, new: bool) -> Begun {
        let now = Instant::now();
        let mut all = self.lock();
        all.retain(|_, c| c.expires > now || c.busy.is_some());
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
            conversation.turns.push_back(turn);
            while conversation.turns.len() > self.max_turns {
                conversation.turns.pop_front();
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
