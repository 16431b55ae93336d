//! JSON bodies on hyper's own answers.
//!
//! For a request head it cannot parse (or one past its limits), hyper writes its own bodiless
//! `400 Bad Request` (`414`, `431`) before any service call, and has no hook for it. Every
//! other router answer carries the JSON error body ([`kappa_types::ErrorBody`]), so
//! [`ErrorHeadIo`] wraps each accepted connection and substitutes one there.
//!
//! hyper writes such a head only when no request of the connection is being served. The
//! service marks each request busy ([`ConnState::start`]) from its start until its response
//! body is done and the connection's next flush completed (hyper flushes a response's last
//! bytes after dropping its body); an upgraded connection ([`ConnState::upgraded`]) is never
//! looked at again. While idle, a write that is exactly a bodiless `400`/`414`/`431`/`505`
//! head is hyper's own, and is replaced by the same head with `content-type` and
//! `content-length` of a JSON body, followed by that body. On the hot path each write costs
//! one atomic load.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use kappa_types::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest head hyper writes for its own answers (status line, `connection`,
/// `content-length` and `date`).
const MAX_OWN_HEAD: usize = 256;

/// What the service tells the connection's [`ErrorHeadIo`].
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests started and not yet finished (whose responses may still be written).
    busy: AtomicU32,
    /// Requests finished since the last completed flush.
    finished: AtomicU32,
    /// The connection was upgraded: its bytes are another protocol's.
    upgraded: AtomicBool,
}

impl ConnState {
    /// Marks a request busy until the returned guard (kept with its response body) drops.
    pub(crate) fn start(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// The connection is upgraded: nothing written from now on is looked at.
    pub(crate) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// Whether a write now may be hyper's own answer.
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0 && !self.upgraded.load(Ordering::Relaxed)
    }

    /// A flush completed: the finished requests' bytes are all written.
    fn flushed(&self) {
        let finished = self.finished.swap(0, Ordering::Relaxed);
        if finished > 0 {
            self.busy.fetch_sub(finished, Ordering::Relaxed);
        }
    }
}

/// One request in flight; finished when dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request busy until it is done (dropped).
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, busy: Busy) -> Self {
        Self { body, _busy: busy }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An accepted connection whose hyper-made error heads get a JSON body.
#[derive(Debug)]
pub(crate) struct ErrorHeadIo<S> {
    inner: S,
    state: Arc<ConnState>,
    /// A substituted answer still being written, and how much of it was.
    pending: Option<(Bytes, usize)>,
}

impl<S> ErrorHeadIo<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> ErrorHeadIo<S> {
    /// Writes what is left of a substituted answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Substitutes `buf` when it is hyper's own error head; the bytes of `buf` it consumed.
    fn substitute(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let answer = json_answer(buf)?;
        self.pending = Some((answer, 0));
        Some(match self.poll_pending(cx) {
            // The rest goes out with the next write, flush or shutdown.
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorHeadIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorHeadIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if this.state.idle()
            && let Some(done) = this.substitute(cx, buf)
        {
            return done;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if this.state.idle() {
            // hyper's own answer is its head alone, in the first slice.
            let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
            if let (Some(first), None) = (nonempty.next(), nonempty.next())
                && let Some(done) = this.substitute(cx, first)
            {
                return done;
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.state.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// When `head` is exactly a bodiless error head of the kind hyper writes itself (status 400,
/// 414, 431 or 505, `content-length: 0`, nothing after the head), the same answer with a JSON
/// error body.
fn json_answer(head: &[u8]) -> Option<Bytes> {
    if head.len() > MAX_OWN_HEAD || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text[..text.len() - 4].split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.")?;
    let code = rest.get(2..5)?;
    let (code, message) = match code {
        "400" => (
            "bad_request",
            "the request head could not be parsed as HTTP/1.1 (request line or a header line is malformed)",
        ),
        "414" => ("uri_too_long", "the request target is too long"),
        "431" => ("headers_too_large", "the request head is too large"),
        "505" => (
            "http_version_not_supported",
            "the request's HTTP version is not supported",
        ),
        _ => return None,
    };
    let mut headers = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty_body = value.trim() == "0";
        } else if name.eq_ignore_ascii_case("content-type")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        } else {
            headers.push(line);
        }
    }
    if !empty_body {
        return None;
    }
    let body = ErrorBody::new(code, message).to_bytes();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in headers {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_error_heads_are_answered() {
        let head = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 19:00:00 GMT\r\n\r\n";
        let answer = json_answer(head).unwrap();
        let text = std::str::from_utf8(&answer).unwrap();
        let (head_out, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head_out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{text}"
        );
        assert!(head_out.contains("connection: close"), "{text}");
        assert!(
            head_out.contains("content-type: application/json"),
            "{text}"
        );
        assert!(
            head_out.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        let parsed: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.error.code, "bad_request");

        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n";
        assert!(json_answer(with_body).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(json_answer(ok).is_none());
        let partial = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n";
        assert!(json_answer(partial).is_none());
        let typed =
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n";
        assert!(json_answer(typed).is_none());
        assert!(
            json_answer(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            )
            .is_some()
        );
    }

    #[test]
    fn busy_ends_at_the_flush_after_the_response() {
        let state = Arc::new(ConnState::default());
        assert!(state.idle());
        let busy = state.start();
        assert!(!state.idle());
        drop(busy);
        assert!(
            !state.idle(),
            "the response's last bytes may still be unwritten"
        );
        state.flushed();
        assert!(state.idle());
        state.upgraded();
        assert!(!state.idle());
    }
}
