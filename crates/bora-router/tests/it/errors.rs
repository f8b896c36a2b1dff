//! 503, 502, 504 and the connect retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{
    TestRouter, bounded, full, listen_same_port, lo, one_service, send, serve_named, serve_upstream,
};

#[tokio::test]
async fn no_healthy_instance_is_503_with_retry_after() {
    bounded(async {
        let router = TestRouter::start(one_service(8000, &[]), |_| {}).await;
        let (status, headers, body) = router.get("web.hello.localhost", "/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "service web in app hello has no healthy instance yet\n"
        );
        assert_eq!(headers["retry-after"], "1");
        assert!(headers.contains_key("x-request-id"));
    })
    .await;
}

#[tokio::test]
async fn closed_port_is_502_naming_service_and_instance() {
    bounded(async {
        // Bind and drop: nothing listens on that port any more.
        let closed = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);

        let router = TestRouter::start(one_service(port, &[("i-dead", lo(2))]), |_| {}).await;
        let (status, headers, body) = router.get("web.hello.localhost", "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body,
            format!(
                "service web in app hello: instance i-dead at 127.0.0.2:{port}: could not connect: connection refused\n"
            )
        );
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(router.router.in_flight("i-dead"), 0);
    })
    .await;
}

#[tokio::test]
async fn refused_connect_is_retried_on_the_other_instance() {
    bounded(async {
        let mut listeners = listen_same_port(&[lo(2), lo(3)]).await;
        let port = listeners[0].local_addr().unwrap().port();
        drop(listeners.remove(0)); // 127.0.0.2: refused
        serve_named(listeners.remove(0), "b");
        let router =
            TestRouter::start(one_service(port, &[("dead", lo(2)), ("b", lo(3))]), |_| {}).await;

        for _ in 0..6 {
            // POST with a body: the retried request must arrive whole.
            let request = router
                .request("web.hello.localhost", "/upload")
                .method("POST")
                .body(full("payload"))
                .unwrap();
            let (status, _, body) = crate::harness::send(request).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "b");
        }
        assert_eq!(router.router.in_flight("dead"), 0);
        assert_eq!(router.router.in_flight("b"), 0);
    })
    .await;
}

/// An instance that reads the request and hangs up without answering, on
/// lo(2); a well-behaved one counting its hits on lo(3).
async fn rude_and_polite() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let mut listeners = listen_same_port(&[lo(2), lo(3)]).await;
    let port = listeners[0].local_addr().unwrap().port();
    let rude = listeners.remove(0);
    let rude_hits = Arc::new(AtomicUsize::new(0));
    let counted = rude_hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = rude.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let polite_hits = Arc::new(AtomicUsize::new(0));
    let hits = polite_hits.clone();
    serve_upstream(listeners.remove(0), move |_request| {
        hits.fetch_add(1, Ordering::SeqCst);
        async { Response::new(full("b")) }
    });
    (port, rude_hits, polite_hits)
}

#[tokio::test]
async fn a_sent_request_with_a_body_is_never_retried() {
    bounded(async {
        let (port, _, b_hits) = rude_and_polite().await;
        let router =
            TestRouter::start(one_service(port, &[("a", lo(2)), ("b", lo(3))]), |_| {}).await;

        // The balancer starts at the first instance: "a".
        let request = router
            .request("web.hello.localhost", "/")
            .method("POST")
            .body(full("order #1"))
            .unwrap();
        let (status, _, body) = send(request).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(
            body.starts_with(&format!(
                "service web in app hello: instance a at 127.0.0.2:{port}:"
            )),
            "{body}"
        );
        assert_eq!(
            b_hits.load(Ordering::SeqCst),
            0,
            "a sent request with a body is never retried"
        );
    })
    .await;
}

#[tokio::test]
async fn a_bodiless_get_dropped_unanswered_is_replayed_once() {
    bounded(async {
        let (port, a_hits, b_hits) = rude_and_polite().await;
        let router =
            TestRouter::start(one_service(port, &[("a", lo(2)), ("b", lo(3))]), |_| {}).await;
        let (status, _, body) = router.get("web.hello.localhost", "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "b");
        assert_eq!(a_hits.load(Ordering::SeqCst), 1);
        assert_eq!(b_hits.load(Ordering::SeqCst), 1);

        // With only the rude instance, the GET is sent twice, then fails.
        let router = TestRouter::start(one_service(port, &[("a", lo(2))]), |_| {}).await;
        let before = a_hits.load(Ordering::SeqCst);
        let (status, _, _) = router.get("web.hello.localhost", "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            a_hits.load(Ordering::SeqCst) - before,
            2,
            "one replay, no more"
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_response_is_502() {
    bounded(async {
        let garbage = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = garbage.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = garbage.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
            }
        });
        let router = TestRouter::start(one_service(port, &[("g", lo(2))]), |_| {}).await;
        let (status, _, body) = router.get("web.hello.localhost", "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.ends_with(": sent a malformed response\n"), "{body}");
    })
    .await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    bounded(async {
        let slow = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = slow.local_addr().unwrap().port();
        serve_upstream(slow, |_request| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(full("too late"))
        });
        let router = TestRouter::start(one_service(port, &[("s", lo(2))]), |config| {
            config.upstream_header_timeout = Duration::from_millis(300);
        })
        .await;
        let (status, headers, body) = router.get("web.hello.localhost", "/").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            body,
            format!("service web in app hello: instance s at 127.0.0.2:{port}: no response within 300ms\n")
        );
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(router.router.in_flight("s"), 0);
    })
    .await;
}
