//! Kong-compatible route matching.
//!
//! A [`Router`] holds [`Route`]s, each paired with the service that handles the requests it
//! matches (usually the route's plugin stack in front of the proxy). It is a tower [`Service`]:
//! it picks a route, puts a [`RouteMatch`] in the request extensions, calls that route's service,
//! and puts a [`MatchedRoute`] in the response extensions so outer layers (the access log) know
//! which route answered. When nothing matches — a wrong method included — it answers `404` with
//! the JSON body of [`Rejection::no_route`].
//!
//! # Matching (Kong 3 `traditional_compatible`)
//!
//! A route matches when every field it sets matches; unset fields match anything, and a route
//! must set at least one of them.
//!
//! - **paths**: a plain path (`/api`) is a string-prefix match on the request path, so `/api`
//!   also matches `/apiv2`. A path starting with `~` is a regex anchored at the start of the path
//!   (`~/users/(?P<id>\d+)$`); its named and positional groups land in [`RouteMatch::captures`].
//!   The path is matched as given (an earlier layer normalizes it); the query is never part of it.
//!   Matching is case-sensitive, as in Kong, unless the route sets
//!   [`Route::case_insensitive_paths`] (then ASCII case is ignored, prefix and regex alike).
//! - **methods**: exact, uppercase (`GET`).
//! - **hosts**: case-insensitive; the request's `Host` header, or the URI authority for HTTP/2.
//!   The request's port is ignored unless the configured host has one (`api.test:8443`).
//!   `*.example.com` matches any host ending in `.example.com`; `example.*` any host starting
//!   with `example.`.
//! - **headers**: each configured header must have one of the accepted values (case-insensitive).
//!
//! # Priority
//!
//! When several routes match, the first one in this order wins:
//!
//! 1. the route that sets **more fields** (methods, hosts, headers, paths each count one);
//! 2. a **regex path** before a prefix path;
//! 3. among regex paths, the higher [`Route::regex_priority`];
//! 4. among prefix paths, the **longest prefix**;
//! 5. the route added first (file order).
//!
//! Every (route, path) pair is ranked once when the router is built, so finding a route is a
//! scan that stops at the first match. All regex paths sit in one [`regex::RegexSet`], so one
//! pass over the path tells which of them match; only the winning regex runs again for captures.
//!
//! # `strip_path` and the upstream path
//!
//! With `strip_path` (the default) [`RouteMatch::strip_len`] is the length of the matched prefix,
//! or of the whole regex match. The router only records it: the proxy's
//! [`proxy::upstream_path`](crate::proxy::upstream_path) joins the service's path with the rest of
//! the request path the way Kong does, and refuses a joined path that holds a `.` or `..` segment
//! (`/api../secret` on route `/api` would be `/base/../secret`): the upstream would resolve it
//! out of the service's path.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use portcullis::router::{MatchedRoute, Route, RouteMatch, Router};
//! use tower::{service_fn, ServiceExt};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Every route has its own service type, so they are boxed to one type.
//!     let users = service_fn(|req: Request<()>| async move {
//!         let found = req.extensions().get::<RouteMatch>().cloned();
//!         let id = found.and_then(|m| m.captures.get("id").map(str::to_owned)).unwrap_or_default();
//!         Ok::<_, Infallible>(Response::new(Bytes::from(format!("user {id}"))))
//!     })
//!     .boxed_clone();
//!     let api = service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Bytes::from("api")))
//!     })
//!     .boxed_clone();
//!
//!     let router = Router::builder()
//!         .route(Route::new().name("api").paths(["/api"]), api)
//!         .route(Route::new().name("user").paths([r"~/api/users/(?P<id>\d+)$"]).methods(["GET"]), users)
//!         .build()?;
//!
//!     // Both routes match; the one that also sets `methods` wins.
//!     let request = Request::get("/api/users/42?verbose=1").body(())?;
//!     let response = router.clone().oneshot(request).await?;
//!     assert_eq!(response.body(), "user 42");
//!     let matched = response.extensions().get::<MatchedRoute>().and_then(|m| m.0.name.as_deref());
//!     assert_eq!(matched, Some("user"));
//!
//!     let request = Request::post("/api/users/42").body(())?;
//!     let response = router.clone().oneshot(request).await?;
//!     assert_eq!(response.body(), "api");
//!
//!     let request = Request::get("/elsewhere").body(())?;
//!     let response = router.oneshot(request).await?;
//!     assert_eq!(response.status(), StatusCode::NOT_FOUND);
//!     Ok(())
//! }
//! ```

use std::cmp::Reverse;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response};
use pin_project_lite::pin_project;
use regex::{Regex, RegexSet};
use tower::Service;
use tower::util::Oneshot;

use crate::error::Rejection;
/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::{MatchedRoute, RouteInfo, RouteMatch, UriCaptures};
use crate::future::RejectOrInner;

// === impl Route ===

/// One route: what a request must look like to go to the route's service.
///
/// Built with chained setters; every field is optional, but [`RouterBuilder::build`] rejects a
/// route that sets none of paths, methods, hosts and headers.
///
/// ```
/// use portcullis::router::Route;
///
/// let route = Route::new()
///     .name("user")
///     .service_name("users-api")
///     .paths(["/users", r"~/v1/users/(?P<id>\d+)$"])
///     .methods(["GET", "HEAD"])
///     .hosts(["api.example.com", "*.example.org"])
///     .header("x-version", ["v1"])
///     .strip_path(false);
/// # let _ = route;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    name: Option<String>,
    service_name: Option<String>,
    paths: Vec<String>,
    methods: Vec<String>,
    hosts: Vec<String>,
    headers: Vec<(String, Vec<String>)>,
    strip_path: bool,
    preserve_host: bool,
    regex_priority: i32,
    case_insensitive_paths: bool,
}

impl Default for Route {
    fn default() -> Self {
        Self {
            name: None,
            service_name: None,
            paths: Vec::new(),
            methods: Vec::new(),
            hosts: Vec::new(),
            headers: Vec::new(),
            strip_path: true,
            preserve_host: false,
            regex_priority: 0,
            case_insensitive_paths: false,
        }
    }
}

impl Route {
    /// A route that matches nothing yet, with Kong's defaults (`strip_path: true`,
    /// `preserve_host: false`, `regex_priority: 0`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The route's name, reported in [`RouteInfo`], errors and the access log.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The name of the service the route belongs to, reported in [`RouteInfo`].
    pub fn service_name(mut self, service_name: impl Into<String>) -> Self {
        self.service_name = Some(service_name.into());
        self
    }

    /// Sets the paths: `/prefix` is a string-prefix match, `~regex` a regex anchored at the start.
    pub fn paths<I>(mut self, paths: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.paths = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the accepted methods (uppercase, compared exactly).
    pub fn methods<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the accepted hosts: `api.example.com`, `api.example.com:8443`, `*.example.com` or
    /// `example.*`, compared case-insensitively.
    pub fn hosts<I>(mut self, hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Requires header `name` to carry one of `values` (compared case-insensitively). Calling it
    /// again for the same name adds to that header's accepted values.
    pub fn header<I>(mut self, name: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let name = name.into();
        let values = values.into_iter().map(Into::into);
        match self.headers.iter_mut().find(|(existing, _)| existing.eq_ignore_ascii_case(&name)) {
            Some((_, accepted)) => accepted.extend(values),
            None => self.headers.push((name, values.collect())),
        }
        self
    }

    /// Kong `strip_path` (default `true`): remove the matched part of the path before proxying.
    pub fn strip_path(mut self, strip_path: bool) -> Self {
        self.strip_path = strip_path;
        self
    }

    /// Kong `preserve_host` (default `false`): forward the client's `Host` upstream.
    pub fn preserve_host(mut self, preserve_host: bool) -> Self {
        self.preserve_host = preserve_host;
        self
    }

    /// Kong `regex_priority` (default 0): among matching regex paths, higher wins.
    pub fn regex_priority(mut self, regex_priority: i32) -> Self {
        self.regex_priority = regex_priority;
        self
    }

    /// Match the route's paths ignoring ASCII case (default `false`: Kong compares paths
    /// case-sensitively). With `true`, prefix `/admin` also matches `/ADMIN/x` and a regex path
    /// runs as `(?i)`. Enable it when the upstream treats paths case-insensitively (IIS, a
    /// case-insensitive file system), so `/ADMIN` cannot slip past a route meant for `/admin`.
    pub fn case_insensitive_paths(mut self, case_insensitive_paths: bool) -> Self {
        self.case_insensitive_paths = case_insensitive_paths;
        self
    }

    /// How many of methods, hosts, headers and paths are set: the first priority rule.
    fn matching_fields(&self) -> u8 {
        [!self.methods.is_empty(), !self.hosts.is_empty(), !self.headers.is_empty(), !self.paths.is_empty()]
            .into_iter()
            .map(u8::from)
            .sum()
    }
}

// === impl RouteError ===

/// Which route a [`RouteError`] is about: its position in the builder and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLabel {
    /// The route's position, counting from 0 in the order routes were added.
    pub index: usize,
    /// The route's name, if it has one.
    pub name: Option<Arc<str>>,
}

impl fmt::Display for RouteLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "route #{} (`{name}`)", self.index),
            None => write!(f, "route #{}", self.index),
        }
    }
}

/// Why a [`Router`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A `~` path is not a valid regex.
    #[error("{route}: invalid regex path `{pattern}`: {source}")]
    InvalidRegex {
        /// The route.
        route: RouteLabel,
        /// The path as configured, `~` included.
        pattern: String,
        /// What the regex parser said.
        #[source]
        source: regex::Error,
    },
    /// The regex paths are valid one by one but too large together.
    #[error("the regex paths together are too large: {source}")]
    RegexSetTooLarge {
        /// What the regex compiler said.
        #[source]
        source: regex::Error,
    },
    /// The route sets none of paths, methods, hosts and headers, so it would match everything.
    #[error("{route}: must set at least one of paths, methods, hosts or headers")]
    NoMatchingFields {
        /// The route.
        route: RouteLabel,
    },
    /// A plain path that does not start with `/`.
    #[error("{route}: invalid path `{path}`: a path must start with `/` (or `~` for a regex)")]
    InvalidPath {
        /// The route.
        route: RouteLabel,
        /// The path as configured.
        path: String,
    },
    /// A method that is not an uppercase HTTP method token.
    #[error("{route}: invalid method `{method}`: expected an uppercase HTTP method such as `GET`")]
    InvalidMethod {
        /// The route.
        route: RouteLabel,
        /// The method as configured.
        method: String,
    },
    /// An empty host, or a `*` anywhere but as the whole leftmost or rightmost label.
    #[error("{route}: invalid host `{host}`: expected `name`, `name:port`, `*.suffix` or `prefix.*`")]
    InvalidHost {
        /// The route.
        route: RouteLabel,
        /// The host as configured.
        host: String,
    },
    /// A header name that is not a valid HTTP header name, or a header with no accepted value.
    #[error("{route}: invalid header `{name}`: expected a valid header name with at least one value")]
    InvalidHeader {
        /// The route.
        route: RouteLabel,
        /// The header name as configured.
        name: String,
    },
}

impl RouteError {
    /// The route the error is about (`None` when it concerns all regex paths together).
    pub fn route(&self) -> Option<&RouteLabel> {
        match self {
            Self::InvalidRegex { route, .. }
            | Self::NoMatchingFields { route }
            | Self::InvalidPath { route, .. }
            | Self::InvalidMethod { route, .. }
            | Self::InvalidHost { route, .. }
            | Self::InvalidHeader { route, .. } => Some(route),
            Self::RegexSetTooLarge { .. } => None,
        }
    }
}

// === impl Router ===

/// Routes each request to the service of the best-matching [`Route`] (see the module docs).
///
/// Cheap to clone: the routes sit behind an [`Arc`].
pub struct Router<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    routes: Box<[CompiledRoute<S>]>,
    /// Every (route, path) pair, best first.
    candidates: Box<[Candidate]>,
    /// Every regex path; pattern `i` of the set is `regexes[i]`.
    regex_set: RegexSet,
    regexes: Box<[RegexPath]>,
}

struct CompiledRoute<S> {
    info: Arc<RouteInfo>,
    service: S,
    methods: Box<[Method]>,
    hosts: Box<[HostPattern]>,
    headers: Box<[HeaderRule]>,
    strip_path: bool,
}

/// A header name and its accepted values.
type HeaderRule = (HeaderName, Box<[Box<str>]>);

struct Candidate {
    route: usize,
    path: PathPattern,
    /// The first (up to) 8 bytes of `path.required_prefix()` and the mask that selects them: one
    /// integer compare rejects nearly every candidate before `starts_with` looks at the bytes.
    head: u64,
    head_mask: u64,
    /// For a case-insensitive route, bit `0x20` of every byte of `head` that is an ASCII letter
    /// (`head` holds it lowercase): OR-ed into the path's head it folds exactly those letters,
    /// so the one compare stays exact. 0 for a case-sensitive route.
    fold: u64,
    ignore_case: bool,
}

impl Candidate {
    fn new(route: usize, path: PathPattern, ignore_case: bool) -> Self {
        let prefix = path.required_prefix().as_bytes();
        let len = prefix.len().min(8);
        let mut mask = [0u8; 8];
        mask[..len].fill(0xff);
        let mut fold = [0u8; 8];
        if ignore_case {
            for (bit, b) in fold.iter_mut().zip(prefix) {
                *bit = if b.is_ascii_alphabetic() { 0x20 } else { 0 };
            }
        }
        let fold = u64::from_le_bytes(fold);
        Self {
            route,
            head: head_of(prefix) | fold,
            head_mask: u64::from_le_bytes(mask),
            fold,
            ignore_case,
            path,
        }
    }

    /// Whether `path` (with `path_head`, its [`head_of`]) starts with the required prefix.
    #[inline]
    fn may_match(&self, path: &str, path_head: u64) -> bool {
        if (path_head | self.fold) & self.head_mask != self.head {
            return false;
        }
        let prefix = self.path.required_prefix();
        if self.ignore_case {
            path.len() >= prefix.len()
                && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        } else {
            starts_with(path, prefix)
        }
    }
}

/// The first 8 bytes of `bytes` as an integer, zero-padded.
#[inline]
fn head_of(bytes: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    let len = bytes.len().min(8);
    head[..len].copy_from_slice(&bytes[..len]);
    u64::from_le_bytes(head)
}

enum PathPattern {
    /// The route sets no paths.
    Any,
    Prefix(Box<str>),
    Regex {
        /// Index into `Inner::regexes` and `Inner::regex_set`.
        index: usize,
        /// Text every match starts with, checked before the regex set runs.
        literal_prefix: Box<str>,
    },
}

impl PathPattern {
    /// What the path must start with for this pattern to have a chance.
    fn required_prefix(&self) -> &str {
        match self {
            Self::Any => "",
            Self::Prefix(prefix) => prefix,
            Self::Regex { literal_prefix, .. } => literal_prefix,
        }
    }
}

/// `str::starts_with`, without the `memcmp` call: most candidates differ from the path within a
/// few bytes, and this check runs for nearly every candidate, so an early-exit loop is faster.
#[inline]
fn starts_with(path: &str, prefix: &str) -> bool {
    path.len() >= prefix.len() && path.bytes().zip(prefix.bytes()).all(|(a, b)| a == b)
}

/// The literal text every match of regex `source` starts with (`/v1/users/` for
/// `/v1/users/(\d+)`), or a shorter safe answer down to `""`.
///
/// Most Kong regex paths start with a literal, so this `starts_with` rules out nearly every regex
/// candidate before the regex set has to run.
fn literal_prefix(source: &str) -> &str {
    // An alternation can start anywhere; don't guess.
    if source.contains('|') {
        return "";
    }
    let source = source.strip_prefix('^').unwrap_or(source);
    let end = source.find(|c| "\\.+*?()[]{}^$".contains(c)).unwrap_or(source.len());
    match source[end..].chars().next() {
        // The last literal character is optional (`/ab?`, `/ab*`, `/ab{0,1}`).
        Some('?' | '*' | '{') => source[..end].char_indices().last().map_or("", |(at, _)| &source[..at]),
        _ => &source[..end],
    }
}

struct RegexPath {
    regex: Regex,
    /// The name of every group by index, shared by every match.
    group_names: Box<[Option<Arc<str>>]>,
}

struct HostPattern {
    name: HostName,
    /// Only a configured port makes the request's port count.
    port: Option<Box<str>>,
}

enum HostName {
    Exact(Box<str>),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(Box<str>),
    /// `example.*`, stored as `example.`.
    Prefix(Box<str>),
}

impl<S> Router<S> {
    /// Starts a router; add routes with [`RouterBuilder::route`].
    pub fn builder() -> RouterBuilder<S> {
        RouterBuilder::default()
    }

    /// The best route for a request, with its service, or `None` when no route matches.
    ///
    /// `host` is the request's `Host` (or HTTP/2 authority), port included if the client sent
    /// one; `path` is the request path without the query.
    pub fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(&S, RouteMatch)> {
        let inner = &*self.inner;
        let host = host.map(split_host_port);
        // Run the set only once a regex candidate is otherwise a match: a request won by a
        // prefix route never pays for it.
        let mut regex_hits = None;
        let path_head = head_of(path.as_bytes());
        for candidate in inner.candidates.iter() {
            if !candidate.may_match(path, path_head) {
                continue;
            }
            let route = &inner.routes[candidate.route];
            if !route.accepts(method, host, headers) {
                continue;
            }
            let (captures, matched_len) = match candidate.path {
                PathPattern::Any => (UriCaptures::default(), 0),
                PathPattern::Prefix(ref prefix) => (UriCaptures::default(), prefix.len()),
                PathPattern::Regex { index, .. } => {
                    let hits = regex_hits.get_or_insert_with(|| inner.regex_set.matches(path));
                    if !hits.matched(index) {
                        continue;
                    }
                    match inner.regexes[index].captures(path) {
                        Some(found) => found,
                        None => continue,
                    }
                }
            };
            let route_match = RouteMatch {
                route: Arc::clone(&route.info),
                captures,
                strip_len: if route.strip_path { matched_len } else { 0 },
            };
            return Some((&route.service, route_match));
        }
        None
    }
}

impl<S> Clone for Router<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<S> fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let candidates = inner.candidates.iter().map(|candidate| {
            let route = inner.routes[candidate.route].info.name.as_deref().unwrap_or("<unnamed>");
            match &candidate.path {
                PathPattern::Any => format!("{route}: any path"),
                PathPattern::Prefix(prefix) => format!("{route}: {prefix}"),
                PathPattern::Regex { index, .. } => {
                    format!("{route}: {}", inner.regexes[*index].regex.as_str())
                }
            }
        });
        f.debug_struct("Router").field("candidates", &candidates.collect::<Vec<_>>()).finish()
    }
}

impl<S> CompiledRoute<S> {
    fn accepts(&self, method: &Method, host: Option<(&str, Option<&str>)>, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.hosts.is_empty()
                || host
                    .is_some_and(|(name, port)| self.hosts.iter().any(|pattern| pattern.matches(name, port))))
            && self.headers.iter().all(|(name, accepted)| {
                headers.get_all(name).iter().any(|value| {
                    accepted.iter().any(|accepted| value.as_bytes().eq_ignore_ascii_case(accepted.as_bytes()))
                })
            })
    }
}

impl RegexPath {
    /// The groups and the length of the whole match (the regex is anchored at 0).
    fn captures(&self, path: &str) -> Option<(UriCaptures, usize)> {
        let found = self.regex.captures(path)?;
        let matched_len = found.get(0)?.end();
        let positional: Vec<String> = found
            .iter()
            .map(|group| group.map_or_else(String::new, |group| group.as_str().to_owned()))
            .collect();
        let named = self
            .group_names
            .iter()
            .zip(&positional)
            .filter_map(|(name, value)| Some((Arc::clone(name.as_ref()?), value.clone())))
            .collect();
        Some((UriCaptures { named, positional }, matched_len))
    }
}

impl HostPattern {
    fn parse(host: &str) -> Option<Self> {
        let (name, port) = split_host_port(host);
        let name = name.to_ascii_lowercase();
        let port = port.map(Into::into);
        let name = if let Some(suffix) = name.strip_prefix("*.") {
            HostName::Suffix(format!(".{suffix}").into())
        } else if let Some(prefix) = name.strip_suffix(".*") {
            HostName::Prefix(format!("{prefix}.").into())
        } else {
            HostName::Exact(name.into())
        };
        let literal = match &name {
            HostName::Exact(literal) => &**literal,
            HostName::Suffix(suffix) => &suffix[1..],
            HostName::Prefix(prefix) => &prefix[..prefix.len() - 1],
        };
        (!literal.is_empty() && !literal.contains('*')).then_some(Self { name, port })
    }

    fn matches(&self, name: &str, port: Option<&str>) -> bool {
        if self.port.is_some() && self.port.as_deref() != port {
            return false;
        }
        let name = name.as_bytes();
        match &self.name {
            HostName::Exact(exact) => name.eq_ignore_ascii_case(exact.as_bytes()),
            HostName::Suffix(suffix) => {
                name.len() > suffix.len()
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
            HostName::Prefix(prefix) => {
                name.len() > prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
        }
    }
}

/// Splits `host[:port]` (or `[v6]:port`); a trailing `:x` that is not all digits is not a port.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    let split_at = if host.starts_with('[') { host.rfind("]:").map(|at| at + 1) } else { host.rfind(':') };
    match split_at {
        Some(at) if host[at + 1..].bytes().all(|b| b.is_ascii_digit()) && at + 1 < host.len() => {
            (&host[..at], Some(&host[at + 1..]))
        }
        _ => (host, None),
    }
}

// === impl RouterBuilder ===

/// Collects routes and their services, then ranks and compiles them into a [`Router`].
pub struct RouterBuilder<S> {
    routes: Vec<(Route, S)>,
}

impl<S> Default for RouterBuilder<S> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<S> fmt::Debug for RouterBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("routes", &self.routes.iter().map(|(route, _)| route).collect::<Vec<_>>())
            .finish()
    }
}

impl<S> RouterBuilder<S> {
    /// Adds a route and the service that handles its requests. Order breaks priority ties.
    pub fn route(mut self, route: Route, service: S) -> Self {
        self.routes.push((route, service));
        self
    }

    /// Validates, ranks and compiles the routes.
    pub fn build(self) -> Result<Router<S>, RouteError> {
        let mut routes = Vec::with_capacity(self.routes.len());
        // (priority key, candidate); the sort is stable, so equal keys keep the order routes
        // (and a route's paths) were added in.
        let mut ranked = Vec::new();
        let mut regexes = Vec::new();
        for (index, (route, service)) in self.routes.into_iter().enumerate() {
            let label = || RouteLabel { index, name: route.name.as_deref().map(Arc::from) };
            let fields = route.matching_fields();
            if fields == 0 {
                return Err(RouteError::NoMatchingFields { route: label() });
            }
            for path in &route.paths {
                let (pattern, key) = if let Some(source) = path.strip_prefix('~') {
                    // Compiling the source alone first guarantees it cannot close the anchoring
                    // group early (`a)|(b`).
                    let flags = if route.case_insensitive_paths { "i" } else { "" };
                    let anchored =
                        Regex::new(source).and_then(|_| Regex::new(&format!("^(?{flags}:{source})")));
                    let regex = anchored.map_err(|source| RouteError::InvalidRegex {
                        route: label(),
                        pattern: path.clone(),
                        source,
                    })?;
                    let group_names = regex.capture_names().map(|name| name.map(Arc::from)).collect();
                    regexes.push(RegexPath { regex, group_names });
                    let pattern = PathPattern::Regex {
                        index: regexes.len() - 1,
                        literal_prefix: literal_prefix(source).into(),
                    };
                    (pattern, (fields, true, route.regex_priority, 0))
                } else if path.starts_with('/') {
                    (PathPattern::Prefix(path.as_str().into()), (fields, false, 0, path.len()))
                } else {
                    return Err(RouteError::InvalidPath { route: label(), path: path.clone() });
                };
                ranked.push((key, Candidate::new(index, pattern, route.case_insensitive_paths)));
            }
            if route.paths.is_empty() {
                // Ranks like an empty prefix: after every path of the same field count.
                ranked.push(((fields, false, 0, 0), Candidate::new(index, PathPattern::Any, false)));
            }
            let methods = route
                .methods
                .iter()
                .map(|method| {
                    let valid = !method.bytes().any(|b| b.is_ascii_lowercase());
                    valid
                        .then(|| Method::from_bytes(method.as_bytes()).ok())
                        .flatten()
                        .ok_or_else(|| RouteError::InvalidMethod { route: label(), method: method.clone() })
                })
                .collect::<Result<_, _>>()?;
            let hosts = route
                .hosts
                .iter()
                .map(|host| {
                    HostPattern::parse(host)
                        .ok_or_else(|| RouteError::InvalidHost { route: label(), host: host.clone() })
                })
                .collect::<Result<_, _>>()?;
            let headers = route
                .headers
                .iter()
                .map(|(name, values)| {
                    let invalid = || RouteError::InvalidHeader { route: label(), name: name.clone() };
                    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
                    if values.is_empty() {
                        return Err(invalid());
                    }
                    Ok((header, values.iter().map(|value| value.as_str().into()).collect()))
                })
                .collect::<Result<_, _>>()?;
            let info = RouteInfo {
                name: route.name.as_deref().map(Arc::from),
                service_name: route.service_name.as_deref().map(Arc::from),
                preserve_host: route.preserve_host,
            };
            routes.push(CompiledRoute {
                info: Arc::new(info),
                service,
                methods,
                hosts,
                headers,
                strip_path: route.strip_path,
            });
        }
        ranked.sort_by_key(|&((fields, is_regex, regex_priority, prefix_len), _)| {
            (Reverse(fields), Reverse(is_regex), Reverse(regex_priority), Reverse(prefix_len))
        });
        let regex_set = RegexSet::new(regexes.iter().map(|path| path.regex.as_str()))
            .map_err(|source| RouteError::RegexSetTooLarge { source })?;
        let inner = Inner {
            routes: routes.into(),
            candidates: ranked.into_iter().map(|(_, candidate)| candidate).collect(),
            regex_set,
            regexes: regexes.into(),
        };
        Ok(Router { inner: Arc::new(inner) })
    }
}

// === impl Service ===

impl<S, B, ResBody> Service<Request<B>> for Router<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Route services are driven to readiness by `Oneshot`, per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let found = self
            .find(request.method(), request_host(&request), request.uri().path(), request.headers())
            .map(|(service, route_match)| (service.clone(), route_match));
        match found {
            Some((service, route_match)) => {
                let route = Arc::clone(&route_match.route);
                request.extensions_mut().insert(route_match);
                ResponseFuture {
                    inner: RejectOrInner::inner(Oneshot::new(service, request)),
                    route: Some(route),
                }
            }
            None => {
                let response = Rejection::no_route().into_response_for(&request);
                ResponseFuture { inner: RejectOrInner::rejected(response), route: None }
            }
        }
    }
}

/// The `Host` header, else the URI authority (HTTP/2 `:authority`) without any user info.
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    match request.headers().get(http::header::HOST) {
        Some(host) => host.to_str().ok(),
        None => {
            let authority = request.uri().authority()?.as_str();
            Some(authority.rsplit_once('@').map_or(authority, |(_, host)| host))
        }
    }
}

pin_project! {
    /// The response future of [`Router`]: the route service's response with [`MatchedRoute`]
    /// added, or the ready `404` when no route matched.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        inner: RejectOrInner<Oneshot<S, Request<B>>, S::Response>,
        // `None` for the `404`: no route answered it.
        route: Option<Arc<RouteInfo>>,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.inner.is_rejected() { "NoRoute" } else { "Route" };
        f.debug_struct("ResponseFuture").field("kind", &state).finish()
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(route) = this.route.take() {
            response.extensions_mut().insert(MatchedRoute(route));
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Ready, ready};

    use http::{HeaderValue, StatusCode, Version};
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// A router over route names, for testing `find` alone.
    fn names(routes: impl IntoIterator<Item = Route>) -> Router<String> {
        let mut builder = Router::builder();
        for (index, route) in routes.into_iter().enumerate() {
            let name = route.name.clone().unwrap_or_else(|| format!("#{index}"));
            builder = builder.route(route, name);
        }
        builder.build().unwrap()
    }

    fn find_get(router: &Router<String>, path: &str) -> Option<String> {
        find(router, Method::GET, None, path, &HeaderMap::new()).map(|(name, _)| name)
    }

    fn find(
        router: &Router<String>,
        method: Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(String, RouteMatch)> {
        router.find(&method, host, path, headers).map(|(name, found)| (name.clone(), found))
    }

    /// A route service answering with what the router told it: `name strip_len captures`.
    fn echo(request: Request<()>) -> Ready<Result<Response<Bytes>, Infallible>> {
        let found = request.extensions().get::<RouteMatch>().cloned();
        let body = match found {
            Some(found) => format!(
                "{} {} {:?}",
                found.route.name.as_deref().unwrap_or("-"),
                found.strip_len,
                found.captures.positional
            ),
            None => "no RouteMatch".to_owned(),
        };
        ready(Ok(Response::new(Bytes::from(body))))
    }

    type Echo = tower::util::ServiceFn<fn(Request<()>) -> Ready<Result<Response<Bytes>, Infallible>>>;

    fn echo_router(routes: impl IntoIterator<Item = Route>) -> Router<Echo> {
        let echo: Echo = service_fn(echo);
        routes
            .into_iter()
            .fold(Router::builder(), |builder, route| builder.route(route, echo))
            .build()
            .unwrap()
    }

    #[test]
    fn regex_beats_prefix() {
        let router = names([
            Route::new().name("prefix").paths(["/users"]),
            Route::new().name("regex").paths([r"~/users/\d+$"]),
        ]);
        assert_eq!(find_get(&router, "/users/12").as_deref(), Some("regex"));
        assert_eq!(find_get(&router, "/users/abc").as_deref(), Some("prefix"));
    }

    #[test]
    fn longest_prefix_wins_and_prefix_is_a_string_prefix() {
        let router =
            names([Route::new().name("api").paths(["/api"]), Route::new().name("v1").paths(["/api/v1"])]);
        assert_eq!(find_get(&router, "/api/v1/orders").as_deref(), Some("v1"));
        assert_eq!(find_get(&router, "/api/v2").as_deref(), Some("api"));
        // Kong compares strings, not segments.
        assert_eq!(find_get(&router, "/apiv2").as_deref(), Some("api"));
        assert_eq!(find_get(&router, "/ap"), None);
    }

    #[test]
    fn more_fields_beat_regex_and_longer_prefix() {
        let router = names([
            Route::new().name("regex").paths([r"~/api/users"]),
            Route::new().name("longer").paths(["/api/users"]),
            Route::new().name("get").paths(["/api"]).methods(["GET"]),
            Route::new().name("host-and-method").methods(["GET"]).hosts(["api.test"]),
        ]);
        assert_eq!(find_get(&router, "/api/users").as_deref(), Some("get"));
        let post = find(&router, Method::POST, None, "/api/users", &HeaderMap::new());
        assert_eq!(post.map(|(name, _)| name).as_deref(), Some("regex"));
        // Two fields without a path tie with `get`, which is a (longer) prefix.
        let hosted = find(&router, Method::GET, Some("api.test"), "/other", &HeaderMap::new());
        assert_eq!(hosted.map(|(name, _)| name).as_deref(), Some("host-and-method"));
        let hosted = find(&router, Method::GET, Some("api.test"), "/api", &HeaderMap::new());
        assert_eq!(hosted.map(|(name, _)| name).as_deref(), Some("get"));
    }

    #[test]
    fn regex_priority_then_file_order() {
        let router = names([
            Route::new().name("first").paths([r"~/items/\w+"]),
            Route::new().name("second").paths([r"~/items/\d+"]),
            Route::new().name("urgent").paths([r"~/items/7"]).regex_priority(10),
            Route::new().name("negative").paths([r"~/items/x"]).regex_priority(-1),
        ]);
        assert_eq!(find_get(&router, "/items/7").as_deref(), Some("urgent"));
        assert_eq!(find_get(&router, "/items/8").as_deref(), Some("first"));
        assert_eq!(find_get(&router, "/items/x").as_deref(), Some("first"));
        let router =
            names([Route::new().name("a").paths(["/same"]), Route::new().name("b").paths(["/same"])]);
        assert_eq!(find_get(&router, "/same").as_deref(), Some("a"));
    }

    #[test]
    fn regex_is_anchored_at_the_start() {
        let router = names([Route::new().name("users").paths([r"~/users|/people"])]);
        assert_eq!(find_get(&router, "/users/1").as_deref(), Some("users"));
        assert_eq!(find_get(&router, "/people").as_deref(), Some("users"));
        assert_eq!(find_get(&router, "/api/users"), None);
        assert_eq!(find_get(&router, "/api/people"), None);
    }

    #[test]
    fn literal_prefix_is_never_longer_than_every_match() {
        assert_eq!(literal_prefix(r"/v1/users/(?P<id>\d+)$"), "/v1/users/");
        assert_eq!(literal_prefix(r"^/api\.v2"), "/api");
        assert_eq!(literal_prefix("/ab?c"), "/a");
        assert_eq!(literal_prefix("/ab*"), "/a");
        assert_eq!(literal_prefix("/ab{0,1}"), "/a");
        assert_eq!(literal_prefix("/ab+"), "/ab");
        assert_eq!(literal_prefix("/a|/b"), "");
        assert_eq!(literal_prefix("(?i)/users"), "");
        assert_eq!(literal_prefix("/café/"), "/café/");
        // And the router agrees with the regexes.
        let router = names([Route::new().name("optional").paths(["~/ab?c", "~(?i)/UP"])]);
        assert_eq!(find_get(&router, "/ac").as_deref(), Some("optional"));
        assert_eq!(find_get(&router, "/abc").as_deref(), Some("optional"));
        assert_eq!(find_get(&router, "/up").as_deref(), Some("optional"));
        assert_eq!(find_get(&router, "/bc"), None);
    }

    #[test]
    fn case_insensitive_paths_is_per_route() {
        let router = names([
            Route::new().name("exact").paths(["/admin"]),
            Route::new()
                .name("folded")
                .paths(["/Internal/Reports", r"~/Users/(?P<id>\d+)$"])
                .case_insensitive_paths(true),
        ]);
        assert_eq!(find_get(&router, "/admin/x").as_deref(), Some("exact"));
        assert_eq!(find_get(&router, "/ADMIN/x"), None, "Kong is case-sensitive by default");
        assert_eq!(find_get(&router, "/Admin"), None);
        for path in ["/internal/reports", "/INTERNAL/REPORTS/x", "/iNtErNaL/rEpOrTs", "/users/7", "/USERS/7"]
        {
            assert_eq!(find_get(&router, path).as_deref(), Some("folded"), "{path}");
        }
        // Only letters fold: the head compare must not fold `@`/`` ` `` or `[`/`{` into each other.
        for path in ["/internal/reportz", "/internal-reports", "/users/x", "/intern"] {
            assert_eq!(find_get(&router, path), None, "{path}");
        }
        let router = names([Route::new().name("punct").paths(["/a@[b"]).case_insensitive_paths(true)]);
        assert_eq!(find_get(&router, "/A@[B").as_deref(), Some("punct"));
        assert_eq!(find_get(&router, "/a`{b"), None);
        let (_, found) = find(&router, Method::GET, None, "/A@[Bc", &HeaderMap::new()).unwrap();
        assert_eq!(found.strip_len, 5);
    }

    #[test]
    fn named_and_positional_captures() {
        let router = names([Route::new().paths([r"~/users/(?P<id>\d+)(/(?P<tab>\w+))?/(\w+)$"])]);
        let (_, found) = find(&router, Method::GET, None, "/users/42/posts", &HeaderMap::new()).unwrap();
        assert_eq!(found.captures.get("id"), Some("42"));
        assert_eq!(found.captures.get("tab"), Some(""));
        assert_eq!(found.captures.get("nope"), None);
        assert_eq!(found.captures.positional, ["/users/42/posts", "42", "", "", "posts"]);
        let named: Vec<_> =
            found.captures.named.iter().map(|(name, value)| (&**name, value.as_str())).collect();
        assert_eq!(named, [("id", "42"), ("tab", "")]);
        assert_eq!(found.strip_len, "/users/42/posts".len());
    }

    #[test]
    fn hosts_exact_case_insensitive_port_ignored() {
        let router = names([Route::new().name("api").hosts(["API.example.com"])]);
        let get = |host| find(&router, Method::GET, host, "/", &HeaderMap::new()).map(|(name, _)| name);
        assert_eq!(get(Some("api.EXAMPLE.com")).as_deref(), Some("api"));
        assert_eq!(get(Some("api.example.com:8080")).as_deref(), Some("api"));
        assert_eq!(get(Some("www.example.com")), None);
        assert_eq!(get(None), None);
    }

    #[test]
    fn hosts_with_port_require_that_port() {
        let router = names([Route::new().name("tls").hosts(["api.test:8443", "[::1]:9000"])]);
        let get = |host| find(&router, Method::GET, Some(host), "/", &HeaderMap::new()).map(|(name, _)| name);
        assert_eq!(get("api.test:8443").as_deref(), Some("tls"));
        assert_eq!(get("api.test:8080"), None);
        assert_eq!(get("api.test"), None);
        assert_eq!(get("[::1]:9000").as_deref(), Some("tls"));
        assert_eq!(get("[::1]"), None);
    }

    #[test]
    fn wildcard_hosts() {
        let router = names([
            Route::new().name("suffix").hosts(["*.example.com"]),
            Route::new().name("prefix").hosts(["example.*"]),
        ]);
        let get = |host| find(&router, Method::GET, Some(host), "/", &HeaderMap::new()).map(|(name, _)| name);
        assert_eq!(get("a.example.com").as_deref(), Some("suffix"));
        assert_eq!(get("a.b.Example.com:80").as_deref(), Some("suffix"));
        assert_eq!(get("example.org").as_deref(), Some("prefix"));
        assert_eq!(get("example.com").as_deref(), Some("prefix"));
        assert_eq!(get("notexample.com"), None);
        assert_eq!(get("example"), None);
    }

    #[test]
    fn headers_need_one_accepted_value() {
        let router = names([
            Route::new().name("v1").paths(["/"]).header("X-Version", ["v1", "legacy"]),
            Route::new().name("any").paths(["/"]),
        ]);
        let get = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append("x-version", HeaderValue::from_static(value));
            }
            find(&router, Method::GET, None, "/x", &headers).map(|(name, _)| name)
        };
        assert_eq!(get(&["V1"]).as_deref(), Some("v1"));
        assert_eq!(get(&["v2", "legacy"]).as_deref(), Some("v1"));
        assert_eq!(get(&["v2"]).as_deref(), Some("any"));
        assert_eq!(get(&[]).as_deref(), Some("any"));
    }

    #[test]
    fn header_values_accumulate_per_name() {
        let route = Route::new().header("x-a", ["1"]).header("X-A", ["2"]);
        assert_eq!(route.headers, [("x-a".to_owned(), vec!["1".to_owned(), "2".to_owned()])]);
    }

    #[test]
    fn strip_len_for_prefix_regex_and_no_strip() {
        let router = names([
            Route::new().name("prefix").paths(["/api"]),
            Route::new().name("regex").paths([r"~/v(?P<n>\d)/"]),
            Route::new().name("kept").paths(["/keep"]).strip_path(false),
            Route::new().name("method-only").methods(["DELETE"]),
        ]);
        let strip =
            |method, path| find(&router, method, None, path, &HeaderMap::new()).map(|(_, m)| m.strip_len);
        assert_eq!(strip(Method::GET, "/api/users"), Some(4));
        assert_eq!(strip(Method::GET, "/v2/users"), Some(4));
        assert_eq!(strip(Method::GET, "/keep/it"), Some(0));
        assert_eq!(strip(Method::DELETE, "/anything"), Some(0));
    }

    #[test]
    fn route_info_reflects_the_route() {
        let router = names([Route::new().name("r").service_name("svc").paths(["/"]).preserve_host(true)]);
        let (_, found) = find(&router, Method::GET, None, "/", &HeaderMap::new()).unwrap();
        let expected =
            RouteInfo { name: Some("r".into()), service_name: Some("svc".into()), preserve_host: true };
        assert_eq!(*found.route, expected);
        assert!(found.captures.positional.is_empty());
    }

    #[tokio::test]
    async fn service_sets_route_match_and_matched_route() {
        let router = echo_router([Route::new().name("users").paths([r"~/users/(\d+)"])]);
        let response = router.oneshot(Request::get("/users/7/x").body(()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), r#"users 8 ["/users/7", "7"]"#);
        let matched = response.extensions().get::<MatchedRoute>().unwrap();
        assert_eq!(matched.0.name.as_deref(), Some("users"));
    }

    #[tokio::test]
    async fn wrong_method_is_a_404_json() {
        let router = echo_router([Route::new().name("get").paths(["/api"]).methods(["GET"])]);
        let response = router.oneshot(Request::post("/api").body(()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/json");
        assert!(response.extensions().get::<MatchedRoute>().is_none());
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"], "no_route");
        assert_eq!(body["message"], "no Route matched with those values");
    }

    #[tokio::test]
    async fn query_string_is_not_matched() {
        let router = echo_router([Route::new().name("exact").paths([r"~/search$"])]);
        let response = router.clone().oneshot(Request::get("/search?q=a$b").body(()).unwrap()).await.unwrap();
        assert_eq!(response.body(), r#"exact 7 ["/search"]"#);
        let response = router.oneshot(Request::get("/other?x=/search").body(()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn host_header_then_http2_authority() {
        let router = echo_router([Route::new().name("api").hosts(["api.test"])]);
        let http1 = Request::get("/").header("host", "api.test:8000").body(()).unwrap();
        assert_eq!(router.clone().oneshot(http1).await.unwrap().status(), StatusCode::OK);
        let http2 = Request::get("https://api.test/x").version(Version::HTTP_2).body(()).unwrap();
        assert_eq!(router.clone().oneshot(http2).await.unwrap().status(), StatusCode::OK);
        let other = Request::get("/").header("host", "other.test").body(()).unwrap();
        assert_eq!(router.oneshot(other).await.unwrap().status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn invalid_routes_are_errors() {
        let error = |route: Route| {
            Router::builder().route(Route::new().paths(["/ok"]), ()).route(route, ()).build().unwrap_err()
        };
        match error(Route::new().name("bad").paths(["~/users/(?P<id>"])) {
            RouteError::InvalidRegex { route, pattern, .. } => {
                assert_eq!(route, RouteLabel { index: 1, name: Some("bad".into()) });
                assert_eq!(pattern, "~/users/(?P<id>");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Valid alone but would escape the anchoring group.
        assert!(matches!(error(Route::new().paths(["~/a)|(/b"])), RouteError::InvalidRegex { .. }));
        let empty = error(Route::new().name("empty").strip_path(false));
        assert!(matches!(empty, RouteError::NoMatchingFields { route: RouteLabel { index: 1, .. } }));
        assert_eq!(
            empty.to_string(),
            "route #1 (`empty`): must set at least one of paths, methods, hosts or headers"
        );
        assert!(
            matches!(error(Route::new().paths(["api"])), RouteError::InvalidPath { path, .. } if path == "api")
        );
        assert!(matches!(error(Route::new().methods(["get"])), RouteError::InvalidMethod { .. }));
        assert!(matches!(error(Route::new().methods(["G T"])), RouteError::InvalidMethod { .. }));
        for host in ["", "*", "a.*.com", "*.*", "*.example.*"] {
            assert!(matches!(error(Route::new().hosts([host])), RouteError::InvalidHost { .. }), "{host}");
        }
        assert!(matches!(error(Route::new().header("bad name", ["v"])), RouteError::InvalidHeader { .. }));
        let no_values: [&str; 0] = [];
        assert!(matches!(error(Route::new().header("x-ok", no_values)), RouteError::InvalidHeader { .. }));
    }

    #[test]
    fn router_debug_lists_candidates_in_priority_order() {
        let router = names([Route::new().name("p").paths(["/p"]), Route::new().name("r").paths(["~/r"])]);
        assert_eq!(format!("{router:?}"), r#"Router { candidates: ["r: ^(?:/r)", "p: /p"] }"#);
    }
}
