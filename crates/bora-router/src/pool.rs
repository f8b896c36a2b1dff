//! One worker's idle keep-alive connections to instances (fast path).
//!
//! Each worker thread has its own pool, so connections never cross threads
//! (the mutex only satisfies `Send`; it is never contended). A connection
//! goes back to the pool only after a complete, well-framed exchange; it
//! is taken newest first, and dropped once idle for longer than
//! `pool_idle_timeout`, or if the instance closed it (or sent something)
//! while it sat idle.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::task::Context;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// The most idle connections kept per instance address.
const MAX_IDLE_PER_ADDR: usize = 128;

/// Idle connections by instance address.
#[derive(Debug)]
pub(crate) struct UpstreamPool {
    idle: Mutex<HashMap<SocketAddr, VecDeque<Idle>>>,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
}

impl UpstreamPool {
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
        }
    }

    /// How long a connection may stay idle.
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The most recently used live idle connection to `addr`, if any.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.lock();
        let queue = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(candidate) = queue.pop_back() {
            if now.saturating_duration_since(candidate.since) < self.idle_timeout
                && is_quiet(&candidate.stream)
            {
                return Some(candidate.stream);
            }
        }
        None
    }

    /// Keeps `stream` to `addr` for reuse.
    pub(crate) fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let now = Instant::now();
        let mut idle = self.lock();
        let queue = idle.entry(addr).or_default();
        while queue
            .front()
            .is_some_and(|oldest| self.expired(oldest, now))
            || queue.len() >= MAX_IDLE_PER_ADDR
        {
            queue.pop_front();
        }
        queue.push_back(Idle { stream, since: now });
    }

    /// Drops every connection idle for too long.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.lock();
        for queue in idle.values_mut() {
            queue.retain(|conn| !self.expired(conn, now));
        }
        idle.retain(|_, queue| !queue.is_empty());
    }

    /// How many idle connections to `addr` the pool holds.
    #[cfg(test)]
    fn idle(&self, addr: SocketAddr) -> usize {
        self.lock().get(&addr).map_or(0, VecDeque::len)
    }

    fn expired(&self, conn: &Idle, now: Instant) -> bool {
        now.saturating_duration_since(conn.since) >= self.idle_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, VecDeque<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// True unless the idle connection became readable: an instance closing
/// it (EOF), resetting it or sending something unasked all make it so.
/// Usually no system call: the runtime knows the socket is not readable.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if stream.poll_read_ready(&mut cx).is_pending() {
        return true;
    }
    // Readable as far as the runtime knows (its last read filled the
    // buffer, or an event came): look.
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
}

/// A new connection to `addr` with `TCP_NODELAY`, or the error; a connect
/// that takes longer than `timeout` fails with [`io::ErrorKind::TimedOut`].
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_elapsed| io::Error::from(io::ErrorKind::TimedOut))??;
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A listener and `n` connections to it, with their accepted ends.
    async fn pairs(n: usize) -> (SocketAddr, Vec<(TcpStream, TcpStream)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pairs = Vec::new();
        for _ in 0..n {
            let ours = connect(addr, Duration::from_secs(1)).await.unwrap();
            let (theirs, _) = listener.accept().await.unwrap();
            pairs.push((ours, theirs));
        }
        (addr, pairs)
    }

    #[tokio::test]
    async fn newest_first_and_closed_ones_are_skipped() {
        let pool = UpstreamPool::new(Duration::from_secs(60));
        let (addr, mut pairs) = pairs(3).await;
        let (third, _third_peer) = pairs.pop().unwrap();
        let (second, mut second_peer) = pairs.pop().unwrap();
        let (first, _first_peer) = pairs.pop().unwrap();
        let third_port = third.local_addr().unwrap().port();
        let first_port = first.local_addr().unwrap().port();
        pool.put(addr, first);
        pool.put(addr, second);
        pool.put(addr, third);

        let taken = pool.take(addr).unwrap();
        assert_eq!(taken.local_addr().unwrap().port(), third_port);

        // The instance closes the second one while it is idle.
        second_peer.shutdown().await.unwrap();
        drop(second_peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let taken = pool.take(addr).unwrap();
        assert_eq!(taken.local_addr().unwrap().port(), first_port);
        assert!(pool.take(addr).is_none());
    }

    #[tokio::test]
    async fn idle_connections_expire_and_are_bounded() {
        let pool = UpstreamPool::new(Duration::from_millis(30));
        let (addr, pairs) = pairs(2).await;
        let mut peers = Vec::new();
        for (ours, theirs) in pairs {
            pool.put(addr, ours);
            peers.push(theirs);
        }
        assert_eq!(pool.idle(addr), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep();
        assert_eq!(pool.idle(addr), 0);
        assert!(pool.take(addr).is_none());

        let pool = UpstreamPool::new(Duration::from_secs(60));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for _ in 0..MAX_IDLE_PER_ADDR + 3 {
            let ours = connect(addr, Duration::from_secs(1)).await.unwrap();
            peers.push(listener.accept().await.unwrap().0);
            pool.put(addr, ours);
        }
        assert_eq!(pool.idle(addr), MAX_IDLE_PER_ADDR);
    }

    #[tokio::test]
    async fn refused_connects_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = connect(addr, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }
}
