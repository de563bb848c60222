//! Integration tests: real servers on loopback sockets. One binary (each file in `tests/` links
//! separately), one module per concern.

mod access_log;
mod config;
mod proxy;
mod ratelimit;
mod routing;
mod server;
mod support;
