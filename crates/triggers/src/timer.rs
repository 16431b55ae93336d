//! The worker of one TimeTrigger: sleeps until the next scheduled time, records it as fired in
//! the trigger's status, then invokes the function.
//!
//! - **Once per scheduled time.** The time is recorded (`status.lastFiredTime`, a durable store
//!   write) *before* the invocation, and the next time is always computed strictly after the
//!   last recorded one, so a restart never fires a time twice. When the record cannot be
//!   written, that time is skipped rather than risk a second firing.
//! - **Missed times are skipped.** Times that passed while the platform was down (or stopped)
//!   are not caught up: the schedule resumes with the next time after now.
//! - **No stacking.** At most one run per trigger is in flight; a time that comes while the
//!   previous run is still running is skipped and reported (log, and the status reason).
//!
//! Every scheduled time reached counts once in `kappa_triggers_timer_fires_total`, by what came
//! of it (ok, failed, timeout, skipped, unrecorded).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kappa_core::FunctionId;
use kappa_types::{Kind, TimeTrigger};
use tokio_util::sync::CancellationToken;

use tracing::Instrument as _;

use crate::dispatch::Invoke;
use crate::metrics::{FireResult, TriggerMetrics};
use crate::status::{self, StatusWriter};
use kappa_types::Schedule;

/// What the worker needs besides the trigger.
pub(crate) struct TimerContext {
    pub(crate) store: Arc<dyn kappa_store::Store>,
    pub(crate) invoker: Arc<dyn Invoke>,
    pub(crate) metrics: TriggerMetrics,
}

/// Runs `trigger`'s schedule until `shutdown`.
pub(crate) async fn run(
    trigger: TimeTrigger,
    function_timeout: Duration,
    ctx: Arc<TimerContext>,
    shutdown: CancellationToken,
) {
    let ns = trigger.metadata.namespace.clone();
    let name = trigger.metadata.name.clone();
    let label = format!("{ns}/{name}");
    let mut status = StatusWriter::new(
        Arc::clone(&ctx.store),
        Kind::TimeTrigger,
        &ns,
        &name,
        trigger.status.clone(),
    );
    let schedule = match Schedule::parse(&trigger.spec.cron) {
        Ok(s) => s,
        Err(e) => {
            status.set(status::ERROR, format!("spec.cron: {e}")).await;
            return;
        }
    };
    let function = FunctionId::new(ns.clone(), trigger.spec.functionref.name.clone());
    let mut last_fired: Option<DateTime<Utc>> = status
        .current()
        .last_fired_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    // The outcome of the last run, reported with the next status write.
    let outcome: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let mut running: Option<(DateTime<Utc>, tokio::task::JoinHandle<()>)> = None;
    loop {
        let now = Utc::now();
        let after = match last_fired {
            Some(t) if t > now => t,
            _ => now,
        };
        let Some(next) = schedule.next_after(after) else {
            status
                .set(status::READY, "the schedule has no future times")
                .await;
            shutdown.cancelled().await;
            return;
        };
        if status.current().state != status::READY {
            status
                .set(
                    status::READY,
                    format!("next run at {}", status::rfc3339(next)),
                )
                .await;
        }
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if let Some((started, handle)) = &running
            && !handle.is_finished()
        {
            let reason = format!(
                "skipped the run at {}: the run of {} is still in flight",
                status::rfc3339(next),
                status::rfc3339(*started)
            );
            tracing::warn!(trigger = %name, namespace = %ns, "{reason}");
            if let Err(e) = status.fired(next, reason).await {
                tracing::warn!(trigger = %name, error = %e, "recording a skipped run failed");
            }
            ctx.metrics.fired(&label, FireResult::Skipped);
            last_fired = Some(next);
            continue;
        }
        let reason = outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Err(e) = status.fired(next, reason).await {
            tracing::warn!(trigger = %name, namespace = %ns, error = %e, scheduled = %status::rfc3339(next),
                "recording the run failed; skipping it so that it cannot run twice");
            ctx.metrics.fired(&label, FireResult::Unrecorded);
            last_fired = Some(next);
            continue;
        }
        last_fired = Some(next);
        let mut request = request(&trigger, next);
        // One span per fire (when traces are exported), the invocation's parent.
        let span = if kappa_telemetry::sampled_root() {
            let span = kappa_telemetry::span!(
                "timer",
                otel.name = format!("fire {label}"),
                otel.kind = "producer",
                otel.status_code = tracing::field::Empty,
                faas.trigger = "timer",
                faas.name = &*function.name,
                kappa.function.namespace = &*function.namespace,
                faas.cron = trigger.spec.cron.as_str(),
                faas.time = status::rfc3339(next).as_str(),
                kappa.trigger = label.as_str(),
                http.response.status_code = tracing::field::Empty,
            );
            kappa_telemetry::inject(&span, request.headers_mut());
            span
        } else {
            tracing::Span::none()
        };
        let invoker = Arc::clone(&ctx.invoker);
        let function = function.clone();
        let outcome = Arc::clone(&outcome);
        let trigger_name = name.clone();
        let metrics = ctx.metrics.clone();
        let label = label.clone();
        let timeout = function_timeout + Duration::from_secs(5);
        running = Some((
            next,
            tokio::spawn(async move {
                let result = tokio::time::timeout(timeout, async {
                    let response = invoker.invoke(function.clone(), request).await;
                    let status = response.status();
                    // Drain the body so the instance's connection is reusable.
                    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    status
                })
                .await;
                let (fire, text) = match result {
                    Ok(s) if s.is_success() => {
                        tracing::debug!(trigger = %trigger_name, function = %function, status = s.as_u16(), "timer run done");
                        (
                            FireResult::Ok,
                            format!("last run at {}: {s}", status::rfc3339(next)),
                        )
                    }
                    Ok(s) => {
                        tracing::warn!(trigger = %trigger_name, function = %function, status = s.as_u16(), "timer run failed");
                        (
                            FireResult::Failed,
                            format!("last run at {} failed: {s}", status::rfc3339(next)),
                        )
                    }
                    Err(_) => {
                        tracing::warn!(trigger = %trigger_name, function = %function, "timer run timed out");
                        (
                            FireResult::Timeout,
                            format!(
                                "last run at {} failed: no answer within {} s",
                                status::rfc3339(next),
                                timeout.as_secs()
                            ),
                        )
                    }
                };
                if kappa_telemetry::enabled() {
                    let span = tracing::Span::current();
                    if let Ok(s) = &result {
                        span.record("http.response.status_code", s.as_u16());
                    }
                    if fire != FireResult::Ok {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                metrics.fired(&label, fire);
                *outcome.lock().unwrap_or_else(PoisonError::into_inner) = text;
            }.instrument(span)),
        ));
    }
}

/// The invocation of one scheduled time: `spec.method spec.subpath` with `X-Kappa-Timer-Name`
/// (and Fission's `X-Fission-Timer-Name`) and `X-Kappa-Scheduled-Time`.
fn request(trigger: &TimeTrigger, scheduled: DateTime<Utc>) -> http::Request<axum::body::Body> {
    let mut request = http::Request::new(axum::body::Body::empty());
    *request.method_mut() =
        http::Method::from_bytes(trigger.spec.method.as_bytes()).unwrap_or(http::Method::POST);
    *request.uri_mut() =
        http::Uri::try_from(trigger.spec.subpath.as_str()).unwrap_or(http::Uri::from_static("/"));
    let headers = request.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&trigger.metadata.name) {
        // Fission's name for it too, for functions written for Fission.
        headers.insert("x-fission-timer-name", v.clone());
        headers.insert("x-kappa-timer-name", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&status::rfc3339(scheduled)) {
        headers.insert("x-kappa-scheduled-time", v);
    }
    request
}
