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

/// Windows: `ARGV = [n, ttl_ms, (period, limit, sliding) × n]`, window `i`'s state in hash
/// fields `<i>i` (window index), `<i>c` (current count), `<i>p` (previous count).
///
/// Kept lean because its run time is most of a decision's cost beyond the round trip (Lua's
/// number formatting was the largest part: field names are literals, never `i .. 'c'`): nothing
/// is written for a denied request (its rolled state is recomputed from the time anyway), an
/// admitted one in the same window is one `HINCRBY` per window, and the TTL is renewed only
/// when the longest window rolls (the key then matters for two of its periods; a new key always
/// rolls, so every key has a TTL).
const WINDOWS_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local n = tonumber(ARGV[1])
local key = KEYS[1]
-- Field names as literals: `i .. 'c'` would format a number (sprintf) on every call.
local FI = {'1i', '2i', '3i', '4i', '5i', '6i'}
local FC = {'1c', '2c', '3c', '4c', '5c', '6c'}
local FP = {'1p', '2p', '3p', '4p', '5p', '6p'}
local out = {1, now}
local rolled, renew, longest = {}, false, 0
for i = 1, n do
  local b = 3 * i
  local period, limit = tonumber(ARGV[b]), tonumber(ARGV[b + 1])
  local v = redis.call('HMGET', key, FI[i], FC[i], FP[i])
  local idx, cur, prev = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local index = math.floor(now / period)
  local roll = index ~= idx
  if roll then
    if index == idx + 1 then prev = cur else prev = 0 end
    cur = 0
    idx = index
  end
  rolled[i] = roll
  if period >= longest then longest = period; renew = roll end
  if prev > 0 and ARGV[b + 2] == '1' then
    if math.ceil(prev * (period - (now - index * period)) / period) + cur >= limit then out[1] = 0 end
  elseif cur >= limit then
    out[1] = 0
  end
  out[b], out[b + 1], out[b + 2] = idx, cur, prev
end
if out[1] == 1 then
  for i = 1, n do
    local b = 3 * i
    if rolled[i] then
      redis.call('HSET', key, FI[i], out[b], FC[i], '1', FP[i], out[b + 2])
    else
      redis.call('HINCRBY', key, FC[i], '1')
    end
  end
  if renew then redis.call('PEXPIRE', key, ARGV[2]) end
end
return out
"#;

/// The same for a single window (most limits), with the loop, tables and field lookups
/// unrolled: about a fifth less Redis time per decision.
const ONE_WINDOW_SCRIPT: &str = r#"local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local key = KEYS[1]
local period, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', key, '1i', '1c', '1p')
local idx, cur, prev = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
local index = math.floor(now / period)
local roll = index ~= idx
if roll then
  if index == idx + 1 then prev = cur else prev = 0 end
  cur = 0
  idx = index
end
local ok = 1
if prev > 0 and ARGV[5] == '1' then
  if math.ceil(prev * (period - (now - index * period)) / period) + cur >= limit then ok = 0 end
elseif cur >= limit then
  ok = 0
end
if ok == 1 then
  if roll then
    redis.call('HSET', key, '1i', idx, '1c', '1', '1p', prev)
    redis.call('PEXPIRE', key, ARGV[2])
  else
    redis.call('HINCRBY', key, '1c', '1')
  end
end
return {ok, now, idx, cur, prev}
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
    one_window: redis::Script,
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
            one_window: redis::Script::new(ONE_WINDOW_SCRIPT),
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

    /// Sends `PING` over the store's own connection (connecting first if needed), within the
    /// command timeout: a health check, and the round trip a decision is measured against.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let call = async { redis::cmd("PING").query_async::<()>(&mut self.connection().await?).await };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if !is_unavailable(&error) => Err(StoreError::Script(error.to_string())),
            Ok(Err(error)) => Err(StoreError::Unavailable(error.to_string())),
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    fn script_for(&self, policy: &Policy) -> &redis::Script {
        match policy {
            Policy::Windows(windows) if windows.len() == 1 => &self.one_window,
            Policy::Windows(_) => &self.windows,
            Policy::TokenBucket(_) | Policy::LeakyBucket(_) => &self.timestamps,
        }
    }

    /// `EVALSHA <script> 1 <key> <args>` for one decision: one `Cmd` (one buffer for every
    /// argument), not a `ScriptInvocation`'s vector per argument copied into a `Cmd` again.
    fn command(&self, key: &str, policy: &Policy) -> redis::Cmd {
        let mut cmd = redis::Cmd::with_capacity(16, 160);
        cmd.arg("EVALSHA").arg(self.script_for(policy).get_hash()).arg(1);
        // `{<prefix>:<key>}` written straight into the command buffer.
        cmd.arg(RedisKey(&self.prefix, key));
        match policy {
            Policy::Windows(windows) => {
                let ttl_ms = policy.ttl().div_ceil(1000).max(1000);
                cmd.arg(windows.len()).arg(ttl_ms);
                for (_, limit) in windows {
                    cmd.arg(limit.period).arg(limit.limit).arg(u8::from(limit.sliding));
                }
            }
            Policy::TokenBucket(bucket) => {
                cmd.arg(bucket.interval).arg(bucket.capacity).arg(0);
            }
            Policy::LeakyBucket(bucket) => {
                cmd.arg(bucket.interval).arg(bucket.capacity).arg(1);
            }
        }
        cmd
    }

    async fn run(&self, cmd: redis::Cmd, policy: &Policy) -> Result<Verdict, StoreError> {
        let script = self.script_for(policy);
        let call = async {
            let mut connection = self.connection().await?;
            match cmd.query_async::<Vec<i64>>(&mut connection).await {
                // After a restart or `SCRIPT FLUSH`: load it, ask again.
                Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
                    script.prepare_invoke().load_async(&mut connection).await?;
                    cmd.query_async::<Vec<i64>>(&mut connection).await
                }
                reply => reply,
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

/// A Redis key `{<prefix>:<key>}`, written into a command without an intermediate `String`.
struct RedisKey<'a>(&'a str, &'a str);

impl redis::ToRedisArgs for RedisKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(format_args!("{{{}:{}}}", self.0, self.1));
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
        // The command is built now, so the future owns no copy of the key.
        let cmd = self.command(key, policy);
        let (this, policy) = (self.clone(), policy.clone());
        Decided::Pending(Box::pin(async move {
            let result = this.run(cmd, &policy).await;
            match &result {
                Err(StoreError::Unavailable(_)) => this.trip(),
                _ => this.close(),
            }
            result
        }))
    }

    /// The last decision reached Redis (the store's breaker is closed).
    fn is_available(&self) -> bool {
        self.open_until.load(Ordering::Acquire) == 0
    }
}
