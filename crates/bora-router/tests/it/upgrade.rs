//! `Connection: upgrade` is spliced through and counted while open.

use std::time::Duration;

use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    TestRouter, bounded, empty, eventually, full, lo, one_service, serve_upstream,
};

/// An upstream that accepts `Upgrade: echo` and then echoes every byte.
async fn echo_upstream() -> u16 {
    let listener = TcpListener::bind((lo(2), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_upstream(listener, |mut request| async move {
        if request.headers().get("upgrade").is_none_or(|v| v != "echo") {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full("expected Upgrade: echo"))
                .unwrap();
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(empty())
            .unwrap()
    });
    port
}

/// Reads a response head, byte by byte so nothing after it is consumed.
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

#[tokio::test]
async fn upgraded_connection_echoes_and_counts_as_in_flight() {
    bounded(async {
        let port = echo_upstream().await;
        let router = TestRouter::start(one_service(port, &[("ws", lo(2))]), |_| {}).await;

        let mut stream = TcpStream::connect(router.addr).await.unwrap();
        stream
            .write_all(
                b"GET /chat HTTP/1.1\r\nHost: web.hello.localhost\r\n\
                  Connection: Upgrade\r\nUpgrade: echo\r\nX-Request-Id: ws-1\r\n\r\n",
            )
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: ws-1\r\n"), "{head}");

        for message in ["hello", "over the tunnel", "bye"] {
            stream.write_all(message.as_bytes()).await.unwrap();
            let mut echoed = vec![0u8; message.len()];
            stream.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, message.as_bytes());
        }
        assert_eq!(
            router.router.in_flight("ws"),
            1,
            "an open tunnel is in flight"
        );

        drop(stream);
        eventually(|| router.router.in_flight("ws") == 0).await;
    })
    .await;
}

#[tokio::test]
async fn refused_upgrade_is_an_ordinary_response() {
    bounded(async {
        let port = echo_upstream().await;
        let router = TestRouter::start(one_service(port, &[("ws", lo(2))]), |_| {}).await;

        let mut stream = TcpStream::connect(router.addr).await.unwrap();
        stream
            .write_all(
                b"GET /chat HTTP/1.1\r\nHost: web.hello.localhost\r\n\
                  Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("http/1.1 400"), "{head}");
        let mut body = vec![0u8; "expected Upgrade: echo".len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        eventually(|| router.router.in_flight("ws") == 0).await;
    })
    .await;
}
