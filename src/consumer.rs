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

use http::{HeaderName, HeaderValue, Request};

static X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
static X_CONSUMER_USERNAME: HeaderName = HeaderName::from_static("x-consumer-username");
static X_CONSUMER_CUSTOM_ID: HeaderName = HeaderName::from_static("x-consumer-custom-id");
static X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
static X_CREDENTIAL_IDENTIFIER: HeaderName = HeaderName::from_static("x-credential-identifier");
static X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

impl Consumer {
    /// Marks `req` as made by this consumer: sets `X-Consumer-ID`, `X-Consumer-Username`,
    /// `X-Consumer-Custom-ID`, `X-Credential-Identifier` and, for the anonymous consumer,
    /// `X-Anonymous-Consumer: true` (each removed when this consumer has no value for it, so a
    /// previous layer's identity never leaks through), and stores the consumer in the request
    /// extensions. Only auth layers call this, after verifying a credential.
    pub fn apply_to<B>(&self, req: &mut Request<B>) {
        let headers = req.headers_mut();
        let mut set = |name: &HeaderName, value: Option<&str>| {
            match value.and_then(|v| HeaderValue::from_str(v).ok()) {
                Some(value) => headers.insert(name.clone(), value),
                None => headers.remove(name),
            };
        };
        set(&X_CONSUMER_ID, Some(&self.id));
        set(&X_CONSUMER_USERNAME, self.username.as_deref());
        set(&X_CONSUMER_CUSTOM_ID, self.custom_id.as_deref());
        set(&X_CREDENTIAL_IDENTIFIER, self.credential_id.as_deref());
        set(&X_ANONYMOUS_CONSUMER, self.anonymous.then_some("true"));
        req.extensions_mut().insert(self.clone());
    }

    /// Sets `X-Consumer-Groups` (comma-separated) from [`groups`](Self::groups); the ACL layer
    /// calls it once it has admitted the request.
    pub fn apply_groups_to<B>(&self, req: &mut Request<B>) {
        let joined = self.groups.iter().map(|g| &**g).collect::<Vec<_>>().join(", ");
        match HeaderValue::from_str(&joined) {
            Ok(value) if !joined.is_empty() => req.headers_mut().insert(X_CONSUMER_GROUPS.clone(), value),
            _ => req.headers_mut().remove(&X_CONSUMER_GROUPS),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_sets_verified_headers_and_clears_the_rest() {
        let mut req = Request::builder()
            .header("x-consumer-username", "stale")
            .header("x-anonymous-consumer", "true")
            .body(())
            .unwrap();
        let consumer = Consumer {
            id: "c-1".into(),
            custom_id: Some("1001".into()),
            credential_id: Some("alice-kid".into()),
            groups: vec!["admins".into(), "ops".into()].into(),
            ..Consumer::default()
        };
        consumer.apply_to(&mut req);
        consumer.apply_groups_to(&mut req);
        let h = req.headers();
        assert_eq!(h["x-consumer-id"], "c-1");
        assert_eq!(h["x-consumer-custom-id"], "1001");
        assert_eq!(h["x-credential-identifier"], "alice-kid");
        assert_eq!(h["x-consumer-groups"], "admins, ops");
        assert!(h.get("x-consumer-username").is_none());
        assert!(h.get("x-anonymous-consumer").is_none());
        assert_eq!(req.extensions().get::<Consumer>(), Some(&consumer));
    }
}
