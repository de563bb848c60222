//! The authenticated [`Consumer`], placed in request extensions by whichever auth layer succeeds.
//!
//! Only auth layers write it; rate limiting (`limit_by`), transform templates and the access log
//! read it. Auth layers also copy it into response extensions so outer layers see who it was.

use std::sync::Arc;

/// A verified caller identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's id (`X-Consumer-ID`).
    pub id: Arc<str>,
    /// `X-Consumer-Username`.
    pub username: Option<Arc<str>>,
    /// `X-Consumer-Custom-ID`.
    pub custom_id: Option<Arc<str>>,
    /// The credential that authenticated the request (`X-Credential-Identifier`).
    pub credential_id: Option<Arc<str>>,
    /// ACL groups (`X-Consumer-Groups`).
    pub groups: Arc<[Arc<str>]>,
    /// Whether this is the configured anonymous consumer (`X-Anonymous-Consumer: true`).
    pub anonymous: bool,
}
