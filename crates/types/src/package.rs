//! Package: a function's code as source and/or deployment archives.

use serde::{Deserialize, Serialize};

use crate::function::NamedRef;
use crate::kind::Kind;
use crate::meta::Spec;
use crate::validate::{self, ValidationError};

/// Largest literal (inline, base64) archive: bigger ones are uploaded to the archive store.
pub const LITERAL_SIZE_LIMIT: usize = 256 * 1024;

/// Desired state of a Package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageSpec {
    pub environment: NamedRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Archive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Archive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildcmd: Option<String>,
}

/// How an archive is carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ArchiveType {
    /// Inline bytes (base64 in JSON), at most 256 KiB.
    #[default]
    Literal,
    /// A URL: `archive://sha256/<hex>` names the platform's archive store.
    Url,
}

/// An archive: a zip file or a single file, inline or by URL, with its checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Archive {
    #[serde(rename = "type", default)]
    pub kind: ArchiveType,
    /// Base64 of the bytes, for `literal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// For a single-file archive, the name the file is placed under (e.g. `hello.py`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A content checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Checksum {
    #[serde(rename = "type")]
    pub kind: String,
    pub sum: String,
}

/// The URL scheme of the platform's own content-addressed archive store.
pub const ARCHIVE_STORE_PREFIX: &str = "archive://sha256/";

impl Archive {
    /// An archive held by the platform's archive store under its sha256.
    pub fn stored(sha256: &str, filename: Option<String>) -> Self {
        Self {
            kind: ArchiveType::Url,
            literal: None,
            url: Some(format!("{ARCHIVE_STORE_PREFIX}{sha256}")),
            checksum: Some(Checksum {
                kind: "sha256".into(),
                sum: sha256.to_string(),
            }),
            filename,
        }
    }

    /// The sha256 of an archive in the platform's store, if this is one.
    pub fn stored_sha256(&self) -> Option<&str> {
        self.url.as_deref()?.strip_prefix(ARCHIVE_STORE_PREFIX)
    }

    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        match self.kind {
            ArchiveType::Literal => {
                let Some(literal) = &self.literal else {
                    return Err(ValidationError::new(
                        format!("{path}.literal"),
                        "must be set for a literal archive",
                    ));
                };
                // base64 is 4/3 of the bytes.
                if literal.len() > LITERAL_SIZE_LIMIT / 3 * 4 + 4 {
                    return Err(ValidationError::new(
                        format!("{path}.literal"),
                        "is larger than 256 KiB: upload it to the archive store and use a url",
                    ));
                }
            }
            ArchiveType::Url => {
                let url = self.url.as_deref().unwrap_or_default();
                if let Some(sum) = url.strip_prefix(ARCHIVE_STORE_PREFIX) {
                    if !is_sha256_hex(sum) {
                        return Err(ValidationError::new(
                            format!("{path}.url"),
                            "expected archive://sha256/ followed by 64 lowercase hex digits",
                        ));
                    }
                } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ValidationError::new(
                        format!("{path}.url"),
                        format!(
                            "{url:?} is not supported: expected archive://sha256/<hex> or an http(s) URL"
                        ),
                    ));
                }
            }
        }
        if let Some(c) = &self.checksum {
            if c.kind != "sha256" {
                return Err(ValidationError::new(
                    format!("{path}.checksum.type"),
                    format!("{:?} is not supported: expected \"sha256\"", c.kind),
                ));
            }
            if !is_sha256_hex(&c.sum) {
                return Err(ValidationError::new(
                    format!("{path}.checksum.sum"),
                    "expected 64 lowercase hex digits",
                ));
            }
        }
        if let Some(name) = &self.filename {
            let ok = !name.is_empty()
                && name.len() <= 255
                && name != "."
                && name != ".."
                && !name.contains('/')
                && !name.contains('\\')
                && !name.contains('\0');
            if !ok {
                return Err(ValidationError::new(
                    format!("{path}.filename"),
                    format!(
                        "{name:?} is not a plain file name: expected no path separators and not \"..\""
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where a package's build stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Nothing to build: the deployment archive is the code.
    None,
}

/// Observed state of a Package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PackageStatus {
    #[serde(default)]
    pub buildstatus: BuildStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub buildlog: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_timestamp: Option<String>,
}

impl Spec for PackageSpec {
    const KIND: Kind = Kind::Package;
    type Status = PackageStatus;

    fn validate(&self) -> Result<(), ValidationError> {
        self.environment.validate("spec.environment")?;
        if self.source.is_none() && self.deployment.is_none() {
            return Err(ValidationError::new(
                "spec.deployment",
                "expected a deployment or a source archive",
            ));
        }
        if let Some(source) = &self.source {
            source.validate("spec.source")?;
        }
        if let Some(deployment) = &self.deployment {
            deployment.validate("spec.deployment")?;
        }
        if let Some(cmd) = &self.buildcmd {
            validate::non_empty("spec.buildcmd", cmd)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_archive_round_trip() {
        let sum = "a".repeat(64);
        let a = Archive::stored(&sum, Some("hello.py".into()));
        assert_eq!(a.stored_sha256(), Some(sum.as_str()));
        a.validate("spec.deployment").unwrap();
    }

    #[test]
    fn bad_archives_are_named() {
        let a = Archive {
            kind: ArchiveType::Url,
            url: Some("file:///etc/passwd".into()),
            ..Archive::default()
        };
        assert_eq!(
            a.validate("spec.deployment").unwrap_err().field,
            "spec.deployment.url"
        );
        let a = Archive {
            filename: Some("../x".into()),
            ..Archive::stored(&"b".repeat(64), None)
        };
        assert_eq!(
            a.validate("spec.deployment").unwrap_err().field,
            "spec.deployment.filename"
        );
    }
}
