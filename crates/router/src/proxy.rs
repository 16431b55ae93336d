//! The request path: route, admit, forward, answer.
//!
//! A warm request costs one route-table load, one radix-tree lookup and one compare-and-swap on
//! an endpoint's in-flight counter; it makes no call to the pool manager. Only a miss takes the
//! slow path ([`admit_slow`]): provision, then the function's bounded wait queue.

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body as _;
use hyper::body::Incoming;
use kappa_core::{FunctionId, Permit, Provision, ProvisionError};
use tokio::time::Instant;
use tracing::Instrument;

use crate::Inner;
use crate::body::{LeanLease, Lease, RequestBody, RequestBodyError, ResponseBody};
use crate::error::Failure;
use crate::lean::{ExchangeError, LeanBody, LeanConn};
use crate::metrics::{InflightGuard, method_label};
use crate::table::{FunctionEntry, Lookup, PathMode};
use crate::upstream::{ConnectError, EndpointPool, Upstreams};

pub(crate) static INVOCATION_ID: HeaderName = HeaderName::from_static("x-kappa-invocation-id");
static FUNCTION_NAME: HeaderName = HeaderName::from_static("x-kappa-function-name");
static FUNCTION_NAMESPACE: HeaderName = HeaderName::from_static("x-kappa-function-namespace");
static FULL_URL: HeaderName = HeaderName::from_static("x-kappa-full-url");
// Fission's names for the same facts, for functions written for Fission.
static FISSION_FUNCTION_NAME: HeaderName = HeaderName::from_static("x-fission-function-name");
static FISSION_FUNCTION_NAMESPACE: HeaderName =
    HeaderName::from_static("x-fission-function-namespace");
static FISSION_FULL_URL: HeaderName = HeaderName::from_static("x-fission-full-url");
static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How often a queued request asks the provisioner again (capacity may have been freed in a way
/// that does not wake the queue, e.g. the function's cap was raised), plus up to
/// [`REASK_JITTER_MS`] so a full queue does not ask in lockstep.
const REASK_INTERVAL: Duration = Duration::from_millis(400);
const REASK_JITTER_MS: u64 = 200;
/// How long a failed request waits for the backend's report of why its instance ended.
const EXIT_REPORT_WAIT: Duration = Duration::from_millis(500);

/// The request's server span (FaaS and HTTP semantic conventions), continuing the caller's
/// W3C trace context; only called for a request [`kappa_telemetry::sampled`] chose.
fn server_span(
    name: &'static str,
    trigger: &'static str,
    invocation_id: &HeaderValue,
    method: &Method,
    headers: &HeaderMap,
) -> tracing::Span {
    let span = kappa_telemetry::span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        faas.trigger = trigger,
        faas.invocation_id = invocation_id.to_str().unwrap_or_default(),
        faas.name = tracing::field::Empty,
        faas.coldstart = tracing::field::Empty,
        kappa.function.namespace = tracing::field::Empty,
        http.route = tracing::field::Empty,
        http.request.method = method.as_str(),
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    kappa_telemetry::set_parent(&span, headers);
    if let Some(id) = kappa_telemetry::trace_id(&span) {
        span.record("trace_id", id.as_str());
    }
    span
}

/// Records the function (and route) the current request span serves.
fn record_function(entry: &FunctionEntry, method: &Method, route: Option<&str>) {
    let span = tracing::Span::current();
    span.record("faas.name", &*entry.id.name);
    span.record("kappa.function.namespace", &*entry.id.namespace);
    if let Some(route) = route {
        span.record("http.route", route);
        kappa_telemetry::set_name(&span, format!("{method} {route}"));
    } else {
        kappa_telemetry::set_name(&span, format!("invoke {}", entry.id));
    }
}

/// Records the answer's status on the current request span.
fn record_status(status: StatusCode) {
    let span = tracing::Span::current();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// 128 random bits in hex.
fn new_invocation_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// [`is_hop_by_hop`] for a name as a client wrote it (any case), without parsing it.
fn is_hop_by_hop_token(token: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .any(|h| token.eq_ignore_ascii_case(h))
        || token
            .as_bytes()
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Removes hop-by-hop headers (and those `Connection` names); on the public path also any
/// `X-Kappa-*` or `X-Fission-*` header a client sent, so functions can trust the ones the
/// router (and the triggers, on the internal path) set.
///
/// Runs twice per proxied request (the request, and the instance's response, which usually
/// carries `Connection: keep-alive`), so it allocates only when `Connection` names a header
/// that is not hop-by-hop anyway.
fn strip_headers(headers: &mut HeaderMap, strip_kappa: bool) {
    let unwanted = |name: &str| {
        is_hop_by_hop(name)
            || (strip_kappa && (name.starts_with("x-kappa-") || name.starts_with("x-fission-")))
    };
    // One pass to find out whether there is anything to do: usually there is not.
    if !headers.keys().any(|n| unwanted(n.as_str())) {
        return;
    }
    // The names `Connection` lists, except those removed below anyway (`keep-alive`, ...).
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            if is_hop_by_hop_token(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
    }
    for name in listed {
        headers.remove(name);
    }
    // One unwanted name at a time: there are seldom more than one or two.
    while let Some(name) = headers.keys().find(|n| unwanted(n.as_str())).cloned() {
        headers.remove(name);
    }
}

/// The invocation headers in the order they are added to a request, after its own.
static INVOCATION_NAMES: [&HeaderName; 10] = [
    &FUNCTION_NAME,
    &FUNCTION_NAMESPACE,
    &FISSION_FUNCTION_NAME,
    &FISSION_FUNCTION_NAMESPACE,
    &INVOCATION_ID,
    &FISSION_FULL_URL,
    &FULL_URL,
    &FORWARDED_FOR,
    &FORWARDED_HOST,
    &FORWARDED_PROTO,
];
/// [`INVOCATION_NAMES`]' index of `X-Forwarded-For`, whose value joins the client's.
const FORWARDED_FOR_INDEX: usize = 7;
const ALL_INVOCATION: u16 = (1 << INVOCATION_NAMES.len()) - 1;

/// The headers every invocation carries (their one home): set on the request's map
/// ([`Invocation::apply`], for hyper's client and asynchronous invocations) or written beside
/// the map's lines by the lean client ([`Invocation::write_headers`], which saves ten map
/// insertions per request). Both give the instance the same lines in the same order: a name
/// the request already had keeps its place with the router's value (the first value of
/// `X-Forwarded-For` joined with the peer), the others follow the request's own names.
pub(crate) struct Invocation {
    name: HeaderValue,
    namespace: HeaderValue,
    id: HeaderValue,
    full_url: HeaderValue,
    peer: Option<HeaderValue>,
    host: Option<HeaderValue>,
    /// How many names the request's map had when these headers were due: names added later
    /// (`Host` for an endpoint, `traceparent`) go after them, as inserting would have put them.
    /// A name added later must not be one of [`INVOCATION_NAMES`] (none is).
    base: usize,
}

impl Invocation {
    fn new(
        headers: &HeaderMap,
        entry: &FunctionEntry,
        invocation_id: &HeaderValue,
        full_url: HeaderValue,
        peer: Option<&HeaderValue>,
    ) -> Self {
        Self {
            name: entry.name_header.clone(),
            namespace: entry.namespace_header.clone(),
            id: invocation_id.clone(),
            full_url,
            peer: peer.cloned(),
            host: headers.get(HOST).cloned(),
            base: headers.keys_len(),
        }
    }

    /// Fixed values, for the tests of what is written.
    #[cfg(test)]
    pub(crate) fn example(headers: &HeaderMap) -> Self {
        Self {
            name: HeaderValue::from_static("fn"),
            namespace: HeaderValue::from_static("ns"),
            id: HeaderValue::from_static("abc"),
            full_url: HeaderValue::from_static("/a"),
            peer: Some(HeaderValue::from_static("127.0.0.1")),
            host: headers.get(HOST).cloned(),
            base: headers.keys_len(),
        }
    }

    /// The value of [`INVOCATION_NAMES`]`[i]`, if the request gets it; for `X-Forwarded-For`
    /// the peer, which [`join_forwarded`] puts after a value the client sent.
    fn value(&self, i: usize) -> Option<&HeaderValue> {
        match i {
            0 | 2 => Some(&self.name),
            1 | 3 => Some(&self.namespace),
            4 => Some(&self.id),
            5 | 6 => Some(&self.full_url),
            FORWARDED_FOR_INDEX => self.peer.as_ref(),
            8 => self.host.as_ref(),
            _ => {
                static HTTP: HeaderValue = HeaderValue::from_static("http");
                Some(&HTTP)
            }
        }
    }

    /// Sets the headers on `headers` (the map the request was created from).
    fn apply(self, headers: &mut HeaderMap) {
        // Room for the ten at once, rather than growing (and rehashing) the client's small
        // map two or three times on the way.
        headers.reserve(INVOCATION_NAMES.len());
        for (i, name) in INVOCATION_NAMES.iter().enumerate() {
            let Some(value) = self.value(i) else { continue };
            let previous = (i == FORWARDED_FOR_INDEX)
                .then(|| headers.get(*name))
                .flatten();
            let value = match previous {
                Some(previous) => {
                    let mut joined = Vec::new();
                    join_forwarded(&mut joined, previous, value);
                    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| value.clone())
                }
                _ => value.clone(),
            };
            headers.insert(*name, value);
        }
    }

    /// Writes `headers`' lines (`name: value\r\n`, in the map's order) with the invocation
    /// headers, exactly as [`Invocation::apply`] followed by writing the map would.
    pub(crate) fn write_headers(&self, headers: &HeaderMap, dst: &mut Vec<u8>) {
        let mut written = 0u16;
        // Names (map entries) begun; a name's values come one after another.
        let mut index = 0;
        let mut last: Option<&HeaderName> = None;
        let mut replaced = false;
        for (name, value) in headers {
            if !last.is_some_and(|l| std::ptr::eq(l, name)) {
                if index == self.base {
                    self.write_missing(written, dst);
                    written = ALL_INVOCATION;
                }
                index += 1;
                last = Some(name);
                replaced = false;
                if index <= self.base
                    && name.as_str().starts_with("x-")
                    && let Some(i) = INVOCATION_NAMES.iter().position(|n| *n == name)
                    && let Some(ours) = self.value(i)
                {
                    dst.extend_from_slice(name.as_str().as_bytes());
                    dst.extend_from_slice(b": ");
                    if i == FORWARDED_FOR_INDEX {
                        join_forwarded(dst, value, ours);
                    } else {
                        dst.extend_from_slice(ours.as_bytes());
                    }
                    dst.extend_from_slice(b"\r\n");
                    written |= 1 << i;
                    replaced = true;
                    continue;
                }
            } else if replaced {
                // `insert` keeps one value.
                continue;
            }
            header_line(dst, name, value);
        }
        if written != ALL_INVOCATION {
            self.write_missing(written, dst);
        }
    }

    fn write_missing(&self, written: u16, dst: &mut Vec<u8>) {
        for (i, name) in INVOCATION_NAMES.iter().enumerate() {
            if written & (1 << i) == 0
                && let Some(value) = self.value(i)
            {
                header_line(dst, name, value);
            }
        }
    }
}

fn header_line(dst: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// `X-Forwarded-For`'s value when the client sent one: its value, then the peer.
fn join_forwarded(dst: &mut Vec<u8>, previous: &HeaderValue, peer: &HeaderValue) {
    dst.extend_from_slice(previous.as_bytes());
    dst.extend_from_slice(b", ");
    dst.extend_from_slice(peer.as_bytes());
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A path parameter as a header value: percent-decoded (as Fission's router gives it), or raw
/// when the decoded bytes cannot be a header value (control characters).
fn param_value(raw: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    if !raw.contains('%') {
        return HeaderValue::from_str(raw);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_digit),
                bytes.get(i + 2).copied().and_then(hex_digit),
            )
        {
            decoded.push(hi << 4 | lo);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    HeaderValue::from_bytes(&decoded).or_else(|_| HeaderValue::from_str(raw))
}

fn full_url(uri: &Uri) -> HeaderValue {
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    HeaderValue::from_str(pq).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// `path` plus the request's query, as an origin-form URI.
fn with_query(path: &str, uri: &Uri) -> Result<Uri, Failure> {
    let text = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None if path == "/" => return Ok(Uri::from_static("/")),
        None => path.to_string(),
    };
    Uri::try_from(text).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("request path: {e}"),
        )
    })
}

fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_some() || uri.authority().is_some() => Uri::from(pq.clone()),
        Some(_) => uri.clone(),
        None => Uri::from_static("/"),
    }
}

/// Matches a public request to a function and rewrites it for the function (URI, parameter
/// headers); returns the function and the original path and query for `X-Kappa-Full-Url`.
#[allow(clippy::type_complexity)]
fn route(
    inner: &Inner,
    parts: &mut Parts,
) -> Result<(Arc<FunctionEntry>, HeaderValue, Arc<str>), Failure> {
    let table = inner.table.load();
    let host = match parts.headers.get(HOST) {
        Some(h) => h.to_str().ok(),
        None => parts.uri.host(),
    };
    let path = parts.uri.path();
    match table.lookup(host, &parts.method, path) {
        Lookup::NotFound if !*inner.ready.borrow() => Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the router is still loading its routes",
        )
        .retry_after()),
        Lookup::NotFound => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no route for {} {path}", parts.method),
        )),
        Lookup::MethodNotAllowed(allowed) => {
            let list = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut failure = Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {path}; allowed: {list}", parts.method),
            );
            failure.allow = HeaderValue::from_str(&list).ok();
            Err(failure)
        }
        Lookup::Found { target, params } => {
            let entry = Arc::clone(target.choice.pick());
            let uri = match &target.mode {
                PathMode::Template { params: names } => {
                    for (key, value) in params.iter() {
                        if let Some(param) = names.iter().find(|p| *p.name == *key)
                            && let Ok(value) = param_value(value)
                        {
                            parts.headers.insert(param.fission.clone(), value.clone());
                            parts.headers.insert(param.kappa.clone(), value);
                        }
                    }
                    with_query("/", &parts.uri)?
                }
                PathMode::Prefix { strip: None } => origin_form(&parts.uri),
                PathMode::Prefix {
                    strip: Some(prefix),
                } => {
                    let rest = path.strip_prefix(&**prefix).unwrap_or(path);
                    with_query(if rest.is_empty() { "/" } else { rest }, &parts.uri)?
                }
            };
            let full = full_url(&parts.uri);
            parts.uri = uri;
            Ok((entry, full, Arc::clone(&target.route)))
        }
    }
}

fn content_length_over(headers: &HeaderMap, limit: u64) -> Option<u64> {
    let len: u64 = headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (len > limit).then_some(len)
}

fn too_large(limit: u64) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body exceeds the limit of {limit} bytes"),
    )
    .close()
}

/// The longest request URI the router accepts, in bytes (414 past it).
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
/// The most bytes of request headers (names, values and their separators) the router accepts
/// (431 past it).
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most request headers the router accepts (431 past it). The same as hyper's default
/// limit, which the public listener keeps (`server.rs`), so there hyper's 431 (given the JSON
/// body by `crate::errorhead`) comes first; [`check_head`] still checks it, so the router's
/// limit holds should hyper's default change.
pub(crate) const MAX_HEADERS: usize = 100;

/// Refuses a request head past the router's own limits, with the JSON error every other
/// answer has. These limits sit below hyper's (see `server.rs`), so hyper's own bodiless
/// 414/431 answers are reached only by heads far past them.
fn check_head(parts: &Parts) -> Result<(), Failure> {
    let uri = &parts.uri;
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    if uri_len > MAX_URI_BYTES {
        return Err(Failure::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request URI is {uri_len} bytes, more than the router's limit of {MAX_URI_BYTES} bytes"
            ),
        )
        .close());
    }
    let count = parts.headers.len();
    if count > MAX_HEADERS {
        return Err(Failure::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {count} headers, more than the router's limit of {MAX_HEADERS}"
            ),
        )
        .close());
    }
    let bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Failure::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are {bytes} bytes, more than the router's limit of {MAX_HEADER_BYTES} bytes"
            ),
        )
        .close());
    }
    Ok(())
}

/// A public request's body: hyper's, or one the lean path (`crate::front`) read whole.
pub(crate) enum ClientBody {
    Hyper(Incoming),
    Read(bytes::Bytes),
}

/// Serves one request of the public listener (`parts` as the client sent them).
pub(crate) async fn handle(
    inner: Arc<Inner>,
    upstreams: &Upstreams,
    peer: HeaderValue,
    mut parts: Parts,
    body: ClientBody,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let inflight = InflightGuard::new(&inner.metrics);
    let invocation_id = new_invocation_id();
    // Sampled before any span exists: an unsampled request builds none.
    let traced = kappa_telemetry::sampled(&parts.headers);
    let span = if traced {
        server_span(
            "request",
            "http",
            &invocation_id,
            &parts.method,
            &parts.headers,
        )
    } else {
        tracing::debug_span!(
            "request",
            invocation_id = ?invocation_id,
            method = %parts.method,
            path = %parts.uri.path(),
        )
    };
    async move {
        let method = method_label(&parts.method);
        let upgrade = crate::upgrade::requested(&parts.headers);
        let asynchronous = crate::asyncinv::requested(&parts.headers);
        let routed = check_head(&parts).and_then(|()| {
            strip_headers(&mut parts.headers, true);
            route(&inner, &mut parts)
        });
        // An upgrade keeps its two headers, and the client's side of it goes to `forward`.
        let upgrade = upgrade.and_then(|protocol| {
            crate::upgrade::restore(&mut parts.headers, protocol);
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        });
        let response = match routed {
            Err(failure) => {
                inner.metrics.count_unrouted(failure.status.as_u16());
                inner
                    .metrics
                    .duration
                    .observe(start.elapsed().as_secs_f64());
                failure.into_response(&invocation_id, &inner.retry_after)
            }
            Ok((entry, full, route)) => {
                if traced {
                    record_function(&entry, &parts.method, Some(&route));
                }
                let invocation =
                    Invocation::new(&parts.headers, &entry, &invocation_id, full, Some(&peer));
                let limit = inner.config.max_body_bytes;
                let forwarded = if asynchronous {
                    invocation.apply(&mut parts.headers);
                    match body {
                        ClientBody::Hyper(body) => {
                            crate::asyncinv::accept(&inner, &entry, parts, body, &invocation_id)
                                .await
                        }
                        ClientBody::Read(bytes) => {
                            let body = http_body_util::Full::new(bytes);
                            crate::asyncinv::accept(&inner, &entry, parts, body, &invocation_id)
                                .await
                        }
                    }
                } else {
                    let body = match body {
                        ClientBody::Hyper(body) => RequestBody::incoming(body, limit),
                        ClientBody::Read(bytes) => RequestBody::read(bytes, limit),
                    };
                    let forwarded = forward(
                        &inner,
                        upstreams,
                        &entry,
                        parts,
                        invocation,
                        body,
                        &invocation_id,
                        inflight,
                        upgrade,
                    );
                    forwarded.await
                };
                let response = match forwarded {
                    Ok(response) => response,
                    Err(failure) => failure.into_response(&invocation_id, &inner.retry_after),
                };
                // One clock read for the three records of the answer.
                let elapsed = start.elapsed();
                entry.metrics.answered(
                    &inner.metrics,
                    response.status().as_u16(),
                    elapsed.as_secs_f64(),
                    &route,
                    method,
                );
                record_stats(&inner, &entry, response.status(), elapsed, &invocation_id);
                inner.metrics.duration.observe(elapsed.as_secs_f64());
                response
            }
        };
        if traced {
            record_status(response.status());
        }
        tracing::debug!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}

/// Records an answered request in the dashboard's history ([`kappa_core::StatsRegistry`]).
fn record_stats(
    inner: &Inner,
    entry: &FunctionEntry,
    status: StatusCode,
    elapsed: Duration,
    invocation_id: &HeaderValue,
) {
    inner.stats.record(
        &entry.id,
        status.as_u16(),
        elapsed,
        invocation_id.as_bytes(),
    );
}

/// Invokes a function directly (no trigger): see [`crate::Router::invoke`].
pub(crate) async fn invoke(
    inner: &Arc<Inner>,
    function: FunctionId,
    request: Request<axum::body::Body>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let inflight = InflightGuard::new(&inner.metrics);
    let invocation_id = new_invocation_id();
    let traced = kappa_telemetry::sampled(request.headers());
    let span = if traced {
        // A trigger worker's call carries its message's or fire's span as `traceparent`.
        let headers = request.headers();
        let trigger = if headers.contains_key("x-kappa-topic") {
            "pubsub"
        } else if headers.contains_key("x-kappa-timer-name") {
            "timer"
        } else {
            "other"
        };
        server_span("invoke", trigger, &invocation_id, request.method(), headers)
    } else {
        tracing::debug_span!("invoke", invocation_id = ?invocation_id, function = %function)
    };
    async move {
        let entry = match inner.table.load().function(&function) {
            Some(entry) => Some(Arc::clone(entry)),
            None => None,
        };
        let entry = match entry {
            Some(entry) => Ok(entry),
            None => entry_from_store(inner, &function).await,
        };
        let response = match entry {
            Err(failure) => {
                inner.metrics.count_unrouted(failure.status.as_u16());
                failure.into_response(&invocation_id, &inner.retry_after)
            }
            Ok(entry) => {
                let (mut parts, body) = request.into_parts();
                if traced {
                    record_function(&entry, &parts.method, None);
                }
                let method = method_label(&parts.method);
                strip_headers(&mut parts.headers, false);
                let full = full_url(&parts.uri);
                parts.uri = origin_form(&parts.uri);
                let invocation =
                    Invocation::new(&parts.headers, &entry, &invocation_id, full, None);
                let body = RequestBody::axum(body, inner.config.max_body_bytes);
                let response = match forward(
                    inner,
                    &inner.upstreams,
                    &entry,
                    parts,
                    invocation,
                    body,
                    &invocation_id,
                    inflight,
                    None,
                )
                .await
                {
                    Ok(response) => response,
                    Err(failure) => failure.into_response(&invocation_id, &inner.retry_after),
                };
                static NO_ROUTE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
                entry.metrics.answered(
                    &inner.metrics,
                    response.status().as_u16(),
                    start.elapsed().as_secs_f64(),
                    NO_ROUTE.get_or_init(|| Arc::from("")),
                    method,
                );
                record_stats(
                    inner,
                    &entry,
                    response.status(),
                    start.elapsed(),
                    &invocation_id,
                );
                response
            }
        };
        inner
            .metrics
            .duration
            .observe(start.elapsed().as_secs_f64());
        if traced {
            record_status(response.status());
        }
        response
    }
    .instrument(span)
    .await
}

/// A function the route table does not have yet (created a moment ago): read it from the store.
async fn entry_from_store(
    inner: &Inner,
    function: &FunctionId,
) -> Result<Arc<FunctionEntry>, Failure> {
    let not_found = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!("function {function} not found"),
        )
    };
    match inner
        .store
        .get(
            kappa_types::Kind::Function,
            &function.namespace,
            &function.name,
        )
        .await
    {
        Ok(Some(obj)) => {
            let record = crate::watcher::parse_function(&obj);
            Ok(Arc::new(FunctionEntry::new(
                record.id,
                true,
                record.generation,
                record.timeout_s,
                record.spec_timeout_s,
                &inner.index,
            )))
        }
        Ok(None) => Err(not_found()),
        Err(error) => Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("reading function {function} from the store failed: {error}"),
        )
        .retry_after()),
    }
}

/// How one attempt on one endpoint ended.
enum Attempt {
    Response(
        Response<Incoming>,
        hyper::client::conn::http1::SendRequest<RequestBody>,
    ),
    /// A response head read by the lean path, and its connection.
    Lean(crate::lean::Head, LeanConn),
    /// Nothing was sent: the request can go to another endpoint.
    NotSent(String),
    Timeout,
    Failed(hyper::Error),
    LeanFailed(ExchangeError),
}

/// The request on its way to an instance.
// One per request, in `forward`'s future and never moved: boxing the larger variant would
// cost the common request an allocation.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    /// Through hyper's client; put back after an attempt that sent nothing.
    Hyper(Option<Request<RequestBody>>),
    /// Through the lean path: `len` bytes of body, `first` of them already taken from it.
    Lean {
        parts: Parts,
        /// Written beside `parts`' headers ([`Invocation::write_headers`]).
        invocation: Invocation,
        body: RequestBody,
        len: u64,
        first: Option<bytes::Bytes>,
    },
}

/// The request body's length when the request can take the lean path: not an upgrade, no
/// `Expect`, and a body that is empty or has a `Content-Length` of at most
/// [`crate::lean::MAX_BODY`] that the body itself confirms.
fn lean_length(parts: &Parts, body: &RequestBody, upgrade: bool) -> Option<u64> {
    if upgrade || parts.headers.contains_key(http::header::EXPECT) {
        return None;
    }
    let declared = match parts.headers.get(CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(value.to_str().ok()?.trim().parse::<u64>().ok()?),
    };
    if body.is_end_stream() {
        return match declared {
            None | Some(0) => Some(0),
            Some(_) => None,
        };
    }
    let declared = declared?;
    (declared <= crate::lean::MAX_BODY && body.size_hint().exact() == Some(declared))
        .then_some(declared)
}

/// One attempt through hyper's client on `endpoint`: an idle connection (a fresh one when it
/// turns out closed) or a new one, then the request.
async fn attempt_hyper(
    pool: &EndpointPool,
    endpoint: &kappa_core::Endpoint,
    request: &mut Option<Request<RequestBody>>,
    deadline: Instant,
    upstream: &tracing::Span,
) -> Result<Attempt, Failure> {
    let mut fresh_only = false;
    Ok(loop {
        let Some(mut req) = request.take() else {
            // `request` is put back before every `continue`; this cannot happen.
            return Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "request lost",
            ));
        };
        let idle = if fresh_only {
            None
        } else {
            pool.checkout().await
        };
        let (mut conn, reused) = match idle {
            Some(conn) => (conn, true),
            None => match open(endpoint, fresh_only, deadline, |o| pool.connect(o)).await {
                Ok(opened) => opened,
                Err(attempt) => {
                    if matches!(attempt, Attempt::NotSent(_)) {
                        *request = Some(req);
                    }
                    break attempt;
                }
            },
        };
        if !req.headers().contains_key(HOST)
            && let Ok(host) = HeaderValue::from_str(&endpoint.addr.authority())
        {
            req.headers_mut().insert(HOST, host);
        }
        kappa_telemetry::inject(upstream, req.headers_mut());
        match tokio::time::timeout_at(deadline, conn.try_send_request(req)).await {
            Ok(Ok(response)) => break Attempt::Response(response, conn),
            Ok(Err(mut error)) => match error.take_message() {
                Some(req) => {
                    *request = Some(req);
                    if reused {
                        // An idle connection that turned out closed: try a fresh one.
                        fresh_only = true;
                        continue;
                    }
                    break Attempt::NotSent(error.into_error().to_string());
                }
                None => break Attempt::Failed(error.into_error()),
            },
            // Dropping the exchange closes the connection; it is not reused.
            Err(_) => break Attempt::Timeout,
        }
    })
}

/// A connection for an attempt that took no idle one, and whether it counts as reused: the
/// connection the endpoint opened in advance is treated like an idle one (if the instance
/// closed it meanwhile, the caller tries a fresh one), unless `fresh_only`; otherwise a new
/// one. A failure is the attempt's outcome.
async fn open<C, F>(
    endpoint: &kappa_core::Endpoint,
    fresh_only: bool,
    deadline: Instant,
    connect: impl FnOnce(Option<std::net::TcpStream>) -> F,
) -> Result<(C, bool), Attempt>
where
    F: Future<Output = Result<C, ConnectError>>,
{
    let opened = if fresh_only {
        None
    } else {
        endpoint.take_connection()
    };
    let reused = opened.is_some();
    match tokio::time::timeout_at(deadline, connect(opened)).await {
        Ok(Ok(conn)) => Ok((conn, reused)),
        Ok(Err(error)) => Err(Attempt::NotSent(error.to_string())),
        Err(_) => Err(Attempt::Timeout),
    }
}

/// One attempt through the lean path on `endpoint`, as [`attempt_hyper`] does it.
#[allow(clippy::too_many_arguments)]
async fn attempt_lean(
    pool: &EndpointPool,
    endpoint: &kappa_core::Endpoint,
    parts: &mut Parts,
    invocation: &Invocation,
    body: &mut RequestBody,
    len: u64,
    first: &mut Option<bytes::Bytes>,
    deadline: Instant,
    upstream: &tracing::Span,
) -> Attempt {
    if !parts.headers.contains_key(HOST)
        && let Ok(host) = HeaderValue::from_str(&endpoint.addr.authority())
    {
        parts.headers.insert(HOST, host);
    }
    kappa_telemetry::inject(upstream, &mut parts.headers);
    let mut fresh_only = false;
    loop {
        let idle = if fresh_only {
            None
        } else {
            pool.checkout_lean()
        };
        let (mut conn, reused) = match idle {
            Some(conn) => (conn, true),
            None => match open(endpoint, fresh_only, deadline, |o| pool.connect_lean(o)).await {
                Ok(opened) => opened,
                Err(attempt) => return attempt,
            },
        };
        match tokio::time::timeout_at(deadline, conn.exchange(parts, invocation, body, len, first))
            .await
        {
            Ok(Ok(head)) => return Attempt::Lean(head, conn),
            Ok(Err(ExchangeError::NotSent(error))) => {
                if reused {
                    // An idle connection that turned out closed: try a fresh one.
                    fresh_only = true;
                    continue;
                }
                return Attempt::NotSent(error.to_string());
            }
            Ok(Err(error)) => return Attempt::LeanFailed(error),
            // Dropping the exchange closes the connection; it is not reused.
            Err(_) => return Attempt::Timeout,
        }
    }
}

/// Admits the request and sends it to an instance; returns the instance's response head with a
/// streaming body, or the failure to answer with. With `upgrade` (the client's side of an
/// upgrade request), a `101` from the instance splices the two connections
/// ([`crate::upgrade::splice`]).
#[allow(clippy::too_many_arguments)]
async fn forward(
    inner: &Inner,
    upstreams: &Upstreams,
    entry: &Arc<FunctionEntry>,
    parts: Parts,
    invocation: Invocation,
    body: RequestBody,
    invocation_id: &HeaderValue,
    inflight: InflightGuard,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<ResponseBody>, Failure> {
    if !entry.exists {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!("function {} not found", entry.id),
        ));
    }
    let limit = inner.config.max_body_bytes;
    if content_length_over(&parts.headers, limit).is_some() {
        return Err(too_large(limit));
    }
    let mut parts = parts;
    parts.version = Version::HTTP_11;
    // The common request takes the lean path (`crate::lean`), anything else hyper's client.
    let mut outgoing = match lean_length(&parts, &body, upgrade.is_some()) {
        Some(len) => Outgoing::Lean {
            parts,
            invocation,
            body,
            len,
            first: None,
        },
        None => {
            invocation.apply(&mut parts.headers);
            Outgoing::Hyper(Some(Request::from_parts(parts, body)))
        }
    };

    let mut permit = admit(inner, entry).await?;
    // The function timeout runs from admission to the response head.
    let mut deadline = Instant::now() + entry.timeout;
    let mut may_retry = true;
    loop {
        let endpoint = Arc::clone(permit.endpoint());
        let pool = upstreams.pool(&endpoint.addr);
        // The call to the instance, up to its response head; its context is what the
        // instance receives as `traceparent`.
        let upstream = if kappa_telemetry::enabled() {
            kappa_telemetry::span!(
                "upstream",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                kappa.instance.id = %endpoint.instance_id,
                server.address = %endpoint.addr,
                http.response.status_code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let attempt = match &mut outgoing {
            Outgoing::Hyper(request) => {
                attempt_hyper(&pool, &endpoint, request, deadline, &upstream).await?
            }
            Outgoing::Lean {
                parts,
                invocation,
                body,
                len,
                first,
            } => {
                attempt_lean(
                    &pool, &endpoint, parts, invocation, body, *len, first, deadline, &upstream,
                )
                .await
            }
        };
        if !upstream.is_disabled() {
            match &attempt {
                Attempt::Response(response, _) => {
                    upstream.record("http.response.status_code", response.status().as_u16());
                }
                Attempt::Lean(head, _) => {
                    upstream.record("http.response.status_code", head.status.as_u16());
                }
                _ => {
                    upstream.record("otel.status_code", "ERROR");
                }
            }
        }
        drop(upstream);
        match attempt {
            Attempt::Response(mut response, conn) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let protocol = crate::upgrade::requested(response.headers());
                    let (Some(client), Some(protocol)) = (upgrade, protocol) else {
                        return Err(Failure::new(
                            StatusCode::BAD_GATEWAY,
                            "instance_failed",
                            format!(
                                "instance {} of function {} switched protocols without an upgrade being asked for",
                                endpoint.instance_id, entry.id
                            ),
                        ));
                    };
                    let upstream = hyper::upgrade::on(&mut response);
                    let (mut head, _) = response.into_parts();
                    strip_headers(&mut head.headers, false);
                    crate::upgrade::restore(&mut head.headers, protocol);
                    head.headers
                        .insert(INVOCATION_ID.clone(), invocation_id.clone());
                    let lease = Lease {
                        permit,
                        conn,
                        pool,
                        inflight,
                    };
                    crate::upgrade::splice(
                        client,
                        upstream,
                        lease,
                        inner.config.upgrade_idle_timeout,
                        entry.id.to_string(),
                    );
                    return Ok(Response::from_parts(
                        head,
                        ResponseBody::full(bytes::Bytes::new()),
                    ));
                }
                let (mut head, body) = response.into_parts();
                strip_headers(&mut head.headers, false);
                head.headers
                    .insert(INVOCATION_ID.clone(), invocation_id.clone());
                head.version = Version::HTTP_11;
                let lease = Lease {
                    permit,
                    conn,
                    pool,
                    inflight,
                };
                return Ok(Response::from_parts(
                    head,
                    ResponseBody::upstream(body, lease),
                ));
            }
            Attempt::Lean(head, conn) => {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    // Upgrade requests never take the lean path.
                    return Err(Failure::new(
                        StatusCode::BAD_GATEWAY,
                        "instance_failed",
                        format!(
                            "instance {} of function {} switched protocols without an upgrade being asked for",
                            endpoint.instance_id, entry.id
                        ),
                    ));
                }
                let lease = Box::new(LeanLease {
                    permit,
                    pool,
                    inflight,
                });
                let body = LeanBody::new(conn, &head, lease);
                let mut response = Response::new(ResponseBody::lean(body));
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                let headers = response.headers_mut();
                strip_headers(headers, false);
                headers.insert(INVOCATION_ID.clone(), invocation_id.clone());
                return Ok(response);
            }
            Attempt::LeanFailed(error) => {
                return Err(failed_lean(error, &permit, entry, limit).await);
            }
            Attempt::NotSent(reason) => {
                endpoint.mark_draining();
                tracing::warn!(
                    function = %entry.id,
                    instance = %endpoint.instance_id,
                    addr = %endpoint.addr,
                    %reason,
                    "instance unreachable; marked draining"
                );
                if may_retry {
                    may_retry = false;
                    drop(permit);
                    permit = admit(inner, entry).await?;
                    deadline = Instant::now() + entry.timeout;
                    continue;
                }
                let mut message = format!(
                    "could not connect to instance {} of function {}: {reason}",
                    endpoint.instance_id, entry.id
                );
                if let Some(exit) = endpoint.exit_reason() {
                    message = format!(
                        "instance {} of function {} {exit}",
                        endpoint.instance_id, entry.id
                    );
                }
                return Err(Failure::new(
                    StatusCode::BAD_GATEWAY,
                    "instance_failed",
                    message,
                ));
            }
            Attempt::Timeout => {
                return Err(Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "function {} did not respond within {} s",
                        entry.id,
                        entry.timeout.as_secs()
                    ),
                ));
            }
            Attempt::Failed(error) => {
                return Err(failed_exchange(error, &permit, entry, limit).await);
            }
        }
    }
}

/// The answer for an exchange that failed after the request started going out.
async fn failed_exchange(
    error: hyper::Error,
    permit: &Permit,
    entry: &FunctionEntry,
    limit: u64,
) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(body_error) = e.downcast_ref::<RequestBodyError>() {
            return body_failure(body_error, limit);
        }
        source = e.source();
    }
    if error.is_parse() || error.is_parse_status() {
        return invalid_response(&error, permit, entry);
    }
    closed_exchange(error.to_string(), permit, entry).await
}

/// [`failed_exchange`] for the lean path.
async fn failed_lean(
    error: ExchangeError,
    permit: &Permit,
    entry: &FunctionEntry,
    limit: u64,
) -> Failure {
    match &error {
        ExchangeError::Body(body_error) => body_failure(body_error, limit),
        ExchangeError::Invalid(_) => invalid_response(&error, permit, entry),
        ExchangeError::NotSent(_) | ExchangeError::Io(_) | ExchangeError::Closed => {
            closed_exchange(error.to_string(), permit, entry).await
        }
    }
}

/// The answer when reading the client's body failed.
fn body_failure(body_error: &RequestBodyError, limit: u64) -> Failure {
    match body_error {
        RequestBodyError::TooLarge { .. } => too_large(limit),
        RequestBodyError::Client(_) => Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            body_error.to_string(),
        )
        .close(),
    }
}

/// The answer for a response that could not be parsed.
fn invalid_response(
    error: &dyn std::fmt::Display,
    permit: &Permit,
    entry: &FunctionEntry,
) -> Failure {
    let endpoint = permit.endpoint();
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "instance_failed",
        format!(
            "instance {} of function {} sent an invalid response: {error}",
            endpoint.instance_id, entry.id
        ),
    )
}

/// The answer when the connection failed before a response: why the instance ended, when its
/// backend says so in time.
async fn closed_exchange(error: String, permit: &Permit, entry: &FunctionEntry) -> Failure {
    let endpoint = permit.endpoint();
    tracing::debug!(function = %entry.id, instance = %endpoint.instance_id, %error, "exchange with instance failed");
    let message = match endpoint.wait_exit(EXIT_REPORT_WAIT).await {
        Some(exit) => format!(
            "instance {} of function {} {exit}",
            endpoint.instance_id, entry.id
        ),
        None => format!(
            "connection to instance {} closed before a response",
            endpoint.instance_id
        ),
    };
    Failure::new(StatusCode::BAD_GATEWAY, "instance_failed", message)
}

/// Takes a slot on one of the function's instances: at once when one is free (no call to
/// anyone), otherwise through [`admit_slow`].
async fn admit(inner: &Inner, entry: &Arc<FunctionEntry>) -> Result<Permit, Failure> {
    if let Some(permit) = entry.endpoints.try_admit(entry.generation) {
        if kappa_telemetry::enabled() {
            tracing::Span::current().record("faas.coldstart", false);
        }
        return Ok(permit);
    }
    // Boxed so the rarely used slow path does not grow every request's future.
    Box::pin(admit_slow(inner, entry)).await
}

/// Asks the provisioner in a task of its own, so a client that gives up (dropping its request)
/// never cancels a cold start half-way; later requests benefit from it.
async fn provision(
    inner: &Inner,
    id: &FunctionId,
    generation: i64,
) -> Result<Provision, ProvisionError> {
    let provisioner = Arc::clone(&inner.provisioner);
    let function = id.clone();
    // The pool manager's spans (take from the pool, start, specialize) nest under this one.
    let span = if kappa_telemetry::enabled() {
        kappa_telemetry::span!("provision", otel.kind = "client", kappa.function = %id, kappa.generation = generation)
    } else {
        tracing::Span::none()
    };
    inner
        .on_main(async move { provisioner.provision(&function, generation).await }.instrument(span))
        .await
        .unwrap_or_else(|join| {
            Err(ProvisionError::Unavailable(format!(
                "the provisioner failed: {join}"
            )))
        })
}

/// A miss: ask the provisioner, then wait in the function's bounded queue.
async fn admit_slow(inner: &Inner, entry: &Arc<FunctionEntry>) -> Result<Permit, Failure> {
    let id = &entry.id;
    // The cached entry is the index's live one (entries are never removed), but a miss is the
    // moment to make sure.
    let endpoints = {
        let live = inner.index.entry(id);
        if Arc::ptr_eq(&live, &entry.endpoints) {
            Arc::clone(&entry.endpoints)
        } else {
            live
        }
    };
    if let Some(permit) = endpoints.try_admit(entry.generation) {
        return Ok(permit);
    }
    entry.metrics.count_cold_start(&inner.metrics);
    inner.stats.cold_start(&entry.id);
    let started = Instant::now();
    let span = if kappa_telemetry::enabled() {
        tracing::Span::current().record("faas.coldstart", true);
        kappa_telemetry::span!("admission", kappa.function = %id)
    } else {
        tracing::Span::none()
    };
    let result = admit_cold(inner, entry, endpoints).instrument(span).await;
    entry
        .metrics
        .cold_start_seconds(&inner.metrics, started.elapsed().as_secs_f64());
    result
}

/// The cold part of [`admit_slow`]: provision, then wait in the queue.
async fn admit_cold(
    inner: &Inner,
    entry: &Arc<FunctionEntry>,
    endpoints: Arc<kappa_core::FunctionEndpoints>,
) -> Result<Permit, Failure> {
    let id = &entry.id;
    let generation = entry.generation;
    let bound = entry.specialization_timeout + entry.timeout;
    match tokio::time::timeout(bound, provision(inner, id, generation)).await {
        Err(_) => {
            return Err(Failure::new(
                StatusCode::GATEWAY_TIMEOUT,
                "specialize_timeout",
                format!(
                    "function {id}: no instance became ready within {} s",
                    bound.as_secs()
                ),
            ));
        }
        Ok(Err(error)) => return Err(Failure::from_provision(id, error)),
        Ok(Ok(Provision::Added | Provision::AtCapacity)) => {}
    }

    let limit = inner.config.queue_limit;
    let Some(_ticket) = endpoints.enter_queue(limit) else {
        // Capacity may have appeared while the queue was full.
        if let Some(permit) = endpoints.try_admit(generation) {
            return Ok(permit);
        }
        inner.metrics.queue_rejections.inc();
        return Err(Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "no_capacity",
            format!("function {id} is at capacity and its wait queue is full ({limit} requests)"),
        )
        .retry_after());
    };
    let queued = Instant::now();
    let _wait = if kappa_telemetry::enabled() {
        kappa_telemetry::span!("queue wait", kappa.function = %id)
    } else {
        tracing::Span::none()
    };
    let result = wait_in_queue(inner, entry, &endpoints, generation).await;
    entry
        .metrics
        .queue_wait_seconds(&inner.metrics, queued.elapsed().as_secs_f64());
    result
}

/// Waits for a free slot on one of the function's instances, asking the provisioner again now
/// and then.
async fn wait_in_queue(
    inner: &Inner,
    entry: &Arc<FunctionEntry>,
    endpoints: &Arc<kappa_core::FunctionEndpoints>,
    mut generation: i64,
) -> Result<Permit, Failure> {
    let id = &entry.id;
    let deadline = Instant::now() + entry.timeout;
    let no_capacity = || {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_capacity",
            format!(
                "function {id} had no free instance within {} s",
                entry.timeout.as_secs()
            ),
        )
        .retry_after()
    };
    let next_reask = || {
        Instant::now()
            + REASK_INTERVAL
            + Duration::from_millis(rand::random_range(0..REASK_JITTER_MS))
    };
    let mut reask = next_reask();
    loop {
        // Registered before the attempt, so a slot freed in between still wakes us.
        let changed = endpoints.changed();
        if let Some(permit) = endpoints.try_admit(generation) {
            return Ok(permit);
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return Err(no_capacity()),
            _ = tokio::time::sleep_until(reask) => {
                reask = next_reask();
                // Follow an update of the function made while waiting.
                if let Some(latest) = inner.table.load().function(id) {
                    generation = latest.generation;
                }
                match tokio::time::timeout_at(deadline, provision(inner, id, generation)).await {
                    Err(_) => return Err(no_capacity()),
                    Ok(Err(error)) => return Err(Failure::from_provision(id, error)),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The invocation headers as the lean client writes them, and as the map gets them.
    fn both_ways(
        client: &[(&str, &str)],
        peer: Option<&str>,
        later: &[(&str, &str)],
    ) -> (String, String) {
        let mut headers = HeaderMap::new();
        for (n, v) in client {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let entry = FunctionEntry::new(
            FunctionId::new("ns", "fn"),
            true,
            1,
            60,
            120,
            &kappa_core::EndpointIndex::new(),
        );
        let id = HeaderValue::from_static("abc");
        let peer = peer.map(|p| HeaderValue::from_str(p).unwrap());
        let full = HeaderValue::from_static("/a?b");
        let invocation = Invocation::new(&headers, &entry, &id, full.clone(), peer.as_ref());
        let mut map = headers.clone();
        Invocation::new(&headers, &entry, &id, full, peer.as_ref()).apply(&mut map);
        // Added after the invocation headers were due (an endpoint's `Host`, `traceparent`).
        for (n, v) in later {
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            headers.insert(name.clone(), HeaderValue::from_str(v).unwrap());
            map.insert(name, HeaderValue::from_str(v).unwrap());
        }
        let mut lean = Vec::new();
        invocation.write_headers(&headers, &mut lean);
        let mut mapped = Vec::new();
        for (name, value) in &map {
            header_line(&mut mapped, name, value);
        }
        (
            String::from_utf8(lean).unwrap(),
            String::from_utf8(mapped).unwrap(),
        )
    }

    #[test]
    fn invocation_headers_written_as_bytes_match_the_map() {
        // The client's headers, the peer, headers added later.
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            &'a [(&'a str, &'a str)],
        );
        let cases: &[Case<'_>] = &[
            (&[("host", "a"), ("accept", "*/*")], Some("127.0.0.1"), &[]),
            (&[], Some("127.0.0.1"), &[("host", "10.0.0.1:9")]),
            (&[("accept", "*/*")], None, &[("traceparent", "00-1")]),
            // A client's X-Forwarded-* keep their place; `For` is joined, extra values go.
            (
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("host", "h"),
                    ("x-forwarded-for", "2.2.2.2"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "spoof"),
                    ("x-other", "1"),
                ],
                Some("127.0.0.1"),
                &[("traceparent", "00-1")],
            ),
            // No peer (a direct invocation): the client's X-Forwarded-For stays as sent, and
            // X-Kappa-* names a caller sent are replaced in place.
            (
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-kappa-function-name", "other"),
                    ("x-kappa-topic", "t"),
                    ("x-fission-full-url", "/x"),
                    ("x-fission-full-url", "/y"),
                ],
                None,
                &[],
            ),
        ];
        for (client, peer, later) in cases {
            let (lean, mapped) = both_ways(client, *peer, later);
            assert_eq!(lean, mapped, "{client:?} {peer:?} {later:?}");
        }
        let (lean, _) = both_ways(&[("x-forwarded-for", "1.1.1.1")], Some("2.2.2.2"), &[]);
        assert_eq!(lean.matches("x-forwarded-for").count(), 1, "{lean}");
        assert!(
            lean.starts_with("x-forwarded-for: 1.1.1.1, 2.2.2.2\r\n"),
            "{lean}"
        );
        assert_eq!(lean.matches("x-kappa-invocation-id: abc\r\n").count(), 1);
    }

    #[test]
    fn invocation_ids_are_128_bit_hex() {
        let a = new_invocation_id();
        let b = new_invocation_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn params_are_percent_decoded() {
        assert_eq!(param_value("plain").unwrap(), "plain");
        assert_eq!(param_value("a%20b%2Fc").unwrap(), "a b/c");
        assert_eq!(param_value("bad%zz%").unwrap(), "bad%zz%");
        assert_eq!(
            param_value("x%0D%0Ay").unwrap(),
            "x%0D%0Ay",
            "no header injection"
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-kappa-params-id", HeaderValue::from_static("spoofed"));
        h.insert("x-fission-params-id", HeaderValue::from_static("spoofed"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        let mut public = h.clone();
        strip_headers(&mut public, true);
        assert_eq!(
            public.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-type"]
        );
        strip_headers(&mut h, false);
        assert!(h.contains_key("x-kappa-params-id"));
        assert!(h.contains_key("x-fission-params-id"));
        assert!(!h.contains_key("x-secret"));
    }

    #[test]
    fn connection_tokens_in_any_case_are_honoured() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive, X-Secret ,Proxy-Thing, TE"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-length", HeaderValue::from_static("6"));
        strip_headers(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-length"]
        );
        // Nothing hop-by-hop: untouched.
        let mut plain = HeaderMap::new();
        plain.insert("x-kappa-function-name", HeaderValue::from_static("f"));
        plain.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_headers(&mut plain, false);
        assert_eq!(plain.len(), 2);
    }
}
