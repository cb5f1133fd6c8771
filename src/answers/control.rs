//! What a producer must notice besides its events: an explicit cancel, the server's shutdown, and a
//! change of reader. Anyone raises a flag and wakes the producer; the producer looks at the flags
//! each time it is woken, at the cost of one atomic load, so that an event costs no lock here.

use std::{
    sync::atomic::{AtomicU8, Ordering},
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;

use crate::error::StreamError;

const CANCEL: u8 = 1;
const SHUTDOWN: u8 = 2;
const PRESENCE: u8 = 4;

/// What the producer found raised.
pub(super) enum Raised {
    /// Cancelled, or the server is shutting down: the answer ends with this error.
    Stop(StreamError),
    /// A reader came or went: look at the presence again.
    Presence,
}

#[derive(Default)]
pub(super) struct Control {
    flags: AtomicU8,
    producer: AtomicWaker,
}

impl Control {
    pub fn cancel(&self) {
        self.raise(CANCEL);
    }

    pub fn shut_down(&self) {
        self.raise(SHUTDOWN);
    }

    pub fn presence_changed(&self) {
        self.raise(PRESENCE);
    }

    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        self.producer.wake();
    }

    /// For the producer: what was raised since it last looked (a cancel before a shutdown before a
    /// change of reader), or pending, with `cx` woken at the next raise.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Raised> {
        self.producer.register(cx.waker());
        let flags = self.flags.load(Ordering::Acquire);
        if flags & CANCEL != 0 {
            Poll::Ready(Raised::Stop(StreamError::Cancelled))
        } else if flags & SHUTDOWN != 0 {
            Poll::Ready(Raised::Stop(StreamError::ServerShutdown))
        } else if flags & PRESENCE != 0 {
            self.flags.fetch_and(!PRESENCE, Ordering::AcqRel);
            Poll::Ready(Raised::Presence)
        } else {
            Poll::Pending
        }
    }
}
