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
