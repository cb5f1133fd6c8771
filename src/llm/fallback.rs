//! A second upstream behind the first. A question the primary fails before its first event (no
//! connection, a connect or header timeout, an error status, a stream that ends or errors before
//! any token) goes to the fallback at once, without the primary's retry waits; LLM_RETRIES then
//! applies to the fallback. Once an event has gone out, the answer stays with the upstream that
//! sent it: an answer is never made of two models' text. A breaker per upstream skips a dead one.

use std::sync::Arc;

use async_stream::stream;
use futures_util::StreamExt;

use super::{
    EventStream, LlmEvent, Model, Target, Turn,
    breaker::{Breaker, Pass},
    call::Attempts,
};
use crate::{config::Config, error::StreamError};

/// The fallback model, and a breaker for each upstream.
pub struct Fallback {
    model: Model,
    primary: Arc<Breaker>,
    fallback: Arc<Breaker>,
}

/// One upstream's try at the question: its events, and its breaker's leave.
struct Leg {
    events: EventStream,
    pass: Pass,
}

impl Fallback {
    pub fn new(config: &Config, primary: &Target, fallback: &Target, model: Model) -> Self {
        let breaker = |target| {
            Breaker::new(
                target,
                config.upstream_breaker_failures,
                config.upstream_breaker_open,
            )
        };
        Self {
            model,
            primary: breaker(primary),
            fallback: breaker(fallback),
        }
    }

    /// The answer to `question`, from the primary, else the fallback, as the breakers allow:
    /// both closed, the primary once (no retries) then the fallback with `attempts`; one open, the
    /// other alone with `attempts`, as a single upstream is asked; both open, the primary as if
    /// its breaker were closed (there is nowhere else to go).
    pub fn stream(
        &self,
        primary: &Model,
        (question, history, request_id): (&str, &[Turn], &str),
        attempts: Attempts,
        max_tokens: Option<u32>,
    ) -> EventStream {
        let leg = |model: &Model, pass, attempts| Leg {
            events: model.stream(question, history, request_id, attempts, max_tokens),
            pass,
        };
        let once = Attempts {
            retries: 0,
            ..attempts
        };
        match (self.primary.admit(), self.fallback.admit()) {
            (Some(first), Some(then)) => answer(
                leg(primary, first, once),
                Some(leg(&self.model, then, attempts)),
            ),
            (None, Some(then)) => {
                crate::metrics::fell_back("breaker_open");
                tracing::debug!("the primary upstream's breaker is open; the fallback answers");
                answer(leg(&self.model, then, attempts), None)
            }
            (Some(first), None) => answer(leg(primary, first, attempts), None),
            (None, None) => answer(leg(primary, self.primary.force(), attempts), None),
        }
    }
}

/// The first leg's answer, or the next leg's if the first fails before its first event; the
/// finish names the model and the upstream that answered.
fn answer(first: Leg, then: Option<Leg>) -> EventStream {
    Box::pin(stream! {
        let mut leg = first;
        let mut then = then;
        let first = loop {
            let error = match leg.events.next().await {
                Some(Ok(event)) => break event,
                Some(Err(error)) => error,
                None => StreamError::StreamInterrupted,
            };
            let Leg { events, pass } = leg;
            // Its connection closes now, before the next upstream is asked.
            drop(events);
            let Some(next) = then.take() else {
                pass.failed();
                yield Err(error);
                return;
            };
            let failed = pass.breaker();
            tracing::warn!(
                upstream = failed.upstream().name(),
                model = %failed.model(),
                url = %failed.url(),
                reason = error.code(),
                "the primary upstream failed before the first token; the fallback answers"
            );
            crate::metrics::fell_back(error.code());
            pass.failed();
            leg = next;
        };
        let Leg { mut events, pass } = leg;
        let upstream = pass.breaker().upstream().name();
        let mut model = Some(pass.breaker().model().to_owned());
        pass.succeeded();
        let mut name = move |event| match event {
            LlmEvent::Finish(mut finish) => {
                finish.upstream = Some(upstream);
                finish.model = model.take();
                LlmEvent::Finish(finish)
            }
            event => event,
        };
        yield Ok(name(first));
        while let Some(item) = events.next().await {
            yield item.map(&mut name);
        }
    })
}
