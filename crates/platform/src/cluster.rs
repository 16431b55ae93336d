//! Kubernetes parts of the assembly: the store, leader election, the router's pod readiness.

use std::sync::Arc;

use kappa_store::{RedbStore, Store};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreConfig};
use crate::error::{Ctx as _, PlatformError};

/// Opens the store the configuration names (the Kubernetes one needs `kube`).
pub(crate) fn open_store(
    store: &StoreConfig,
    kube: Option<&kappa_kube::Client>,
) -> Result<Arc<dyn Store>, PlatformError> {
    let path = match store {
        StoreConfig::Kubernetes => {
            let client = kube.ok_or_else(|| {
                PlatformError::config("--store kubernetes needs a Kubernetes client")
            })?;
            return Ok(Arc::new(kappa_kube::KubeStore::new(client.clone())));
        }
        StoreConfig::Embedded(path) => path,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_ctx(|| format!("creating {}", parent.display()))?;
    }
    let store = RedbStore::open(path).with_ctx(|| {
        format!(
            "opening the embedded store {} (only one process may open it)",
            path.display()
        )
    })?;
    Ok(Arc::new(store))
}

/// Starts leader election on the Lease `name` in this pod's namespace when running on
/// Kubernetes; `None` (no election: a single process) otherwise.
pub(crate) fn elect(
    kube: Option<&kappa_kube::Client>,
    name: &str,
    holder: &str,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::watch::Receiver<bool>> {
    let client = kube?.clone();
    let config = kappa_kube::LeaseConfig::new(name, &kappa_kube::current_namespace(), holder);
    tracing::info!(lease = name, holder, "waiting to lead");
    Some(kappa_kube::elect(
        kappa_kube::LeaseLock::new(client, config),
        shutdown.clone(),
    ))
}

/// Waits until this replica leads (at once without election) and returns the token the
/// leader-only work runs under; losing the lease later cancels the whole process (`shutdown`),
/// so Kubernetes restarts it and it waits for the lease again. `None` on shutdown first.
pub(crate) async fn led(
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
    shutdown: CancellationToken,
    what: &'static str,
) -> Option<CancellationToken> {
    let Some(mut leadership) = leadership else {
        return Some(shutdown);
    };
    tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = leadership.wait_for(|leads| *leads) => { r.ok()?; }
    }
    tracing::info!(work = what, "leading");
    let work = shutdown.child_token();
    let watched = work.clone();
    tokio::spawn(async move {
        if leadership.wait_for(|leads| !*leads).await.is_ok() && !watched.is_cancelled() {
            tracing::error!(
                work = what,
                "lost the lease; stopping so another replica takes over"
            );
            shutdown.cancel();
        }
    });
    Some(work)
}

/// Where the router's pod readiness watcher runs, if it does. `pod_readiness: Some(true)` needs
/// a Kubernetes client (the function namespace defaults to this pod's); unset, it runs when
/// `function_namespace` is set and a client can be built (in a cluster); `Some(false)` never.
pub(crate) async fn pod_readiness_target(
    config: &Config,
    client: Option<&kappa_kube::Client>,
) -> Result<Option<(kappa_kube::Client, String)>, PlatformError> {
    match config.pod_readiness {
        Some(false) => Ok(None),
        Some(true) => {
            let client = match client {
                Some(client) => client.clone(),
                None => kappa_kube::default_client().await.ctx(
                    "--pod-readiness needs a Kubernetes client (in-cluster service account, or KUBECONFIG)",
                )?,
            };
            let namespace = config
                .function_namespace
                .clone()
                .unwrap_or_else(kappa_kube::current_namespace);
            Ok(Some((client, namespace)))
        }
        None => {
            let Some(namespace) = config.function_namespace.clone() else {
                tracing::debug!("pod readiness off: no --function-namespace");
                return Ok(None);
            };
            let client = match client {
                Some(client) => client.clone(),
                None => match kappa_kube::default_client().await {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::info!(%error, "pod readiness off: no Kubernetes client (pass --pod-readiness true to require it)");
                        return Ok(None);
                    }
                },
            };
            Ok(Some((client, namespace)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pod_readiness: Option<bool>, namespace: Option<&str>) -> Config {
        let mut config = Config::new("/d".into(), "/r".into(), "t".repeat(16));
        config.pod_readiness = pod_readiness;
        config.function_namespace = namespace.map(str::to_string);
        config
    }

    #[tokio::test]
    async fn pod_readiness_is_off_when_refused_or_outside_a_cluster() {
        let off = config(Some(false), Some("fns"));
        assert!(pod_readiness_target(&off, None).await.unwrap().is_none());
        // Unset and no function namespace (local mode): off, without looking for a client.
        let local = config(None, None);
        assert!(pod_readiness_target(&local, None).await.unwrap().is_none());
    }

    #[test]
    fn stores_open_or_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_store(&StoreConfig::Kubernetes, None).err().unwrap();
        assert!(e.to_string().contains("Kubernetes client"), "{e}");
        let path = dir.path().join("sub/kappa.redb");
        open_store(&StoreConfig::Embedded(path.clone()), None).unwrap();
        assert!(path.exists());
    }
}
