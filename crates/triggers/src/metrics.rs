//! The trigger workers' Prometheus metrics, under the prefix `kappa_triggers`:
//!
//! - `kappa_triggers_messages_total{trigger, result}`: messages settled, by how;
//! - `kappa_triggers_message_seconds`: time from receiving a message to settling it;
//! - `kappa_triggers_timer_fires_total{trigger, result}`: scheduled times of time triggers
//!   reached, by what came of them;
//! - `kappa_triggers_consumers`: message-queue triggers consuming right now;
//! - `kappa_triggers_async_attempts_total{namespace, function, result}`: attempts of
//!   asynchronous invocations by how they ended (`succeeded`, `failed`, `lost`);
//! - `kappa_triggers_async_outcomes_total{namespace, function, outcome}`: what the worker did
//!   after an attempt (`succeeded`, `retried`, `deadlettered`);
//! - `kappa_triggers_async_queue_seconds{namespace, function}`: time from an asynchronous
//!   invocation's acceptance to the start of its first attempt.
//!
//! `trigger` is `namespace/name`, so the number of series is bounded by the number of triggers
//! times the few results; the asynchronous series likewise by the number of functions.

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

/// Labels of the asynchronous invocation counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AsyncLabels {
    namespace: String,
    function: String,
    result: &'static str,
}

/// Labels of `kappa_triggers_async_outcomes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AsyncOutcomeLabels {
    namespace: String,
    function: String,
    outcome: &'static str,
}

/// Labels of the asynchronous queue histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    namespace: String,
    function: String,
}

/// How an attempt of an asynchronous invocation ended (`kappa_triggers_async_attempts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptResult {
    /// The function answered 2xx.
    Succeeded,
    /// Another answer, no answer within the bound, or the call failed.
    Failed,
    /// The worker running it stopped before recording how it ended (found after its lease).
    Lost,
}

impl AttemptResult {
    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Lost => "lost",
        }
    }
}

/// What the worker did after an attempt (`kappa_triggers_async_outcomes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AsyncOutcome {
    /// Recorded as succeeded.
    Succeeded,
    /// Scheduled again after back-off (attempts remain).
    Retried,
    /// No attempt left: dead-lettered (kept in the store, published to the dead-letter topic
    /// when the function has one).
    Deadlettered,
}

impl AsyncOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Deadlettered => "deadlettered",
        }
    }
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
    async_attempts: Family<AsyncLabels, Counter>,
    async_outcomes: Family<AsyncOutcomeLabels, Counter>,
    async_queue_seconds: Family<FunctionLabels, Histogram, fn() -> Histogram>,
}

/// 10 ms .. ~1.5 days: an invocation waits for a free worker slot, behind the older ones.
fn queue_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 13))
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
            async_attempts: Family::default(),
            async_outcomes: Family::default(),
            async_queue_seconds: Family::new_with_constructor(queue_histogram),
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
        r.register(
            "async_attempts",
            "Attempts of asynchronous invocations by how they ended",
            m.async_attempts.clone(),
        );
        r.register(
            "async_outcomes",
            "Asynchronous invocations after an attempt: succeeded, retried or dead-lettered",
            m.async_outcomes.clone(),
        );
        r.register(
            "async_queue_seconds",
            "Time from accepting an asynchronous invocation to starting its first attempt",
            m.async_queue_seconds.clone(),
        );
        m
    }

    /// Counts one ended attempt of an asynchronous invocation of `namespace/function`.
    pub(crate) fn async_attempt(&self, namespace: &str, function: &str, result: AttemptResult) {
        self.async_attempts
            .get_or_create(&AsyncLabels {
                namespace: namespace.to_string(),
                function: function.to_string(),
                result: result.label(),
            })
            .inc();
    }

    /// Counts what became of an asynchronous invocation of `namespace/function` after an attempt.
    pub(crate) fn async_outcome(&self, namespace: &str, function: &str, outcome: AsyncOutcome) {
        self.async_outcomes
            .get_or_create(&AsyncOutcomeLabels {
                namespace: namespace.to_string(),
                function: function.to_string(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Records how long an asynchronous invocation waited for its first attempt.
    pub(crate) fn async_queued(&self, namespace: &str, function: &str, seconds: f64) {
        self.async_queue_seconds
            .get_or_create(&FunctionLabels {
                namespace: namespace.to_string(),
                function: function.to_string(),
            })
            .observe(seconds);
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
