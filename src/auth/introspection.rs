//! OAuth 2.0 token introspection (RFC 7662; Kong's `oauth2-introspection`): an opaque bearer
//! token is checked by POSTing it to the authorization server's introspection endpoint.
//!
//! The token is read from the `access_token` query parameter, else from
//! `Authorization: Bearer <token>` (or `Token <token>`). The endpoint gets
//! `token=<token>[&token_type_hint=<hint>]` with the configured `Authorization` value.
//!
//! - `{"active": true, ...}` → the request goes on with `X-Credential-Sub`, `X-Credential-Scope`
//!   and `X-Credential-Client-ID` (each removed when the response lacks it), and the consumer the
//!   token's `username` (or `client_id`, [`ConsumerBy`]) names, if one is registered. As in Kong,
//!   an active token that names no registered consumer is still admitted, without `X-Consumer-*`.
//! - inactive → 401 `invalid_token`; no token → 401 `unauthorized` (both replaced by the
//!   anonymous consumer when one is configured).
//! - the endpoint failing, answering other than 200 with JSON, or not answering within the
//!   timeout → 503 `introspection_unavailable`: never admitted (not even as the anonymous
//!   consumer), never cached.
//!
//! Active results are cached by the token's SHA-256 for `min(ttl, exp − now)` in a bounded map
//! shared by every clone of the layer; inactive results for `negative_ttl` (default 5 s), so a
//! client repeating a revoked or made-up token cannot turn each request into a call to the
//! authorization server. Concurrent requests with the same uncached token, active or not, wait
//! for one introspection call. Any `exp` the endpoint sends is safe: far-future, huge, negative or
//! fractional values only shorten the lifetime, which never exceeds [`MAX_CACHE_TTL`].
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis::Body;
//! use portcullis::auth::introspection::IntrospectionLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = IntrospectionLayer::builder("http://127.0.0.1:9100/introspect".parse()?)
//!     .authorization_value("Basic Z2F0ZXdheTpzZWNyZXQ=")?
//!     .timeout(Duration::from_secs(2))
//!     .hide_credentials(true)
//!     .build();
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|req: http::Request<Body>| async move {
//!     let sub = req.headers().get("x-credential-sub").cloned();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(format!("{sub:?}"))))
//! });
//! let req = http::Request::get("/orders").header("authorization", "Bearer 2YotnFZFEjr1zCsicMWpAA")
//!     .body(Body::empty())?;
//! let res = svc.oneshot(req).await?; // 200, 401 or 503
//! println!("{}", res.status());
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use tower::{Layer, Service};

use super::api_key::{form_decode, pairs, remove_pairs, set_query};
use crate::consumer::Consumer;
use crate::error::Rejection;
use crate::ext::AuthFailure;

static X_CREDENTIAL_SUB: HeaderName = HeaderName::from_static("x-credential-sub");
static X_CREDENTIAL_SCOPE: HeaderName = HeaderName::from_static("x-credential-scope");
static X_CREDENTIAL_CLIENT_ID: HeaderName = HeaderName::from_static("x-credential-client-id");
/// Identity headers cleared when an active token names no consumer (a standalone layer has no
/// sanitizer in front of it).
static CONSUMER_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("x-consumer-id"),
    HeaderName::from_static("x-consumer-username"),
    HeaderName::from_static("x-consumer-custom-id"),
    HeaderName::from_static("x-consumer-groups"),
    HeaderName::from_static("x-credential-identifier"),
    HeaderName::from_static("x-anonymous-consumer"),
];

/// Tokens longer than this are refused without asking the endpoint.
/// The plugin name in [`AuthFailure`].
const PLUGIN: &str = "oauth2-introspection";

const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest introspection response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The longest any result is cached (`ttl` and `negative_ttl` are capped to it), so deadlines
/// never overflow `Instant` arithmetic whatever the config or the endpoint says.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long an inactive answer is reused, unless configured.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Which introspection field names the consumer (Kong's `consumer_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumerBy {
    /// The response's `username` is a consumer's username (Kong's default).
    #[default]
    Username,
    /// The response's `client_id` is a consumer's `custom_id`.
    ClientId,
}

/// What an active token said, in request extensions after a successful introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// `sub`.
    pub sub: Option<Arc<str>>,
    /// `scope` (space-separated).
    pub scope: Option<Arc<str>>,
    /// `client_id`.
    pub client_id: Option<Arc<str>>,
    /// `username`.
    pub username: Option<Arc<str>>,
}

/// An active token as cached: what it said, the consumer it names, the header values to send.
#[derive(Debug)]
struct Active {
    info: TokenInfo,
    consumer: Option<Consumer>,
    headers: [(HeaderName, Option<HeaderValue>); 3],
}

/// How one introspection ended.
#[derive(Debug, Clone)]
enum Outcome {
    Active(Arc<Active>),
    Inactive,
    Failed,
}

// === TokenCache ===

/// Active tokens by SHA-256, each until its deadline; at most `capacity` entries. Sans-IO: the
/// caller passes `now`.
#[derive(Debug)]
struct TokenCache {
    entries: HashMap<[u8; 32], (Arc<Active>, Instant)>,
    capacity: usize,
}

/// Inactive tokens by SHA-256, each until its deadline; at most `capacity` entries. Every entry
/// lives `negative_ttl`, so insertion order is deadline order: expiry and eviction pop the front
/// in O(1), however fast a client makes up tokens.
#[derive(Debug)]
struct NegativeCache {
    deadlines: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
    capacity: usize,
}

impl NegativeCache {
    fn new(capacity: usize) -> Self {
        Self { deadlines: HashMap::new(), order: VecDeque::new(), capacity }
    }

    fn contains(&mut self, digest: &[u8; 32], now: Instant) -> bool {
        match self.deadlines.get(digest) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.deadlines.remove(digest);
                false
            }
            None => false,
        }
    }

    fn insert(&mut self, digest: [u8; 32], until: Instant, now: Instant) {
        if self.capacity == 0 || until <= now {
            return;
        }
        while let Some(&(oldest, deadline)) = self.order.front() {
            if deadline > now && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            // A later insert of the same digest owns the map entry; leave it.
            if self.deadlines.get(&oldest) == Some(&deadline) {
                self.deadlines.remove(&oldest);
            }
        }
        self.deadlines.insert(digest, until);
        self.order.push_back((digest, until));
    }

    fn len(&self) -> usize {
        self.deadlines.len()
    }
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity }
    }

    fn get(&mut self, digest: &[u8; 32], now: Instant) -> Option<Arc<Active>> {
        match self.entries.get(digest) {
            Some((active, until)) if *until > now => Some(active.clone()),
            Some(_) => {
                self.entries.remove(digest);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, digest: [u8; 32], active: Arc<Active>, until: Instant, now: Instant) {
        if self.capacity == 0 || until <= now {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&digest) {
            self.entries.retain(|_, (_, deadline)| *deadline > now);
            if self.entries.len() >= self.capacity {
                // Full of live entries: the one closest to expiry goes.
                if let Some(soonest) = self.entries.iter().min_by_key(|(_, (_, d))| *d).map(|(k, _)| *k) {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(digest, (active, until));
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

// === layer ===

/// RFC 7662 introspection in front of a service; see the [module docs](self). Cheap to clone:
/// clones share one client, one cache and one set of in-flight calls.
#[derive(Clone)]
pub struct IntrospectionLayer {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    authorization: Option<HeaderValue>,
    token_type_hint: Option<String>,
    timeout: Duration,
    ttl: Duration,
    negative_ttl: Duration,
    consumer_by: ConsumerBy,
    consumers: HashMap<String, Consumer>,
    hide_credentials: bool,
    run_on_preflight: bool,
    anonymous: Option<Consumer>,
    state: Mutex<State>,
}

struct State {
    cache: TokenCache,
    inactive: NegativeCache,
    in_flight: HashMap<[u8; 32], Arc<OnceCell<Outcome>>>,
}

impl fmt::Debug for IntrospectionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("IntrospectionLayer")
            .field("url", &s.url)
            .field("timeout", &s.timeout)
            .field("ttl", &s.ttl)
            .field("consumer_by", &s.consumer_by)
            .field("consumers", &s.consumers.len())
            .field("hide_credentials", &s.hide_credentials)
            .finish_non_exhaustive()
    }
}

/// Builds an [`IntrospectionLayer`].
#[derive(Debug)]
pub struct IntrospectionBuilder {
    url: Uri,
    authorization: Option<HeaderValue>,
    token_type_hint: Option<String>,
    timeout: Duration,
    ttl: Duration,
    negative_ttl: Duration,
    consumer_by: ConsumerBy,
    consumers: HashMap<String, Consumer>,
    hide_credentials: bool,
    run_on_preflight: bool,
    anonymous: Option<Consumer>,
    cache_capacity: usize,
}

impl IntrospectionLayer {
    /// Introspects at `url` (`http://`); see [`IntrospectionBuilder`] for the defaults.
    pub fn builder(url: Uri) -> IntrospectionBuilder {
        IntrospectionBuilder {
            url,
            authorization: None,
            token_type_hint: None,
            timeout: Duration::from_secs(10),
            ttl: Duration::from_secs(60),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            consumer_by: ConsumerBy::Username,
            consumers: HashMap::new(),
            hide_credentials: false,
            run_on_preflight: true,
            anonymous: None,
            cache_capacity: 10_000,
        }
    }

    /// How many active tokens are cached now.
    pub fn cached_tokens(&self) -> usize {
        self.shared.state.lock().map(|s| s.cache.len()).unwrap_or(0)
    }

    /// How many inactive tokens are cached now.
    pub fn cached_inactive_tokens(&self) -> usize {
        self.shared.state.lock().map(|s| s.inactive.len()).unwrap_or(0)
    }
}

impl IntrospectionBuilder {
    /// The `Authorization` header sent to the endpoint (`Basic ...`, `Bearer ...`).
    pub fn authorization_value(mut self, value: &str) -> Result<Self, http::header::InvalidHeaderValue> {
        let mut value = HeaderValue::from_str(value)?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// `token_type_hint` sent with each token (none by default).
    pub fn token_type_hint(mut self, hint: impl Into<String>) -> Self {
        self.token_type_hint = Some(hint.into());
        self
    }

    /// The whole introspection call, connect to last byte (default 10 s); past it, 503.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long an active result is reused (default 60 s), never past the token's `exp`, at
    /// most [`MAX_CACHE_TTL`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.min(MAX_CACHE_TTL);
        self
    }

    /// How long an inactive result is reused (default [`DEFAULT_NEGATIVE_TTL`], 5 s; at most
    /// [`MAX_CACHE_TTL`]; zero disables it). A token activated meanwhile is refused until then.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl.min(MAX_CACHE_TTL);
        self
    }

    /// At most this many active tokens cached, and as many inactive ones (default 10 000 each;
    /// 0 disables both caches).
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Which response field names the consumer (default [`ConsumerBy::Username`]).
    pub fn consumer_by(mut self, by: ConsumerBy) -> Self {
        self.consumer_by = by;
        self
    }

    /// Registers `consumer` under `name`: its username for [`ConsumerBy::Username`], its
    /// custom id for [`ConsumerBy::ClientId`].
    pub fn consumer(mut self, name: impl Into<String>, consumer: Consumer) -> Self {
        self.consumers.insert(name.into(), consumer);
        self
    }

    /// Remove the token (the `Authorization` header or the `access_token` parameter) before
    /// proxying (default false).
    pub fn hide_credentials(mut self, hide: bool) -> Self {
        self.hide_credentials = hide;
        self
    }

    /// Introspect `OPTIONS` requests too (default true).
    pub fn run_on_preflight(mut self, enabled: bool) -> Self {
        self.run_on_preflight = enabled;
        self
    }

    /// No token or an inactive one: proxy as this consumer (marked anonymous) instead of 401;
    /// a request an earlier layer already authenticated passes untouched (logical OR).
    pub fn anonymous(mut self, consumer: Consumer) -> Self {
        self.anonymous = Some(Consumer { anonymous: true, ..consumer });
        self
    }

    /// The layer, with its own pooled HTTP client and cache.
    pub fn build(self) -> IntrospectionLayer {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        IntrospectionLayer {
            shared: Arc::new(Shared {
                client,
                url: self.url,
                authorization: self.authorization,
                token_type_hint: self.token_type_hint,
                timeout: self.timeout,
                ttl: self.ttl,
                negative_ttl: self.negative_ttl,
                consumer_by: self.consumer_by,
                consumers: self.consumers,
                hide_credentials: self.hide_credentials,
                run_on_preflight: self.run_on_preflight,
                anonymous: self.anonymous,
                state: Mutex::new(State {
                    cache: TokenCache::new(self.cache_capacity),
                    inactive: NegativeCache::new(self.cache_capacity),
                    in_flight: HashMap::new(),
                }),
            }),
        }
    }
}

impl<S> Layer<S> for IntrospectionLayer {
    type Service = Introspection<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Introspection { inner, shared: self.shared.clone() }
    }
}

// === token ===

/// Where the token was found, for `hide_credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Query,
    Header,
}

enum Found {
    Token(Vec<u8>, Source),
    Missing,
    Ambiguous,
}

fn find_token<B>(req: &Request<B>) -> Found {
    if let Some(query) = req.uri().query() {
        let mut values = pairs(query.as_bytes())
            .filter(|(name, value)| value.is_some() && form_decode(name) == b"access_token")
            .map(|(_, value)| form_decode(value.unwrap_or_default()));
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => return Found::Ambiguous,
            (Some(token), None) if !token.is_empty() => return Found::Token(token, Source::Query),
            _ => {}
        }
    }
    let mut headers = req.headers().get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (headers.next(), headers.next()) else {
        return if req.headers().contains_key(AUTHORIZATION) { Found::Ambiguous } else { Found::Missing };
    };
    let mut words = value.as_bytes().split(|b| *b == b' ').filter(|w| !w.is_empty());
    match (words.next(), words.next(), words.next()) {
        (Some(scheme), Some(token), None)
            if scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"token") =>
        {
            Found::Token(token.to_vec(), Source::Header)
        }
        _ => Found::Missing,
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(raw: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

fn text(value: &serde_json::Value, key: &str) -> Option<Arc<str>> {
    value.get(key).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(Into::into)
}

impl Shared {
    fn missing(&self) -> Rejection {
        Rejection::new(StatusCode::UNAUTHORIZED, "unauthorized", "The access token is missing")
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    fn invalid(&self) -> Rejection {
        Rejection::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token is invalid or has expired",
        )
        .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""))
    }

    fn unavailable() -> Rejection {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "introspection_unavailable",
            "token introspection failed",
        )
    }

    /// One call to the endpoint, within the timeout; `Failed` for anything but 200 + JSON.
    async fn introspect(&self, token: &[u8]) -> (Outcome, Option<Duration>) {
        let mut form = Vec::with_capacity(token.len() + 16);
        form.extend_from_slice(b"token=");
        form_encode(token, &mut form);
        if let Some(hint) = &self.token_type_hint {
            form.extend_from_slice(b"&token_type_hint=");
            form_encode(hint.as_bytes(), &mut form);
        }
        let mut req = Request::new(Full::new(Bytes::from(form)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.url.clone();
        let headers = req.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let call = async {
            let res = self.client.request(req).await.ok()?;
            if res.status() != StatusCode::OK {
                return None;
            }
            let body =
                http_body_util::Limited::new(res.into_body(), MAX_RESPONSE_BYTES).collect().await.ok()?;
            serde_json::from_slice::<serde_json::Value>(&body.to_bytes()).ok()
        };
        let Ok(Some(json)) = tokio::time::timeout(self.timeout, call).await else {
            tracing::warn!(target: "portcullis::auth", url = %self.url, "token introspection failed");
            return (Outcome::Failed, None);
        };
        if json.get("active") != Some(&serde_json::Value::Bool(true)) {
            return (Outcome::Inactive, None);
        }
        let info = TokenInfo {
            sub: text(&json, "sub"),
            scope: text(&json, "scope"),
            client_id: text(&json, "client_id"),
            username: text(&json, "username"),
        };
        let key = match self.consumer_by {
            ConsumerBy::Username => &info.username,
            ConsumerBy::ClientId => &info.client_id,
        };
        let consumer = key.as_deref().and_then(|k| self.consumers.get(k)).cloned();
        let value = |v: &Option<Arc<str>>| v.as_deref().and_then(|v| HeaderValue::from_str(v).ok());
        let headers = [
            (X_CREDENTIAL_SUB.clone(), value(&info.sub)),
            (X_CREDENTIAL_SCOPE.clone(), value(&info.scope)),
            (X_CREDENTIAL_CLIENT_ID.clone(), value(&info.client_id)),
        ];
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let lifetime = active_lifetime(json.get("exp").and_then(serde_json::Value::as_f64), now, self.ttl);
        (Outcome::Active(Arc::new(Active { info, consumer, headers })), lifetime)
    }

    /// The cached result for `digest` (`None`: known inactive), or the shared cell of the call
    /// that will produce it.
    fn lookup(&self, digest: [u8; 32]) -> Result<Option<Arc<Active>>, Arc<OnceCell<Outcome>>> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if let Some(active) = state.cache.get(&digest, now) {
            return Ok(Some(active));
        }
        if state.inactive.contains(&digest, now) {
            return Ok(None);
        }
        Err(state.in_flight.entry(digest).or_insert_with(|| Arc::new(OnceCell::new())).clone())
    }

    /// Records a finished call: caches an active result, and retires the in-flight cell (under one
    /// lock, so a request arriving now finds either the cache entry or the cell, never neither).
    fn settle(
        &self,
        digest: [u8; 32],
        cell: &Arc<OnceCell<Outcome>>,
        outcome: &Outcome,
        lifetime: Option<Duration>,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        match (outcome, lifetime) {
            (Outcome::Active(active), Some(lifetime)) => {
                if let Some(until) = now.checked_add(lifetime.min(MAX_CACHE_TTL)) {
                    state.cache.insert(digest, active.clone(), until, now);
                }
            }
            (Outcome::Inactive, _) if !self.negative_ttl.is_zero() => {
                if let Some(until) = now.checked_add(self.negative_ttl) {
                    state.inactive.insert(digest, until, now);
                }
            }
            _ => {}
        }
        if state.in_flight.get(&digest).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            state.in_flight.remove(&digest);
        }
    }

    /// Marks the request with an active token's identity and headers.
    fn admit<B>(&self, req: &mut Request<B>, active: &Active, source: Source) -> Option<Consumer> {
        if self.hide_credentials {
            hide(req, source);
        }
        for (name, value) in &active.headers {
            match value {
                Some(value) => req.headers_mut().insert(name.clone(), value.clone()),
                None => req.headers_mut().remove(name),
            };
        }
        req.extensions_mut().insert(active.info.clone());
        match &active.consumer {
            Some(consumer) => {
                consumer.apply_to(req);
                Some(consumer.clone())
            }
            None => {
                for name in &CONSUMER_HEADERS {
                    req.headers_mut().remove(name);
                }
                None
            }
        }
    }

    /// No usable token: the anonymous consumer, or the rejection.
    fn refuse<B>(&self, req: &mut Request<B>, rejection: Rejection) -> Result<Option<Consumer>, Rejection> {
        match &self.anonymous {
            Some(anonymous) => {
                anonymous.apply_to(req);
                Ok(Some(anonymous.clone()))
            }
            None => Err(rejection),
        }
    }
}

/// How long an active answer is cached: `ttl`, never past `exp` (Unix seconds, any number the
/// endpoint sent). An `exp` already past: admitted once, not cached. Compared as floats before any
/// conversion, so `1e300`, `u64::MAX` or `-1` cannot overflow a `Duration`.
fn active_lifetime(exp: Option<f64>, now: f64, ttl: Duration) -> Option<Duration> {
    let Some(exp) = exp else { return Some(ttl) };
    let left = exp - now;
    if left.is_nan() || left <= 0.0 {
        None
    } else if left >= ttl.as_secs_f64() {
        Some(ttl)
    } else {
        Some(Duration::from_secs_f64(left))
    }
}

/// Drops the in-flight cell of a call nobody is waiting for any more (every request for the token
/// went away before it finished), so clients that disconnect mid-call cannot grow the map.
struct Abandon<'a> {
    shared: &'a Shared,
    digest: [u8; 32],
    cell: &'a Arc<OnceCell<Outcome>>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.cell.initialized() {
            return; // settled: `settle` already retired it
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Clones are only made under this lock: the map's and ours mean nobody else waits.
        let unused = state
            .in_flight
            .get(&self.digest)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell) && Arc::strong_count(c) <= 2);
        if unused {
            state.in_flight.remove(&self.digest);
        }
    }
}

fn hide<B>(req: &mut Request<B>, source: Source) {
    match source {
        Source::Header => {
            req.headers_mut().remove(AUTHORIZATION);
        }
        Source::Query => {
            if let Some(rest) = req.uri().query().and_then(|q| remove_pairs(q.as_bytes(), "access_token")) {
                set_query(req.uri_mut(), Some(&rest));
            }
        }
    }
}

// === service ===

/// The service made by [`IntrospectionLayer`].
#[derive(Debug, Clone)]
pub struct Introspection<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("url", &self.url).finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Introspection<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let skip = (!shared.run_on_preflight && req.method() == Method::OPTIONS)
            || (shared.anonymous.is_some()
                && req.extensions().get::<Consumer>().is_some_and(|c| !c.anonymous));
        if skip {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        let (token, source) = match find_token(&req) {
            Found::Token(token, _) if token.len() > MAX_TOKEN_BYTES => {
                let refused = shared.invalid();
                return self.finish(req, Err(refused));
            }
            Found::Token(token, source) => (token, source),
            Found::Missing => {
                let outcome = shared.refuse(&mut req, shared.missing());
                return self.finish(req, outcome);
            }
            Found::Ambiguous => {
                let outcome = shared.refuse(&mut req, shared.invalid());
                return self.finish(req, outcome);
            }
        };
        let digest: [u8; 32] = Sha256::digest(&token).into();
        let cell = match shared.lookup(digest) {
            Ok(Some(active)) => {
                let consumer = shared.admit(&mut req, &active, source);
                return ResponseFuture::inner(self.inner.call(req), consumer);
            }
            Ok(None) => {
                let outcome = shared.refuse(&mut req, shared.invalid());
                return self.finish(req, outcome);
            }
            Err(cell) => cell,
        };
        // The inner service was made ready for this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::boxed(Box::pin(async move {
            let _abandon = Abandon { shared: &shared, digest, cell: &cell };
            let outcome = cell
                .get_or_init(|| async {
                    let (outcome, lifetime) = shared.introspect(&token).await;
                    shared.settle(digest, &cell, &outcome, lifetime);
                    outcome
                })
                .await
                .clone();
            let decided = match outcome {
                Outcome::Active(active) => Ok(shared.admit(&mut req, &active, source)),
                Outcome::Inactive => shared.refuse(&mut req, shared.invalid()),
                Outcome::Failed => Err(Shared::unavailable()),
            };
            match decided {
                Ok(consumer) => {
                    let mut response = inner.call(req).await?;
                    if let Some(consumer) = consumer {
                        response.extensions_mut().insert(consumer);
                    }
                    Ok(response)
                }
                Err(rejection) => Ok(AuthFailure::respond(PLUGIN, rejection, &req)),
            }
        }))
    }
}

impl<S> Introspection<S> {
    fn finish<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        outcome: Result<Option<Consumer>, Rejection>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: From<Bytes>,
    {
        match outcome {
            Ok(consumer) => ResponseFuture::inner(self.inner.call(req), consumer),
            Err(rejection) => ResponseFuture::rejected(AuthFailure::respond(PLUGIN, rejection, &req)),
        }
    }
}

pub use super::future::ResponseFuture;

#[cfg(test)]
mod tests {
    use super::*;

    fn active(sub: &str) -> Arc<Active> {
        Arc::new(Active {
            info: TokenInfo { sub: Some(sub.into()), scope: None, client_id: None, username: None },
            consumer: None,
            headers: [
                (X_CREDENTIAL_SUB.clone(), None),
                (X_CREDENTIAL_SCOPE.clone(), None),
                (X_CREDENTIAL_CLIENT_ID.clone(), None),
            ],
        })
    }

    #[test]
    fn cache_entries_expire_at_their_deadline() {
        let now = Instant::now();
        let mut cache = TokenCache::new(10);
        cache.insert([1; 32], active("a"), now + Duration::from_secs(5), now);
        assert!(cache.get(&[1; 32], now + Duration::from_secs(4)).is_some());
        assert!(cache.get(&[1; 32], now + Duration::from_secs(5)).is_none());
        assert_eq!(cache.len(), 0);
        // A deadline already past is not stored.
        cache.insert([2; 32], active("b"), now, now);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn cache_is_bounded_expired_first_then_soonest_deadline() {
        let now = Instant::now();
        let mut cache = TokenCache::new(3);
        cache.insert([1; 32], active("1"), now + Duration::from_secs(1), now);
        cache.insert([2; 32], active("2"), now + Duration::from_secs(30), now);
        cache.insert([3; 32], active("3"), now + Duration::from_secs(20), now);
        let later = now + Duration::from_secs(2);
        cache.insert([4; 32], active("4"), later + Duration::from_secs(60), later);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&[1; 32], later).is_none());
        cache.insert([5; 32], active("5"), later + Duration::from_secs(60), later);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&[3; 32], later).is_none(), "the soonest deadline was evicted");
        assert!(cache.get(&[2; 32], later).is_some());
        for i in 0..1000u16 {
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&i.to_le_bytes());
            cache.insert(key, active("x"), later + Duration::from_secs(60), later);
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn any_exp_gives_a_bounded_lifetime() {
        let ttl = Duration::from_secs(60);
        let now = 1_700_000_000.0;
        assert_eq!(active_lifetime(None, now, ttl), Some(ttl));
        for far in [1e300, f64::MAX, 18_446_744_073_709_551_615.0, now + 61.0] {
            assert_eq!(active_lifetime(Some(far), now, ttl), Some(ttl), "{far}");
        }
        assert_eq!(active_lifetime(Some(now + 1.5), now, ttl), Some(Duration::from_millis(1500)));
        for past in [-1.0, -1e300, f64::MIN, 0.0, now, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(active_lifetime(Some(past), now, ttl), None, "{past}");
        }
        // The builder caps what it is given, so deadlines never overflow `Instant`.
        let layer = IntrospectionLayer::builder(Uri::from_static("http://127.0.0.1:9/"))
            .ttl(Duration::MAX)
            .negative_ttl(Duration::MAX)
            .build();
        assert_eq!((layer.shared.ttl, layer.shared.negative_ttl), (MAX_CACHE_TTL, MAX_CACHE_TTL));
    }

    #[test]
    fn negative_cache_expires_in_order_and_is_bounded() {
        let now = Instant::now();
        let ttl = Duration::from_secs(5);
        let mut cache = NegativeCache::new(3);
        cache.insert([1; 32], now + ttl, now);
        assert!(cache.contains(&[1; 32], now + Duration::from_secs(4)));
        assert!(!cache.contains(&[1; 32], now + ttl));
        assert!(!cache.contains(&[9; 32], now));
        for i in 0..1000u16 {
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&i.to_le_bytes());
            let at = now + Duration::from_millis(u64::from(i));
            cache.insert(key, at + ttl, at);
            assert!(cache.len() <= 3 && cache.order.len() <= 3);
        }
        let last = now + Duration::from_millis(999);
        let mut newest = [0u8; 32];
        newest[..2].copy_from_slice(&999u16.to_le_bytes());
        assert!(cache.contains(&newest, last));
        assert!(!cache.contains(&[0; 32], last), "the oldest went first");
        NegativeCache::new(0).insert([1; 32], now + ttl, now);
    }

    #[test]
    fn tokens_come_from_the_query_then_the_authorization_header() {
        let token = |req: Request<()>| match find_token(&req) {
            Found::Token(t, s) => format!("{}:{s:?}", String::from_utf8(t).unwrap()),
            Found::Missing => "missing".into(),
            Found::Ambiguous => "ambiguous".into(),
        };
        let req = |uri: &str, auth: Option<&str>| {
            let mut b = Request::get(uri);
            if let Some(auth) = auth {
                b = b.header(AUTHORIZATION, auth);
            }
            b.body(()).unwrap()
        };
        assert_eq!(token(req("/x?access_token=a%2Bb", Some("Bearer c"))), "a+b:Query");
        assert_eq!(token(req("/x", Some("bearer  c"))), "c:Header");
        assert_eq!(token(req("/x", Some("Token c"))), "c:Header");
        assert_eq!(token(req("/x", Some("Basic c"))), "missing");
        assert_eq!(token(req("/x", Some("Bearer c d"))), "missing");
        assert_eq!(token(req("/x?access_token=", None)), "missing");
        assert_eq!(token(req("/x?access_token=a&access_token=b", None)), "ambiguous");
        let mut encoded = Vec::new();
        form_encode(b"a b+c/=", &mut encoded);
        assert_eq!(encoded, b"a%20b%2Bc%2F%3D");
    }

    #[tokio::test]
    async fn abandoned_calls_leave_no_in_flight_entry() {
        let layer = IntrospectionLayer::builder(Uri::from_static("http://127.0.0.1:9/")).build();
        let svc = tower::ServiceBuilder::new().layer(layer.clone()).service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Bytes::new()))
        });
        for i in 0..20 {
            let req = Request::get("/").header(AUTHORIZATION, format!("Bearer t{i}")).body(()).unwrap();
            let mut call = Box::pin(tower::ServiceExt::oneshot(svc.clone(), req));
            // Started (the cell is registered, the call under way), then abandoned.
            let polled = call.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop()));
            assert!(polled.is_pending());
            assert_eq!(layer.shared.state.lock().unwrap().in_flight.len(), 1);
            drop(call);
        }
        assert_eq!(layer.shared.state.lock().unwrap().in_flight.len(), 0);
    }

    #[tokio::test]
    async fn clones_share_one_cache() {
        let layer = IntrospectionLayer::builder(Uri::from_static("http://127.0.0.1:9/")).build();
        let clones: Vec<_> = (0..64).map(|_| layer.clone()).collect();
        {
            let mut state = layer.shared.state.lock().unwrap();
            let now = Instant::now();
            state.cache.insert([7; 32], active("s"), now + Duration::from_secs(60), now);
        }
        assert!(clones.iter().all(|c| c.cached_tokens() == 1 && Arc::ptr_eq(&c.shared, &layer.shared)));
    }
}
