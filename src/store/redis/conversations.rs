//! Conversations on Redis, so that a follow-up may land on any instance.
//!
//! Keys: `llm-stream:conversation:{<id>}` (a list of turns as JSON `{"question","answer"}`, oldest
//! first, at most CONVERSATION_MAX_TURNS, expiring CONVERSATION_TTL_SECS after the last turn) and
//! `llm-stream:conversation:{<id>}:busy` (the stream answering in it now; it expires by itself if
//! that stream's instance dies).

use std::{sync::LazyLock, time::Duration};

use ::redis::{AsyncCommands, Script};

use super::Redis;
use crate::{
    llm::Turn,
    store::{conversations::Begun, scripts},
};

static BEGIN: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CONVERSATION_BEGIN));
static END: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CONVERSATION_END));

fn turns_key(id: &str) -> String {
    format!("llm-stream:conversation:{{{id}}}")
}

fn busy_key(id: &str) -> String {
    format!("llm-stream:conversation:{{{id}}}:busy")
}

impl Redis {
    /// `None` when Redis cannot say.
    pub async fn begin_turn(
        &self,
        id: &str,
        stream: &str,
        new: bool,
        busy_for: Duration,
    ) -> Option<Begun> {
        let mut manager = self.manager();
        let mut invocation = BEGIN.key(turns_key(id));
        invocation
            .key(busy_key(id))
            .arg(stream)
            .arg(busy_for.as_millis() as u64)
            .arg(if new { "1" } else { "0" });
        let reply: Vec<String> = self
            .call(self.0.request_limit, invocation.invoke_async(&mut manager))
            .await?;
        Some(match reply.first().map(String::as_str) {
            Some("ok") => Begun::Ready(
                reply[1..]
                    .iter()
                    .filter_map(|turn| serde_json::from_str(turn).ok())
                    .collect(),
            ),
            Some("busy") => Begun::Busy,
            _ => Begun::Unknown,
        })
    }

    /// Ends `stream`'s turn, keeping `turn` when there is one. The answer's last event waits on
    /// it, so it waits no longer than a request does.
    pub async fn end_turn(
        &self,
        id: &str,
        stream: &str,
        turn: Option<&Turn>,
        max_turns: usize,
        ttl: Duration,
    ) {
        let json = turn
            .and_then(|turn| serde_json::to_string(turn).ok())
            .unwrap_or_default();
        let mut manager = self.manager();
        let mut invocation = END.key(turns_key(id));
        invocation
            .key(busy_key(id))
            .arg(stream)
            .arg(json)
            .arg(max_turns)
            .arg(ttl.as_millis() as u64);
        self.call::<i64>(self.0.request_limit, invocation.invoke_async(&mut manager))
            .await;
    }

    /// The turns of conversation `id`: `Some(None)` when Redis says it is unknown.
    pub async fn turns(&self, id: &str) -> Option<Option<Vec<Turn>>> {
        let mut manager = self.manager();
        let read = async {
            let (exists, turns): (bool, Vec<String>) = ::redis::pipe()
                .exists(turns_key(id))
                .lrange(turns_key(id), 0, -1)
                .query_async(&mut manager)
                .await?;
            let busy: bool = manager.exists(busy_key(id)).await?;
            Ok((exists || busy, turns))
        };
        let (known, turns) = self.call(self.0.request_limit, read).await?;
        Some(known.then(|| {
            turns
                .iter()
                .filter_map(|turn| serde_json::from_str(turn).ok())
                .collect()
        }))
    }
}
