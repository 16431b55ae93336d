//! Instances that end on their own: the backend's exit events, and a resync after missed ones.

use kappa_core::{ExitReason, InstanceEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Owner, PoolManager};

impl PoolManager {
    pub(super) async fn handle_events(
        &self,
        mut events: broadcast::Receiver<InstanceEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(InstanceEvent::Exited { id, reason }) => self.on_exit(&id, reason),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed instance events; checking instances");
                    self.resync_with_backend().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// After missed events: forget instances the backend no longer has.
    pub(super) async fn resync_with_backend(&self) {
        let Ok(live) = self.inner.backend.list().await else {
            return;
        };
        let live: std::collections::HashSet<String> = live.into_iter().map(|i| i.id).collect();
        let gone: Vec<String> = self
            .state()
            .owners
            .keys()
            .filter(|id| !live.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.on_exit(&id, ExitReason::default());
        }
    }

    pub(super) fn on_exit(&self, id: &str, reason: ExitReason) {
        let mut st = self.state();
        let Some(owner) = st.owners.remove(id) else {
            return; // deleted by us, or never ours
        };
        self.inner.metrics.unexpected_exits.inc();
        match owner {
            Owner::Pool(env) => {
                if let Some(pool) = st.pools.get_mut(&env) {
                    pool.warm.retain(|i| i.id != id);
                }
                st.total = st.total.saturating_sub(1);
                tracing::warn!(environment = %env, instance = id, %reason, "warm instance ended");
            }
            Owner::Specializing(function) => {
                // The specialization task still owns the instance's accounting; it reports this.
                st.owners
                    .insert(id.to_string(), Owner::Specializing(function));
                st.exits.insert(id.to_string(), reason);
            }
            Owner::Function(function) => {
                if let Some(fs) = st.functions.get_mut(&function)
                    && let Some(instance) = fs.instances.remove(id)
                {
                    // Just the reason: whoever reports it names the instance and function.
                    instance.endpoint.set_exit(reason.to_string());
                }
                st.total = st.total.saturating_sub(1);
                drop(st);
                self.inner.index.remove(&function, id);
                tracing::warn!(function = %function, instance = id, %reason, "function instance ended");
            }
        }
        self.update_gauges();
    }
}
