//! The declarative YAML config: Kong decK's shape, plus a `gateway:` block.
//!
//! [`Config::from_file`] and [`Config::from_yaml`] parse and validate a file into typed structs;
//! building the tower services from them is the gateway's job. Unknown keys are errors, and
//! every error is one line naming the file, the path inside it and what was expected:
//!
//! ```text
//! gateway.yaml: services[0].routes[1].paths[0]: invalid path `v1`, expected a path starting with `/` or a `~` regex (line 9, column 7)
//! ```
//!
//! Durations accept `250ms`, `5s`, `1m`, and Kong's integer milliseconds (`connect_timeout: 60000`).
//!
//! ```
//! use std::time::Duration;
//! use portcullis::config::{Config, RoutePath};
//!
//! let yaml = r#"
//! _format_version: "3.0"
//! gateway:
//!   listen: 127.0.0.1:8000
//!   trusted_proxies: [10.0.0.0/8]
//! services:
//! - name: orders-api
//!   url: http://127.0.0.1:9000
//!   connect_timeout: 1s
//!   timeout: 5s
//!   routes:
//!   - name: orders-v1
//!     paths: [/v1/orders]
//!     methods: [GET, POST]
//!     strip_path: false
//! "#;
//! let config = Config::from_yaml(yaml, "gateway.yaml")?;
//! let service = &config.services[0];
//! assert_eq!(service.upstream().authority, "127.0.0.1:9000");
//! assert_eq!(service.timeout, Some(Duration::from_secs(5)));
//! assert_eq!(service.routes[0].paths, [RoutePath::Prefix("/v1/orders".into())]);
//!
//! let err = Config::from_yaml("_format_version: \"3.0\"\nservicez: []\n", "gateway.yaml").unwrap_err();
//! assert!(err.to_string().starts_with("gateway.yaml: unknown field `servicez`"));
//! # Ok::<(), portcullis::config::ConfigError>(())
//! ```
//!
//! Plugins not implemented yet ([`PLUGINS`]) are rejected with `... is not supported yet` rather
//! than silently ignored.

mod build;
mod circuit_breakers;
mod duration;
mod error;
mod hosts;
mod instruments;
mod plugin;
mod plugins;
mod retry_policy;
mod schema;
mod validate;

use std::path::Path;

pub use build::RouteService;
pub use circuit_breakers::CircuitBreakers;
pub use duration::{InvalidDuration, parse_duration};
pub use error::{ConfigError, ConfigErrorKind};
pub use hosts::{DEFAULT_TARGET_PORT, DEFAULT_TARGET_WEIGHT, LbPolicy, OutlierDetectionConfig, Target};
#[cfg(feature = "ratelimit")]
pub use instruments::RateLimiterInstrument;
pub use instruments::{Instruments, RetryInstrument, ServiceInstrument};
pub use plugins::{CONSUMER_SCOPED, PLUGINS, PluginSpec};
pub use retry_policy::{
    DEFAULT_MAX_RETRIES, RetryBackOff, RetryBudgetConfig, RetryHostPredicate, RetryPolicy,
};
pub use schema::{
    AccessLog, Config, Consumer, FORMAT_VERSIONS, Gateway, Plugin, Protocol, Route, RoutePath, Service, Tls,
    Upstream,
};
pub use schema::{AdminToken, MIN_ADMIN_TOKEN_LEN};

// === impl Config ===

impl Config {
    /// Reads, parses and validates the file at `path`; errors name it as written.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::read(&origin, err))?;
        Self::from_yaml(&text, &origin)
    }

    /// Parses and validates YAML text; `origin` names it in errors (a file name, or `<string>`).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_with(text, origin, PLUGINS)
    }

    fn from_yaml_with(text: &str, origin: &str, registry: &[PluginSpec]) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Self =
            serde_path_to_error::deserialize(deserializer).map_err(|err| ConfigError::parse(origin, err))?;
        config.validate(registry).map_err(|invalid| ConfigError::from_invalid(origin, invalid))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
