//! HttpTrigger: a route on the public router.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::Spec;
use crate::validate::{self, ValidationError};

/// How a trigger names its function(s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum FunctionReferenceType {
    /// One function, by name.
    #[default]
    Name,
    /// Several functions with integer weights (canaries).
    FunctionWeights,
}

/// The function(s) a trigger invokes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FunctionReference {
    #[serde(rename = "type", default)]
    pub kind: FunctionReferenceType,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub functionweights: BTreeMap<String, u32>,
}

impl FunctionReference {
    pub fn name(name: impl Into<String>) -> Self {
        Self {
            kind: FunctionReferenceType::Name,
            name: name.into(),
            functionweights: BTreeMap::new(),
        }
    }

    /// Every function this reference may invoke.
    pub fn function_names(&self) -> Vec<&str> {
        match self.kind {
            FunctionReferenceType::Name => vec![self.name.as_str()],
            FunctionReferenceType::FunctionWeights => {
                self.functionweights.keys().map(String::as_str).collect()
            }
        }
    }

    pub fn validate(&self, path: &str) -> Result<(), ValidationError> {
        match self.kind {
            FunctionReferenceType::Name => {
                crate::version::validate_function_ref(&format!("{path}.name"), &self.name)
            }
            FunctionReferenceType::FunctionWeights => {
                if self.functionweights.is_empty() {
                    return Err(ValidationError::new(
                        format!("{path}.functionweights"),
                        "expected at least one function with a weight",
                    ));
                }
                let mut total = 0u64;
                for (name, weight) in &self.functionweights {
                    crate::version::validate_function_ref(
                        &format!("{path}.functionweights"),
                        name,
                    )?;
                    total += u64::from(*weight);
                }
                if total == 0 {
                    return Err(ValidationError::new(
                        format!("{path}.functionweights"),
                        "weights must not all be 0",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Desired state of an HttpTrigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTriggerSpec {
    /// Only requests with this `Host` (port ignored) match; any host when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A path template such as `/users/{id}`; the function receives `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relativeurl: Option<String>,
    /// A path prefix; takes precedence over `relativeurl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Forward the prefix to the function instead of stripping it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_prefix: bool,
    /// Methods that match; `GET` when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    pub functionref: FunctionReference,
}

impl HttpTriggerSpec {
    /// The methods this trigger matches (`GET` when none are given).
    pub fn effective_methods(&self) -> Vec<String> {
        if self.methods.is_empty() {
            vec!["GET".to_string()]
        } else {
            self.methods.clone()
        }
    }
}

fn validate_path(field: &str, path: &str, allow_params: bool) -> Result<(), ValidationError> {
    if !path.starts_with('/') {
        return Err(ValidationError::new(
            field,
            format!("{path:?} must start with '/'"),
        ));
    }
    if path.len() > 1024
        || path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(ValidationError::new(
            field,
            format!(
                "{path:?} is not a URL path: expected no whitespace, '?' or '#', at most 1024 characters"
            ),
        ));
    }
    if path.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(ValidationError::new(
            field,
            format!("{path:?} must not contain '.' or '..' segments"),
        ));
    }
    let mut depth = 0i32;
    for c in path.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(ValidationError::new(
                field,
                format!("{path:?} has unbalanced braces"),
            ));
        }
    }
    if depth != 0 {
        return Err(ValidationError::new(
            field,
            format!("{path:?} has unbalanced braces"),
        ));
    }
    if !allow_params && path.contains('{') {
        return Err(ValidationError::new(
            field,
            "a prefix cannot have {parameters}",
        ));
    }
    if allow_params {
        let segments: Vec<&str> = path.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if inner.starts_with('*') && i + 1 != segments.len() {
                    return Err(ValidationError::new(
                        field,
                        format!("catch-all parameter {seg:?} must be the last path segment"),
                    ));
                }
                let name = inner.strip_prefix('*').unwrap_or(inner);
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(ValidationError::new(
                        field,
                        format!("parameter {seg:?} must be a name of letters, digits, '_' or '-'"),
                    ));
                }
            } else if seg.contains('{') || seg.contains('}') {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "segment {seg:?}: a parameter must be a whole path segment, like /users/{{id}}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Spec for HttpTriggerSpec {
    const KIND: Kind = Kind::HttpTrigger;
    type Status = serde_json::Value;

    fn validate(&self) -> Result<(), ValidationError> {
        match (&self.prefix, &self.relativeurl) {
            (Some(prefix), _) => validate_path("spec.prefix", prefix, false)?,
            (None, Some(url)) => validate_path("spec.relativeurl", url, true)?,
            (None, None) => {
                return Err(ValidationError::new(
                    "spec.relativeurl",
                    "expected a relativeurl (e.g. \"/hello\") or a prefix",
                ));
            }
        }
        for (i, m) in self.methods.iter().enumerate() {
            validate::http_method(&format!("spec.methods[{i}]"), m)?;
        }
        if let Some(host) = &self.host {
            let ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':');
            if !ok {
                return Err(ValidationError::new(
                    "spec.host",
                    format!("{host:?} is not a host name"),
                ));
            }
        }
        self.functionref.validate("spec.functionref")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(url: &str) -> HttpTriggerSpec {
        HttpTriggerSpec {
            relativeurl: Some(url.into()),
            functionref: FunctionReference::name("hello"),
            ..HttpTriggerSpec::default()
        }
    }

    #[test]
    fn paths() {
        trigger("/hello").validate().unwrap();
        trigger("/users/{id}/orders/{order}").validate().unwrap();
        trigger("/files/{*path}").validate().unwrap();
        for bad in [
            "hello",
            "/a/../b",
            "/a b",
            "/users/{id",
            "/users/x{id}",
            "/a?b",
            // Found by the route-table fuzz target: the router cannot route these.
            "/{*rest}/a",
            "/files/{*path}/",
        ] {
            assert_eq!(
                trigger(bad).validate().unwrap_err().field,
                "spec.relativeurl",
                "{bad}"
            );
        }
    }

    #[test]
    fn methods_and_function() {
        let mut t = trigger("/x");
        t.methods = vec!["FETCH".into()];
        assert_eq!(t.validate().unwrap_err().field, "spec.methods[0]");
        let mut t = trigger("/x");
        t.functionref = FunctionReference::name("");
        assert_eq!(t.validate().unwrap_err().field, "spec.functionref.name");
    }
}
