//! `JwtAuthLayer`: Kong's `jwt` plugin as a tower layer, on [jsonwebtoken] (aws-lc-rs backend).
//!
//! The token is looked for in the query (`uri_param_names`, default `jwt`), cookies
//! (`cookie_names`) and headers (`header_names`, default `Authorization: Bearer <token>`). Exactly
//! one distinct token must be found. Its `key_claim_name` claim (default `iss`, read from the
//! payload, then from the JOSE header) names the credential; the credential's algorithm is the only
//! one accepted (so `alg: none` and HS/RS confusion fail), the signature is verified, then `exp` /
//! `nbf` (`claims_to_verify`, with `leeway`; the builder verifies `exp` unless told otherwise),
//! `maximum_expiration`, and the optional `aud` / `iss` allow-lists
//! ([`audiences`](JwtAuthLayerBuilder::audiences), [`issuers`](JwtAuthLayerBuilder::issuers);
//! RFC 8725 §3.9). A header or payload naming one member twice (`{"sub":"a","sub":"b"}`) is
//! refused: JSON parsers disagree on which one wins. On success the credential's
//! [`Consumer`] is applied ([`Consumer::apply_to`]: `X-Consumer-*` headers and request extensions),
//! copied into the response extensions, and the query token is removed from the upstream URI.
//! Failures are 401 JSON bodies with Kong's messages and `WWW-Authenticate: Bearer` (plus
//! `error="invalid_token"` when a token was presented), unless `anonymous` is configured.
//!
//! Credentials hold a shared secret, a PEM public key, or a JWKS URL ([`JwtCredential::jwks`]:
//! keys cached by `kid`, at most one refresh per interval (at least 1 s), the set re-fetched once
//! older than its max age ([`JwtCredential::jwks_max_age`], default 10 min) so a removed key stops
//! being trusted, cached keys kept while the endpoint fails; token-supplied `jku`/`x5u` are never
//! fetched). An optional verified-token cache
//! ([`JwtAuthLayerBuilder::verified_token_cache`]) skips the signature check for a token seen
//! before. Every clone of the layer shares both caches.
//!
//! ```
//! use portcullis::auth::jwt::{Algorithm, JwtAuthLayer, JwtCredential};
//! use portcullis::consumer::Consumer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let alice = Consumer { id: "alice".into(), ..Consumer::default() };
//! let credential = JwtCredential::secret(alice, "alice-key", Algorithm::HS256, b"s3cret").unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(JwtAuthLayer::builder().credential(credential).build())
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         let who = req.headers()["x-consumer-id"].to_str().unwrap().to_owned();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::from(who)))
//!     }));
//!
//! let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
//! let claims = serde_json::json!({"iss": "alice-key", "exp": exp});
//! let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
//! let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
//! let req = http::Request::get(format!("/orders?jwt={token}")).body(()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.body().as_ref(), b"alice");
//!
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 401);
//! assert_eq!(res.headers()["www-authenticate"], "Bearer");
//! # }
//! ```

mod jwks;
mod token;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response};
use jsonwebtoken::DecodingKey;
use tower::{Layer, Service};

use crate::consumer::Consumer;
use crate::error::Rejection;
use crate::ext::AuthFailure;

pub use jsonwebtoken::Algorithm;
pub use jwks::{DEFAULT_JWKS_MAX_AGE, DEFAULT_JWKS_REFRESH_INTERVAL, MIN_JWKS_REFRESH_INTERVAL};

use jwks::JwksCache;
#[cfg(feature = "config")]
pub(crate) use token::algorithm as parse_algorithm;
use token::{Check, VerifiedCache};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A registered claim Kong's `claims_to_verify` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisteredClaim {
    /// `exp`: must be a number and not in the past (`token expired`).
    Exp,
    /// `nbf`: must be a number and not in the future (`token not valid yet`).
    Nbf,
}

/// Why a [`JwtCredential`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JwtCredentialError {
    /// An HMAC algorithm needs a `secret`; the other algorithms a public key.
    #[error("algorithm {algorithm:?} needs {needs}")]
    WrongKeyKind {
        /// The credential's algorithm.
        algorithm: Algorithm,
        /// What it needs instead (`a secret`, `a PEM public key`).
        needs: &'static str,
    },
    /// The base64 secret did not decode.
    #[error("secret is not valid base64: {0}")]
    Base64(#[source] jsonwebtoken::errors::Error),
    /// The PEM public key did not parse.
    #[error("invalid PEM public key for {algorithm:?}: {source}")]
    PublicKey {
        /// The credential's algorithm.
        algorithm: Algorithm,
        /// What the parser said.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The JWKS URL is not an absolute `http://` URL.
    #[error("jwks_url must be an absolute http:// URL, got `{0}`")]
    JwksUrl(String),
}

/// One `jwt_secrets` entry: the value of the key claim that selects it, the only algorithm it
/// accepts, its key material, and the consumer it authenticates.
#[derive(Clone)]
pub struct JwtCredential {
    key: Arc<str>,
    algorithm: Algorithm,
    material: KeyMaterial,
    consumer: Consumer,
}

#[derive(Clone)]
enum KeyMaterial {
    Static(Arc<DecodingKey>),
    Jwks(Arc<JwksCache>),
}

impl fmt::Debug for JwtCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        let material = match &self.material {
            KeyMaterial::Static(_) => "static key",
            KeyMaterial::Jwks(_) => "jwks",
        };
        f.debug_struct("JwtCredential")
            .field("key", &self.key)
            .field("algorithm", &self.algorithm)
            .field("material", &material)
            .field("consumer", &self.consumer.id)
            .finish()
    }
}

fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl JwtCredential {
    fn with(consumer: Consumer, key: &str, algorithm: Algorithm, material: KeyMaterial) -> Self {
        let key: Arc<str> = key.into();
        let consumer = Consumer { credential_id: Some(key.clone()), ..consumer };
        Self { key, algorithm, material, consumer }
    }

    /// An HS256/384/512 credential with a raw shared secret.
    pub fn secret(
        consumer: Consumer,
        key: &str,
        algorithm: Algorithm,
        secret: impl AsRef<[u8]>,
    ) -> Result<Self, JwtCredentialError> {
        if !is_hmac(algorithm) {
            return Err(JwtCredentialError::WrongKeyKind { algorithm, needs: "a PEM public key" });
        }
        let material = KeyMaterial::Static(Arc::new(DecodingKey::from_secret(secret.as_ref())));
        Ok(Self::with(consumer, key, algorithm, material))
    }

    /// An HMAC credential whose secret is written in standard base64 (Kong's `secret_is_base64`).
    pub fn base64_secret(
        consumer: Consumer,
        key: &str,
        algorithm: Algorithm,
        secret: &str,
    ) -> Result<Self, JwtCredentialError> {
        if !is_hmac(algorithm) {
            return Err(JwtCredentialError::WrongKeyKind { algorithm, needs: "a PEM public key" });
        }
        let decoded = DecodingKey::from_base64_secret(secret).map_err(JwtCredentialError::Base64)?;
        Ok(Self::with(consumer, key, algorithm, KeyMaterial::Static(Arc::new(decoded))))
    }

    /// An RS*/PS*/ES*/EdDSA credential with a PEM public key (Kong's `rsa_public_key`, used for
    /// every public key type).
    pub fn public_key_pem(
        consumer: Consumer,
        key: &str,
        algorithm: Algorithm,
        pem: impl AsRef<[u8]>,
    ) -> Result<Self, JwtCredentialError> {
        let pem = pem.as_ref();
        let parsed = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(JwtCredentialError::WrongKeyKind { algorithm, needs: "a secret" });
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        }
        .map_err(|source| JwtCredentialError::PublicKey { algorithm, source })?;
        Ok(Self::with(consumer, key, algorithm, KeyMaterial::Static(Arc::new(parsed))))
    }

    /// A public-key credential whose keys come from a JWKS endpoint (selected by the token's
    /// `kid`). Keys are cached; an unknown `kid` refreshes the set at most once per
    /// `refresh_interval` (raised to [`MIN_JWKS_REFRESH_INTERVAL`]); a set older than
    /// [`DEFAULT_JWKS_MAX_AGE`] ([`jwks_max_age`](Self::jwks_max_age)) is re-fetched by the next
    /// request; when the endpoint fails the cached keys keep being served.
    /// `jku` / `x5u` token headers are never fetched: only this URL is. Fetching needs a tokio
    /// runtime (the request that meets an unknown `kid` waits for the fetch).
    pub fn jwks(
        consumer: Consumer,
        key: &str,
        algorithm: Algorithm,
        url: &str,
        refresh_interval: Duration,
    ) -> Result<Self, JwtCredentialError> {
        if is_hmac(algorithm) {
            return Err(JwtCredentialError::WrongKeyKind { algorithm, needs: "a secret" });
        }
        let uri: http::Uri = url.parse().map_err(|_| JwtCredentialError::JwksUrl(url.to_owned()))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
            return Err(JwtCredentialError::JwksUrl(url.to_owned()));
        }
        let cache = Arc::new(JwksCache::new(uri, refresh_interval, DEFAULT_JWKS_MAX_AGE));
        Ok(Self::with(consumer, key, algorithm, KeyMaterial::Jwks(cache)))
    }

    /// How long a JWKS credential trusts a fetched key set (default [`DEFAULT_JWKS_MAX_AGE`];
    /// never below its refresh interval): past it, the next request re-fetches the set, so a key
    /// the endpoint no longer serves stops being accepted. No effect on other credentials.
    pub fn jwks_max_age(mut self, max_age: Duration) -> Self {
        if let KeyMaterial::Jwks(cache) = &self.material {
            let (url, interval, _) = cache.settings();
            self.material = KeyMaterial::Jwks(Arc::new(JwksCache::new(url.clone(), interval, max_age)));
        }
        self
    }

    /// The key claim value that selects this credential (also `X-Credential-Identifier`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The only algorithm this credential accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Everything the layer's clones share (one JWKS cache, one verified-token cache).
pub(crate) struct Shared {
    key_claim_name: Box<str>,
    verify_exp: bool,
    verify_nbf: bool,
    maximum_expiration: Option<u64>,
    /// `aud` must name one of these (when set).
    audiences: Option<Box<[Box<str>]>>,
    /// `iss` must be one of these (when set).
    issuers: Option<Box<[Box<str>]>>,
    uri_param_names: Box<[Box<str>]>,
    cookie_names: Box<[Box<str>]>,
    header_names: Box<[HeaderName]>,
    run_on_preflight: bool,
    leeway: f64,
    anonymous: Option<Consumer>,
    credentials: HashMap<Box<str>, Arc<JwtCredential>>,
    cache: Option<VerifiedCache>,
    clock: Clock,
    messages: token::Messages,
}

impl Shared {
    fn now(&self) -> u64 {
        (self.clock)().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// Verifies JWTs like Kong's `jwt` plugin; see the [module docs](self).
#[derive(Clone)]
pub struct JwtAuthLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for JwtAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayer")
            .field("key_claim_name", &self.shared.key_claim_name)
            .field("credentials", &self.shared.credentials.len())
            .finish_non_exhaustive()
    }
}

impl JwtAuthLayer {
    /// A builder with Kong's defaults, except that `exp` is verified: `key_claim_name: iss`,
    /// `claims_to_verify: [exp]` (a token without a numeric, unexpired `exp` is refused; pass
    /// `claims_to_verify([])` for Kong's default of none), `uri_param_names: [jwt]`, no cookies,
    /// `header_names: [authorization]`, `run_on_preflight: true`, leeway 0, no anonymous
    /// consumer, no `aud` / `iss` allow-lists.
    pub fn builder() -> JwtAuthLayerBuilder {
        JwtAuthLayerBuilder {
            key_claim_name: "iss".into(),
            claims_to_verify: vec![RegisteredClaim::Exp],
            maximum_expiration: None,
            audiences: Vec::new(),
            issuers: Vec::new(),
            uri_param_names: vec!["jwt".into()],
            cookie_names: Vec::new(),
            header_names: vec![http::header::AUTHORIZATION],
            run_on_preflight: true,
            leeway: Duration::ZERO,
            anonymous: None,
            credentials: Vec::new(),
            cache_capacity: 0,
            clock: None,
        }
    }

    /// Whether two layers share their state (caches); clones do.
    pub fn shares_state_with(&self, other: &JwtAuthLayer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Entries in the verified-token cache (0 when it is disabled).
    pub fn cached_tokens(&self) -> usize {
        self.shared.cache.as_ref().map_or(0, VerifiedCache::len)
    }
}

/// Builds a [`JwtAuthLayer`].
pub struct JwtAuthLayerBuilder {
    key_claim_name: String,
    claims_to_verify: Vec<RegisteredClaim>,
    maximum_expiration: Option<Duration>,
    audiences: Vec<String>,
    issuers: Vec<String>,
    uri_param_names: Vec<String>,
    cookie_names: Vec<String>,
    header_names: Vec<HeaderName>,
    run_on_preflight: bool,
    leeway: Duration,
    anonymous: Option<Consumer>,
    credentials: Vec<JwtCredential>,
    cache_capacity: usize,
    clock: Option<Clock>,
}

impl fmt::Debug for JwtAuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayerBuilder")
            .field("key_claim_name", &self.key_claim_name)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl JwtAuthLayerBuilder {
    /// The claim (payload first, then JOSE header) whose value selects the credential.
    pub fn key_claim_name(mut self, name: impl Into<String>) -> Self {
        self.key_claim_name = name.into();
        self
    }

    /// Registered claims that must be present, numeric and currently valid (default `[exp]`;
    /// replaces the default, so `[]` verifies none, as Kong's plugin does by default).
    pub fn claims_to_verify(mut self, claims: impl IntoIterator<Item = RegisteredClaim>) -> Self {
        self.claims_to_verify = claims.into_iter().collect();
        self
    }

    /// Refuses tokens whose `exp` is further than this in the future (or missing).
    pub fn maximum_expiration(mut self, max: Duration) -> Self {
        self.maximum_expiration = (!max.is_zero()).then_some(max);
        self
    }

    /// Accept only tokens whose `aud` (a string, or an array of strings) names one of these
    /// (RFC 8725 §3.9: a token minted for another service is not valid here). A missing or
    /// non-matching `aud` is refused (401). Empty (default): `aud` is not checked.
    pub fn audiences<S: Into<String>>(mut self, audiences: impl IntoIterator<Item = S>) -> Self {
        self.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Accept only tokens whose `iss` is one of these (a missing or other `iss` is refused,
    /// 401). Empty (default): `iss` is not checked beyond selecting the credential.
    pub fn issuers<S: Into<String>>(mut self, issuers: impl IntoIterator<Item = S>) -> Self {
        self.issuers = issuers.into_iter().map(Into::into).collect();
        self
    }

    /// Query parameters that may carry the token (removed before proxying).
    pub fn uri_param_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.uri_param_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Cookies that may carry the token.
    pub fn cookie_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.cookie_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Headers that may carry `Bearer <token>`.
    pub fn header_names(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.header_names = names.into_iter().collect();
        self
    }

    /// Whether `OPTIONS` requests are authenticated too (default `true`).
    pub fn run_on_preflight(mut self, run: bool) -> Self {
        self.run_on_preflight = run;
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (whole seconds).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The consumer applied (instead of a 401) when verification fails.
    pub fn anonymous(mut self, consumer: Consumer) -> Self {
        self.anonymous = Some(Consumer { anonymous: true, ..consumer });
        self
    }

    /// Adds a credential. A later credential with the same key replaces an earlier one.
    pub fn credential(mut self, credential: JwtCredential) -> Self {
        self.credentials.push(credential);
        self
    }

    /// Adds credentials.
    pub fn credentials(mut self, credentials: impl IntoIterator<Item = JwtCredential>) -> Self {
        self.credentials.extend(credentials);
        self
    }

    /// Keeps up to `capacity` verified tokens (by SHA-256 digest) so a repeated token skips the
    /// signature check; `exp`/`nbf`/`maximum_expiration` are re-checked on every use and entries
    /// verified with JWKS keys are dropped when the key set changes. 0 (default) disables it.
    pub fn verified_token_cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The wall clock used for `exp`/`nbf` and JWKS refresh intervals (tests inject one).
    pub fn clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(now));
        self
    }

    /// The layer.
    pub fn build(self) -> JwtAuthLayer {
        let credentials =
            self.credentials.into_iter().map(|c| (Box::<str>::from(&*c.key), Arc::new(c))).collect();
        let messages = token::Messages::new(&self.key_claim_name);
        let shared = Shared {
            key_claim_name: self.key_claim_name.into(),
            verify_exp: self.claims_to_verify.contains(&RegisteredClaim::Exp),
            verify_nbf: self.claims_to_verify.contains(&RegisteredClaim::Nbf),
            maximum_expiration: self.maximum_expiration.map(|d| d.as_secs()),
            audiences: allow_list(self.audiences),
            issuers: allow_list(self.issuers),
            uri_param_names: self.uri_param_names.into_iter().map(Into::into).collect(),
            cookie_names: self.cookie_names.into_iter().map(Into::into).collect(),
            header_names: self.header_names.into(),
            run_on_preflight: self.run_on_preflight,
            leeway: self.leeway.as_secs_f64(),
            anonymous: self.anonymous,
            credentials,
            cache: (self.cache_capacity > 0).then(|| VerifiedCache::new(self.cache_capacity)),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemTime::now)),
            messages,
        };
        JwtAuthLayer { shared: Arc::new(shared) }
    }
}

fn allow_list(values: Vec<String>) -> Option<Box<[Box<str>]>> {
    (!values.is_empty()).then(|| values.into_iter().map(Into::into).collect())
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuth { inner, shared: self.shared.clone() }
    }
}

/// The service made by [`JwtAuthLayer`].
#[derive(Clone)]
pub struct JwtAuth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for JwtAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S>
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        if !shared.run_on_preflight && req.method() == Method::OPTIONS {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        // Anonymous convention: a higher-priority auth layer already identified the caller.
        if shared.anonymous.is_some() && req.extensions().get::<Consumer>().is_some_and(|c| !c.anonymous) {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        match token::check(shared, &req) {
            Check::Verified(consumer) => admit(&mut self.inner, shared, req, consumer),
            Check::Rejected(rejection) => refuse(&mut self.inner, shared, req, rejection),
            Check::Pending(pending) => {
                // The ready service goes into the future; this one gets a fresh clone.
                let fresh = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, fresh);
                let shared = self.shared.clone();
                ResponseFuture::boxed(Box::pin(async move {
                    match pending.resolve(&shared).await {
                        Ok(consumer) => admit(&mut inner, &shared, req, consumer).await,
                        Err(rejection) => refuse(&mut inner, &shared, req, rejection).await,
                    }
                }))
            }
        }
    }
}

fn admit<S, ReqBody, ResBody>(
    inner: &mut S,
    shared: &Shared,
    mut req: Request<ReqBody>,
    consumer: Consumer,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    token::strip_query_tokens(shared, &mut req);
    consumer.apply_to(&mut req);
    ResponseFuture::inner(inner.call(req), Some(consumer))
}

fn refuse<S, ReqBody, ResBody>(
    inner: &mut S,
    shared: &Shared,
    req: Request<ReqBody>,
    rejection: Rejection,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    match &shared.anonymous {
        Some(anonymous) => admit(inner, shared, req, anonymous.clone()),
        None => ResponseFuture::rejected(AuthFailure::respond("jwt", rejection, &req)),
    }
}

pub use crate::auth::future::ResponseFuture;

#[cfg(test)]
mod tests;
