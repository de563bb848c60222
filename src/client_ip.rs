//! Trusted-proxy client IP resolution.
//!
//! The client IP is the socket peer, unless the peer is a trusted proxy: then `X-Forwarded-For`
//! is walked from the right to the first address that is not trusted. The leftmost entry is never
//! believed on its own — any client can write it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderMap;
use ipnet::IpNet;

/// The TCP peer of the connection a request arrived on. The server inserts it into request
/// extensions; layers that need the client's address read [`ClientIp`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The listening socket a request arrived on, inserted by the server beside [`PeerAddr`]: the
/// `X-Forwarded-Proto` and `X-Forwarded-Port` the upstream receives describe it (the scheme this
/// listener speaks and the port it listens on), never what the client wrote in its request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The connection's local address (its port is the one the client connected to).
    pub local_addr: SocketAddr,
    /// Whether the listener terminates TLS (`https`); plain HTTP otherwise.
    pub tls: bool,
}

/// The resolved client address, in request extensions (and echoed in response extensions for the
/// access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The set of proxies whose `X-Forwarded-*` headers are believed (`trusted_proxies` in config).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
}

/// A `trusted_proxies` entry that is neither a CIDR nor an IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR or IP address `{0}`")]
pub struct InvalidCidr(pub String);

impl TrustedProxies {
    /// Trusts nobody: the socket peer is always the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the given networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self { nets: nets.into_iter().collect() }
    }

    /// Parses CIDRs (`10.0.0.0/8`) or bare addresses (`127.0.0.1`, taken as a /32 or /128).
    pub fn parse<I, S>(entries: I) -> Result<Self, InvalidCidr>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = entries
            .into_iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map_err(|_| InvalidCidr(entry.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(nets))
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether any proxy is trusted at all.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Resolves the client address for a request from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        // Right to left over every X-Forwarded-For line: the rightmost untrusted hop is the client.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|line| line.rsplit(','));
        for hop in hops {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                // Garbage in the chain: stop at the last address we could believe.
                None => break,
            }
        }
        client
    }
}

/// Maps IPv4-mapped IPv6 (`::ffff:1.2.3.4`, as a dual-stack socket reports) to IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = IpAddr::from_str(hop) {
        return Some(canonical(ip));
    }
    // `1.2.3.4:5678` or `[::1]:5678`
    SocketAddr::from_str(hop).ok().map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let ip = trusted.client_ip("203.0.113.9".parse().unwrap(), &headers(&["1.1.1.1"]));
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8", "127.0.0.1"]).unwrap();
        let ip =
            trusted.client_ip("127.0.0.1".parse().unwrap(), &headers(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]));
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_stops_the_walk() {
        let trusted = TrustedProxies::parse(["127.0.0.1/32"]).unwrap();
        let ip = trusted.client_ip("127.0.0.1".parse().unwrap(), &headers(&["1.1.1.1, nonsense"]));
        assert_eq!(ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let trusted = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        assert!(trusted.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse(["not-an-ip"]).is_err());
    }
}
