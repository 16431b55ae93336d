//! The runtime's specialize call (Fission's `v2` protocol): `POST /v2/specialize` with
//! `{"filepath", "functionName", "env"}`, answered 2xx, or an error body this module reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The runtime's specialize route.
pub const SPECIALIZE_PATH: &str = "/v2/specialize";

/// The body of `POST /v2/specialize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecializeBody {
    /// Where the code is, as the runtime sees it (a directory or one file).
    pub filepath: String,
    /// The entrypoint (`module.function`, ...).
    pub function_name: String,
    /// Environment variables the function gets.
    pub env: BTreeMap<String, String>,
}

impl SpecializeBody {
    /// The body for code at `filepath`.
    pub fn new(
        filepath: &std::path::Path,
        entrypoint: &str,
        env: &BTreeMap<String, String>,
    ) -> Self {
        Self {
            filepath: filepath.to_string_lossy().into_owned(),
            function_name: entrypoint.to_string(),
            env: env.clone(),
        }
    }
}

/// The message and detail of a runtime's (or a fetcher's) error body: Kappa's
/// `{"error":{"message","traceback"|"detail"}}`, `{"message"}` and `{"traceback"}` at the top
/// level, `{"error":"..."}`, or else the raw body (cut to 4 KiB).
pub fn runtime_error(status: u16, body: &[u8]) -> (String, Option<String>) {
    const MAX_RAW: usize = 4096;
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = value
            .get("error")
            .filter(|e| e.is_object())
            .unwrap_or(&value);
        let text = |key: &str| error.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        if let Some(message) = text("message").or_else(|| {
            value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
        }) {
            return (message, text("traceback").or_else(|| text("detail")));
        }
    }
    let raw = String::from_utf8_lossy(body);
    let raw = raw.trim();
    if raw.is_empty() {
        return (
            format!("the runtime refused the specialization with status {status}"),
            None,
        );
    }
    let mut end = raw.len().min(MAX_RAW);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    (raw[..end].to_owned(), None)
}

/// The stable code of an error body (`{"error":{"code"}}`), when it has one.
pub fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specialize_errors_use_message_and_traceback() {
        let body = br#"{"error":{"code":"import_error","message":"No module named 'x'","traceback":"Traceback ..."}}"#;
        assert_eq!(
            runtime_error(500, body),
            ("No module named 'x'".into(), Some("Traceback ...".into()))
        );
        assert_eq!(error_code(body).as_deref(), Some("import_error"));
        assert_eq!(
            runtime_error(400, b"{\"message\":\"bad\"}"),
            ("bad".into(), None)
        );
        assert_eq!(
            runtime_error(400, b"{\"error\":\"plain\"}"),
            ("plain".into(), None)
        );
        assert_eq!(runtime_error(502, b"  oops \n"), ("oops".into(), None));
        assert!(runtime_error(500, b"").0.contains("500"));
        assert_eq!(error_code(b"oops"), None);
    }

    #[test]
    fn the_body_has_fissions_field_names() {
        let body = SpecializeBody::new(
            std::path::Path::new("/userfunc/deployarchive"),
            "main.main",
            &BTreeMap::from([("A".to_string(), "1".to_string())]),
        );
        assert_eq!(
            serde_json::to_value(&body).unwrap_or_default(),
            serde_json::json!({
                "filepath": "/userfunc/deployarchive",
                "functionName": "main.main",
                "env": {"A": "1"},
            })
        );
    }
}
