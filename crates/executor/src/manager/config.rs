//! Configuration of a specialization: the function and its environment (from the cache, else the
//! store), and its Secrets, ConfigMaps and volumes.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use kappa_core::{ConfigKind, ConfigVolume, FunctionId, ProvisionError};
use kappa_types::{ConfigMap, Environment, Function, Kind, NamedRef, Secret};

use super::PoolManager;
use crate::cache::ConfigRef;

impl PoolManager {
    pub(super) async fn load_function(
        &self,
        fid: &FunctionId,
    ) -> Result<Arc<Function>, ProvisionError> {
        if let Some(f) = self.inner.cache.function(fid) {
            return Ok(f);
        }
        // A kept version (`hello.v3`) just recorded and not yet seen by the watch.
        if kappa_types::parse_version_object_name(&fid.name).is_some() {
            let obj = self
                .inner
                .store
                .get(Kind::FunctionVersion, &fid.namespace, &fid.name)
                .await
                .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
                .ok_or_else(|| ProvisionError::FunctionNotFound(fid.clone()))?;
            return crate::cache::version_as_function(obj.value)
                .map(|(f, _)| Arc::new(f))
                .ok_or_else(|| {
                    ProvisionError::Unavailable(format!("function version {fid} is unreadable"))
                });
        }
        // Just created and not yet seen by the watch: read it.
        let obj = self
            .inner
            .store
            .get(Kind::Function, &fid.namespace, &fid.name)
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .ok_or_else(|| ProvisionError::FunctionNotFound(fid.clone()))?;
        Function::from_json(obj.value)
            .map(Arc::new)
            .map_err(|e| ProvisionError::Unavailable(format!("function {fid} is unreadable: {e}")))
    }

    pub(super) async fn load_environment(
        &self,
        function: &Function,
    ) -> Result<(FunctionId, Arc<Environment>), ProvisionError> {
        let env_id = FunctionId::new(
            &function.spec.environment.namespace,
            &function.spec.environment.name,
        );
        if let Some(env) = self.inner.cache.environment(&env_id) {
            return Ok((env_id, env));
        }
        let obj = self
            .inner
            .store
            .get(Kind::Environment, &env_id.namespace, &env_id.name)
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .ok_or_else(|| ProvisionError::EnvironmentNotFound(env_id.to_string()))?;
        let env = Environment::from_json(obj.value).map_err(|e| {
            ProvisionError::Unavailable(format!("environment {env_id} is unreadable: {e}"))
        })?;
        Ok((env_id, Arc::new(env)))
    }

    /// The Secrets and ConfigMaps `function` references, read from the store (the API never
    /// returns secret values; the executor is one of the two places they go: into the
    /// instance's files), with the configuration fingerprint they make. A missing or unreadable
    /// one is an error naming it and the field that references it; no error carries a value.
    pub(super) async fn load_config(
        &self,
        function: &Function,
    ) -> Result<(Vec<ConfigVolume>, Vec<(ConfigRef, u64)>), ProvisionError> {
        let refs = function
            .spec
            .secrets
            .iter()
            .enumerate()
            .map(|(i, r)| (ConfigKind::Secret, format!("spec.secrets[{i}]"), r))
            .chain(
                function
                    .spec
                    .configmaps
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (ConfigKind::ConfigMap, format!("spec.configmaps[{i}]"), r)),
            );
        let mut volumes = Vec::new();
        let mut fingerprint = Vec::new();
        for (kind, field, reference) in refs {
            let (volume, version) = self.load_volume(kind, &field, reference).await?;
            fingerprint.push((
                (kind, FunctionId::new(&volume.namespace, &volume.name)),
                version,
            ));
            volumes.push(volume);
        }
        Ok((volumes, fingerprint))
    }

    pub(super) async fn load_volume(
        &self,
        kind: ConfigKind,
        field: &str,
        reference: &NamedRef,
    ) -> Result<(ConfigVolume, u64), ProvisionError> {
        let store_kind = match kind {
            ConfigKind::Secret => Kind::Secret,
            ConfigKind::ConfigMap => Kind::ConfigMap,
        };
        let what = format!("{kind} {}/{}", reference.namespace, reference.name);
        let misconfigured = |reason: String| ProvisionError::Specialize {
            message: format!("{what} ({field}) {reason}"),
            detail: None,
        };
        let obj = self
            .inner
            .store
            .get(store_kind, &reference.namespace, &reference.name)
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                misconfigured(format!(
                    "does not exist: create it, or remove it from the function (kappa {} create --name {})",
                    kind, reference.name
                ))
            })?;
        let entries = match kind {
            ConfigKind::Secret => {
                // The serde message could quote a value: say only that it is unreadable.
                let secret = Secret::from_json(obj.value)
                    .map_err(|_| misconfigured("is unreadable".into()))?;
                let mut entries = BTreeMap::new();
                for (key, value) in &secret.spec.data {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.trim())
                        .map_err(|_| {
                            misconfigured(format!(
                                "holds a value for key {key:?} that is not base64"
                            ))
                        })?;
                    entries.insert(key.clone(), bytes);
                }
                for (key, value) in secret.spec.string_data {
                    entries.insert(key, value.into_bytes());
                }
                entries
            }
            ConfigKind::ConfigMap => {
                let config = ConfigMap::from_json(obj.value)
                    .map_err(|e| misconfigured(format!("is unreadable: {e}")))?;
                config
                    .spec
                    .data
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect()
            }
        };
        Ok((
            ConfigVolume {
                kind,
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
                entries,
            },
            obj.resource_version,
        ))
    }
}
