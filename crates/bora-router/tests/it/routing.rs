//! Host and path routing, and balancing across instances.

use std::collections::HashMap;

use bora_router::RouteTable;
use http::StatusCode;
use tokio::net::TcpListener;

use crate::harness::{
    TestRouter, bounded, listen_same_port, lo, one_service, serve_named, service,
};

#[tokio::test]
async fn routes_by_host_and_longest_path_prefix() {
    bounded(async {
        let root = TcpListener::bind((lo(2), 0)).await.unwrap();
        let api = TcpListener::bind((lo(2), 0)).await.unwrap();
        let docs = TcpListener::bind((lo(2), 0)).await.unwrap();
        let ports = [&root, &api, &docs].map(|l| l.local_addr().unwrap().port());
        serve_named(root, "web-root");
        serve_named(api, "web-api");
        serve_named(docs, "docs");
        let table = RouteTable {
            services: vec![
                service(
                    "hello",
                    "web",
                    &[("/", ports[0]), ("/api/", ports[1])],
                    &[("w1", lo(2))],
                ),
                service("hello", "docs", &[("/guide", ports[2])], &[("d1", lo(2))]),
            ],
            sandboxes: Vec::new(),
            models: Vec::new(),
        };
        let router = TestRouter::start(table, |_| {}).await;

        for (host, path, expected) in [
            ("web.hello.localhost", "/", "web-root"),
            ("web.hello.localhost", "/index.html?x=1", "web-root"),
            ("WEB.Hello.LocalHost:8080", "/api", "web-api"),
            ("web.hello.localhost", "/api/users?id=3", "web-api"),
            ("web.hello.localhost", "/apix", "web-root"),
            ("docs.hello.localhost.", "/guide/intro", "docs"),
        ] {
            let (status, _, body) = router.get(host, path).await;
            assert_eq!(status, StatusCode::OK, "{host}{path}");
            assert_eq!(body, expected, "{host}{path}");
        }

        let (status, headers, body) = router.get("x.y.localhost:8080", "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            "no service at host \"x.y.localhost\": deploy one with bora deploy, or check the host name\n"
        );
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");

        let (status, _, body) = router.get("docs.hello.localhost", "/other").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.starts_with("service docs in app hello has no route for path \"/other\""),
            "{body}"
        );

        let (status, _, _) = router.get("web.hello.example.com", "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn balances_evenly_across_two_instances() {
    bounded(async {
        let mut listeners = listen_same_port(&[lo(2), lo(3)]).await;
        let port = listeners[0].local_addr().unwrap().port();
        serve_named(listeners.remove(0), "a");
        serve_named(listeners.remove(0), "b");
        let router =
            TestRouter::start(one_service(port, &[("a", lo(2)), ("b", lo(3))]), |_| {}).await;

        let mut hits: HashMap<String, usize> = HashMap::new();
        for _ in 0..20 {
            let (status, headers, body) = router.get("web.hello.localhost", "/").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers["x-instance"], body.as_str());
            *hits.entry(body).or_default() += 1;
        }
        assert_eq!(hits["a"], 10, "{hits:?}");
        assert_eq!(hits["b"], 10, "{hits:?}");
    })
    .await;
}

#[tokio::test]
async fn concurrent_requests_go_to_the_least_busy_instance() {
    bounded(async {
        use std::sync::Arc;
        use tokio::sync::Notify;

        // Instance "a" holds its requests until released; "b" answers at once.
        let release = Arc::new(Notify::new());
        let mut listeners = listen_same_port(&[lo(2), lo(3)]).await;
        let port = listeners[0].local_addr().unwrap().port();
        let held = release.clone();
        crate::harness::serve_upstream(listeners.remove(0), move |_request| {
            let held = held.clone();
            async move {
                held.notified().await;
                http::Response::new(crate::harness::full("a"))
            }
        });
        serve_named(listeners.remove(0), "b");
        let router =
            TestRouter::start(one_service(port, &[("a", lo(2)), ("b", lo(3))]), |_| {}).await;

        // The first request goes to "a" (cursor starts there) and stays.
        let addr = router.addr;
        let slow = tokio::spawn(async move {
            let request = http::Request::builder()
                .uri(format!("http://{addr}/"))
                .header("host", "web.hello.localhost")
                .body(crate::harness::empty())
                .unwrap();
            crate::harness::send(request).await
        });
        crate::harness::eventually(|| router.router.in_flight("a") == 1).await;

        // While "a" is busy, everything goes to "b".
        for _ in 0..5 {
            let (_, _, body) = router.get("web.hello.localhost", "/").await;
            assert_eq!(body, "b");
        }
        release.notify_one();
        let (status, _, body) = slow.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    })
    .await;
}

#[tokio::test]
async fn sandboxes_are_reached_by_their_id_header_or_host_on_any_port() {
    use crate::harness::{empty, send};
    use bora_router::SandboxRoute;
    bounded(async {
        let envd = TcpListener::bind((lo(4), 0)).await.unwrap();
        let app = TcpListener::bind((lo(4), 0)).await.unwrap();
        let other = TcpListener::bind((lo(5), 0)).await.unwrap();
        let ports = [&envd, &app, &other].map(|l| l.local_addr().unwrap().port());
        serve_named(envd, "sb1-envd");
        serve_named(app, "sb1-app");
        serve_named(other, "sb2");
        let table = RouteTable {
            services: vec![service("hello", "web", &[("/", ports[0])], &[])],
            sandboxes: vec![
                SandboxRoute {
                    id: "sb1".into(),
                    ip: lo(4),
                },
                SandboxRoute {
                    id: "sb2".into(),
                    ip: lo(5),
                },
            ],
            models: Vec::new(),
        };
        let router = TestRouter::start(table, |_| {}).await;
        let by_header = |id: &str, port: &str| {
            router
                .request("127.0.0.1:9999", "/health")
                .header("E2b-Sandbox-Id", id)
                .header("E2b-Sandbox-Port", port)
                .body(empty())
                .unwrap()
        };
        for (id, port, expected) in [
            ("sb1", ports[0], "sb1-envd"),
            ("sb1", ports[1], "sb1-app"),
            ("sb2", ports[2], "sb2"),
        ] {
            let (status, _, body) = send(by_header(id, &port.to_string())).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, expected));
        }
        // The host form, as E2B's SDKs build it without a sandbox URL.
        let (status, _, body) = router
            .get(&format!("{}-sb1.localhost", ports[1]), "/")
            .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "sb1-app"));

        // An unknown sandbox is a 502 "was not found", as E2B's proxy
        // answers (the SDKs read it as "not running"); a bad port is the
        // client's mistake; a sandbox id never reaches anything but its own
        // address.
        let (status, _, body) = send(by_header("sb9", "49983")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.starts_with("sandbox \"sb9\" was not found"), "{body}");
        let (status, _, body) = send(by_header("sb1", "http")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("E2b-Sandbox-Port \"http\""), "{body}");
        let (status, _, _) = router.get("80-sb9.localhost", "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    })
    .await;
}
