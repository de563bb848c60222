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
/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::AuthFailure;

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
