//! The access-log analyzer: the report operators know from the seed's `analyze_gateway_logs.py`,
//! with the same numbers, in constant memory per route.
//!
//! It reads the JSON lines [`AccessLogLayer`](crate::observe::access_log::AccessLogLayer) writes
//! and reports:
//! - the top 10 rate-limited consumers (`consumer_id`, else `client_ip`),
//! - 401s by client IP, flagged `*** INVESTIGATE` above 100,
//! - upstream latency p50/p95/p99 per route (routes with at least 10 samples),
//! - the gateway's own overhead (`gateway_latency_ms - upstream_latency_ms`) p50/p95/p99/mean,
//!
//! and, beyond the script, minutes whose 401 or 429 count stands far above the median minute.
//!
//! **Same numbers as Python.** Quantiles follow `statistics.quantiles(data, n=100)` (the
//! default `exclusive` method) exactly: every cut point is interpolated, as Python does, between
//! the two order statistics it needs, and those are the very doubles Python's sorted list holds
//! at those ranks. They are found from a count per distinct value ([`Samples`]) rather than from
//! the list of all values — an exact multiset, not an estimate (an HDR histogram rounds values
//! and could differ from the script at the first decimal, where a value sits on a rounding
//! boundary). The mean is summed with Neumaier compensation (Python's `statistics.mean` sums
//! exactly).
//!
//! **What is stored, and why memory stays flat.** Memory follows the number of *distinct* keys
//! and values in the log, never the number of lines:
//! - per route, each distinct upstream latency and its count (12 bytes). The access log writes
//!   latencies at microsecond resolution, so these are bounded by the latency range;
//! - each distinct gateway overhead and its count. The overhead is `gateway − upstream`
//!   computed in doubles, as Python computes it, and it is *not* a fresh value per line: both
//!   inputs are short decimals, so the result is the exact decimal difference (an integer
//!   number of microseconds, bounded by the overhead range) plus a rounding error that can only
//!   take a few values per pair of binades. A generated 5-million-line log has 551 decimal
//!   differences and 5,589 distinct overhead doubles (about 70 KB);
//! - each client IP with a 401 and each rate-limited consumer, with its count — the top 10 is
//!   exact only if every key is counted. Keys are packed (about 30 bytes each, see `Counter`).
//!
//! So a log repeating the same population of clients and latency range takes the same memory
//! at any length; memory grows only while the log keeps showing new IPs or new latencies.
//!
//! Lines that are not JSON objects are counted as malformed and skipped, never a crash.
//!
//! ```
//! use portcullis::analyze::Analyzer;
//!
//! let mut analyzer = Analyzer::default();
//! for i in 0..12 {
//!     let line = format!(
//!         r#"{{"status":200,"client_ip":"10.0.0.1","route_name":"orders","upstream_latency_ms":{i}.0,"gateway_latency_ms":{i}.5}}"#
//!     );
//!     analyzer.feed(line.as_bytes());
//! }
//! analyzer.feed(b"not json");
//! let report = analyzer.report();
//! assert_eq!(report.parsed, 12);
//! assert_eq!(report.malformed, 1);
//! assert_eq!(report.routes[0].route, "orders");
//! assert!(report.to_text().contains(" orders: p50=5.5ms"));
//! ```

mod counter;
mod html;
mod samples;
mod scan;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use counter::Counter;
pub use samples::Samples;

/// Which lines count: `--since` / `--until` on the line's `timestamp`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// Lines before this are skipped.
    pub since: Option<SystemTime>,
    /// Lines at or after this are skipped.
    pub until: Option<SystemTime>,
}

/// Streams access-log lines and builds a [`Report`].
#[derive(Debug, Default)]
pub struct Analyzer {
    window: Window,
    parsed: u64,
    malformed: u64,
    skipped: u64,
    rate_limited: Counter,
    auth_failures: Counter,
    upstream: BTreeMap<String, Samples>,
    overhead: Samples,
    /// Minute (Unix seconds / 60) → (401s, 429s).
    minutes: BTreeMap<i64, (u64, u64)>,
}

/// A key field as Python's `dict.get` sees it.
enum Key<'a> {
    /// The key is not in the line.
    Absent,
    /// `null`: Python's `None`.
    Null,
    /// A string.
    Str(std::borrow::Cow<'a, str>),
    /// Any other value, as Python's `str()` would print it.
    Other(String),
}

impl Key<'_> {
    /// The dict key Python would use (`default` when absent, `None` for null).
    fn label(&self, default: &'static str) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Absent => default.into(),
            Self::Null => "None".into(),
            Self::Str(s) => s.as_ref().into(),
            Self::Other(s) => s.as_str().into(),
        }
    }
}

/// The fields of one line the report reads.
struct Entry<'a> {
    timestamp: Option<std::borrow::Cow<'a, str>>,
    /// A numeric status (`status == 429` in Python is true for 429 and 429.0 only).
    status: Option<f64>,
    consumer_id: Key<'a>,
    client_ip: Key<'a>,
    route_name: Key<'a>,
    /// Python's `float(x)` of a non-null value.
    upstream: Option<f64>,
    gateway: Option<f64>,
}

/// Python's `float()` of a JSON value's text: numbers, numeric strings, booleans.
fn float_of(text: &str) -> Option<f64> {
    short_decimal(text).or_else(|| text.trim().parse().ok())
}

/// `[-]digits[.digits]` with at most 15 digits, as the access log writes latencies: the
/// digits as an integer divided by a power of ten. Both are exact doubles (below 2^53 and at
/// most 10^22), and IEEE division rounds correctly, so this is the double nearest the decimal,
/// exactly what Python's `float()` and a full parser give. Anything else: `None`.
fn short_decimal(text: &str) -> Option<f64> {
    const POW10: [f64; 16] =
        [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    let (negative, digits) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        bytes => (false, bytes),
    };
    let (mut mantissa, mut count, mut fraction, mut dot) = (0u64, 0usize, 0usize, false);
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
                fraction += usize::from(dot);
            }
            b'.' if !dot && count > 0 => dot = true,
            _ => return None,
        }
        if count > 15 {
            return None;
        }
    }
    if count == 0 || (dot && fraction == 0) {
        return None;
    }
    let x = mantissa as f64 / POW10[fraction];
    Some(if negative { -x } else { x })
}

impl<'a> Entry<'a> {
    fn from_fields(f: &scan::Fields<'a>) -> Self {
        use scan::Field;
        let key = |field: &Field<'a>| match *field {
            Field::Absent => Key::Absent,
            Field::Null => Key::Null,
            Field::Str(s) => Key::Str(s.into()),
            Field::Num(n) => Key::Other(n.to_owned()),
            // Escaped strings never reach here (the slow path takes those lines).
            Field::Escaped | Field::Other => Key::Other("<value>".to_owned()),
        };
        let float = |field: &Field<'a>| match *field {
            Field::Num(n) | Field::Str(n) => float_of(n),
            _ => None,
        };
        Self {
            timestamp: match f.timestamp {
                Field::Str(t) => Some(t.into()),
                _ => None,
            },
            status: match f.status {
                Field::Num(n) => short_decimal(n).or_else(|| n.parse().ok()),
                _ => None,
            },
            consumer_id: key(&f.consumer_id),
            client_ip: key(&f.client_ip),
            route_name: key(&f.route_name),
            upstream: float(&f.upstream_latency_ms),
            gateway: float(&f.gateway_latency_ms),
        }
    }

    fn from_object(object: &'a serde_json::Map<String, serde_json::Value>) -> Self {
        use serde_json::Value;
        let key = |name: &str| match object.get(name) {
            None => Key::Absent,
            Some(Value::Null) => Key::Null,
            Some(Value::String(s)) => Key::Str(s.as_str().into()),
            Some(Value::Bool(b)) => Key::Other(if *b { "True" } else { "False" }.to_owned()),
            Some(other) => Key::Other(other.to_string()),
        };
        let float = |name: &str| match object.get(name)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => float_of(s),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        };
        Self {
            timestamp: object.get("timestamp").and_then(Value::as_str).map(Into::into),
            status: object.get("status").and_then(|s| if s.is_number() { s.as_f64() } else { None }),
            consumer_id: key("consumer_id"),
            client_ip: key("client_ip"),
            route_name: key("route_name"),
            upstream: float("upstream_latency_ms"),
            gateway: float("gateway_latency_ms"),
        }
    }
}

impl Analyzer {
    /// An analyzer that only counts lines inside `window`.
    pub fn with_window(window: Window) -> Self {
        Self { window, ..Self::default() }
    }

    /// Reads one line (with or without its newline).
    pub fn feed(&mut self, line: &[u8]) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        match scan::scan(line) {
            Ok(fields) => self.record(Entry::from_fields(&fields)),
            Err(scan::Miss::Invalid) => self.malformed += 1,
            // Escapes in a kept field, duplicate keys: let serde_json decode the line.
            Err(scan::Miss::Unsure) => {
                match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line) {
                    Ok(object) => self.record(Entry::from_object(&object)),
                    Err(_) => self.malformed += 1,
                }
            }
        }
    }

    fn record(&mut self, entry: Entry<'_>) {
        let limited = entry.status == Some(429.0);
        let unauthorized = entry.status == Some(401.0);
        let windowed = self.window.since.is_some() || self.window.until.is_some();
        // Only a window and the per-minute counts read the time: most lines skip the parse.
        let at = if windowed || limited || unauthorized {
            entry.timestamp.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        } else {
            None
        };
        if windowed {
            let inside = at.is_some_and(|at| {
                self.window.since.is_none_or(|since| at >= since)
                    && self.window.until.is_none_or(|until| at < until)
            });
            if !inside {
                self.skipped += 1;
                return;
            }
        }
        self.parsed += 1;
        let client_ip = entry.client_ip.label("unknown");
        if limited {
            // Python: e.get("consumer_id", e.get("client_ip", "unknown"))
            match entry.consumer_id {
                Key::Absent => self.rate_limited.add(&client_ip),
                ref present => self.rate_limited.add(&present.label("unknown")),
            }
        }
        if unauthorized {
            self.auth_failures.add(&client_ip);
        }
        if limited || unauthorized {
            if let Some(since_epoch) = at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
                let slot = self.minutes.entry((since_epoch.as_secs() / 60) as i64).or_default();
                if unauthorized {
                    slot.0 += 1;
                } else {
                    slot.1 += 1;
                }
            }
        }
        if let Some(ms) = entry.upstream {
            let route = entry.route_name.label("unknown");
            if route != "unknown" {
                match self.upstream.get_mut(route.as_ref()) {
                    Some(samples) => samples.push(ms),
                    None => self.upstream.entry(route.into_owned()).or_default().push(ms),
                }
            }
        }
        if let (Some(up), Some(total)) = (entry.upstream, entry.gateway) {
            let overhead = total - up;
            if overhead >= 0.0 {
                self.overhead.push(overhead);
            }
        }
    }

    /// Reads every line of `reader`.
    pub fn feed_reader(&mut self, reader: impl std::io::Read) -> std::io::Result<()> {
        // Lines are fed straight from a large buffer; only a line cut by the buffer's end is
        // moved (to the front) before the next read.
        const CHUNK: usize = 1 << 20;
        let mut reader = reader;
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                // A line longer than the buffer: make room for it.
                buf.resize(buf.len() * 2, 0);
            }
            let read = match reader.read(&mut buf[filled..]) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if read == 0 {
                self.feed(&buf[..filled]);
                return Ok(());
            }
            let end = filled + read;
            let mut start = 0;
            // Only the new bytes can hold the next newline.
            let mut search = filled;
            while let Some(at) = memchr::memchr(b'\n', &buf[search..end]) {
                let newline = search + at;
                self.feed(&buf[start..newline]);
                start = newline + 1;
                search = start;
            }
            buf.copy_within(start..end, 0);
            filled = end - start;
        }
    }

    /// The report so far.
    pub fn report(&self) -> Report {
        let routes = self
            .upstream
            .iter()
            .filter(|(_, samples)| samples.len() >= 10)
            .filter_map(|(route, samples)| {
                let q = samples.quantiles_100()?;
                Some(RouteLatency {
                    route: route.clone(),
                    p50: q[49],
                    p95: q[94],
                    p99: q[98],
                    n: samples.len(),
                    histogram: samples.histogram(20),
                })
            })
            .collect();
        let overhead = self.overhead.quantiles_100().map(|q| Overhead {
            p50: q[49],
            p95: q[94],
            p99: q[98],
            mean: self.overhead.mean().unwrap_or(0.0),
            n: self.overhead.len(),
        });
        Report {
            parsed: self.parsed,
            malformed: self.malformed,
            outside_window: self.skipped,
            top_rate_limited: self.rate_limited.top(10),
            auth_failures: self
                .auth_failures
                .top(10)
                .into_iter()
                .map(|(ip, count)| AuthFailures { investigate: count > 100, ip, count })
                .collect(),
            routes,
            overhead,
            spikes: spikes(&self.minutes),
            timeline: self.minutes.iter().map(|(m, (a, r))| (*m, *a, *r)).collect(),
        }
    }
}

/// 401s by one client IP.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuthFailures {
    /// The client IP (`unknown` when the line had none).
    pub ip: String,
    /// How many 401s.
    pub count: u64,
    /// More than 100: a credential-stuffing suspect.
    pub investigate: bool,
}

/// Upstream latency of one route.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouteLatency {
    /// The route name.
    pub route: String,
    /// Median, in milliseconds.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Samples.
    pub n: u64,
    /// `(upper bound ms, count)` in 20 equal-width bins, for the HTML page.
    pub histogram: Vec<(f64, u64)>,
}

/// The gateway's own share of request latency.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Overhead {
    /// Median, in milliseconds.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Samples.
    pub n: u64,
}

/// A minute with far more 401s or 429s than the median minute.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spike {
    /// The minute, RFC 3339 (`2026-11-28T06:41:00Z`).
    pub minute: String,
    /// `401` or `429`.
    pub status: u16,
    /// Responses with that status in the minute.
    pub count: u64,
    /// The median count over every minute of the log's span.
    pub median: f64,
}

/// The analysis of a log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Lines read as JSON objects (inside the window).
    pub parsed: u64,
    /// Lines that were not JSON objects.
    pub malformed: u64,
    /// Lines outside `--since`/`--until`.
    pub outside_window: u64,
    /// Top 10 rate-limited consumers (consumer id, else client IP) with their 429 count.
    pub top_rate_limited: Vec<(String, u64)>,
    /// Top 10 client IPs by 401 count.
    pub auth_failures: Vec<AuthFailures>,
    /// Routes with at least 10 upstream samples, by name.
    pub routes: Vec<RouteLatency>,
    /// Gateway overhead, when at least two samples exist.
    pub overhead: Option<Overhead>,
    /// Minutes far above the median minute.
    pub spikes: Vec<Spike>,
    /// `(minute, 401s, 429s)` for every minute that had either.
    pub timeline: Vec<(i64, u64, u64)>,
}

/// A minute is a spike when it has at least 10 of a status and more than 5 × the median minute
/// (the median over every minute from the first to the last, quiet minutes included).
fn spikes(minutes: &BTreeMap<i64, (u64, u64)>) -> Vec<Spike> {
    let (Some(first), Some(last)) = (minutes.keys().next(), minutes.keys().next_back()) else {
        return Vec::new();
    };
    let span = usize::try_from(last - first + 1).unwrap_or(usize::MAX).min(10_000_000);
    let mut out = Vec::new();
    for (status, pick) in [(401u16, 0usize), (429, 1)] {
        let value = |counts: &(u64, u64)| if pick == 0 { counts.0 } else { counts.1 };
        let mut counts: Vec<u64> = minutes.values().map(value).collect();
        counts.resize(span.max(counts.len()), 0);
        counts.sort_unstable();
        let median = if counts.len() % 2 == 1 {
            counts[counts.len() / 2] as f64
        } else {
            (counts[counts.len() / 2 - 1] + counts[counts.len() / 2]) as f64 / 2.0
        };
        for (minute, counts) in minutes {
            let count = value(counts);
            if count >= 10 && count as f64 > 5.0 * median {
                let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(*minute).unwrap_or(0) * 60);
                out.push(Spike {
                    minute: humantime::format_rfc3339_seconds(at).to_string(),
                    status,
                    count,
                    median,
                });
            }
        }
    }
    out
}

impl Report {
    /// The seed script's text report, line for line (plus a spike section when there are spikes).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Parsed {} log entries\n", self.parsed);
        let _ = writeln!(out, "=== Top Rate-Limited Consumers ===");
        for (consumer, count) in &self.top_rate_limited {
            let _ = writeln!(out, " {consumer}: {count} requests blocked");
        }
        let _ = writeln!(out, "\n=== Auth Failure Spikes by IP (top 10) ===");
        for failures in &self.auth_failures {
            let flag = if failures.investigate { " *** INVESTIGATE" } else { "" };
            let _ = writeln!(out, " {}: {} 401s{flag}", failures.ip, failures.count);
        }
        let _ = writeln!(out, "\n=== Upstream Latency p50/p95/p99 by Route ===");
        for r in &self.routes {
            let _ = writeln!(
                out,
                " {}: p50={:.1}ms p95={:.1}ms p99={:.1}ms (n={})",
                r.route, r.p50, r.p95, r.p99, r.n
            );
        }
        if let Some(o) = &self.overhead {
            let _ = writeln!(out, "\n=== Gateway Processing Overhead ===");
            let _ = writeln!(
                out,
                " p50={:.1}ms p95={:.1}ms p99={:.1}ms mean={:.1}ms",
                o.p50, o.p95, o.p99, o.mean
            );
        }
        if !self.spikes.is_empty() {
            let _ = writeln!(out, "\n=== 401/429 Spikes by Minute ===");
            for s in &self.spikes {
                let _ = writeln!(
                    out,
                    " {}: {} x {} (median minute {:.1}) *** SPIKE",
                    s.minute, s.count, s.status, s.median
                );
            }
        }
        if self.malformed > 0 {
            let _ = writeln!(out, "\n({} malformed lines skipped)", self.malformed);
        }
        out
    }

    /// The report as JSON (it round-trips through `serde_json::from_str::<Report>`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// One self-contained HTML page: a latency histogram per route and a 401/429 timeline, as
    /// inline SVG.
    pub fn to_html(&self) -> String {
        html::render(self)
    }
}
