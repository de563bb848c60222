//! Consumer-scoped plugin instances: once the auth plugins have identified the caller, a
//! consumer with its own instance of a plugin (its own rate-limiting quota) goes through that
//! instance, and every other caller through the generic one (or none).
//!
//! Every instance is built once, at load, around the same inner stack; a request only picks one
//! by its [`Consumer`]'s id (a hash lookup), so an instance's state (its counters) lives in its
//! own `Arc` for as long as the route does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::body::Body;
use crate::config::RouteService;
use crate::consumer::Consumer;

/// Sends each request through its consumer's own instance of one plugin, else through the
/// generic one.
#[derive(Clone)]
pub(crate) struct ConsumerScoped {
    generic: RouteService,
    /// By [`Consumer::id`], which auth layers set from the config consumer (unique across
    /// ids, usernames and custom ids, as validation checks).
    by_consumer: Arc<HashMap<Arc<str>, RouteService>>,
}

impl std::fmt::Debug for ConsumerScoped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerScoped").field("consumers", &self.by_consumer.keys()).finish_non_exhaustive()
    }
}

impl ConsumerScoped {
    /// `generic` for every caller but the consumers in `by_consumer` (by id).
    pub(crate) fn new(generic: RouteService, by_consumer: HashMap<Arc<str>, RouteService>) -> Self {
        Self { generic, by_consumer: Arc::new(by_consumer) }
    }

    fn pick(&self, req: &Request<Body>) -> &RouteService {
        req.extensions()
            .get::<Consumer>()
            .and_then(|consumer| self.by_consumer.get(&consumer.id))
            .unwrap_or(&self.generic)
    }
}

impl Service<Request<Body>> for ConsumerScoped {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Oneshot<RouteService, Request<Body>>;

    /// Which instance serves a request is known only from the request, so readiness is that
    /// instance's, awaited in the future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.pick(&req).clone().oneshot(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::util::BoxCloneSyncService;

    fn answering(text: &'static str) -> RouteService {
        BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| async move {
            Ok::<_, Infallible>(Response::new(Body::from(bytes::Bytes::from_static(text.as_bytes()))))
        }))
    }

    async fn text(svc: &ConsumerScoped, consumer: Option<&str>) -> String {
        use http_body_util::BodyExt;
        let mut req = Request::new(Body::empty());
        if let Some(id) = consumer {
            req.extensions_mut().insert(Consumer { id: id.into(), ..Consumer::default() });
        }
        let res = svc.clone().oneshot(req).await.unwrap();
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_consumer_with_its_own_instance_gets_it_and_everybody_else_the_generic_one() {
        let svc = ConsumerScoped::new(
            answering("generic"),
            HashMap::from([(Arc::from("alice"), answering("alice's"))]),
        );
        assert_eq!(text(&svc, Some("alice")).await, "alice's");
        assert_eq!(text(&svc, Some("bob")).await, "generic");
        assert_eq!(text(&svc, None).await, "generic");
    }
}
