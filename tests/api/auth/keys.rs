//! Keys made in the test: RSA by the `openssl` command (PKCS#1 DER, which jsonwebtoken signs
//! with), ECDSA P-256 and Ed25519 by aws-lc-rs (PKCS#8). Each signs tokens and shows its public
//! half as a JWK.

use std::process::Command;

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::Value;

pub struct Key {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    /// The public key as PEM text (RSA only): what a confusion attack signs HS256 with.
    pub public_pem: Option<String>,
}

impl Key {
    pub fn rsa(kid: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("llm-stream-rsa-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let private = dir.join("private.der");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(output.status.success(), "openssl {args:?}: {output:?}");
            output.stdout
        };
        let pem = dir.join("private.pem");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem.to_str().unwrap(),
        ]);
        openssl(&[
            "rsa",
            "-in",
            pem.to_str().unwrap(),
            "-traditional",
            "-outform",
            "DER",
            "-out",
            private.to_str().unwrap(),
        ]);
        let public = openssl(&["rsa", "-in", pem.to_str().unwrap(), "-pubout"]);
        let der = std::fs::read(&private).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Self {
            alg: Algorithm::RS256,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_rsa_der(&der),
            public_pem: Some(String::from_utf8(public).unwrap()),
        }
    }

    pub fn ec(kid: &str) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        Self {
            alg: Algorithm::ES256,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref()),
            public_pem: None,
        }
    }

    pub fn ed25519(kid: &str) -> Self {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        Self {
            alg: Algorithm::EdDSA,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_der(pair.to_pkcs8v1().unwrap().as_ref()),
            public_pem: None,
        }
    }

    /// A token with these claims, its header naming this key's id.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// The public half, as a key set publishes it.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }
}

/// A key set of these keys.
pub fn set(keys: &[&Key]) -> Value {
    serde_json::json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() })
}
