//! The JSON access log.
//!
//! TODO(access log helper).
