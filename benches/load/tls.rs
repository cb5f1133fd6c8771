//! The HTTPS upstream's side of the throw-away certificate (made in `tests/api/certs.rs`): the mock
//! serves it, offering ALPN `h2` then `http/1.1`; nginx trusts its authority through
//! `proxy_ssl_trusted_certificate`, llm-stream through `SSL_CERT_FILE`.

use std::sync::Arc;

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

pub use crate::certs::Certs;

/// The mock's side.
pub fn acceptor(certs: &Certs) -> TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&certs.key).unwrap();
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    // A client that offers no ALPN (nginx's proxy_pass) gets HTTP/1.1, as before.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
