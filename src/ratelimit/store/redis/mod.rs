//! The Redis store (feature `redis`): every gateway replica sharing the Redis shares one limit.
//!
//! # Windows: plain commands, one round trip
//!
//! Sliding and fixed windows keep one string counter per client and window,
//! `{<prefix>:<key>}:<period µs>:<window index>` (the `{hash tag}` keeps every key of one client in
//! one Redis Cluster slot). A decision is one pipelined round trip (no `MULTI`, no script); per
//! window:
//!
//! - `SET cur 0 PX <ttl> NX` creates the counter with its TTL (two periods and a second, so a
//!   counter cannot expire while it is the current or the previous window; `INCR` keeps it),
//! - `INCR cur`: its reply `n` says `n − 1` requests were counted before this one,
//! - `GET prev` (sliding windows only): the previous window's count.
//!
//! The sans-IO core then decides on `{index, current: n − 1, previous}` exactly as the memory
//! store does, so remaining, reset and retry-after are the same. A denied request is taken back
//! before the answer: one pipelined `DECR` per window (after a `SET … NX` again, so a counter
//! that expired meanwhile keeps a TTL), awaited, so the next request sees the corrected count. **A denial costs two round trips**, an admission one. `INCR` replies are a
//! strict sequence, so concurrent requests never over-admit (1,000 at once against 100 admit
//! exactly 100, across gateways too); a request racing with denials not yet taken back may be
//! denied too (the error is on the safe side). A denial whose `DECR` fails is still answered as
//! a denial; its window then counts one request too many.
//!
//! Why no script: on Redis 7.0 a Lua script costs 5–7 µs of Redis CPU per call (every
//! `redis.call` about 1.3 µs), enough to keep a sequential decision above 1.3 × a `PING` and one
//! connection under 100k decisions/s; the three commands cost about 1.8 µs of Redis CPU, and a
//! decision stays near 1.2 × a `PING`. Most of what remains is the client's: each command in a
//! pipeline costs redis-rs about half the instructions of a whole `PING` round trip to encode
//! and parse, which is why the keys are written by hand and the replies read as they come.
//!
//! # Buckets: one script
//!
//! Token and leaky buckets keep one timestamp per key, updated by an atomic Lua script (Redis
//! `TIME` inside) run by `EVALSHA` and reloaded on `NOSCRIPT` (after a restart or
//! `SCRIPT FLUSH`). Its key is `{<prefix>:<key>}`.
//!
//! # The clock: Redis `TIME`, calibrated
//!
//! A window's index must be known before its `INCR`, so the store keeps an offset to Redis time:
//! it reads `TIME` when it opens a connection (decisions wait for it) and again, piggybacked on
//! one decision's pipeline, when that reading is older than ten seconds. The time at the middle
//! of the round trip is taken as Redis's, and between readings the store follows it on the
//! local monotonic clock (`Instant`), so a step of the local wall clock changes nothing and
//! every gateway sharing a Redis agrees on window boundaries within a round trip.
//!
//! # Failures
//!
//! A Redis that is down or stalled costs at most one `timeout` (the whole decision: connecting,
//! the `TIME` reading, the `DECR` of a denial) per `cooldown`: after a failure the breaker
//! answers "unavailable" at once until the cooldown has passed, then lets exactly one request
//! probe. An error reply (a key of another type, an unexpected reply) is
//! [`StoreError::Script`]: counted apart, and it leaves the breaker closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{Decided, Store, StoreError};
use crate::ratelimit::decision::{Micros, SECOND};
use crate::ratelimit::leaky_bucket::LeakyBucketState;
use crate::ratelimit::policy::{KeyState, Period, Policy, Verdict};
use crate::ratelimit::token_bucket::TokenBucketState;
use crate::ratelimit::window::{WindowLimit, WindowState};

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

/// How old a `TIME` reading may get before a decision takes a new one.
const RECALIBRATE_AFTER: Micros = 10 * SECOND;

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
    clock: RedisClock,
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
            clock: RedisClock::new(),
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

    /// The local wall clock: only for the breaker's cooldown, never for a limit.
    fn now() -> Micros {
        use crate::ratelimit::decision::Clock;
        crate::ratelimit::decision::SystemClock.now()
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

    /// Closes the breaker after a success (a load first: every decision calls this, and a
    /// store would take the cache line from the other cores every time).
    pub(super) fn close(&self) {
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    pub(super) fn trip(&self) {
        self.open_until.store(Self::now() + self.cooldown, Ordering::Release);
        // A stalled connection may hold requests forever: start afresh next time.
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The shared connection; a new one reads Redis `TIME` before anyone uses it, so no window
    /// decision is taken on a clock that was never calibrated.
    pub(super) async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cached = || self.connection.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(connection) = cached() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = cached() {
            return Ok(connection);
        }
        let mut connection = self.client.get_multiplexed_async_connection().await?;
        let sent = self.clock.local();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await?;
        self.clock.calibrate(sent, self.clock.local(), secs * SECOND + micros);
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    /// The keys of `key`'s window counters (the layout the hybrid store shares).
    pub(super) fn window_keys(&self, key: &str) -> WindowKeys {
        WindowKeys::new(&self.prefix, key)
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
            Ok(Err(error)) => Err(classify(error)),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> StoreError {
        StoreError::Unavailable(format!("no answer within {:?}", self.timeout))
    }

    // === windows ===

    /// The round trip of one window decision at `now` (see the module docs): `TIME` first when
    /// `time` (a recalibration), then per window `SET cur 0 PX ttl NX` (its reply is skipped),
    /// `INCR cur`, and `GET prev` for a sliding window. Keys are written straight into the
    /// command buffers, without an intermediate `String`.
    fn window_pipeline(
        &self,
        key: &str,
        windows: &[(Period, WindowLimit)],
        now: Micros,
        time: bool,
    ) -> redis::Pipeline {
        let mut pipe = redis::Pipeline::with_capacity(3 * windows.len() + usize::from(time));
        if time {
            pipe.cmd("TIME");
        }
        let mut keys = self.window_keys(key);
        for (_, limit) in windows {
            let index = now / limit.period;
            let current = keys.window(limit.period, index);
            // Not `.ignore()`d: its reply is skipped while reading, which costs less than the
            // pipeline's set of ignored replies.
            pipe.add_command(set_if_missing(current, window_ttl_ms(limit)));
            pipe.add_command(key_command("INCR", current));
            if limit.sliding {
                pipe.add_command(key_command("GET", keys.window(limit.period, index.wrapping_sub(1))));
            }
        }
        pipe
    }

    /// One window decision: the pipeline (built now if the clock was not calibrated when the
    /// request came), the core's verdict on the counts, and the `DECR`s of a denial.
    async fn decide_windows(&self, request: WindowRequest, policy: &Policy) -> Result<Verdict, StoreError> {
        let Policy::Windows(windows) = policy else {
            return Err(StoreError::Script("not a window policy".into()));
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sent = tokio::time::timeout_at(deadline, async {
            let mut connection = self.connection().await?;
            let (pipe, now, time) = match request {
                WindowRequest::Built { pipe, now, time } => (pipe, now, time),
                WindowRequest::Unbuilt(key) => {
                    // `connection()` calibrated the clock if it was not.
                    let now = self.clock.now().map_or_else(Self::now, |(now, _)| now);
                    (self.window_pipeline(&key, windows, now, false), now, false)
                }
            };
            // Only a `TIME` reading needs the round trip's times.
            let started = if time { self.clock.local() } else { 0 };
            // The replies as they come, without `Pipeline::query_async`'s copies into a result
            // value (a tenth of a decision's instructions); error replies are checked below.
            let replies = connection.send_packed_commands(&pipe, 0, pipe.len()).await?;
            if let Some(redis::Value::ServerError(error)) =
                replies.iter().find(|v| matches!(v, redis::Value::ServerError(_)))
            {
                return Err(redis::RedisError::from(error.clone()));
            }
            Ok::<_, redis::RedisError>((connection, pipe, now, time, started, replies))
        })
        .await;
        let (mut connection, pipe, now, time, started, replies) = match sent {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(error)) => return Err(classify(error)),
            Ok(Ok(sent)) => sent,
        };
        self.close();
        let mut replies = replies.iter();
        if time {
            let received = self.clock.local();
            let reading = replies.next().and_then(|v| redis::from_redis_value::<(u64, u64)>(v).ok());
            let Some((secs, micros)) = reading else {
                return Err(StoreError::Script("unexpected reply to TIME".into()));
            };
            self.clock.calibrate(started, received, secs * SECOND + micros);
        }
        let mut states = [WindowState::default(); 6];
        for ((_, limit), state) in windows.iter().zip(states.iter_mut()) {
            // `SET … NX`: `OK` or nil, either is fine.
            if replies.next().is_none() {
                return Err(StoreError::Script("missing reply to SET".into()));
            }
            let mut count = || match replies.next().map(redis::from_redis_value::<Option<i64>>) {
                Some(Ok(count)) => Ok(count.unwrap_or(0).max(0) as u64),
                other => Err(StoreError::Script(format!("unexpected reply {other:?}"))),
            };
            let incremented = count()?;
            let previous = if limit.sliding { count()? } else { 0 };
            *state =
                WindowState { index: now / limit.period, current: incremented.saturating_sub(1), previous };
        }
        let verdict = policy.decide(&mut KeyState::Windows(states), now);
        if !verdict.allowed() {
            // Take the request back from every window it was counted in, before answering, so
            // the next request sees the corrected count. The `INCR`s' key arguments are reused:
            // the future owns no copy of the key. `SET … NX` again: a counter that expired
            // meanwhile (a `DECR` delivered late by a stalled Redis) comes back with its TTL.
            let mut undo = redis::Pipeline::with_capacity(2 * windows.len());
            let increments = pipe.cmd_iter().filter(|cmd| first_arg(cmd) == Some(&b"INCR"[..]));
            for ((_, limit), incr) in windows.iter().zip(increments) {
                if let Some(redis::Arg::Simple(key)) = incr.args_iter().nth(1) {
                    undo.add_command(set_if_missing(key, window_ttl_ms(limit))).ignore();
                    undo.add_command(key_command("DECR", key)).ignore();
                }
            }
            let undone = tokio::time::timeout_at(deadline, undo.query_async::<()>(&mut connection)).await;
            let error = match undone {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(classify(error)),
                Err(_) => Some(self.timed_out()),
            };
            if let Some(error) = error {
                // Still a denial (Redis counted it over the limit); the window now counts one
                // request too many, on the safe side.
                tracing::warn!(target: "portcullis::ratelimit", %error, "a denied request could not be taken back");
                if matches!(error, StoreError::Unavailable(_)) {
                    self.trip();
                }
            }
        }
        Ok(verdict)
    }

    // === buckets ===

    /// `EVALSHA <script> 1 <key> <args>` for one bucket decision: one `Cmd` (one buffer for
    /// every argument), not a `ScriptInvocation`'s vector per argument copied into a `Cmd` again.
    fn bucket_command(&self, key: &str, policy: &Policy) -> redis::Cmd {
        let mut cmd = redis::Cmd::with_capacity(7, 120);
        cmd.arg("EVALSHA").arg(self.timestamps.get_hash()).arg(1);
        // `{<prefix>:<key>}` written straight into the command buffer.
        cmd.arg(RedisKey(&self.prefix, key));
        match policy {
            Policy::TokenBucket(bucket) => {
                cmd.arg(bucket.interval).arg(bucket.capacity).arg(0);
            }
            Policy::LeakyBucket(bucket) => {
                cmd.arg(bucket.interval).arg(bucket.capacity).arg(1);
            }
            Policy::Windows(_) => {}
        }
        cmd
    }

    async fn decide_bucket(&self, cmd: redis::Cmd, policy: &Policy) -> Result<Verdict, StoreError> {
        let call = async {
            let mut connection = self.connection().await?;
            match cmd.query_async::<Vec<i64>>(&mut connection).await {
                // After a restart or `SCRIPT FLUSH`: load it, ask again.
                Err(error) if error.kind() == redis::ErrorKind::NoScriptError => {
                    self.timestamps.prepare_invoke().load_async(&mut connection).await?;
                    cmd.query_async::<Vec<i64>>(&mut connection).await
                }
                reply => reply,
            }
        };
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(error)) => return Err(classify(error)),
            Ok(Ok(reply)) => reply,
        };
        self.close();
        bucket_verdict(policy, &reply)
            .ok_or_else(|| StoreError::Script(format!("unexpected reply {reply:?}")))
    }

    /// Trips the breaker when `result` says Redis is unreachable, closes it when Redis answered
    /// with an error (a success closed it already, before a denial's `DECR` could trip it).
    fn watch<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(StoreError::Unavailable(_)) => self.trip(),
            Err(StoreError::Script(_)) => self.close(),
            Ok(_) => {}
        }
        result
    }
}

/// A window decision as it leaves [`Store::decide`].
enum WindowRequest {
    /// The clock was calibrated: the round trip is ready (with `TIME` first when `time`).
    Built { pipe: redis::Pipeline, now: Micros, time: bool },
    /// It was not (the store's first decisions): the key, for after the connection's `TIME`.
    Unbuilt(String),
}

/// Redis `TIME` followed on the local monotonic clock (see the module docs).
struct RedisClock {
    origin: Instant,
    /// Redis micros at `origin`, from the last reading; 0 before the first.
    at_origin: AtomicU64,
    /// When the last reading was taken, in local micros since `origin`.
    read_at: AtomicU64,
}

impl RedisClock {
    fn new() -> Self {
        Self { origin: Instant::now(), at_origin: AtomicU64::new(0), read_at: AtomicU64::new(0) }
    }

    /// Local micros since `origin` (monotonic).
    fn local(&self) -> Micros {
        self.origin.elapsed().as_micros() as Micros
    }

    /// Redis time now, once a reading exists, and whether the caller should take a new reading
    /// (see [`claim_reading`](Self::claim_reading)).
    fn now(&self) -> Option<(Micros, bool)> {
        match self.at_origin.load(Ordering::Acquire) {
            0 => None,
            at_origin => {
                let local = self.local();
                Some((at_origin + local, self.claim_reading(local)))
            }
        }
    }

    /// Records Redis time `redis` read by a round trip between local `sent` and `received`.
    fn calibrate(&self, sent: Micros, received: Micros, redis: Micros) {
        let midpoint = sent + received.saturating_sub(sent) / 2;
        self.at_origin.store(redis.saturating_sub(midpoint).max(1), Ordering::Release);
        self.read_at.store(midpoint, Ordering::Release);
    }

    /// Whether the caller should take a new reading: the last is stale and no other caller
    /// claimed it. Claiming moves the reading's date to now, so one decision in ten seconds
    /// reads `TIME`; if that one fails, the old reading serves ten more seconds (and a failure
    /// reconnects, which reads `TIME` anyway).
    fn claim_reading(&self, local: Micros) -> bool {
        let read_at = self.read_at.load(Ordering::Acquire);
        local.saturating_sub(read_at) >= RECALIBRATE_AFTER
            && self.read_at.compare_exchange(read_at, local, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// A counter's TTL: two periods (it is read as the previous window during the next one) and a
/// second (so it cannot expire while its window is current, whatever the clocks say).
pub(super) fn window_ttl_ms(limit: &WindowLimit) -> u64 {
    (2 * limit.period + SECOND).div_ceil(1000)
}

/// `SET <key> 0 PX <ttl_ms> NX`.
fn set_if_missing(key: impl redis::ToRedisArgs, ttl_ms: u64) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(6, 96);
    cmd.arg("SET").arg(key).arg(0).arg("PX").arg(ttl_ms).arg("NX");
    cmd
}

/// `<name> <key>`.
fn key_command(name: &str, key: impl redis::ToRedisArgs) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(2, 80);
    cmd.arg(name).arg(key);
    cmd
}

fn first_arg(cmd: &redis::Cmd) -> Option<&[u8]> {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => Some(name),
        _ => None,
    }
}

/// A Redis key `{<prefix>:<key>}`, written into a command without an intermediate `String`.
struct RedisKey<'a>(&'a str, &'a str);

impl redis::ToRedisArgs for RedisKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(format_args!("{{{}:{}}}", self.0, self.1));
    }
}

/// The keys of one client's window counters, `{<prefix>:<key>}:<period>:<index>`, assembled
/// by hand in one buffer: written through `fmt`, a decision's keys cost more instructions than
/// the rest of building its commands.
pub(super) struct WindowKeys {
    buf: Vec<u8>,
    /// The length of `{<prefix>:<key>}`.
    tag: usize,
    /// The period written after it, and the length of `{<prefix>:<key>}:<period>:`.
    period: Option<(Micros, usize)>,
}

impl WindowKeys {
    fn new(prefix: &str, key: &str) -> Self {
        let mut buf = Vec::with_capacity(prefix.len() + key.len() + 48);
        buf.push(b'{');
        buf.extend_from_slice(prefix.as_bytes());
        buf.push(b':');
        buf.extend_from_slice(key.as_bytes());
        buf.push(b'}');
        Self { tag: buf.len(), buf, period: None }
    }

    /// The key of the counter of window `index` of `period`.
    pub(super) fn window(&mut self, period: Micros, index: u64) -> &[u8] {
        match self.period {
            // The current and previous window of one period share everything but the index.
            Some((written, len)) if written == period => self.buf.truncate(len),
            _ => {
                self.buf.truncate(self.tag);
                self.buf.push(b':');
                push_decimal(&mut self.buf, period);
                self.buf.push(b':');
                self.period = Some((period, self.buf.len()));
            }
        }
        push_decimal(&mut self.buf, index);
        &self.buf
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

pub(super) fn is_unavailable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

/// Unreachable (trips the breaker) or an error reply (counted apart).
pub(super) fn classify(error: redis::RedisError) -> StoreError {
    if is_unavailable(&error) {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Script(error.to_string())
    }
}

/// Recomputes a bucket decision with the Rust core from the state the script decided on.
fn bucket_verdict(policy: &Policy, reply: &[i64]) -> Option<Verdict> {
    let (&allowed, &now, &old) = (reply.first()?, reply.get(1)?, reply.get(2)?);
    let (now, old) = (u64::try_from(now).ok()?, u64::try_from(old).ok()?);
    let mut state = match policy {
        Policy::TokenBucket(_) => KeyState::TokenBucket(TokenBucketState { tat: old }),
        Policy::LeakyBucket(_) => KeyState::LeakyBucket(LeakyBucketState { next_slot: old }),
        Policy::Windows(_) => return None,
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
        let (this, policy) = (self.clone(), policy.clone());
        if let Policy::Windows(windows) = &*policy {
            // With a calibrated clock the round trip is built now, so the future owns no copy of
            // the key; the store's first decisions wait for the connection's `TIME`.
            let request = match self.clock.now() {
                Some((now, time)) => {
                    WindowRequest::Built { pipe: self.window_pipeline(key, windows, now, time), now, time }
                }
                None => WindowRequest::Unbuilt(key.to_owned()),
            };
            return Decided::Pending(Box::pin(async move {
                this.watch(this.decide_windows(request, &policy).await)
            }));
        }
        // The command is built now, so the future owns no copy of the key.
        let cmd = self.bucket_command(key, &policy);
        Decided::Pending(Box::pin(async move { this.watch(this.decide_bucket(cmd, &policy).await) }))
    }

    /// The last decision reached Redis (the store's breaker is closed).
    fn is_available(&self) -> bool {
        self.open_until.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests;
