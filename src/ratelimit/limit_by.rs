//! What a limit is counted per: the key extractor.
//!
//! Keys are bounded: one longer than [`MAX_KEY_BYTES`] (a header value, a consumer id, a custom
//! key: anything a client can make long) is replaced by `<kind>:sha256:<64 hex digits>`, so the
//! memory store's bound on entries is also one on bytes and a Redis key never carries a
//! client's kilobytes. IPv6 clients count per network (`/64` by default, see
//! [`SlidingWindowLayer::ipv6_prefix`](super::SlidingWindowLayer::ipv6_prefix)): one subscriber holds 2^64
//! addresses, and a bucket per address would be no limit at all.

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use http::{HeaderName, Request};
use sha2::{Digest, Sha256};

use crate::client_ip::ClientIp;
use crate::consumer::Consumer;
use crate::ext::RouteMatch;

type KeyFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// The longest key kept as it is; a longer one is hashed (SHA-256, hex) behind its kind.
pub const MAX_KEY_BYTES: usize = 256;

/// The default prefix length IPv6 clients are aggregated to (a subscriber's `/64`).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Whom a limit applies to. Like Kong, every choice falls back to the client IP when the request
/// has no value for it (no consumer yet, no such header, another path), so a request is never
/// unlimited.
#[derive(Clone, Default)]
pub enum LimitBy {
    /// The authenticated [`Consumer`]'s id.
    Consumer,
    /// The credential that authenticated the request (`Consumer::credential_id`), else the
    /// consumer's id.
    Credential,
    /// The client IP ([`ClientIp`], resolved through the trusted proxies: a spoofed
    /// `X-Forwarded-For` from an untrusted peer is ignored). IPv6 clients share their network's
    /// bucket (the layer's `ipv6_prefix`, default `/64`).
    #[default]
    ClientIp,
    /// The value of a request header.
    Header(HeaderName),
    /// Kong's `limit_by: path` with its `path`: requests whose (normalized) path is exactly this
    /// one share one bucket; any other path is counted by client IP, as in Kong. Never a bucket
    /// per distinct path, which a client could rotate (`/login;1`, `/login/x2`, ...).
    Path(Arc<str>),
    /// The matched route's service ([`RouteMatch`]): one limit for everybody on the service.
    Service,
    /// A closure over the request head; `None` falls back to the client IP.
    Custom(Arc<KeyFn>),
}

impl LimitBy {
    /// A key computed by `f` from the request head.
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        LimitBy::Custom(Arc::new(f))
    }

    /// Requests to exactly `path` (compared with the normalized request path) share one bucket;
    /// the others are counted by client IP.
    pub fn path(path: impl Into<Arc<str>>) -> Self {
        LimitBy::Path(path.into())
    }

    /// The key of `req`: a kind prefix and the value, so that a consumer named like an IP never
    /// shares a counter with that IP; at most [`MAX_KEY_BYTES`] long. Client IPs that are IPv6
    /// are cut to their first `ipv6_prefix` bits.
    pub(crate) fn key<B>(&self, req: Request<B>, ipv6_prefix: u8) -> (String, Request<B>) {
        let found = match self {
            LimitBy::Consumer => req.extensions().get::<Consumer>().map(|c| format!("consumer:{}", c.id)),
            LimitBy::Credential => req.extensions().get::<Consumer>().map(|c| match &c.credential_id {
                Some(credential) => format!("credential:{credential}"),
                None => format!("consumer:{}", c.id),
            }),
            LimitBy::ClientIp => None,
            LimitBy::Header(name) => {
                req.headers().get(name).map(|v| format!("header:{}", String::from_utf8_lossy(v.as_bytes())))
            }
            // Kong compares the request path with `path` exactly (`req_path == conf.path`).
            LimitBy::Path(path) => (req.uri().path() == &**path).then(|| format!("path:{path}")),
            LimitBy::Service => req
                .extensions()
                .get::<RouteMatch>()
                .map(|m| format!("service:{}", m.route.service_name.as_deref().unwrap_or_default())),
            LimitBy::Custom(f) => {
                let (parts, body) = req.into_parts();
                let key = f(&parts).map(|k| format!("custom:{k}"));
                let req = Request::from_parts(parts, body);
                let key = key.unwrap_or_else(|| ip_key(&req, ipv6_prefix));
                return (bounded(key), req);
            }
        };
        let key = match found {
            Some(key) => bounded(key),
            None => ip_key(&req, ipv6_prefix),
        };
        (key, req)
    }
}

/// `key` itself, or `<kind>:sha256:<hex>` when it is longer than [`MAX_KEY_BYTES`]. The kind
/// (`header`, `consumer`, ...) is ours, so it stays readable in Redis and in the logs.
fn bounded(key: String) -> String {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let kind = key.split_once(':').map_or("key", |(kind, _)| kind);
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(kind.len() + 8 + 64);
    out.push_str(kind);
    out.push_str(":sha256:");
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn ip_key<B>(req: &Request<B>, ipv6_prefix: u8) -> String {
    match req.extensions().get::<ClientIp>() {
        Some(ClientIp(ip)) => match ip.to_canonical() {
            IpAddr::V4(v4) => format!("ip:{v4}"),
            IpAddr::V6(v6) if ipv6_prefix >= 128 => format!("ip:{v6}"),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & (u128::MAX << (128 - u32::from(ipv6_prefix.max(1))));
                format!("ip:{}/{ipv6_prefix}", Ipv6Addr::from(bits))
            }
        },
        // Outside the gateway nobody resolved the client: one shared key, never none.
        None => "ip:unknown".to_owned(),
    }
}

impl fmt::Debug for LimitBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitBy::Consumer => f.write_str("Consumer"),
            LimitBy::Credential => f.write_str("Credential"),
            LimitBy::ClientIp => f.write_str("ClientIp"),
            LimitBy::Header(name) => f.debug_tuple("Header").field(name).finish(),
            LimitBy::Path(path) => f.debug_tuple("Path").field(path).finish(),
            LimitBy::Service => f.write_str("Service"),
            LimitBy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(by: &LimitBy, req: Request<()>) -> String {
        by.key(req, DEFAULT_IPV6_PREFIX).0
    }

    fn from(ip: &str) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(ClientIp(ip.parse().unwrap()));
        req
    }

    #[test]
    fn falls_back_to_the_client_ip() {
        assert_eq!(key(&LimitBy::Consumer, from("192.0.2.1")), "ip:192.0.2.1");
        assert_eq!(key(&LimitBy::Consumer, Request::new(())), "ip:unknown");
    }

    #[test]
    fn consumer_and_credential() {
        let mut req = Request::new(());
        req.extensions_mut().insert(Consumer {
            id: "alice".into(),
            credential_id: Some("kid-1".into()),
            ..Consumer::default()
        });
        let (k, req) = LimitBy::Consumer.key(req, 64);
        assert_eq!(k, "consumer:alice");
        assert_eq!(key(&LimitBy::Credential, req), "credential:kid-1");
    }

    #[test]
    fn header_path_and_custom() {
        let req = Request::builder().uri("/a/b").header("x-api-key", "k1").body(()).unwrap();
        let (k, req) = LimitBy::Header(HeaderName::from_static("x-api-key")).key(req, 64);
        assert_eq!(k, "header:k1");
        let (k, req) = LimitBy::path("/a/b").key(req, 64);
        assert_eq!(k, "path:/a/b");
        let by = LimitBy::custom(|parts| Some(parts.uri.path().len().to_string()));
        assert_eq!(key(&by, req), "custom:4");
    }

    #[test]
    fn another_path_is_counted_by_client_ip_not_by_path() {
        let by = LimitBy::path("/login");
        for path in ["/login/x2", "/login;1", "/LOGIN", "/login/", "/loginx"] {
            let mut req = from("192.0.2.7");
            *req.uri_mut() = path.parse().unwrap();
            assert_eq!(key(&by, req), "ip:192.0.2.7", "{path}");
        }
        let mut req = from("192.0.2.7");
        *req.uri_mut() = "/login?x=1".parse().unwrap();
        assert_eq!(key(&by, req), "path:/login");
    }

    #[test]
    fn long_keys_are_hashed_behind_their_kind() {
        let long = "k".repeat(10_000);
        let req = Request::builder().header("x-api-key", &long).body(()).unwrap();
        let k = key(&LimitBy::Header(HeaderName::from_static("x-api-key")), req);
        assert!(k.starts_with("header:sha256:"), "{k}");
        assert_eq!(k.len(), "header:sha256:".len() + 64);
        // Distinct long keys stay distinct; a key of exactly the bound is kept as it is.
        let other = Request::builder().header("x-api-key", format!("{long}!")).body(()).unwrap();
        assert_ne!(key(&LimitBy::Header(HeaderName::from_static("x-api-key")), other), k);
        let exact = format!("custom:{}", "c".repeat(MAX_KEY_BYTES - "custom:".len()));
        let suffix = exact["custom:".len()..].to_owned();
        assert_eq!(key(&LimitBy::custom(move |_| Some(suffix.clone())), Request::new(())), exact);
        let longer = "c".repeat(MAX_KEY_BYTES);
        let k = key(&LimitBy::custom(move |_| Some(longer.clone())), Request::new(()));
        assert!(k.starts_with("custom:sha256:") && k.len() <= MAX_KEY_BYTES, "{k}");
    }

    #[test]
    fn ipv6_clients_share_their_network() {
        let by = LimitBy::ClientIp;
        assert_eq!(key(&by, from("2001:db8:1:2:aaaa::1")), "ip:2001:db8:1:2::/64");
        assert_eq!(key(&by, from("2001:db8:1:2:ffff:ffff:ffff:ffff")), "ip:2001:db8:1:2::/64");
        assert_eq!(key(&by, from("2001:db8:1:3::1")), "ip:2001:db8:1:3::/64");
        assert_eq!(by.key(from("2001:db8:1:2:aaaa::1"), 48).0, "ip:2001:db8:1::/48");
        assert_eq!(by.key(from("2001:db8:1:2:aaaa::1"), 128).0, "ip:2001:db8:1:2:aaaa::1");
        assert_eq!(by.key(from("2001:db8::1"), 1).0, "ip:::/1");
        // IPv4, and IPv4 written as IPv6, stay one address each.
        assert_eq!(key(&by, from("192.0.2.1")), "ip:192.0.2.1");
        assert_eq!(key(&by, from("::ffff:192.0.2.1")), "ip:192.0.2.1");
    }
}
