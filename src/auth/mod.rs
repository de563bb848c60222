//! Authentication and coarse authorization at the edge: each layer verifies a credential, then
//! hands the verified identity on as a [`Consumer`](crate::consumer::Consumer) (request and
//! response extensions, `X-Consumer-*` headers upstream). Kong's `key-auth`, `acl` and
//! `oauth2-introspection` plugins are the reference for their behaviour and messages.

pub mod acl;
pub mod api_key;
mod future;
#[cfg(feature = "proxy")]
pub mod introspection;
#[cfg(feature = "jwt")]
pub mod jwt;

use bytes::Bytes;
use http::{Request, Response};

use crate::error::Rejection;

/// Which auth plugin refused a request, and why, in the rejection's response extensions (for
/// metrics and tracing). Both are fixed words, never anything from the request: `plugin` is the
/// Kong plugin name (`jwt`, `key-auth`, `oauth2-introspection`, `acl`), `reason` the rejection's
/// `error` code (`unauthorized`, `invalid_token`, `invalid_credentials`, `forbidden`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthFailure {
    /// The plugin that refused.
    pub plugin: &'static str,
    /// The rejection's `error` code.
    pub reason: &'static str,
}

impl AuthFailure {
    /// Renders `rejection` for `req`, marked as refused by `plugin`.
    pub(crate) fn respond<B: From<Bytes>, R>(
        plugin: &'static str,
        rejection: Rejection,
        req: &Request<R>,
    ) -> Response<B> {
        let reason = rejection.code();
        let mut response = rejection.into_response_for(req);
        response.extensions_mut().insert(AuthFailure { plugin, reason });
        response
    }
}
