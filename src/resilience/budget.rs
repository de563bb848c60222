//! The retry budget: how many retries the gateway may add on top of its clients' requests, so that
//! retries can never multiply the load on a failing upstream (a retry storm).
//!
//! A [`RetryBudget`] holds up to three independent limits; a retry needs all of them:
//!
//! - **concurrency** (Envoy's `retry_budget`): retries in flight ≤
//!   max(`budget_percent` × active requests, `min_retry_concurrency`). Scales with load, so a busy
//!   route may retry more at once than a quiet one, but never more than a share of its traffic;
//! - **rate** (Finagle's and tower's [`TpsBudget`]): every request deposits `retry_ratio` of a
//!   token that lives for `ttl`, each retry withdraws one, and `min_retries_per_second` are always
//!   available so a quiet route can still retry. Bounds the *total* extra work over time, which
//!   concurrency alone does not when upstream failures are fast;
//! - **`max_retries`** (Envoy's circuit-breaker threshold): a fixed cap on retries in flight. It
//!   belongs to the upstream cluster, not to a policy: a [`MaxRetries`] given to several budgets
//!   (the routes of one service, each with its own `retry_policy`) caps their retries together.
//!
//! A refused retry is not an error: the retry layer returns the response it has (Envoy counts it
//! as `upstream_rq_retry_overflow`). Refusals are counted ([`RetryBudget::snapshot`]).
//!
//! [`RetryBudgetLayer`] goes *outside* [`RetryLayer`](super::retry::RetryLayer): it counts each
//! client request once (not once per attempt), deposits into the rate budget, and puts the
//! [`RetryBudget`] in request extensions, where the retry layer picks it up and asks it before
//! each retry. Clones
//! of the layer, and of the budget, share one state; build one budget per upstream service and
//! give it to the layers of every route that should share it.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use portcullis::Body;
//! use portcullis::resilience::budget::{RetryBudget, RetryBudgetLayer};
//! use portcullis::resilience::retry::RetryLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // No rate allowance at all: a failing response cannot be retried.
//! let budget = RetryBudget::builder().rate(0.0, 0, Duration::from_secs(1)).build().unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryBudgetLayer::new(budget.clone()))
//!     .layer(RetryLayer::new("5xx".parse().unwrap()).num_retries(3))
//!     .service(service_fn(|_req: Request<Body>| async {
//!         let mut res = Response::new(Body::empty());
//!         *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!         // What the proxy records about the upstream's answer.
//!         res.extensions_mut().insert(portcullis::proxy::UpstreamInfo {
//!             host: "10.0.0.1:80".into(),
//!             status: Some(StatusCode::SERVICE_UNAVAILABLE),
//!             latency: Duration::ZERO,
//!             failure: None,
//!         });
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//! let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
//! assert_eq!(res.status(), 503);
//! assert_eq!(budget.snapshot().budget_exhausted, 1);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use pin_project_lite::pin_project;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};

/// Shared by every clone of a [`RetryBudget`] and of the layers holding it.
#[derive(Debug)]
struct Shared {
    /// Client requests inside a [`RetryBudgetLayer`] right now.
    active: AtomicUsize,
    /// Retries admitted and not finished yet (backoff included).
    retries_in_flight: AtomicUsize,
    concurrency: Option<Concurrency>,
    rate: Option<TpsBudget>,
    max_retries: Option<MaxRetries>,
    admitted: AtomicU64,
    budget_exhausted: AtomicU64,
    overflow: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Concurrency {
    /// `budget_percent / 100`.
    fraction: f64,
    min: usize,
}

/// Envoy's `max_retries` circuit-breaker threshold: at most this many retries in flight across
/// every [`RetryBudget`] built with it (clones share the count). Envoy keeps it per cluster, so
/// the gateway gives one to all the budgets of a service's routes.
#[derive(Debug, Clone)]
pub struct MaxRetries {
    shared: Arc<MaxRetriesShared>,
}

#[derive(Debug)]
struct MaxRetriesShared {
    max: usize,
    in_flight: AtomicUsize,
}

impl MaxRetries {
    /// A cap of `max` retries in flight.
    pub fn new(max: u32) -> Self {
        Self { shared: Arc::new(MaxRetriesShared { max: max as usize, in_flight: AtomicUsize::new(0) }) }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.shared.max
    }

    /// Retries in flight under this cap, across every budget that holds it.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

/// A retry budget shared by the requests of one upstream service; see the [module docs](self).
/// Cheap to clone (one `Arc`); clones share the state.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
}

/// Why [`RetryBudget::try_retry`] refused a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RetryRefused {
    /// The concurrency or the rate budget is spent.
    #[error("retry budget exhausted")]
    BudgetExhausted,
    /// `max_retries` retries are already in flight.
    #[error("max_retries overflow")]
    Overflow,
}

/// Holds one retry's place in the budget's count of retries in flight until dropped.
#[derive(Debug)]
#[must_use = "the retry counts as in flight only while the permit is held"]
pub struct RetryPermit {
    shared: Arc<Shared>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.shared.retries_in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(cap) = &self.shared.max_retries {
            cap.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A point-in-time view of a [`RetryBudget`] for `/status` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetSnapshot {
    /// Client requests inside a [`RetryBudgetLayer`] sharing this budget.
    pub active_requests: usize,
    /// Retries admitted and not finished yet.
    pub retries_in_flight: usize,
    /// Retries admitted since start.
    pub retries_admitted: u64,
    /// Retries refused because the concurrency or rate budget was spent.
    pub budget_exhausted: u64,
    /// Retries refused because `max_retries` were in flight.
    pub overflow: u64,
}

/// A budget parameter out of range (tower's `TpsBudget` would panic on them; they are refused
/// here instead).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// `budget_percent` outside 0–100.
    #[error("budget_percent {0} is out of range: expected a percentage from 0 to 100")]
    Percent(f64),
    /// `retry_ratio` outside 0–1000.
    #[error("retry_ratio {0} is out of range: expected a number from 0 to 1000")]
    Ratio(f32),
    /// `ttl` outside 1–60 s.
    #[error("ttl {0:?} is out of range: expected from 1s to 60s")]
    Ttl(Duration),
    /// `min_retries_per_second` too large.
    #[error("min_retries_per_second {0} is out of range: expected less than 2147483647")]
    MinPerSecond(u32),
}

/// Builds a [`RetryBudget`]; every limit is off until set.
#[derive(Debug, Clone, Default)]
pub struct RetryBudgetBuilder {
    concurrency: Option<(f64, u32)>,
    rate: Option<(f32, u32, Duration)>,
    max_retries: Option<MaxRetries>,
}

impl RetryBudgetBuilder {
    /// Envoy's `retry_budget`: retries in flight ≤ max(`budget_percent`% × active requests,
    /// `min_retry_concurrency`). Envoy's defaults are 20 % and 3.
    pub fn concurrency(mut self, budget_percent: f64, min_retry_concurrency: u32) -> Self {
        self.concurrency = Some((budget_percent, min_retry_concurrency));
        self
    }

    /// Finagle's rate budget: each request adds `retry_ratio` retries (0.2: one retry per five
    /// requests) that stay available for `ttl` (1–60 s), plus `min_retries_per_second` always.
    /// tower's integer accounting rounds `retry_ratio` ≤ 1 to 1/⌊1/ratio⌋ (0.3 acts as 1/3).
    pub fn rate(mut self, retry_ratio: f32, min_retries_per_second: u32, ttl: Duration) -> Self {
        self.rate = Some((retry_ratio, min_retries_per_second, ttl));
        self
    }

    /// Envoy's `max_retries` circuit-breaker threshold: at most this many retries in flight
    /// under this budget alone ([`shared_max_retries`](Self::shared_max_retries) shares the cap).
    pub fn max_retries(mut self, max: u32) -> Self {
        self.max_retries = Some(MaxRetries::new(max));
        self
    }

    /// Counts this budget's retries in flight against `cap`, with every other budget holding it
    /// (Envoy's per-cluster `max_retries`).
    pub fn shared_max_retries(mut self, cap: &MaxRetries) -> Self {
        self.max_retries = Some(cap.clone());
        self
    }

    /// Checks the parameters and builds the budget.
    pub fn build(self) -> Result<RetryBudget, BudgetError> {
        let concurrency = match self.concurrency {
            Some((percent, _)) if !(0.0..=100.0).contains(&percent) => {
                return Err(BudgetError::Percent(percent));
            }
            Some((percent, min)) => Some(Concurrency { fraction: percent / 100.0, min: min as usize }),
            None => None,
        };
        let rate = match self.rate {
            Some((ratio, _, _)) if !(0.0..=1000.0).contains(&ratio) => return Err(BudgetError::Ratio(ratio)),
            Some((_, _, ttl)) if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) => {
                return Err(BudgetError::Ttl(ttl));
            }
            Some((_, min, _)) if min >= i32::MAX as u32 => return Err(BudgetError::MinPerSecond(min)),
            Some((ratio, min, ttl)) => Some(TpsBudget::new(ttl, min, ratio)),
            None => None,
        };
        Ok(RetryBudget {
            shared: Arc::new(Shared {
                active: AtomicUsize::new(0),
                retries_in_flight: AtomicUsize::new(0),
                concurrency,
                rate,
                max_retries: self.max_retries,
                admitted: AtomicU64::new(0),
                budget_exhausted: AtomicU64::new(0),
                overflow: AtomicU64::new(0),
            }),
        })
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// Starts a budget with no limit set.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder::default()
    }

    /// Asks for one retry: a permit that counts the retry in flight until dropped, or why not.
    /// Checks `max_retries`, then the concurrency budget, then withdraws from the rate budget (so
    /// a refused retry spends no rate token).
    pub fn try_retry(&self) -> Result<RetryPermit, RetryRefused> {
        let shared = &self.shared;
        // Counted first, so two racing retries cannot both see room for one.
        let in_flight = shared.retries_in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let capped =
            shared.max_retries.as_ref().map(|cap| cap.shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1);
        // The permit gives both counts back, also when it is refused below.
        let permit = RetryPermit { shared: shared.clone() };
        if shared.max_retries.as_ref().zip(capped).is_some_and(|(cap, n)| n > cap.shared.max) {
            shared.overflow.fetch_add(1, Ordering::Relaxed);
            return Err(RetryRefused::Overflow);
        }
        if let Some(concurrency) = shared.concurrency {
            let active = shared.active.load(Ordering::Acquire);
            let allowed = ((active as f64 * concurrency.fraction) as usize).max(concurrency.min);
            if in_flight > allowed {
                shared.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                return Err(RetryRefused::BudgetExhausted);
            }
        }
        if shared.rate.as_ref().is_some_and(|rate| !rate.withdraw()) {
            shared.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            return Err(RetryRefused::BudgetExhausted);
        }
        shared.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(permit)
    }

    /// The budget's gauges and counters.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let shared = &self.shared;
        BudgetSnapshot {
            active_requests: shared.active.load(Ordering::Relaxed),
            retries_in_flight: shared.retries_in_flight.load(Ordering::Relaxed),
            retries_admitted: shared.admitted.load(Ordering::Relaxed),
            budget_exhausted: shared.budget_exhausted.load(Ordering::Relaxed),
            overflow: shared.overflow.load(Ordering::Relaxed),
        }
    }

    /// Counts one client request: active until the guard drops, and a deposit in the rate budget.
    fn enter(&self) -> ActiveRequest {
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        if let Some(rate) = &self.shared.rate {
            rate.deposit();
        }
        ActiveRequest { shared: self.shared.clone() }
    }
}

/// One client request counted in [`Shared::active`] until dropped.
#[derive(Debug)]
struct ActiveRequest {
    shared: Arc<Shared>,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl RetryBudgetLayer ===

/// Counts requests into a [`RetryBudget`] and hands it to the retry layer inside through request
/// extensions; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RetryBudgetLayer {
    budget: RetryBudget,
}

impl RetryBudgetLayer {
    /// A layer feeding `budget` (clone the budget to share it between routes).
    pub fn new(budget: RetryBudget) -> Self {
        Self { budget }
    }

    /// The budget this layer feeds, for its snapshot.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }
}

impl<S> Layer<S> for RetryBudgetLayer {
    type Service = RetryBudgetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryBudgetService { inner, budget: self.budget.clone() }
    }
}

/// The service made by [`RetryBudgetLayer`].
#[derive(Debug, Clone)]
pub struct RetryBudgetService<S> {
    inner: S,
    budget: RetryBudget,
}

impl<S, ReqBody> Service<Request<ReqBody>> for RetryBudgetService<S>
where
    S: Service<Request<ReqBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let active = self.budget.enter();
        req.extensions_mut().insert(self.budget.clone());
        ResponseFuture { inner: self.inner.call(req), _active: active }
    }
}

pin_project! {
    /// Response future of [`RetryBudgetService`]: the request stays active until it completes or
    /// is dropped.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        _active: ActiveRequest,
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_retries_caps_retries_in_flight_and_permits_give_back() {
        let budget = RetryBudget::builder().max_retries(2).build().unwrap();
        let a = budget.try_retry().unwrap();
        let _b = budget.try_retry().unwrap();
        assert_eq!(budget.try_retry().unwrap_err(), RetryRefused::Overflow);
        drop(a);
        let _c = budget.try_retry().unwrap();
        let snapshot = budget.snapshot();
        assert_eq!(
            (snapshot.retries_in_flight, snapshot.retries_admitted, snapshot.overflow),
            (2, 3, 1),
            "{snapshot:?}"
        );
    }

    #[test]
    fn a_shared_max_retries_caps_every_budget_holding_it() {
        let cap = MaxRetries::new(1);
        let a = RetryBudget::builder().shared_max_retries(&cap).build().unwrap();
        let b = RetryBudget::builder().shared_max_retries(&cap).build().unwrap();
        let permit = a.try_retry().unwrap();
        assert_eq!(b.try_retry().unwrap_err(), RetryRefused::Overflow, "a's retry fills the cap");
        assert_eq!((cap.in_flight(), b.snapshot().overflow, b.snapshot().retries_in_flight), (1, 1, 0));
        drop(permit);
        assert_eq!(cap.in_flight(), 0);
        let _permit = b.try_retry().unwrap();
        assert_eq!(a.try_retry().unwrap_err(), RetryRefused::Overflow);
        // A budget of its own is not capped by the shared one.
        let own = RetryBudget::builder().max_retries(1).build().unwrap();
        let _own = own.try_retry().unwrap();
    }

    #[test]
    fn concurrency_scales_with_active_requests_above_the_minimum() {
        let budget = RetryBudget::builder().concurrency(20.0, 1).build().unwrap();
        // No traffic: the minimum alone.
        let first = budget.try_retry().unwrap();
        assert_eq!(budget.try_retry().unwrap_err(), RetryRefused::BudgetExhausted);
        drop(first);
        // 20 active requests: 20 % of them may retry at once.
        let active: Vec<_> = (0..20).map(|_| budget.enter()).collect();
        let permits: Vec<_> = (0..4).map(|_| budget.try_retry().unwrap()).collect();
        assert_eq!(budget.try_retry().unwrap_err(), RetryRefused::BudgetExhausted);
        assert_eq!(budget.snapshot().active_requests, 20);
        drop(active);
        drop(permits);
        assert_eq!(
            budget.snapshot(),
            BudgetSnapshot {
                active_requests: 0,
                retries_in_flight: 0,
                retries_admitted: 5,
                budget_exhausted: 2,
                overflow: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_allows_the_ratio_of_requests_plus_the_minimum_and_forgets_after_ttl() {
        let budget = RetryBudget::builder().rate(0.5, 0, Duration::from_secs(1)).build().unwrap();
        for _ in 0..10 {
            drop(budget.enter());
        }
        let retried = (0..10).filter(|_| budget.try_retry().is_ok()).count();
        assert_eq!(retried, 5, "ratio 0.5 of 10 requests");
        // Deposits expire after the ttl.
        for _ in 0..10 {
            drop(budget.enter());
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(budget.try_retry().unwrap_err(), RetryRefused::BudgetExhausted);

        let quiet = RetryBudget::builder().rate(0.0, 2, Duration::from_secs(1)).build().unwrap();
        let retried = (0..5).filter(|_| quiet.try_retry().is_ok()).count();
        assert_eq!(retried, 2, "min_retries_per_second with no traffic");
    }

    #[tokio::test]
    async fn the_layer_counts_requests_while_active_and_shares_state_across_clones() {
        use tower::ServiceExt;
        let layer = RetryBudgetLayer::new(RetryBudget::builder().max_retries(1).build().unwrap());
        let clone = layer.clone();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = std::sync::Mutex::new(Some(released));
        let svc = clone.layer(tower::service_fn(move |req: Request<()>| {
            let wait = released.lock().unwrap().take();
            async move {
                assert!(req.extensions().get::<RetryBudget>().is_some(), "the budget travels inward");
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                Ok::<_, std::convert::Infallible>(())
            }
        }));
        let pending = tokio::spawn(svc.oneshot(Request::new(())));
        while layer.budget().snapshot().active_requests == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(layer.budget().snapshot().active_requests, 1);
        release.send(()).unwrap();
        pending.await.unwrap().unwrap();
        assert_eq!(layer.budget().snapshot().active_requests, 0);
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        assert_eq!(
            RetryBudget::builder().concurrency(120.0, 3).build().unwrap_err(),
            BudgetError::Percent(120.0)
        );
        assert_eq!(
            RetryBudget::builder().rate(0.2, 10, Duration::from_millis(500)).build().unwrap_err(),
            BudgetError::Ttl(Duration::from_millis(500))
        );
        assert_eq!(
            RetryBudget::builder().rate(-1.0, 10, Duration::from_secs(1)).build().unwrap_err(),
            BudgetError::Ratio(-1.0)
        );
    }
}
