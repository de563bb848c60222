use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceBuilder, ServiceExt};

use super::*;
use crate::ext::AuthFailure;
use crate::ext::RateLimitOutcome;
use crate::ext::{MatchedRoute, RouteInfo};

fn route(name: &str, service: &str) -> Arc<RouteInfo> {
    Arc::new(RouteInfo { name: Some(name.into()), service_name: Some(service.into()), preserve_host: false })
}

/// A service that answers `status` with the given annotations, as the inner layers would.
fn annotated(
    status: StatusCode,
    route: Option<Arc<RouteInfo>>,
    annotate: impl Fn(&mut http::Extensions) + Clone + Send + 'static,
) -> impl tower::Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(move |_req: Request<()>| {
        let route = route.clone();
        let annotate = annotate.clone();
        async move {
            let mut res = Response::new(Bytes::new());
            *res.status_mut() = status;
            if let Some(route) = route {
                res.extensions_mut().insert(MatchedRoute(route));
            }
            annotate(res.extensions_mut());
            Ok::<_, Infallible>(res)
        }
    })
}

async fn call<S>(svc: S)
where
    S: tower::Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
{
    svc.oneshot(Request::get("/x?apikey=secret").body(()).unwrap()).await.unwrap();
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn requests_are_counted_by_route_service_and_status_class() {
    let metrics = Metrics::new();
    let orders = route("orders", "orders-svc");
    let layer = MetricsLayer::new(metrics.clone());
    for _ in 0..3 {
        call(layer.clone().layer(annotated(StatusCode::OK, Some(orders.clone()), |_| {}))).await;
    }
    call(layer.layer(annotated(StatusCode::BAD_GATEWAY, Some(orders.clone()), |_| {}))).await;
    call(layer.layer(annotated(StatusCode::NOT_FOUND, None, |_| {}))).await;
    let text = metrics.render();
    let ok = r#"portcullis_requests_total{route="orders",service="orders-svc",status_class="2xx"}"#;
    assert_eq!(sample(&text, ok), Some(3.0), "{text}");
    let bad = r#"portcullis_requests_total{route="orders",service="orders-svc",status_class="5xx"}"#;
    assert_eq!(sample(&text, bad), Some(1.0), "{text}");
    let unmatched = r#"portcullis_requests_total{route="",service="",status_class="4xx"}"#;
    assert_eq!(sample(&text, unmatched), Some(1.0), "{text}");
    let count = r#"portcullis_request_duration_seconds_count{route="orders",service="orders-svc"}"#;
    assert_eq!(sample(&text, count), Some(4.0), "{text}");
    // Not proxied: no upstream or overhead series.
    assert!(!text.contains("portcullis_upstream_duration_seconds_count"), "{text}");
    assert!(!text.contains("secret") && !text.contains("/x"), "{text}");
}

#[cfg(feature = "proxy")]
#[tokio::test]
async fn upstream_latency_and_overhead_come_from_upstream_info() {
    let metrics = Metrics::new();
    let orders = route("orders", "orders-svc");
    let svc = metrics.layer().layer(annotated(StatusCode::OK, Some(orders), |ext| {
        ext.insert(crate::ext::UpstreamInfo {
            host: "10.0.0.5:8080".into(),
            status: Some(StatusCode::OK),
            latency: std::time::Duration::from_millis(7),
            failure: None,
        });
    }));
    call(svc).await;
    let text = metrics.render();
    let labels = r#"{route="orders",service="orders-svc"}"#;
    assert_eq!(
        sample(&text, &format!("portcullis_upstream_duration_seconds_sum{labels}")),
        Some(0.007),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"portcullis_upstream_duration_seconds_bucket{le="0.005",route="orders",service="orders-svc"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"portcullis_upstream_duration_seconds_bucket{le="0.01",route="orders",service="orders-svc"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, &format!("portcullis_gateway_overhead_seconds_count{labels}")), Some(1.0));
    // The service answered at once: the whole request was shorter than the claimed upstream
    // time, and the overhead saturates at zero instead of wrapping.
    assert_eq!(sample(&text, &format!("portcullis_gateway_overhead_seconds_sum{labels}")), Some(0.0));
    assert!(!text.contains("10.0.0.5"), "hosts are never labels: {text}");
}

#[tokio::test]
async fn rate_limit_outcomes_and_auth_failures() {
    let metrics = Metrics::new();
    let r = route("orders", "orders-svc");
    let layer = metrics.layer();
    use RateLimitOutcome::{Allowed, Bypassed, Limited, Unavailable};
    for outcome in [Allowed, Allowed, Limited, Bypassed, Unavailable] {
        call(layer.layer(annotated(StatusCode::OK, Some(r.clone()), move |ext| {
            ext.insert(outcome);
        })))
        .await;
    }
    for _ in 0..2 {
        call(layer.layer(annotated(StatusCode::UNAUTHORIZED, Some(r.clone()), |ext| {
            ext.insert(AuthFailure { plugin: "key-auth", reason: "invalid_credentials" });
        })))
        .await;
    }
    let text = metrics.render();
    let rl = |o: &str| {
        sample(
            &text,
            &format!(
                r#"portcullis_rate_limit_decisions_total{{route="orders",service="orders-svc",outcome="{o}"}}"#
            ),
        )
    };
    // The label words are the access log's: the one list in `RateLimitOutcome::as_str`.
    let words: Vec<&str> = RateLimitOutcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(words, ["allowed", "limited", "bypassed", "unavailable"]);
    assert_eq!(
        (rl("allowed"), rl("limited"), rl("bypassed"), rl("unavailable")),
        (Some(2.0), Some(1.0), Some(1.0), Some(1.0)),
        "{text}"
    );
    let auth = r#"portcullis_auth_failures_total{plugin="key-auth",reason="invalid_credentials"}"#;
    assert_eq!(sample(&text, auth), Some(2.0), "{text}");
}

#[tokio::test]
async fn clones_of_the_layer_and_the_handle_share_the_series() {
    let metrics = Metrics::new();
    let layer = MetricsLayer::new(metrics.clone());
    let a = layer.clone().layer(annotated(StatusCode::OK, None, |_| {}));
    let b = layer.layer(annotated(StatusCode::OK, None, |_| {}));
    call(a.clone()).await;
    call(a).await;
    call(b).await;
    let other_handle = metrics.clone();
    let series = r#"portcullis_requests_total{route="",service="",status_class="2xx"}"#;
    assert_eq!(sample(&other_handle.render(), series), Some(3.0));
}

#[tokio::test]
async fn a_failed_inner_service_counts_as_5xx() {
    let metrics = Metrics::new();
    let svc = ServiceBuilder::new()
        .layer(metrics.layer())
        .service_fn(|_req: Request<()>| async { Err::<Response<Bytes>, _>(std::io::Error::other("boom")) });
    assert!(svc.oneshot(Request::new(())).await.is_err());
    let series = r#"portcullis_requests_total{route="",service="",status_class="5xx"}"#;
    assert_eq!(sample(&metrics.render(), series), Some(1.0));
}

#[test]
fn scrape_time_values_and_formats() {
    let metrics = Metrics::new();
    let n = Arc::new(std::sync::atomic::AtomicU64::new(5));
    let read = n.clone();
    metrics.register_counter_fn("widgets", "Widgets made", move || {
        read.load(std::sync::atomic::Ordering::Relaxed)
    });
    metrics.register_gauge_fn("temperature", "Degrees", || -3);
    n.store(9, std::sync::atomic::Ordering::Relaxed);
    let open = metrics.render_as(Format::OpenMetrics);
    assert_eq!(sample(&open, "portcullis_widgets_total"), Some(9.0), "{open}");
    assert_eq!(sample(&open, "portcullis_temperature"), Some(-3.0), "{open}");
    assert!(open.ends_with("# EOF\n"));
    let classic = metrics.render_as(Format::PrometheusText);
    assert!(classic.contains("# TYPE portcullis_widgets_total counter\n"), "{classic}");
    assert!(!classic.contains("# EOF"));

    let mut headers = http::HeaderMap::new();
    assert_eq!(Format::negotiate(&headers), Format::PrometheusText);
    headers.insert(
        http::header::ACCEPT,
        "application/OpenMetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5".parse().unwrap(),
    );
    assert_eq!(Format::negotiate(&headers), Format::OpenMetrics);
    let response: Response<Bytes> = metrics.scrape_response(&headers);
    assert_eq!(response.headers()[http::header::CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
    assert!(response.body().ends_with(b"# EOF\n"));
}

#[test]
fn access_log_drops_are_exposed() {
    let metrics = Metrics::new();
    metrics.watch_access_log(&LogSink::off());
    let text = metrics.render();
    assert_eq!(sample(&text, "portcullis_access_log_dropped_lines_total"), Some(0.0), "{text}");
}

#[cfg(feature = "ratelimit")]
#[test]
fn rate_limiter_store_errors_are_one_family() {
    use crate::ratelimit::SlidingWindowLayer;
    let metrics = Metrics::new();
    assert!(!metrics.render().contains("rate_limit_store_errors"));
    let a: crate::ratelimit::RateLimitLayer = SlidingWindowLayer::new().second(5).into();
    let b: crate::ratelimit::RateLimitLayer = SlidingWindowLayer::new().second(5).into();
    metrics.watch_rate_limiter("a", &a);
    metrics.watch_rate_limiter("b", &b);
    // A consumer's own quota on route `b`: still one series for the route.
    let b_alice: crate::ratelimit::RateLimitLayer = SlidingWindowLayer::new().second(3).into();
    metrics.watch_rate_limiter("b", &b_alice);
    let text = metrics.render();
    assert_eq!(text.matches("# TYPE portcullis_rate_limit_store_errors counter").count(), 1, "{text}");
    let series = r#"portcullis_rate_limit_store_errors_total{route="b",kind="script"}"#;
    assert_eq!(sample(&text, series), Some(0.0), "{text}");
    assert_eq!(text.matches(series).count(), 1, "{text}");
}

/// Several services and routes: each resilience family is described once, with a series per
/// instance; a service without a breaker has no breaker series, and nothing is described when
/// nothing is watched.
#[cfg(feature = "proxy")]
#[test]
fn resilience_families_are_described_once_for_every_instance() {
    use crate::resilience::balance::HostSet;
    use crate::resilience::breaker::CircuitBreakerLayer;
    use crate::resilience::classify::RetryOn;
    use crate::resilience::retry::RetryLayer;

    let metrics = Metrics::new();
    assert!(!metrics.render().contains("circuit_breaker"), "nothing watched, nothing described");
    assert!(!metrics.render().contains("upstream_host"));

    let orders_hosts =
        HostSet::builder().host("10.0.0.5:8080").weighted_host("10.0.0.6:8080", 3).build().unwrap();
    let users_hosts = HostSet::builder().host("users.internal:80").build().unwrap();
    metrics.watch_service("orders", Some(&CircuitBreakerLayer::new()), &orders_hosts);
    metrics.watch_service("users", None, &users_hosts);
    let retry = RetryLayer::new(RetryOn::default());
    metrics.watch_retries("orders-read", "orders", &retry);
    metrics.watch_retries("orders-write", "orders", &retry.clone());

    let text = metrics.render_as(Format::PrometheusText);
    for family in [
        "portcullis_circuit_breaker_state gauge",
        "portcullis_circuit_breaker_opened_total counter",
        "portcullis_upstream_host_ejected gauge",
        "portcullis_upstream_host_ejections_total counter",
        "portcullis_upstream_ejected_hosts gauge",
        "portcullis_retries_total counter",
        "portcullis_retry_overflow_total counter",
    ] {
        assert_eq!(text.matches(&format!("# TYPE {family}\n")).count(), 1, "{family}:\n{text}");
    }
    for line in [
        r#"portcullis_circuit_breaker_state{service="orders",state="closed"} 1"#,
        r#"portcullis_circuit_breaker_state{service="orders",state="open"} 0"#,
        r#"portcullis_circuit_breaker_state{service="orders",state="half_open"} 0"#,
        r#"portcullis_upstream_host_ejected{service="orders",host="10.0.0.5:8080"} 0"#,
        r#"portcullis_upstream_host_ejected{service="orders",host="10.0.0.6:8080"} 0"#,
        r#"portcullis_upstream_host_in_flight{service="users",host="users.internal:80"} 0"#,
        r#"portcullis_upstream_ejected_hosts{service="users"} 0"#,
        r#"portcullis_retries_total{route="orders-read",service="orders"} 0"#,
        r#"portcullis_retries_total{route="orders-write",service="orders"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    assert!(!text.contains(r#"circuit_breaker_state{service="users""#), "users has no breaker");
}
