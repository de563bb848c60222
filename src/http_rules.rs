//! The HTTP rules every layer applies alike, on the ground floor so each layer reads them from
//! here and none from another layer: which headers are hop-by-hop, which the gateway owns or
//! decides (never taken from a client, never removed by a client's `Connection`, never accepted
//! as trailers), and which path segments an upstream reads as `.` or `..`.
//! [`SanitizeLayer`](crate::sanitize::SanitizeLayer) applies them at the edge; the router, the
//! transform layer and the proxy check every path and header they build against the same rules.
//! This module imports nothing else from the crate.

#[cfg(feature = "proxy")]
use http::header::TRANSFER_ENCODING;
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderName};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// `Proxy-Authorization` is the client's credential for the next proxy, never for the upstream.
// A `static`: a `const` array of `HeaderName`s would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
];

/// Whether `name` is on the fixed hop-by-hop list (transform rules may not set these).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The forwarding headers [`SanitizeLayer`](crate::sanitize::SanitizeLayer) drops from a peer outside the trusted proxies unless
/// given another list ([`SanitizeLayer::strip_from_untrusted`](crate::sanitize::SanitizeLayer::strip_from_untrusted), `gateway.strip_from_untrusted`):
/// each tells an upstream something about the client or the original request that only a proxy
/// the gateway trusts may say (RFC 7239 `Forwarded`, the prefix/scheme/TLS hints frameworks read,
/// the path overrides of IIS and Symfony, Akamai's and Cloudflare's client IP, and the method
/// override some frameworks apply).
pub const DEFAULT_STRIP_FROM_UNTRUSTED: [&str; 9] = [
    "forwarded",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-original-url",
    "x-rewrite-url",
    "true-client-ip",
    "x-http-method-override",
];

/// Removes the headers named in `Connection`, then the fixed hop-by-hop list, from an upstream's
/// response. Returns whether it carried `Transfer-Encoding` (the response was read by it, so a
/// `Content-Length` beside it is not the body's length).
#[cfg(feature = "proxy")]
pub(crate) fn strip_response_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let doomed = doomed_names(headers, |_| false);
    if doomed.is_empty() {
        return false;
    }
    let transfer_encoding = doomed.contains(&TRANSFER_ENCODING);
    remove_doomed(headers, doomed, false);
    transfer_encoding
}

/// Removes the headers named in `Connection`, then the fixed hop-by-hop list, from a request
/// on its way upstream; `Connection` never removes a header the gateway resolved or set.
#[cfg(feature = "proxy")]
pub(crate) fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
    let doomed = doomed_names(headers, |_| false);
    if !doomed.is_empty() {
        remove_doomed(headers, doomed, true);
    }
}

/// The hop-by-hop headers present and every header for which `also` is true, in one pass over
/// the names: the common request has none of them, and then nothing is allocated.
pub(crate) fn doomed_names(headers: &HeaderMap, also: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) || also(name) {
            doomed.push(name.clone());
        }
    }
    doomed
}

/// Removes `doomed` and the headers `Connection` names; with `protect_gateway_headers`, not
/// those the gateway resolves or sets ([`is_gateway_header`]): a client may not use `Connection`
/// to remove what the gateway decided.
pub(crate) fn remove_doomed(
    headers: &mut HeaderMap,
    mut doomed: Vec<HeaderName>,
    protect_gateway_headers: bool,
) {
    if doomed.contains(&CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| !(protect_gateway_headers && is_gateway_header(name)))
            .collect();
        doomed.extend(named);
    }
    for name in doomed {
        headers.remove(name);
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether the gateway resolves or sets `name` on a request: `Host` (routing), `Authorization`
/// (what an auth layer verified is what the upstream sees), `X-Request-ID`, the forwarding
/// headers and the owned headers.
fn is_gateway_header(name: &HeaderName) -> bool {
    *name == HOST
        || *name == AUTHORIZATION
        || *name == X_REQUEST_ID
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_PROTO
        || *name == X_FORWARDED_HOST
        || *name == X_FORWARDED_PORT
        || is_owned_header(name.as_str())
}

/// Whether a request trailer field named `name` is dropped by [`sanitize_trailers`].
fn is_refused_trailer(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || is_gateway_header(name)
        || *name == CONTENT_LENGTH
        || name.as_str().starts_with("x-forwarded-")
        || DEFAULT_STRIP_FROM_UNTRUSTED.contains(&name.as_str())
}

/// Drops from a request's trailers every field the gateway owns or decides as a header — the
/// owned headers, `X-Request-ID`, the forwarding headers (`X-Forwarded-*`, `Forwarded` and the
/// rest of [`DEFAULT_STRIP_FROM_UNTRUSTED`]), `Host`, `Authorization`, framing and hop-by-hop
/// fields — so an upstream that merges trailers into headers cannot be told what the gateway
/// would have removed (RFC 9110 §6.5.1 forbids these in trailers anyway). Trusted peers included:
/// no proxy sends forwarding information in trailers.
pub fn sanitize_trailers(trailers: &mut HeaderMap) {
    let doomed = doomed_names(trailers, is_refused_trailer);
    for name in doomed {
        trailers.remove(name);
    }
}

/// Whether the gateway owns `name` (compared case-insensitively with `_` read as `-`): clients
/// may never set it, only verified state may.
pub fn is_owned_header(name: &str) -> bool {
    const OWNED: [&[u8]; 7] = [
        b"x-consumer-id",
        b"x-consumer-custom-id",
        b"x-consumer-username",
        b"x-consumer-groups",
        b"x-credential-identifier",
        b"x-anonymous-consumer",
        b"x-real-ip",
    ];
    // `x-credential-*` also covers the introspection headers (sub, scope, client id).
    const OWNED_PREFIXES: [&[u8]; 2] = [b"x-portcullis-", b"x-credential-"];
    let name = name.as_bytes();
    if name.len() < 9 || name[0] | 0x20 != b'x' || !matches!(name[1], b'-' | b'_') {
        return false;
    }
    let folded = |b: u8| if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
    let same = |a: &[u8], b: &[u8]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| folded(*x) == *y);
    OWNED.iter().any(|owned| same(name, owned))
        || OWNED_PREFIXES
            .iter()
            .any(|prefix| name.len() > prefix.len() && same(&name[..prefix.len()], prefix))
}

/// Whether `segment` reads as `.` or `..` to some upstream: `%2e` counts as a dot, and only the
/// part before the first `;` counts (a path parameter; Tomcat reads `..;x` as `..`).
pub(crate) fn is_dot_segment(segment: &[u8]) -> bool {
    let mut rest = match segment.iter().position(|&b| b == b';') {
        Some(at) => &segment[..at],
        None => segment,
    };
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', after @ ..] => after,
            [b'%', b'2', e, after @ ..] if *e | 0x20 == b'e' => after,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// Whether `path` holds a segment that [reads as a dot segment](is_dot_segment), splitting on
/// `/` and `\` and on their escapes `%2F` and `%5C` (as an upstream that decodes them would): the
/// check every path built for an upstream passes, with or without [`SanitizeLayer`](crate::sanitize::SanitizeLayer) in front.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Every dot segment holds a `.` or a `%`; most paths are done here.
    if !bytes.iter().any(|&b| b == b'.' || b == b'%') {
        return false;
    }
    let mut start = 0;
    let mut i = 0;
    while i <= bytes.len() {
        let separator = match &bytes[i..] {
            [] | [b'/' | b'\\', ..] => 1,
            [b'%', b'2', f, ..] if *f | 0x20 == b'f' => 3,
            [b'%', b'5', c, ..] if *c | 0x20 == b'c' => 3,
            _ => {
                i += 1;
                continue;
            }
        };
        if is_dot_segment(&bytes[start..i]) {
            return true;
        }
        i += separator;
        start = i;
    }
    false
}

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "proxy")]
    use http::HeaderValue;

    #[test]
    fn dot_segments_as_an_upstream_reads_them() {
        for dot in [".", "..", "%2e", "%2E%2e", ".%2E", "..;x", ".;", "%2e;a=b"] {
            assert!(is_dot_segment(dot.as_bytes()), "{dot}");
        }
        for not in ["", "...", "a.", ".x", "%2e%2e%2e", "%2", "%2f", ";..", "x..;"] {
            assert!(!is_dot_segment(not.as_bytes()), "{not}");
        }
        for path in [
            "/base/../secret",
            "/a/.",
            "/..",
            "/a/%2e%2e/b",
            "/a/..%2Fb",
            "/a%2F..%5cb",
            "/a\\..\\b",
            "/a/..;/b",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in
            ["/", "/base/api../x", "/a/.well-known/b", "/a%2e%2ex", "/v1.2/x", "/a;b/c", "/x%25..", ""]
        {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn owned_headers_fold_case_and_underscores() {
        for name in
            ["x-consumer-id", "X_Consumer_ID", "x-real-ip", "x-portcullis-anything", "x-credential-sub"]
        {
            assert!(is_owned_header(name), "{name}");
        }
        for name in ["x-request-id", "x-forwarded-for", "authorization", "x-consumer"] {
            assert!(!is_owned_header(name), "{name}");
        }
    }

    #[cfg(feature = "proxy")]
    #[test]
    fn the_proxys_own_pass_keeps_gateway_headers_on_the_way_up_only() {
        let headers = || {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static("X-Request-ID, X-Forwarded-For, X-Gone"));
            h.insert(X_REQUEST_ID, HeaderValue::from_static("id"));
            h.insert(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.7"));
            h.insert("x-gone", HeaderValue::from_static("1"));
            h
        };
        let mut up = headers();
        strip_request_hop_by_hop(&mut up);
        let mut names: Vec<&str> = up.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["x-forwarded-for", "x-request-id"]);

        let mut down = headers();
        down.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(strip_response_hop_by_hop(&mut down), "it carried Transfer-Encoding");
        assert!(down.is_empty(), "an upstream's Connection names what it likes: {down:?}");
        assert!(!strip_response_hop_by_hop(&mut headers()));
    }
}
