//! What the gateway sees: request IDs and the JSON access log.

pub mod access_log;
#[cfg(feature = "analyze")]
pub mod analyze;
pub mod request_id;
