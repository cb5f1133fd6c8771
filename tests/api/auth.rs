//! AUTH_*: who is asking, with real signatures made by keys this test process makes (an HMAC
//! secret, an RSA key from the `openssl` command, ECDSA and Ed25519 keys from aws-lc-rs) and a key
//! set served by an HTTP server of the test's own.

mod identity;
mod keys;
mod leaks;
mod ownership;
mod refusals;
mod rotation;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use llm_stream::config::Config;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{CLIENT, DEADLINE};

pub const SECRET: &str = "test-hmac-secret-that-is-long-enough-0123456789";

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `sub` that expire in an hour.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 3600, "iat": now() })
}

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

/// A signed-in user's token for `sub`.
pub fn token_for(sub: &str) -> String {
    hs256(&claims(sub))
}

/// The configuration with AUTH_JWT_SECRET.
pub fn with_secret(config: &mut Config) {
    config.auth_jwt_secret = Some(SecretString::from(SECRET));
}

/// `GET url` with these headers: status, headers and JSON body (Null when none).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = CLIENT.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

/// A key set server of the test's own: serves the JWKS it is given, `503` while it has none, and
/// when stalled accepts connections and never answers. Counts the fetches.
#[derive(Clone)]
pub struct JwksServer {
    pub url: String,
    body: Arc<Mutex<Option<String>>>,
    stalled: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(set: Option<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Self {
            url: format!(
                "http://{}/.well-known/jwks.json",
                listener.local_addr().unwrap()
            ),
            body: Arc::new(Mutex::new(set.map(|set| set.to_string()))),
            stalled: Arc::default(),
            fetches: Arc::default(),
        };
        let serving = server.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let serving = serving.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0_u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    serving.fetches.fetch_add(1, Ordering::SeqCst);
                    if serving.stalled.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let body = serving.body.lock().unwrap().clone();
                    let response = match body {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        server
    }

    pub fn serve(&self, set: Value) {
        *self.body.lock().unwrap() = Some(set.to_string());
    }

    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A refusal's parts as the tests check them: status, `WWW-Authenticate`, error code, message.
pub struct Refused {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub code: String,
    pub message: String,
}

pub async fn refused(url: &str, headers: &[(&str, &str)]) -> Refused {
    let (status, headers, body) = get(url, headers).await;
    Refused {
        status,
        www_authenticate: headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned()),
        code: body["error"].as_str().unwrap_or_default().to_owned(),
        message: body["message"].as_str().unwrap_or_default().to_owned(),
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
