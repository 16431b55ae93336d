//! The serving loop: the watcher, the public hyper listener, the admin axum listener, and the
//! drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::RouterError;
use crate::errorhead::{ConnState, ErrorHeadIo, Tracked};
use crate::{Inner, Router, admin, proxy, watcher};

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's own limit on request headers (431 from hyper past it); above
/// [`proxy::MAX_HEADERS`].
const HYPER_MAX_HEADERS: usize = 4 * proxy::MAX_HEADERS;
/// hyper's read buffer, which must hold a whole request head (431 or 414 from hyper past it);
/// well above [`proxy::MAX_URI_BYTES`] plus [`proxy::MAX_HEADER_BYTES`].
const HYPER_MAX_BUF_BYTES: usize = 256 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) async fn serve(
    inner: Arc<Inner>,
    public: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    if let (Ok(public), Ok(admin)) = (public.local_addr(), admin.local_addr()) {
        tracing::info!(%public, %admin, "router listening");
    }
    let watcher = tokio::spawn(watcher::run(Arc::clone(&inner), shutdown.child_token()));
    let sweeper = {
        let inner = Arc::clone(&inner);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => inner.upstreams.sweep(),
                }
            }
        })
    };
    let mut admin_task = {
        let app = admin::app(Router {
            inner: Arc::clone(&inner),
        });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(admin, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    };

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // hyper answers heads it cannot parse itself, with an empty body (hyper 1 has no hook
        // for that answer; `crate::errorhead` gives it the JSON error body on the way out).
        // Its limits are set well above the router's own (`proxy::check_head`), so a head that
        // is merely too large reaches the router, which answers 414/431 itself; only heads past
        // these (or malformed ones, 400) are answered by hyper.
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_BUF_BYTES);
    let connections = TaskTracker::new();
    // Cancelled when the grace period is over: open connections are then dropped.
    let force = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = public.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "setting TCP_NODELAY failed");
        }
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        // Tells the stream's wrapper when hyper may be writing its own error answer.
        let state = Arc::new(ConnState::default());
        let service = {
            let inner = Arc::clone(&inner);
            let state = Arc::clone(&state);
            service_fn(move |request| {
                let busy = state.start();
                let inner = Arc::clone(&inner);
                let state = Arc::clone(&state);
                let peer_ip = peer_ip.clone();
                async move {
                    let response = proxy::handle(inner, peer_ip, request).await;
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        state.upgraded();
                    }
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
                }
            })
        };
        // With upgrades: a `101` hands the connection to the splice (`crate::upgrade`).
        let connection = http
            .serve_connection(TokioIo::new(ErrorHeadIo::new(stream, state)), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        let force = force.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "client connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = force.cancelled() => {}
            }
        });
    }
    drop(public);
    connections.close();

    let grace = inner.config.shutdown_grace;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            grace_s = grace.as_secs(),
            "connections still busy after the grace period; closing them"
        );
        force.cancel();
        connections.wait().await;
    }
    let admin_result = match tokio::time::timeout(grace, &mut admin_task).await {
        Ok(Ok(result)) => result.map_err(RouterError::Admin),
        Ok(Err(join)) => Err(RouterError::Admin(std::io::Error::other(join.to_string()))),
        Err(_) => {
            admin_task.abort();
            Ok(())
        }
    };
    sweeper.abort();
    match watcher.await {
        Ok(()) => {}
        Err(join) if join.is_panic() => return Err(RouterError::Watcher(join.to_string())),
        Err(_) => {}
    }
    tracing::info!("router stopped");
    admin_result
}
