//! In-flight counting, table swaps under traffic, graceful shutdown, hooks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_router::{Phase, ProxyHooks, RequestInfo, Router};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Channel};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::harness::{
    TestRouter, bounded, client, empty, eventually, full, listen_same_port, lo, one_service, send,
    serve_named, serve_upstream,
};

/// An upstream that waits for `headers` before answering, sends "part 1",
/// then waits for `rest` before sending "part 2".
async fn held_upstream(headers: Arc<Notify>, rest: Arc<Notify>) -> u16 {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_upstream(listener, move |_request| {
        let (headers, rest) = (headers.clone(), rest.clone());
        async move {
            headers.notified().await;
            let (mut sender, body) = Channel::<Bytes>::new(1);
            tokio::spawn(async move {
                sender.send_data(Bytes::from("part 1;")).await.unwrap();
                rest.notified().await;
                sender.send_data(Bytes::from("part 2")).await.unwrap();
            });
            Response::new(body.boxed())
        }
    });
    port
}

#[tokio::test]
async fn in_flight_covers_the_whole_response_body() {
    bounded(async {
        let (headers, rest) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let port = held_upstream(headers.clone(), rest.clone()).await;
        let router = TestRouter::start(one_service(port, &[("slow", lo(2))]), |_| {}).await;
        assert_eq!(router.router.in_flight("slow"), 0);

        let request = router
            .request("web.hello.localhost", "/")
            .body(empty())
            .unwrap();
        let pending = tokio::spawn(client().request(request));
        // Waiting for response headers.
        eventually(|| router.router.in_flight("slow") == 1).await;
        headers.notify_one();
        let response = pending.await.unwrap().unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "part 1;");
        // Headers sent, body not finished: still in flight.
        assert_eq!(router.router.in_flight("slow"), 1);
        rest.notify_one();
        let tail = body.collect().await.unwrap().to_bytes();
        assert_eq!(tail, "part 2");
        eventually(|| router.router.in_flight("slow") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn in_flight_is_released_when_the_client_goes_away() {
    bounded(async {
        let (headers, rest) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let port = held_upstream(headers.clone(), rest.clone()).await;
        let router = TestRouter::start(one_service(port, &[("slow", lo(2))]), |_| {}).await;

        // Gives up while waiting for headers.
        let request = router
            .request("web.hello.localhost", "/")
            .body(empty())
            .unwrap();
        let pending = tokio::spawn(client().request(request));
        eventually(|| router.router.in_flight("slow") == 1).await;
        pending.abort();
        eventually(|| router.router.in_flight("slow") == 0).await;

        // Gives up in the middle of the body.
        let request = router
            .request("web.hello.localhost", "/")
            .body(empty())
            .unwrap();
        headers.notify_one();
        let response = client().request(request).await.unwrap();
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        assert_eq!(router.router.in_flight("slow"), 1);
        drop(body);
        eventually(|| router.router.in_flight("slow") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn table_swap_under_traffic_loses_no_request() {
    const REQUESTS: usize = 400;
    const WORKERS: usize = 4;
    bounded(async {
        let mut listeners = listen_same_port(&[lo(2), lo(3)]).await;
        let port = listeners[0].local_addr().unwrap().port();
        serve_named(listeners.remove(0), "a");
        serve_named(listeners.remove(0), "b");
        let router = TestRouter::start(one_service(port, &[("a", lo(2))]), |_| {}).await;

        let done = Arc::new(AtomicUsize::new(0));
        let swapped = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let (done, swapped) = (done.clone(), swapped.clone());
            let addr = router.addr;
            workers.push(tokio::spawn(async move {
                let client = client();
                let mut failures = Vec::new();
                let mut a_after_swap = 0;
                while done.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                    let after_swap = swapped.load(Ordering::SeqCst);
                    let request = http::Request::builder()
                        .uri(format!("http://{addr}/"))
                        .header("host", "web.hello.localhost")
                        .body(empty())
                        .unwrap();
                    match client.request(request).await {
                        Ok(response) if response.status() == StatusCode::OK => {
                            let body = response.into_body().collect().await.unwrap().to_bytes();
                            if after_swap && body == "a" {
                                a_after_swap += 1;
                            }
                        }
                        Ok(response) => failures.push(response.status().to_string()),
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                (failures, a_after_swap)
            }));
        }

        eventually(|| done.load(Ordering::SeqCst) >= REQUESTS / 3).await;
        router.router.set_table(one_service(port, &[("b", lo(3))]));
        swapped.store(true, Ordering::SeqCst);

        for worker in workers {
            let (failures, a_after_swap) = worker.await.unwrap();
            assert!(failures.is_empty(), "failed requests: {failures:?}");
            assert_eq!(a_after_swap, 0, "requests started after the swap reached a");
        }
        for _ in 0..10 {
            let (_, _, body) = router.get("web.hello.localhost", "/").await;
            assert_eq!(body, "b");
        }
        eventually(|| router.router.in_flight("a") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_progress() {
    bounded(async {
        let (headers, rest) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let port = held_upstream(headers.clone(), rest.clone()).await;
        let mut router = TestRouter::start(one_service(port, &[("slow", lo(2))]), |_| {}).await;

        let request = router
            .request("web.hello.localhost", "/")
            .body(empty())
            .unwrap();
        let pending = tokio::spawn(send(request));
        eventually(|| router.router.in_flight("slow") == 1).await;

        let serving = router.shut_down();
        // The listener closes: new connections are refused.
        let addr = router.addr;
        loop {
            if TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !serving.is_finished(),
            "serve waits for the request in progress"
        );

        headers.notify_one();
        rest.notify_one();
        let (status, _, body) = pending.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "part 1;part 2");
        serving.await.unwrap().unwrap();
        assert_eq!(router.router.in_flight("slow"), 0);
    })
    .await;
}

/// Records the phases of every request as `status phase` strings.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl ProxyHooks for Recorder {
    fn on_phase(&self, request: &RequestInfo, phase: Phase<'_>) {
        let name = match phase {
            Phase::Routed => "routed",
            Phase::Forwarding => "forwarding",
            Phase::ResponseHeaders => "headers",
            Phase::Failed { .. } => "failed",
            Phase::Completed => "completed",
            _ => "other",
        };
        let status = request.status.map_or(0, |status| status.as_u16());
        self.0.lock().unwrap().push(format!("{status} {name}"));
    }
}

#[tokio::test]
async fn hooks_see_every_phase_once() {
    bounded(async {
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        serve_upstream(listener, |_request| async { Response::new(full("ok")) });
        let recorder = Arc::new(Recorder::default());
        let router = Router::with_hooks(TestRouter::config(), recorder.clone());
        router.set_table(one_service(port, &[("i", lo(2))]));
        let router = TestRouter::serve(router).await;

        router.get("web.hello.localhost", "/").await;
        eventually(|| recorder.0.lock().unwrap().len() == 4).await;
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["0 routed", "0 forwarding", "200 headers", "200 completed"]
        );

        recorder.0.lock().unwrap().clear();
        router.get("nope.hello.localhost", "/").await;
        eventually(|| recorder.0.lock().unwrap().len() == 2).await;
        assert_eq!(*recorder.0.lock().unwrap(), ["404 failed", "404 completed"]);
    })
    .await;
}
