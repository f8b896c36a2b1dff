//! The fast path: plain HTTP/1.1 requests passed through as bytes.
//!
//! Most requests are a head, maybe a `Content-Length` body, and a response
//! to copy back. For those, the router does what nginx does: parse the head
//! in place (`h1`), write a rewritten head and the body to a pooled
//! keep-alive connection to the instance (`pool`), parse the response head
//! in place, and copy the body back framed as the instance framed it
//! (`chunked` finds where a chunked body ends). No header maps, no second
//! codec, no task or channel between client and instance.
//!
//! Everything that is not byte shuffling is shared with hyper's path in
//! `proxy`: routing and holding, picking and retrying ([`Attempts`]), the
//! request's scope and statistics, and turning errors into responses
//! ([`Router::fail`]).
//!
//! A connection starts here and stays here while its requests are plain.
//! The first request that is not (an upgrade, a chunked body, `Expect`, a
//! malformed head: see `h1`) hands the whole connection to hyper for the
//! rest of its life, replaying the bytes already read (`prefixed`).
//!
//! Per connection: several requests in turn (keep-alive, pipelining), the
//! HTTP/1.0 defaults, `Connection: close`, a header-read timeout that is
//! also the idle timeout, and graceful drain (an idle connection closes at
//! once, a busy one after its response). While a request waits (held, or
//! for the instance), the client connection is watched: if the client goes
//! away, the request is abandoned, as hyper does.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::time::{Duration, Instant, Sleep};
use tracing::Instrument;

use crate::Router;
use crate::chunked::{ChunkedScanner, Scan};
use crate::error::{BoxError, ErrorKind, ProxyError};
use crate::h1::{self, Exchange, Framing, RequestHead, RequestParse, ResponseHead, ResponseParse};
use crate::hooks::{Phase, RequestScope};
use crate::pool::UpstreamPool;
use crate::prefixed::Prefixed;
use crate::proxy::{
    Attempts, connect_error, describe, request_span, switched_unasked, upstream_at,
};
use crate::server::{self, HEADER_READ_TIMEOUT, ServeTasks};

/// How much a read asks for at least (and the buffers start with).
const READ_SIZE: usize = 16 * 1024;

/// The most bytes buffered from a client while its request waits; beyond
/// this the router stops reading (and so stops noticing a client leaving),
/// as hyper does.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// Serves one client connection: plain requests here, then hyper if one is
/// not. Returns when the connection closes, or drain finds it idle.
pub(crate) async fn serve(
    router: Arc<Router>,
    stream: TcpStream,
    client: SocketAddr,
    tasks: Arc<ServeTasks>,
) {
    let mut conn = Conn {
        stream,
        client,
        client_ip: client.ip().to_canonical().to_string(),
        buf: BytesMut::with_capacity(READ_SIZE),
        upstream_buf: BytesMut::new(),
        out: Vec::new(),
        spare_head: Vec::new(),
        body_left: 0,
        body_streamed: false,
    };
    let drained = tasks.drained();
    tokio::pin!(drained);
    // Registered from now on: a drain is not missed.
    drained.as_mut().enable();
    let mut drained = Drained {
        tasks: &tasks,
        notified: drained,
        polled: false,
    };
    let (mut head_deadline, mut answer_deadline) = (Deadline::new(), Deadline::new());
    loop {
        match conn.next_request(&mut drained, &mut head_deadline).await {
            // The gateway reads whole bodies and answers in its own way:
            // hyper's path.
            Next::Request(head) if router.is_gateway_request(head.host(), head.path()) => {
                let Conn { stream, buf, .. } = conn;
                let io = Prefixed::new(buf.freeze(), stream);
                server::serve_hyper(router, io, client, tasks.clone()).await;
                return;
            }
            Next::Request(head) => {
                let keep_alive = conn
                    .exchange(&router, &tasks, &head, &mut answer_deadline)
                    .await;
                conn.spare_head = head.upstream;
                if !keep_alive {
                    conn.close().await;
                    return;
                }
            }
            Next::Hyper => {
                let Conn { stream, buf, .. } = conn;
                let io = Prefixed::new(buf.freeze(), stream);
                server::serve_hyper(router, io, client, tasks.clone()).await;
                return;
            }
            Next::Closed => return,
        }
    }
}

/// What a client connection has next.
enum Next {
    /// A request for the fast path.
    Request(RequestHead),
    /// A request for hyper: hand the connection over.
    Hyper,
    /// Nothing: closed, timed out, or idle at drain.
    Closed,
}

/// How a request on the fast path failed.
enum Failure {
    /// Nothing was sent to the client yet: answer with the error.
    Respond(ProxyError),
    /// The client went away, or the response broke after its head left:
    /// close the connection.
    Abort,
}

/// How sending a request and reading its response head failed.
enum SendError {
    /// The client went away.
    ClientGone,
    /// The instance closed or reset the connection before any byte of a
    /// response: what a stale pooled connection does.
    Unanswered(Broken),
    /// The instance switched protocols unasked.
    Switched,
    /// Anything else.
    Failed(Broken),
}

/// Why an exchange with an instance broke.
struct Broken {
    reason: Cow<'static, str>,
    cause: Option<BoxError>,
}

impl Broken {
    fn io(error: io::Error) -> Self {
        Self {
            reason: describe(&error).into(),
            cause: Some(Box::new(error)),
        }
    }

    fn closed() -> Self {
        Self {
            reason: "closed the connection before a complete response".into(),
            cause: None,
        }
    }

    fn malformed() -> Self {
        Self {
            reason: "sent a malformed response".into(),
            cause: None,
        }
    }
}

/// One client connection on the fast path.
struct Conn {
    stream: TcpStream,
    client: SocketAddr,
    /// The client's address as the instance sees it in `X-Forwarded-For`.
    client_ip: String,
    /// Bytes from the client not handled yet: the current request's body
    /// (its first `body_left` bytes), then whatever follows.
    buf: BytesMut,
    /// Bytes from the instance not handled yet.
    upstream_buf: BytesMut,
    /// The bytes being written next (a head, the start of a body).
    out: Vec<u8>,
    /// A buffer for the next request's upstream head, reused.
    spare_head: Vec<u8>,
    /// Bytes of the current request's body not yet sent to the instance.
    body_left: u64,
    /// Some of the body was streamed from the client (it was not whole in
    /// `buf`): the request cannot be sent again.
    body_streamed: bool,
}

impl Conn {
    /// Reads until a whole request head is buffered.
    async fn next_request(
        &mut self,
        drained: &mut Drained<'_, '_>,
        timeout: &mut Deadline,
    ) -> Next {
        let deadline = Instant::now() + HEADER_READ_TIMEOUT;
        loop {
            if !self.buf.is_empty() {
                match h1::parse_request(&self.buf, &self.client_ip, &mut self.spare_head) {
                    RequestParse::Fast(head) => return Next::Request(head),
                    RequestParse::Hyper => return Next::Hyper,
                    RequestParse::Partial if self.buf.len() >= h1::MAX_HEAD => return Next::Hyper,
                    RequestParse::Partial => {}
                }
            }
            // An idle connection closes at drain; a started head is read on.
            let idle = self.buf.is_empty();
            reserve(&mut self.buf);
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.buf) => read,
                () = drained.wait(), if idle => return Next::Closed,
                () = timeout.at(deadline) => return Next::Closed,
            };
            match read {
                Ok(0) => return Next::Closed,
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(client = %self.client, %error, "client connection broke");
                    return Next::Closed;
                }
            }
        }
    }

    /// Forwards one request and answers it; true if the connection stays
    /// open for another.
    async fn exchange(
        &mut self,
        router: &Router,
        tasks: &ServeTasks,
        head: &RequestHead,
        timeout: &mut Deadline,
    ) -> bool {
        self.buf.advance(head.len);
        self.body_left = head.content_length;
        self.body_streamed = false;
        let span = request_span(&head.request_id);
        let mut scope = RequestScope::new(head.request_id.clone(), router.hooks.clone());
        async {
            let error = match self.forward(router, tasks, head, &mut scope, timeout).await {
                Ok(keep_alive) => return keep_alive,
                Err(Failure::Abort) => return false,
                Err(Failure::Respond(error)) => error,
            };
            let response = router.fail(&error, &head.request_id, &mut scope);
            // A body not read yet is skipped if it is all here, else the
            // connection closes.
            if !self.body_streamed && (self.buf.len() as u64) >= self.body_left {
                self.buf.advance(self.body_left as usize);
                self.body_left = 0;
            }
            let exchange = Exchange {
                head_request: head.method == http::Method::HEAD,
                http10: head.http10,
                keep_alive: head.keep_alive && self.body_left == 0 && !tasks.is_draining(),
                request_id: &head.request_id,
            };
            h1::write_response(
                &response,
                response.body().message_bytes(),
                exchange,
                &mut self.out,
            );
            // The request is over once its answer is handed over (as when
            // hyper takes the last frame of a body).
            drop(response);
            let written = self.stream.write_all(&self.out).await.is_ok();
            written && exchange.keep_alive
        }
        .instrument(span)
        .await
    }

    /// Routes, sends and relays one request; on success, true if the client
    /// connection stays open.
    async fn forward(
        &mut self,
        router: &Router,
        tasks: &ServeTasks,
        head: &RequestHead,
        scope: &mut RequestScope,
        answer_timeout: &mut Deadline,
    ) -> Result<bool, Failure> {
        // 1. Route (holding while a sleeping service wakes).
        let routed = watching(
            &self.stream,
            &mut self.buf,
            router.route_request(head.host(), None, head.path(), scope),
        )
        .await
        .ok_or(Failure::Abort)?;
        let (service, port) = routed.map_err(Failure::Respond)?;

        // 2. and 3. Pick an instance and send; retry as `Attempts` allows,
        // and once more on a fresh connection if a pooled one was stale.
        let config = &router.config;
        let mut attempts = Attempts::new(head.is_replayable());
        let (upstream, response, addr) = 'attempts: loop {
            let (index, addr) = attempts
                .start(&service, port, scope)
                .map_err(Failure::Respond)?;
            let mut pooled = tasks.pool.take(addr);
            loop {
                let reused = pooled.is_some();
                let mut upstream = match pooled.take() {
                    Some(upstream) => upstream,
                    None => match crate::pool::connect(addr, config.connect_timeout).await {
                        Ok(upstream) => upstream,
                        Err(error) => {
                            let upstream = upstream_at(&service, index, addr);
                            let error = connect_error(error, upstream, config.connect_timeout);
                            if attempts.retry_connect(index, &error, &service, !self.body_streamed)
                            {
                                tracing::debug!(%error, "connect failed; trying another instance");
                                continue 'attempts;
                            }
                            return Err(Failure::Respond(error));
                        }
                    },
                };
                let exchange = Exchange {
                    head_request: head.method == http::Method::HEAD,
                    http10: head.http10,
                    keep_alive: head.keep_alive && !tasks.is_draining(),
                    request_id: &head.request_id,
                };
                let timeout = config.upstream_header_timeout;
                let deadline = Instant::now() + timeout;
                let sent = tokio::select! {
                    biased;
                    sent = self.send(&mut upstream, head, exchange) => Ok(sent),
                    () = answer_timeout.at(deadline) => Err(()),
                };
                let broken = match sent {
                    Ok(Ok(response)) => break 'attempts (upstream, response, addr),
                    Ok(Err(SendError::ClientGone)) => return Err(Failure::Abort),
                    Ok(Err(SendError::Unanswered(broken))) => {
                        if reused && !self.body_streamed {
                            tracing::debug!(reason = %broken.reason, "pooled connection was stale; sending on a fresh one");
                            continue;
                        }
                        if attempts.replay(index, &service) {
                            tracing::debug!(reason = %broken.reason, "instance closed the connection unanswered; sending again");
                            continue 'attempts;
                        }
                        broken
                    }
                    Ok(Err(SendError::Failed(broken))) => broken,
                    Ok(Err(SendError::Switched)) => {
                        let upstream = upstream_at(&service, index, addr);
                        return Err(Failure::Respond(switched_unasked(upstream)));
                    }
                    Err(()) => {
                        let upstream = upstream_at(&service, index, addr);
                        return Err(Failure::Respond(
                            ErrorKind::UpstreamTimeout { upstream, timeout }.into(),
                        ));
                    }
                };
                return Err(Failure::Respond(
                    ErrorKind::UpstreamFailed {
                        upstream: upstream_at(&service, index, addr),
                        reason: broken.reason.into_owned(),
                        cause: broken.cause,
                    }
                    .into(),
                ));
            }
        };
        scope.respond(response.status);
        scope.phase(Phase::ResponseHeaders);

        // 4. Relay the response.
        self.relay(upstream, &response, scope, (&tasks.pool, addr))
            .await?;
        Ok(response.keep_alive && !tasks.is_draining())
    }

    /// Sends the request (head and body) to `upstream` and reads the final
    /// response head, whose rewritten form is left in `out`.
    async fn send(
        &mut self,
        upstream: &mut TcpStream,
        head: &RequestHead,
        exchange: Exchange<'_>,
    ) -> Result<ResponseHead, SendError> {
        // The head, and as much of the body as is here.
        let here = (self.buf.len() as u64).min(self.body_left) as usize;
        let whole = here as u64 == self.body_left;
        let written = if here == 0 {
            upstream.write_all(&head.upstream).await
        } else {
            self.out.clear();
            self.out.extend_from_slice(&head.upstream);
            self.out.extend_from_slice(&self.buf[..here]);
            upstream.write_all(&self.out).await
        };
        written.map_err(|error| SendError::Unanswered(Broken::io(error)))?;
        // A body that was all here stays until an answer comes, in case the
        // request is sent again.
        if !whole {
            self.buf.advance(here);
            self.body_left -= here as u64;
            self.body_streamed = true;
            self.stream_body(upstream).await?;
        }

        // The response head, skipping interim responses.
        self.upstream_buf.clear();
        loop {
            reserve(&mut self.upstream_buf);
            let read = watching(
                &self.stream,
                &mut self.buf,
                upstream.read_buf(&mut self.upstream_buf),
            )
            .await
            .ok_or(SendError::ClientGone)?;
            match read {
                Ok(0) if self.upstream_buf.is_empty() => {
                    return Err(SendError::Unanswered(Broken::closed()));
                }
                Ok(0) => return Err(SendError::Failed(Broken::closed())),
                Ok(_) => {}
                Err(error) if self.upstream_buf.is_empty() => {
                    return Err(SendError::Unanswered(Broken::io(error)));
                }
                Err(error) => return Err(SendError::Failed(Broken::io(error))),
            }
            loop {
                match h1::parse_response(&self.upstream_buf, exchange, &mut self.out) {
                    Ok(ResponseParse::Partial) => break,
                    Ok(ResponseParse::Interim(len)) => self.upstream_buf.advance(len),
                    Ok(ResponseParse::Switched) => return Err(SendError::Switched),
                    Ok(ResponseParse::Final(response)) => {
                        if whole {
                            self.buf.advance(here);
                            self.body_left = 0;
                        }
                        self.upstream_buf.advance(response.len);
                        return Ok(response);
                    }
                    Err(h1::Malformed) => return Err(SendError::Failed(Broken::malformed())),
                }
            }
        }
    }

    /// Copies the rest of the request body from the client to `upstream`.
    async fn stream_body(&mut self, upstream: &mut TcpStream) -> Result<(), SendError> {
        while self.body_left > 0 {
            if self.buf.is_empty() {
                reserve(&mut self.buf);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Err(SendError::ClientGone),
                    Ok(_) => {}
                }
            }
            let n = (self.buf.len() as u64).min(self.body_left) as usize;
            upstream
                .write_all(&self.buf[..n])
                .await
                .map_err(|error| SendError::Failed(Broken::io(error)))?;
            self.buf.advance(n);
            self.body_left -= n as u64;
        }
        Ok(())
    }

    /// Writes the response head (in `out`) and copies the body from
    /// `upstream` to the client, as `response` frames it. Once the last
    /// byte is read, before it is written, the request ends (as on hyper's
    /// path, where the body's end is seen before it is flushed) and
    /// `upstream` goes back to `pool` if it can carry another request.
    async fn relay(
        &mut self,
        upstream: TcpStream,
        response: &ResponseHead,
        scope: &mut RequestScope,
        pool: (&UpstreamPool, SocketAddr),
    ) -> Result<(), Failure> {
        // Whether the connection to the instance is fit for another request:
        // the response allows it and the instance sent nothing past it.
        let fit = |buf: &BytesMut| response.reusable && buf.is_empty();
        match response.framing {
            Framing::Empty => {
                end(upstream, fit(&self.upstream_buf), scope, pool);
                self.write_out().await
            }
            Framing::Length(length) => {
                let mut left = length;
                loop {
                    let n = (self.upstream_buf.len() as u64).min(left) as usize;
                    self.out.extend_from_slice(&self.upstream_buf[..n]);
                    self.upstream_buf.advance(n);
                    left -= n as u64;
                    if left == 0 {
                        end(upstream, fit(&self.upstream_buf), scope, pool);
                        return self.write_out().await;
                    }
                    self.write_out().await?;
                    self.read_upstream(&upstream).await?;
                }
            }
            Framing::Chunked => {
                let mut scanner = ChunkedScanner::default();
                loop {
                    let input = &self.upstream_buf[..];
                    let scanned = if response.dechunk {
                        let out = &mut self.out;
                        scanner.scan(input, |data| out.extend_from_slice(&input[data]))
                    } else {
                        scanner.scan(input, |_| {})
                    };
                    let scanned = scanned.map_err(|error| {
                        tracing::debug!(%error, "instance sent a malformed chunked body");
                        Failure::Abort
                    })?;
                    let used = match scanned {
                        Scan::More => input.len(),
                        Scan::End(used) => used,
                    };
                    if !response.dechunk {
                        self.out.extend_from_slice(&input[..used]);
                    }
                    self.upstream_buf.advance(used);
                    if matches!(scanned, Scan::End(_)) {
                        end(upstream, fit(&self.upstream_buf), scope, pool);
                        return self.write_out().await;
                    }
                    self.write_out().await?;
                    self.read_upstream(&upstream).await?;
                }
            }
            Framing::Close => loop {
                self.out.extend_from_slice(&self.upstream_buf);
                self.upstream_buf.clear();
                self.write_out().await?;
                if !self.read_upstream_to_end(&upstream).await? {
                    end(upstream, false, scope, pool);
                    return Ok(());
                }
            },
        }
    }

    /// Writes `out` to the client, and empties it.
    async fn write_out(&mut self) -> Result<(), Failure> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await.map_err(|error| {
                tracing::debug!(client = %self.client, %error, "client connection broke");
                Failure::Abort
            })?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads more of a response body that must go on.
    async fn read_upstream(&mut self, upstream: &TcpStream) -> Result<(), Failure> {
        if self.read_upstream_to_end(upstream).await? {
            Ok(())
        } else {
            tracing::debug!("instance closed the connection before the end of the response body");
            Err(Failure::Abort)
        }
    }

    /// Reads more of a response body, watching the client; false at the
    /// end of the connection.
    async fn read_upstream_to_end(&mut self, upstream: &TcpStream) -> Result<bool, Failure> {
        reserve(&mut self.upstream_buf);
        let read = watching(
            &self.stream,
            &mut self.buf,
            read_into(upstream, &mut self.upstream_buf),
        )
        .await
        .ok_or(Failure::Abort)?;
        match read {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(error) => {
                tracing::debug!(%error, "connection to the instance broke in the response body");
                Err(Failure::Abort)
            }
        }
    }

    /// Closes the connection after its last response.
    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The start of shutdown, as a connection waits for it between requests:
/// after the first wait, a poll costs one atomic load (no lock).
struct Drained<'a, 'n> {
    tasks: &'n ServeTasks,
    /// Registered with the worker's notification since the connection
    /// started; its waker is this connection's task once polled.
    notified: Pin<&'a mut Notified<'n>>,
    polled: bool,
}

impl Drained<'_, '_> {
    /// Resolves once shutdown started.
    fn wait(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.tasks.is_draining() {
                return Poll::Ready(());
            }
            if !self.polled {
                self.polled = true;
                if self.notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
    }
}

/// A timeout for the waits of one connection that costs no timer operation
/// per wait: one `Sleep`, armed once, moved only when it fires. Each wait
/// names its deadline; the deadlines of successive waits only move later,
/// so the timer (set for an earlier wait) fires early, if at all, and is
/// then re-armed for the deadline in force. Once armed, a poll only reads
/// the timer's state: the timer keeps the waker of the connection's task.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    /// Polled since its last reset: it will wake this task when it fires.
    armed: bool,
}

impl Deadline {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(far_future())),
            armed: false,
        }
    }

    /// Resolves at `deadline`.
    fn at(&mut self, deadline: Instant) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            loop {
                if self.sleep.deadline() > deadline {
                    self.sleep.as_mut().reset(deadline);
                    self.armed = false;
                }
                if self.armed && !self.sleep.is_elapsed() {
                    return Poll::Pending;
                }
                if self.sleep.as_mut().poll(cx).is_pending() {
                    self.armed = true;
                    return Poll::Pending;
                }
                if Instant::now() >= deadline {
                    return Poll::Ready(());
                }
                // Fired for an earlier wait: move it to this one's deadline.
                self.sleep.as_mut().reset(deadline);
                self.armed = false;
            }
        })
    }
}

/// A deadline no wait reaches (about a year away).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// The response is all read: the request ends, and `upstream` goes back to
/// the pool if `reusable`.
fn end(
    upstream: TcpStream,
    reusable: bool,
    scope: &mut RequestScope,
    (pool, addr): (&UpstreamPool, SocketAddr),
) {
    if reusable {
        pool.put(addr, upstream);
    }
    drop(scope.take());
}

/// Reads from `stream` into `buf`, without needing `&mut` on the stream.
async fn read_into(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            read => return read,
        }
    }
}

/// Makes room for a read.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

/// Runs `work` while watching the client connection `stream`: what the
/// client sends meanwhile (a pipelined request, say) is appended to `buf`;
/// if the client closes the connection or it breaks, `work` is dropped and
/// this is `None`.
async fn watching<T>(
    stream: &TcpStream,
    buf: &mut BytesMut,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        done = work => Some(done),
        () = client_gone(stream, buf) => None,
    }
}

/// Resolves when the client closes (or breaks) its connection, buffering
/// what it sends meanwhile, up to [`MAX_READ_AHEAD`].
async fn client_gone(stream: &TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_READ_AHEAD {
            std::future::pending::<()>().await;
        }
        if stream.readable().await.is_err() {
            return;
        }
        reserve(buf);
        match stream.try_read_buf(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_end_each_wait_on_time() {
        let mut timeout = Deadline::new();
        let start = Instant::now();

        // A wait that ends first leaves the timer armed at its deadline.
        let first = start + Duration::from_millis(40);
        tokio::select! {
            () = timeout.at(first) => panic!("ended before its deadline"),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        // A later wait: the timer fires early, moves, and ends this wait on
        // its own deadline.
        let second = start + Duration::from_millis(80);
        timeout.at(second).await;
        assert!(Instant::now() >= second);

        // An earlier deadline than the armed one moves the timer back.
        tokio::select! {
            () = timeout.at(Instant::now() + Duration::from_secs(10)) => panic!("too early"),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        let third = Instant::now() + Duration::from_millis(30);
        tokio::time::timeout(Duration::from_secs(2), timeout.at(third))
            .await
            .expect("the earlier deadline was kept");
        assert!(Instant::now() >= third);
    }
}
