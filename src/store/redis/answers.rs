//! Answers on Redis. The producing instance copies its answer's log to a Redis Stream, batched (an
//! entry per event, entry id `0-<n>`, so Redis itself refuses a duplicate or out-of-order event),
//! and keeps an "alive" key while it produces. Any instance can then replay the log after an event
//! (`XRANGE` with an exclusive start) and follow its tail (`XREAD BLOCK`, on a connection of its
//! own); when the alive key lapses before the last event, the producer died.
//!
//! Keys, each with the answer's retention once it ends: `llm-stream:answer:{<id>}` (a hash: `q`, the
//! question; `client`; `owner`, the owning user's hash or empty when anonymous; `tp`, the `traceparent` of the
//! answer's chat span, or empty when untraced), `llm-stream:answer:{<id>}:events` (the stream: fields `k`, the kind, and
//! `d`, the data line), `llm-stream:answer:{<id>}:alive` (while produced, expires within [`ALIVE`]).

use std::{sync::Arc, time::Duration};

use ::redis::{
    AsyncCommands,
    aio::MultiplexedConnection,
    streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply},
};

use super::{BACKGROUND_LIMIT, Redis};
use crate::{
    client::{ClientId, Owner},
    store::{
        Signal,
        log::{Kind, Log, Record},
    },
};

/// How long a follower blocks on one read before it looks whether the producer still lives.
pub const BLOCK: Duration = Duration::from_secs(1);
/// The alive key's lifetime, renewed every [`ALIVE_EVERY`]: a dead producer is noticed within about
/// `ALIVE + BLOCK`.
const ALIVE: Duration = Duration::from_secs(6);
const ALIVE_EVERY: Duration = Duration::from_secs(2);
/// Most events written or read in one go.
const BATCH: usize = 256;

fn meta_key(id: &str) -> String {
    format!("llm-stream:answer:{{{id}}}")
}

fn events_key(id: &str) -> String {
    format!("llm-stream:answer:{{{id}}}:events")
}

fn alive_key(id: &str) -> String {
    format!("llm-stream:answer:{{{id}}}:alive")
}

/// The record of a stream entry `0-<n>`.
fn record(entry: &StreamId) -> Option<Record> {
    let n = entry.id.strip_prefix("0-")?.parse().ok()?;
    let kind: String = entry.get("k")?;
    let data: String = entry.get("d")?;
    Some(Record {
        n,
        kind: Kind::from_tag(&kind),
        data: data.into(),
    })
}

impl Redis {
    /// Copies the log as it grows; the opening event (number 0) stays local: a resume always starts after it.
    pub fn mirror(
        &self,
        id: &str,
        (question, traceparent): (&str, Option<&str>),
        client: ClientId,
        owner: Owner,
        log: Arc<Log>,
    ) {
        if !self.is_up() {
            return;
        }
        let (redis, id, question) = (self.clone(), id.to_owned(), question.to_owned());
        let traceparent = traceparent.map(str::to_owned);
        tokio::spawn(async move {
            let (meta, events, alive) = (meta_key(&id), events_key(&id), alive_key(&id));
            let lifetime = (redis.0.budget + redis.0.retention).as_millis() as u64;
            let mut manager = redis.manager();
            let mut pipe = ::redis::pipe();
            // Atomic: a reader never finds the answer without its alive key.
            pipe.atomic()
                .hset_multiple(
                    &meta,
                    &[
                        ("q", question),
                        ("client", client.to_string()),
                        ("owner", owner.tag()),
                        ("tp", traceparent.unwrap_or_default()),
                    ],
                )
                .pexpire(&meta, lifetime as i64)
                .set_options(
                    &alive,
                    1,
                    ::redis::SetOptions::default()
                        .with_expiration(::redis::SetExpiry::PX(ALIVE.as_millis() as u64)),
                );
            let start = pipe.query_async::<()>(&mut manager);
            if redis.call(BACKGROUND_LIMIT, start).await.is_none() {
                return;
            }
            let mut cursor = Some(0);
            let mut renew = tokio::time::interval(ALIVE_EVERY);
            let mut batch = Vec::new();
            // The events' key gets its lifetime with its first entry; the alive key is renewed
            // every ALIVE_EVERY: per event, only the XADD.
            let mut first = true;
            let mut renewed = tokio::time::Instant::now();
            loop {
                batch.clear();
                tokio::select! {
                    () = log.next(cursor, BATCH, &mut batch) => {}
                    _ = renew.tick() => {
                        let renewal = manager.pexpire::<_, ()>(&alive, ALIVE.as_millis() as i64);
                        if redis.call(BACKGROUND_LIMIT, renewal).await.is_none() {
                            return;
                        }
                        renewed = tokio::time::Instant::now();
                        continue;
                    }
                }
                let Some(last) = batch.last() else {
                    continue;
                };
                cursor = Some(last.n);
                let end = last.kind == Kind::End;
                let mut write = ::redis::pipe();
                for record in &batch {
                    write
                        .cmd("XADD")
                        .arg(&events)
                        .arg(format!("0-{}", record.n))
                        .arg("k")
                        .arg(record.kind.tag())
                        .arg("d")
                        .arg(&*record.data)
                        .ignore();
                }
                let keep = if end {
                    redis.0.retention.as_millis() as i64
                } else {
                    lifetime as i64
                };
                if first || end {
                    write.pexpire(&events, keep).ignore();
                    first = false;
                }
                if end {
                    write.pexpire(&meta, keep).ignore().del(&alive).ignore();
                } else if renewed.elapsed() >= ALIVE_EVERY {
                    // Renewed here too: while events keep coming, the loop may never wait for
                    // the timer above.
                    write.pexpire(&alive, ALIVE.as_millis() as i64).ignore();
                    renewed = tokio::time::Instant::now();
                }
                if redis
                    .call(BACKGROUND_LIMIT, write.query_async::<()>(&mut manager))
                    .await
                    .is_none()
                    || end
                {
                    return;
                }
            }
        });
    }

    /// A follower of answer `id` after event `after`, if the answer is there, asked with
    /// `question`, `owner`'s, and not over after `after`.
    pub async fn follow(
        &self,
        id: &str,
        after: u64,
        question: &str,
        owner: Owner,
    ) -> Option<Follow> {
        let mut manager = self.manager();
        let mut pipe = ::redis::pipe();
        pipe.cmd("HMGET")
            .arg(meta_key(id))
            .arg("q")
            .arg("owner")
            .arg("tp")
            .cmd("XREVRANGE")
            .arg(events_key(id))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .exists(alive_key(id));
        let lookup = pipe.query_async::<(
            (Option<String>, Option<String>, Option<String>),
            StreamRangeReply,
            bool,
        )>(&mut manager);
        let ((asked, owned_by, traceparent), last, alive) =
            self.call(self.0.request_limit, lookup).await?;
        if asked.as_deref() != Some(question) || owned_by.unwrap_or_default() != owner.tag() {
            return None;
        }
        let last = last.ids.first().and_then(record);
        let (last_n, ended) = last.map_or((0, false), |last| (last.n, last.kind == Kind::End));
        // Over: the client saw the end, or the producer died and the client saw all it wrote (it
        // was told `stream_interrupted`; a reconnect must not be told so again and again).
        if (ended || !alive) && last_n <= after {
            return None;
        }
        let connection = self.dedicated().await?;
        Some(Follow {
            connection,
            id: id.to_owned(),
            after,
            traceparent: traceparent.filter(|tp| !tp.is_empty()),
        })
    }

    /// Asks the producer of `id` to stop, wherever it runs; false when no instance knows it as
    /// `owner`'s.
    pub async fn cancel(&self, id: &str, owner: Owner) -> bool {
        let mut manager = self.manager();
        let mut pipe = ::redis::pipe();
        pipe.exists(meta_key(id)).hget(meta_key(id), "owner");
        let known = self
            .call(
                self.0.request_limit,
                pipe.query_async::<(bool, Option<String>)>(&mut manager),
            )
            .await
            .is_some_and(|(exists, owned_by)| {
                exists && owned_by.unwrap_or_default() == owner.tag()
            });
        if known {
            self.announce(Signal::Cancel(id.to_owned()));
        }
        known
    }
}

/// A reader's view of an answer produced elsewhere.
pub struct Follow {
    connection: MultiplexedConnection,
    id: String,
    after: u64,
    /// The `traceparent` of the answer's chat span, when its producer traced it.
    pub traceparent: Option<String>,
}

impl Follow {
    /// The last event read.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The next events; `None` once the producer is gone before the end (or Redis is).
    pub async fn next(&mut self) -> Option<Vec<Record>> {
        let key = events_key(&self.id);
        let options = StreamReadOptions::default()
            .count(BATCH)
            .block(BLOCK.as_millis() as usize);
        let read = self
            .connection
            .xread_options::<_, _, Option<StreamReadReply>>(
                &[&key],
                &[format!("0-{}", self.after)],
                &options,
            )
            .await;
        let records = match read {
            Ok(reply) => reply
                .into_iter()
                .flat_map(|reply| reply.keys)
                .flat_map(|stream| stream.ids)
                .filter_map(|entry| record(&entry))
                .collect::<Vec<_>>(),
            Err(_) => return None,
        };
        if let Some(last) = records.last() {
            self.after = last.n;
            return Some(records);
        }
        let alive = self
            .connection
            .exists::<_, bool>(alive_key(&self.id))
            .await
            .unwrap_or(false);
        if alive {
            return Some(Vec::new());
        }
        // Gone: whatever it wrote just before going is still worth sending.
        let rest = self
            .connection
            .xrange::<_, _, _, StreamRangeReply>(&key, format!("(0-{}", self.after), "+")
            .await
            .ok()?;
        let records: Vec<Record> = rest.ids.iter().filter_map(record).collect();
        match records.last() {
            Some(last) => {
                self.after = last.n;
                Some(records)
            }
            None => None,
        }
    }
}
