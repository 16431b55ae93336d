//! Kappa's OpenTelemetry traces: the one home of their setup and of W3C trace context handling.
//!
//! - [`init`] reads the standard `OTEL_*` environment variables and, when an OTLP endpoint is
//!   set, builds the tracer provider (OTLP over HTTP, protobuf or JSON, batch export) and the
//!   `tracing` layer that turns the platform's spans into OpenTelemetry spans. Without an
//!   endpoint it does nothing, and [`enabled`] stays `false`.
//! - Sampling is decided before any span exists: a request, message or fire starts a trace only
//!   when [`sampled`] (or [`sampled_pairs`], [`sampled_root`]) says so, from the configured
//!   sampler and the W3C `traceparent` it carries. An unsampled one costs a header lookup and a
//!   random number: no span, no attribute, no OpenTelemetry context.
//! - Inside a trace, the data plane creates its child spans only when [`enabled`] is `true`
//!   (traces are exported and the current span is one of ours, i.e. a sampled trace is being
//!   recorded) with the [`span!`] macro, whose target ([`TARGET`]) is the only one the
//!   OpenTelemetry layer exports. With traces off that is one relaxed atomic load.
//! - [`set_parent`] continues a W3C `traceparent`/`tracestate` found in request or message
//!   headers; [`inject`] writes the current span's context into outgoing headers.
//!
//! The attribute names follow OpenTelemetry's semantic conventions (FaaS, HTTP, messaging);
//! `docs/observability.md` lists every span and attribute.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

#[doc(hidden)]
pub use tracing;

/// The `tracing` target of the spans exported to OpenTelemetry.
pub const TARGET: &str = "kappa::otel";

/// An exported span: `tracing::info_span!` with the [`TARGET`] target. Create one only when
/// [`enabled`] (otherwise use `tracing::Span::none()`), so tracing costs nothing when it is off.
#[macro_export]
macro_rules! span {
    ($($rest:tt)*) => {
        $crate::tracing::info_span!(target: "kappa::otel", $($rest)*)
    };
}

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Whether a valid remote parent decides (the `parentbased_*` samplers).
static PARENT_BASED: AtomicBool = AtomicBool::new(true);
/// The ratio sampler's bound on 63 random bits: a trace is sampled when its random bits are
/// below it (`1 << 63`: always, `0`: never). The same rule as OpenTelemetry's
/// `TraceIdRatioBased`, so a trace id from a remote parent gets the same answer everywhere.
static RATIO_BOUND: AtomicU64 = AtomicU64::new(1 << 63);

/// Whether traces are exported (an OTLP endpoint was configured and [`init`] succeeded).
#[inline]
pub fn exporting() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether a span created now is exported: traces are exported and the current span is one of
/// ours (so a sampled trace is being recorded). Child spans and their attributes are built only
/// when this is `true`; a trace's first span is created after [`sampled`] instead.
#[inline]
pub fn enabled() -> bool {
    exporting()
        && tracing::Span::current()
            .metadata()
            .is_some_and(|meta| meta.target() == TARGET)
}

/// A W3C `traceparent` header's facts the sampler needs: the trace id's low 64 bits (the ones
/// `TraceIdRatioBased` reads) and the sampled flag. `None` for an invalid header.
fn parse_traceparent(value: &[u8]) -> Option<(u64, bool)> {
    // version "-" trace-id (32 hex) "-" parent-id (16 hex) "-" flags (2 hex); a future version
    // may append fields after another "-".
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let hex = |s: &[u8]| -> Option<u64> {
        let s = std::str::from_utf8(s).ok()?;
        if s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    let version = hex(&value[0..2])?;
    if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if version == 0 && value.len() != 55 {
        return None;
    }
    let trace_high = hex(&value[3..19])?;
    let trace_low = hex(&value[19..35])?;
    let parent = hex(&value[36..52])?;
    let flags = hex(&value[53..55])?;
    if (trace_high == 0 && trace_low == 0) || parent == 0 {
        return None;
    }
    Some((trace_low, flags & 1 == 1))
}

/// The sampling decision for a new trace's first span, from its remote parent if any.
fn gate(parent: Option<(u64, bool)>) -> bool {
    exporting()
        && decide(
            PARENT_BASED.load(Ordering::Relaxed),
            RATIO_BOUND.load(Ordering::Relaxed),
            parent,
            rand::random::<u64>,
        )
}

/// The sampler's rule: a valid remote parent's flag when `parent_based`, else the ratio
/// `bound` applied to the parent's trace id bits or, for a new trace, to `random()` (called
/// only when needed).
fn decide(
    parent_based: bool,
    bound: u64,
    parent: Option<(u64, bool)>,
    random: impl FnOnce() -> u64,
) -> bool {
    match parent {
        Some((_, sampled)) if parent_based => sampled,
        _ => {
            if bound == 1 << 63 {
                return true;
            }
            if bound == 0 {
                return false;
            }
            let bits = parent.map_or_else(random, |(low, _)| low);
            (bits >> 1) < bound
        }
    }
}

/// Whether a request with these headers starts (or continues) a recorded trace: the configured
/// sampler applied to its `traceparent`, if valid, or to a new trace. `false` when traces are
/// off. Create the request's span (and call [`set_parent`]) only when `true`; otherwise the
/// request carries no span at all and its `traceparent`, if any, passes through unchanged.
pub fn sampled(headers: &HeaderMap) -> bool {
    if !exporting() {
        return false;
    }
    gate(
        headers
            .get("traceparent")
            .and_then(|v| parse_traceparent(v.as_bytes())),
    )
}

/// [`sampled`] for a broker message's header pairs (names compared case-insensitively).
pub fn sampled_pairs(headers: &[(String, String)]) -> bool {
    if !exporting() {
        return false;
    }
    gate(
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .and_then(|(_, v)| parse_traceparent(v.as_bytes())),
    )
}

/// [`sampled`] for a trace with no remote parent (a timer's fire).
pub fn sampled_root() -> bool {
    gate(None)
}

/// Installs the sampling gate for `sampler`; returns the sampler the SDK itself applies. The
/// gate decides every trace's first span, so the SDK records what it is given: its children
/// (and a first span whose remote parent was not sampled, under a ratio sampler that ignores
/// parents) must not be sampled a second time.
fn install_gate(sampler: SamplerConfig) -> Sampler {
    let (parent_based, bound) = match sampler {
        SamplerConfig::AlwaysOn => (false, 1u64 << 63),
        SamplerConfig::AlwaysOff => (false, 0),
        SamplerConfig::Ratio(r) => (false, ratio_bound(r)),
        SamplerConfig::ParentBasedAlwaysOn => (true, 1 << 63),
        SamplerConfig::ParentBasedAlwaysOff => (true, 0),
        SamplerConfig::ParentBasedRatio(r) => (true, ratio_bound(r)),
    };
    PARENT_BASED.store(parent_based, Ordering::Relaxed);
    RATIO_BOUND.store(bound, Ordering::Relaxed);
    if sampler == SamplerConfig::AlwaysOff {
        Sampler::AlwaysOff
    } else {
        Sampler::AlwaysOn
    }
}

/// `TraceIdRatioBased`'s bound for ratio `r`.
fn ratio_bound(r: f64) -> u64 {
    if r >= 1.0 {
        1 << 63
    } else {
        (r.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

/// A configuration the `OTEL_*` variables do not allow.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{var}={value:?}: {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("building the OTLP span exporter: {0}")]
    Exporter(String),
}

/// The trace settings read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The traces endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as is, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended).
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    pub sampler: SamplerConfig,
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// Reads the trace configuration from `var` (the process environment in [`init`]): `None`
/// when traces are off (no endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
pub fn config_from(
    var: impl Fn(&str) -> Option<String>,
    default_service: &str,
) -> Result<Option<TraceConfig>, TelemetryError> {
    let get = |name: &str| {
        var(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if let Some(exporter) = get("OTEL_TRACES_EXPORTER") {
        match exporter.as_str() {
            "none" => return Ok(None),
            "otlp" => {}
            _ => {
                return Err(TelemetryError::Invalid {
                    var: "OTEL_TRACES_EXPORTER",
                    value: exporter,
                    expected: "expected otlp or none",
                });
            }
        }
    }
    let (endpoint_var, endpoint) = match (
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
        (None, Some(base)) => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("{}/v1/traces", base.trim_end_matches('/')),
        ),
        (None, None) => return Ok(None),
    };
    if !endpoint.starts_with("http://") {
        return Err(TelemetryError::Invalid {
            var: endpoint_var,
            value: endpoint,
            expected: "expected an http:// URL (OTLP over plain HTTP, e.g. to a collector on the node or in the cluster; https is not supported)",
        });
    }
    let protocol_var = if get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() {
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    } else {
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    };
    let protocol = match get(protocol_var).as_deref() {
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some("http/json") => Protocol::HttpJson,
        Some(other) => {
            return Err(TelemetryError::Invalid {
                var: protocol_var,
                value: other.to_string(),
                expected: "expected http/protobuf or http/json (gRPC is not supported)",
            });
        }
    };
    let ratio = || -> Result<f64, TelemetryError> {
        match get("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(TelemetryError::Invalid {
                    var: "OTEL_TRACES_SAMPLER_ARG",
                    value: arg,
                    expected: "expected a ratio between 0 and 1",
                }),
            },
        }
    };
    let sampler = match get("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("parentbased_always_on") => SamplerConfig::ParentBasedAlwaysOn,
        Some("always_on") => SamplerConfig::AlwaysOn,
        Some("always_off") => SamplerConfig::AlwaysOff,
        Some("traceidratio") => SamplerConfig::Ratio(ratio()?),
        Some("parentbased_always_off") => SamplerConfig::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerConfig::ParentBasedRatio(ratio()?),
        Some(other) => {
            return Err(TelemetryError::Invalid {
                var: "OTEL_TRACES_SAMPLER",
                value: other.to_string(),
                expected: "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            });
        }
    };
    let service_name = get("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string());
    Ok(Some(TraceConfig {
        endpoint,
        protocol,
        service_name,
        sampler,
    }))
}

/// The running exporter; [`Telemetry::shutdown`] flushes what is still batched.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports the spans still batched (bounded by the exporter's timeout) and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the last traces failed");
        }
    }
}

/// Builds the exporter from the environment. `Ok(None)` when traces are off; otherwise the
/// layer to add to the `tracing` subscriber and the handle to shut it down with. [`enabled`]
/// turns `true` here. Call it outside an async runtime: the exporter's HTTP client runs on the
/// batch processor's own thread.
pub fn init<S>(default_service: &str) -> Result<Option<(impl Layer<S>, Telemetry)>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(config) = config_from(|name| std::env::var(name).ok(), default_service)? else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(config.protocol)
        .with_endpoint(config.endpoint.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    // The batch processor reads OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE and
    // OTEL_BSP_MAX_EXPORT_BATCH_SIZE itself.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(install_gate(config.sampler))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("kappa");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == TARGET
        }));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((layer, Telemetry { provider })))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Pairs of a message's headers (brokers' header lists).
struct PairsExtractor<'a>(&'a [(String, String)]);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Makes `span` a child of the W3C trace context in `headers`, if they carry a valid one.
/// Call it before anything enters or reads the span's context.
pub fn set_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// [`set_parent`] for a broker message's header pairs (names compared case-insensitively).
pub fn set_parent_from_pairs(span: &tracing::Span, headers: &[(String, String)]) {
    let extractor = PairsExtractor(headers);
    if extractor.get("traceparent").is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&extractor);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s context into `headers` as `traceparent` (and `tracestate` when not empty),
/// replacing what was there. Nothing when `span` is disabled.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The current span's context as `traceparent` (and `tracestate`) headers, for a call that
/// carries the trace on to another component (the router's provisioning call to the executor);
/// empty outside a recorded trace.
pub fn context_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    if enabled() {
        inject(&tracing::Span::current(), &mut headers);
    }
    headers
}

/// The server span of an internal call (`operation`, e.g. the executor's `provision`) that
/// continues the trace its caller sent in `headers` ([`context_headers`]); `Span::none()` when
/// the call carries no sampled trace (or [`sampled`] says no), so an untraced call builds none.
pub fn continue_trace(headers: &HeaderMap, operation: &'static str) -> tracing::Span {
    if !headers.contains_key("traceparent") || !sampled(headers) {
        return tracing::Span::none();
    }
    let span = span!("server", otel.name = operation, otel.kind = "server");
    set_parent(&span, headers);
    span
}

/// Renames `span` (the OpenTelemetry span's name; recording `otel.name` has no effect once the
/// span's context was read, as [`set_parent`] and [`trace_id`] do).
pub fn set_name(span: &tracing::Span, name: String) {
    if span.is_disabled() {
        return;
    }
    span.context().span().update_name(name);
}

/// `span`'s trace id in hex, for log lines and error bodies.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Option<TraceConfig>, TelemetryError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config_from(|k| map.get(k).cloned(), "kappa")
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(cfg(&[]).unwrap().is_none());
        assert!(
            cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])
                .unwrap()
                .is_none()
        );
        assert!(
            cfg(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap()
            .is_none()
        );
        assert!(
            cfg(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn endpoints_and_defaults() {
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpBinary);
        assert_eq!(c.service_name, "kappa");
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:2/traces"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "edge"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://b:2/traces");
        assert_eq!(c.protocol, Protocol::HttpJson);
        assert_eq!(c.service_name, "edge");
        assert_eq!(c.sampler, SamplerConfig::ParentBasedRatio(0.01));
    }

    #[test]
    fn refusals_name_the_variable() {
        let e = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4318")]).unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        let e = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let e = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    #[test]
    fn traceparent_parsing_for_the_sampler() {
        assert_eq!(
            parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some((0x8448eb211c80319c, true))
        );
        assert_eq!(
            parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            Some((0x8448eb211c80319c, false))
        );
        // A later version may append fields; version 00 may not.
        assert!(
            parse_traceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x")
                .is_some()
        );
        for bad in [
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x"[..],
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"garbage",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn ratio_bounds_match_trace_id_ratio_based() {
        assert_eq!(ratio_bound(1.0), 1 << 63);
        assert_eq!(ratio_bound(0.0), 0);
        assert_eq!(ratio_bound(0.5), 1 << 62);
        // Traces off: nothing is sampled, whatever the headers say.
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert!(!sampled(&headers));
        assert!(!sampled_root());
    }

    #[test]
    fn the_gate_follows_the_configured_sampler() {
        let all = 1u64 << 63;
        let half = ratio_bound(0.5);
        let never = || -> u64 { panic!("no random number needed") };
        // Parent-based: the parent's flag decides, whatever the ratio.
        assert!(decide(true, 0, Some((u64::MAX, true)), never));
        assert!(!decide(true, all, Some((0, false)), never));
        // No parent: the ratio, on a random number.
        assert!(decide(true, all, None, never));
        assert!(!decide(true, 0, None, never));
        assert!(decide(true, half, None, || 0));
        assert!(!decide(true, half, None, || u64::MAX));
        // Not parent-based: the ratio on the parent's trace id, as TraceIdRatioBased does.
        assert!(decide(false, half, Some((1, false)), never));
        assert!(!decide(false, half, Some((u64::MAX, true)), never));
        // About 1 % of random trace ids at 0.01.
        let bound = ratio_bound(0.01);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let sampled = (0..100_000)
            .filter(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                decide(true, bound, None, || x)
            })
            .count();
        assert!((700..1300).contains(&sampled), "{sampled}");
    }

    #[test]
    fn context_round_trips_through_headers() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("t"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let mut incoming = HeaderMap::new();
            incoming.insert(
                "traceparent",
                HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            );
            let span = tracing::info_span!(target: "kappa::otel", "request");
            set_parent(&span, &incoming);
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("0af7651916cd43dd8448eb211c80319c")
            );
            let mut out = HeaderMap::new();
            inject(&span, &mut out);
            let tp = out.get("traceparent").unwrap().to_str().unwrap();
            assert!(
                tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{tp}"
            );
            assert!(!tp.contains("b7ad6b7169203331"), "a new span id: {tp}");

            let pairs = vec![(
                "Traceparent".to_string(),
                "00-11111111111111111111111111111111-2222222222222222-01".to_string(),
            )];
            let span = tracing::info_span!(target: "kappa::otel", "message");
            set_parent_from_pairs(&span, &pairs);
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("11111111111111111111111111111111")
            );
        });
    }
}
