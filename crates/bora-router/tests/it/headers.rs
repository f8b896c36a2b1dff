//! What the instance sees and what the client gets back, header-wise.

use std::collections::HashMap;

use http::{Response, StatusCode};
use tokio::net::TcpListener;

use crate::harness::{TestRouter, bounded, empty, full, lo, one_service, send, serve_upstream};

/// Parses the `name: value` lines the echo upstream answers with.
fn parse(body: &str) -> HashMap<String, Vec<String>> {
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for line in body.lines() {
        let (name, value) = line.split_once(": ").unwrap();
        headers.entry(name.into()).or_default().push(value.into());
    }
    headers
}

async fn echo_router() -> TestRouter {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Answers with the request's headers, plus some hop-by-hop ones of its own.
    serve_upstream(listener, |request| async move {
        let mut lines = String::new();
        for (name, value) in request.headers() {
            lines.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
        }
        Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "basic")
            .header("x-request-id", "made-up-by-upstream")
            .header("x-upstream", "yes")
            .body(full(lines))
            .unwrap()
    });
    TestRouter::start(one_service(port, &[("e", lo(2))]), |_| {}).await
}

#[tokio::test]
async fn forwarding_headers_host_and_hop_by_hop() {
    bounded(async {
        let router = echo_router().await;
        let request = router
            .request("web.hello.localhost:8080", "/headers")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-request-id", "client-id-42")
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=9")
            .header("proxy-authorization", "basic abc")
            .header("te", "trailers")
            .header("x-custom", "kept")
            .body(empty())
            .unwrap();
        let (status, response_headers, body) = send(request).await;
        assert_eq!(status, StatusCode::OK);
        let seen = parse(&body);

        assert_eq!(seen["host"], ["web.hello.localhost:8080"]);
        assert_eq!(seen["x-forwarded-for"], ["203.0.113.9, 127.0.0.1"]);
        assert_eq!(seen["x-forwarded-proto"], ["http"]);
        assert_eq!(seen["x-forwarded-host"], ["web.hello.localhost:8080"]);
        assert_eq!(seen["x-request-id"], ["client-id-42"]);
        assert_eq!(seen["x-custom"], ["kept"]);
        for dropped in [
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "te",
            "upgrade",
        ] {
            assert!(
                !seen.contains_key(dropped),
                "{dropped} reached the instance"
            );
        }
        if let Some(connection) = seen.get("connection") {
            assert!(!connection.iter().any(|v| v.contains("x-secret")));
        }

        assert_eq!(response_headers["x-request-id"], "client-id-42");
        assert_eq!(response_headers["x-upstream"], "yes");
        for dropped in ["x-hop", "keep-alive", "proxy-authenticate"] {
            assert!(
                !response_headers.contains_key(dropped),
                "{dropped} reached the client"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn insane_request_ids_are_replaced_by_fresh_ones() {
    bounded(async {
        let router = echo_router().await;
        let mut given = Vec::new();
        for sent in [None, Some("has spaces in it"), Some("\"quoted\"")] {
            let mut request = router.request("web.hello.localhost", "/");
            if let Some(id) = sent {
                request = request.header("x-request-id", id);
            }
            let (_, response_headers, body) = send(request.body(empty()).unwrap()).await;
            let seen = parse(&body);
            let id = response_headers["x-request-id"].to_str().unwrap();
            assert_ne!(Some(id), sent);
            assert!(
                id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(!given.contains(&id.to_string()), "{id} was given twice");
            given.push(id.to_string());
            assert_eq!(
                seen["x-request-id"],
                [id],
                "instance and client see the same id"
            );
        }
    })
    .await;
}
