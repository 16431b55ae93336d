//! The canary controller: drives every CanaryConfig that has not ended. Once per interval it
//! reads how many of the new side's requests failed since the previous step (from the routers'
//! own counters, [`OutcomeSource`]), asks [`kappa_types::next_step`] what to do, rewrites the
//! route's `functionref` accordingly (weights, or the new or old function alone at the end)
//! and writes the canary's status.
//!
//! It runs in the executor role, under the pool manager's lease in cluster mode, so one
//! controller acts at a time. After a restart a running canary starts a fresh interval (its
//! counters are not durable); a canary whose route was changed by someone else, or whose
//! route or functions went away, is aborted rather than fought over.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kappa_core::{FunctionId, OutcomeSource};
use kappa_store::{Precondition, Store, StoreError};
use kappa_types::{
    CanaryConfig, CanaryConfigStatus, CanaryPhase, CanaryStep, FunctionReference,
    FunctionReferenceType, HttpTrigger, Kind, function_ref_target, next_step, parse_version_ref,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the controller looks at the canaries (intervals are at least 500 ms).
const TICK: Duration = Duration::from_millis(200);

/// A canary this controller is driving.
struct Driving {
    /// The new side's (requests, failures) when the current interval began.
    baseline: (u64, u64),
    stepped_at: Instant,
    /// The `functionref` it last wrote to the route.
    set: FunctionReference,
}

/// Drives canaries; see the module documentation.
pub struct CanaryController {
    store: Arc<dyn Store>,
    source: Arc<dyn OutcomeSource>,
}

type Key = (String, String, Option<String>);

impl CanaryController {
    pub fn new(store: Arc<dyn Store>, source: Arc<dyn OutcomeSource>) -> Self {
        Self { store, source }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut driving: HashMap<Key, Driving> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            if let Err(e) = self.pass(&mut driving).await {
                tracing::warn!(error = %e, "canary controller pass failed; retrying");
            }
        }
    }

    async fn pass(&self, driving: &mut HashMap<Key, Driving>) -> Result<(), StoreError> {
        let list = self.store.list(Kind::CanaryConfig, None).await?;
        let mut seen = HashSet::new();
        for obj in list.items {
            let canary = match CanaryConfig::from_json(obj.value) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(canary = %obj.name, error = %e, "ignoring an unreadable canary");
                    continue;
                }
            };
            let key = (
                canary.metadata.namespace.clone(),
                canary.metadata.name.clone(),
                canary.metadata.uid.clone(),
            );
            seen.insert(key.clone());
            if canary.status.status.is_final() {
                driving.remove(&key);
                continue;
            }
            if let Err(e) = self.drive(&canary, &key, driving).await {
                tracing::warn!(canary = %canary.metadata.name, error = %e, "driving a canary failed");
            }
        }
        driving.retain(|k, _| seen.contains(k));
        Ok(())
    }

    async fn drive(
        &self,
        canary: &CanaryConfig,
        key: &Key,
        driving: &mut HashMap<Key, Driving>,
    ) -> Result<(), StoreError> {
        let ns = &canary.metadata.namespace;
        let spec = &canary.spec;
        let Some(trigger_obj) = self.store.get(Kind::HttpTrigger, ns, &spec.trigger).await? else {
            driving.remove(key);
            return self
                .abort(
                    canary,
                    format!("httptrigger {:?} no longer exists", spec.trigger),
                )
                .await;
        };
        let trigger = match HttpTrigger::from_json(trigger_obj.value) {
            Ok(t) => t,
            Err(e) => {
                driving.remove(key);
                return self
                    .abort(
                        canary,
                        format!("httptrigger {:?} is unreadable: {e}", spec.trigger),
                    )
                    .await;
            }
        };
        for side in [&spec.newfunction, &spec.oldfunction] {
            let kind = if parse_version_ref(side).is_some() {
                Kind::FunctionVersion
            } else {
                Kind::Function
            };
            if self
                .store
                .get(kind, ns, &function_ref_target(side))
                .await?
                .is_none()
            {
                driving.remove(key);
                return self
                    .abort(canary, format!("function {side:?} no longer exists"))
                    .await;
            }
        }
        let new_id = FunctionId::new(ns, function_ref_target(&spec.newfunction));
        let observed = match driving.get(key) {
            None if canary.status.status == CanaryPhase::Pending => None,
            None => {
                // Running, but not by this controller (a restart or a new leader): start a
                // fresh interval from the route as it is.
                driving.insert(
                    key.clone(),
                    Driving {
                        baseline: self.source.outcome(&new_id),
                        stepped_at: Instant::now(),
                        set: trigger.spec.functionref.clone(),
                    },
                );
                return Ok(());
            }
            Some(d) => {
                if trigger.spec.functionref != d.set {
                    driving.remove(key);
                    return self
                        .abort(
                            canary,
                            format!(
                                "httptrigger {:?} was changed by someone else during the canary",
                                spec.trigger
                            ),
                        )
                        .await;
                }
                if d.stepped_at.elapsed() < spec.interval() {
                    return Ok(());
                }
                let now = self.source.outcome(&new_id);
                Some((
                    now.0.saturating_sub(d.baseline.0),
                    now.1.saturating_sub(d.baseline.1),
                ))
            }
        };
        let (step, mut status) = next_step(spec, &canary.status, observed);
        let functionref = match &step {
            CanaryStep::Shift(weight) => FunctionReference {
                kind: FunctionReferenceType::FunctionWeights,
                name: String::new(),
                functionweights: [
                    (spec.newfunction.clone(), *weight),
                    (spec.oldfunction.clone(), 100 - weight),
                ]
                .into_iter()
                .collect(),
            },
            CanaryStep::Succeed => FunctionReference::name(&spec.newfunction),
            CanaryStep::RollBack(_) => FunctionReference::name(&spec.oldfunction),
        };
        // The route first: a status never claims a weight the route does not have.
        let mut new_trigger = trigger.clone();
        new_trigger.spec.functionref = functionref.clone();
        self.store
            .put(
                new_trigger.to_json(),
                Precondition::ResourceVersion(trigger_obj.resource_version),
            )
            .await?;
        driving.insert(
            key.clone(),
            Driving {
                baseline: self.source.outcome(&new_id),
                stepped_at: Instant::now(),
                set: functionref,
            },
        );
        match &step {
            CanaryStep::RollBack(reason) => {
                tracing::warn!(canary = %canary.metadata.name, %reason, "canary rolled back")
            }
            CanaryStep::Succeed => {
                tracing::info!(canary = %canary.metadata.name, "canary succeeded")
            }
            CanaryStep::Shift(weight) => {
                tracing::info!(canary = %canary.metadata.name, weight, "canary weight shifted")
            }
        }
        status.last_update_timestamp = Some(now_rfc3339());
        self.write_status(canary, &status).await
    }

    async fn abort(&self, canary: &CanaryConfig, reason: String) -> Result<(), StoreError> {
        tracing::warn!(canary = %canary.metadata.name, %reason, "canary aborted");
        let mut status = canary.status.clone();
        status.status = CanaryPhase::Aborted;
        status.reason = Some(reason);
        status.last_update_timestamp = Some(now_rfc3339());
        self.write_status(canary, &status).await
    }

    async fn write_status(
        &self,
        canary: &CanaryConfig,
        status: &CanaryConfigStatus,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_value(status).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.store
            .put_status(
                Kind::CanaryConfig,
                &canary.metadata.namespace,
                &canary.metadata.name,
                value,
                Precondition::MustExist,
            )
            .await
            .map(|_| ())
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
