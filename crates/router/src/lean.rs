//! The lean upstream exchange: the common request (no body, or a small `Content-Length` body)
//! written to a pooled instance connection and its response head parsed with `httparse`, in
//! the client connection's own task.
//!
//! hyper's client connection costs a task of its own per upstream connection, a dispatcher and
//! a channel between the request's task and that one (a wake-up each way per request), and the
//! encode and decode of a `Request` and a `Response`. None of it is needed for a request whose
//! body is already known to be small: the head is written as hyper would write it, the body
//! follows, and the response body is read from the socket by the client connection's task
//! while it writes it to the client ([`LeanBody`]). Everything else (upgrades, `Expect`,
//! chunked or large request bodies) keeps hyper's client (`crate::upstream`, design note 013).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::body::{RequestBody, RequestBodyError};
use crate::proxy::Invocation;

/// The largest request body sent on the lean path: small enough that the instance's socket
/// buffer takes it whole, so writing it before reading the answer cannot wait on an instance
/// that answers early without reading it.
pub(crate) const MAX_BODY: u64 = 64 * 1024;
/// The longest response head accepted (hyper's client accepts about as much).
const MAX_HEAD: usize = 256 * 1024;
/// The most response header lines accepted (hyper's client default).
const MAX_RESPONSE_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) of a chunked response.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// How much is read from the instance at once.
const READ_SIZE: usize = 16 * 1024;
/// Heads and body pieces up to this size are copied out of the read buffer rather than split
/// off it (see [`take`]).
const COPY_MAX: usize = 4 * 1024;
/// Room reserved in a request head for the invocation headers (about 350 bytes with a long
/// function name and URL; a longer head grows the buffer once).
const INVOCATION_ROOM: usize = 512;

/// A keep-alive HTTP/1.1 connection to an instance, with what was read and not yet used.
#[derive(Debug)]
pub(crate) struct LeanConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why a lean exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The first write failed: nothing reached the instance.
    #[error("{0}")]
    NotSent(#[source] io::Error),
    /// Reading the client's body failed, or it passed the limit.
    #[error(transparent)]
    Body(RequestBodyError),
    /// Writing or reading failed after the request started going out.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The instance closed the connection before a complete response head.
    #[error("connection closed before a complete response")]
    Closed,
    /// The instance's response could not be parsed.
    #[error("{0}")]
    Invalid(String),
}

/// A response head from an instance, and how its body is framed.
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request once this response is read.
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `Content-Length` bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Eof,
    /// Read completely.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

impl LeanConn {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take a request: the instance did not close it or send
    /// anything meanwhile. Costs a system call only when the socket's readiness is set.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of the instance's bytes into the buffer; `0` at its end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want.clamp(1, READ_SIZE));
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, READ_SIZE)).await
    }

    /// Sends the request (`parts`, then `len` bytes of `body`; `first` is a part of the body
    /// taken from it already, kept by the caller across attempts) and reads the response head.
    pub async fn exchange(
        &mut self,
        parts: &Parts,
        invocation: &Invocation,
        body: &mut RequestBody,
        len: u64,
        first: &mut Option<Bytes>,
    ) -> Result<Head, ExchangeError> {
        let head = encode_head(parts, invocation);
        // The body's first bytes go with the head when they are already there.
        if len > 0 && first.is_none() {
            match futures::FutureExt::now_or_never(body.frame()) {
                Some(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        *first = Some(data);
                    }
                }
                Some(Some(Err(error))) => return Err(ExchangeError::Body(error)),
                Some(None) | None => {}
            }
        }
        let mut sent = 0u64;
        {
            let mut bufs = [
                IoSlice::new(&head),
                IoSlice::new(first.as_deref().unwrap_or(&[])),
            ];
            let total = head.len() + bufs[1].len();
            let mut written = 0;
            let mut slices: &mut [IoSlice<'_>] = &mut bufs;
            while written < total {
                let n = match self.stream.write_vectored(slices).await {
                    Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => Ok(n),
                    Err(error) => Err(error),
                };
                let n = match n {
                    Ok(n) => n,
                    Err(error) if written == 0 => return Err(ExchangeError::NotSent(error)),
                    Err(error) => return Err(ExchangeError::Io(error)),
                };
                written += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            sent += (total - head.len()) as u64;
        }
        while sent < len {
            let Some(frame) = body.frame().await else {
                break;
            };
            let frame = frame.map_err(ExchangeError::Body)?;
            if let Ok(data) = frame.into_data() {
                sent += data.len() as u64;
                self.stream
                    .write_all(&data)
                    .await
                    .map_err(ExchangeError::Io)?;
            }
        }
        self.read_head(parts.method == Method::HEAD).await
    }

    /// Reads a response head, skipping informational (`1xx` other than `101`) ones.
    async fn read_head(&mut self, head_request: bool) -> Result<Head, ExchangeError> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, head_request)? {
                    Some(Parsed::Final(head)) => return Ok(head),
                    Some(Parsed::Informational) => continue,
                    None => {}
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(ExchangeError::Invalid(format!(
                        "response head larger than {MAX_HEAD} bytes"
                    )));
                }
            }
            if self.fill().await.map_err(ExchangeError::Io)? == 0 {
                return Err(ExchangeError::Closed);
            }
        }
    }
}

/// The request head as hyper's client writes it: request line, then each header as
/// `name: value`, in the map's order, with the invocation headers as setting them on the map
/// would have placed them.
fn encode_head(parts: &Parts, invocation: &Invocation) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let method = parts.method.as_str();
    let size = method.len()
        + target.len()
        + 13
        + parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + INVOCATION_ROOM
        + 2;
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    invocation.write_headers(&parts.headers, &mut head);
    head.extend_from_slice(b"\r\n");
    head
}

enum Parsed {
    Final(Head),
    Informational,
}

/// The first `n` bytes of `buf`, removed from it. A small piece is copied, so the buffer keeps
/// sole ownership of its allocation and the next read reuses it; split off, it would share the
/// allocation with the piece until the piece is dropped, and the next read would allocate a
/// new buffer of [`READ_SIZE`] for every response (a large allocation, which also makes the
/// allocator consolidate its free lists). A large piece is split off without a copy.
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n <= COPY_MAX {
        let piece = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        piece
    } else {
        buf.split_to(n).freeze()
    }
}

/// Parses a response head at the start of `buf`, removing it; `None` when incomplete.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, ExchangeError> {
    let invalid = |e: &dyn std::fmt::Display| ExchangeError::Invalid(e.to_string());
    // Uninitialized: httparse fills what it parses (initializing 100 entries costs more than
    // parsing a typical head).
    let mut lines =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut lines,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(invalid(&error)),
    };
    let code = response.code.unwrap_or(0);
    let version = response.version.unwrap_or(1);
    let status = StatusCode::from_u16(code).map_err(|e| invalid(&e))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    // Where each name and value sits in the head, so the map shares the head's bytes.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_RESPONSE_HEADERS];
    let count = response.headers.len();
    for (span, header) in spans.iter_mut().zip(response.headers.iter()) {
        let name = header.name.as_ptr() as usize - base;
        let value = header.value.as_ptr() as usize - base;
        // The head is at most `MAX_HEAD` bytes, far below `u32::MAX`.
        *span = (
            name as u32,
            header.name.len() as u32,
            value as u32,
            header.value.len() as u32,
        );
    }
    let head = take(buf, len);
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, name_len, value, value_len) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name as usize..(name + name_len) as usize])
            .map_err(|e| invalid(&e))?;
        let value = HeaderValue::from_maybe_shared(
            head.slice(value as usize..(value + value_len) as usize),
        )
        .map_err(|e| invalid(&e))?;
        headers.append(name, value);
    }
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut keep_alive = version == Version::HTTP_11;
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if token.eq_ignore_ascii_case("keep-alive") && version == Version::HTTP_10 {
                keep_alive = true;
            }
        }
    }
    let framing = if head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        Framing::Done
    } else if headers.contains_key(TRANSFER_ENCODING) {
        // The last coding decides; the length, if any, is not the body's (RFC 9112, 6.3).
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        headers.remove(CONTENT_LENGTH);
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Eof
        }
    } else {
        let mut length = None;
        for value in headers.get_all(CONTENT_LENGTH) {
            let parsed = value
                .to_str()
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, length) {
                (None, _) => return Err(ExchangeError::Invalid("invalid content-length".into())),
                (Some(n), Some(previous)) if n != previous => {
                    return Err(ExchangeError::Invalid(
                        "conflicting content-length values".into(),
                    ));
                }
                (Some(n), _) => length = Some(n),
            }
        }
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    };
    if matches!(framing, Framing::Eof) {
        keep_alive = false;
    }
    Ok(Some(Parsed::Final(Head {
        status,
        headers,
        framing,
        keep_alive,
    })))
}

/// What finishes when a lean response body ends: given the connection back when it can carry
/// another request.
pub(crate) trait Finish: Send {
    fn finish(self: Box<Self>, conn: Option<LeanConn>);
}

/// An instance's response body, read from its connection by the task that writes it to the
/// client.
pub(crate) struct LeanBody {
    conn: Option<LeanConn>,
    framing: Framing,
    keep_alive: bool,
    lease: Option<Box<dyn Finish>>,
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("reading the instance's response body failed: {0}")]
    Io(#[from] io::Error),
    #[error("the instance closed the connection before the end of the response body")]
    Incomplete,
    #[error("the instance's chunked response body is malformed: {0}")]
    Chunked(&'static str),
}

impl LeanBody {
    pub(crate) fn new(conn: LeanConn, head: &Head, lease: Box<dyn Finish>) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: head.keep_alive,
            lease: Some(lease),
        };
        if matches!(body.framing, Framing::Done) {
            body.end(true);
        }
        body
    }

    /// Ends the exchange: the connection goes back when the body was read completely, the
    /// instance keeps it open and sent nothing past the response.
    fn end(&mut self, complete: bool) {
        self.framing = Framing::Done;
        let conn = self
            .conn
            .take()
            .filter(|conn| complete && self.keep_alive && conn.buf.is_empty());
        if let Some(lease) = self.lease.take() {
            lease.finish(conn);
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.keep_alive = false;
        self.end(false);
        Poll::Ready(Some(Err(error)))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done => {
                    self.end(true);
                    return Poll::Ready(None);
                }
                Framing::Length(remaining) => {
                    if conn.buf.is_empty() {
                        let want = usize::try_from(remaining).unwrap_or(READ_SIZE);
                        match conn.poll_fill(cx, want) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => return self.fail(e.into()),
                            Poll::Ready(Ok(0)) => return self.fail(BodyError::Incomplete),
                            Poll::Ready(Ok(_)) => {}
                        }
                    }
                    let n = conn
                        .buf
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let data = take(&mut conn.buf, n);
                    let left = remaining - n as u64;
                    self.framing = Framing::Length(left);
                    if left == 0 {
                        // The connection is free before the last bytes reach the client.
                        self.end(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Eof => {
                    if conn.buf.is_empty() {
                        match conn.poll_fill(cx, READ_SIZE) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => return self.fail(e.into()),
                            Poll::Ready(Ok(0)) => {
                                self.end(true);
                                return Poll::Ready(None);
                            }
                            Poll::Ready(Ok(_)) => {}
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.buf, state) {
                    Err(error) => return self.fail(BodyError::Chunked(error)),
                    Ok(Step::Next(state)) => self.framing = Framing::Chunked(state),
                    Ok(Step::Data(data, state)) => {
                        self.framing = Framing::Chunked(state);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::End(trailers)) => {
                        self.end(true);
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Step::More) => match conn.poll_fill(cx, READ_SIZE) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return self.fail(e.into()),
                        Poll::Ready(Ok(0)) => return self.fail(BodyError::Incomplete),
                        Poll::Ready(Ok(_)) => {}
                    },
                },
            }
        }
    }
}

enum Step {
    /// More bytes are needed.
    More,
    /// A new state, nothing to yield.
    Next(Chunk),
    /// Chunk data.
    Data(Bytes, Chunk),
    /// The body ended, with its trailers if it had any.
    End(Option<HeaderMap>),
}

/// One step of decoding a chunked body from `buf`.
fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> Result<Step, &'static str> {
    match state {
        Chunk::Size => {
            let Some(end) = buf.iter().position(|&c| c == b'\n') else {
                return if buf.len() > MAX_CHUNK_LINE {
                    Err("chunk-size line too long")
                } else {
                    Ok(Step::More)
                };
            };
            let line = &buf[..end];
            let digits = line
                .iter()
                .position(|c| !c.is_ascii_hexdigit())
                .unwrap_or(line.len());
            if digits == 0 || digits > 16 {
                return Err("invalid chunk size");
            }
            let rest = &line[digits..];
            let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
            if !(rest.is_empty() || matches!(rest.first(), Some(b';' | b' ' | b'\t'))) {
                return Err("invalid chunk size");
            }
            let text = std::str::from_utf8(&line[..digits]).map_err(|_| "invalid chunk size")?;
            let size = u64::from_str_radix(text, 16).map_err(|_| "invalid chunk size")?;
            buf.advance(end + 1);
            Ok(Step::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let n = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let left = remaining - n as u64;
            Ok(Step::Data(
                data,
                if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                },
            ))
        }
        Chunk::DataEnd => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
            } else if buf.starts_with(b"\n") {
                buf.advance(1);
            } else if buf.len() < 2 && buf.first().is_none_or(|&c| c == b'\r') {
                return Ok(Step::More);
            } else {
                return Err("missing CRLF after chunk data");
            }
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            match httparse::parse_headers(buf, &mut lines) {
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err("trailers too large"),
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err("invalid trailers"),
                Ok(httparse::Status::Complete((len, parsed))) => {
                    let trailers = if parsed.is_empty() {
                        None
                    } else {
                        let mut map = HeaderMap::with_capacity(parsed.len());
                        for line in parsed.iter() {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(line.name.as_bytes()),
                                HeaderValue::from_bytes(line.value),
                            ) {
                                map.append(name, value);
                            }
                        }
                        Some(map)
                    };
                    buf.advance(len);
                    Ok(Step::End(trailers))
                }
            }
        }
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for LeanBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: it is closed.
        let complete = matches!(self.framing, Framing::Done | Framing::Length(0));
        self.end(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> Result<Option<Parsed>, ExchangeError> {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf, head_request)
    }

    fn final_head(text: &str) -> Head {
        match head(text, false) {
            Ok(Some(Parsed::Final(head))) => head,
            _ => panic!("no final head in {text:?}"),
        }
    }

    #[test]
    fn a_small_response_leaves_the_read_buffer_reusable() {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        buf.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: a/b\r\ncontent-length: 5\r\n\r\nhello",
        );
        let start = buf.as_ptr();
        let Ok(Some(Parsed::Final(h))) = parse_head(&mut buf, false) else {
            panic!("no final head");
        };
        let body = take(&mut buf, 5);
        assert_eq!(&body[..], b"hello");
        assert_eq!(h.headers[http::header::CONTENT_TYPE], "a/b");
        // With the head and the body still held, the next read goes into the same allocation.
        assert!(buf.is_empty());
        buf.reserve(READ_SIZE);
        assert_eq!(buf.as_ptr(), start);
        // A large piece is split off, not copied.
        buf.extend_from_slice(&[b'x'; COPY_MAX + 1]);
        let big = take(&mut buf, COPY_MAX + 1);
        assert_eq!(big.as_ptr(), start);
    }

    #[test]
    fn response_framing() {
        let h = final_head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
        assert!(matches!(h.framing, Framing::Length(5)));
        assert!(h.keep_alive);
        let h = final_head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
        );
        assert!(matches!(h.framing, Framing::Chunked(Chunk::Size)));
        assert!(!h.headers.contains_key(CONTENT_LENGTH));
        let h = final_head("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(h.framing, Framing::Eof));
        assert!(!h.keep_alive);
        let h = final_head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h =
            final_head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n");
        assert!(h.keep_alive);
        let h = final_head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = final_head("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n");
        assert!(matches!(h.framing, Framing::Done));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true),
            Ok(Some(Parsed::Final(Head {
                framing: Framing::Done,
                ..
            })))
        ));
        assert!(matches!(
            head("HTTP/1.1 100 Continue\r\n\r\n", false),
            Ok(Some(Parsed::Informational))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\ncontent-le", false),
            Ok(None)
        ));
        assert!(
            head(
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert!(head("garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nx-sum: 1\r\n\r\n";
        for split in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let mut rest = &wire[split..];
            let mut state = Chunk::Size;
            let mut out = Vec::new();
            let trailers = loop {
                match decode_chunk(&mut buf, state).unwrap() {
                    Step::More => {
                        assert!(!rest.is_empty(), "more wanted at the end (split {split})");
                        buf.extend_from_slice(&rest[..1]);
                        rest = &rest[1..];
                    }
                    Step::Next(next) => state = next,
                    Step::Data(data, next) => {
                        out.extend_from_slice(&data);
                        state = next;
                    }
                    Step::End(trailers) => break trailers,
                }
            };
            assert_eq!(out, b"hello world!");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
            assert!(buf.is_empty() && rest.is_empty());
        }
        let mut bad = BytesMut::from("zz\r\n");
        assert!(decode_chunk(&mut bad, Chunk::Size).is_err());
        let mut bad = BytesMut::from("xy");
        assert!(decode_chunk(&mut bad, Chunk::DataEnd).is_err());
    }

    #[test]
    fn request_heads_are_written_as_hyper_writes_them() {
        let (mut parts, ()) = http::Request::builder()
            .method("POST")
            .uri("/a/b?c=d")
            .header("host", "example")
            .header("content-length", "3")
            .body(())
            .unwrap()
            .into_parts();
        parts
            .headers
            .append("x-multi", HeaderValue::from_static("1"));
        parts
            .headers
            .append("x-multi", HeaderValue::from_static("2"));
        let invocation = crate::proxy::Invocation::example(&parts.headers);
        assert_eq!(
            std::str::from_utf8(&encode_head(&parts, &invocation)).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nhost: example\r\ncontent-length: 3\r\nx-multi: 1\r\nx-multi: 2\r\n\
             x-kappa-function-name: fn\r\nx-kappa-function-namespace: ns\r\n\
             x-fission-function-name: fn\r\nx-fission-function-namespace: ns\r\n\
             x-kappa-invocation-id: abc\r\nx-fission-full-url: /a\r\nx-kappa-full-url: /a\r\n\
             x-forwarded-for: 127.0.0.1\r\nx-forwarded-host: example\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }
}
