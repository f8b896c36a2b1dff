//! The fast path, byte for byte: keep-alive and pipelining on the client
//! side, connection reuse on the instance side, every response framing,
//! HTTP/1.0, and the requests it hands to hyper.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Channel};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{TestBody, TestRouter, bounded, empty, eventually, full, lo, one_service};

const HOST: &str = "web.hello.localhost";

/// A response as a raw client reads it.
#[derive(Debug)]
struct Raw {
    /// The status line and fields, lower-cased.
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    /// The value of field `name` (lower-case), if present.
    fn field(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            (field == name).then(|| value.trim())
        })
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Reads a head byte by byte, so nothing after it is consumed.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(
            stream
                .read_u8()
                .await
                .expect("connection closed in the head"),
        );
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// Reads one response to a request with `method`: its head, then its body
/// as framed (chunked bodies are decoded).
async fn read_response(stream: &mut (impl AsyncRead + Unpin), method: &str) -> Raw {
    let mut raw = Raw {
        head: read_head(stream).await,
        body: Vec::new(),
    };
    let status = raw.status();
    if method == "HEAD" || status == 204 || status == 304 {
        return raw;
    }
    if raw.field("transfer-encoding") == Some("chunked") {
        loop {
            let line = read_line(stream).await;
            let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                // Trailers, then the blank line.
                while !read_line(stream).await.is_empty() {}
                return raw;
            }
            let start = raw.body.len();
            raw.body.resize(start + size, 0);
            stream.read_exact(&mut raw.body[start..]).await.unwrap();
            assert!(
                read_line(stream).await.is_empty(),
                "chunk data without CRLF"
            );
        }
    }
    match raw.field("content-length") {
        Some(length) => {
            raw.body.resize(length.parse().unwrap(), 0);
            stream.read_exact(&mut raw.body).await.unwrap();
        }
        None => {
            stream.read_to_end(&mut raw.body).await.unwrap();
        }
    }
    raw
}

/// One CRLF-terminated line, without the CRLF.
async fn read_line(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.push(stream.read_u8().await.unwrap());
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).unwrap()
}

/// True once the router has closed `stream` (nothing more to read).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A GET for `path` on the test host.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

/// Serves `handler` (HTTP/1.1) on `listener`, counting accepted
/// connections in the returned counter.
fn serve_counted<F, Fut>(listener: TcpListener, handler: F) -> Arc<AtomicUsize>
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(request).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    accepted
}

/// An instance answering `<method> <path> <body length>`, with a few
/// special paths: `/chunked` streams its answer, `/empty` is 204, `/big/N`
/// sends N bytes.
async fn echo_router() -> (TestRouter, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = serve_counted(listener, |request| async move {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let answer = format!("{method} {path} {}", body.len());
        if path == "/chunked" {
            let (mut sender, body) = Channel::<Bytes>::new(4);
            tokio::spawn(async move {
                for piece in ["one;", "two;", "three"] {
                    sender.send_data(Bytes::from(piece)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            return Response::new(body.boxed());
        }
        if path == "/empty" {
            return Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(empty())
                .unwrap();
        }
        if let Some(size) = path.strip_prefix("/big/") {
            let size: usize = size.parse().unwrap();
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            return Response::new(full(data));
        }
        if method == Method::HEAD {
            return Response::builder()
                .header("content-length", "5")
                .body(empty())
                .unwrap();
        }
        Response::new(full(answer))
    });
    let router = TestRouter::start(one_service(port, &[("e", lo(2))]), |_| {}).await;
    (router, accepted)
}

#[tokio::test]
async fn keep_alive_requests_share_one_upstream_connection() {
    bounded(async {
        let (router, accepted) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        for path in ["/a", "/b", "/c", "/d"] {
            client.write_all(get(path).as_bytes()).await.unwrap();
            let response = read_response(&mut client, "GET").await;
            assert_eq!(response.status(), 200, "{response:?}");
            assert_eq!(response.text(), format!("GET {path} 0"));
            assert!(response.field("x-request-id").is_some());
            assert_eq!(response.field("connection"), None);
        }
        let post = format!("POST /p HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello");
        client.write_all(post.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut client, "POST").await.text(), "POST /p 5");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one upstream connection"
        );
        assert_eq!(router.router.in_flight("e"), 0);
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    bounded(async {
        let (router, _) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let pipelined = format!(
            "{}POST /2 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc{}{}",
            get("/1"),
            get("/chunked"),
            get("/4")
        );
        client.write_all(pipelined.as_bytes()).await.unwrap();
        let mut answers = Vec::new();
        for method in ["GET", "POST", "GET", "GET"] {
            answers.push(read_response(&mut client, method).await.text().to_owned());
        }
        assert_eq!(
            answers,
            ["GET /1 0", "POST /2 3", "one;two;three", "GET /4 0"]
        );
    })
    .await;
}

#[tokio::test]
async fn chunked_responses_pass_through_and_the_connection_goes_on() {
    bounded(async {
        let (router, accepted) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        for _ in 0..3 {
            client.write_all(get("/chunked").as_bytes()).await.unwrap();
            let response = read_response(&mut client, "GET").await;
            assert_eq!(response.field("transfer-encoding"), Some("chunked"));
            assert_eq!(response.field("content-length"), None);
            assert_eq!(response.text(), "one;two;three");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the end of each chunked body was found"
        );
        eventually(|| router.router.in_flight("e") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn head_and_204_have_no_body() {
    bounded(async {
        let (router, _) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let head = format!("HEAD /h HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        let response = read_response(&mut client, "HEAD").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.field("content-length"), Some("5"));

        client.write_all(get("/empty").as_bytes()).await.unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.status(), 204);

        // Had a body followed either, this would read it instead.
        client.write_all(get("/after").as_bytes()).await.unwrap();
        assert_eq!(
            read_response(&mut client, "GET").await.text(),
            "GET /after 0"
        );
    })
    .await;
}

#[tokio::test]
async fn close_delimited_responses_end_with_the_client_connection() {
    bounded(async {
        // An HTTP/1.0-style instance: no length, the close ends the body.
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    read_head(&mut stream).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = stream.write_all(b"the end").await;
                });
            }
        });
        let router = TestRouter::start(one_service(port, &[("c", lo(2))]), |_| {}).await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        client.write_all(get("/").as_bytes()).await.unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.field("connection"), Some("close"));
        assert_eq!(response.text(), "until the end");
        assert!(is_closed(&mut client).await);
        eventually(|| router.router.in_flight("c") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const SIZE: usize = 8 * 1024 * 1024;
    bounded(async {
        let (router, _) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let head = format!("PUT /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {SIZE}\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        let piece = vec![b'u'; 64 * 1024];
        for _ in 0..SIZE / piece.len() {
            client.write_all(&piece).await.unwrap();
        }
        let response = read_response(&mut client, "PUT").await;
        assert_eq!(response.text(), format!("PUT /up {SIZE}"));

        client
            .write_all(get(&format!("/big/{SIZE}")).as_bytes())
            .await
            .unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.body.len(), SIZE);
        assert!(
            response
                .body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8),
            "the download arrived intact"
        );
    })
    .await;
}

/// An instance that answers one request per connection, keeping it open,
/// then closes it without answering once the next request arrives: the
/// stale keep-alive race, every time. Counts connections.
async fn one_request_per_connection() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                if let Some(length) = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                {
                    let mut body = vec![0u8; length.trim().parse().unwrap()];
                    stream.read_exact(&mut body).await.unwrap();
                }
                let answer = format!("connection {n}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
                let mut next = [0u8; 1];
                let _ = stream.read(&mut next).await;
                // Dropped with the next request unread.
            });
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn stale_pooled_connections_are_retried_on_a_fresh_one() {
    bounded(async {
        let (port, accepted) = one_request_per_connection().await;
        let router = TestRouter::start(one_service(port, &[("s", lo(2))]), |_| {}).await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let post = format!("POST /p HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\n\r\nbody");
        for (round, request) in [get("/"), post.clone(), get("/"), post].iter().enumerate() {
            client.write_all(request.as_bytes()).await.unwrap();
            let response = read_response(&mut client, "GET").await;
            assert_eq!(response.status(), 200, "round {round}: {}", response.text());
            assert_eq!(response.text(), format!("connection {round}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(router.router.in_flight("s"), 0);
    })
    .await;
}

#[tokio::test]
async fn connections_the_instance_closed_while_idle_are_not_used() {
    bounded(async {
        // Closes every connection 20 ms after answering.
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    read_head(&mut stream).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let router = TestRouter::start(one_service(port, &[("s", lo(2))]), |_| {}).await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        for _ in 0..3 {
            client.write_all(get("/").as_bytes()).await.unwrap();
            assert_eq!(read_response(&mut client, "GET").await.text(), "ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn http10_clients_get_their_defaults() {
    bounded(async {
        let (router, _) = echo_router().await;

        // No keep-alive asked: one response, then the close.
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let request = format!("GET /old HTTP/1.0\r\nHost: {HOST}\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.text(), "GET /old 0");
        assert_eq!(response.field("connection"), Some("close"));
        assert!(is_closed(&mut client).await);

        // Keep-alive asked: kept.
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let request =
            format!("GET /old HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
        for _ in 0..2 {
            client.write_all(request.as_bytes()).await.unwrap();
            let response = read_response(&mut client, "GET").await;
            assert_eq!(response.field("connection"), Some("keep-alive"));
            assert_eq!(response.text(), "GET /old 0");
        }

        // A chunked answer reaches an HTTP/1.0 client as plain data.
        let request =
            format!("GET /chunked HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.field("transfer-encoding"), None);
        assert_eq!(response.text(), "one;two;three");

        // Without Host: routing refuses it.
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.status(), 400);
        assert!(response.text().starts_with("request has no Host header"));
    })
    .await;
}

#[tokio::test]
async fn connection_close_is_honoured() {
    bounded(async {
        let (router, _) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        let request = format!("GET /bye HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut client, "GET").await;
        assert_eq!(response.text(), "GET /bye 0");
        assert_eq!(response.field("connection"), Some("close"));
        assert!(is_closed(&mut client).await);
    })
    .await;
}

#[tokio::test]
async fn errors_on_the_fast_path_keep_the_connection() {
    bounded(async {
        let (router, _) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        // 404 with a body the router never forwards: skipped, not parsed.
        let request =
            "POST / HTTP/1.1\r\nHost: nope.hello.localhost\r\nContent-Length: 3\r\n\r\nGET";
        client.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut client, "POST").await;
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.field("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(response.field("date").is_some());
        assert!(response.text().starts_with("no service at host"));
        client.write_all(get("/next").as_bytes()).await.unwrap();
        assert_eq!(
            read_response(&mut client, "GET").await.text(),
            "GET /next 0"
        );
    })
    .await;
}

#[tokio::test]
async fn expect_and_chunked_requests_go_through_hyper() {
    bounded(async {
        let (router, accepted) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();

        // A plain request first, on the fast path.
        client.write_all(get("/first").as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut client, "GET").await.text(), "GET /first 0");

        // Expect: 100-continue: the body follows the interim answer.
        let request = format!(
            "PUT /expect HTTP/1.1\r\nHost: {HOST}\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let interim = read_head(&mut client).await;
        assert!(interim.starts_with("http/1.1 100"), "{interim}");
        client.write_all(b"data").await.unwrap();
        assert_eq!(read_response(&mut client, "PUT").await.text(), "PUT /expect 4");

        // A chunked body, then a plain request again on the same connection.
        let request = format!(
            "POST /chunks HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n{}",
            get("/last")
        );
        client.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut client, "POST").await.text(), "POST /chunks 7");
        assert_eq!(read_response(&mut client, "GET").await.text(), "GET /last 0");
        assert!(accepted.load(Ordering::SeqCst) >= 1);
    })
    .await;
}

#[tokio::test]
async fn idle_connections_close_at_drain() {
    bounded(async {
        let (mut router, _) = echo_router().await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        client.write_all(get("/").as_bytes()).await.unwrap();
        read_response(&mut client, "GET").await;
        let serving = router.shut_down();
        assert!(
            is_closed(&mut client).await,
            "an idle connection closes at once"
        );
        serving.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn heads_are_relayed_byte_for_byte() {
    bounded(async {
        // Records the request head it gets; answers with fields in mixed case.
        let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        head.push(stream.read_u8().await.unwrap());
                    }
                    seen_tx.send(String::from_utf8(head).unwrap()).unwrap();
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 201 Made It\r\nX-Mixed-Case: Yes\r\nConnection: X-Hop\r\n\
                              X-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        let router = TestRouter::start(one_service(port, &[("r", lo(2))]), |_| {}).await;
        let mut client = TcpStream::connect(router.addr).await.unwrap();
        client
            .write_all(
                b"GET /raw?q=1 HTTP/1.1\r\nHost: web.hello.localhost\r\nX-Custom: A\r\n\
                  Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Request-Id: raw-1\r\n\
                  Accept: */*\r\n\r\n",
            )
            .await
            .unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"ok") {
            response.push(client.read_u8().await.unwrap());
        }
        assert_eq!(
            String::from_utf8(response).unwrap(),
            "HTTP/1.1 201 Made It\r\nX-Mixed-Case: Yes\r\nContent-Length: 2\r\n\
             x-request-id: raw-1\r\n\r\nok"
        );
        assert_eq!(
            seen.recv().await.unwrap(),
            "GET /raw?q=1 HTTP/1.1\r\nHost: web.hello.localhost\r\nX-Custom: A\r\n\
             Accept: */*\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: web.hello.localhost\r\nx-request-id: raw-1\r\n\r\n"
        );
    })
    .await;
}
