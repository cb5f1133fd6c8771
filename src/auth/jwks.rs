//! AUTH_JWKS_URL: the identity provider's public keys, fetched in the background at start, every
//! [`REFRESH_EVERY`], and when a token names a key id the set does not have (at most once every
//! [`UNKNOWN_KID_EVERY`], whatever the traffic, so that nobody can make us hammer the provider).
//! A failed fetch keeps the last good keys. No request ever waits on the key server: until a first
//! set has come, a token that needs one is refused `503 auth_unavailable`.

use std::{
    sync::{Arc, Mutex, PoisonError, RwLock, Weak},
    time::Duration,
};

use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};
use reqwest::Url;
use tokio::{sync::Notify, time::Instant};

/// How often the key set is fetched again while it works.
const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// The most often an unknown key id makes us fetch again.
const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(30);
/// While no key set has come yet, the wait between attempts doubles from one second up to this.
const FIRST_FETCH_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// One fetch's time limit, and the largest key set read.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BYTES: usize = 1 << 20;

/// One usable key of the set.
pub struct Entry {
    kid: Option<String>,
    /// The key's `alg`, when the set names one: then only that algorithm may use it.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    pub key: DecodingKey,
}

/// What a token's key id finds.
pub enum Lookup {
    Found(Arc<Entry>),
    /// No key set has been fetched yet.
    NotFetched,
    /// Why the token cannot be verified with the set.
    Refused(String),
}

pub struct Jwks {
    url: Url,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<Vec<Arc<Entry>>>>>,
    /// Wakes the refresher for an unknown key id.
    wanted: Arc<Notify>,
    last_wanted: Mutex<Option<Instant>>,
}

impl Jwks {
    /// Starts fetching `url` in the background.
    pub fn start(url: Url) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        let jwks = Arc::new(Self {
            url,
            http,
            keys: RwLock::default(),
            wanted: Arc::default(),
            last_wanted: Mutex::default(),
        });
        tokio::spawn(refresh(Arc::downgrade(&jwks)));
        jwks
    }

    /// The key that verifies a token with key id `kid` signed with `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(keys) = keys else {
            self.want();
            return Lookup::NotFetched;
        };
        let fits = |entry: &&Arc<Entry>| {
            entry.family == alg.family() && entry.alg.is_none_or(|own| own == alg)
        };
        match kid {
            Some(kid) => {
                let Some(entry) = keys.iter().find(|e| e.kid.as_deref() == Some(kid)) else {
                    self.want();
                    return Lookup::Refused(
                        "The token names a signing key (kid) the identity provider's key set does \
                         not have; if its keys were just rotated, try again in a minute."
                            .into(),
                    );
                };
                if fits(&entry) {
                    Lookup::Found(Arc::clone(entry))
                } else {
                    Lookup::Refused(format!(
                        "The token is signed with {alg:?}, which its key (kid) is not for."
                    ))
                }
            }
            None => {
                let mut fitting = keys.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(entry), None) => Lookup::Found(Arc::clone(entry)),
                    (None, _) => Lookup::Refused(format!(
                        "The identity provider's key set has no key for {alg:?}."
                    )),
                    (Some(_), Some(_)) => Lookup::Refused(
                        "The token names no signing key (kid), and the key set has several.".into(),
                    ),
                }
            }
        }
    }

    /// Asks the refresher for a fetch now, unless one was asked for within [`UNKNOWN_KID_EVERY`].
    fn want(&self) {
        let now = Instant::now();
        let mut last = self
            .last_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < UNKNOWN_KID_EVERY) {
            return;
        }
        *last = Some(now);
        self.wanted.notify_one();
    }

    fn has_keys(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// One fetch; the keys are replaced only by a set with at least one usable key.
    async fn fetch(&self) -> Result<usize, String> {
        let response = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("it answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_BYTES as u64)
        {
            return Err("the key set is larger than 1 MiB".into());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if body.len() > MAX_BYTES {
            return Err("the key set is larger than 1 MiB".into());
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JSON Web Key Set ({e})"))?;
        let entries: Vec<Arc<Entry>> = set.keys.iter().filter_map(entry).map(Arc::new).collect();
        if entries.is_empty() {
            return Err("the key set has no key this server can use".into());
        }
        let count = entries.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(entries));
        Ok(count)
    }
}

/// A key of the set this server can verify with: RSA, EC (P-256, P-384) or Ed25519, for
/// signatures. A symmetric (`oct`) key in a public key set is never used.
fn entry(jwk: &Jwk) -> Option<Entry> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|usage| *usage != PublicKeyUse::Signature)
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(ec)
            if matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
        {
            AlgorithmFamily::Ec
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            AlgorithmFamily::Ed
        }
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Some(Algorithm::try_from(alg).ok()?),
        None => None,
    };
    if alg.is_some_and(|alg| alg.family() != family) {
        return None;
    }
    Some(Entry {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// Fetches at once, then every [`REFRESH_EVERY`] or when asked; while no set has come, again and
/// again with a growing wait. Ends when the application is gone.
async fn refresh(jwks: Weak<Jwks>) {
    let mut backoff = Duration::from_secs(1);
    let mut warned = false;
    loop {
        let Some(strong) = jwks.upgrade() else {
            return;
        };
        let had_keys = strong.has_keys();
        match strong.fetch().await {
            Ok(count) => {
                if !had_keys {
                    // Asks made while no key had come were for this first set: an unknown kid
                    // may ask for the next one at once.
                    *strong
                        .last_wanted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                }
                if !had_keys || warned {
                    tracing::info!(keys = count, "AUTH_JWKS_URL fetched: tokens are verified");
                }
                warned = false;
                backoff = Duration::from_secs(1);
            }
            Err(why) if had_keys => {
                tracing::warn!(%why, "AUTH_JWKS_URL could not be fetched again: the last good keys stay in use");
            }
            Err(why) => {
                if !warned {
                    tracing::warn!(%why, "AUTH_JWKS_URL could not be fetched: requests whose tokens need its keys get 503 auth_unavailable until it is");
                    warned = true;
                }
            }
        }
        let wait = if strong.has_keys() {
            REFRESH_EVERY
        } else {
            let wait = backoff;
            backoff = (backoff * 2).min(FIRST_FETCH_BACKOFF_MAX);
            wait
        };
        // `notify_one` keeps a permit when nobody waits, so an ask made meanwhile is not lost.
        let wanted = Arc::clone(&strong.wanted);
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wanted.notified() => {}
        }
    }
}
