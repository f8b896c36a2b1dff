//! Connections to instances: a pool of HTTP/1.1 keep-alive connections, each
//! driven by the request that is using it.
//!
//! A pooled client that runs every connection on a task of its own hands
//! each request to that task and each response back through channels: two
//! task wake-ups per request, often across threads, and a syscall each time
//! one wakes a parked worker. Here the request's own task drives the
//! connection instead:
//!
//! 1. [`UpstreamPool::send`] takes an idle connection to the instance (or
//!    connects), writes the request and polls the connection until the
//!    response head arrives;
//! 2. the response body ([`UpstreamConn::poll_body`]) keeps polling it while
//!    the body streams to the client;
//! 3. once the response is complete, the connection goes back to the pool
//!    ([`UpstreamConn::release`]); a connection whose exchange did not end
//!    cleanly is closed.
//!
//! Nobody polls an idle pooled connection. Whether the instance closed it
//! is checked when it is taken out; a reaper task closes those idle for
//! longer than the pool idle timeout (and those the instance closed).
//!
//! Wake-ups that a connection's own polling causes (hyper's internal
//! channels between the response and the connection) are caught by
//! [`InlineWaker`] and turn into another round of polling, not into a
//! rescheduled task.
//!
//! An upgrade request's connection runs on a task of its own, as upgrading
//! needs: it never comes back to the pool.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// The future that reads and writes one connection.
type Driver = http1::Connection<TokioIo<TcpStream>, RequestBody>;

/// How many times one poll goes round again after waking itself, before it
/// yields to the scheduler instead (as the coop budget asks once spent).
const MAX_INLINE_ROUNDS: usize = 16;

/// Idle keep-alive connections to instances, by address.
pub(crate) struct UpstreamPool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Whether the reaper task runs (it starts with the first pooled
    /// connection, on that connection's runtime).
    reaper_started: AtomicBool,
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection: nothing was sent. `TimedOut` past the connect timeout.
    Connect(io::Error),
    /// The exchange failed once the request was on a connection.
    Exchange(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "tcp connect error: {error}"),
            Self::Exchange(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(error) => Some(error),
            Self::Exchange(error) => Some(error),
        }
    }
}

impl UpstreamPool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::default(),
            connect_timeout,
            idle_timeout,
            reaper_started: AtomicBool::new(false),
        })
    }

    /// Sends `request` to the instance at `addr` on an idle pooled
    /// connection, or a new one, and waits for the response head, driving the
    /// connection meanwhile. Returns the connection along with the response,
    /// for its body: see [`UpstreamConn::poll_body`]. With `upgrade`, the
    /// connection runs on a task of its own and `None` comes back.
    ///
    /// A request that a pooled connection closed before writing goes again
    /// on a new connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut request: Request<RequestBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<UpstreamConn>), UpstreamError> {
        if let Some(conn) = self.checkout(addr) {
            match conn.exchange(request, upgrade).await {
                Ok(done) => return Ok(done),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        tracing::debug!(%addr, "pooled connection closed before the request went out");
                        request = unsent;
                    }
                    None => return Err(UpstreamError::Exchange(error.into_error())),
                },
            }
        }
        let conn = self.connect(addr).await.map_err(UpstreamError::Connect)?;
        conn.exchange(request, upgrade)
            .await
            .map_err(|error| UpstreamError::Exchange(error.into_error()))
    }

    /// An idle connection to `addr` that is still open, if there is one.
    fn checkout(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let now = Instant::now();
        let mut closed = Vec::new();
        let found = {
            let mut idle = self.lock();
            let conns = idle.get_mut(&addr)?;
            let mut found = None;
            // Most recently used first: its buffers are warm.
            while let Some(Idle { mut conn, since }) = conns.pop() {
                if now.saturating_duration_since(since) < self.idle_timeout && conn.is_open() {
                    found = Some(conn);
                    break;
                }
                closed.push(conn);
            }
            found
        };
        // Close the dead ones outside the lock.
        drop(closed);
        found
    }

    /// Connects to `addr` within the connect timeout.
    async fn connect(self: &Arc<Self>, addr: SocketAddr) -> io::Result<UpstreamConn> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await
        {
            Ok(connected) => connected?,
            Err(_elapsed) => return Err(io::ErrorKind::TimedOut.into()),
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        Ok(UpstreamConn {
            addr,
            sender,
            driver: Some(driver),
            waker: InlineWaker::new(),
            pool: Arc::downgrade(self),
        })
    }

    /// Keeps `conn` for the next request to its instance.
    fn put(self: &Arc<Self>, conn: UpstreamConn) {
        let since = Instant::now();
        self.lock()
            .entry(conn.addr)
            .or_default()
            .push(Idle { conn, since });
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Closes idle connections past the idle timeout, or closed by their
    /// instance, every so often, until the pool is dropped.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper_started.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        let period = self
            .idle_timeout
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.reap();
            }
        });
    }

    fn reap(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = self.lock();
            for conns in idle.values_mut() {
                closed.extend(conns.extract_if(.., |idle| {
                    now.saturating_duration_since(idle.since) >= self.idle_timeout
                        || !idle.conn.is_open()
                }));
            }
            idle.retain(|_, conns| !conns.is_empty());
        }
        if !closed.is_empty() {
            tracing::trace!(closed = closed.len(), "closing idle instance connections");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One HTTP/1.1 connection to an instance, driven by whoever holds it.
pub(crate) struct UpstreamConn {
    addr: SocketAddr,
    sender: http1::SendRequest<RequestBody>,
    /// `None` once the connection is over (closed, failed or upgraded).
    driver: Option<Driver>,
    waker: InlineWaker,
    pool: Weak<UpstreamPool>,
}

impl UpstreamConn {
    /// Sends `request` and drives the connection until the response head
    /// arrives. On failure, the error holds the request if none of it was
    /// written.
    async fn exchange(
        mut self,
        request: Request<RequestBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<UpstreamConn>), TrySendError<Request<RequestBody>>>
    {
        let response = self.sender.try_send_request(request);
        if upgrade {
            // The upgrade needs the connection to run to its end, on its own.
            if let Some(driver) = self.driver.take() {
                tokio::spawn(async move {
                    if let Err(error) = driver.with_upgrades().await {
                        tracing::debug!(%error, "upgrading instance connection failed");
                    }
                });
            }
            return response.await.map(|response| (response, None));
        }
        let mut response = pin!(response);
        let Self { driver, waker, .. } = &mut self;
        let result = poll_fn(|cx| {
            waker.run(cx, |cx| {
                if let Poll::Ready(result) = response.as_mut().poll(cx) {
                    return Poll::Ready(result);
                }
                drive(driver, cx);
                response.as_mut().poll(cx)
            })
        })
        .await;
        result.map(|response| (response, Some(self)))
    }

    /// Polls `body`, the response body of this connection's exchange,
    /// driving the connection so that the body's bytes arrive.
    pub(crate) fn poll_body(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Self { driver, waker, .. } = self;
        waker.run(cx, |cx| {
            if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                return Poll::Ready(frame);
            }
            drive(driver, cx);
            Pin::new(&mut *body).poll_frame(cx)
        })
    }

    /// The exchange is over and its response body fully read: put the
    /// connection back in the pool if it can carry another request, close
    /// it otherwise.
    pub(crate) fn release(mut self) {
        // Stop waking the request's task: it may be gone by the next event.
        self.waker.clear_task();
        if !self.is_open() || !self.sender.is_ready() {
            // Closed, or still busy with this exchange (say, an upload the
            // instance answered before reading it all).
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.put(self);
        }
    }

    /// Lets the idle connection notice a close by the instance; true if it
    /// is still open.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(&self.waker.waker);
        drive(&mut self.driver, &mut cx);
        self.driver.is_some() && !self.sender.is_closed()
    }
}

/// Polls the connection once, forgetting it when it is over.
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) {
    if let Some(connection) = driver
        && let Poll::Ready(result) = Pin::new(connection).poll(cx)
    {
        if let Err(error) = result {
            tracing::debug!(%error, "instance connection failed");
        }
        // Dropping it fails whatever still waits on it (the response, its
        // body), so they do not hang.
        *driver = None;
    }
}

/// The waker a connection's futures are polled with: it wakes the task that
/// holds the connection, except while that task is polling them, when it
/// only asks for another round.
struct InlineWaker {
    shared: Arc<WakeState>,
    waker: Waker,
}

#[derive(Default)]
struct WakeState {
    /// The task to wake; `None` while the connection sits in the pool.
    task: Mutex<Option<Waker>>,
    /// Set while the holding task polls the connection.
    polling: AtomicBool,
    /// A wake-up arrived while polling.
    woken: AtomicBool,
}

impl Wake for WakeState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(task) = &*task {
                task.wake_by_ref();
            }
        }
    }
}

impl InlineWaker {
    fn new() -> Self {
        let shared = Arc::new(WakeState::default());
        let waker = Waker::from(shared.clone());
        Self { shared, waker }
    }

    /// Runs `poll` with this waker on behalf of the task of `cx`, going round
    /// again as long as `poll` woke itself.
    fn run<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.set_task(cx.waker());
        let state = &*self.shared;
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..MAX_INLINE_ROUNDS {
            state.woken.store(false, Ordering::SeqCst);
            state.polling.store(true, Ordering::SeqCst);
            let polled = poll(&mut inner);
            state.polling.store(false, Ordering::SeqCst);
            if polled.is_ready() {
                return polled;
            }
            // A wake-up after this swap finds `polling` false and wakes the
            // task; one before it makes us go round again.
            if !state.woken.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        // Still waking itself: yield, as a spent coop budget asks.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn set_task(&self, task: &Waker) {
        let mut current = self.shared.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !current.as_ref().is_some_and(|current| current.will_wake(task)) {
            *current = Some(task.clone());
        }
    }

    fn clear_task(&self) {
        let previous = self
            .shared
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(previous);
    }
}
