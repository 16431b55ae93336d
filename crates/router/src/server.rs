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
use crate::front::{self, Rewind};
use crate::proxy::ClientBody;
use crate::upstream::Upstreams;
use crate::{Inner, Router, admin, proxy, watcher};

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = front::HEADER_READ_TIMEOUT;
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
    // The router threads' listeners, made before anything runs so a failure stops nothing.
    let threads = inner.config.threads;
    let (public, listeners) = if threads == 0 {
        (Some(public), Vec::new())
    } else {
        (None, reuseport_listeners(public, threads)?)
    };
    let watcher = tokio::spawn(watcher::run(Arc::clone(&inner), shutdown.child_token()));
    let sweeper = {
        let inner = Arc::clone(&inner);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => inner.sweep_upstreams(),
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

    let connections = TaskTracker::new();
    // Cancelled when the grace period is over: open connections are then dropped.
    let force = CancellationToken::new();
    let mut workers = Vec::new();
    if let Some(public) = public {
        let pools = Arc::clone(&inner.upstreams);
        let worker = accept_loop(
            Arc::clone(&inner),
            public,
            pools,
            shutdown.clone(),
            force.clone(),
            connections.clone(),
        );
        workers.push(tokio::spawn(worker));
    } else {
        let _ = inner.main.set(tokio::runtime::Handle::current());
        for (n, listener) in listeners.into_iter().enumerate() {
            let pools = Arc::new(Upstreams::new(crate::MAX_IDLE_PER_ENDPOINT));
            inner
                .thread_upstreams
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Arc::clone(&pools));
            let (done, finished) = tokio::sync::oneshot::channel();
            let inner = Arc::clone(&inner);
            let (shutdown, force, tracker) = (shutdown.clone(), force.clone(), connections.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("kappa-router-{n}"))
                .spawn(move || {
                    let served = run_thread(inner, listener, pools, shutdown, force, tracker);
                    if let Err(error) = &served {
                        tracing::error!(%error, thread = n, "a router thread failed");
                    }
                    let _ = done.send(());
                });
            // A thread that did not start took its listener with it (the kernel then spreads
            // connections over the others).
            if let Err(error) = spawned {
                tracing::error!(%error, thread = n, "starting a router thread failed");
            }
            workers.push(tokio::spawn(async move {
                let _ = finished.await;
            }));
        }
        tracing::debug!(threads, "router threads serving the public listener");
    }
    shutdown.cancelled().await;
    // Every accept loop stops; then in-flight requests get the grace period.
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
    for worker in workers {
        let _ = worker.await;
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

/// The public listener's hyper settings.
fn http_builder() -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // hyper answers heads it cannot parse itself, with an empty body (hyper 1 has no hook
        // for that answer; `crate::errorhead` gives it the JSON error body on the way out).
        // Its buffer limit is set well above the router's own (`proxy::check_head`), so a URI
        // or header block that is merely too long reaches the router, which answers 414/431
        // itself; only heads past it (or malformed ones, 400) are answered by hyper.
        // The header count is left at hyper's default, which is the router's own limit
        // (`proxy::MAX_HEADERS`, 100): past it hyper answers 431 (`headers_too_large`, with
        // the JSON body from `crate::errorhead`). Setting `max_headers` at all makes hyper
        // allocate and fill two arrays of that many entries for every request head it parses
        // (2,700 instructions per request at 200, 5 % of the router's; without it they are
        // uninitialized stack arrays; see docs/benchmarks.md, "Router throughput: what was
        // tried").
        .max_buf_size(HYPER_MAX_BUF_BYTES);
    http
}

/// Serves a client connection with hyper's server until it ends (`read`: its bytes already
/// read); on `shutdown`, gracefully, and closed when `force` is cancelled.
#[allow(clippy::too_many_arguments)]
async fn serve_hyper(
    inner: Arc<Inner>,
    pools: Arc<Upstreams>,
    http: hyper::server::conn::http1::Builder,
    stream: tokio::net::TcpStream,
    read: bytes::Bytes,
    peer_ip: HeaderValue,
    peer: std::net::SocketAddr,
    shutdown: CancellationToken,
    force: CancellationToken,
) {
    // Tells the stream's wrapper when hyper may be writing its own error answer.
    let state = Arc::new(ConnState::default());
    let service = {
        let state = Arc::clone(&state);
        service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let busy = state.start();
            let inner = Arc::clone(&inner);
            let pools = Arc::clone(&pools);
            let state = Arc::clone(&state);
            let peer_ip = peer_ip.clone();
            async move {
                let (parts, body) = request.into_parts();
                let response =
                    proxy::handle(inner, &pools, peer_ip, parts, ClientBody::Hyper(body)).await;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    state.upgraded();
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
            }
        })
    };
    let io = ErrorHeadIo::new(Rewind::new(stream, read), state);
    // With upgrades: a `101` hands the connection to the splice (`crate::upgrade`).
    let connection = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
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
}

/// `threads` listeners on `public`'s address, `public` first, all with `SO_REUSEPORT` so the
/// kernel spreads new connections over them. `public` was bound without it (so a busy address
/// still fails to bind); setting it now lets the others join its group.
fn reuseport_listeners(
    public: TcpListener,
    threads: usize,
) -> Result<Vec<std::net::TcpListener>, RouterError> {
    let public = public.into_std().map_err(RouterError::Listener)?;
    let addr = public.local_addr().map_err(RouterError::Listener)?;
    if threads > 1 {
        socket2::SockRef::from(&public)
            .set_reuse_port(true)
            .map_err(RouterError::Listener)?;
    }
    let mut listeners = vec![public];
    while listeners.len() < threads {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.cloexec(),
            None,
        )
        .map_err(RouterError::Listener)?;
        socket
            .set_reuse_address(true)
            .map_err(RouterError::Listener)?;
        socket.set_reuse_port(true).map_err(RouterError::Listener)?;
        socket
            .set_nonblocking(true)
            .map_err(RouterError::Listener)?;
        socket.bind(&addr.into()).map_err(RouterError::Listener)?;
        socket.listen(1024).map_err(RouterError::Listener)?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// One router thread: a current-thread runtime serving `listener` until shutdown and the drain
/// of its connections. Every task of a request (the client connection, its upstream
/// connection, a WebSocket splice) runs on this thread.
fn run_thread(
    inner: Arc<Inner>,
    listener: std::net::TcpListener,
    pools: Arc<Upstreams>,
    shutdown: CancellationToken,
    force: CancellationToken,
    connections: TaskTracker,
) -> Result<(), RouterError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RouterError::Listener)?;
    runtime.block_on(async move {
        listener
            .set_nonblocking(true)
            .map_err(RouterError::Listener)?;
        let listener = TcpListener::from_std(listener).map_err(RouterError::Listener)?;
        accept_loop(inner, listener, pools, shutdown, force, connections).await;
        Ok(())
    })
}

/// Accepts connections on `public` until `shutdown`, serving each in a task of `connections`
/// (its requests' upstream connections from `pools`); then waits for them, closing them when
/// `force` is cancelled.
async fn accept_loop(
    inner: Arc<Inner>,
    public: TcpListener,
    pools: Arc<Upstreams>,
    shutdown: CancellationToken,
    force: CancellationToken,
    connections: TaskTracker,
) {
    let http = http_builder();
    // This loop's own connections, so it returns once they are done.
    let mine = TaskTracker::new();
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
        let inner = Arc::clone(&inner);
        let pools = Arc::clone(&pools);
        let shutdown = shutdown.clone();
        let force = force.clone();
        let http = http.clone();
        // Tracked twice: by the router (the grace period) and by this loop.
        let token = connections.token();
        mine.spawn(async move {
            let _token = token;
            // The lean path first (`crate::front`); hyper's server takes over the connection
            // at the first request it does not take, with the bytes read so far.
            let (stream, read) = if inner.config.lean_server {
                let served = tokio::select! {
                    outcome = front::serve(&inner, &pools, stream, &peer_ip, &shutdown) => outcome,
                    _ = force.cancelled() => return,
                };
                match served {
                    front::Outcome::Closed => return,
                    front::Outcome::Handoff(stream, read) => (stream, read.freeze()),
                }
            } else {
                (stream, bytes::Bytes::new())
            };
            serve_hyper(
                inner, pools, http, stream, read, peer_ip, peer, shutdown, force,
            )
            .await;
        });
    }
    drop(public);
    mine.close();
    mine.wait().await;
}
