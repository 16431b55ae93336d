//! The pool manager's side of a Kubernetes function pod's fetcher (`kappa-fetcher`): its port
//! and the runtime's, the per-pod token `/specialize` requires, and the request it takes
//! ([`FetchRequest`]), which the pod backend sends to `POST /specialize` and a `newdeploy`
//! Deployment's pods read from their start-up Secret.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use kappa_core::{ConfigKind, ConfigVolume};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The fetcher's port in a function pod.
pub const FETCHER_PORT: u16 = 8000;
/// The runtime's port in a function pod (Fission's).
pub const RUNTIME_PORT: u16 = 8888;
/// The fetcher container's variable holding its pod's token for `/specialize`.
pub const FETCHER_TOKEN_ENV: &str = "KAPPA_FETCHER_TOKEN";

/// The token the fetcher of pod `pod` accepts on `/specialize`: HMAC-SHA256 of the pod's name
/// keyed with `key` (the platform token), in hex. Deterministic, so a restarted pool manager
/// recomputes it for the pods it adopts; one pod's token says nothing about another's.
pub fn pod_fetcher_token(key: &str, pod: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256>>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(b"kappa-fetcher\0");
    mac.update(pod.as_bytes());
    kappa_archive::hex(&mac.finalize().into_bytes())
}

/// What the pool manager sends to `POST /specialize`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRequest {
    /// Where to download the archive: the API server's `/v1/archives/<sha256>`.
    pub archive_url: String,
    /// The archive's expected sha256 (lower-case hex).
    pub sha256: String,
    /// For a non-zip archive, the file name to place it under (`deployarchive` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The entrypoint, passed to the runtime as `functionName`.
    pub entrypoint: String,
    /// Environment variables passed to the runtime's specialize call (`env`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets and ConfigMaps to place as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FetchFiles>,
    /// Bearer token for the archive download (omitted when the fetcher has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for FetchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchRequest")
            .field("archive_url", &self.archive_url)
            .field("sha256", &self.sha256)
            .field("filename", &self.filename)
            .field("entrypoint", &self.entrypoint)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One Secret or ConfigMap to place: values are base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchFiles {
    /// `secrets` or `configs` ([`ConfigKind::dir_name`]): the directory under which it is
    /// placed.
    pub dir: String,
    pub namespace: String,
    pub name: String,
    /// Key (file name) to base64 value.
    pub entries: BTreeMap<String, String>,
}

impl std::fmt::Debug for FetchFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchFiles")
            .field("dir", &self.dir)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl From<&ConfigVolume> for FetchFiles {
    fn from(v: &ConfigVolume) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            dir: v.kind.dir_name().to_string(),
            namespace: v.namespace.clone(),
            name: v.name.clone(),
            entries: v
                .entries
                .iter()
                .map(|(k, bytes)| (k.clone(), b64.encode(bytes)))
                .collect(),
        }
    }
}

impl FetchFiles {
    /// The volume to place; the error names what is wrong (the directory, or the key whose
    /// value is not base64), never a value.
    pub fn to_volume(&self) -> Result<ConfigVolume, String> {
        let kind = [ConfigKind::Secret, ConfigKind::ConfigMap]
            .into_iter()
            .find(|k| k.dir_name() == self.dir)
            .ok_or_else(|| format!("files.dir {:?} is not \"secrets\" or \"configs\"", self.dir))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut entries = BTreeMap::new();
        for (key, value) in &self.entries {
            let bytes = b64.decode(value).map_err(|e| {
                format!(
                    "key {key:?} of {} {}/{} is not base64: {e}",
                    self.dir, self.namespace, self.name
                )
            })?;
            entries.insert(key.clone(), bytes);
        }
        Ok(ConfigVolume {
            kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_never_debug_print_secrets() {
        let request = FetchRequest {
            archive_url: "http://api/v1/archives/x".into(),
            sha256: "x".into(),
            filename: None,
            entrypoint: "main.main".into(),
            env: BTreeMap::from([("PASSWORD".into(), "hunter2".into())]),
            files: vec![FetchFiles {
                dir: "secrets".into(),
                namespace: "default".into(),
                name: "db".into(),
                entries: BTreeMap::from([("password".into(), "aHVudGVyMg==".into())]),
            }],
            token: Some("tok-123".into()),
        };
        let text = format!("{request:?}");
        for secret in ["hunter2", "aHVudGVyMg==", "tok-123"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn volumes_cross_as_base64_and_back() {
        let volume = ConfigVolume {
            kind: ConfigKind::ConfigMap,
            namespace: "default".into(),
            name: "app".into(),
            entries: [("mode".to_string(), b"fast".to_vec())].into(),
        };
        let files = FetchFiles::from(&volume);
        assert_eq!(files.dir, "configs");
        assert_eq!(files.to_volume(), Ok(volume));
        let bad = FetchFiles {
            dir: "etc".into(),
            ..files.clone()
        };
        assert!(bad.to_volume().unwrap_err().contains("\"etc\""));
        let bad = FetchFiles {
            entries: BTreeMap::from([("mode".into(), "%%%".into())]),
            ..files
        };
        let e = bad.to_volume().unwrap_err();
        assert!(e.contains("\"mode\"") && !e.contains("%%%"), "{e}");
    }
}
