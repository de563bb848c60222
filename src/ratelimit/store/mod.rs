//! Where per-key state lives: the [`Store`] trait, and its implementations — the in-memory
//! [`MemoryStore`] (`memory`), Redis (`redis`) and the hybrid of both (`hybrid`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::policy::{Policy, Verdict};

#[cfg(feature = "redis")]
mod hybrid;
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use hybrid::{HybridStore, SyncReport};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{InvalidRedisUrl, RedisStore};

/// Why a store could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached in time (connection refused, timeout, open breaker).
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error (a script error, a key of the wrong type, a reply of an
    /// unexpected shape): counted apart, because retrying or failing open will not fix it.
    #[error("rate-limit store answered with an error: {0}")]
    Script(String),
}

/// A boxed decision in flight, for stores that go over the network.
pub type PendingVerdict = Pin<Box<dyn Future<Output = Result<Verdict, StoreError>> + Send>>;

/// A store's answer: at once (memory) or later (network).
// Returned by value and consumed at once: boxing `Ready` would cost the allocation it avoids.
#[allow(clippy::large_enum_variant)]
pub enum Decided {
    /// Decided synchronously; the layer answers without an extra allocation.
    Ready(Result<Verdict, StoreError>),
    /// Decided later.
    Pending(PendingVerdict),
}

impl fmt::Debug for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decided::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Decided::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Keeps per-key state for one rate limiter and decides requests under its [`Policy`].
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Decides one request for `key`, counting it only when admitted.
    fn decide(&self, key: &str, policy: &Arc<Policy>) -> Decided;

    /// Whether the store can decide right now, for health reports (`GET /status`): `false`
    /// while a networked store is known to be unreachable. In-memory stores always can.
    fn is_available(&self) -> bool {
        true
    }
}
