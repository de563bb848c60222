//! Kong-compatible route matching.
//!
//! TODO(router helper): matching engine, `Router` service, tests. The extension types below are
//! shared with the proxy and the access log and must keep their shape.

use std::sync::Arc;

/// Static facts about a route, shared by every request it matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteInfo {
    /// The route's `name`, if it has one.
    pub name: Option<Arc<str>>,
    /// The name of the service the route belongs to, if any.
    pub service_name: Option<Arc<str>>,
    /// Kong `preserve_host`: forward the client's `Host` instead of the upstream's.
    pub preserve_host: bool,
}

/// Values captured by a regex path (`~/users/(?P<id>[^/]+)$`), for transform templates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UriCaptures {
    /// Named groups in pattern order.
    pub named: Vec<(Arc<str>, String)>,
    /// Every group by index; index 0 is the whole match. Groups that did not take part are empty.
    pub positional: Vec<String>,
}

impl UriCaptures {
    /// The value of a named group.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.named.iter().find(|(n, _)| &**n == name).map(|(_, v)| v.as_str())
    }
}

/// What the router decided, in request extensions for the layers of the matched route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The matched route.
    pub route: Arc<RouteInfo>,
    /// Regex captures (empty for prefix paths).
    pub captures: UriCaptures,
    /// How many bytes at the start of the request path `strip_path` removes before proxying
    /// (0 when `strip_path` is false).
    pub strip_len: usize,
}

/// The matched route, echoed in response extensions so outer layers (the access log) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute(pub Arc<RouteInfo>);

/// Kong's join of the service path and what is left of the request path after `strip_path`.
pub fn upstream_path(service_path: &str, request_path: &str, strip_len: usize) -> String {
    let rest = request_path.get(strip_len..).unwrap_or("");
    let base = service_path.trim_end_matches('/');
    let rest = rest.trim_start_matches('/');
    match (base.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_owned(),
        (false, true) => base.to_owned(),
        (true, false) => format!("/{rest}"),
        (false, false) => format!("{base}/{rest}"),
    }
}
