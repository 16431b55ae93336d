//! FunctionVersion: an immutable, numbered snapshot of a function's spec and code, written by
//! the API on every accepted change of the function (see `docs/design/004-function-versions.md`).
//!
//! A version `N` of function `hello` is stored as the object `hello.vN` (a name no function can
//! have: function names are DNS-1123 labels, without dots), and users name it `hello@N` in
//! routes, canaries and the CLI. The same `hello.vN` is the version's function id in the router
//! and the pool manager, so its instances never mix with the function's own.

use serde::{Deserialize, Serialize};

use crate::function::FunctionSpec;
use crate::kind::Kind;
use crate::meta::Spec;
use crate::package::Archive;
use crate::validate::{self, ValidationError};

/// Versions a function keeps when its spec does not say (`spec.versionLimit`).
pub const DEFAULT_VERSION_LIMIT: u32 = 10;

/// The annotation on a Function naming its current version number.
pub const VERSION_ANNOTATION: &str = "kappa.dev/version";

/// The label on a FunctionVersion naming its function.
pub const VERSION_FUNCTION_LABEL: &str = "kappa.dev/function";

/// Desired (and only) state of a FunctionVersion: what the function was at that version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionVersionSpec {
    /// The function's name.
    pub function: String,
    /// The version number, from 1, never reused while the function exists.
    pub version: u32,
    /// The function's spec at this version.
    pub snapshot: FunctionSpec,
    /// The package's deployment archive at this version (literals are in the archive store,
    /// so this is an `archive://sha256/...` URL or an external URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Archive>,
    /// The package's source archive at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Archive>,
    /// The package's build command at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildcmd: Option<String>,
    /// What changed from the version before (`code`, `spec.env`, ...); `created` for version 1.
    #[serde(default)]
    pub changes: Vec<String>,
}

impl FunctionVersionSpec {
    /// The checksum of the code this version runs (deployment, else source), for listings.
    pub fn checksum(&self) -> Option<&str> {
        self.deployment
            .as_ref()
            .or(self.source.as_ref())
            .and_then(|a| a.checksum.as_ref().map(|c| c.sum.as_str()))
    }

    /// Whether `other` runs the same code with the same configuration (the package's resource
    /// version, which changes on every package write, is not compared).
    pub fn same_content(&self, other: &FunctionVersionSpec) -> bool {
        let strip = |s: &FunctionSpec| {
            let mut s = s.clone();
            s.package.packageref.resourceversion = None;
            s
        };
        strip(&self.snapshot) == strip(&other.snapshot) && self.same_code(other)
    }

    /// Whether both run the same code. A version recorded while its source was being built has
    /// no deployment yet: the build of the same source counts as the same code.
    fn same_code(&self, other: &FunctionVersionSpec) -> bool {
        let deployments = self.deployment == other.deployment
            || (self.source.is_some() && (self.deployment.is_none() || other.deployment.is_none()));
        deployments && self.source == other.source && self.buildcmd == other.buildcmd
    }

    /// The fields that differ between `before` and `self` (`code`, `spec.env`, ...).
    pub fn changes_from(&self, before: &FunctionVersionSpec) -> Vec<String> {
        let mut changes = Vec::new();
        if !self.same_code(before)
            || self.snapshot.package.packageref.name != before.snapshot.package.packageref.name
        {
            changes.push("code".to_string());
        }
        let (Ok(serde_json::Value::Object(now)), Ok(serde_json::Value::Object(then))) = (
            serde_json::to_value(&self.snapshot),
            serde_json::to_value(&before.snapshot),
        ) else {
            return changes;
        };
        let mut keys: Vec<&String> = now.keys().chain(then.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if key == "package" {
                let (mut a, mut b) = (
                    self.snapshot.package.clone(),
                    before.snapshot.package.clone(),
                );
                a.packageref.resourceversion = None;
                b.packageref.resourceversion = None;
                if a.function_name != b.function_name {
                    changes.push("spec.package.functionName".to_string());
                }
                continue;
            }
            if now.get(key) != then.get(key) {
                changes.push(format!("spec.{key}"));
            }
        }
        changes
    }
}

impl Spec for FunctionVersionSpec {
    const KIND: Kind = Kind::FunctionVersion;
    type Status = serde_json::Value;

    fn validate(&self) -> Result<(), ValidationError> {
        validate::dns1123_label("spec.function", &self.function)?;
        validate::in_range("spec.version", self.version, 1, u32::MAX)?;
        self.snapshot.validate()
    }
}

/// The stored name (and function id) of version `version` of `function`: `hello.v3`.
pub fn version_object_name(function: &str, version: u32) -> String {
    format!("{function}.v{version}")
}

/// The function and number of a version's stored name (`hello.v3`), if it is one.
pub fn parse_version_object_name(name: &str) -> Option<(&str, u32)> {
    let (function, number) = name.rsplit_once(".v")?;
    let version = parse_number(number)?;
    (!function.is_empty() && !function.contains('.')).then_some((function, version))
}

/// `hello@3` as (`hello`, 3); `None` for a plain name.
pub fn parse_version_ref(reference: &str) -> Option<(&str, u32)> {
    let (function, number) = reference.split_once('@')?;
    Some((function, parse_number(number)?))
}

fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

/// The function id a reference resolves to: `hello` → `hello`, `hello@3` → `hello.v3`.
pub fn function_ref_target(reference: &str) -> String {
    match parse_version_ref(reference) {
        Some((function, version)) => version_object_name(function, version),
        None => reference.to_string(),
    }
}

/// A reference to a function (`hello`) or to one of its versions (`hello@3`).
pub fn validate_function_ref(field: &str, reference: &str) -> Result<(), ValidationError> {
    match reference.split_once('@') {
        None => validate::dns1123_label(field, reference),
        Some((function, _)) => {
            validate::dns1123_label(field, function)?;
            if parse_version_ref(reference).is_none() {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{reference:?} is not a function version: expected NAME@N with N a version number from 1"
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// Which versions to collect so that at most `limit` remain: the oldest first, never the
/// current one nor any in `keep` (referenced by a route or a canary). `versions` need not be
/// sorted.
pub fn versions_to_collect(versions: &[u32], current: u32, keep: &[u32], limit: u32) -> Vec<u32> {
    let mut sorted: Vec<u32> = versions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let limit = limit.max(1) as usize;
    let mut excess = sorted.len().saturating_sub(limit);
    let mut collect = Vec::new();
    for v in sorted {
        if excess == 0 {
            break;
        }
        if v == current || keep.contains(&v) {
            continue;
        }
        collect.push(v);
        excess -= 1;
    }
    collect
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_references() {
        assert_eq!(version_object_name("hello", 3), "hello.v3");
        assert_eq!(parse_version_object_name("hello.v3"), Some(("hello", 3)));
        assert_eq!(parse_version_object_name("hello"), None);
        assert_eq!(parse_version_object_name("hello.v03"), None);
        assert_eq!(parse_version_ref("hello@12"), Some(("hello", 12)));
        assert_eq!(parse_version_ref("hello@0"), None);
        assert_eq!(parse_version_ref("hello@x"), None);
        assert_eq!(function_ref_target("hello@2"), "hello.v2");
        assert_eq!(function_ref_target("hello"), "hello");
        validate_function_ref("f", "hello@2").unwrap();
        validate_function_ref("f", "hello").unwrap();
        assert_eq!(validate_function_ref("f", "hello@").unwrap_err().field, "f");
        assert!(validate_function_ref("f", "Hello@2").is_err());
    }

    #[test]
    fn retention_keeps_current_referenced_and_newest() {
        // Limit 3 of 1..=5, current 5: collect 1 and 2.
        assert_eq!(versions_to_collect(&[1, 2, 3, 4, 5], 5, &[], 3), [1, 2]);
        // Version 1 is pinned by a route: 2 and 3 go instead.
        assert_eq!(versions_to_collect(&[5, 4, 3, 2, 1], 5, &[1], 3), [2, 3]);
        // Rolled back to 2: the current version is never collected.
        assert_eq!(versions_to_collect(&[1, 2, 3, 4, 5], 2, &[], 3), [1, 3]);
        // Everything kept is referenced: more than the limit remain.
        assert!(versions_to_collect(&[1, 2, 3], 3, &[1, 2], 1).is_empty());
        assert!(versions_to_collect(&[1, 2], 2, &[], 10).is_empty());
    }

    #[test]
    fn content_and_changes() {
        let f = FunctionSpec::new("python", "hello", "hello.main");
        let v1 = FunctionVersionSpec {
            function: "hello".into(),
            version: 1,
            snapshot: f.clone(),
            deployment: Some(Archive::stored(&"a".repeat(64), None)),
            source: None,
            buildcmd: None,
            changes: vec!["created".into()],
        };
        let mut v2 = v1.clone();
        v2.snapshot.package.packageref.resourceversion = Some("9".into());
        assert!(
            v2.same_content(&v1),
            "the package's resource version alone is no change"
        );
        v2.deployment = Some(Archive::stored(&"b".repeat(64), None));
        v2.snapshot.env.insert("A".into(), "1".into());
        assert!(!v2.same_content(&v1));
        assert_eq!(v2.changes_from(&v1), ["code", "spec.env"]);
        // Recorded while its source was being built, then built: the same code.
        let src = Some(Archive::stored(&"c".repeat(64), None));
        let (mut building, mut built) = (v1.clone(), v1.clone());
        building.source = src.clone();
        building.deployment = None;
        built.source = src;
        assert!(built.same_content(&building));
        built.source = Some(Archive::stored(&"d".repeat(64), None));
        assert!(!built.same_content(&building));
    }
}
