//! Bodies flow through as they are produced, in both directions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Channel};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::harness::{
    TestRouter, bounded, client, eventually, full, lo, one_service, serve_upstream,
};

#[tokio::test]
async fn streamed_response_reaches_the_client_before_it_ends() {
    bounded(async {
        // The upstream sends "first", then sends "last" only once the client
        // has seen "first": a buffering proxy would deadlock here.
        let client_saw_first = Arc::new(Notify::new());
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let saw_first = client_saw_first.clone();
        serve_upstream(listener, move |_request| {
            let saw_first = saw_first.clone();
            async move {
                let (mut sender, body) = Channel::<Bytes>::new(1);
                tokio::spawn(async move {
                    sender
                        .send_data(Bytes::from("data: first\n\n"))
                        .await
                        .unwrap();
                    saw_first.notified().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    sender
                        .send_data(Bytes::from("data: last\n\n"))
                        .await
                        .unwrap();
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body.boxed())
                    .unwrap()
            }
        });
        let router = TestRouter::start(one_service(port, &[("s", lo(2))]), |_| {}).await;

        let request = router
            .request("web.hello.localhost", "/events")
            .body(crate::harness::empty())
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first chunk must arrive before the last is sent")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(first, "data: first\n\n");
        assert_eq!(router.router.in_flight("s"), 1, "the body is still open");
        client_saw_first.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "data: last\n\n");
        eventually(|| router.router.in_flight("s") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn large_upload_streams_through_without_buffering() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: u64 = 50 * 1024 * 1024;
    bounded(async {
        // The upstream counts bytes as they arrive and answers with the total.
        let received = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counter = received.clone();
        serve_upstream(listener, move |request| {
            let counter = counter.clone();
            async move {
                let mut body = request.into_body();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        counter.fetch_add(data.len() as u64, Ordering::SeqCst);
                    }
                }
                Response::new(full(counter.load(Ordering::SeqCst).to_string()))
            }
        });
        let router = TestRouter::start(one_service(port, &[("s", lo(2))]), |_| {}).await;

        let (mut sender, body) = Channel::<Bytes>::new(4);
        let arrived = received.clone();
        let uploader = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let mut sent = 0u64;
            while sent < TOTAL {
                sender.send_data(chunk.clone()).await.unwrap();
                sent += CHUNK as u64;
                if sent == TOTAL / 2 {
                    // Half sent: the instance must already be receiving. A
                    // proxy that buffered the upload would hang here.
                    eventually(|| arrived.load(Ordering::SeqCst) >= TOTAL / 4).await;
                    assert!(arrived.load(Ordering::SeqCst) < TOTAL);
                }
            }
        });
        let request = router
            .request("web.hello.localhost", "/upload")
            .method("POST")
            .header("content-length", TOTAL.to_string())
            .body(body.boxed())
            .unwrap();
        let (status, _, answer) = crate::harness::send(request).await;
        uploader.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, TOTAL.to_string());
    })
    .await;
}
