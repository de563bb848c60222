//! A credential's JWKS: keys by `kid`, refreshed from the one configured URL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;

/// How often an unknown `kid` may trigger a JWKS fetch, unless configured.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest refresh interval: below it, a flood of unknown `kid`s would turn every request
/// into a JWKS fetch.
pub const MIN_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a fetched key set is trusted without asking the endpoint again, unless configured:
/// a key the endpoint no longer serves stops being accepted after this.
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// One fetch may take this long; then the cached keys keep being served.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// `last_attempt` before the first fetch.
const NEVER: u64 = u64::MAX;

type Keys = Arc<HashMap<String, Arc<DecodingKey>>>;

pub(super) struct JwksCache {
    url: http::Uri,
    refresh_interval: u64,
    /// Seconds a fetched set is trusted; never below `refresh_interval`.
    max_age: u64,
    client: Client<HttpConnector, Empty<Bytes>>,
    keys: RwLock<Keys>,
    /// Unix seconds of the last fetch attempt (successful or not).
    last_attempt: AtomicU64,
    /// Unix seconds of the last successful fetch.
    fetched_at: AtomicU64,
    /// Bumped whenever the key set changes, so verified-token cache entries go stale.
    generation: AtomicU64,
    /// One fetch at a time: concurrent unknown `kid`s wait for it instead of fetching too.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    /// `refresh_interval` is raised to [`MIN_JWKS_REFRESH_INTERVAL`], `max_age` to the interval
    /// (a stale set is re-fetched by the next request the interval allows).
    pub(super) fn new(url: http::Uri, refresh_interval: Duration, max_age: Duration) -> Self {
        let refresh_interval = refresh_interval.max(MIN_JWKS_REFRESH_INTERVAL).as_secs();
        Self {
            url,
            refresh_interval,
            max_age: max_age.as_secs().max(refresh_interval),
            client: Client::builder(TokioExecutor::new()).build_http(),
            keys: RwLock::new(Arc::default()),
            last_attempt: AtomicU64::new(NEVER),
            fetched_at: AtomicU64::new(NEVER),
            generation: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(super) fn get(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    /// The URL, and the interval and max age in force.
    pub(super) fn settings(&self) -> (&http::Uri, Duration, Duration) {
        (&self.url, Duration::from_secs(self.refresh_interval), Duration::from_secs(self.max_age))
    }

    /// Whether a fetch is allowed now (never fetched, or the interval has passed).
    pub(super) fn may_refresh(&self, now: u64) -> bool {
        let last = self.last_attempt.load(Ordering::Acquire);
        last == NEVER || now.saturating_sub(last) >= self.refresh_interval
    }

    /// Whether the set is older than `max_age` and may be re-fetched now: the request that
    /// notices waits for the fetch, so a key the endpoint dropped is not trusted past it.
    pub(super) fn due(&self, now: u64) -> bool {
        let fetched = self.fetched_at.load(Ordering::Acquire);
        fetched != NEVER && now.saturating_sub(fetched) >= self.max_age && self.may_refresh(now)
    }

    /// Refreshes the set if still allowed (another request may just have done it), then looks
    /// `kid` up. A failed fetch keeps the cached keys (until the endpoint answers again, an outage
    /// is not a revocation).
    pub(super) async fn refresh_and_get(&self, kid: &str, now: u64) -> Option<Arc<DecodingKey>> {
        let _fetching = self.fetching.lock().await;
        if !self.due(now) {
            if let Some(key) = self.get(kid) {
                return Some(key);
            }
        }
        if !self.may_refresh(now) {
            return self.get(kid);
        }
        self.last_attempt.store(now, Ordering::Release);
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok(keys)) => {
                if let Ok(mut current) = self.keys.write() {
                    *current = Arc::new(keys);
                }
                self.fetched_at.store(now, Ordering::Release);
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Ok(Err(error)) => {
                tracing::warn!(target: "portcullis::auth::jwt", url = %self.url, %error, "JWKS fetch failed; serving cached keys");
            }
            Err(_) => {
                tracing::warn!(target: "portcullis::auth::jwt", url = %self.url, "JWKS fetch timed out; serving cached keys");
            }
        }
        self.get(kid)
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let request = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        // Keys without a `kid`, or of a kind that does not parse, are skipped, not fatal.
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, Arc::new(key)))
            })
            .collect();
        Ok(keys)
    }
}
