//! [`Gateway`]: a config file turned into a running gateway. TODO(lead): from_config.

pub mod server;

pub use server::{ServerSettings, serve};
