//! Coarse authorization by consumer group (Kong's `acl`): an `allow` list or a `deny` list.
//!
//! [`AclLayer`] runs after an auth layer and reads the [`Consumer`] it attached (the anonymous
//! consumer counts, with its own groups). No consumer → 401 `Unauthorized`; a consumer outside
//! `allow` or inside `deny` → 403 `You cannot consume this service`; otherwise the request goes on
//! with `X-Consumer-Groups` (unless [`hide_groups_header`](AclLayer::hide_groups_header)).
//!
//! ```
//! use portcullis::auth::acl::AclLayer;
//! use portcullis::consumer::Consumer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(AclLayer::allow(["admins"]))
//!     .service_fn(|req: http::Request<()>| async move {
//!         let groups = req.headers()["x-consumer-groups"].to_str().unwrap().to_owned();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::from(groups)))
//!     });
//!
//! let admin = Consumer { id: "alice".into(), groups: vec!["ops".into(), "admins".into()].into(), ..Consumer::default() };
//! let mut req = http::Request::new(());
//! admin.apply_to(&mut req); // what an auth layer does
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.body(), "ops, admins");
//!
//! let res = svc.oneshot(http::Request::new(())).await.unwrap(); // nobody authenticated
//! assert_eq!(res.status(), 401);
//! # }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::consumer::Consumer;
use crate::error::Rejection;
use crate::ext::AuthFailure;
use crate::future::RejectOrInner;

static X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");

/// Admits consumers by group; see the [module docs](self). Cheap to clone.
#[derive(Debug, Clone)]
pub struct AclLayer {
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
struct Config {
    mode: Mode,
    groups: Vec<Arc<str>>,
    hide_groups_header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Allow,
    Deny,
}

impl AclLayer {
    /// Admits only consumers in at least one of `groups`.
    pub fn allow<I, G>(groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<Arc<str>>,
    {
        Self::new(Mode::Allow, groups)
    }

    /// Admits every consumer except those in one of `groups`.
    pub fn deny<I, G>(groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<Arc<str>>,
    {
        Self::new(Mode::Deny, groups)
    }

    fn new<I, G>(mode: Mode, groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<Arc<str>>,
    {
        let groups = groups.into_iter().map(Into::into).collect();
        Self { config: Arc::new(Config { mode, groups, hide_groups_header: false }) }
    }

    /// Do not send `X-Consumer-Groups` upstream (default false: send it).
    pub fn hide_groups_header(mut self, hide: bool) -> Self {
        Arc::make_mut(&mut self.config).hide_groups_header = hide;
        self
    }

    /// Whether `consumer` is admitted.
    pub fn admits(&self, consumer: &Consumer) -> bool {
        let member = consumer.groups.iter().any(|g| self.config.groups.contains(g));
        match self.config.mode {
            Mode::Allow => member,
            Mode::Deny => !member,
        }
    }
}

impl<S> Layer<S> for AclLayer {
    type Service = Acl<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Acl { inner, layer: self.clone() }
    }
}

/// The service made by [`AclLayer`].
#[derive(Debug, Clone)]
pub struct Acl<S> {
    inner: S,
    layer: AclLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Acl<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let rejection = match req.extensions().get::<Consumer>() {
            None => Some(Rejection::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")),
            Some(consumer) if !self.layer.admits(consumer) => {
                Some(Rejection::new(StatusCode::FORBIDDEN, "forbidden", "You cannot consume this service"))
            }
            Some(consumer) => {
                if self.layer.config.hide_groups_header {
                    req.headers_mut().remove(&X_CONSUMER_GROUPS);
                } else {
                    let consumer = consumer.clone();
                    consumer.apply_groups_to(&mut req);
                }
                None
            }
        };
        match rejection {
            Some(rejection) => {
                let response = AuthFailure::respond("acl", rejection, &req);
                ResponseFuture::rejected(response)
            }
            None => ResponseFuture::inner(self.inner.call(req)),
        }
    }
}

/// Response future of [`Acl`]: the 401/403 it decided, or the inner service's future.
pub type ResponseFuture<F, B> = RejectOrInner<F, Response<B>>;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    fn member(groups: &[&str]) -> Consumer {
        Consumer {
            id: "c".into(),
            groups: groups.iter().map(|g| Arc::<str>::from(*g)).collect::<Vec<_>>().into(),
            ..Consumer::default()
        }
    }

    async fn run(layer: AclLayer, consumer: Option<Consumer>) -> (StatusCode, Option<String>, String) {
        let svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<()>| async move {
            let groups = req.headers().get("x-consumer-groups").map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, Infallible>(Response::new(Bytes::from(groups.unwrap_or_else(|| "-".into()))))
        });
        let mut req = Request::builder().header("x-consumer-groups", "spoofed").body(()).unwrap();
        if let Some(consumer) = consumer {
            consumer.apply_to(&mut req);
        }
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status();
        let body = String::from_utf8(res.into_body().to_vec()).unwrap();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned));
        (status, message, body)
    }

    #[tokio::test]
    async fn allow_list() {
        let layer = AclLayer::allow(["admins", "ops"]);
        assert_eq!(run(layer.clone(), Some(member(&["dev", "ops"]))).await.2, "dev, ops");
        let (status, message, _) = run(layer.clone(), Some(member(&["dev"]))).await;
        assert_eq!(
            (status, message.as_deref()),
            (StatusCode::FORBIDDEN, Some("You cannot consume this service"))
        );
        let (status, _, _) = run(layer.clone(), Some(member(&[]))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, message, _) = run(layer, None).await;
        assert_eq!((status, message.as_deref()), (StatusCode::UNAUTHORIZED, Some("Unauthorized")));
    }

    #[tokio::test]
    async fn deny_list_and_hidden_header() {
        let layer = AclLayer::deny(["banned"]);
        assert_eq!(run(layer.clone(), Some(member(&["dev"]))).await.0, StatusCode::OK);
        // No groups: nothing to send, and the client's copy never survives.
        assert_eq!(run(layer.clone(), Some(member(&[]))).await.2, "-");
        assert_eq!(run(layer.clone(), Some(member(&["dev", "banned"]))).await.0, StatusCode::FORBIDDEN);
        let hidden = layer.hide_groups_header(true);
        assert_eq!(run(hidden, Some(member(&["dev"]))).await.2, "-");
    }

    #[tokio::test]
    async fn anonymous_consumer_is_judged_by_its_groups() {
        let anonymous = Consumer { anonymous: true, ..member(&["guests"]) };
        assert_eq!(run(AclLayer::allow(["guests"]), Some(anonymous.clone())).await.0, StatusCode::OK);
        assert_eq!(run(AclLayer::allow(["admins"]), Some(anonymous)).await.0, StatusCode::FORBIDDEN);
    }
}
