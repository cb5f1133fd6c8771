//! HTTP/2 to an HTTPS upstream (LLM_HTTP2): answers share TLS connections up to the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, another connection opens when those are full, a cancel
//! resets one stream, a GOAWAY ends only its connection's answers, and an upstream that offers
//! only HTTP/1.1 (or LLM_HTTP2=off) gets a connection per answer. The upstream is a real HTTP/2
//! server over TLS of the tests' own; llm-stream is the real binary, trusting its authority.

mod faults;
mod mock;
mod share;

use crate::{
    helpers::{Answer, SseReader},
    redis::harness::{Process, stream_url},
};
use mock::MockH2;

/// The binary on `mock`, with room for many answers from one client.
async fn serve(mock: &MockH2, extra: &[&str]) -> Process {
    let mut args = vec!["--max-streams-per-client", "100"];
    args.extend_from_slice(extra);
    Process::alone(&mock.url, &mock.trust(), &args).await
}

/// Opens an answer to `question` and reads up to its first token.
async fn open(server: &Process, question: &str) -> (SseReader, String) {
    let mut reader = SseReader::get(stream_url(&server.address, question), &[]).await;
    assert_eq!(reader.status, 200, "asking {question:?}");
    let id = reader.stream_id().await;
    let first = reader.next_data().await.expect("a first token");
    assert_eq!(
        first.json()["token"],
        "tok0 ",
        "the first token of {question:?}"
    );
    (reader, id)
}

async fn ask(server: &Process, question: &str) -> Answer {
    SseReader::get(stream_url(&server.address, question), &[])
        .await
        .read_to_end()
        .await
}

/// The text of a whole answer of `tokens` tokens.
fn text_of(tokens: usize) -> String {
    (0..tokens).map(|i| format!("tok{i} ")).collect()
}
