//! An answer's log in this process: the events in order, as they will be sent, each kept until the
//! answer is forgotten, and a wake-up for the readers that follow its tail.

use std::{
    sync::{Mutex, PoisonError},
    task::{Context, Poll, Waker},
};

use bytestring::ByteString;

/// What an event of the log is, for the reader that frames it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The opening `event: stream`, number 0.
    Opening,
    /// A token, a reasoning delta or a finish.
    Message,
    /// `[DONE]` or an in-band error: nothing comes after it.
    End,
}

impl Kind {
    /// One letter, as the Redis log stores it.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Opening => "o",
            Self::Message => "m",
            Self::End => "e",
        }
    }

    pub fn from_tag(tag: &str) -> Self {
        match tag {
            "o" => Self::Opening,
            "e" => Self::End,
            _ => Self::Message,
        }
    }
}

/// One event of an answer: its number (the `n` of its id `<stream>:<n>`), kind and data line.
#[derive(Debug, Clone)]
pub struct Record {
    pub n: u64,
    pub kind: Kind,
    pub data: ByteString,
}

/// What one record costs the store besides its data.
const RECORD_OVERHEAD: usize = std::mem::size_of::<Record>() + 16;

#[derive(Default)]
struct State {
    records: Vec<Record>,
    bytes: usize,
    /// The readers that found nothing new, to wake at the next append. Under the log's own lock,
    /// so that a reader looks and registers in one step: one lock per look, no lost wake-up.
    waiting: Vec<Waker>,
}

/// The records of one answer, appended by its producer and read by anyone.
#[derive(Default)]
pub struct Log {
    state: Mutex<State>,
}

impl Log {
    /// Appends the next record (numbered after the last) and wakes the readers; returns its bytes.
    pub fn append(&self, kind: Kind, data: ByteString) -> usize {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .records
            .last()
            .is_some_and(|last| last.kind == Kind::End)
        {
            return 0;
        }
        let n = state.records.len() as u64;
        let bytes = data.len() + RECORD_OVERHEAD;
        state.records.push(Record { n, kind, data });
        state.bytes += bytes;
        // A wake-up only schedules the reader's task: cheap enough to do under the lock, and the
        // list keeps its room for the next event.
        state.waiting.drain(..).for_each(Waker::wake);
        bytes
    }

    /// Adds to `into` the records numbered above `after`, at most `limit` of them (a reader
    /// reuses one buffer for all its reads; a `limit` of 0 only looks), and is ready when there
    /// are any; otherwise `cx` is woken at the next append or [`Log::wake`].
    pub fn poll_after(
        &self,
        cx: &mut Context<'_>,
        after: Option<u64>,
        limit: usize,
        into: &mut Vec<Record>,
    ) -> Poll<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let start = after.map_or(0, |n| n as usize + 1);
        match state.records.get(start..) {
            Some(rest) if !rest.is_empty() => {
                into.extend(rest.iter().take(limit).cloned());
                Poll::Ready(())
            }
            _ => {
                if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    state.waiting.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// Resolves when there are records after `after`, having added them to `into` as
    /// [`Log::poll_after`] does.
    pub async fn next(&self, after: Option<u64>, limit: usize, into: &mut Vec<Record>) {
        std::future::poll_fn(|cx| self.poll_after(cx, after, limit, into)).await;
    }

    /// Wakes every reader waiting for an append, to look at something else (a takeover).
    pub fn wake(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting.drain(..).for_each(Waker::wake);
    }

    /// The number of the last record, and whether it ends the answer.
    pub fn last(&self) -> Option<(u64, bool)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .records
            .last()
            .map(|record| (record.n, record.kind == Kind::End))
    }

    pub fn bytes(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }
}
