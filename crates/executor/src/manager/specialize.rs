//! A miss (`Provisioner::provision`) and the specializations that answer it: claiming a slot of one
//! in flight or starting one, then specializing a warm (or new) instance.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kappa_core::{
    BackendError, Endpoint, FunctionId, Provision, ProvisionError, Provisioner, SpecializeRequest,
};
use kappa_store::Precondition;
use kappa_types::{ExecutorType, Function, Kind};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{FnInstance, Inflight, Owner, PoolManager, egress_of, generation_of};
use crate::metrics::ResultLabels;

/// How long after a successful specialization from the warm pool the pool starts refilling:
/// long enough for the request that waited for it to reach the instance on an idle machine,
/// short against an instance's start (tens of milliseconds).
const REFILL_AFTER_SPECIALIZATION: Duration = Duration::from_millis(5);

impl PoolManager {
    /// Starts a specialization for `fid` unless one with free slots exists or the function is
    /// at its cap. Returns the receiver of its outcome, or `None` when at capacity.
    pub(super) fn begin_specialization(
        &self,
        fid: &FunctionId,
        function: Arc<Function>,
        generation: i64,
        claim: bool,
    ) -> Option<watch::Receiver<Option<Result<(), ProvisionError>>>> {
        let rpp = function.spec.requests_per_pod.max(1);
        let cap = match function.spec.executor_type {
            ExecutorType::Poolmgr => function.spec.concurrency,
            ExecutorType::Newdeploy => function.spec.max_scale,
        } as usize;
        let mut st = self.state();
        let id = st.next_inflight;
        st.next_inflight += 1;
        let fs = st.functions.entry(fid.clone()).or_default();
        if claim
            && let Some(inflight) = fs
                .inflight
                .iter_mut()
                .find(|i| i.generation == generation && i.unclaimed > 0)
        {
            inflight.unclaimed -= 1;
            return Some(inflight.done.clone());
        }
        let ready = fs
            .instances
            .values()
            .filter(|i| i.drain_deadline.is_none() && i.endpoint.generation == generation)
            .count();
        let specializing = fs
            .inflight
            .iter()
            .filter(|i| i.generation == generation)
            .count();
        if ready + specializing >= cap {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        fs.inflight.push(Inflight {
            id,
            generation,
            unclaimed: if claim { rpp - 1 } else { rpp },
            done: rx.clone(),
        });
        drop(st);
        self.update_gauges();
        let this = self.clone();
        let fid = fid.clone();
        // The spans of the specialization (take, start, specialize) join the trace of the
        // request that started it.
        let span = if kappa_telemetry::enabled() {
            kappa_telemetry::span!("specialization", kappa.function = %fid, kappa.generation = generation, kappa.instance.id = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        tokio::spawn(
            async move {
                let started = Instant::now();
                let mut took_warm = false;
                let result = this
                    .specialize_new(&fid, &function, generation, &mut took_warm)
                    .await;
                let label = match &result {
                    Ok(()) => "ok",
                    Err(ProvisionError::Timeout(_)) => "timeout",
                    Err(_) => "failed",
                };
                this.inner
                    .metrics
                    .specializations
                    .get_or_create(&ResultLabels { result: label })
                    .inc();
                this.inner
                    .metrics
                    .specialize_seconds
                    .observe(started.elapsed().as_secs_f64());
                {
                    let mut st = this.state();
                    if let Some(fs) = st.functions.get_mut(&fid) {
                        fs.inflight.retain(|i| i.id != id);
                        match &result {
                            Ok(()) => fs.failure = None,
                            Err(error) => {
                                fs.fail(generation, error.clone());
                            }
                        }
                    }
                }
                if let Err(e) = &result {
                    tracing::warn!(function = %fid, error = %e, "specialization failed");
                    this.record_error(&fid, Some(e.to_string())).await;
                }
                let succeeded = result.is_ok();
                let _ = tx.send(Some(result));
                this.update_gauges();
                if took_warm {
                    // The pool refills (a reconcile pass starts an instance: a process start
                    // that takes one core for milliseconds) once the request that took the
                    // instance had its turn: on a small machine, a refill started at the take
                    // competes with the specialization and the first request for the cores.
                    // In a task of its own, so the specialization's span ends here.
                    let changed = Arc::clone(&this.inner);
                    tokio::spawn(async move {
                        if succeeded {
                            tokio::time::sleep(REFILL_AFTER_SPECIALIZATION).await;
                        }
                        changed.cache.changed.notify_waiters();
                    });
                }
            }
            .instrument(span),
        );
        Some(rx)
    }

    /// The error of the function's last failed specialization while its back-off lasts.
    pub(super) fn recent_failure(
        &self,
        fid: &FunctionId,
        generation: i64,
    ) -> Option<ProvisionError> {
        let st = self.state();
        let failure = st.functions.get(fid)?.failure.as_ref()?;
        (failure.generation == generation && failure.until > Instant::now())
            .then(|| failure.error.clone())
    }

    pub(super) async fn specialize_new(
        &self,
        fid: &FunctionId,
        function: &Function,
        generation: i64,
        took_warm: &mut bool,
    ) -> Result<(), ProvisionError> {
        let (env_id, env) = self.load_environment(function).await?;
        let (sha, filename) = self.resolve_archive(function).await?;
        // Before taking an instance: a missing secret fails fast, and costs no instance.
        let (files, config) = self.load_config(function).await?;
        let env_generation = generation_of(&env.metadata);
        let dedicated = function.spec.executor_type == ExecutorType::Newdeploy
            || !function.spec.resources.is_empty();
        let traced = kappa_telemetry::enabled();
        let taken = Instant::now();
        let warm = if dedicated {
            None
        } else {
            let warm = self.take_warm(&env_id, env_generation, fid);
            self.note_take(&env_id, &env, warm.is_some());
            warm
        };
        if let Some(instance) = &warm {
            self.inner
                .metrics
                .phase(fid, "take", taken.elapsed().as_secs_f64());
            if traced {
                let span = kappa_telemetry::span!(
                    "take from pool",
                    kappa.environment = %env_id,
                    kappa.instance.id = %instance.id,
                );
                drop(span);
            }
        }
        let instance = match warm {
            Some(instance) => {
                // The caller refills the pool once this specialization (and, when it
                // succeeds, the first request) is done.
                *took_warm = true;
                instance
            }
            None => {
                {
                    let mut st = self.state();
                    if st.total >= self.inner.config.max_instances {
                        return Err(ProvisionError::Unavailable(format!(
                            "the platform's instance limit ({}) is reached",
                            self.inner.config.max_instances
                        )));
                    }
                    st.total += 1;
                }
                let resources = function.spec.resources.or(&env.spec.resources);
                let spec = self.instance_spec(&env_id, &env, &resources);
                let start_span = if traced {
                    kappa_telemetry::span!(
                        "start instance",
                        kappa.environment = %env_id,
                        kappa.instance.id = tracing::field::Empty,
                    )
                } else {
                    tracing::Span::none()
                };
                let starting = Instant::now();
                let created = self
                    .inner
                    .backend
                    .create(spec)
                    .instrument(start_span.clone())
                    .await;
                self.inner
                    .metrics
                    .phase(fid, "start", starting.elapsed().as_secs_f64());
                if let Ok(instance) = &created {
                    start_span.record("kappa.instance.id", instance.id.as_str());
                }
                drop(start_span);
                match created {
                    Ok(instance) => {
                        self.state()
                            .owners
                            .insert(instance.id.clone(), Owner::Specializing(fid.clone()));
                        instance
                    }
                    Err(e) => {
                        let mut st = self.state();
                        st.total = st.total.saturating_sub(1);
                        return Err(ProvisionError::Start(e.to_string()));
                    }
                }
            }
        };
        let timeout = Duration::from_secs(function.spec.specialization_timeout);
        let request = SpecializeRequest {
            function: fid.clone(),
            generation,
            archive_sha256: sha,
            filename,
            entrypoint: function.spec.package.function_name.clone(),
            env: function.spec.env.clone(),
            files,
            timeout,
            egress: egress_of(function, &env),
            host_ports: function.spec.effective_host_ports(&env.spec).to_vec(),
        };
        if traced {
            tracing::Span::current().record("kappa.instance.id", instance.id.as_str());
        }
        let specialize_span = if traced {
            kappa_telemetry::span!("specialize", kappa.instance.id = %instance.id, otel.status_code = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        let specializing = Instant::now();
        let outcome = tokio::time::timeout(
            timeout,
            self.inner
                .backend
                .specialize(&instance, &request)
                .instrument(specialize_span.clone()),
        )
        .await;
        self.inner
            .metrics
            .phase(fid, "specialize", specializing.elapsed().as_secs_f64());
        if !matches!(outcome, Ok(Ok(()))) {
            specialize_span.record("otel.status_code", "ERROR");
        }
        drop(specialize_span);
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(BackendError::Timeout(format!(
                "no answer within {} s",
                timeout.as_secs()
            ))),
        };
        if let Some(error) = error {
            let exit = {
                let mut st = self.state();
                if st.owners.remove(&instance.id).is_some() {
                    st.total = st.total.saturating_sub(1);
                }
                st.exits.remove(&instance.id)
            };
            let _ = self
                .inner
                .backend
                .delete(&instance.id, Duration::ZERO)
                .await;
            return Err(match (error, exit) {
                (BackendError::Timeout(_), _) => ProvisionError::Timeout(timeout),
                (
                    BackendError::Specialize {
                        message, detail, ..
                    },
                    None,
                ) => ProvisionError::Specialize { message, detail },
                (other, Some(reason)) => ProvisionError::Specialize {
                    message: format!("instance {} {reason} during specialization", instance.id),
                    detail: Some(other.to_string()),
                },
                (other, None) => ProvisionError::Specialize {
                    message: other.to_string(),
                    detail: None,
                },
            });
        }
        let endpoint = Arc::new(Endpoint::new(
            instance.id.clone(),
            instance.addr,
            generation,
            function.spec.requests_per_pod,
        ));
        if let Some(connection) = self.inner.backend.take_connection(&instance.id) {
            endpoint.offer_connection(connection);
        }
        {
            let mut st = self.state();
            if st.owners.get(&instance.id) != Some(&Owner::Specializing(fid.clone())) {
                // It ended while we were specializing it.
                let reason = st.exits.remove(&instance.id).unwrap_or_default();
                if st.owners.remove(&instance.id).is_some() {
                    st.total = st.total.saturating_sub(1);
                }
                return Err(ProvisionError::Specialize {
                    message: format!(
                        "instance {} {reason} right after specialization",
                        instance.id
                    ),
                    detail: None,
                });
            }
            st.owners
                .insert(instance.id.clone(), Owner::Function(fid.clone()));
            st.functions
                .entry(fid.clone())
                .or_default()
                .instances
                .insert(
                    instance.id.clone(),
                    FnInstance {
                        endpoint: Arc::clone(&endpoint),
                        env_generation,
                        config,
                        drain_deadline: None,
                    },
                );
        }
        self.inner.index.insert(fid, endpoint);
        tracing::info!(function = %fid, instance = %instance.id, generation, "instance specialized");
        if function.status.last_error.is_some() {
            self.record_error(fid, None).await;
        }
        Ok(())
    }

    /// Writes (or clears) the function's `status.lastError` so `kappa fn get` shows it.
    pub(super) async fn record_error(&self, fid: &FunctionId, error: Option<String>) {
        // A kept version is immutable: its errors reach the caller only.
        if kappa_types::parse_version_object_name(&fid.name).is_some() {
            return;
        }
        let status = serde_json::json!({ "lastError": error });
        if let Err(e) = self
            .inner
            .store
            .put_status(
                Kind::Function,
                &fid.namespace,
                &fid.name,
                status,
                Precondition::MustExist,
            )
            .await
        {
            tracing::debug!(function = %fid, error = %e, "could not record the function's status");
        }
    }
}

#[async_trait]
impl Provisioner for PoolManager {
    async fn provision(
        &self,
        function: &FunctionId,
        generation: i64,
    ) -> Result<Provision, ProvisionError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ProvisionError::Unavailable(
                "the platform is shutting down".into(),
            ));
        }
        let f = self.load_function(function).await?;
        let current = generation_of(&f.metadata);
        if current != generation {
            // The caller's route table is behind (or ahead of) the store by a moment: let it
            // catch up rather than specialize code it would not use.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Ok(Provision::Added);
        }
        if let Some(error) = self.recent_failure(function, generation) {
            return Err(error);
        }
        if self.uses_deployments(&f) {
            return self.provision_deployed(function, &f, generation).await;
        }
        self.note_arrival(function);
        let timeout = Duration::from_secs(f.spec.specialization_timeout);
        let Some(mut done) = self.begin_specialization(function, f, generation, true) else {
            return Ok(Provision::AtCapacity);
        };
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if let Some(result) = done.borrow_and_update().clone() {
                    return result;
                }
                if done.changed().await.is_err() {
                    return Err(ProvisionError::Unavailable(
                        "specialization was abandoned".into(),
                    ));
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(Provision::Added),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProvisionError::Timeout(timeout)),
        }
    }
}
