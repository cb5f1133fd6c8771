//! A reader: one connection's view of an answer. It replays the log after the event the client saw,
//! then follows the live tail, until the answer ends or a newer reader of the same answer takes over.
//! While nothing else is sent for KEEPALIVE_SECS, a `: keep-alive` comment goes out.

use std::{
    future::{Future, poll_fn},
    pin::pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use actix_web_lab::sse;
use async_stream::stream;
use futures_util::Stream;
use tokio::time::Instant;

use super::{Answer, Answers, Presence, new_reader_id};
use crate::store::log::{Kind, Record};
use crate::{
    error::StreamError,
    sse::{frame, keep_alive},
    store::{Follow, Signal},
};

/// Most records framed in one go, so that a long replay does not hold the log's lock for long.
const BATCH: usize = 256;

/// Marks the reader present while it lives, and absent when it goes (unless another took over).
struct Attached {
    reader: u64,
    answer: Arc<Answer>,
    answers: Answers,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let reader = self.reader;
        self.answer.change_presence(|p| {
            let mine = p.reader == reader && p.attached;
            if mine {
                p.attached = false;
            }
            mine
        });
        self.answers.store.announce(Signal::Left {
            id: self.answer.id.clone(),
            reader,
        });
    }
}

/// A new reader of answer `id`, announced to the other instances, whose older readers then end.
fn new_reader(answers: &Answers, id: &str) -> (u64, Presence) {
    let reader = new_reader_id();
    answers.store.announce(Signal::Reader {
        id: id.to_owned(),
        reader,
    });
    (
        reader,
        Presence {
            reader,
            attached: true,
        },
    )
}

/// What woke a reader.
enum Step {
    /// Records to send, in the reader's batch.
    Records,
    /// Who reads the answer changed: perhaps a newer reader took over.
    Superseded,
    /// Nothing sent for a while.
    Quiet,
}

/// Reads an answer produced here, after event `after` (from the opening event when `None`).
pub(super) fn local(
    answer: Arc<Answer>,
    after: Option<u64>,
    answers: Answers,
) -> impl Stream<Item = sse::Event> + use<> {
    let (reader, me) = new_reader(&answers, &answer.id);
    answer.change_presence(|p| std::mem::replace(p, me) != me);
    let keepalive = answers.settings.keepalive;
    let mut presence = answer.presence.subscribe();
    presence.borrow_and_update();
    // Made before the body is first polled, so that a client gone at once still counts as gone.
    let attached = Attached {
        reader,
        answer: Arc::clone(&answer),
        answers,
    };
    stream! {
        let _attached = attached;
        let mut cursor = after;
        let mut batch = Vec::new();
        // Per wake-up: one look at the log (which also registers for its next append), a look at
        // the presence's version, and the keep-alive timer, re-armed only when it fires.
        let mut last_sent = Instant::now();
        let quiet = tokio::time::sleep(keepalive);
        let mut quiet = pin!(quiet);
        if after.is_none() {
            hold_opening(&answer).await;
        }
        loop {
            let step = poll_fn(|cx| {
                if presence.has_changed().unwrap_or(true) {
                    return Poll::Ready(Step::Superseded);
                }
                if answer.log.poll_after(cx, cursor, BATCH, &mut batch).is_ready() {
                    return Poll::Ready(Step::Records);
                }
                quiet.as_mut().poll(cx).map(|()| Step::Quiet)
            })
            .await;
            match step {
                Step::Records => {
                    let Some(last) = batch.last() else { continue };
                    cursor = Some(last.n);
                    let end = last.kind == Kind::End;
                    for record in batch.drain(..) {
                        yield frame(&answer.id, &record);
                    }
                    if end {
                        return;
                    }
                    last_sent = Instant::now();
                }
                Step::Superseded => {
                    if presence.has_changed().is_err() || presence.borrow_and_update().reader != reader {
                        return;
                    }
                }
                Step::Quiet => {
                    if last_sent + keepalive <= Instant::now() {
                        yield keep_alive();
                        last_sent = Instant::now();
                    }
                    quiet.as_mut().reset(last_sent + keepalive);
                }
            }
        }
    }
}

/// How long a new stream's opening event may wait for the first token, to leave in the same write.
const OPENING_HOLD: Duration = Duration::from_millis(20);

/// Waits until the answer has more than its opening event, or [`OPENING_HOLD`]: a write and a
/// wake-up of the client fewer before the first token, which is what time to first token counts;
/// a slow model's client still learns its stream id at once, to a person's eye.
async fn hold_opening(answer: &Answer) {
    let hold = tokio::time::sleep(OPENING_HOLD);
    let mut hold = pin!(hold);
    poll_fn(|cx| {
        if answer
            .log
            .poll_after(cx, Some(0), 0, &mut Vec::new())
            .is_ready()
        {
            return Poll::Ready(());
        }
        hold.as_mut().poll(cx)
    })
    .await;
}

/// Reads an answer produced by another instance, through the shared store.
pub(super) fn remote(
    id: String,
    mut follow: Follow,
    answers: Answers,
) -> impl Stream<Item = sse::Event> + use<> {
    let (reader, me) = new_reader(&answers, &id);
    let mut presence = answers.follower(&id, me);
    let keepalive = answers.settings.keepalive;
    let followed = Followed {
        id: id.clone(),
        reader,
        answers,
    };
    stream! {
        let _followed = followed;
        let quiet = tokio::time::sleep(keepalive);
        let mut quiet = pin!(quiet);
        let mut last = follow.after();
        loop {
            if presence.borrow_and_update().reader != reader {
                return;
            }
            tokio::select! {
                batch = follow.next() => match batch {
                    Some(records) => {
                        for record in &records {
                            last = record.n;
                            yield frame(&id, record);
                            if record.kind == Kind::End {
                                return;
                            }
                        }
                        if !records.is_empty() {
                            quiet.as_mut().reset(Instant::now() + keepalive);
                        }
                    }
                    None => {
                        // The producer is gone before the end: say so rather than hang.
                        let record = Record {
                            n: last + 1,
                            kind: Kind::End,
                            data: crate::sse::error_data(&StreamError::StreamInterrupted).into(),
                        };
                        yield frame(&id, &record);
                        return;
                    }
                },
                changed = presence.changed() => if changed.is_err() { return },
                () = &mut quiet => {
                    quiet.as_mut().reset(Instant::now() + keepalive);
                    yield keep_alive();
                }
            }
        }
    }
}

/// A reader here of an answer produced elsewhere: tells the producer when it goes.
struct Followed {
    id: String,
    reader: u64,
    answers: Answers,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.answers.unfollow(&self.id, self.reader);
        self.answers.store.announce(Signal::Left {
            id: std::mem::take(&mut self.id),
            reader: self.reader,
        });
    }
}
