//! Writes a trigger's status (`state`, `reason`, `lastTransitionTime`, `lastFiredTime`).
//! One writer per trigger (its worker), so a write never races another for the same trigger.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use kappa_store::{Precondition, Store, StoreError};
use kappa_types::{Kind, TriggerStatus};

/// The trigger is being set up (connecting, creating the consumer).
pub const PENDING: &str = "pending";
/// The trigger consumes (or its schedule runs).
pub const READY: &str = "ready";
/// The trigger cannot work now; `reason` says why (and that it is retried, when it is).
pub const ERROR: &str = "error";

/// RFC 3339 in UTC with seconds, as the store's timestamps.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The status writer of one trigger.
pub(crate) struct StatusWriter {
    store: Arc<dyn Store>,
    kind: Kind,
    namespace: String,
    name: String,
    current: TriggerStatus,
}

impl StatusWriter {
    /// A writer that starts from the stored `current` status.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        kind: Kind,
        namespace: &str,
        name: &str,
        current: TriggerStatus,
    ) -> Self {
        Self {
            store,
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            current,
        }
    }

    /// The status as last written (or read).
    pub(crate) fn current(&self) -> &TriggerStatus {
        &self.current
    }

    /// Sets state and reason; writes only when they change. Failures are logged: a status is
    /// informative and the next change writes it again.
    pub(crate) async fn set(&mut self, state: &str, reason: impl Into<String>) {
        let reason = reason.into();
        if self.current.state == state && self.current.reason == reason {
            return;
        }
        let mut next = self.current.clone();
        if next.state != state {
            next.last_transition_time = Some(rfc3339(Utc::now()));
        }
        next.state = state.to_string();
        next.reason = reason;
        if let Err(e) = self.write(&next).await {
            tracing::warn!(trigger = %self.name, namespace = %self.namespace, error = %e, "writing the trigger status failed");
            return;
        }
        self.current = next;
    }

    /// Records `fired` as the last fired time (with state ready and `reason`); the caller
    /// invokes the function only when this succeeded.
    pub(crate) async fn fired(
        &mut self,
        fired: DateTime<Utc>,
        reason: String,
    ) -> Result<(), StoreError> {
        let mut next = self.current.clone();
        if next.state != READY {
            next.last_transition_time = Some(rfc3339(Utc::now()));
        }
        next.state = READY.to_string();
        next.reason = reason;
        next.last_fired_time = Some(rfc3339(fired));
        self.write(&next).await?;
        self.current = next;
        Ok(())
    }

    async fn write(&self, status: &TriggerStatus) -> Result<(), StoreError> {
        let value = serde_json::to_value(status).unwrap_or(serde_json::Value::Null);
        match self
            .store
            .put_status(
                self.kind,
                &self.namespace,
                &self.name,
                value,
                Precondition::MustExist,
            )
            .await
        {
            // Deleted meanwhile: its worker is about to stop.
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
