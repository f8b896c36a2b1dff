//! Holding requests while a sleeping service wakes: forwarding on the table
//! swap, the waker, timeouts, limits, failed wakes, clients that leave.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_router::{Phase, ProxyHooks, RequestInfo, RouteTable, Router, Waker};
use http::StatusCode;
use tokio::net::TcpListener;

use crate::harness::{
    TestRouter, bounded, client, empty, eventually, lo, one_service, send, serve_named, service,
    sleeping_service,
};

const HOST: &str = "web.hello.localhost";

/// Records every wake as `service.app`.
#[derive(Default)]
struct RecordingWaker(Mutex<Vec<String>>);

impl RecordingWaker {
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Waker for RecordingWaker {
    fn wake(&self, app: &str, service: &str) {
        self.0.lock().unwrap().push(format!("{service}.{app}"));
    }
}

/// An instance named "awake" on lo(2); returns its port.
async fn instance() -> u16 {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_named(listener, "awake");
    port
}

/// A router whose only service sleeps, with a recording waker.
async fn sleeping_router(
    port: u16,
    configure: impl FnOnce(&mut bora_router::RouterConfig),
) -> (TestRouter, Arc<RecordingWaker>) {
    let router = TestRouter::start(sleeping_service(port), configure).await;
    let waker = Arc::new(RecordingWaker::default());
    router.router.set_waker(waker.clone());
    (router, waker)
}

/// Sends a GET for the sleeping service in the background.
fn get_in_background(
    router: &TestRouter,
) -> tokio::task::JoinHandle<(StatusCode, http::HeaderMap, String)> {
    tokio::spawn(send(router.request(HOST, "/").body(empty()).unwrap()))
}

/// Waits until `n` requests are held for the service.
async fn until_held(router: &TestRouter, n: u64) {
    eventually(|| router.router.service_stats("hello", "web").held == n).await;
}

/// Records phase names, in order.
#[derive(Default)]
struct Phases(Mutex<Vec<&'static str>>);

impl ProxyHooks for Phases {
    fn on_phase(&self, _request: &RequestInfo, phase: Phase<'_>) {
        let name = match phase {
            Phase::Held => "held",
            Phase::Routed => "routed",
            Phase::Forwarding => "forwarding",
            Phase::ResponseHeaders => "headers",
            Phase::Failed { .. } => "failed",
            Phase::Completed => "completed",
            _ => "other",
        };
        self.0.lock().unwrap().push(name);
    }
}

#[tokio::test]
async fn a_held_request_is_forwarded_when_the_table_gives_an_instance() {
    bounded(async {
        let port = instance().await;
        let phases = Arc::new(Phases::default());
        let router = Router::with_hooks(TestRouter::config(), phases.clone());
        router.set_table(sleeping_service(port));
        let waker = Arc::new(RecordingWaker::default());
        router.set_waker(waker.clone());
        let router = TestRouter::serve(router).await;

        let pending = get_in_background(&router);
        until_held(&router, 1).await;
        // The wake starts with the first held request, before any swap.
        eventually(|| !waker.calls().is_empty()).await;
        assert_eq!(waker.calls()[0], "web.hello");

        // A swap that still gives the service no instance changes nothing.
        let mut still_asleep = sleeping_service(port);
        still_asleep
            .services
            .push(service("hello", "api", &[("/", port)], &[("x", lo(2))]));
        router.router.set_table(still_asleep);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pending.is_finished(), "still held");

        router
            .router
            .set_table(one_service(port, &[("i-1", lo(2))]));
        let (status, _, body) = pending.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "awake");

        let stats = router.router.service_stats("hello", "web");
        assert_eq!((stats.held, stats.held_outcomes.forwarded), (0, 1));
        assert_eq!(stats.hold_time.count(), 1);
        eventually(|| phases.0.lock().unwrap().len() == 5).await;
        assert_eq!(
            *phases.0.lock().unwrap(),
            ["held", "routed", "forwarding", "headers", "completed"]
        );
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_held_requests_is_answered_after_one_swap() {
    const REQUESTS: u64 = 40;
    bounded(async {
        let port = instance().await;
        let (router, waker) = sleeping_router(port, |_| {}).await;

        let pending: Vec<_> = (0..REQUESTS).map(|_| get_in_background(&router)).collect();
        until_held(&router, REQUESTS).await;
        let calls = waker.calls();
        assert!(
            !calls.is_empty() && calls.len() as u64 <= REQUESTS,
            "{calls:?}"
        );
        assert!(calls.iter().all(|call| call == "web.hello"), "{calls:?}");

        router
            .router
            .set_table(one_service(port, &[("i-1", lo(2))]));
        for request in pending {
            let (status, _, body) = request.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "awake");
        }
        let stats = router.router.service_stats("hello", "web");
        assert_eq!(stats.held, 0);
        assert_eq!(stats.held_outcomes.forwarded, REQUESTS);
        assert_eq!(stats.arrived_total, REQUESTS);
    })
    .await;
}

#[tokio::test]
async fn a_service_that_does_not_wake_in_time_is_503_with_retry_after() {
    bounded(async {
        let (router, waker) = sleeping_router(8000, |config| {
            config.hold_timeout = Duration::from_millis(200);
        })
        .await;
        let (status, headers, body) = router.get(HOST, "/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "1");
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(body, "service web in app hello did not wake within 200ms\n");
        assert_eq!(waker.calls(), ["web.hello"]);

        let stats = router.router.service_stats("hello", "web");
        assert_eq!((stats.held, stats.held_outcomes.timeout), (0, 1));
        assert!(stats.hold_time.sum() >= Duration::from_millis(200));
        assert_eq!(stats.responses.get(&503), Some(&1));
    })
    .await;
}

#[tokio::test]
async fn beyond_max_held_requests_get_503_at_once() {
    bounded(async {
        let port = instance().await;
        let (router, _waker) = sleeping_router(port, |config| config.max_held = 2).await;

        let held = [get_in_background(&router), get_in_background(&router)];
        until_held(&router, 2).await;
        let (status, headers, body) = router.get(HOST, "/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(
            body,
            "too many requests waiting for service web in app hello to wake (2 held)\n"
        );
        assert_eq!(router.router.service_stats("hello", "web").held, 2);

        router
            .router
            .set_table(one_service(port, &[("i-1", lo(2))]));
        for request in held {
            assert_eq!(request.await.unwrap().0, StatusCode::OK);
        }
        let outcomes = router.router.service_stats("hello", "web").held_outcomes;
        assert_eq!((outcomes.forwarded, outcomes.rejected), (2, 1));
    })
    .await;
}

#[tokio::test]
async fn a_failed_wake_answers_the_held_requests_and_later_ones_wait() {
    bounded(async {
        let port = instance().await;
        let (router, waker) = sleeping_router(port, |_| {}).await;

        let held = [get_in_background(&router), get_in_background(&router)];
        until_held(&router, 2).await;
        router.router.wake_failed(
            "hello",
            "web",
            "instance abc failed while waking: exited with code 1",
        );
        for request in held {
            let (status, headers, body) = request.await.unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(headers["retry-after"], "1");
            assert_eq!(
                body,
                "service web in app hello did not wake: instance abc failed while waking: exited with code 1\n"
            );
        }
        assert_eq!(router.router.service_stats("hello", "web").held, 0);

        // A request after the failure waits for the retried wake.
        let wakes_before = waker.calls().len();
        let later = get_in_background(&router);
        until_held(&router, 1).await;
        eventually(|| waker.calls().len() > wakes_before).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!later.is_finished(), "held after the failure: still waiting");
        router
            .router
            .set_table(one_service(port, &[("i-1", lo(2))]));
        assert_eq!(later.await.unwrap().0, StatusCode::OK);

        let outcomes = router.router.service_stats("hello", "web").held_outcomes;
        assert_eq!((outcomes.wake_failed, outcomes.forwarded), (2, 1));
        // Unknown services are ignored.
        router.router.wake_failed("hello", "nope", "whatever");
    })
    .await;
}

#[tokio::test]
async fn a_client_that_leaves_releases_its_hold() {
    bounded(async {
        let (router, _waker) = sleeping_router(8000, |_| {}).await;
        let request = router.request(HOST, "/").body(empty()).unwrap();
        let pending = tokio::spawn(client().request(request));
        until_held(&router, 1).await;
        pending.abort();
        until_held(&router, 0).await;
        eventually(|| {
            router
                .router
                .service_stats("hello", "web")
                .held_outcomes
                .canceled
                == 1
        })
        .await;
        let stats = router.router.service_stats("hello", "web");
        assert_eq!((stats.in_flight, stats.arrived_total), (0, 1));
        assert!(stats.responses.is_empty(), "no response was sent");
    })
    .await;
}

#[tokio::test]
async fn held_requests_follow_the_table_when_the_service_goes_away() {
    bounded(async {
        let (router, _waker) = sleeping_router(8000, |_| {}).await;

        // No longer wakeable, still no instance: 503 as for any such service.
        let pending = get_in_background(&router);
        until_held(&router, 1).await;
        router.router.set_table(one_service(8000, &[]));
        let (status, _, body) = pending.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "service web in app hello has no healthy instance yet\n"
        );

        // Removed from the table: 404.
        router.router.set_table(sleeping_service(8000));
        let pending = get_in_background(&router);
        until_held(&router, 1).await;
        router.router.set_table(RouteTable::default());
        let (status, _, _) = pending.await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn without_a_waker_held_requests_wait_for_the_table() {
    bounded(async {
        let port = instance().await;
        let router = TestRouter::start(sleeping_service(port), |_| {}).await;
        let pending = get_in_background(&router);
        until_held(&router, 1).await;
        router
            .router
            .set_table(one_service(port, &[("i-1", lo(2))]));
        assert_eq!(pending.await.unwrap().0, StatusCode::OK);
    })
    .await;
}
