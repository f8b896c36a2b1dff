//! Test harness: upstream servers on loopback addresses, a router on port 0,
//! and a plain HTTP/1.1 client. Everything runs on the test's own runtime
//! and stops with it.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bora_router::{Backend, Route, RouteTable, Router, RouterConfig, ServiceRoutes};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The domain every test router serves.
pub const DOMAIN: &str = "localhost";

/// The body type of test requests and upstream responses.
pub type TestBody = BoxBody<Bytes, Infallible>;

/// How long any single test may run.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `test`, failing if it takes longer than the test deadline.
pub async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test ran past its deadline")
}

/// An empty body.
pub fn empty() -> TestBody {
    Empty::new().boxed()
}

/// A body holding `text`.
pub fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

/// A loopback address `127.0.0.<last>`.
pub fn lo(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Listeners on the same port on each of `ips` (as instances of one
/// service share a port on different IPs).
pub async fn listen_same_port(ips: &[IpAddr]) -> Vec<TcpListener> {
    'attempt: for _ in 0..50 {
        let first = TcpListener::bind(SocketAddr::new(ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind(SocketAddr::new(*ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'attempt,
            }
        }
        return listeners;
    }
    panic!("no port free on all of {ips:?}");
}

/// Serves `handler` on `listener` (HTTP/1.1 with upgrades) until the test
/// runtime stops.
pub fn serve_upstream<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

/// An upstream that answers every request with `name` as the body.
pub fn serve_named(listener: TcpListener, name: &'static str) {
    serve_upstream(listener, move |_request| async move {
        Response::builder()
            .header("x-instance", name)
            .body(full(name))
            .unwrap()
    });
}

/// A router serving on a loopback port.
pub struct TestRouter {
    pub router: Arc<Router>,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestRouter {
    /// The configuration tests start from: short timeouts.
    pub fn config() -> RouterConfig {
        let mut config = RouterConfig::new(DOMAIN);
        config.connect_timeout = Duration::from_secs(2);
        config.upstream_header_timeout = Duration::from_secs(10);
        config
    }

    /// Starts a router with short timeouts, adjusted by `configure`.
    pub async fn start(table: RouteTable, configure: impl FnOnce(&mut RouterConfig)) -> Self {
        let mut config = Self::config();
        configure(&mut config);
        let router = Router::new(config);
        router.set_table(table);
        Self::serve(router).await
    }

    /// Serves an already built router.
    pub async fn serve(router: Arc<Router>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(router.clone().serve(listener, async move {
            let _ = shutdown_rx.await;
        }));
        Self {
            router,
            addr,
            shutdown: Some(shutdown),
            serving: Some(serving),
        }
    }

    /// Starts graceful shutdown; returns the `serve` task to await.
    pub fn shut_down(&mut self) -> JoinHandle<std::io::Result<()>> {
        let _ = self.shutdown.take().expect("already shut down").send(());
        self.serving.take().expect("already shut down")
    }

    /// A request to `path` on `host`, through the router.
    pub fn request(&self, host: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .uri(format!("http://{}{path}", self.addr))
            .header(http::header::HOST, host)
    }

    /// GET `path` on `host`; returns status, headers and the whole body.
    pub async fn get(&self, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        let request = self.request(host, path).body(empty()).unwrap();
        send(request).await
    }
}

/// A plain HTTP/1.1 client with a connection pool.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request` and reads the whole response.
pub async fn send(request: Request<TestBody>) -> (StatusCode, HeaderMap, String) {
    let response = client().request(request).await.expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A table with one service `web` in app `hello`, routed at `/` on `port`.
pub fn one_service(port: u16, backends: &[(&str, IpAddr)]) -> RouteTable {
    RouteTable {
        services: vec![service("hello", "web", &[("/", port)], backends)],
        sandboxes: Vec::new(),
        models: Vec::new(),
    }
}

/// A service entry.
pub fn service(
    app: &str,
    name: &str,
    routes: &[(&str, u16)],
    backends: &[(&str, IpAddr)],
) -> ServiceRoutes {
    ServiceRoutes {
        app: app.into(),
        service: name.into(),
        routes: routes
            .iter()
            .map(|(prefix, port)| Route {
                path_prefix: (*prefix).into(),
                port: *port,
            })
            .collect(),
        backends: backends
            .iter()
            .map(|(id, ip)| Backend {
                instance_id: (*id).into(),
                ip: *ip,
            })
            .collect(),
        wakeable: false,
    }
}

/// A table with one sleeping service `web` in app `hello`: wakeable, routed
/// at `/` on `port`, no instance.
pub fn sleeping_service(port: u16) -> RouteTable {
    let mut web = service("hello", "web", &[("/", port)], &[]);
    web.wakeable = true;
    RouteTable {
        services: vec![web],
        sandboxes: Vec::new(),
        models: Vec::new(),
    }
}

/// Polls `condition` every few milliseconds until it holds.
pub async fn eventually(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
