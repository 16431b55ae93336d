//! Secret values never leave the API: every response and watch event that carries a Secret
//! goes through [`redact`] first, which replaces each value with [`REDACTED`] (keys stay
//! visible) and reports each value's size in `status.dataBytes`. The executor reads the real
//! values from the store itself; the API never returns them.
//!
//! On replace, a value still equal to [`REDACTED`] means "keep the stored value" (see
//! `Admit for SecretSpec`), so a client may send back what it read and change only some keys.

use base64::Engine as _;
use serde_json::{Map, Value};

/// What a secret value is replaced with. Not valid base64, so it can never be a real value.
pub(crate) const REDACTED: &str = "<redacted>";

/// Redacts `object` in place when it is a Secret; leaves every other kind unchanged.
pub(crate) fn redact(object: &mut Value) {
    if object.get("kind").and_then(Value::as_str) != Some("Secret") {
        return;
    }
    let mut sizes = Map::new();
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        for (field, encoded) in [("data", true), ("stringData", false)] {
            let Some(entries) = spec.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            for (key, value) in entries.iter_mut() {
                let size = match value.as_str() {
                    Some(text) if encoded => decoded_len(text),
                    Some(text) => Some(text.len()),
                    None => None,
                };
                if let Some(size) = size {
                    sizes.insert(key.clone(), Value::from(size));
                }
                *value = Value::String(REDACTED.to_string());
            }
        }
    }
    if let Some(obj) = object.as_object_mut() {
        let mut status = Map::new();
        status.insert("dataBytes".into(), Value::Object(sizes));
        obj.insert("status".into(), Value::Object(status));
    }
}

/// Redacts every Secret among `items`.
pub(crate) fn redact_all(items: &mut [Value]) {
    items.iter_mut().for_each(redact);
}

fn decoded_len(text: &str) -> Option<usize> {
    crate::admit::BASE64
        .decode(text.trim())
        .ok()
        .map(|b| b.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_keep_keys_and_sizes_but_lose_values() {
        let mut secret = json!({
            "kind": "Secret",
            "metadata": {"name": "db"},
            "spec": {"data": {"password": "aHVudGVyMg=="}, "stringData": {"user": "admin"}},
        });
        redact(&mut secret);
        let text = secret.to_string();
        assert!(!text.contains("aHVudGVyMg"), "{text}");
        assert!(!text.contains("admin"), "{text}");
        assert_eq!(secret["spec"]["data"]["password"], REDACTED);
        assert_eq!(secret["spec"]["stringData"]["user"], REDACTED);
        assert_eq!(secret["status"]["dataBytes"]["password"], 7);
        assert_eq!(secret["status"]["dataBytes"]["user"], 5);

        let config = json!({"kind": "ConfigMap", "spec": {"data": {"a": "b"}}});
        let mut same = config.clone();
        redact(&mut same);
        assert_eq!(same, config);
    }
}
