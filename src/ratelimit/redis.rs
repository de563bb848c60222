//! The Redis store (feature `redis`): one atomic Lua script per algorithm, Redis `TIME` as the
//! clock, so every gateway replica sharing the Redis shares one limit.
//!
//! Each script reads the key's state, decides with the same arithmetic as the sans-IO cores,
//! updates the state only when the request is admitted, sets a TTL on the key, and returns the
//! state it decided on; the numbers in the headers (remaining, reset, retry-after) are then
//! computed by the Rust core from that state, so both stores answer alike. Scripts run by
//! `EVALSHA`, reloaded on `NOSCRIPT` (after a restart or `SCRIPT FLUSH`). Keys are
//! `{<prefix>:<key>}`: the hash tag keeps every key of one client in one Redis Cluster slot.
//!
//! A Redis that is down or stalled costs at most one `timeout` per `cooldown`: after a failure
//! the breaker answers "unavailable" at once until the cooldown has passed, then lets exactly
//! one request probe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::core::{Micros, SECOND};
use super::leaky_bucket::LeakyBucketState;
use super::policy::{KeyState, Policy, Verdict};
use super::store::{Decided, Store, StoreError};
use super::token_bucket::TokenBucketState;
use super::window::WindowState;

const WINDOWS_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local ok = true
local states = {}
for i = 1, n do
  local period = tonumber(ARGV[2 + (i - 1) * 3 + 1])
  local limit = tonumber(ARGV[2 + (i - 1) * 3 + 2])
  local sliding = ARGV[2 + (i - 1) * 3 + 3] == '1'
  local v = redis.call('HMGET', KEYS[1], i .. 'i', i .. 'c', i .. 'p')
  local idx = tonumber(v[1]) or 0
  local cur = tonumber(v[2]) or 0
  local prev = tonumber(v[3]) or 0
  local index = math.floor(now / period)
  if index ~= idx then
    if index == idx + 1 then prev = cur else prev = 0 end
    cur = 0
    idx = index
  end
  local elapsed = now - index * period
  local w = 0
  if sliding and prev > 0 then w = math.ceil(prev * (period - elapsed) / period) end
  if w + cur >= limit then ok = false end
  states[i] = {idx, cur, prev}
end
local out = {ok and 1 or 0, now}
for i = 1, n do
  local s = states[i]
  local cur = s[2]
  if ok then cur = cur + 1 end
  redis.call('HSET', KEYS[1], i .. 'i', s[1], i .. 'c', cur, i .. 'p', s[3])
  out[#out + 1] = s[1]
  out[#out + 1] = s[2]
  out[#out + 1] = s[3]
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return out
"#;

/// Token bucket (GCRA) and leaky bucket share one shape: a single timestamp per key.
const TIMESTAMP_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local leaky = ARGV[3] == '1'
local old = tonumber(redis.call('GET', KEYS[1])) or 0
local at = math.max(old, now)
local ok
if leaky then
  ok = math.ceil((at - now) / interval) < capacity
else
  ok = at + interval - now <= capacity * interval
end
if ok then
  redis.call('SET', KEYS[1], at + interval, 'PX', math.ceil((at + interval - now) / 1000) + 1000)
elseif redis.call('PTTL', KEYS[1]) < 0 and old > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil((old - now) / 1000) + 1000)
end
return {ok and 1 or 0, now, old}
"#;

/// Stores rate-limit state in Redis.
pub struct RedisStore {
    client: redis::Client,
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Held while connecting, so a burst opens one connection, not one per request.
    connecting: tokio::sync::Mutex<()>,
    prefix: String,
    timeout: Duration,
    cooldown: Micros,
    /// Micros since the epoch until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    windows: redis::Script,
    timestamps: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("cooldown", &self.cooldown)
            .finish_non_exhaustive()
    }
}

/// A Redis URL that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis address: {0}")]
pub struct InvalidRedisUrl(String);

impl RedisStore {
    /// A store on `url` (`redis://[:password@]host:port/db`); nothing is connected until the
    /// first decision. Keys start with `prefix` (give each limiter its own).
    pub fn new(url: &str, prefix: impl Into<String>) -> Result<Self, InvalidRedisUrl> {
        let client = redis::Client::open(url).map_err(|e| InvalidRedisUrl(e.to_string()))?;
        Ok(Self {
            client,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            prefix: prefix.into(),
            timeout: Duration::from_millis(2000),
            cooldown: SECOND,
            open_until: AtomicU64::new(0),
            windows: redis::Script::new(WINDOWS_SCRIPT),
            timestamps: redis::Script::new(TIMESTAMP_SCRIPT),
        })
    }

    /// The longest a decision waits for Redis, connecting included (Kong's `redis_timeout`;
    /// default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long the breaker stays open after a failure (default 1 s).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown.as_micros() as Micros;
        self
    }

    fn now() -> Micros {
        use super::core::Clock;
        super::core::SystemClock.now()
    }

    /// Whether this request may talk to Redis: the breaker is closed, or it is this request's
    /// turn to probe.
    pub(super) fn admit(&self) -> bool {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return true;
        }
        let now = Self::now();
        // The first request after the cooldown claims the probe; the others still fail fast.
        now >= open_until
            && self
                .open_until
                .compare_exchange(open_until, now + self.cooldown, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Closes the breaker after a success.
    pub(super) fn close(&self) {
        self.open_until.store(0, Ordering::Release);
    }

    pub(super) fn trip(&self) {
        self.open_until.store(Self::now() + self.cooldown, Ordering::Release);
        // A stalled connection may hold requests forever: start afresh next time.
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(super) async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(connection) = self.connection.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.connection.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(connection);
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    /// The Redis key of limiter key `key`: `{<prefix>:<key>}`, one hash tag per client.
    pub(super) fn redis_key(&self, key: &str) -> String {
        format!("{{{}:{key}}}", self.prefix)
    }

    /// The per-command timeout.
    pub(super) fn command_timeout(&self) -> Duration {
        self.timeout
    }

    async fn run(&self, key: &str, policy: &Policy) -> Result<Verdict, StoreError> {
        let redis_key = self.redis_key(key);
        let ttl_ms = policy.ttl().div_ceil(1000).max(1000);
        let call = async {
            let mut connection = self.connection().await?;
            match policy {
                Policy::Windows(windows) => {
                    let mut invocation = self.windows.key(&redis_key);
                    invocation.arg(windows.len()).arg(ttl_ms);
                    for (_, limit) in windows {
                        invocation.arg(limit.period).arg(limit.limit).arg(u8::from(limit.sliding));
                    }
                    invocation.invoke_async::<Vec<i64>>(&mut connection).await
                }
                Policy::TokenBucket(bucket) => {
                    let mut invocation = self.timestamps.key(&redis_key);
                    invocation.arg(bucket.interval).arg(bucket.capacity).arg(0);
                    invocation.invoke_async::<Vec<i64>>(&mut connection).await
                }
                Policy::LeakyBucket(bucket) => {
                    let mut invocation = self.timestamps.key(&redis_key);
                    invocation.arg(bucket.interval).arg(bucket.capacity).arg(1);
                    invocation.invoke_async::<Vec<i64>>(&mut connection).await
                }
            }
        };
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => return Err(StoreError::Unavailable(format!("no answer within {:?}", self.timeout))),
            Ok(Err(error)) if is_unavailable(&error) => {
                return Err(StoreError::Unavailable(error.to_string()));
            }
            Ok(Err(error)) => return Err(StoreError::Script(error.to_string())),
            Ok(Ok(reply)) => reply,
        };
        verdict_from(policy, &reply).ok_or_else(|| StoreError::Script(format!("unexpected reply {reply:?}")))
    }
}

pub(super) fn is_unavailable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

/// Recomputes the decision with the Rust core from the state the script decided on.
fn verdict_from(policy: &Policy, reply: &[i64]) -> Option<Verdict> {
    let (&allowed, &now) = (reply.first()?, reply.get(1)?);
    let now = u64::try_from(now).ok()?;
    let mut state = match policy {
        Policy::Windows(windows) => {
            let mut states = [WindowState::default(); 6];
            for (i, state) in states.iter_mut().enumerate().take(windows.len()) {
                let base = 2 + 3 * i;
                *state = WindowState {
                    index: u64::try_from(*reply.get(base)?).ok()?,
                    current: u64::try_from(*reply.get(base + 1)?).ok()?,
                    previous: u64::try_from(*reply.get(base + 2)?).ok()?,
                };
            }
            KeyState::Windows(states)
        }
        Policy::TokenBucket(_) => {
            KeyState::TokenBucket(TokenBucketState { tat: u64::try_from(*reply.get(2)?).ok()? })
        }
        Policy::LeakyBucket(_) => {
            KeyState::LeakyBucket(LeakyBucketState { next_slot: u64::try_from(*reply.get(2)?).ok()? })
        }
    };
    let verdict = policy.decide(&mut state, now);
    // The script's answer is the one that was counted; the core, with the same arithmetic,
    // supplies the numbers. Lua's doubles could only disagree on limits near 2^53.
    if verdict.allowed() != (allowed == 1) {
        tracing::warn!(target: "portcullis::ratelimit", "Redis script and core disagree");
    }
    Some(verdict)
}

impl Store for Arc<RedisStore> {
    fn decide(&self, key: &str, policy: &Arc<Policy>) -> Decided {
        if !self.admit() {
            return Decided::Ready(Err(StoreError::Unavailable("breaker open".into())));
        }
        let this = self.clone();
        let key = key.to_owned();
        let policy = policy.clone();
        Decided::Pending(Box::pin(async move {
            let result = this.run(&key, &policy).await;
            match &result {
                Err(StoreError::Unavailable(_)) => this.trip(),
                _ => this.close(),
            }
            result
        }))
    }
}
