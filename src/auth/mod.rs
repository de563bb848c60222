//! Authentication at the edge: layers that verify a credential and hand the verified
//! [`Consumer`](crate::consumer::Consumer) on (request extensions and the `X-Consumer-*` headers).

#[cfg(feature = "jwt")]
pub mod jwt;
