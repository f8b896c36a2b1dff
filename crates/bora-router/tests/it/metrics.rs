//! Per-service statistics and the Prometheus metrics rendered from them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Channel};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::harness::{
    TestRouter, bounded, client, empty, eventually, full, lo, one_service, send, serve_upstream,
    sleeping_service,
};

const HOST: &str = "web.hello.localhost";

/// An instance on lo(2) that answers "/slow" only once `release` is
/// notified, and everything else at once; returns its port.
async fn instance(release: Arc<Notify>) -> u16 {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_upstream(listener, move |request| {
        let release = release.clone();
        async move {
            if request.uri().path() == "/slow" {
                release.notified().await;
            }
            Response::new(full("ok"))
        }
    });
    port
}

#[tokio::test]
async fn stats_count_requests_in_flight_and_their_latency() {
    bounded(async {
        let release = Arc::new(Notify::new());
        let port = instance(release.clone()).await;
        let router = TestRouter::start(one_service(port, &[("i-1", lo(2))]), |_| {}).await;
        let stats = || router.router.service_stats("hello", "web");
        let before = stats();
        assert_eq!((before.arrived_total, before.in_flight), (0, 0));
        assert!(before.last_active.is_none());

        for _ in 0..3 {
            assert_eq!(router.get(HOST, "/").await.0, StatusCode::OK);
        }
        let pending = tokio::spawn(send(router.request(HOST, "/slow").body(empty()).unwrap()));
        eventually(|| stats().in_flight == 1).await;
        assert_eq!(router.router.in_flight("i-1"), 1);
        let during = stats();
        assert_eq!((during.arrived_total, during.held), (4, 0));
        assert_eq!(during.latency.count(), 3, "the slow one has no headers yet");
        let now = Instant::now();
        assert!(
            during
                .last_active
                .is_some_and(|active| active >= now - Duration::from_millis(1))
        );

        tokio::time::sleep(Duration::from_millis(100)).await;
        release.notify_one();
        assert_eq!(pending.await.unwrap().0, StatusCode::OK);
        eventually(|| stats().in_flight == 0).await;
        let after = stats();
        assert_eq!(after.latency.count(), 4);
        assert_eq!(after.responses.get(&200), Some(&4));
        assert!(after.latency.quantile(1.0).unwrap() >= Duration::from_millis(100));
        assert!(after.concurrency_seconds_total >= 0.1);
        let delta = after.latency.since(&during.latency);
        assert_eq!(delta.count(), 1);

        // Unknown hosts count under app "", service "".
        router.get("nope.hello.localhost", "/").await;
        let unrouted = router.router.service_stats("", "");
        assert_eq!(unrouted.arrived_total, 1);
        assert_eq!(unrouted.responses.get(&404), Some(&1));
        assert_eq!(
            router.router.service_stats("hello", "nope").arrived_total,
            0
        );
    })
    .await;
}

#[tokio::test]
async fn concurrency_integrates_hold_time() {
    bounded(async {
        let release = Arc::new(Notify::new());
        let port = instance(release).await;
        let router = TestRouter::start(sleeping_service(port), |_| {}).await;
        let stats = || router.router.service_stats("hello", "web");
        let start = stats();

        let pending = tokio::spawn(send(router.request(HOST, "/").body(empty()).unwrap()));
        eventually(|| stats().held == 1).await;
        let held_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let during = stats();
        assert_eq!(during.held, 1);
        assert!(during.last_active.is_some_and(|active| active >= held_at));
        router
            .router
            .set_table(one_service(port, &[("i-1", lo(2))]));
        assert_eq!(pending.await.unwrap().0, StatusCode::OK);
        eventually(|| stats().in_flight == 0).await;

        let end = stats();
        let integral = end.concurrency_seconds_total - start.concurrency_seconds_total;
        assert!(
            integral >= 0.19,
            "one request held ~200ms adds ~0.2, got {integral}"
        );
        assert_eq!(end.hold_time.count(), 1);
        assert!(end.hold_time.sum() >= Duration::from_millis(190));
        assert!(end.latency.quantile(0.5).unwrap() >= Duration::from_millis(190));
        // Idle: the integral stops growing.
        let idle = stats().concurrency_seconds_total;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(stats().concurrency_seconds_total, idle);
    })
    .await;
}

#[tokio::test]
async fn a_streaming_response_counts_in_flight_until_its_body_ends() {
    bounded(async {
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Answers with a body that never ends.
        serve_upstream(listener, |_request| async {
            let (mut sender, body) = Channel::<Bytes>::new(1);
            tokio::spawn(async move {
                sender.send_data(Bytes::from("open")).await.unwrap();
                std::future::pending::<()>().await;
                drop(sender);
            });
            Response::new(body.boxed())
        });
        let router = TestRouter::start(one_service(port, &[("i-1", lo(2))]), |_| {}).await;
        let response = client()
            .request(router.request(HOST, "/").body(empty()).unwrap())
            .await
            .unwrap();
        let stats = router.router.service_stats("hello", "web");
        assert_eq!(stats.in_flight, 1, "headers sent, body still streaming");
        assert_eq!(stats.latency.count(), 1);
        drop(response);
        eventually(|| router.router.service_stats("hello", "web").in_flight == 0).await;
    })
    .await;
}

#[tokio::test]
async fn metrics_render_the_documented_names_and_labels() {
    bounded(async {
        let release = Arc::new(Notify::new());
        let port = instance(release).await;
        let mut table = one_service(port, &[("i-1", lo(2))]);
        table.services.extend(
            sleeping_service(port)
                .services
                .into_iter()
                .map(|mut sleeping| {
                    sleeping.service = "worker".into();
                    sleeping
                }),
        );
        let router = TestRouter::start(table, |config| {
            config.hold_timeout = Duration::from_millis(50);
        })
        .await;
        let mut registry = Registry::default();
        router.router.register_metrics(&mut registry);

        assert_eq!(router.get(HOST, "/").await.0, StatusCode::OK);
        assert_eq!(router.get(HOST, "/").await.0, StatusCode::OK);
        let (status, _, _) = router.get("worker.hello.localhost", "/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        router.get("nope.hello.localhost", "/").await;

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE bora_router_requests counter",
            r#"bora_router_requests_total{app="hello",service="web",code="200"} 2"#,
            r#"bora_router_requests_total{app="hello",service="worker",code="503"} 1"#,
            r#"bora_router_requests_total{app="",service="",code="404"} 1"#,
            "# TYPE bora_router_request_duration_seconds histogram",
            r#"bora_router_request_duration_seconds_count{app="hello",service="web"} 2"#,
            r#"bora_router_request_duration_seconds_bucket{le="+Inf",app="hello",service="web"} 2"#,
            "# TYPE bora_router_requests_in_flight gauge",
            r#"bora_router_requests_in_flight{app="hello",service="web"} 0"#,
            "# TYPE bora_router_requests_held gauge",
            r#"bora_router_requests_held{app="hello",service="worker"} 0"#,
            "# TYPE bora_router_held_requests counter",
            r#"bora_router_held_requests_total{app="hello",service="worker",outcome="timeout"} 1"#,
            r#"bora_router_held_requests_total{app="hello",service="worker",outcome="forwarded"} 0"#,
            "# TYPE bora_router_hold_duration_seconds histogram",
            r#"bora_router_hold_duration_seconds_count{app="hello",service="worker"} 1"#,
        ] {
            assert!(
                text.lines().any(|rendered| rendered == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            !text.contains(r#"bora_router_requests_held{app="",service=""}"#),
            "unrouted requests have only the request metrics"
        );
    })
    .await;
}
