//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas of the pool manager
//! never fight over pods and two trigger workers never fire a schedule twice.
//!
//! [`LeaseLock::try_acquire_or_renew`] is one step: create the Lease when absent, renew it when
//! we hold it, take it over when its holder stopped renewing, otherwise report who holds it.
//! Every write is a replace carrying the `resourceVersion` that was read, so of two replicas
//! racing for the same Lease exactly one write succeeds (the other gets 409 Conflict and
//! reports the winner).
//!
//! Expiry is judged like client-go does: by how long *this* process has seen the same
//! holder/renew record unchanged (a local monotonic clock), not by comparing the holder's
//! `renewTime` with our wall clock, so clock skew between nodes cannot cause a takeover.
//!
//! [`elect`] runs the step in a loop and publishes leadership on a `watch` channel; a leader
//! that cannot renew within `renew_deadline` steps down before its lease can expire.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Error as KubeError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a lease step failed (the API could not be reached or answered unexpectedly).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A Kubernetes API call failed.
    #[error("lease {name}: {step}: {source}")]
    Api {
        name: String,
        step: &'static str,
        #[source]
        source: KubeError,
    },
}

/// The outcome of one [`LeaseLock::try_acquire_or_renew`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// We created the Lease or took it over: we lead from now on.
    Acquired,
    /// We held it and renewed it.
    Renewed,
    /// Someone else holds it (and renewed it recently enough).
    HeldBy(String),
}

impl LeaseState {
    /// Whether this replica leads after the step.
    pub fn is_leader(&self) -> bool {
        matches!(self, LeaseState::Acquired | LeaseState::Renewed)
    }
}

/// Settings of a lease.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's name (`kappa-executor`, `kappa-triggers`...).
    pub name: String,
    /// Its namespace (the platform's).
    pub namespace: String,
    /// Who we are: the pod name (`POD_NAME` from the downward API).
    pub holder: String,
    /// How long a holder's lease lasts without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (less than `lease_duration`).
    pub renew_deadline: Duration,
    /// Time between steps.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults like client-go's: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(name: &str, namespace: &str, holder: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            holder: holder.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What we last saw of someone else's record, and when (our clock).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: Option<String>,
    renew: Option<String>,
    transitions: i32,
    at: Instant,
}

/// A lock on one Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    config: LeaseConfig,
    /// A std mutex: only held for comparisons, never across an `.await`.
    observed: Mutex<Option<Observed>>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn conflict(e: &KubeError) -> bool {
    matches!(e, KubeError::Api(s) if s.code == 409)
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaseLock {
    /// A lock on the Lease `config.name` in `config.namespace`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn err(&self, step: &'static str, source: KubeError) -> LeaseError {
        LeaseError::Api {
            name: self.config.name.clone(),
            step,
            source,
        }
    }

    fn our_spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.config.holder.clone()),
            lease_duration_seconds: Some(secs(self.config.lease_duration)),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One election step (see the module docs).
    pub async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err("reading", e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.our_spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    tracing::info!(lease = %self.config.name, holder = %self.config.holder, "lease acquired (created)");
                    Ok(LeaseState::Acquired)
                }
                Err(e) if conflict(&e) => Ok(LeaseState::HeldBy("another replica".into())),
                Err(e) => Err(self.err("creating", e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        if holder.as_deref() == Some(self.config.holder.as_str()) {
            lease.spec = Some(self.our_spec(transitions, spec.acquire_time.clone()));
            return match self
                .api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(LeaseState::Renewed),
                Err(e) if conflict(&e) => Ok(LeaseState::HeldBy("another replica".into())),
                Err(e) => Err(self.err("renewing", e)),
            };
        }
        if let Some(other) = &holder
            && !self.expired(&spec)
        {
            return Ok(LeaseState::HeldBy(other.clone()));
        }
        // Free (released) or expired: take it over, guarded by the resourceVersion we read.
        lease.spec = Some(self.our_spec(transitions + 1, None));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.config.name, holder = %self.config.holder, previous = ?holder, "lease acquired (taken over)");
                Ok(LeaseState::Acquired)
            }
            Err(e) if conflict(&e) => Ok(LeaseState::HeldBy(
                holder.unwrap_or_else(|| "another replica".into()),
            )),
            Err(e) => Err(self.err("taking over", e)),
        }
    }

    /// Whether another holder's record has stayed unchanged for its lease duration, as seen
    /// by this process.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let seen = Observed {
            holder: spec.holder_identity.clone(),
            renew: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
            at: Instant::now(),
        };
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15).max(1)).unwrap_or(15),
        );
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        match observed.as_ref() {
            Some(prev)
                if prev.holder == seen.holder
                    && prev.renew == seen.renew
                    && prev.transitions == seen.transitions =>
            {
                seen.at.duration_since(prev.at) >= duration
            }
            _ => {
                *observed = Some(seen);
                false
            }
        }
    }

    /// Gives the lease up if we hold it (on shutdown), so a successor need not wait for it to
    /// expire.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err("reading", e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.config.name, "lease released");
                Ok(())
            }
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(self.err("releasing", e)),
        }
    }
}

/// Runs election steps every `retry_period` until `shutdown`, publishing whether we lead.
/// A leader whose renewals fail for `renew_deadline` publishes `false`. On shutdown the lease
/// is released. Callers start their leader-only work when the value turns `true` and stop it
/// when it turns `false`.
pub fn elect(lock: LeaseLock, shutdown: CancellationToken) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut last_renewed: Option<Instant> = None;
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(state) => {
                    let leader = state.is_leader();
                    last_renewed = leader.then(Instant::now);
                    tx.send_if_modified(|v| std::mem::replace(v, leader) != leader);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease step failed");
                    if last_renewed.is_some_and(|t| t.elapsed() >= lock.config().renew_deadline) {
                        last_renewed = None;
                        tx.send_if_modified(|v| std::mem::replace(v, false));
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(lock.config().retry_period) => {}
            }
        }
        tx.send_if_modified(|v| std::mem::replace(v, false));
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "releasing the lease failed");
        }
    });
    rx
}
