//! # portcullis
//!
//! An API gateway's cross-cutting concerns as composable [tower] layers.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod body;
pub mod client_ip;
#[cfg(feature = "config")]
pub mod config;
pub mod consumer;
pub mod error;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod observe;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod router;
pub mod sanitize;
#[cfg(feature = "proxy")]
pub mod timeout;

pub use body::Body;
pub use error::Rejection;
