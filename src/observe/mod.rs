//! What the gateway sees: request IDs and the JSON access log.

pub mod access_log;
pub mod request_id;
