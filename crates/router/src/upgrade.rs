//! HTTP upgrades (WebSockets) through the router.
//!
//! An upgrade request (`Connection: upgrade` plus `Upgrade: <protocol>`) keeps those two
//! headers on its way to the instance (every other hop-by-hop header still goes). When the
//! instance answers `101 Switching Protocols`, the client gets the `101` and the two upgraded
//! connections are spliced byte for byte ([`splice`]) for the connection's life:
//! - the instance's slot (its [`kappa_core::Permit`]) is held until the spliced connection
//!   closes, so an open socket counts toward `requestsPerPod`;
//! - the upstream connection never returns to the keep-alive pool (it is no longer HTTP);
//! - with no byte either way for [`crate::RouterConfig::upgrade_idle_timeout`], both sides are
//!   closed;
//! - the instance's end of stream ends the connection (after what it sent reached the client);
//!   the client's end of stream is passed on to the instance, which may still answer.
//!
//! Any other answer to an upgrade request is an ordinary response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;

use crate::body::Lease;

/// How long the router waits for either side to hand over its upgraded connection.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Upgrade` value of an upgrade request (one whose `Connection` lists `upgrade`), if any.
pub(crate) fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let listed = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !listed {
        return None;
    }
    headers.get(UPGRADE).cloned()
}

/// Puts back the two headers an upgrade needs after the hop-by-hop ones were removed.
pub(crate) fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Splices the client's and the instance's upgraded connections in a task of its own, holding
/// `lease` (the instance's slot and the in-flight gauge) until the spliced connection closes.
pub(crate) fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    lease: Lease,
    idle: Duration,
    function: String,
) {
    tokio::spawn(async move {
        let handover = async { tokio::try_join!(client, upstream) };
        let (client, upstream) = match tokio::time::timeout(HANDOVER_TIMEOUT, handover).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                tracing::debug!(%function, %error, "upgrade handover failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%function, "upgrade handover timed out");
                return;
            }
        };
        let activity = Arc::new(Activity::new());
        let client = Tracked::new(TokioIo::new(client), Arc::clone(&activity));
        let upstream = Tracked::new(TokioIo::new(upstream), Arc::clone(&activity));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
        // Client to instance: at the client's end of stream, the instance's write side is shut
        // down and the instance may still answer.
        let up = async {
            let copied = tokio::io::copy(&mut client_read, &mut upstream_write).await;
            let _ = upstream_write.shutdown().await;
            copied
        };
        // Instance to client: the instance's end of stream ends the connection (a function
        // that closed its socket is done with it, even if the client has not closed yet).
        let down = async {
            let copied = tokio::io::copy(&mut upstream_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
            copied
        };
        let copy = async {
            tokio::pin!(up);
            tokio::pin!(down);
            let mut up_done = false;
            loop {
                tokio::select! {
                    result = &mut up, if !up_done => {
                        up_done = true;
                        result?;
                    }
                    result = &mut down => return result,
                }
            }
        };
        tokio::pin!(copy);
        loop {
            let deadline = activity.last() + idle;
            tokio::select! {
                result = &mut copy => {
                    match result {
                        Ok(down) => tracing::debug!(%function, down, "upgraded connection closed"),
                        Err(error) => tracing::debug!(%function, %error, "upgraded connection ended with an error"),
                    }
                    break;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if activity.last() + idle <= Instant::now() {
                        tracing::debug!(%function, idle_s = idle.as_secs(), "upgraded connection idle; closing it");
                        break;
                    }
                }
            }
        }
        // Dropping both connections closes them; the upstream one is never pooled.
        drop(lease);
    });
}

/// When bytes last moved either way, as milliseconds since `start`. Atomic: both directions of
/// the copy update it from the one task, and the watchdog reads it without a lock.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// An IO that records reads of at least one byte in its [`Activity`].
struct Tracked<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&h), None, "Upgrade without Connection: upgrade");
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested(&h).unwrap(), "websocket");
        h.remove(UPGRADE);
        assert_eq!(requested(&h), None);
    }
}
