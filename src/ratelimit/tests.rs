use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::consumer::Consumer;
use crate::ext::RateLimitOutcome;
use crate::ext::RequestId;

const T0: Micros = 1_700_000_040 * SECOND; // a minute boundary

type Svc = tower::util::BoxCloneService<Request<()>, Response<Bytes>, Infallible>;

fn ok_service()
-> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok"))) })
}

fn limited(layer: impl tower::Layer<Svc, Service = RateLimit<Svc>>) -> RateLimit<Svc> {
    layer.layer(Svc::new(ok_service()))
}

fn clock_store(clock: &ManualClock) -> MemoryStore {
    MemoryStore::with_clock(1000, Arc::new(clock.clone()))
}

async fn send(svc: &mut RateLimit<Svc>, req: Request<()>) -> Response<Bytes> {
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn header<'a>(res: &'a Response<Bytes>, name: &str) -> &'a str {
    res.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test]
async fn kong_minute_6_sequence_with_headers_and_body() {
    let clock = ManualClock::new(T0 + 13 * SECOND);
    let mut svc = limited(SlidingWindowLayer::new().minute(6).store(clock_store(&clock)));
    let mut remaining = Vec::new();
    for i in 0..7 {
        let mut req = Request::new(());
        req.extensions_mut().insert(RequestId::from_static("rid-1"));
        let res = send(&mut svc, req).await;
        remaining.push(header(&res, "x-ratelimit-remaining").to_owned());
        assert_eq!(header(&res, "x-ratelimit-limit"), "6");
        assert_eq!(header(&res, "x-ratelimit-limit-minute"), "6");
        assert_eq!(header(&res, "ratelimit-limit"), "6");
        assert_eq!(header(&res, "ratelimit-reset"), "47");
        assert_eq!(header(&res, "x-ratelimit-reset"), (T0 / SECOND + 60).to_string());
        assert_eq!(header(&res, "x-ratelimit-remaining-minute"), remaining[i]);
        if i < 6 {
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.extensions().get::<RateLimitOutcome>(), Some(&RateLimitOutcome::Allowed));
        } else {
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(header(&res, "content-type"), "application/json");
            let retry: u64 = header(&res, "retry-after").parse().unwrap();
            assert!(retry >= 1);
            let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
            assert_eq!(
                body,
                serde_json::json!({
                    "error": "rate_limit_exceeded",
                    "message": format!("Request limit of 6/minute exceeded. Retry after {retry} seconds."),
                    "request_id": "rid-1",
                })
            );
            assert_eq!(res.extensions().get::<RateLimitOutcome>(), Some(&RateLimitOutcome::Limited));
        }
    }
    assert_eq!(remaining, ["5", "4", "3", "2", "1", "0", "0"]);
}

#[tokio::test]
async fn clones_of_the_layer_share_one_limit() {
    let clock = ManualClock::new(T0);
    let layer = SlidingWindowLayer::new().minute(2).store(clock_store(&clock));
    let mut a = limited(layer.clone());
    let mut b = limited(layer.clone());
    assert_eq!(send(&mut a, Request::new(())).await.status(), 200);
    assert_eq!(send(&mut b, Request::new(())).await.status(), 200);
    assert_eq!(send(&mut a, Request::new(())).await.status(), 429);
    assert_eq!(send(&mut b, Request::new(())).await.status(), 429);
}

#[tokio::test]
async fn most_constrained_window_drives_the_headers_and_the_message() {
    let clock = ManualClock::new(T0);
    let mut svc = limited(SlidingWindowLayer::new().second(5).hour(3).store(clock_store(&clock)));
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(header(&res, "x-ratelimit-limit"), "3");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "2");
    assert_eq!(header(&res, "x-ratelimit-remaining-second"), "4");
    assert_eq!(header(&res, "x-ratelimit-remaining-hour"), "2");
    send(&mut svc, Request::new(())).await;
    send(&mut svc, Request::new(())).await;
    clock.advance(Duration::from_secs(13));
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(res.status(), 429);
    let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    // T0 is 840 s into its hour; at T0 + 13 s the hour is full, and the sliding estimate of the
    // next hour admits one more once 3 × (3600 − e)/3600 ≤ 2, at e = 1200 s: 2747 + 1200.
    assert_eq!(body["message"], "Request limit of 3/hour exceeded. Retry after 3947 seconds.");
    assert_eq!(header(&res, "retry-after"), "3947");
}

#[tokio::test]
async fn limit_by_consumer_counts_each_consumer_apart() {
    let clock = ManualClock::new(T0);
    let layer = SlidingWindowLayer::new().minute(1).limit_by(LimitBy::Consumer).store(clock_store(&clock));
    let svc = ServiceBuilder::new()
        .map_request(|mut req: Request<()>| {
            let name = req.headers().get("x-test-consumer").map(|v| v.to_str().unwrap().to_owned());
            if let Some(name) = name {
                req.extensions_mut().insert(Consumer { id: name.into(), ..Consumer::default() });
            }
            req
        })
        .layer(layer)
        .service(ok_service());
    let as_ = |name: &str| Request::builder().header("x-test-consumer", name).body(()).unwrap();
    assert_eq!(svc.clone().oneshot(as_("alice")).await.unwrap().status(), 200);
    assert_eq!(svc.clone().oneshot(as_("bob")).await.unwrap().status(), 200);
    assert_eq!(svc.clone().oneshot(as_("alice")).await.unwrap().status(), 429);
    // No consumer: Kong's fallback to the client IP, a key of its own.
    assert_eq!(svc.clone().oneshot(Request::new(())).await.unwrap().status(), 200);
}

#[tokio::test]
async fn hidden_headers_custom_status_and_message() {
    let clock = ManualClock::new(T0);
    let mut svc = limited(
        SlidingWindowLayer::new()
            .minute(1)
            .hide_client_headers(true)
            .error_code(StatusCode::SERVICE_UNAVAILABLE)
            .error_message("API rate limit exceeded")
            .store(clock_store(&clock)),
    );
    let res = send(&mut svc, Request::new(())).await;
    assert!(res.headers().get("x-ratelimit-limit").is_none());
    assert!(res.headers().get("ratelimit-remaining").is_none());
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
    // Sliding: the one request of this minute still weighs on the next one until its end.
    assert_eq!(header(&res, "retry-after"), "120");
    let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(body["message"], "API rate limit exceeded");
    assert_eq!(body["error"], "rate_limit_exceeded");
}

#[tokio::test]
async fn token_bucket_burst_then_refill() {
    let clock = ManualClock::new(T0);
    let mut svc = limited(TokenBucketLayer::new(3, 1.0).store(clock_store(&clock)));
    for expected in ["2", "1", "0"] {
        let res = send(&mut svc, Request::new(())).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-ratelimit-remaining"), expected);
    }
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), "1");
    clock.advance(Duration::from_secs(1));
    assert_eq!(send(&mut svc, Request::new(())).await.status(), 200);
    assert_eq!(send(&mut svc, Request::new(())).await.status(), 429);
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_spaces_admitted_requests_and_rejects_overflow() {
    let clock = ManualClock::new(T0);
    let start = tokio::time::Instant::now();
    let departures = Arc::new(Mutex::new(Vec::new()));
    let seen = departures.clone();
    let inner = service_fn(move |_req: Request<()>| {
        seen.lock().unwrap().push(start.elapsed());
        async { Ok::<_, Infallible>(Response::new(Bytes::new())) }
    });
    let svc =
        ServiceBuilder::new().layer(LeakyBucketLayer::new(3, 4.0).store(clock_store(&clock))).service(inner);
    let calls: Vec<_> = (0..4).map(|_| svc.clone().oneshot(Request::new(()))).collect();
    let answers = futures_join(calls).await;
    let statuses: Vec<_> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    let body: serde_json::Value = serde_json::from_slice(answers[3].body()).unwrap();
    assert_eq!(body["message"], "Request queue of 3 is full. Retry after 1 second.");
    let departures = departures.lock().unwrap().clone();
    assert_eq!(departures, [Duration::ZERO, Duration::from_millis(250), Duration::from_millis(500)]);
}

async fn futures_join<F, T, E>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Debug + Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap().unwrap());
    }
    out
}

/// A store that cannot answer, to drive the layer's failure policy.
#[derive(Debug)]
struct BrokenStore(StoreError);

impl Store for BrokenStore {
    fn decide(&self, _key: &str, _policy: &Arc<Policy>) -> Decided {
        let error = self.0.clone();
        Decided::Pending(Box::pin(async move { Err(error) }))
    }
}

#[tokio::test]
async fn store_failure_fails_open_or_closed_and_is_counted_by_kind() {
    let open = SlidingWindowLayer::new().minute(1).store(BrokenStore(StoreError::Unavailable("down".into())));
    let mut svc = limited(open.clone());
    for _ in 0..3 {
        let res = send(&mut svc, Request::new(())).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
        assert_eq!(res.extensions().get::<RateLimitOutcome>(), Some(&RateLimitOutcome::Bypassed));
    }
    assert_eq!(open.stats(), RateLimitStats { unavailable: 3, script_errors: 0, bypassed: 3 });

    let closed = SlidingWindowLayer::new()
        .minute(1)
        .fault_tolerant(false)
        .store(BrokenStore(StoreError::Script("ERR bad".into())));
    let mut svc = limited(closed.clone());
    let res = send(&mut svc, Request::new(())).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<RateLimitOutcome>(), Some(&RateLimitOutcome::Unavailable));
    assert_eq!(closed.stats(), RateLimitStats { unavailable: 0, script_errors: 1, bypassed: 0 });
}
