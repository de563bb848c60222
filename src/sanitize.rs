//! The sanitizing front layer. TODO(lead).

/// The request path after normalization (dot segments resolved, unreserved escapes decoded),
/// echoed in response extensions so the access log reports what was routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(pub String);
