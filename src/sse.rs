//! Our events → SSE: the JSON data line of each event as the answer's log keeps it (a token, a
//! reasoning delta, a finish, `[DONE]`, an in-band error, the opening `stream` event), and the frame
//! each record of the log becomes, with its id `<stream>:<n>`.

use actix_web_lab::sse;
use bytestring::ByteString;
use serde::Serialize;

use crate::{
    error::StreamError,
    llm::Finish,
    store::log::{Kind, Record},
};

#[derive(Serialize)]
struct TokenFrame<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct ReasoningFrame<'a> {
    reasoning: &'a str,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct OpeningFrame<'a> {
    stream: &'a str,
    conversation: &'a str,
    turn: u32,
}

/// The data line after a finish: the stream is over.
pub const DONE: &str = "[DONE]";

/// The name of the opening event, which tells the client its stream id before any token.
const OPENING_EVENT: &str = "stream";

/// The opening event's data: the stream, its conversation and its turn in it.
pub fn opening(stream_id: &str, conversation: &str, turn: u32) -> String {
    json(&OpeningFrame {
        stream: stream_id,
        conversation,
        turn,
    })
}

pub fn token_data(text: &str) -> ByteString {
    json(&TokenFrame { token: text }).into()
}

pub fn reasoning_data(text: &str) -> ByteString {
    json(&ReasoningFrame { reasoning: text }).into()
}

pub fn finish_data(finish: &Finish) -> ByteString {
    json(finish).into()
}

pub fn error_data(error: &StreamError) -> String {
    json(&ErrorFrame {
        error: error.code(),
        message: error.to_string(),
        retry_after: error.retry_after(),
    })
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"error":"upstream_error","message":"The answer could not be encoded."}"#.to_owned()
    })
}

/// The SSE frame of one record of an answer's log.
pub fn frame(stream_id: &str, record: &Record) -> sse::Event {
    let mut id = String::with_capacity(stream_id.len() + 21);
    id.push_str(stream_id);
    id.push(':');
    id.push_str(itoa::Buffer::new().format(record.n));
    let data = sse::Data::new(record.data.clone()).id(id);
    match record.kind {
        Kind::Opening => data.event(OPENING_EVENT).into(),
        Kind::Message | Kind::End => data.into(),
    }
}

/// The comment sent while nothing else is, so that proxies and browsers keep the connection open.
pub fn keep_alive() -> sse::Event {
    sse::Event::Comment("keep-alive".into())
}

/// Splits a `Last-Event-ID` (`<stream>:<n>`) into the stream id and the event number.
pub fn parse_event_id(text: &str) -> Option<(&str, u64)> {
    let (stream, n) = text.trim().rsplit_once(':')?;
    let n = n.parse().ok()?;
    (!stream.is_empty()).then_some((stream, n))
}
