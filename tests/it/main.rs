//! Integration tests: real servers on loopback sockets. One binary (each file in `tests/` links
//! separately), one module per concern.

mod access_log;
mod analyze;
mod auth_keys;
mod breaker;
mod config;
mod edge_auth;
mod edge_headers;
mod edge_limits;
mod edge_paths;
mod edge_server;
mod floors;
mod hosts;
#[cfg(feature = "jwt")]
mod jwt;
mod metrics;
mod plugin_instances;
mod proxy;
mod quota;
mod ratelimit;
mod retry;
mod routing;
mod seed;
mod server;
mod support;
mod transform;
