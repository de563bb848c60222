//! The typed config tree, one struct per YAML mapping. Every mapping denies unknown keys.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::circuit_breakers::CircuitBreakers;
use super::duration;
use super::hosts::{LbPolicy, OutlierDetectionConfig, Target};
use super::retry_policy::RetryPolicy;
use crate::client_ip::TrustedProxies;

/// The `_format_version` values accepted (decK's, which portcullis files share).
pub const FORMAT_VERSIONS: &[&str] = &["1.1", "2.1", "3.0"];

/// A whole config file. Load it with [`Config::from_file`] or [`Config::from_yaml`], which also
/// validate it; deserializing a `Config` directly skips validation and leaves
/// [`Service::upstream`] unresolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `_format_version`: one of [`FORMAT_VERSIONS`].
    #[serde(rename = "_format_version", deserialize_with = "format_version")]
    pub format_version: String,
    /// `gateway:` — listeners, limits and server timeouts. All defaults when absent.
    #[serde(default)]
    pub gateway: Gateway,
    /// `services:` — upstreams and their routes.
    #[serde(default)]
    pub services: Vec<Service>,
    /// `consumers:` — the API's clients and their credentials.
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    /// `plugins:` — global plugins (optionally scoped by `service`/`route`/`consumer`).
    #[serde(default)]
    pub plugins: Vec<Plugin>,
}

// === gateway ===

/// `gateway:` — the server itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Where the proxy listens. Default `127.0.0.1:8000`.
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/status` are served; none when unset.
    #[serde(default, deserialize_with = "optional_socket_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin listener requires on `/status` (and `/metrics` unless
    /// `admin_metrics_public`); required when `admin_listen` is not a loopback address.
    #[serde(default)]
    pub admin_token: Option<AdminToken>,
    /// Serve `/metrics` without the `admin_token` (for scrapers that cannot send one). Default
    /// false.
    #[serde(default)]
    pub admin_metrics_public: bool,
    /// TLS termination on `listen`; plain HTTP when unset.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Proxies whose `X-Forwarded-For` is believed: CIDRs or bare addresses. Default: none.
    #[serde(default, deserialize_with = "trusted_proxies")]
    pub trusted_proxies: TrustedProxies,
    /// Headers dropped from a peer outside `trusted_proxies`. Default
    /// [`DEFAULT_STRIP_FROM_UNTRUSTED`](crate::http_rules::DEFAULT_STRIP_FROM_UNTRUSTED).
    #[serde(default = "default_strip_from_untrusted", deserialize_with = "header_names")]
    pub strip_from_untrusted: Vec<http::HeaderName>,
    /// Where access-log lines go. Default `stdout`.
    #[serde(default)]
    pub access_log: AccessLog,
    /// Largest request body accepted (413 above it). Default 10 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest JSON body a body rule reads (transformer JSON rules, key-auth's `key_in_body`).
    /// Default 1 MiB.
    #[serde(default = "default_max_json_body_bytes")]
    pub max_json_body_bytes: u64,
    /// Deepest JSON nesting a body rule accepts (1..=128). Default 64.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Largest request head accepted (431 above it). Default 32 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// How long a client may take to send the request head. Default 10 s.
    #[serde(default = "default_header_read_timeout", deserialize_with = "duration::deserialize")]
    pub header_read_timeout: Duration,
    /// The longest wait for the next chunk of a request body (408 past it). Default 30 s.
    #[serde(default = "default_body_read_timeout", deserialize_with = "duration::deserialize")]
    pub body_read_timeout: Duration,
    /// Client connections open at once; one more is accepted and closed at once. Default 10,000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long an idle keep-alive connection is kept. Default 60 s.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// How long graceful shutdown waits for in-flight requests. Default 30 s.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration::deserialize")]
    pub shutdown_timeout: Duration,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: None,
            admin_token: None,
            admin_metrics_public: false,
            tls: None,
            trusted_proxies: TrustedProxies::none(),
            strip_from_untrusted: default_strip_from_untrusted(),
            access_log: AccessLog::default(),
            max_body_bytes: default_max_body_bytes(),
            max_json_body_bytes: default_max_json_body_bytes(),
            max_json_depth: default_max_json_depth(),
            max_header_bytes: default_max_header_bytes(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}
fn default_strip_from_untrusted() -> Vec<http::HeaderName> {
    crate::http_rules::DEFAULT_STRIP_FROM_UNTRUSTED.map(http::HeaderName::from_static).to_vec()
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_json_body_bytes() -> u64 {
    crate::body::DEFAULT_MAX_JSON_BODY_BYTES
}
fn default_max_json_depth() -> usize {
    crate::body::DEFAULT_MAX_JSON_DEPTH
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Shortest `gateway.admin_token` accepted: a guessable token on a reachable listener is no lock.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// `gateway.admin_token`: a secret, never printed (`Debug` shows `<redacted>`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token as written.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for AdminToken {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl Gateway {
    /// Why the admin settings are unsafe, as `(path, message)`: a non-loopback `admin_listen`
    /// without `admin_token` (anyone who reaches it reads `/status` and `/metrics`), or a token
    /// too short to resist guessing.
    pub(crate) fn admin_problem(&self) -> Option<(&'static str, String)> {
        if let Some(token) = &self.admin_token {
            let token = token.expose();
            if token.len() < MIN_ADMIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Some((
                    "gateway.admin_token",
                    format!("expected at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters (no spaces)"),
                ));
            }
        }
        match self.admin_listen {
            Some(addr) if !addr.ip().is_loopback() && self.admin_token.is_none() => Some((
                "gateway.admin_listen",
                format!(
                    "`{addr}` is not a loopback address; set `gateway.admin_token` to expose the admin listener, or listen on 127.0.0.1 / [::1]"
                ),
            )),
            _ => None,
        }
    }
}

/// `gateway.tls` — certificate chain and private key, PEM. Relative paths are taken from the
/// process's working directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// `gateway.access_log`: `stdout`, `off` (or `false`), or a file path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// One JSON line per request on standard output.
    #[default]
    Stdout,
    /// No access log.
    Off,
    /// Appended to this file.
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AccessLogVisitor;
        impl Visitor<'_> for AccessLogVisitor {
            type Value = AccessLog;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`stdout`, `off` or a file path")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<AccessLog, E> {
                if on { Err(E::invalid_value(de::Unexpected::Bool(on), &self)) } else { Ok(AccessLog::Off) }
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<AccessLog, E> {
                match text {
                    "stdout" => Ok(AccessLog::Stdout),
                    "off" => Ok(AccessLog::Off),
                    "" => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                    path => Ok(AccessLog::File(PathBuf::from(path))),
                }
            }
        }
        deserializer.deserialize_any(AccessLogVisitor)
    }
}

// === services ===

/// `services[]` — one upstream and the routes that lead to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique service name; in logs as `service_name`.
    pub name: String,
    /// `http://host:port/path`, as written. Either this or `host` (with `protocol`, `port`,
    /// `path`); read the resolved result from [`Service::upstream`].
    #[serde(default)]
    pub url: Option<String>,
    /// Kong's split form: `http` (default). `https` is not supported yet.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Kong's split form: the upstream host.
    #[serde(default)]
    pub host: Option<String>,
    /// Kong's split form: the upstream port (default 80).
    #[serde(default)]
    pub port: Option<u16>,
    /// Kong's split form: the path prefix sent upstream (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Time allowed to open a connection to the upstream. Default 60 s, as in Kong.
    #[serde(default = "default_kong_timeout", deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    /// The route timeout: the whole request, every retry and backoff included (504 when it
    /// expires). A route's own `timeout` overrides it. None: no overall limit.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub timeout: Option<Duration>,
    /// Kong's `read_timeout`: the longest wait for the upstream's response head once the
    /// request is sent, and between two reads of its body (504 `upstream_timeout` before the
    /// head; the response is cut off after it). Default 60 s.
    #[serde(default = "default_kong_timeout", deserialize_with = "duration::deserialize")]
    pub read_timeout: Duration,
    /// Kong's `write_timeout`: the longest the upstream may leave a piece of the request body
    /// unaccepted before the next one is sent (504 `upstream_timeout`). Default 60 s.
    #[serde(default = "default_kong_timeout", deserialize_with = "duration::deserialize")]
    pub write_timeout: Duration,
    /// Kong's `retries` (accepted, as written; `retry_policy` is what portcullis will act on).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Speak HTTP/2 with prior knowledge to the upstream. Default false (HTTP/1.1).
    #[serde(default)]
    pub http2: bool,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The routes leading to this service.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Plugins applied to every route of this service.
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    /// Several upstream hosts (Kong's upstream targets): `"host:port"` or
    /// `{target: "host:port", weight: 100}`. `url` (or `protocol`/`path`) then gives the scheme
    /// and base path; its host only names the set, as a Kong service's host names its upstream.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Envoy's load-balancing policy: `ROUND_ROBIN` (default) or `LEAST_REQUEST`.
    #[serde(default)]
    pub lb_policy: Option<LbPolicy>,
    /// Kong's name for the same: `round-robin` or `least-connections`.
    #[serde(default)]
    pub algorithm: Option<LbPolicy>,
    /// Below this percentage of hosts in service, route across all hosts (Envoy's default 50;
    /// 0: never, answer 503 `no_healthy_upstream` instead).
    #[serde(default, deserialize_with = "optional_percent")]
    pub healthy_panic_threshold: Option<u8>,
    /// Envoy's retry policy for every route of this service (a route's own replaces it).
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Envoy's circuit-breaker thresholds and the classic breaker ([`CircuitBreakers`]).
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Envoy's passive health checking: ejects hosts that fail.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// Resolved from `url` or the split fields at load.
    #[serde(skip)]
    pub(crate) upstream: Upstream,
}

impl Service {
    /// Where requests for this service go, resolved from `url` or `protocol`/`host`/`port`/`path`
    /// and validated at load. With [`targets`](Self::targets), requests go to the targets: the
    /// scheme and path still come from here, and the authority is the name written in `url` or
    /// `host` (or the first target when neither is given).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

fn default_kong_timeout() -> Duration {
    Duration::from_secs(60)
}

/// A service's upstream: `http://authority` plus a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Always `http` for now (`https` upstreams come with TLS).
    pub scheme: http::uri::Scheme,
    /// `host:port`, the port always explicit.
    pub authority: http::uri::Authority,
    /// The host as written (IPv6 in brackets).
    pub host: String,
    /// The port (80 unless given).
    pub port: u16,
    /// The path prefix sent upstream; `/` when none was given.
    pub path: String,
}

impl Default for Upstream {
    /// A placeholder (`http://127.0.0.1:80/`) until the loader resolves the real one.
    fn default() -> Self {
        Self {
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("127.0.0.1:80"),
            host: "127.0.0.1".to_owned(),
            port: 80,
            path: "/".to_owned(),
        }
    }
}

// === routes ===

/// `routes[]` — what requests lead to a service. Kong's matching fields; at least one of
/// `paths`, `methods`, `hosts`, `headers` must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route name, unique across the file when set; in logs as `route_name`.
    #[serde(default)]
    pub name: Option<String>,
    /// Path prefixes (`/v1/orders`) and `~` regexes (`~/v1/users/(?P<id>[^/]+)$`).
    #[serde(default)]
    pub paths: Vec<RoutePath>,
    /// Allowed methods (uppercase tokens); any when empty.
    #[serde(default, deserialize_with = "methods")]
    pub methods: Vec<http::Method>,
    /// `Host` values matched; any when empty. Kong's `*.example.com` wildcards are kept as written.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Header name → accepted values (any one of them). Names compare case-insensitively.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Accepted client protocols. Default both.
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// Remove the matched path prefix before proxying. Default true.
    #[serde(default = "default_true")]
    pub strip_path: bool,
    /// Send the client's `Host` upstream instead of the upstream's. Default false.
    #[serde(default)]
    pub preserve_host: bool,
    /// Orders regex routes: higher first. Default 0.
    #[serde(default)]
    pub regex_priority: i32,
    /// Match `paths` ignoring ASCII case (prefixes and regexes). Default false: Kong's paths are
    /// case-sensitive.
    #[serde(default)]
    pub case_insensitive_paths: bool,
    /// Overrides the service's `timeout` for this route.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub timeout: Option<Duration>,
    /// Envoy's retry policy for this route; replaces the service's whole.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Plugins applied to this route.
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Http, Protocol::Https]
}

/// A route's client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// One `paths[]` entry, validated at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePath {
    /// A plain path: a string-prefix match (`/v1/orders`).
    Prefix(String),
    /// A `~` path: a regex anchored at the start of the path; the pattern without the `~`.
    Regex(String),
}

impl RoutePath {
    /// Parses a `paths[]` entry: `~` starts a regex, anything else must start with `/`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(pattern) = text.strip_prefix('~') {
            match regex::Regex::new(pattern) {
                Ok(_) => Ok(Self::Regex(pattern.to_owned())),
                Err(err) => Err(format!(
                    "invalid regex path `{text}`: {}",
                    // The regex crate renders a multi-line diagram; the last line says what is wrong.
                    err.to_string()
                        .lines()
                        .rfind(|line| !line.trim().is_empty())
                        .map_or("", |line| line.trim().trim_start_matches("error: "))
                )),
            }
        } else if text.starts_with('/') {
            Ok(Self::Prefix(text.to_owned()))
        } else {
            Err(format!("invalid path `{text}`: expected a path starting with `/` or a `~` regex"))
        }
    }
}

impl fmt::Display for RoutePath {
    /// As written in the config (`/v1`, `~/v1/(?P<id>\d+)$`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(prefix) => f.write_str(prefix),
            Self::Regex(pattern) => write!(f, "~{pattern}"),
        }
    }
}

impl<'de> Deserialize<'de> for RoutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

// === consumers ===

/// `consumers[]` — a client of the API. Needs `username`, `custom_id`, or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// Kong's consumer id (sent upstream as `X-Consumer-ID`); generated when unset.
    #[serde(default)]
    pub id: Option<String>,
    /// Unique username (`X-Consumer-Username`).
    #[serde(default)]
    pub username: Option<String>,
    /// Unique id from your own user store (`X-Consumer-Custom-ID`).
    #[serde(default)]
    pub custom_id: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// JWT credentials (later issue; kept as written).
    #[serde(default)]
    pub jwt_secrets: Option<serde_yaml_ng::Value>,
    /// API keys (later issue; kept as written).
    #[serde(default)]
    pub keyauth_credentials: Option<serde_yaml_ng::Value>,
    /// ACL groups (later issue; kept as written).
    #[serde(default)]
    pub acls: Option<serde_yaml_ng::Value>,
    /// This consumer's own plugin instances, e.g. its rate-limiting quota: for this consumer
    /// they replace the route's, service's or global instance of the same name (Kong's
    /// precedence). Each may name a `service` or `route` to apply there only. Only plugins Kong
    /// lets a consumer scope are accepted (not the auth plugins, which find the consumer).
    #[serde(default, deserialize_with = "nullable_list")]
    pub plugins: Vec<Plugin>,
}

// === plugins ===

/// `plugins[]` at any scope.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Kong's plugin name (`rate-limiting`); see [`PLUGINS`](super::PLUGINS).
    pub name: String,
    /// The plugin's own settings, checked by the plugin. Default: an empty mapping.
    #[serde(default = "empty_mapping")]
    pub config: serde_yaml_ng::Value,
    /// A disabled plugin is kept in the file but does not run. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Global plugins only: apply to this service (by name).
    #[serde(default)]
    pub service: Option<String>,
    /// Global plugins only: apply to this route (by name).
    #[serde(default)]
    pub route: Option<String>,
    /// Apply to this consumer only (by username, custom_id or id); allowed on global, service
    /// and route plugins.
    #[serde(default)]
    pub consumer: Option<String>,
}

/// A list that may also be written `~` (none).
fn nullable_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

fn empty_mapping() -> serde_yaml_ng::Value {
    serde_yaml_ng::Value::Mapping(serde_yaml_ng::Mapping::new())
}

// === field deserializers ===

fn format_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct VersionVisitor;
    impl Visitor<'_> for VersionVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "one of \"{}\"", FORMAT_VERSIONS.join("\", \""))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
            if FORMAT_VERSIONS.contains(&text) {
                Ok(text.to_owned())
            } else {
                Err(E::custom(format_args!(
                    "unsupported _format_version `{text}`, expected {}",
                    ExpectingOf(&self)
                )))
            }
        }
        // `_format_version: 3.0` unquoted is a YAML float.
        fn visit_f64<E: de::Error>(self, number: f64) -> Result<String, E> {
            self.visit_str(&format!("{number:?}"))
        }
        fn visit_u64<E: de::Error>(self, number: u64) -> Result<String, E> {
            self.visit_str(&number.to_string())
        }
    }
    deserializer.deserialize_any(VersionVisitor)
}

/// Renders a visitor's `expecting` text.
struct ExpectingOf<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> fmt::Display for ExpectingOf<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

struct SocketAddrVisitor;

impl Visitor<'_> for SocketAddrVisitor {
    type Value = SocketAddr;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an IP address and port like `127.0.0.1:8000` or `[::1]:8000`")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<SocketAddr, E> {
        SocketAddr::from_str(text.trim())
            .map_err(|_| E::custom(format_args!("invalid address `{text}`, expected {}", ExpectingOf(&self))))
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_any(SocketAddrVisitor)
}

fn optional_socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    struct Addr(#[serde(deserialize_with = "socket_addr")] SocketAddr);
    Ok(Option::<Addr>::deserialize(deserializer)?.map(|Addr(addr)| addr))
}

/// One `trusted_proxies[]` entry, validated on its own so the error names its index.
struct Cidr(String);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TrustedProxies::parse([&text]).map_err(|err| {
            de::Error::custom(format_args!("{err}, expected a CIDR like `10.0.0.0/8` or an IP address"))
        })?;
        Ok(Self(text))
    }
}

fn trusted_proxies<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TrustedProxies, D::Error> {
    let entries = Vec::<Cidr>::deserialize(deserializer)?;
    TrustedProxies::parse(entries.iter().map(|Cidr(text)| text)).map_err(de::Error::custom)
}

/// One header name, validated on its own so the error names its index.
struct HeaderNameEntry(http::HeaderName);

impl<'de> Deserialize<'de> for HeaderNameEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderName::from_bytes(text.as_bytes()).map(Self).map_err(|_| {
            de::Error::custom(format_args!(
                "invalid header name `{text}`, expected a name like `X-Original-URL`"
            ))
        })
    }
}

fn header_names<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<http::HeaderName>, D::Error> {
    Ok(Vec::<HeaderNameEntry>::deserialize(deserializer)?.into_iter().map(|HeaderNameEntry(n)| n).collect())
}

/// One `methods[]` entry.
struct MethodName(http::Method);

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let valid =
            !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
        match http::Method::from_bytes(text.as_bytes()) {
            Ok(method) if valid => Ok(Self(method)),
            _ => Err(de::Error::custom(format_args!(
                "invalid method `{text}`, expected an uppercase HTTP method like `GET` or `POST`"
            ))),
        }
    }
}

fn methods<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<http::Method>, D::Error> {
    Ok(Vec::<MethodName>::deserialize(deserializer)?.into_iter().map(|MethodName(m)| m).collect())
}

fn optional_percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    super::hosts::percent(deserializer).map(Some)
}
