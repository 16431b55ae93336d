//! CanaryConfig: a gradual shift of an HttpTrigger's traffic from one function (or version)
//! to another, rolled back when the new side fails too often. Fission's `CanaryConfig` spec
//! (`trigger`, `newfunction`, `oldfunction`, `weightincrement`, `duration`,
//! `failurethreshold`, `failureType`), measured from the router's own counters.
//!
//! [`next_step`] is the whole state machine, with no IO: the controller calls it once per
//! interval with what the router counted for the new side, and applies what it returns.

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::Spec;
use crate::schedule::parse_duration;
use crate::validate::{self, ValidationError};
use crate::version::validate_function_ref;

/// Desired state of a CanaryConfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CanaryConfigSpec {
    /// The HttpTrigger whose `functionweights` are shifted.
    pub trigger: String,
    /// The function (or `NAME@N` version) traffic moves to.
    pub newfunction: String,
    /// The function (or `NAME@N` version) traffic moves from.
    pub oldfunction: String,
    /// Percentage points moved to the new side every interval.
    #[serde(default = "default_increment")]
    pub weightincrement: u32,
    /// The interval between steps (`30s`, `2m`).
    #[serde(default = "default_duration")]
    pub duration: String,
    /// Roll back when more than this percentage of the new side's requests in an interval fail.
    #[serde(default = "default_threshold")]
    pub failurethreshold: u32,
    /// What counts as a failure: `status-code` (a 5xx response, the router's own included).
    #[serde(rename = "failureType", default = "default_failure_type")]
    pub failure_type: String,
}

fn default_increment() -> u32 {
    20
}
fn default_duration() -> String {
    "2m".to_string()
}
fn default_threshold() -> u32 {
    10
}
fn default_failure_type() -> String {
    "status-code".to_string()
}

impl CanaryConfigSpec {
    /// A canary with Fission's defaults (20 points every 2 minutes, 10 % threshold).
    pub fn new(trigger: &str, newfunction: &str, oldfunction: &str) -> Self {
        Self {
            trigger: trigger.into(),
            newfunction: newfunction.into(),
            oldfunction: oldfunction.into(),
            weightincrement: default_increment(),
            duration: default_duration(),
            failurethreshold: default_threshold(),
            failure_type: default_failure_type(),
        }
    }

    /// The interval, as validated.
    pub fn interval(&self) -> std::time::Duration {
        parse_duration(&self.duration).unwrap_or(std::time::Duration::from_secs(120))
    }
}

impl Spec for CanaryConfigSpec {
    const KIND: Kind = Kind::CanaryConfig;
    type Status = CanaryConfigStatus;

    fn validate(&self) -> Result<(), ValidationError> {
        validate::dns1123_label("spec.trigger", &self.trigger)?;
        validate_function_ref("spec.newfunction", &self.newfunction)?;
        validate_function_ref("spec.oldfunction", &self.oldfunction)?;
        if self.newfunction == self.oldfunction {
            return Err(ValidationError::new(
                "spec.newfunction",
                "must differ from spec.oldfunction",
            ));
        }
        validate::in_range("spec.weightincrement", self.weightincrement, 1, 100)?;
        let interval = parse_duration(&self.duration)
            .map_err(|e| ValidationError::new("spec.duration", e.to_string()))?;
        if interval < std::time::Duration::from_millis(500) {
            return Err(ValidationError::new(
                "spec.duration",
                format!("{:?} is too short: expected at least 500ms", self.duration),
            ));
        }
        validate::in_range("spec.failurethreshold", self.failurethreshold, 0, 100)?;
        if self.failure_type != "status-code" {
            return Err(ValidationError::new(
                "spec.failureType",
                format!(
                    "{:?} is not supported: expected \"status-code\"",
                    self.failure_type
                ),
            ));
        }
        Ok(())
    }
}

/// Where a canary is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum CanaryPhase {
    /// Not started yet.
    #[default]
    Pending,
    /// Shifting traffic.
    Running,
    /// The new side took all the traffic.
    Succeeded,
    /// Rolled back: the new side failed too often (Fission's `failed`).
    Failed,
    /// Stopped without a verdict (the trigger or a function went away, or the route was changed
    /// by someone else).
    Aborted,
}

impl CanaryPhase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CanaryPhase::Succeeded | CanaryPhase::Failed | CanaryPhase::Aborted
        )
    }
}

/// What the router counted for the new side during one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct CanaryInterval {
    pub iteration: u32,
    /// The new side's weight (percent) during the interval.
    pub weight: u32,
    pub requests: u64,
    pub failures: u64,
    /// `failures / requests` in percent (0 without requests).
    pub failure_rate: f64,
}

/// Observed state of a CanaryConfig (written by the canary controller).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct CanaryConfigStatus {
    /// Fission's `status.status`: pending, running, succeeded, failed (rolled back), aborted.
    #[serde(default)]
    pub status: CanaryPhase,
    /// The new side's current weight in percent.
    #[serde(default)]
    pub weight: u32,
    /// Steps taken (1 after the first shift).
    #[serde(default)]
    pub iteration: u32,
    /// What was measured in each finished interval, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<CanaryInterval>,
    /// Why it ended, or the last problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the controller last changed the weight (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_timestamp: Option<String>,
}

/// What the controller does after an interval.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryStep {
    /// Set the new side's weight to this (the old side gets the rest) and wait an interval.
    Shift(u32),
    /// The new side gets 100: done.
    Succeed,
    /// Put all traffic back on the old side: done.
    RollBack(String),
}

/// The next step of a canary: `status` is its current status, `observed` what the router
/// counted for the new side (requests, failures) since the last step (`None` before the first
/// step). Returns the step and the status to write.
pub fn next_step(
    spec: &CanaryConfigSpec,
    status: &CanaryConfigStatus,
    observed: Option<(u64, u64)>,
) -> (CanaryStep, CanaryConfigStatus) {
    let mut next = status.clone();
    let increment = spec.weightincrement.clamp(1, 100);
    if status.status == CanaryPhase::Pending || observed.is_none() {
        let weight = increment.min(100);
        next.status = CanaryPhase::Running;
        next.weight = weight;
        next.iteration = 1;
        next.reason = None;
        if weight >= 100 {
            next.status = CanaryPhase::Succeeded;
            next.reason = Some("the increment moved all traffic at once".into());
            return (CanaryStep::Succeed, next);
        }
        return (CanaryStep::Shift(weight), next);
    }
    let (requests, failures) = observed.unwrap_or((0, 0));
    let failures = failures.min(requests);
    let failure_rate = if requests == 0 {
        0.0
    } else {
        failures as f64 * 100.0 / requests as f64
    };
    next.intervals.push(CanaryInterval {
        iteration: status.iteration,
        weight: status.weight,
        requests,
        failures,
        failure_rate,
    });
    if failure_rate > f64::from(spec.failurethreshold) {
        next.status = CanaryPhase::Failed;
        next.weight = 0;
        let reason = format!(
            "rolled back: {failures} of {requests} requests to {} failed ({failure_rate:.1}%) in interval {}, above the {}% threshold",
            spec.newfunction, status.iteration, spec.failurethreshold
        );
        next.reason = Some(reason.clone());
        return (CanaryStep::RollBack(reason), next);
    }
    let weight = (status.weight + increment).min(100);
    next.weight = weight;
    next.iteration = status.iteration + 1;
    if weight >= 100 {
        next.status = CanaryPhase::Succeeded;
        next.reason = Some(format!(
            "{} takes all traffic after {} intervals within the {}% failure threshold",
            spec.newfunction,
            next.intervals.len(),
            spec.failurethreshold
        ));
        return (CanaryStep::Succeed, next);
    }
    (CanaryStep::Shift(weight), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(increment: u32) -> CanaryConfigSpec {
        let mut s = CanaryConfigSpec::new("route", "hello@2", "hello@1");
        s.weightincrement = increment;
        s.duration = "1s".into();
        s
    }

    #[test]
    fn healthy_canary_reaches_100() {
        let spec = spec(30);
        let (step, s) = next_step(&spec, &CanaryConfigStatus::default(), None);
        assert_eq!(step, CanaryStep::Shift(30));
        assert_eq!(
            (s.status, s.weight, s.iteration),
            (CanaryPhase::Running, 30, 1)
        );
        let (step, s) = next_step(&spec, &s, Some((100, 5)));
        assert_eq!(step, CanaryStep::Shift(60));
        let (step, s) = next_step(&spec, &s, Some((0, 0)));
        assert_eq!(step, CanaryStep::Shift(90));
        let (step, s) = next_step(&spec, &s, Some((10, 1)));
        assert_eq!(step, CanaryStep::Succeed);
        assert_eq!(
            (s.status, s.weight, s.iteration),
            (CanaryPhase::Succeeded, 100, 4)
        );
        let weights: Vec<u32> = s.intervals.iter().map(|i| i.weight).collect();
        assert_eq!(weights, [30, 60, 90]);
        assert_eq!(s.intervals[0].failure_rate, 5.0);
    }

    #[test]
    fn failing_canary_rolls_back() {
        let spec = spec(20);
        let (_, s) = next_step(&spec, &CanaryConfigStatus::default(), None);
        let (step, s) = next_step(&spec, &s, Some((40, 20)));
        assert!(matches!(step, CanaryStep::RollBack(_)));
        assert_eq!((s.status, s.weight), (CanaryPhase::Failed, 0));
        assert!(s.reason.unwrap().contains("50.0%"));
        // Exactly at the threshold is not above it.
        let (_, s) = next_step(&spec, &CanaryConfigStatus::default(), None);
        let (step, _) = next_step(&spec, &s, Some((10, 1)));
        assert_eq!(step, CanaryStep::Shift(40));
    }

    #[test]
    fn validation_names_fields() {
        let mut s = spec(0);
        assert_eq!(s.validate().unwrap_err().field, "spec.weightincrement");
        s.weightincrement = 10;
        s.duration = "soon".into();
        assert_eq!(s.validate().unwrap_err().field, "spec.duration");
        s.duration = "1s".into();
        s.failure_type = "latency".into();
        assert_eq!(s.validate().unwrap_err().field, "spec.failureType");
        s.failure_type = "status-code".into();
        s.newfunction = "hello@1".into();
        assert_eq!(s.validate().unwrap_err().field, "spec.newfunction");
        s.newfunction = "other".into();
        s.validate().unwrap();
    }
}
