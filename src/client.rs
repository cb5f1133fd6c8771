//! Who the client is: a user whose signed token (see `auth`) names their `sub`, or, anonymous, one
//! IPv4 address or one IPv6 /64, as the trusted-proxy rules decide it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use actix_web::{HttpMessage, HttpRequest};
use serde::Deserialize;

use crate::config::Config;

/// A client as the limits see it: a signed-in user (by a hash of their `sub`, which is never put
/// raw in a key), or an address: one IPv4 address, or one IPv6 /64 (a subscriber commonly holds a
/// whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    Address(IpAddr),
    User(UserKey),
}

/// The first 128 bits of the SHA-256 of a user's `sub`: the same on every instance, Copy, and
/// safe in a Redis key whatever the `sub` holds (braces, spaces, anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserKey(u128);

impl UserKey {
    pub fn of(sub: &str) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sub.as_bytes());
        let mut first = [0_u8; 16];
        first.copy_from_slice(&digest.as_ref()[..16]);
        Self(u128::from_be_bytes(first))
    }
}

impl std::fmt::Display for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Address(IpAddr::V6(ip)) => write!(f, "{ip}/64"),
            Self::Address(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Self::User(key) => write!(f, "user:{key}"),
        }
    }
}

/// Whose an answer or a conversation is: a signed-in user's, who alone may resume, cancel, read or
/// follow it up; or nobody's (anonymous), where its id is the only credential, as it always was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owner {
    #[default]
    Anonymous,
    User(UserKey),
}

impl Owner {
    /// The owner as stored beside an answer or in a conversation's key: empty when anonymous.
    pub fn tag(&self) -> String {
        match self {
            Self::Anonymous => String::new(),
            Self::User(key) => key.to_string(),
        }
    }
}

/// The per-user limits a token's `llm_stream` claim sets (each absent one is the server's
/// default). The operator's app signs them: nothing else from the client is trusted. A claim of
/// another shape (a negative or fractional number, an unknown key) makes the token invalid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserLimits {
    pub requests_per_minute: Option<u32>,
    pub burst: Option<u32>,
    pub max_streams: Option<u32>,
    /// This user's token budget (0: none), replacing TOKEN_BUDGET…
    pub tokens: Option<u64>,
    /// … over this many seconds, replacing TOKEN_BUDGET_WINDOW_SECS.
    pub tokens_window_secs: Option<u64>,
}

/// The limits one client lives by: the server's, or the ones its token sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Plan {
    /// New streams per minute; 0: no rate limit.
    pub per_minute: u32,
    pub burst: u32,
    pub max_streams: u32,
    /// The token budget: tokens per window (0: no budget), refilled evenly.
    pub tokens: u64,
    pub tokens_window: std::time::Duration,
}

/// Who is asking: what the limits key on, the limits themselves, and whose answers are theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: ClientId,
    /// The verified `sub`, for the log line; never in a metric.
    sub: Option<Arc<str>>,
    limits: UserLimits,
}

impl Client {
    pub fn anonymous(address: ClientId) -> Self {
        Self {
            id: address,
            sub: None,
            limits: UserLimits::default(),
        }
    }

    /// A user whose token was verified.
    pub fn user(sub: &str, limits: UserLimits) -> Self {
        Self {
            id: ClientId::User(UserKey::of(sub)),
            sub: Some(sub.into()),
            limits,
        }
    }

    /// Who is asking: the user the auth middleware verified, else the address.
    pub fn of(request: &HttpRequest, config: &Config) -> Self {
        if let Some(client) = request.extensions().get::<Self>() {
            return client.clone();
        }
        Self::anonymous(ClientId::of(request, config))
    }

    pub fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    pub fn owner(&self) -> Owner {
        match self.id {
            ClientId::User(key) => Owner::User(key),
            ClientId::Address(_) => Owner::Anonymous,
        }
    }

    /// The limits in force: the token's, else the server's.
    pub fn plan(&self, config: &Config) -> Plan {
        let per_minute = self
            .limits
            .requests_per_minute
            .unwrap_or(config.rate_limit_per_minute);
        // A plan that sets its rate but not its burst gets its rate as its burst, as the settings do.
        let burst = self
            .limits
            .burst
            .unwrap_or(if self.limits.requests_per_minute.is_some() {
                per_minute
            } else {
                config.rate_limit_burst()
            });
        Plan {
            per_minute,
            burst,
            max_streams: self
                .limits
                .max_streams
                .unwrap_or(config.max_streams_per_client),
            tokens: self.limits.tokens.unwrap_or(config.token_budget),
            tokens_window: self
                .limits
                .tokens_window_secs
                .filter(|secs| *secs > 0)
                .map_or(config.token_budget_window, std::time::Duration::from_secs),
        }
    }

    /// How the per-stream log line names the client: `user:<sub>` or `ip:<address>`.
    pub fn log_name(&self) -> String {
        match &self.sub {
            Some(sub) => format!("user:{sub}"),
            None => format!("ip:{}", self.id),
        }
    }
}

impl ClientId {
    /// The client an address belongs to: an IPv4-mapped IPv6 address is its IPv4 address; any
    /// other IPv6 address is its /64.
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Address(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1_u128 << 64) - 1);
                    Self::Address(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
            v4 => Self::Address(v4),
        }
    }

    /// The TCP peer, unless the peer is a trusted proxy: then `X-Real-IP`, else the rightmost
    /// `X-Forwarded-For` address that is not itself a trusted proxy. Nobody else can choose who they are.
    pub fn of(request: &HttpRequest, config: &Config) -> Self {
        let Some(peer) = request.peer_addr().map(|addr| addr.ip()) else {
            return Self::from_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        };
        if !config.is_trusted_proxy(peer) {
            return Self::from_ip(peer);
        }
        let headers = request.headers();
        let real_ip = headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        let forwarded = || {
            headers
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .find(|ip| !config.is_trusted_proxy(*ip))
        };
        Self::from_ip(real_ip.or_else(forwarded).unwrap_or(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(text: &str) -> String {
        ClientId::from_ip(text.parse().unwrap_or_else(|_| panic!("{text}"))).to_string()
    }

    #[test]
    fn an_ipv4_address_is_a_client_of_its_own() {
        assert_eq!(client("203.0.113.7"), "203.0.113.7");
    }

    #[test]
    fn an_ipv6_address_is_its_slash_64() {
        assert_eq!(
            client("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client("2001:db8:1:2::1"), client("2001:db8:1:2:ffff::9"));
        assert_ne!(client("2001:db8:1:2::1"), client("2001:db8:1:3::1"));
    }

    #[test]
    fn a_user_is_a_hash_of_their_sub_safe_in_a_key() {
        let user = ClientId::User(UserKey::of("{user 42}")).to_string();
        assert_eq!(user.len(), "user:".len() + 32);
        assert!(user["user:".len()..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(UserKey::of("a"), UserKey::of("a"));
        assert_ne!(UserKey::of("a"), UserKey::of("b"));
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        assert_eq!(client("::ffff:198.51.100.4"), "198.51.100.4");
    }
}
