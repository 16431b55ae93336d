//! A minimal HTTP/1.1 client for the runtime's control endpoints (`/healthz`,
//! `/v2/specialize`): one connection per call, bounded response bodies.

use std::future::Future as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use kappa_core::InstanceAddr;

/// The largest response body read from a runtime's control endpoint.
const MAX_BODY: usize = 1024 * 1024;

/// Why a control call failed before a complete response arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: InstanceAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the server closed the connection, sent garbage, ...).
    #[error("http exchange with {addr}: {source}")]
    Http {
        addr: InstanceAddr,
        #[source]
        source: hyper::Error,
    },
    /// The response body was larger than the bound or could not be read.
    #[error("reading the response body from {addr}: {message}")]
    Body { addr: InstanceAddr, message: String },
    /// The request could not be built (an invalid path).
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
}

/// A complete response.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends one request and reads the whole (bounded) response. The caller applies any timeout.
pub(crate) async fn call(
    addr: &InstanceAddr,
    method: Method,
    path: &str,
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<Response, CallError> {
    call_on(None, addr, method, path, body).await
}

/// [`call`] on a connection to `addr` opened in advance, if any, else on a new one.
pub(crate) async fn call_on(
    opened: Option<tokio::net::TcpStream>,
    addr: &InstanceAddr,
    method: Method,
    path: &str,
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<Response, CallError> {
    let stream = match opened {
        Some(stream) => stream,
        None => kappa_sandbox::connector::connect(addr)
            .await
            .map_err(|source| CallError::Connect {
                addr: addr.clone(),
                source,
            })?,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| CallError::Http {
            addr: addr.clone(),
            source,
        })?;
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.authority())
        .header(header::CONNECTION, "close");
    let payload = match body {
        Some((content_type, bytes)) => {
            builder = builder.header(header::CONTENT_TYPE, content_type);
            Bytes::from(bytes)
        }
        None => Bytes::new(),
    };
    let request = builder.body(Full::new(payload))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| CallError::Http {
                addr: addr.clone(),
                source,
            })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| CallError::Body {
                addr: addr.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        Ok(Response { status, body })
    };
    // The connection is driven by this task, beside the exchange, rather than by a task of its
    // own: one exchange per connection, so a second task would only add a hand-off (a wake-up
    // of another task, maybe on another thread) to each direction of the call. The
    // connection's own end (its error, if any) surfaces through the exchange.
    let mut exchange = std::pin::pin!(exchange);
    let mut conn = std::pin::pin!(conn);
    let mut driving = true;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(result) = exchange.as_mut().poll(cx) {
            return std::task::Poll::Ready(result);
        }
        if driving && conn.as_mut().poll(cx).is_ready() {
            driving = false;
            // The connection ended: whatever it delivered is buffered for the exchange.
            return exchange.as_mut().poll(cx);
        }
        std::task::Poll::Pending
    })
    .await
}

/// Whether the runtime at `addr` answers `GET /healthz` within `timeout`. Any complete HTTP
/// answer counts, whatever its status: Fission's environment servers have no `/healthz` (its
/// Node.js server answers 500 to an unknown GET) and Fission itself only waits for the port.
pub(crate) async fn healthy(addr: &InstanceAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, call(addr, Method::GET, "/healthz", None)).await,
        Ok(Ok(_))
    )
}
