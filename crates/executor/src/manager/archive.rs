//! Archive resolution: the deployment archive a function runs (waiting out builds), and the package
//! a kept version ran.

use std::time::Duration;

use base64::Engine as _;
use kappa_core::{FunctionId, ProvisionError};
use kappa_types::{ArchiveType, BuildStatus, Function, Kind, Package};
use tokio::time::Instant;

use super::PoolManager;

impl PoolManager {
    /// For a kept version (`hello.v3`), the package as it was at that version. `None` for a
    /// function, and for a version recorded while its source package was still being built
    /// whose package still holds that source (the build's result is then the live package's).
    pub(super) async fn version_package(
        &self,
        function: &Function,
    ) -> Result<Option<Package>, ProvisionError> {
        let name = &function.metadata.name;
        if kappa_types::parse_version_object_name(name).is_none() {
            return Ok(None);
        }
        let id = FunctionId::new(&function.metadata.namespace, name);
        let package = match self.inner.cache.version_package(&id) {
            Some(p) => (*p).clone(),
            None => {
                let obj = self
                    .inner
                    .store
                    .get(Kind::FunctionVersion, &id.namespace, &id.name)
                    .await
                    .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
                    .ok_or_else(|| ProvisionError::FunctionNotFound(id.clone()))?;
                crate::cache::version_as_function(obj.value)
                    .map(|(_, p)| p)
                    .ok_or_else(|| {
                        ProvisionError::Unavailable(format!("function version {id} is unreadable"))
                    })?
            }
        };
        if package.spec.deployment.is_some() {
            return Ok(Some(package));
        }
        let live = self
            .inner
            .store
            .get(
                Kind::Package,
                &package.metadata.namespace,
                &package.metadata.name,
            )
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .and_then(|o| Package::from_json(o.value).ok());
        match live {
            Some(live) if live.spec.source == package.spec.source => Ok(None),
            _ => Err(ProvisionError::Package {
                name: format!("{}/{}", package.metadata.namespace, package.metadata.name),
                reason: format!(
                    "version {name} was recorded while its source was being built, and the package has been changed since: its build result is not kept"
                ),
            }),
        }
    }

    /// The package's deployment archive in the archive store: (sha256, single-file name).
    pub(super) async fn resolve_archive(
        &self,
        function: &Function,
    ) -> Result<(String, Option<String>), ProvisionError> {
        let pref = &function.spec.package.packageref;
        let package_error = |reason: String| ProvisionError::Package {
            name: format!("{}/{}", pref.namespace, pref.name),
            reason,
        };
        /// The last lines of a build log (at most 30 lines and 4 KiB), for an invocation's error.
        fn log_tail(log: &str) -> String {
            const MAX_LINES: usize = 30;
            const MAX_BYTES: usize = 4096;
            let lines: Vec<&str> = log.trim_end().lines().collect();
            let mut tail = lines[lines.len().saturating_sub(MAX_LINES)..].join("\n");
            if tail.len() > MAX_BYTES {
                let mut start = tail.len() - MAX_BYTES;
                while !tail.is_char_boundary(start) {
                    start += 1;
                }
                tail = tail[start..].to_owned();
            }
            tail
        }
        // A package whose build is pending or running and has no deployment yet is waited for.
        // The wait ends just before the function's specializationTimeout, the bound the caller
        // (`provision`, and the router above it with specializationTimeout + functionTimeout)
        // puts on the whole cold start: a build still running then is answered with this clear
        // "still being built" (503, retry) rather than a timeout; the build itself goes on.
        let wait = Duration::from_secs(function.spec.specialization_timeout)
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_millis(500));
        let deadline = Instant::now() + wait;
        // A kept version runs the code it had then, whatever the package holds now.
        let version_package = self.version_package(function).await?;
        let package = if let Some(package) = version_package {
            package
        } else {
            loop {
                let obj = self
                    .inner
                    .store
                    .get(Kind::Package, &pref.namespace, &pref.name)
                    .await
                    .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
                    .ok_or_else(|| package_error("it does not exist".into()))?;
                let version = obj.resource_version;
                let package = Package::from_json(obj.value)
                    .map_err(|e| package_error(format!("unreadable: {e}")))?;
                let status = package.status.buildstatus;
                if status == BuildStatus::Failed {
                    return Err(package_error(format!(
                        "its build failed (`kappa pkg info {}` shows the whole log); the end of the build log:\n{}",
                        pref.name,
                        log_tail(&package.status.buildlog)
                    )));
                }
                let building = matches!(status, BuildStatus::Pending | BuildStatus::Running)
                    && package.spec.deployment.is_none();
                if !building {
                    break package;
                }
                // Wait for the package to change, then look again.
                let mut events = self.inner.store.watch(&[Kind::Package], Some(version));
                let changed = tokio::time::timeout_at(deadline, async {
                    while let Some(event) = futures::StreamExt::next(&mut events).await {
                        match event {
                            Ok(e)
                                if e.object.namespace == pref.namespace
                                    && e.object.name == pref.name =>
                            {
                                return true;
                            }
                            Ok(_) => {}
                            // History gone or the watch failed: read the package again.
                            Err(_) => return false,
                        }
                    }
                    false
                })
                .await;
                match changed {
                    Ok(true) => {}
                    // The watch ended without news: read again after a pause.
                    Ok(false) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => {
                        let status = if status == BuildStatus::Running {
                            "running"
                        } else {
                            "pending"
                        };
                        return Err(ProvisionError::Unavailable(format!(
                            "package {}/{} is still being built (build status {status} after waiting {} s): retry when `kappa pkg info {}` shows succeeded",
                            pref.namespace,
                            pref.name,
                            wait.as_secs(),
                            pref.name
                        )));
                    }
                }
            }
        };
        let archive = package
            .spec
            .deployment
            .as_ref()
            .ok_or_else(|| package_error("it has no deployment archive".into()))?;
        let sha = match archive.kind {
            ArchiveType::Url => archive.stored_sha256().map(str::to_string).ok_or_else(|| {
                package_error("only archive://sha256/ URLs are fetched locally".into())
            })?,
            ArchiveType::Literal => {
                let literal = archive.literal.as_deref().unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(literal)
                    .map_err(|e| {
                        package_error(format!("its literal archive is not base64: {e}"))
                    })?;
                self.inner
                    .archives
                    .put_bytes(&bytes)
                    .await
                    .map_err(|e| package_error(format!("storing its literal archive failed: {e}")))?
                    .sha256
            }
        };
        if let Some(checksum) = &archive.checksum
            && checksum.sum != sha
        {
            return Err(package_error(format!(
                "checksum mismatch: archive is sha256 {sha}, spec says {}",
                checksum.sum
            )));
        }
        Ok((sha, archive.filename.clone()))
    }
}
