//! API keys (Kong's `key-auth`): a key in a header, the query string or the body identifies a
//! consumer.
//!
//! Keys are held only as digests — SHA-256, or HMAC-SHA256 under a secret *pepper* so that a
//! leaked digest table cannot be brute-forced offline without the pepper too ([`KeyHasher`]).
//! A presented key is hashed once and looked up by its digest; the candidate is then compared in
//! constant time ([`subtle`]). The map's own probing depends only on bits of the *digest* of what
//! the client sent, never on a stored key, so its timing tells an attacker nothing usable.
//!
//! Where the key is looked for, for each of [`key_names`](ApiKeyAuthBuilder::key_names) in turn
//! (Kong's order): the header of that name, then the query parameter, then (when enabled) the
//! form or JSON body field. An empty key answers `No API key found in request`, a name present
//! twice `Duplicate API key found`, and any key that matches nothing — unknown, malformed or one
//! character off — the same `Unauthorized`; every 401 carries `WWW-Authenticate: Key`.
//!
//! ```
//! use portcullis::Body;
//! use portcullis::auth::api_key::{ApiKeyAuthLayer, ApiKeys, KeyHasher};
//! use portcullis::consumer::Consumer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut keys = ApiKeys::new(KeyHasher::sha256());
//! keys.insert_key(b"s3cr3t-key", Consumer { id: "alice".into(), ..Consumer::default() }).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(ApiKeyAuthLayer::builder(keys).hide_credentials(true).build())
//!     .service_fn(|req: http::Request<Body>| async move {
//!         let who = req.headers()["x-consumer-id"].to_str().unwrap().to_owned();
//!         assert!(req.uri().query().is_none()); // the key was hidden from the upstream
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(who)))
//!     });
//!
//! let ok = http::Request::get("/orders?apikey=s3cr3t-key").body(Body::empty()).unwrap();
//! assert_eq!(svc.clone().oneshot(ok).await.unwrap().status(), 200);
//! let bad = http::Request::get("/orders").header("apikey", "guess").body(Body::empty()).unwrap();
//! let res = svc.oneshot(bad).await.unwrap();
//! assert_eq!(res.status(), 401);
//! assert_eq!(res.headers()["www-authenticate"], "Key");
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::consumer::Consumer;
use crate::error::{BoxError, Rejection};
use crate::ext::AuthFailure;

/// The plugin name in [`AuthFailure`].
const PLUGIN: &str = "key-auth";

// === KeyDigest, KeyHasher ===

/// The SHA-256 or HMAC-SHA256 digest of an API key: the only form in which keys are held.
///
/// Equality is constant-time; `Debug` does not print the bytes.
#[derive(Clone, Copy, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// A digest from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A digest from 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Result<Self, InvalidDigest> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return Err(InvalidDigest);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(InvalidDigest);
            };
            *byte = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Hash for KeyDigest {
    /// The first 8 bytes: a digest is already uniformly distributed, and an attacker cannot aim
    /// at a bucket without a preimage, so SipHash would only add cost.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// Not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex digits (a SHA-256 digest)")]
pub struct InvalidDigest;

/// An empty pepper (a configuration mistake: it would silently weaken the keyed hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pepper must not be empty")]
pub struct InvalidPepper;

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The map of digests: hashed by digest prefix (see [`KeyDigest`]'s `Hash`).
#[derive(Default, Clone, Copy)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached by `KeyDigest`; a plain FNV-1a keeps the hasher total.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// How keys are turned into [`KeyDigest`]s.
#[derive(Clone)]
pub struct KeyHasher(HasherKind);

#[derive(Clone)]
enum HasherKind {
    Sha256,
    // The keyed state is computed once; each digest clones it.
    HmacSha256(Box<Hmac<Sha256>>),
}

impl KeyHasher {
    /// Plain SHA-256 (`key_hash: "sha256:<hex>"` in the config).
    pub fn sha256() -> Self {
        Self(HasherKind::Sha256)
    }

    /// HMAC-SHA256 keyed by `pepper` (`key_hash: "hmac-sha256:<hex>"`).
    pub fn hmac_sha256(pepper: impl AsRef<[u8]>) -> Result<Self, InvalidPepper> {
        let pepper = pepper.as_ref();
        if pepper.is_empty() {
            return Err(InvalidPepper);
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper).map_err(|_| InvalidPepper)?;
        Ok(Self(HasherKind::HmacSha256(Box::new(mac))))
    }

    /// Whether this hasher uses a pepper.
    pub fn is_keyed(&self) -> bool {
        matches!(self.0, HasherKind::HmacSha256(_))
    }

    /// The digest of `key`.
    pub fn digest(&self, key: &[u8]) -> KeyDigest {
        match &self.0 {
            HasherKind::Sha256 => KeyDigest(Sha256::digest(key).into()),
            HasherKind::HmacSha256(mac) => {
                let mut mac = (**mac).clone();
                mac.update(key);
                KeyDigest(mac.finalize().into_bytes().into())
            }
        }
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            HasherKind::Sha256 => "KeyHasher::Sha256",
            HasherKind::HmacSha256(_) => "KeyHasher::HmacSha256(..)",
        })
    }
}

// === ApiKeys ===

/// The known keys, by digest, each with the consumer it identifies (a consumer may have several).
#[derive(Clone)]
pub struct ApiKeys {
    hasher: KeyHasher,
    keys: HashMap<KeyDigest, Consumer, BuildHasherDefault<PrefixHasher>>,
}

/// A key (or digest) that is already registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate API key (already registered for consumer `{consumer_id}`)")]
pub struct DuplicateKey {
    /// The consumer the key already belongs to.
    pub consumer_id: Arc<str>,
}

impl ApiKeys {
    /// No keys yet; keys will be hashed with `hasher`.
    pub fn new(hasher: KeyHasher) -> Self {
        Self { hasher, keys: HashMap::default() }
    }

    /// Registers a plain key: it is hashed here and not kept.
    pub fn insert_key(&mut self, key: &[u8], consumer: Consumer) -> Result<(), DuplicateKey> {
        let digest = self.hasher.digest(key);
        self.insert_digest(digest, consumer)
    }

    /// Registers a key by its digest (made by the same [`KeyHasher`]).
    pub fn insert_digest(&mut self, digest: KeyDigest, consumer: Consumer) -> Result<(), DuplicateKey> {
        if let Some(existing) = self.keys.get(&digest) {
            return Err(DuplicateKey { consumer_id: existing.id.clone() });
        }
        self.keys.insert(digest, consumer);
        Ok(())
    }

    /// The hasher keys are digested with.
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// How many keys are registered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The consumer `key` belongs to, if any.
    pub fn verify(&self, key: &[u8]) -> Option<&Consumer> {
        self.keys.get(&self.hasher.digest(key))
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys").field("hasher", &self.hasher).field("len", &self.keys.len()).finish()
    }
}

// === layer ===

/// Kong's `key-auth`; see the [module docs](self). Cheap to clone: clones share one key map.
#[derive(Debug, Clone)]
pub struct ApiKeyAuthLayer {
    config: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    keys: ApiKeys,
    names: Vec<KeyName>,
    in_header: bool,
    in_query: bool,
    in_body: bool,
    hide_credentials: bool,
    run_on_preflight: bool,
    anonymous: Option<Consumer>,
    www_authenticate: HeaderValue,
    body_limit: usize,
    max_json_depth: usize,
}

#[derive(Debug)]
struct KeyName {
    name: String,
    // `None` when the name cannot be a header name (it is then only looked for elsewhere).
    header: Option<HeaderName>,
}

/// Builds an [`ApiKeyAuthLayer`].
#[derive(Debug)]
pub struct ApiKeyAuthBuilder {
    config: Config,
}

impl ApiKeyAuthLayer {
    /// Kong's defaults: key name `apikey`, in the header or the query string, not the body; the
    /// key is forwarded; no anonymous consumer.
    pub fn new(keys: ApiKeys) -> Self {
        Self::builder(keys).build()
    }

    /// Starts from [`new`](Self::new)'s defaults.
    pub fn builder(keys: ApiKeys) -> ApiKeyAuthBuilder {
        ApiKeyAuthBuilder {
            config: Config {
                keys,
                names: Vec::new(),
                in_header: true,
                in_query: true,
                in_body: false,
                hide_credentials: false,
                run_on_preflight: true,
                anonymous: None,
                www_authenticate: HeaderValue::from_static("Key"),
                body_limit: 64 * 1024,
                max_json_depth: crate::body::DEFAULT_MAX_JSON_DEPTH,
            },
        }
        .key_names(["apikey"])
    }

    /// The registered keys.
    pub fn keys(&self) -> &ApiKeys {
        &self.config.keys
    }
}

impl ApiKeyAuthBuilder {
    /// The parameter names a key is looked for under, in order (default `apikey`). Header names
    /// compare case-insensitively, query and body names exactly.
    pub fn key_names<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.config.names = names
            .into_iter()
            .map(|name| {
                let name = name.into();
                KeyName { header: HeaderName::from_bytes(name.as_bytes()).ok(), name }
            })
            .collect();
        self
    }

    /// Look in request headers (default true).
    pub fn key_in_header(mut self, enabled: bool) -> Self {
        self.config.in_header = enabled;
        self
    }

    /// Look in the query string (default true).
    pub fn key_in_query(mut self, enabled: bool) -> Self {
        self.config.in_query = enabled;
        self
    }

    /// Look in `application/x-www-form-urlencoded` and JSON bodies (default false). The body is
    /// read only when a key is still needed from it (or must be hidden in it), and only up to
    /// [`body_limit`](Self::body_limit): a body declared larger is not searched, a streamed one
    /// that grows past it is answered 413.
    pub fn key_in_body(mut self, enabled: bool) -> Self {
        self.config.in_body = enabled;
        self
    }

    /// Largest body read when looking for a key in it (default 64 KiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// Refuses (400) a JSON body nested deeper than `depth` arrays and objects when looking for
    /// a key in it (default 64, at most 128, serde_json's own recursion limit). Checked by a
    /// byte scan before the body is parsed.
    pub fn max_json_depth(mut self, depth: usize) -> Self {
        self.config.max_json_depth = depth.clamp(1, crate::body::MAX_JSON_DEPTH_LIMIT);
        self
    }

    /// Remove the key from the header, the query string (other parameters keep their order and
    /// bytes) and the body before proxying (default false).
    pub fn hide_credentials(mut self, enabled: bool) -> Self {
        self.config.hide_credentials = enabled;
        self
    }

    /// Authenticate `OPTIONS` requests too (default true); when false they pass untouched.
    pub fn run_on_preflight(mut self, enabled: bool) -> Self {
        self.config.run_on_preflight = enabled;
        self
    }

    /// On failure, proxy as this consumer (marked anonymous) instead of answering 401; and when
    /// an earlier auth layer already identified a non-anonymous consumer, do nothing (Kong's
    /// logical OR between auth plugins).
    pub fn anonymous(mut self, consumer: Consumer) -> Self {
        self.config.anonymous = Some(Consumer { anonymous: true, ..consumer });
        self
    }

    /// `WWW-Authenticate: Key realm="<realm>"` instead of plain `Key`. A realm that cannot be a
    /// header value is ignored.
    pub fn realm(mut self, realm: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(&format!("Key realm=\"{realm}\"")) {
            self.config.www_authenticate = value;
        }
        self
    }

    /// The layer.
    pub fn build(self) -> ApiKeyAuthLayer {
        ApiKeyAuthLayer { config: Arc::new(self.config) }
    }
}

impl<S> Layer<S> for ApiKeyAuthLayer {
    type Service = ApiKeyAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth { inner, config: self.config.clone() }
    }
}

// === lookup ===

/// Where the key search ended.
#[derive(Debug, PartialEq, Eq)]
enum Located {
    /// Found under `key_names[index]` (possibly empty).
    Key { key: Vec<u8>, index: usize },
    /// A name carried more than one value.
    Duplicate,
    /// No name carried a value.
    Missing,
}

/// A request body the key may be in.
#[derive(Debug)]
enum BodyParams {
    Form(Bytes),
    Json(serde_json::Value),
}

/// Which body kinds key-auth reads, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Form,
    Json,
}

fn body_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim();
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(BodyKind::Form)
    } else if essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
    {
        Some(BodyKind::Json)
    } else {
        None
    }
}

/// One name's values in a `&`-separated, percent-encoded list.
enum Values {
    None,
    One(Vec<u8>),
    Many,
}

fn form_values(encoded: &[u8], name: &str) -> Values {
    let mut found = Values::None;
    for (raw_name, raw_value) in pairs(encoded) {
        // A bare `name` (no `=`) carries no value, as in Kong.
        let Some(raw_value) = raw_value else { continue };
        if form_decode(raw_name) != name.as_bytes() {
            continue;
        }
        found = match found {
            Values::None => Values::One(form_decode(raw_value)),
            _ => return Values::Many,
        };
    }
    found
}

/// The `name[=value]` pairs of a query string or form body, raw.
pub(crate) fn pairs(encoded: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    encoded.split(|b| *b == b'&').filter(|p| !p.is_empty()).map(|pair| {
        match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], Some(&pair[at + 1..])),
            None => (pair, None),
        }
    })
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte (a malformed
/// escape stays as written).
pub(crate) fn form_decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (raw.get(i + 1).and_then(|b| hex_value(*b)), raw.get(i + 2).and_then(|b| hex_value(*b)))
                {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Removes every `name` pair from an encoded list, keeping the others' order and bytes.
/// Returns `None` when nothing was removed.
pub(crate) fn remove_pairs(encoded: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut removed = false;
    let mut out = Vec::with_capacity(encoded.len());
    for piece in encoded.split(|b| *b == b'&') {
        let raw_name = piece.split(|b| *b == b'=').next().unwrap_or_default();
        if !piece.is_empty() && form_decode(raw_name) == name.as_bytes() {
            removed = true;
            continue;
        }
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(piece);
    }
    removed.then_some(out)
}

/// Replaces the query string of `uri` (`None` or empty removes it).
pub(crate) fn set_query(uri: &mut Uri, query: Option<&[u8]>) {
    let path = uri.path();
    let mut pq = Vec::with_capacity(path.len() + 1 + query.map_or(0, <[u8]>::len));
    pq.extend_from_slice(path.as_bytes());
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        pq.push(b'?');
        pq.extend_from_slice(query);
    }
    let mut parts = std::mem::take(uri).into_parts();
    // The new path-and-query is a subset of valid bytes; it always parses.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(pq) {
        parts.path_and_query = Some(pq);
    }
    *uri = Uri::from_parts(parts).unwrap_or_default();
}

impl Config {
    fn locate(&self, headers: &HeaderMap, query: Option<&str>, body: Option<&BodyParams>) -> Located {
        for (index, name) in self.names.iter().enumerate() {
            let mut values = Values::None;
            if self.in_header {
                if let Some(header) = &name.header {
                    let mut all = headers.get_all(header).iter();
                    values = match (all.next(), all.next()) {
                        (None, _) => Values::None,
                        (Some(v), None) => Values::One(v.as_bytes().to_vec()),
                        (Some(_), Some(_)) => Values::Many,
                    };
                }
            }
            if matches!(values, Values::None) && self.in_query {
                if let Some(query) = query {
                    values = form_values(query.as_bytes(), &name.name);
                }
            }
            if matches!(values, Values::None) && self.in_body {
                values = match body {
                    Some(BodyParams::Form(form)) => form_values(form, &name.name),
                    Some(BodyParams::Json(serde_json::Value::Object(map))) => match map.get(&name.name) {
                        Some(serde_json::Value::String(s)) => Values::One(s.as_bytes().to_vec()),
                        // A Lua table in Kong: reported as a duplicate.
                        Some(serde_json::Value::Array(_) | serde_json::Value::Object(_)) => Values::Many,
                        _ => Values::None,
                    },
                    _ => Values::None,
                };
            }
            match values {
                Values::None => continue,
                Values::One(key) => return Located::Key { key, index },
                Values::Many => return Located::Duplicate,
            }
        }
        Located::Missing
    }

    /// Whether the body must be read to settle this request.
    fn needs_body(&self, first: &Located, headers: &HeaderMap) -> Option<BodyKind> {
        if !self.in_body {
            return None;
        }
        let kind = body_kind(headers)?;
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len == 0 || len > self.body_limit as u64) {
            return None;
        }
        let needed = match first {
            Located::Missing => true,
            // An earlier name's body field comes before a later name's header (Kong's order).
            Located::Key { index, .. } => *index > 0 || self.hide_credentials,
            Located::Duplicate => false,
        };
        needed.then_some(kind)
    }

    fn unauthorized(&self, code: &'static str, message: &'static str) -> Rejection {
        Rejection::new(StatusCode::UNAUTHORIZED, code, message)
            .with_header(WWW_AUTHENTICATE, self.www_authenticate.clone())
    }

    /// Decides the request; on success it is marked with the consumer, returned for the response.
    fn decide<B>(&self, req: &mut Request<B>, located: Located) -> Result<Consumer, Rejection> {
        let outcome = match located {
            Located::Duplicate => Err(self.unauthorized("invalid_credentials", "Duplicate API key found")),
            Located::Missing => Err(self.unauthorized("unauthorized", "No API key found in request")),
            Located::Key { key, index } => {
                if self.hide_credentials {
                    self.hide(req, index);
                }
                if key.is_empty() {
                    Err(self.unauthorized("unauthorized", "No API key found in request"))
                } else {
                    match self.keys.verify(&key) {
                        Some(consumer) => Ok(consumer.clone()),
                        None => Err(self.unauthorized("invalid_credentials", "Unauthorized")),
                    }
                }
            }
        };
        let consumer = match (outcome, &self.anonymous) {
            (Ok(consumer), _) => consumer,
            (Err(_), Some(anonymous)) => anonymous.clone(),
            (Err(rejection), None) => return Err(rejection),
        };
        consumer.apply_to(req);
        Ok(consumer)
    }

    /// Removes the key named `key_names[index]` from the header and the query string (the body
    /// is handled where it is buffered).
    fn hide<B>(&self, req: &mut Request<B>, index: usize) {
        let name = &self.names[index];
        if let Some(header) = &name.header {
            req.headers_mut().remove(header);
        }
        if let Some(query) = req.uri().query() {
            if let Some(rest) = remove_pairs(query.as_bytes(), &name.name) {
                set_query(req.uri_mut(), Some(&rest));
            }
        }
    }

    /// The body with the key field removed, when hiding and it carried one.
    fn hidden_body(&self, body: &BodyParams, located: &Located) -> Option<Bytes> {
        let Located::Key { index, .. } = located else { return None };
        if !self.hide_credentials {
            return None;
        }
        let name = &self.names[*index].name;
        match body {
            BodyParams::Form(form) => remove_pairs(form, name).map(Bytes::from),
            BodyParams::Json(serde_json::Value::Object(map)) if map.contains_key(name) => {
                let mut map = map.clone();
                map.remove(name);
                serde_json::to_vec(&serde_json::Value::Object(map)).ok().map(Bytes::from)
            }
            BodyParams::Json(_) => None,
        }
    }

    /// Whether this layer lets the request through untouched.
    fn skips<B>(&self, req: &Request<B>) -> bool {
        (!self.run_on_preflight && req.method() == Method::OPTIONS)
            || (self.anonymous.is_some() && req.extensions().get::<Consumer>().is_some_and(|c| !c.anonymous))
    }
}

// === service ===

/// The service made by [`ApiKeyAuthLayer`].
#[derive(Debug, Clone)]
pub struct ApiKeyAuth<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        if config.skips(&req) {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        let located = config.locate(req.headers(), req.uri().query(), None);
        if let Some(kind) = config.needs_body(&located, req.headers()) {
            // The inner service was made ready for this call; a clone takes its place.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let config = self.config.clone();
            return ResponseFuture::boxed(Box::pin(with_body(config, inner, req, kind)));
        }
        match config.decide(&mut req, located) {
            Ok(consumer) => ResponseFuture::inner(self.inner.call(req), Some(consumer)),
            Err(rejection) => ResponseFuture::rejected(AuthFailure::respond(PLUGIN, rejection, &req)),
        }
    }
}

/// The slow path: read the body (up to the limit), search it too, then call `inner`.
async fn with_body<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
    kind: BodyKind,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    let (mut parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, config.body_limit);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let rejection = crate::body::client_body_failure(&*error)
                .unwrap_or_else(|| Rejection::bad_request("cannot read the request body"));
            let req = Request::from_parts(parts, ());
            return Ok(AuthFailure::respond(PLUGIN, rejection, &req));
        }
    };
    if kind == BodyKind::Json && crate::body::json_deeper_than(&bytes, config.max_json_depth) {
        let message = format!("JSON body nested deeper than {} levels", config.max_json_depth);
        let req = Request::from_parts(parts, ());
        return Ok(AuthFailure::respond(PLUGIN, Rejection::bad_request(message), &req));
    }
    let params = match kind {
        BodyKind::Form => Some(BodyParams::Form(bytes.clone())),
        // A body that is not JSON carries no key (Kong treats it as empty).
        // Only an object has fields: anything else is not parsed at all.
        BodyKind::Json if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') => None,
        BodyKind::Json => serde_json::from_slice(&bytes).ok().map(BodyParams::Json),
    };
    let located = config.locate(&parts.headers, parts.uri.query(), params.as_ref());
    let body = match params.as_ref().and_then(|p| config.hidden_body(p, &located)) {
        Some(hidden) => {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(hidden.len()));
            hidden
        }
        None => bytes,
    };
    let mut req = Request::from_parts(parts, ReqBody::from(body));
    match config.decide(&mut req, located) {
        Ok(consumer) => {
            let mut response = inner.call(req).await?;
            response.extensions_mut().insert(consumer);
            Ok(response)
        }
        Err(rejection) => Ok(AuthFailure::respond(PLUGIN, rejection, &req)),
    }
}

pub use super::future::ResponseFuture;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::Body;
    use tower::{ServiceBuilder, ServiceExt};

    fn consumer(id: &str) -> Consumer {
        Consumer { id: id.into(), ..Consumer::default() }
    }

    fn keys() -> ApiKeys {
        let mut keys = ApiKeys::new(KeyHasher::sha256());
        keys.insert_key(b"alice-key-1", consumer("alice")).unwrap();
        keys.insert_key(b"alice-key-2", consumer("alice")).unwrap();
        keys.insert_key(b"bob-key", consumer("bob")).unwrap();
        keys
    }

    /// Echoes what reached the inner service: consumer id, query and body.
    async fn run(layer: ApiKeyAuthLayer, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<Body>| async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let who = parts.headers.get("x-consumer-id").map(|v| v.to_str().unwrap().to_owned());
            let text = format!(
                "{}|{}|{}|{}",
                who.unwrap_or_default(),
                parts.uri.query().unwrap_or_default(),
                String::from_utf8_lossy(&body),
                parts.headers.get("apikey").map(|v| v.to_str().unwrap()).unwrap_or_default(),
            );
            Ok::<_, Infallible>(Response::new(Body::from(text)))
        });
        let res = svc.oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
    }

    fn get(uri: &str) -> http::request::Builder {
        Request::get(uri)
    }

    #[test]
    fn digests_compare_and_parse() {
        let hasher = KeyHasher::sha256();
        // SHA-256("abc").
        let known =
            KeyDigest::from_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap();
        assert_eq!(hasher.digest(b"abc"), known);
        assert_ne!(hasher.digest(b"abd"), known);
        assert_eq!(KeyDigest::from_hex("zz"), Err(InvalidDigest));
        let peppered = KeyHasher::hmac_sha256("pepper").unwrap();
        assert_ne!(peppered.digest(b"abc"), known);
        assert_eq!(peppered.digest(b"abc"), peppered.clone().digest(b"abc"));
        assert!(KeyHasher::hmac_sha256("").is_err());
        assert_eq!(format!("{known:?}"), "KeyDigest(..)");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let mut keys = keys();
        let err = keys.insert_key(b"bob-key", consumer("carol")).unwrap_err();
        assert_eq!(&*err.consumer_id, "bob");
        assert_eq!(keys.len(), 3);
    }

    #[tokio::test]
    async fn header_and_query_sources_and_several_keys_per_consumer() {
        let layer = ApiKeyAuthLayer::new(keys());
        let (status, _, body) =
            run(layer.clone(), get("/x").header("ApiKey", "alice-key-2").body(Body::empty()).unwrap()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "alice|||alice-key-2"));
        let (status, _, body) =
            run(layer.clone(), get("/x?a=1&apikey=bob-key").body(Body::empty()).unwrap()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "bob|a=1&apikey=bob-key||"));
        // Percent-decoded query values.
        let mut keys = keys();
        keys.insert_key(b"a b+c/", consumer("carol")).unwrap();
        let (status, _, body) =
            run(ApiKeyAuthLayer::new(keys), get("/x?apikey=a+b%2Bc%2F").body(Body::empty()).unwrap()).await;
        assert_eq!((status, &body[..5]), (StatusCode::OK, "carol"));

        // Sources can be switched off.
        let header_only = ApiKeyAuthLayer::builder(self::keys()).key_in_query(false).build();
        let (status, _, _) = run(header_only, get("/x?apikey=bob-key").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let query_only = ApiKeyAuthLayer::builder(self::keys()).key_in_header(false).build();
        let (status, _, _) =
            run(query_only, get("/x").header("apikey", "bob-key").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn missing_empty_duplicate_and_unknown_keys_are_401_with_kongs_messages() {
        let layer = ApiKeyAuthLayer::new(keys());
        let cases: [(Request<Body>, &str, &str); 6] = [
            (get("/x").body(Body::empty()).unwrap(), "unauthorized", "No API key found in request"),
            (get("/x?apikey=").body(Body::empty()).unwrap(), "unauthorized", "No API key found in request"),
            (
                get("/x").header("apikey", "").body(Body::empty()).unwrap(),
                "unauthorized",
                "No API key found in request",
            ),
            (
                get("/x")
                    .header("apikey", "bob-key")
                    .header("apikey", "bob-key")
                    .body(Body::empty())
                    .unwrap(),
                "invalid_credentials",
                "Duplicate API key found",
            ),
            (
                get("/x?apikey=a&apikey=b").body(Body::empty()).unwrap(),
                "invalid_credentials",
                "Duplicate API key found",
            ),
            (get("/x?apikey=bob-kez").body(Body::empty()).unwrap(), "invalid_credentials", "Unauthorized"),
        ];
        for (req, code, message) in cases {
            let (status, headers, body) = run(layer.clone(), req).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(headers[WWW_AUTHENTICATE], "Key");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body, serde_json::json!({"error": code, "message": message}));
        }
        let realm = ApiKeyAuthLayer::builder(keys()).realm("orders").build();
        let (_, headers, _) = run(realm, get("/x").body(Body::empty()).unwrap()).await;
        assert_eq!(headers[WWW_AUTHENTICATE], "Key realm=\"orders\"");
    }

    #[tokio::test]
    async fn names_are_searched_in_order_header_then_query() {
        let layer = ApiKeyAuthLayer::builder(keys()).key_names(["x-key", "apikey"]).build();
        // The first name wins even though the second one is in a header.
        let req = get("/x?x-key=bob-key").header("apikey", "alice-key-1").body(Body::empty()).unwrap();
        let (_, _, body) = run(layer, req).await;
        assert!(body.starts_with("bob|"), "{body}");
    }

    #[tokio::test]
    async fn hide_credentials_keeps_the_other_parameters_order_and_bytes() {
        let layer = ApiKeyAuthLayer::builder(keys()).hide_credentials(true).build();
        let req = get("/x?z=1&apikey=bob-key&a=%2F+&apikey2=x&&b").body(Body::empty()).unwrap();
        let (status, _, body) = run(layer.clone(), req).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "bob|z=1&a=%2F+&apikey2=x&&b||"));
        let req = get("/x?apikey=bob-key").body(Body::empty()).unwrap();
        let (_, _, body) = run(layer.clone(), req).await;
        assert_eq!(body, "bob|||");
        let req = get("/x").header("apikey", "bob-key").body(Body::empty()).unwrap();
        let (_, _, body) = run(layer, req).await;
        assert_eq!(body, "bob|||");
    }

    #[tokio::test]
    async fn form_and_json_bodies_are_searched_and_hidden_when_enabled() {
        let layer = ApiKeyAuthLayer::builder(keys()).key_in_body(true).hide_credentials(true).build();
        let form = Request::post("/x")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("a=1&apikey=bob-key&b=2"))
            .unwrap();
        let (status, _, body) = run(layer.clone(), form).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "bob||a=1&b=2|"));
        let json = Request::post("/x")
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Body::from(r#"{"apikey":"alice-key-1","n":1}"#))
            .unwrap();
        let (status, _, body) = run(layer.clone(), json).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "alice||{\"n\":1}|"));
        let array = Request::post("/x")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"apikey":["a","b"]}"#))
            .unwrap();
        let (status, _, body) = run(layer.clone(), array).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("Duplicate API key found"));
        // A streamed body past the limit is refused rather than half-read.
        let small = ApiKeyAuthLayer::builder(keys()).key_in_body(true).body_limit(8).build();
        let big = Request::post("/x")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::new(http_body_util::Full::new(Bytes::from_static(b"apikey=bob-key&padding=1"))))
            .unwrap();
        let (status, _, _) = run(small, big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Bodies are not read unless enabled.
        let off = Request::post("/x")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("apikey=bob-key"))
            .unwrap();
        let (status, _, _) = run(ApiKeyAuthLayer::new(keys()), off).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn anonymous_consumer_and_logical_or() {
        let layer = ApiKeyAuthLayer::builder(keys()).anonymous(consumer("guest")).build();
        let svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<Body>| async move {
            let c = req.extensions().get::<Consumer>().cloned().unwrap();
            let anon = req.headers().get("x-anonymous-consumer").is_some();
            Ok::<_, Infallible>(Response::new(Body::from(format!("{}:{}:{anon}", c.id, c.anonymous))))
        });
        let res = svc.clone().oneshot(get("/x?apikey=nope").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.extensions().get::<Consumer>().unwrap().anonymous);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "guest:true:true");
        // Already authenticated by an earlier layer: passed through untouched.
        let mut req = get("/x").body(Body::empty()).unwrap();
        consumer("jwt-user").apply_to(&mut req);
        let res = svc.oneshot(req).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "jwt-user:false:false");
    }

    #[tokio::test]
    async fn preflight_can_skip_and_clones_share_one_key_map() {
        let layer = ApiKeyAuthLayer::builder(keys()).run_on_preflight(false).build();
        let req = Request::options("/x").body(Body::empty()).unwrap();
        let (status, _, _) = run(layer.clone(), req).await;
        assert_eq!(status, StatusCode::OK);
        let clones: Vec<_> = (0..100).map(|_| layer.clone()).collect();
        assert!(clones.iter().all(|c| Arc::ptr_eq(&c.config, &layer.config)));
        assert_eq!(Arc::strong_count(&layer.config), 101);
    }
}
