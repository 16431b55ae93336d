//! The two body types on the proxy path, both streamed frame by frame (never buffered whole):
//! - [`RequestBody`]: the client's body on its way to the instance, cut off with
//!   [`RequestBodyError::TooLarge`] once it passes `max_body_bytes`;
//! - [`ResponseBody`]: the instance's body on its way to the client (holding the admission
//!   permit and the upstream connection until it ends), or a router-written JSON error.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use kappa_core::Permit;

use crate::lean::{Finish, LeanBody, LeanConn};
use crate::metrics::InflightGuard;
use crate::upstream::EndpointPool;

/// A boxed error, as hyper and axum carry them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request body comes from.
enum Source {
    /// The public listener's hyper body.
    Incoming(Incoming),
    /// A body handed to [`crate::Router::invoke`].
    Axum(axum::body::Body),
    /// A body the public listener's lean path (`crate::front`) read whole with its head.
    Read(Option<Bytes>),
}

/// A client's request body, forwarded to an instance as it arrives, with a size limit.
pub(crate) struct RequestBody {
    source: Source,
    /// Bytes that may still pass before the limit is hit.
    remaining: u64,
    limit: u64,
}

/// Why forwarding a request body stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    /// The client sent more than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// Reading the client's body failed (it went away or sent a malformed body).
    #[error("reading the request body failed: {0}")]
    Client(#[source] BoxError),
}

impl RequestBody {
    pub fn incoming(body: Incoming, limit: u64) -> Self {
        Self {
            source: Source::Incoming(body),
            remaining: limit,
            limit,
        }
    }

    pub fn axum(body: axum::body::Body, limit: u64) -> Self {
        Self {
            source: Source::Axum(body),
            remaining: limit,
            limit,
        }
    }

    /// A body already read whole (`crate::front`).
    pub fn read(bytes: Bytes, limit: u64) -> Self {
        Self {
            source: Source::Read(Some(bytes).filter(|b| !b.is_empty())),
            remaining: limit,
            limit,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Incoming(body) => ready!(Pin::new(body).poll_frame(cx))
                .map(|r| r.map_err(|e| RequestBodyError::Client(Box::new(e)))),
            Source::Axum(body) => ready!(Pin::new(body).poll_frame(cx))
                .map(|r| r.map_err(|e| RequestBodyError::Client(e.into_inner()))),
            Source::Read(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
        };
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            if len > this.remaining {
                this.remaining = 0;
                return Poll::Ready(Some(Err(RequestBodyError::TooLarge { limit: this.limit })));
            }
            this.remaining -= len;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Incoming(body) => body.is_end_stream(),
            Source::Axum(body) => body.is_end_stream(),
            Source::Read(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Incoming(body) => body.size_hint(),
            Source::Axum(body) => body.size_hint(),
            Source::Read(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// What an upstream response holds until its body ends: the instance slot, the connection
/// (returned to the pool only after a complete body) and the in-flight gauge.
pub(crate) struct Lease {
    pub permit: Permit,
    pub conn: SendRequest<RequestBody>,
    pub pool: Arc<EndpointPool>,
    pub inflight: InflightGuard,
}

impl Lease {
    /// Ends the lease; the connection goes back to the pool when the exchange completed.
    fn finish(self, complete: bool) {
        let Lease {
            permit,
            conn,
            pool,
            inflight,
        } = self;
        if complete {
            pool.put(conn);
        }
        drop(permit);
        drop(inflight);
    }
}

/// [`Lease`] for a lean exchange (`crate::lean`): the connection is the body's own.
pub(crate) struct LeanLease {
    pub permit: Permit,
    pub pool: Arc<EndpointPool>,
    pub inflight: InflightGuard,
}

impl Finish for LeanLease {
    fn finish(self: Box<Self>, conn: Option<LeanConn>) {
        let LeanLease {
            permit,
            pool,
            inflight,
        } = *self;
        if let Some(conn) = conn {
            pool.put_lean(conn);
        }
        drop(permit);
        drop(inflight);
    }
}

/// The body of a response the router sends.
pub(crate) struct ResponseBody {
    kind: Kind,
}

enum Kind {
    /// A body written by the router, sent in one buffer.
    Full(Option<Bytes>),
    /// An instance's body, streamed.
    Upstream {
        body: Incoming,
        lease: Option<Lease>,
    },
    /// An instance's body read by the lean path, streamed.
    Lean(LeanBody),
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)),
        }
    }

    pub fn lean(body: LeanBody) -> Self {
        Self {
            kind: Kind::Lean(body),
        }
    }

    pub fn upstream(body: Incoming, lease: Lease) -> Self {
        Self {
            kind: Kind::Upstream {
                body,
                lease: Some(lease),
            },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Lean(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|polled| polled.map(|r| r.map_err(BoxError::from))),
            Kind::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Upstream { body, lease } => {
                let polled = ready!(Pin::new(body).poll_frame(cx));
                match &polled {
                    None => {
                        if let Some(lease) = lease.take() {
                            lease.finish(true);
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(lease) = lease.take() {
                            lease.finish(false);
                        }
                    }
                    Some(Ok(_)) => {}
                }
                Poll::Ready(polled.map(|r| r.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Lean(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Lean(body) => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Kind::Upstream { body, lease } = &mut self.kind
            && let Some(lease) = lease.take()
        {
            // A body that was never polled to its end (an empty 204, a HEAD answer) is still a
            // complete exchange when hyper knows nothing more is coming.
            lease.finish(body.is_end_stream());
        }
    }
}
