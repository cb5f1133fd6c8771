//! Who the client is: one IPv4 address or one IPv6 /64, as the trusted-proxy rules decide it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use actix_web::HttpRequest;

use crate::config::Config;

/// A client as the limits see it: one IPv4 address, or one IPv6 /64 (a subscriber commonly holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(IpAddr);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
            IpAddr::V4(ip) => write!(f, "{ip}"),
        }
    }
}

impl ClientId {
    /// The client an address belongs to: an IPv4-mapped IPv6 address is its IPv4 address; any
    /// other IPv6 address is its /64.
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1_u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
            v4 => Self(v4),
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
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        assert_eq!(client("::ffff:198.51.100.4"), "198.51.100.4");
    }
}
