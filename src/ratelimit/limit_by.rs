//! What a limit is counted per: the key extractor.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, Request};

use crate::client_ip::ClientIp;
use crate::consumer::Consumer;
use crate::router::RouteMatch;

type KeyFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// Whom a limit applies to. Like Kong, every choice falls back to the client IP when the request
/// has no value for it (no consumer yet, no such header), so a request is never unlimited.
#[derive(Clone, Default)]
pub enum LimitBy {
    /// The authenticated [`Consumer`]'s id.
    Consumer,
    /// The credential that authenticated the request (`Consumer::credential_id`), else the
    /// consumer's id.
    Credential,
    /// The client IP ([`ClientIp`], resolved through the trusted proxies: a spoofed
    /// `X-Forwarded-For` from an untrusted peer is ignored).
    #[default]
    ClientIp,
    /// The value of a request header.
    Header(HeaderName),
    /// The (normalized) request path.
    Path,
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

    /// The key of `req`: a kind prefix and the value, so that a consumer named like an IP never
    /// shares a counter with that IP.
    pub(crate) fn key<B>(&self, req: Request<B>) -> (String, Request<B>) {
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
            LimitBy::Path => Some(format!("path:{}", req.uri().path())),
            LimitBy::Service => req
                .extensions()
                .get::<RouteMatch>()
                .map(|m| format!("service:{}", m.route.service_name.as_deref().unwrap_or_default())),
            LimitBy::Custom(f) => {
                let (parts, body) = req.into_parts();
                let key = f(&parts).map(|k| format!("custom:{k}"));
                let req = Request::from_parts(parts, body);
                return (key.unwrap_or_else(|| ip_key(&req)), req);
            }
        };
        (found.unwrap_or_else(|| ip_key(&req)), req)
    }
}

fn ip_key<B>(req: &Request<B>) -> String {
    match req.extensions().get::<ClientIp>() {
        Some(ClientIp(ip)) => format!("ip:{ip}"),
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
            LimitBy::Path => f.write_str("Path"),
            LimitBy::Service => f.write_str("Service"),
            LimitBy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(by: &LimitBy, req: Request<()>) -> String {
        by.key(req).0
    }

    #[test]
    fn falls_back_to_the_client_ip() {
        let mut req = Request::new(());
        req.extensions_mut().insert(ClientIp("192.0.2.1".parse().unwrap()));
        assert_eq!(key(&LimitBy::Consumer, req), "ip:192.0.2.1");
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
        let (k, req) = LimitBy::Consumer.key(req);
        assert_eq!(k, "consumer:alice");
        assert_eq!(key(&LimitBy::Credential, req), "credential:kid-1");
    }

    #[test]
    fn header_path_and_custom() {
        let req = Request::builder().uri("/a/b").header("x-api-key", "k1").body(()).unwrap();
        let (k, req) = LimitBy::Header(HeaderName::from_static("x-api-key")).key(req);
        assert_eq!(k, "header:k1");
        let (k, req) = LimitBy::Path.key(req);
        assert_eq!(k, "path:/a/b");
        let by = LimitBy::custom(|parts| Some(parts.uri.path().len().to_string()));
        assert_eq!(key(&by, req), "custom:4");
    }
}
