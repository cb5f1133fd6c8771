//! The upstream connection outlives an answer: an upstream that ends its body a moment after its
//! `[DONE]` (as a real API's last chunk can arrive in a later segment) keeps its connection for the
//! next answer, which so skips a new TCP (and, against a real API, TLS) handshake.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::helpers::spawn_app_with;

/// A keep-alive upstream: chunked answers, any number per connection; counts both.
struct KeepAliveUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl KeepAliveUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (seen, asked) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, asked.clone()));
            }
        });
        Self {
            url,
            connections,
            requests,
        }
    }
}

async fn serve(mut socket: TcpStream, requests: Arc<AtomicUsize>) {
    socket.set_nodelay(true).ok();
    let mut data = Vec::new();
    loop {
        // One request: its head, then its body by Content-Length.
        let head_end = loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut buf = [0_u8; 4096];
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while data.len() < head_end + length {
            let mut buf = [0_u8; 4096];
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
        data.drain(..head_end + length);
        requests.fetch_add(1, Ordering::SeqCst);
        let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
        let mut reply = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        reply.push_str(&chunk(
            r#"data: {"choices":[{"delta":{"content":"hi"}}]}"#.to_owned().as_str(),
        ));
        reply.push_str(&chunk("\n\n"));
        reply.push_str(&chunk(
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        ));
        if socket.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        // The body's end comes a moment after [DONE].
        tokio::time::sleep(Duration::from_millis(200)).await;
        if socket.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_finished_answer_leaves_its_upstream_connection_for_the_next_answer() {
    let upstream = KeepAliveUpstream::start().await;
    let app = spawn_app_with(|c| {
        c.llm_base_url = Some(upstream.url.parse().unwrap());
    })
    .await;

    let first = app.stream("one").await;
    assert!(first.ended_with_done(), "{}", first.body);
    // Arrange, not a pass condition: the next question comes after the first body's end (200 ms
    // after its [DONE]), when a kept connection is back in the pool.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = app.stream("two").await;
    assert!(second.ended_with_done(), "{}", second.body);

    assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "both answers over one upstream connection"
    );
}
