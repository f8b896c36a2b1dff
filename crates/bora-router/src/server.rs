//! Accepting client connections and shutting down gracefully.
//!
//! Each accepted connection runs on its own task as an HTTP/1.1 connection
//! with upgrades enabled. All connection and tunnel tasks of one `serve`
//! call are tracked, so shutdown can wait for them:
//!
//! 1. the shutdown future resolves: stop accepting, drop the listener;
//! 2. every connection is told to shut down gracefully: idle keep-alive
//!    connections close now, busy ones after their current response;
//! 3. wait for all tracked tasks, upgraded tunnels included.
//!
//! If the `serve` future is dropped instead (say, by a timeout around it),
//! the remaining connections and tunnels are cut.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Router;

/// How long a client may take to send request headers, and how long an idle
/// keep-alive connection stays open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The tasks of one `serve` call, shared with request handlers so they can
/// spawn tunnels that shutdown waits for.
pub(crate) struct ServeTasks {
    /// Tracks connection and tunnel tasks.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when `serve` returns or is dropped: cut everything.
    pub(crate) stop: CancellationToken,
    /// Cancelled when shutdown starts: finish what is in progress.
    drain: CancellationToken,
}

pub(crate) async fn serve(
    router: Arc<Router>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tasks = Arc::new(ServeTasks {
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
        drain: CancellationToken::new(),
    });
    // Cut remaining connections if this future is dropped mid-way.
    let _cut_on_drop = tasks.stop.clone().drop_guard();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, domain = %router.config.domain, "router listening");
    }

    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let router = router.clone();
                    let conn_tasks = tasks.clone();
                    tasks.tracker.spawn(serve_connection(router, stream, client, conn_tasks));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    tracing::info!(
        open = tasks.tracker.len(),
        "router shutting down: waiting for requests in progress"
    );
    tasks.drain.cancel();
    tasks.tracker.close();
    tasks.tracker.wait().await;
    tracing::info!("router stopped");
    Ok(())
}

/// Serves one client connection until it closes or the server stops.
async fn serve_connection(
    router: Arc<Router>,
    stream: TcpStream,
    client: SocketAddr,
    tasks: Arc<ServeTasks>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    let handler_tasks = tasks.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let tasks = handler_tasks.clone();
        async move { Ok::<_, Infallible>(router.handle(request, client, &tasks).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%client, %error, "client connection ended with an error");
                }
                break;
            }
            () = tasks.drain.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tasks.stop.cancelled() => break,
        }
    }
}
