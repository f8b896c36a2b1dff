//! Accepting client connections and shutting down gracefully.
//!
//! The router runs like nginx: a fixed number of worker threads (one per
//! CPU by default), each with its own single-threaded tokio runtime, all
//! accepting from the same listening socket. A connection lives on the
//! worker that accepted it — its requests, the upstream connections they
//! use (each worker has its own pool) and its tunnels — so the hot path
//! never hands work between threads: no work stealing, no cross-thread
//! wake-ups, no contended locks. Shared state (the route table, counters)
//! is read lock-free.
//!
//! Each accepted connection runs on its own task, first on the fast path
//! (`passthrough`: plain HTTP/1.1 requests relayed as bytes over the
//! worker's own pool of upstream connections), handed to hyper as an
//! HTTP/1.1 connection with upgrades enabled at its first request that is
//! not plain. All connection and tunnel tasks are tracked, so shutdown can
//! wait for them:
//!
//! 1. the shutdown future resolves: every worker stops accepting, and the
//!    listener closes;
//! 2. every connection is told to shut down gracefully: idle keep-alive
//!    connections close now, busy ones after their current response;
//! 3. wait for all tracked tasks, upgraded tunnels included, then the
//!    workers end.
//!
//! If the `serve` future is dropped instead (say, by a timeout around it),
//! the remaining connections and tunnels are cut.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Router;
use crate::body::RequestBody;
use crate::passthrough;
use crate::pool::UpstreamPool;

/// How long a client may take to send request headers, and how long an idle
/// keep-alive connection stays open.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The HTTP client one worker forwards with. Its pooled connections belong
/// to that worker's runtime.
pub(crate) type UpstreamClient = Client<HttpConnector, RequestBody>;

/// The tasks of one worker, shared with request handlers so they can spawn
/// tunnels that shutdown waits for.
pub(crate) struct ServeTasks {
    /// Tracks connection and tunnel tasks.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when `serve` returns or is dropped: cut everything.
    pub(crate) stop: CancellationToken,
    /// Cancelled when shutdown starts: finish what is in progress.
    pub(crate) drain: CancellationToken,
    /// Set once the worker saw `drain`, before `drained` is notified: a
    /// cheap check for the hot path.
    draining: AtomicBool,
    /// Notified once the worker saw `drain`.
    drained: Notify,
    /// This worker's connections to instances, for hyper's path.
    pub(crate) client: UpstreamClient,
    /// This worker's idle connections to instances, for the fast path.
    pub(crate) pool: UpstreamPool,
    /// This worker's connections to model replicas, for the gateway
    /// (whose request bodies are read in full first).
    pub(crate) gateway_client: GatewayClient,
}

/// The HTTP client one worker sends gateway requests with.
pub(crate) type GatewayClient = Client<HttpConnector, http_body_util::Full<bytes::Bytes>>;

impl ServeTasks {
    /// Has shutdown started? (Connections then close after their response.)
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once the worker saw the start of shutdown (after
    /// `is_draining` turned true); enable it to miss no drain.
    pub(crate) fn drained(&self) -> Notified<'_> {
        self.drained.notified()
    }
}

pub(crate) async fn serve(
    router: Arc<Router>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let drain = CancellationToken::new();
    // Cut remaining connections if this future is dropped mid-way.
    let _cut_on_drop = stop.clone().drop_guard();
    let addr = listener.local_addr()?;
    let listener = listener.into_std()?;
    let workers = router.config.workers();

    let shares = Arc::new(Shares::new(workers));
    let mut finished = Vec::with_capacity(workers);
    for index in 0..workers {
        let listener = listener.try_clone()?;
        let (router, stop, drain) = (router.clone(), stop.clone(), drain.clone());
        let share = Share {
            shares: shares.clone(),
            worker: index,
        };
        let (done, finished_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("bora-router-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => worker(router, listener, share, stop, drain).await,
                        Err(error) => tracing::error!(%error, "router worker cannot listen"),
                    }
                });
                let _ = done.send(());
            })?;
        finished.push(finished_rx);
    }
    // The workers hold their own handles on the socket.
    drop(listener);
    // The gateway reads its replicas' load until shutdown starts.
    tokio::spawn(crate::gateway::watch_replicas(
        router.clone(),
        drain.clone(),
    ));
    tracing::info!(%addr, workers, domain = %router.config.domain, "router listening");

    shutdown.await;
    tracing::info!("router shutting down: waiting for requests in progress");
    drain.cancel();
    for worker in finished {
        let _ = worker.await;
    }
    tracing::info!("router stopped");
    Ok(())
}

/// One worker: accepts and serves connections on its own runtime until
/// `drain` (finish what is open) or `stop` (cut it).
async fn worker(
    router: Arc<Router>,
    listener: TcpListener,
    share: Share,
    stop: CancellationToken,
    drain: CancellationToken,
) {
    let tasks = Arc::new(ServeTasks {
        tracker: TaskTracker::new(),
        stop,
        drain,
        client: worker_client(&router),
        gateway_client: worker_client(&router),
        pool: UpstreamPool::new(router.config.pool_idle_timeout),
        draining: AtomicBool::new(false),
        drained: Notify::new(),
    });
    tasks.tracker.spawn(sweep_pool(tasks.clone()));
    loop {
        // Leave new connections to the other workers while this one has
        // more than its share: wait until the shares change.
        let changed = share.shares.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let turn = share.may_accept();
        tokio::select! {
            () = tasks.drain.cancelled() => {
                tasks.draining.store(true, Ordering::Release);
                tasks.drained.notify_waiters();
                break;
            }
            () = tasks.stop.cancelled() => break,
            () = changed, if !turn => {}
            accepted = listener.accept(), if turn => match accepted {
                Ok((stream, client)) => {
                    let router = router.clone();
                    let conn_tasks = tasks.clone();
                    let open = share.open();
                    tasks.tracker.spawn(async move {
                        serve_connection(router, stream, client, conn_tasks).await;
                        drop(open);
                    });
                }
                // Another worker took it.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    tasks.tracker.close();
    tokio::select! {
        () = tasks.tracker.wait() => {}
        () = tasks.stop.cancelled() => {}
    }
}

/// A keep-alive HTTP/1.1 client for one worker: to instances
/// ([`UpstreamClient`]) or to model replicas ([`GatewayClient`]).
fn worker_client<B>(router: &Router) -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(router.config.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(router.config.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// How many connections more than the least-loaded worker a worker may
/// have open and still accept.
const ACCEPT_SLACK: usize = 1;

/// The open connections of every worker. All workers are woken by a new
/// connection, and the first to run would take a whole burst of them (one
/// thread then serves everything while the others idle, as a benchmark's
/// 64 connections opened at once show); so a worker accepts only while it
/// has at most [`ACCEPT_SLACK`] more open connections than the least-loaded
/// one. The least-loaded worker always accepts, so no connection waits for
/// a turn that never comes. (nginx similarly stops accepting in a worker
/// whose connections run out.)
struct Shares {
    open: Box<[AtomicUsize]>,
    /// Notified whenever a count changes.
    changed: Notify,
}

impl Shares {
    fn new(workers: usize) -> Self {
        Self {
            open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            changed: Notify::new(),
        }
    }
}

/// One worker's place in [`Shares`].
struct Share {
    shares: Arc<Shares>,
    worker: usize,
}

impl Share {
    /// Is it this worker's turn to accept?
    fn may_accept(&self) -> bool {
        let loads: Vec<usize> = self
            .shares
            .open
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .collect();
        has_turn(&loads, self.worker)
    }

    /// Counts a connection at this worker until the guard is dropped.
    fn open(&self) -> OpenConnection {
        self.shares.open[self.worker].fetch_add(1, Ordering::Relaxed);
        self.shares.changed.notify_waiters();
        OpenConnection {
            shares: self.shares.clone(),
            worker: self.worker,
        }
    }
}

/// A connection counted in [`Shares`].
struct OpenConnection {
    shares: Arc<Shares>,
    worker: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.shares.open[self.worker].fetch_sub(1, Ordering::Relaxed);
        self.shares.changed.notify_waiters();
    }
}

/// May worker `me` accept, given every worker's open connections?
fn has_turn(loads: &[usize], me: usize) -> bool {
    let least = loads.iter().copied().min().unwrap_or(0);
    loads
        .get(me)
        .is_none_or(|&mine| mine <= least + ACCEPT_SLACK)
}

/// Drops the worker's expired idle upstream connections now and then, until
/// shutdown starts.
async fn sweep_pool(tasks: Arc<ServeTasks>) {
    let period = tasks.pool.idle_timeout().max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tasks.drain.cancelled() => return,
            () = tasks.stop.cancelled() => return,
            () = tokio::time::sleep(period) => tasks.pool.sweep(),
        }
    }
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
    let stop = tasks.stop.clone();
    tokio::select! {
        () = passthrough::serve(router, stream, client, tasks) => {}
        () = stop.cancelled() => {}
    }
}

/// Serves a client connection with hyper (HTTP/1.1, upgrades enabled) until
/// it closes; at drain, idle connections close at once, busy ones after
/// their current response. (The caller cuts it when the server stops.)
pub(crate) async fn serve_hyper<I>(
    router: Arc<Router>,
    io: I,
    client: SocketAddr,
    tasks: Arc<ServeTasks>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler_tasks = tasks.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let tasks = handler_tasks.clone();
        async move { Ok::<_, Infallible>(router.handle(request, client, &tasks).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_worker_always_has_a_turn() {
        assert!(has_turn(&[0], 0));
        assert!(has_turn(&[7], 0), "a lone worker always accepts");
        assert!(has_turn(&[0, 0], 0) && has_turn(&[0, 0], 1));
        assert!(has_turn(&[1, 0], 0), "within the slack");
        assert!(!has_turn(&[2, 0], 0));
        assert!(has_turn(&[2, 0], 1));
        assert!(has_turn(&[5, 4, 6], 1) && has_turn(&[5, 4, 6], 0) && !has_turn(&[5, 4, 6], 2));
    }

    #[test]
    fn bursts_split_evenly() {
        // Whoever runs takes a connection if it has a turn: the first
        // worker runs most often, yet the split stays even.
        let mut loads = [0usize; 2];
        for round in 0..64 {
            let worker = if round % 5 == 4 { 1 } else { 0 };
            let taker = if has_turn(&loads, worker) {
                worker
            } else {
                1 - worker
            };
            assert!(has_turn(&loads, taker));
            loads[taker] += 1;
        }
        assert!(loads[0].abs_diff(loads[1]) <= ACCEPT_SLACK + 1, "{loads:?}");
    }
}
