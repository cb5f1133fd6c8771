//! The upstream's bytes made safe for the SSE decoder: `sse-stream` ends the whole stream at the
//! first field that is not valid UTF-8, so one junk event would cut off every token after it.
//! Each invalid sequence is replaced here by a marker instead, and the event carrying it is
//! skipped as malformed further on (never passed on with U+FFFD in it).

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// What stands in for each invalid UTF-8 sequence: SUB, the ASCII control meant for a character
/// that cannot be represented. JSON never holds it raw (nor does a sane event name or id), so an
/// event that carries it was not valid UTF-8; and it is no line ending, so lines and events keep
/// their bounds.
pub const SUBSTITUTE: char = SUB as char;
const SUB: u8 = 0x1A;

/// The bytes with each invalid UTF-8 sequence replaced by [`SUBSTITUTE`]. A sequence split across
/// two chunks is held back until the next one completes it (at most 3 bytes); one still incomplete
/// when the body ends is invalid too. Valid chunks pass through without a copy.
pub fn guard<E: Send>(
    bytes: impl Stream<Item = Result<Bytes, E>> + Send,
) -> impl Stream<Item = Result<Bytes, E>> + Send {
    async_stream::stream! {
        let mut bytes = std::pin::pin!(bytes);
        let mut held = Vec::new();
        while let Some(chunk) = bytes.next().await {
            match chunk {
                Ok(chunk) => {
                    let chunk = substitute(&mut held, chunk);
                    if !chunk.is_empty() {
                        yield Ok(chunk);
                    }
                }
                Err(error) => yield Err(error),
            }
        }
        if !held.is_empty() {
            yield Ok(Bytes::from_static(&[SUB]));
        }
    }
}

/// `held` (an incomplete sequence from the last chunk) and `chunk`, with each invalid sequence
/// replaced; an incomplete sequence at the end is left in `held`.
fn substitute(held: &mut Vec<u8>, chunk: Bytes) -> Bytes {
    if held.is_empty() && std::str::from_utf8(&chunk).is_ok() {
        return chunk;
    }
    let mut input = std::mem::take(held);
    input.extend_from_slice(&chunk);
    let mut output = Vec::with_capacity(input.len());
    let mut rest = input.as_slice();
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                output.extend_from_slice(valid.as_bytes());
                break;
            }
            Err(error) => {
                let (valid, after) = rest.split_at(error.valid_up_to());
                output.extend_from_slice(valid);
                match error.error_len() {
                    Some(invalid) => {
                        output.push(SUB);
                        rest = &after[invalid..];
                    }
                    // Maybe the start of a character that the next chunk completes.
                    None => {
                        held.extend_from_slice(after);
                        break;
                    }
                }
            }
        }
    }
    Bytes::from(output)
}
