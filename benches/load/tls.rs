//! The HTTPS upstream's side of the throw-away certificate (made in `tests/api/certs.rs`): the mock
//! serves it, offering ALPN `h2` then `http/1.1`; nginx trusts its authority through
//! `proxy_ssl_trusted_certificate`, llm-stream through `SSL_CERT_FILE`.

use tokio_rustls::TlsAcceptor;

pub use crate::certs::Certs;

/// The mock's side. A client that offers no ALPN (nginx's proxy_pass) gets HTTP/1.1, as before.
pub fn acceptor(certs: &Certs) -> TlsAcceptor {
    certs.acceptor(&[b"h2", b"http/1.1"])
}
