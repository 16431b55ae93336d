//! Keep-alive HTTP/1.1 connections to instances, pooled per instance address.
//!
//! The router uses hyper's connection-level client directly (not a pooled client) so it knows
//! whether a failure happened *before* any byte of the request was sent: connecting is a separate
//! step, and `try_send_request` hands the request back when it was not written. That is what
//! makes the one retry safe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use kappa_core::InstanceAddr;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::lean::LeanConn;

/// How long an idle connection is kept before the sweeper closes it.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Upper bound on establishing a connection to an instance.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pooled connection may take to become ready for its next request.
const READY_TIMEOUT: Duration = Duration::from_millis(500);

/// Every instance's pool. A `DashMap` keyed by address: looked up once per request (a sharded
/// read lock), written when an instance is first used or swept.
pub(crate) struct Upstreams {
    pools: DashMap<InstanceAddr, Arc<EndpointPool>>,
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
    pub fn pool(&self, addr: &InstanceAddr) -> Arc<EndpointPool> {
        if let Some(pool) = self.pools.get(addr) {
            return Arc::clone(pool.value());
        }
        Arc::clone(
            self.pools
                .entry(addr.clone())
                .or_insert_with(|| Arc::new(EndpointPool::new(addr.clone(), self.max_idle)))
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
    pub fn idle_counts(&self) -> Vec<(InstanceAddr, usize)> {
        self.pools
            .iter()
            .map(|p| (p.key().clone(), p.value().len()))
            .collect()
    }
}

struct Idle {
    conn: SendRequest<RequestBody>,
    since: Instant,
}

struct LeanIdle {
    conn: LeanConn,
    since: Instant,
}

/// Idle connections to one instance.
pub(crate) struct EndpointPool {
    pub addr: InstanceAddr,
    /// A plain mutex: held only to push or pop, never across an `.await`.
    idle: Mutex<Vec<Idle>>,
    /// Idle connections of the lean path (`crate::lean`); the same bound applies to each list.
    lean: Mutex<Vec<LeanIdle>>,
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
    fn new(addr: InstanceAddr, max_idle: usize) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            lean: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock leaves a plain Vec in a valid state.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_lean(&self) -> std::sync::MutexGuard<'_, Vec<LeanIdle>> {
        self.lean
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len() + self.lock_lean().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty() && self.lock_lean().is_empty()
    }

    fn expire(&self, now: Instant) {
        self.lock().retain(|idle| {
            !idle.conn.is_closed() && now.saturating_duration_since(idle.since) < IDLE_TIMEOUT
        });
        self.lock_lean().retain_mut(|idle| {
            now.saturating_duration_since(idle.since) < IDLE_TIMEOUT && idle.conn.is_usable()
        });
    }

    /// Returns a lean connection after a complete exchange; dropped when the pool is full.
    pub fn put_lean(&self, conn: LeanConn) {
        let mut idle = self.lock_lean();
        if idle.len() < self.max_idle {
            idle.push(LeanIdle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// The most recently used idle lean connection the instance has not closed, if any.
    pub fn checkout_lean(&self) -> Option<LeanConn> {
        loop {
            let mut conn = self.lock_lean().pop()?.conn;
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    /// Opens a connection for the lean path (or uses `opened`, see [`EndpointPool::connect`]).
    pub async fn connect_lean(
        &self,
        opened: Option<std::net::TcpStream>,
    ) -> Result<LeanConn, ConnectError> {
        Ok(LeanConn::new(self.open(opened).await?))
    }

    async fn open(
        &self,
        opened: Option<std::net::TcpStream>,
    ) -> Result<tokio::net::TcpStream, ConnectError> {
        Ok(match opened {
            Some(stream) => tokio::net::TcpStream::from_std(stream)?,
            None => tokio::time::timeout(
                CONNECT_TIMEOUT,
                kappa_sandbox::connector::connect(&self.addr),
            )
            .await
            .map_err(|_| ConnectError::Timeout)??,
        })
    }

    /// Returns a connection after a complete exchange; dropped when closed or the pool is full.
    pub fn put(&self, conn: SendRequest<RequestBody>) {
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
    pub async fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        loop {
            let mut conn = self.lock().pop()?.conn;
            if conn.is_closed() {
                continue;
            }
            if conn.is_ready() {
                return Some(conn);
            }
            // The previous exchange just ended and the connection task has not yet asked for the
            // next request; that takes one scheduling round, not network time.
            if let Ok(Ok(())) = tokio::time::timeout(READY_TIMEOUT, conn.ready()).await {
                return Some(conn);
            }
        }
    }

    /// Opens a new connection (TCP_NODELAY; to a sandboxed instance through its sandbox's
    /// connector, see `kappa_sandbox::connector`) and spawns its connection task.
    /// With `opened`, a connection the instance's backend opened in advance
    /// (`Endpoint::take_connection`) is used instead of a new one.
    pub async fn connect(
        &self,
        opened: Option<std::net::TcpStream>,
    ) -> Result<SendRequest<RequestBody>, ConnectError> {
        let stream = self.open(opened).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            // With upgrades, a `101` hands the connection over to the splice
            // (`crate::upgrade`) instead of ending it; such a connection is never pooled.
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
