//! Secrets and ConfigMaps: key/value data a function's instances read from files at
//! `/secrets/<namespace>/<name>/<key>` and `/configs/<namespace>/<name>/<key>` (the paths
//! Fission functions read).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::Spec;
use crate::validate::ValidationError;

/// Largest total size of a Secret's or ConfigMap's values (as Kubernetes allows).
pub const CONFIG_DATA_LIMIT: usize = 1024 * 1024;

/// Desired state of a Secret: values are base64 in `data` (as in Kubernetes) or plain text in
/// `stringData` (folded into `data` when stored). The API never returns the values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
}

/// Desired state of a ConfigMap: plain-text values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// Keys become file names: letters, digits, '-', '_' and '.', not "." or "..".
pub fn validate_config_key(field: &str, key: &str) -> Result<(), ValidationError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(ValidationError::new(
            format!("{field}.{key}"),
            "is not a valid key: expected letters, digits, '-', '_' or '.' (it becomes a file name)",
        ));
    }
    Ok(())
}

fn validate_data<'a>(
    field: &str,
    entries: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<(), ValidationError> {
    let mut total = 0usize;
    for (key, value) in entries {
        validate_config_key(field, key)?;
        total += value.len();
    }
    if total > CONFIG_DATA_LIMIT {
        return Err(ValidationError::new(field, "values exceed 1 MiB in total"));
    }
    Ok(())
}

impl Spec for SecretSpec {
    const KIND: Kind = Kind::Secret;
    type Status = serde_json::Value;

    fn validate(&self) -> Result<(), ValidationError> {
        validate_data("spec.data", self.data.iter())?;
        validate_data("spec.stringData", self.string_data.iter())
    }
}

impl Spec for ConfigMapSpec {
    const KIND: Kind = Kind::ConfigMap;
    type Status = serde_json::Value;

    fn validate(&self) -> Result<(), ValidationError> {
        validate_data("spec.data", self.data.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_file_names() {
        let mut s = SecretSpec::default();
        s.string_data.insert("password".into(), "x".into());
        s.validate().unwrap();
        s.string_data.insert("../escape".into(), "x".into());
        assert_eq!(s.validate().unwrap_err().field, "spec.stringData.../escape");
    }
}
