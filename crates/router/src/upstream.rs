//! Keep-alive HTTP/1.1 connections to instances, pooled per instance address.
//!
//! The router uses hyper's connection-level client directly (not a pooled client) so it knows
//! whether a failure happened *before* any byte of the request was sent: connecting is a separate
//! step, and `try_send_request` hands the request back when it was not written. That is what
//! makes the one retry safe.
//!
//! A connection is not given a task of its own: its driver (hyper's `Connection` future) is
//! polled by whoever uses the connection — the request's task while the request goes out and
//! the head comes back, then the response body as the client's connection reads it. The whole
//! exchange thus runs in the client connection's task, with no wake-up of another task (and
//! often of another thread) per request and per body frame; that hop was most of the router's
//! cost per request. An idle pooled connection is polled by nobody: it is checked when it is
//! taken (a closed one is dropped) and swept after [`IDLE_TIMEOUT`].

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dashmap::DashMap;
use hyper::Request;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;

/// How long an idle connection is kept before the sweeper closes it.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Upper bound on establishing a connection to an instance.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pooled connection may take to become ready for its next request.
const READY_TIMEOUT: Duration = Duration::from_millis(500);

/// Every instance's pool. A `DashMap` keyed by address: looked up once per request (a sharded
/// read lock), written when an instance is first used or swept.
pub(crate) struct Upstreams {
    pools: DashMap<SocketAddr, Arc<EndpointPool>>,
    max_idle: usize,
}

impl Upstreams {
    pub fn new(max_idle: usize) -> Self {
        Self {
            pools: DashMap::new(),
            max_idle,
        }
    }

    /// The pool of the instance at `addr`.
    pub fn pool(&self, addr: SocketAddr) -> Arc<EndpointPool> {
        if let Some(pool) = self.pools.get(&addr) {
            return Arc::clone(pool.value());
        }
        Arc::clone(
            self.pools
                .entry(addr)
                .or_insert_with(|| Arc::new(EndpointPool::new(addr, self.max_idle)))
                .value(),
        )
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] and forgets pools with no idle
    /// connection and no exchange in progress (an in-flight response holds its pool).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.pools.retain(|_, pool| {
            pool.expire(now);
            !pool.is_empty() || Arc::strong_count(pool) > 1
        });
    }

    /// Idle connections per instance address (for `/debug/endpoints`).
    pub fn idle_counts(&self) -> Vec<(SocketAddr, usize)> {
        self.pools
            .iter()
            .map(|p| (*p.key(), p.value().len()))
            .collect()
    }
}

/// One connection to an instance: the handle requests are sent on and the driver that does its
/// IO, polled by the connection's current user.
pub(crate) struct Conn {
    sender: SendRequest<RequestBody>,
    driver: Connection<TokioIo<TcpStream>, RequestBody>,
    ended: bool,
}

impl Conn {
    /// Lets the connection do its IO; true once it has ended (closed or failed).
    pub fn poll_driver(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended
            && let Poll::Ready(result) = Pin::new(&mut self.driver).poll(cx)
        {
            self.ended = true;
            if let Err(error) = result {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        }
        self.ended
    }

    fn is_closed(&mut self) -> bool {
        // A poll with a no-op waker takes in what already arrived (such as the peer's FIN).
        self.poll_driver(&mut Context::from_waker(Waker::noop())) || self.sender.is_closed()
    }

    /// Waits (driving the connection) until it can take a request; false if it ended.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if self.poll_driver(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Sends `request` and waits for the response head, driving the connection meanwhile.
    /// The request is handed back when it was not sent at all.
    pub async fn send(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<hyper::Response<Incoming>, TrySendError<Request<RequestBody>>> {
        let mut response = pin!(self.sender.try_send_request(request));
        poll_fn(|cx| {
            // The driver first: it writes the request and reads the head the response waits on.
            let ended = self.poll_driver(cx);
            match response.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result),
                // An ended driver has answered (or dropped) the exchange: the next poll of the
                // response sees it, and the driver woke this task when it ended.
                Poll::Pending if ended => response.as_mut().poll(cx),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// Idle connections to one instance.
pub(crate) struct EndpointPool {
    pub addr: SocketAddr,
    /// A plain mutex: held only to push or pop, never across an `.await`.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

/// Why a connection to an instance could not be made (nothing was sent).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connecting timed out after {} s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
    #[error("http handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

impl EndpointPool {
    fn new(addr: SocketAddr, max_idle: usize) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock leaves a plain Vec in a valid state.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn expire(&self, now: Instant) {
        self.lock().retain_mut(|idle| {
            !idle.conn.is_closed() && now.saturating_duration_since(idle.since) < IDLE_TIMEOUT
        });
    }

    /// Returns a connection after a complete exchange; dropped when closed or the pool is full.
    pub fn put(&self, mut conn: Box<Conn>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// The most recently used idle connection that is ready for a request, if any.
    pub async fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let mut conn = self.lock().pop()?.conn;
            if conn.is_closed() {
                continue;
            }
            // The previous exchange may have ended before the driver finished its bookkeeping;
            // driving it here takes no network time.
            if let Ok(true) = tokio::time::timeout(READY_TIMEOUT, conn.ready()).await {
                return Some(conn);
            }
        }
    }

    /// Opens a new connection (TCP_NODELAY).
    pub async fn connect(&self) -> Result<Box<Conn>, ConnectError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        // Boxed: the driver is large, and the box moves between the pool and the exchanges.
        Ok(Box::new(Conn {
            sender,
            driver,
            ended: false,
        }))
    }
}
