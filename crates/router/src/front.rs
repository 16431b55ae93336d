//! The public listener's lean server path: the common request read with `httparse` and
//! answered by the client connection's own task, without hyper's server (design note 014).
//!
//! A connection starts here. Each request head is parsed from the connection's buffer; a
//! request this path takes (HTTP/1.1, not `CONNECT`, no `Transfer-Encoding`, `Upgrade`,
//! `Expect` or asynchronous-invocation header, a body of at most one valid `Content-Length` no
//! larger than [`crate::lean::MAX_BODY`] and the body limit that has already arrived whole
//! with its head, a head that parses into `http` types) is served by the same
//! [`proxy::handle`] as hyper's requests (route, admit, headers, forward, errors, metrics,
//! stats), and its answer written as hyper's server writes it ([`encode_head`]). The first
//! request it does not take, a head it cannot parse, one longer than [`MAX_HEAD`] or one cut
//! short by the client's end of stream hands the connection with every byte read so far
//! ([`Rewind`]) to hyper's server for the rest of the connection (`crate::server`), which then
//! answers exactly as before (its own 400/414/431 with their JSON bodies, `Expect`, upgrades,
//! chunked or late bodies, HTTP/1.0).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRAILER, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::body::ResponseBody;
use crate::proxy::{self, ClientBody};
use crate::upstream::Upstreams;

/// The longest request head this path reads; a longer one goes to hyper's server (whose own
/// limit is far above it).
const MAX_HEAD: usize = 16 * 1024;
/// The most header lines this path parses; more goes to hyper (which answers 431 past
/// `proxy::MAX_HEADERS`, the same number).
const MAX_HEADERS: usize = proxy::MAX_HEADERS;
/// How much is read from the client at once.
const READ_SIZE: usize = 8 * 1024;
/// How long a client may take to send a request head (hyper's setting, `crate::server`).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How early the header read timer may be set before it is moved (see [`serve`]).
const TIMER_SLACK: Duration = Duration::from_secs(1);

/// How the lean path left a connection.
pub(crate) enum Outcome {
    /// Closed (or to be dropped).
    Closed,
    /// For hyper's server, with the bytes already read.
    Handoff(TcpStream, BytesMut),
}

/// A request head this path takes.
struct Scanned {
    head_len: usize,
    body_len: usize,
    keep_alive: bool,
}

/// Where a request head's parts sit in the buffer.
struct Spans {
    method: (usize, usize),
    path: (usize, usize),
    headers: [(u32, u32, u32, u32); MAX_HEADERS],
    count: usize,
}

enum Scan {
    Lean(Scanned),
    Partial,
    /// Not for this path: hyper's server takes the connection.
    Hyper,
}

/// Parses the request head at the start of `buf` and decides whether this path takes it.
fn scan(buf: &[u8], body_limit: u64, spans: &mut Spans) -> Scan {
    let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Scan::Partial,
        Err(_) => return Scan::Hyper,
    };
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version)
    else {
        return Scan::Hyper;
    };
    if method == "CONNECT" {
        return Scan::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    spans.method = (at(method.as_bytes()), method.len());
    spans.path = (at(path.as_bytes()), path.len());
    let mut keep_alive = true;
    let mut length: Option<u64> = None;
    for (span, header) in spans.headers.iter_mut().zip(request.headers.iter()) {
        let name = header.name.as_bytes();
        match name.len() {
            6 if name.eq_ignore_ascii_case(b"expect") => return Scan::Hyper,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Scan::Hyper,
            10 if name.eq_ignore_ascii_case(b"connection")
                && connection_has(header.value, b"close") =>
            {
                keep_alive = false;
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let value = header.value;
                if length.is_some() || value.is_empty() || value.len() > 19 {
                    return Scan::Hyper;
                }
                let mut n = 0u64;
                for &c in value {
                    if !c.is_ascii_digit() {
                        return Scan::Hyper;
                    }
                    n = n * 10 + u64::from(c - b'0');
                }
                length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Scan::Hyper,
            _ if name.eq_ignore_ascii_case(kappa_types::INVOCATION_TYPE_HEADER.as_bytes()) => {
                return Scan::Hyper;
            }
            _ => {}
        }
        // A head is at most `MAX_HEAD` bytes here, far below `u32::MAX`.
        *span = (
            at(name) as u32,
            name.len() as u32,
            at(header.value) as u32,
            header.value.len() as u32,
        );
    }
    spans.count = request.headers.len();
    let body_len = length.unwrap_or(0);
    if body_len > crate::lean::MAX_BODY.min(body_limit) {
        return Scan::Hyper;
    }
    Scan::Lean(Scanned {
        head_len,
        // At most `lean::MAX_BODY`.
        body_len: body_len as usize,
        keep_alive,
    })
}

/// Whether a `Connection` value lists `token`.
fn connection_has(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The request's `Parts` from its head, whose bytes the header values and URI share; `None`
/// when a part is not valid for `http` (hyper then answers 400).
fn parts(head: &Bytes, spans: &Spans) -> Option<Parts> {
    let (mut parts, ()) = Request::new(()).into_parts();
    let (m, ml) = spans.method;
    parts.method = Method::from_bytes(&head[m..m + ml]).ok()?;
    let (p, pl) = spans.path;
    parts.uri = Uri::from_maybe_shared(head.slice(p..p + pl)).ok()?;
    parts.version = Version::HTTP_11;
    // Room for the invocation headers the router adds.
    let mut headers = HeaderMap::with_capacity(spans.count + 12);
    for &(n, nl, v, vl) in &spans.headers[..spans.count] {
        let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
        let name = HeaderName::from_bytes(&head[n..n + nl]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl)).ok()?;
        headers.append(name, value);
    }
    parts.headers = headers;
    Some(parts)
}

/// Serves the connection's requests until it closes or one is for hyper's server.
pub(crate) async fn serve(
    inner: &Arc<Inner>,
    upstreams: &Upstreams,
    mut stream: TcpStream,
    peer: &HeaderValue,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut spans = Spans {
        method: (0, 0),
        path: (0, 0),
        headers: [(0, 0, 0, 0); MAX_HEADERS],
        count: 0,
    };
    let body_limit = inner.config.max_body_bytes;
    // One shutdown wait and one timer for the connection's life, rather than one of each per
    // request: the timer is moved only when its deadline is more than a second early, and
    // when it fires early, moved to the true deadline (so a head still gets its full time).
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep(HEADER_READ_TIMEOUT);
    tokio::pin!(timer);
    loop {
        // A whole request head, within the header read timeout.
        let mut deadline = None;
        let scanned = loop {
            if !buf.is_empty() {
                match scan(&buf, body_limit, &mut spans) {
                    Scan::Lean(scanned) => break scanned,
                    Scan::Partial if buf.len() < MAX_HEAD => {}
                    Scan::Partial | Scan::Hyper => return Outcome::Handoff(stream, buf),
                }
            }
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + HEADER_READ_TIMEOUT);
            if deadline - timer.deadline() > TIMER_SLACK {
                timer.as_mut().reset(deadline);
            }
            buf.reserve(READ_SIZE);
            let read = tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => read,
                () = timer.as_mut() => {
                    if tokio::time::Instant::now() < deadline {
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    // hyper closes a connection whose head is late without an answer.
                    return Outcome::Closed;
                }
                // Shutdown closes a connection between requests.
                () = cancelled.as_mut() => return Outcome::Closed,
            };
            match read {
                Ok(n) if n > 0 => {}
                // End of stream after part of a head: hyper decides what that gets.
                Ok(_) if !buf.is_empty() => return Outcome::Handoff(stream, buf),
                // Closed between requests, or failed: hyper closes such a connection without
                // an answer.
                _ => return Outcome::Closed,
            }
        };
        // The body, whole, if it is already here (in the buffer or the socket's): a body
        // still on its way is hyper's, which serves the request while it arrives (a router
        // error at once, a function timeout if it stalls) exactly as before.
        let total = scanned.head_len + scanned.body_len;
        while buf.len() < total {
            buf.reserve(total - buf.len());
            match stream.try_read_buf(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => return Outcome::Handoff(stream, buf),
            }
        }
        let head = buf.split_to(scanned.head_len).freeze();
        let Some(parts) = parts(&head, &spans) else {
            // Put the head back for hyper, which answers it.
            let mut all = BytesMut::with_capacity(head.len() + buf.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(&buf);
            return Outcome::Handoff(stream, all);
        };
        let body = buf.split_to(scanned.body_len).freeze();
        let method = parts.method.clone();
        let handled = proxy::handle(
            Arc::clone(inner),
            upstreams,
            peer.clone(),
            parts,
            ClientBody::Read(body),
        );
        tokio::pin!(handled);
        // While the request is served, a client that closes the connection cancels it (as
        // hyper's server does); bytes it sends meanwhile (a pipelined request) are kept.
        let response = loop {
            if !buf.is_empty() {
                break handled.as_mut().await;
            }
            buf.reserve(READ_SIZE);
            tokio::select! {
                biased;
                response = handled.as_mut() => break response,
                read = stream.read_buf(&mut buf) => match read {
                    Ok(n) if n > 0 => {}
                    _ => return Outcome::Closed,
                },
            }
        };
        // Shutdown ends keep-alive: the answer says `connection: close` (as hyper's does).
        let keep_alive = scanned.keep_alive && !shutdown.is_cancelled();
        match respond(&mut stream, response, &method, keep_alive).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = stream.shutdown().await;
                return Outcome::Closed;
            }
            Err(error) => {
                tracing::debug!(%error, "writing an answer to the client failed");
                return Outcome::Closed;
            }
        }
    }
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// What the body says of its length (hyper's `BodyLength`, `None` for an ended body).
#[derive(Debug, Clone, Copy)]
enum BodyLen {
    Known(u64),
    Unknown,
}

/// Why an answer cannot be written: its headers contradict its body (hyper's "user header"
/// error, which closes the connection without an answer).
#[derive(Debug)]
struct BadHead;

fn can_chunked(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn can_have_content_length(status: StatusCode) -> bool {
    !(status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

/// A `Content-Length` value as hyper reads it: digits, possibly a comma-separated list of the
/// same number.
fn content_length(value: &HeaderValue) -> Option<u64> {
    let mut found = None;
    for part in value.as_bytes().split(|&c| c == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        match found {
            Some(previous) if previous != n => return None,
            _ => found = Some(n),
        }
    }
    found
}

/// Encodes a response head as hyper's HTTP/1.1 server does (its `Server::encode`, lower-case
/// names, a cached `date`), for a client that sent an HTTP/1.1 request with `method`: the
/// bytes, how the body goes, and whether the connection closes after it.
fn encode_head(
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    method: &Method,
    body: Option<BodyLen>,
    keep_alive: bool,
) -> Result<(Vec<u8>, Encoding, bool), BadHead> {
    // A client connection whose keep-alive is off says so (hyper's `enforce_version`).
    if !keep_alive {
        match headers.entry(CONNECTION) {
            http::header::Entry::Occupied(mut entry) => {
                if !entry.iter().any(|v| connection_has(v.as_bytes(), b"close")) {
                    entry.append(HeaderValue::from_static("close"));
                }
            }
            http::header::Entry::Vacant(entry) => {
                entry.insert(HeaderValue::from_static("close"));
            }
        }
    }
    let mut is_last = !keep_alive;
    let mut dst = Vec::with_capacity(64 + headers.len() * 32);
    if version == Version::HTTP_11 && status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let mut encoding = Encoding::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut name_written = false;
    let mut must_write_chunked = false;
    let mut previous_len = None;
    let mut current: Option<&HeaderName> = None;
    let end_line = |dst: &mut Vec<u8>, name_written: bool, must_write_chunked: bool| {
        if name_written {
            dst.extend_from_slice(if must_write_chunked {
                b", chunked\r\n"
            } else {
                b"\r\n"
            });
        }
    };
    for (name, value) in headers.iter() {
        if current != Some(name) {
            end_line(&mut dst, name_written, must_write_chunked);
            name_written = false;
            current = Some(name);
        }
        match *name {
            CONTENT_LENGTH => {
                if wrote_len && !name_written {
                    return Err(BadHead);
                }
                match body {
                    Some(BodyLen::Known(known)) => {
                        if !name_written {
                            encoding = Encoding::Length(known);
                            dst.extend_from_slice(b"content-length: ");
                            dst.extend_from_slice(value.as_bytes());
                            wrote_len = true;
                            name_written = true;
                        }
                        continue;
                    }
                    Some(BodyLen::Unknown) => {
                        let len = content_length(value).ok_or(BadHead)?;
                        match previous_len {
                            Some(previous) if previous != len => return Err(BadHead),
                            Some(_) => {}
                            None => {
                                encoding = Encoding::Length(len);
                                dst.extend_from_slice(b"content-length: ");
                                dst.extend_from_slice(value.as_bytes());
                                wrote_len = true;
                                name_written = true;
                                previous_len = Some(len);
                            }
                        }
                        continue;
                    }
                    None if *method == Method::HEAD => {}
                    None => continue,
                }
                wrote_len = true;
            }
            TRANSFER_ENCODING => {
                if wrote_len && !name_written {
                    return Err(BadHead);
                }
                if !can_chunked(method, status) {
                    continue;
                }
                wrote_len = true;
                must_write_chunked = !value
                    .as_bytes()
                    .rsplit(|&c| c == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if name_written {
                    dst.extend_from_slice(b", ");
                } else {
                    encoding = Encoding::Chunked;
                    name_written = true;
                    dst.extend_from_slice(b"transfer-encoding: ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            CONNECTION => {
                if !is_last && connection_has(value.as_bytes(), b"close") {
                    is_last = true;
                }
                if name_written {
                    dst.extend_from_slice(b", ");
                } else {
                    name_written = true;
                    dst.extend_from_slice(b"connection: ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            DATE => wrote_date = true,
            TRAILER => {
                // Never reached from the router: `Trailer` is hop-by-hop and stripped, so no
                // trailers are sent.
                if !can_chunked(method, status) {
                    continue;
                }
                if name_written {
                    dst.extend_from_slice(b", ");
                } else {
                    name_written = true;
                    dst.extend_from_slice(b"trailer: ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            _ => {}
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    end_line(&mut dst, name_written, must_write_chunked);
    if !wrote_len {
        encoding = match body {
            Some(BodyLen::Unknown) => {
                if version == Version::HTTP_10 || !can_chunked(method, status) {
                    Encoding::Close
                } else {
                    dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Encoding::Chunked
                }
            }
            None | Some(BodyLen::Known(0)) => {
                if can_have_content_length(status) && *method != Method::HEAD {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoding::Length(0)
            }
            Some(BodyLen::Known(len)) => {
                if can_have_content_length(status) {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(len.to_string().as_bytes());
                    dst.extend_from_slice(b"\r\n");
                    Encoding::Length(len)
                } else {
                    Encoding::Length(0)
                }
            }
        };
    }
    // No body for `HEAD`, `204`, `304`.
    if !can_chunked(method, status) {
        encoding = Encoding::Length(0);
    }
    if wrote_date {
        dst.extend_from_slice(b"\r\n");
    } else {
        dst.extend_from_slice(b"date: ");
        date::extend(&mut dst);
        dst.extend_from_slice(b"\r\n\r\n");
    }
    if encoding == Encoding::Close {
        is_last = true;
    }
    Ok((dst, encoding, is_last))
}

/// Writes `response` to the client; whether the connection stays open for another request.
async fn respond(
    stream: &mut TcpStream,
    response: http::Response<ResponseBody>,
    method: &Method,
    keep_alive: bool,
) -> io::Result<bool> {
    let (mut head, mut body) = response.into_parts();
    let length = if body.is_end_stream() {
        None
    } else {
        Some(
            body.size_hint()
                .exact()
                .map_or(BodyLen::Unknown, BodyLen::Known),
        )
    };
    let Ok((mut out, encoding, is_last)) = encode_head(
        head.status,
        head.version,
        &mut head.headers,
        method,
        length,
        keep_alive,
    ) else {
        tracing::warn!("an answer's headers contradict its body; closing the connection");
        return Ok(false);
    };
    let mut remaining = match encoding {
        Encoding::Length(0) => {
            // Nothing of the body is sent (hyper drops it unread too).
            drop(body);
            stream.write_all(&out).await?;
            return Ok(!is_last);
        }
        Encoding::Length(n) => n,
        Encoding::Chunked | Encoding::Close => u64::MAX,
    };
    // The head waits in `out` for the body's first bytes when they are there already.
    loop {
        let frame = match futures::FutureExt::now_or_never(body.frame()) {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            None => break,
            Some(Err(error)) => {
                // hyper aborts the connection when a body fails.
                tracing::debug!(%error, "response body failed");
                return Ok(false);
            }
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers: not sent (see `encode_head`).
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                match encoding {
                    Encoding::Chunked => {
                        let size = format!("{:X}\r\n", data.len());
                        write_all(stream, &mut [&out, size.as_bytes(), &data, b"\r\n"]).await?;
                    }
                    _ => {
                        if data.len() as u64 > remaining {
                            data.truncate(usize::try_from(remaining).unwrap_or(usize::MAX));
                        }
                        remaining -= data.len() as u64;
                        write_all(stream, &mut [&out, &data]).await?;
                    }
                }
                out.clear();
                if remaining == 0 {
                    // hyper stops at the declared length too.
                    drop(body);
                    return Ok(!is_last);
                }
            }
        }
    }
    match encoding {
        Encoding::Chunked => {
            write_all(stream, &mut [&out, b"0\r\n\r\n"]).await?;
            Ok(!is_last)
        }
        Encoding::Close => {
            write_all(stream, &mut [&out]).await?;
            Ok(false)
        }
        // Shorter than it said: hyper aborts the connection.
        Encoding::Length(_) => Ok(false),
    }
}

/// Writes all of `parts` (in one `writev` when the socket takes them).
async fn write_all(stream: &mut TcpStream, parts: &mut [&[u8]]) -> io::Result<()> {
    let mut slices = [IoSlice::new(&[]); 4];
    let mut count = 0;
    for part in parts.iter().filter(|p| !p.is_empty()).take(4) {
        slices[count] = IoSlice::new(part);
        count += 1;
    }
    let mut slices: &mut [IoSlice<'_>] = &mut slices[..count];
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// The `Date` header's value, formatted once a second per thread (as hyper caches it).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub(super) fn extend(dst: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                *cached = (secs, httpdate::fmt_http_date(now));
            }
            dst.extend_from_slice(cached.1.as_bytes());
        });
    }
}

/// A stream with bytes already read from it in front: what hyper's server gets when it takes
/// a connection over from this path.
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(inner: S, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(text: &str) -> Scan {
        let mut spans = Spans {
            method: (0, 0),
            path: (0, 0),
            headers: [(0, 0, 0, 0); MAX_HEADERS],
            count: 0,
        };
        scan(text.as_bytes(), 1 << 20, &mut spans)
    }

    #[test]
    fn which_requests_take_the_lean_path() {
        assert!(matches!(
            scanned("GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Scan::Lean(Scanned {
                body_len: 0,
                keep_alive: true,
                ..
            })
        ));
        assert!(matches!(
            scanned("POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: Close\r\n\r\nhello"),
            Scan::Lean(Scanned {
                body_len: 5,
                keep_alive: false,
                ..
            })
        ));
        assert!(matches!(scanned("GET / HTTP/1.1\r\nhost"), Scan::Partial));
        for hyper in [
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT a:1 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 999999\r\n\r\n",
            "POST / HTTP/1.1\r\nx-kappa-invocation-type: async\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(matches!(scanned(hyper), Scan::Hyper), "{hyper}");
        }
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let mut dst = Vec::new();
        date::extend(&mut dst);
        let text = std::str::from_utf8(&dst).expect("ASCII");
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }

    fn head(
        status: u16,
        headers: &[(&str, &str)],
        method: Method,
        body: Option<BodyLen>,
        keep_alive: bool,
    ) -> (String, Encoding, bool) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (bytes, encoding, last) = encode_head(
            StatusCode::from_u16(status).unwrap(),
            Version::HTTP_11,
            &mut map,
            &method,
            body,
            keep_alive,
        )
        .unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let (text, date) = text.rsplit_once("date: ").unwrap();
        assert_eq!(date.len(), 29 + 4);
        (text.to_string(), encoding, last)
    }

    #[test]
    fn heads_are_written_as_hyper_writes_them() {
        assert_eq!(
            head(
                200,
                &[("content-length", "5"), ("x-a", "1")],
                Method::GET,
                Some(BodyLen::Known(5)),
                true
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n".to_string(),
                Encoding::Length(5),
                false
            )
        );
        assert_eq!(
            head(
                200,
                &[("x-a", "1")],
                Method::GET,
                Some(BodyLen::Unknown),
                true
            ),
            (
                "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n".to_string(),
                Encoding::Chunked,
                false
            )
        );
        assert_eq!(
            head(404, &[("connection", "close")], Method::GET, None, true),
            (
                "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n".to_string(),
                Encoding::Length(0),
                true
            )
        );
        assert_eq!(
            head(200, &[("content-length", "7")], Method::HEAD, None, false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n".to_string(),
                Encoding::Length(0),
                true
            )
        );
        assert_eq!(
            head(
                204,
                &[("x-a", "1")],
                Method::GET,
                Some(BodyLen::Unknown),
                true
            ),
            (
                "HTTP/1.1 204 No Content\r\nx-a: 1\r\n".to_string(),
                Encoding::Length(0),
                false
            )
        );
        assert_eq!(
            head(200, &[("content-length", "0")], Method::GET, None, true),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n".to_string(),
                Encoding::Length(0),
                false
            )
        );
    }
}
