//! The trigger workers' Prometheus metrics, under the prefix `kappa_triggers`:
//!
//! - `kappa_triggers_messages_total{trigger, result}`: messages settled, by how;
//! - `kappa_triggers_message_seconds`: time from receiving a message to settling it;
//! - `kappa_triggers_timer_fires_total{trigger, result}`: scheduled times of time triggers
//!   reached, by what came of them;
//! - `kappa_triggers_consumers`: message-queue triggers consuming right now.
//!
//! `trigger` is `namespace/name`, so the number of series is bounded by the number of triggers
//! times the few results.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-trigger counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
    result: &'static str,
}

/// How a message was settled (the `result` label of `kappa_triggers_messages_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageResult {
    /// Acknowledged after a success (and the publish of the response).
    Ok,
    /// Failed, nak'd for a retry.
    Retried,
    /// Failed its last attempt, published to the error topic and acknowledged.
    ErrorTopic,
    /// Failed its last attempt and publishing to the error topic failed: nak'd to try again.
    ErrorTopicFailed,
    /// Failed its last attempt, no error topic: terminated.
    Dropped,
    /// The ack, nak or term itself failed: the broker delivers the message again.
    SettleFailed,
}

impl MessageResult {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retried => "retried",
            Self::ErrorTopic => "error_topic",
            Self::ErrorTopicFailed => "error_topic_failed",
            Self::Dropped => "dropped",
            Self::SettleFailed => "settle_failed",
        }
    }
}

/// What came of a scheduled time (the `result` label of `kappa_triggers_timer_fires_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FireResult {
    /// The function answered 2xx.
    Ok,
    /// The function answered something else.
    Failed,
    /// The function did not answer within its timeout.
    Timeout,
    /// Not run: the previous run was still in flight.
    Skipped,
    /// Not run: recording the time in the trigger's status failed.
    Unrecorded,
}

impl FireResult {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Skipped => "skipped",
            Self::Unrecorded => "unrecorded",
        }
    }
}

/// The trigger workers' metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct TriggerMetrics {
    messages: Family<TriggerLabels, Counter>,
    message_seconds: Histogram,
    timer_fires: Family<TriggerLabels, Counter>,
    consumers: Gauge,
}

impl Default for TriggerMetrics {
    /// Metrics in no registry: recorded, but nobody reads them.
    fn default() -> Self {
        Self {
            messages: Family::default(),
            // 5 ms .. ~160 s: invocations run up to the function timeout.
            message_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            timer_fires: Family::default(),
            consumers: Gauge::default(),
        }
    }
}

impl TriggerMetrics {
    /// The metrics, registered in `registry` under the prefix `kappa_triggers`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("kappa_triggers");
        r.register(
            "messages",
            "Messages of message-queue triggers by how they were settled",
            m.messages.clone(),
        );
        r.register(
            "message_seconds",
            "Time to process a message: invocation, response publish and settle",
            m.message_seconds.clone(),
        );
        r.register(
            "timer_fires",
            "Scheduled times of time triggers by outcome",
            m.timer_fires.clone(),
        );
        r.register(
            "consumers",
            "Message-queue triggers consuming",
            m.consumers.clone(),
        );
        m
    }

    /// Counts one settled message of `trigger` (`namespace/name`) and its processing time.
    pub(crate) fn message(&self, trigger: &str, result: MessageResult, seconds: f64) {
        self.messages
            .get_or_create(&TriggerLabels {
                trigger: trigger.to_string(),
                result: result.label(),
            })
            .inc();
        self.message_seconds.observe(seconds);
    }

    /// Counts one scheduled time of time trigger `trigger` (`namespace/name`).
    pub(crate) fn fired(&self, trigger: &str, result: FireResult) {
        self.timer_fires
            .get_or_create(&TriggerLabels {
                trigger: trigger.to_string(),
                result: result.label(),
            })
            .inc();
    }

    /// Counts a consuming message-queue worker until the returned guard is dropped.
    pub(crate) fn consuming(&self) -> ConsumingGuard {
        self.consumers.inc();
        ConsumingGuard(self.consumers.clone())
    }
}

/// Decrements `kappa_triggers_consumers` when dropped (also when the worker task is aborted).
pub(crate) struct ConsumingGuard(Gauge);

impl Drop for ConsumingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
