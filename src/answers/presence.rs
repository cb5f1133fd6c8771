//! Who reads an answer: the latest reader wins and an older one still attached ends; the producer
//! counts the answer as read while someone is attached. Readers here and the signals of other
//! instances (a reader there, a reader gone, a cancel) change it.

use tokio::sync::watch;

use super::{Answer, Answers};
use crate::store::Signal;

/// Who reads an answer now: the latest reader wins, and an older one still attached ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub reader: u64,
    pub attached: bool,
}

impl Answer {
    /// Changes who reads the answer (`change` says whether it did); the producer and the readers
    /// then look again.
    pub(super) fn change_presence(&self, change: impl FnOnce(&mut Presence) -> bool) {
        if self.presence.send_if_modified(change) {
            self.control.presence_changed();
            self.log.wake();
        }
    }
}

impl Answers {
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

    /// Registers a reader here of an answer produced elsewhere; the watch says when it is superseded.
    pub(super) fn follower(&self, id: &str, presence: Presence) -> watch::Receiver<Presence> {
        let mut registry = self.lock();
        let sender = registry
            .followers
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(presence).0);
        sender.send_replace(presence);
        sender.subscribe()
    }

    /// Forgets a follower, unless a newer reader here took its place.
    pub(super) fn unfollow(&self, id: &str, reader: u64) {
        let mut registry = self.lock();
        if registry
            .followers
            .get(id)
            .is_some_and(|sender| sender.borrow().reader == reader)
        {
            registry.followers.remove(id);
        }
    }
}
