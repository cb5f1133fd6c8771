//! The mock's HTTP/2 side, for the clients that pick `h2` by ALPN (llm-stream over HTTPS): h2's own
//! server, the same scripts as over HTTP/1.1 (the tag found in the path or the body), each token
//! one SSE event in one DATA frame, paced or as fast as the client's window takes them.

use std::{future::poll_fn, time::Instant};

use bytes::Bytes;
use h2::{
    RecvStream, SendStream,
    server::{Builder, SendResponse},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant as TokioInstant,
};

use super::{END, Mock, Script, TOKEN_CHUNK};

/// The SETTINGS_MAX_CONCURRENT_STREAMS the mock advertises: LOAD_H2_STREAMS, else 100, the floor
/// RFC 9113 recommends (section 6.5.2) and what large HTTP/2 front ends advertise.
pub fn max_streams() -> u32 {
    std::env::var("LOAD_H2_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

impl Mock {
    /// Answers every stream of one HTTP/2 connection until the client closes it.
    pub(super) async fn serve_h2(self, tls: impl AsyncRead + AsyncWrite + Unpin) {
        let Ok(mut connection) = Builder::new()
            .max_concurrent_streams(max_streams())
            .handshake::<_, Bytes>(tls)
            .await
        else {
            return;
        };
        // Accepting also drives the connection: every answer's frames go out from here.
        while let Some(Ok((request, respond))) = connection.accept().await {
            tokio::spawn(self.clone().answer_h2(request, respond));
        }
    }

    async fn answer_h2(self, request: http::Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let mut read = request.uri().path().as_bytes().to_vec();
        let mut body = request.into_body();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            read.extend_from_slice(&chunk);
        }
        let Some(script) = Script::find(&read) else {
            let refusal = http::Response::builder().status(400).body(()).unwrap();
            let _ = respond.send_response(refusal, true);
            return;
        };
        self.opened(script);
        let head = http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(())
            .unwrap();
        let Ok(mut send) = respond.send_response(head, false) else {
            return;
        };
        // Over HTTP/2 the client leaving is its RST_STREAM, which also ends the writes.
        if !write_script(&mut send, script).await && script.id > 0 {
            self.seen
                .lock()
                .unwrap()
                .closed
                .insert(script.id, Instant::now());
        }
    }
}

/// Writes one answer, a DATA frame per token; false when the client reset the stream or the
/// connection went away.
async fn write_script(send: &mut SendStream<Bytes>, script: Script) -> bool {
    let token = Bytes::from_static(TOKEN_CHUNK);
    // As over HTTP/1.1: the first token at once, then one every `gap` from the request (no drift).
    let start = TokioInstant::now();
    for k in 0..script.tokens {
        if k > 0 && !script.gap.is_zero() {
            tokio::select! {
                () = tokio::time::sleep_until(start + script.gap * k as u32) => {}
                _ = poll_fn(|cx| send.poll_reset(cx)) => return false,
            }
        }
        if !room(send, token.len()).await || send.send_data(token.clone(), false).is_err() {
            return false;
        }
    }
    room(send, END.len()).await && send.send_data(Bytes::from_static(END), true).is_ok()
}

/// Waits until the client's windows take `len` more bytes, so that an unpaced answer goes as fast
/// as the client reads it (h2 would otherwise buffer it all); false when the stream is gone.
async fn room(send: &mut SendStream<Bytes>, len: usize) -> bool {
    send.reserve_capacity(len);
    while send.capacity() < len {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            _ => return false,
        }
    }
    true
}
