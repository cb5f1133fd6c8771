//! The producer: one task per answer that owns the upstream call and the stream slot, and appends
//! each event to the answer's log. It ends after the last event, at the deadline, at shutdown, on
//! an explicit cancel, or when nobody has read the answer for RESUME_GRACE_SECS; dropping what it
//! owns then closes the upstream connection and frees the slot.

use std::{
    future::{Future, poll_fn},
    pin::pin,
    sync::Arc,
    task::Poll,
};

use futures_util::StreamExt;
use tokio::time::{Instant, Sleep, sleep_until};

use super::{Answer, Answers, control::Raised};
use crate::store::log::Kind;
use crate::{
    error::StreamError,
    llm::{EventStream, FinishBudget, LlmEvent, Usage},
    sse,
    store::{Cost, Slot, tokens::estimate},
    telemetry::StreamReport,
};

/// How an answer ended, besides its events.
enum End {
    /// The last event was appended (a finish, or an upstream error).
    Complete,
    /// Ended early with this error, which is appended for any later reader.
    Error(StreamError),
    /// Nobody read it for the whole grace: stopped as a gone client's stream always was.
    Abandoned,
}

/// What woke the producer.
enum Step {
    End(End),
    /// A reader came or went.
    Presence,
    Event(Option<Result<LlmEvent, StreamError>>),
}

pub(super) async fn produce(
    answer: Arc<Answer>,
    mut events: EventStream,
    slot: Slot,
    answers: Answers,
    mut report: StreamReport,
) {
    // Settled when the answer ends, however it ends (the finish carries the budget after it).
    let mut slot = Some(slot);
    // The characters streamed (text and reasoning), for the cost when the upstream reports none.
    let mut completion_chars = 0_usize;
    // One timer for the whole answer, not one per event.
    let deadline = sleep_until(Instant::now() + answers.settings.budget);
    let mut deadline = pin!(deadline);
    let grace = answers.settings.grace;
    // Set while nobody reads the answer: when that grace runs out.
    let mut gone = pin!(None::<Sleep>);
    // What the person sees, kept as the conversation's turn however the answer ends.
    let mut text = String::new();
    // The log's bytes, counted here rather than asked of the log for every event, and the room
    // taken for them in the store (grown a step at a time, not per event).
    let mut kept = answer.log.bytes();
    let mut room = 0;
    // The first reader attached before this task ran, and may already be gone.
    let mut attached = true;
    let mut presence_changed = true;
    let end = loop {
        if presence_changed {
            presence_changed = false;
            let now = answer.presence.borrow().attached;
            if now != attached {
                attached = now;
                if attached {
                    gone.set(None);
                } else if grace.is_zero() {
                    // No timer for no grace: a timer would wait for the clock's next tick.
                    break End::Abandoned;
                } else {
                    gone.set(Some(sleep_until(Instant::now() + grace)));
                }
            }
        }
        // Per wake-up: a look at the control's flags, the deadline and the events; the rest only
        // when raised.
        let step = poll_fn(|cx| {
            match answer.control.poll(cx) {
                Poll::Ready(Raised::Stop(error)) => {
                    return Poll::Ready(Step::End(End::Error(error)));
                }
                Poll::Ready(Raised::Presence) => return Poll::Ready(Step::Presence),
                Poll::Pending => {}
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::End(End::Error(StreamError::Timeout)));
            }
            if gone
                .as_mut()
                .as_pin_mut()
                .is_some_and(|gone| gone.poll(cx).is_ready())
            {
                return Poll::Ready(Step::End(End::Abandoned));
            }
            events.poll_next_unpin(cx).map(Step::Event)
        })
        .await;
        match step {
            Step::End(end) => break end,
            Step::Presence => presence_changed = true,
            Step::Event(Some(Ok(LlmEvent::Token(token)))) => {
                report.token();
                completion_chars += token.chars().count();
                text.push_str(&token);
                kept += answer.log.append(Kind::Message, sse::token_data(&token));
                if kept > room && !answers.make_room(&mut room, kept) {
                    break End::Error(StreamError::TooLong);
                }
            }
            Step::Event(Some(Ok(LlmEvent::Reasoning(reasoning)))) => {
                report.first_output();
                completion_chars += reasoning.chars().count();
                kept += answer
                    .log
                    .append(Kind::Message, sse::reasoning_data(&reasoning));
                if kept > room && !answers.make_room(&mut room, kept) {
                    break End::Error(StreamError::TooLong);
                }
            }
            Step::Event(Some(Ok(LlmEvent::Finish(mut finish)))) => {
                report.finish("done");
                report.finished(&finish);
                if let Some(upstream) = finish.upstream {
                    report.answered_by(upstream, finish.model.clone());
                }
                if let Some(slot) = slot.take() {
                    if slot.capped() && finish.finish_reason == "length" {
                        finish.limited_by = Some("token_budget");
                        report.limited_by("token_budget");
                    }
                    let cost = cost(&slot, finish.usage, completion_chars);
                    report.spent(cost.prompt, cost.completion, cost.source);
                    finish.budget = slot.settle(&cost).await.map(|b| FinishBudget {
                        tokens_remaining: b.remaining,
                    });
                }
                answer.log.append(Kind::Message, sse::finish_data(&finish));
                break End::Complete;
            }
            Step::Event(Some(Err(error))) => break End::Error(error),
            Step::Event(None) => break End::Error(StreamError::StreamInterrupted),
        }
    };
    // The stream's place and the upstream call end here, before anything else is done: the slot
    // first (settling its token reservation to what was streamed), so that whoever sees the
    // upstream closed finds the slot free and the unused tokens back.
    if let Some(slot) = slot.take() {
        let cost = cost(&slot, None, completion_chars);
        report.spent(cost.prompt, cost.completion, cost.source);
        slot.settle(&cost).await;
    }
    match end {
        // Read what the upstream sends after its finish in the background, so that its
        // connection is kept for the next answer; the client does not wait for it.
        End::Complete => {
            tokio::spawn(events.for_each(|_| std::future::ready(())));
        }
        _ => drop(events),
    }
    // The conversation's turn is filed before the last event goes out, so that a client that
    // asks its follow-up the moment it sees the end never finds the conversation busy.
    report.answer(&text);
    let turn = (!text.is_empty()).then(|| crate::llm::Turn {
        question: answer.question.clone(),
        answer: text,
    });
    answers
        .store
        .end_turn(&answer.conversation, answer.owner, &answer.id, turn)
        .await;
    let last = match end {
        End::Complete => sse::DONE.into(),
        End::Error(error) => {
            report.finish(error.code());
            sse::error_data(&error).into()
        }
        End::Abandoned => {
            report.finish("client_gone");
            sse::error_data(&StreamError::Cancelled).into()
        }
    };
    answer.log.append(Kind::End, last);
    report.resumed(answer.resumed.load(std::sync::atomic::Ordering::Relaxed));
    answers.finished(&answer, room);
}

/// What an answer cost: the upstream's usage, else the documented estimate (the prompt's
/// characters / 4, as admitted, and the streamed characters / 4), each rounded up.
fn cost(slot: &Slot, usage: Option<Usage>, completion_chars: usize) -> Cost {
    match usage {
        Some(usage) => Cost {
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
            source: "usage",
        },
        None => Cost {
            prompt: slot.prompt_estimate(),
            completion: estimate(completion_chars),
            source: "estimate",
        },
    }
}
