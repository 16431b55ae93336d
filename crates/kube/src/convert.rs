//! Conversions between Kappa's resource JSON (what the store trait speaks) and the Kubernetes
//! objects that hold it: the `kappa.dev/v1` custom resources (same shape, metadata trimmed to
//! Kappa's subset) and the native `v1` Secrets and ConfigMaps (`spec.data` ↔ `data`).

use kappa_store::{StoreError, StoredObject};
use kappa_types::{DEFAULT_NAMESPACE, Kind};
use kube::api::{ApiResource, DynamicObject};
use serde_json::{Map, Value, json};

use crate::crd::{GROUP, VERSION};

/// Label put on the Secrets and ConfigMaps Kappa writes; the store lists and watches only
/// those (a cluster's other Secrets are none of its business). `get` reads any by name.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "kappa";

/// The metadata fields Kappa's `ObjectMeta` has; the rest (managedFields, ownerReferences...)
/// stays in the cluster.
const KAPPA_META_FIELDS: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "labels",
    "annotations",
];

/// The Kubernetes API resource a kind is stored as.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Secret => ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
        Kind::ConfigMap => ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        _ => ApiResource {
            group: GROUP.to_string(),
            version: VERSION.to_string(),
            api_version: format!("{GROUP}/{VERSION}"),
            kind: kind.as_str().to_string(),
            plural: kind.plural().to_string(),
        },
    }
}

/// Whether the kind is a native Kubernetes object (no `spec`, no status subresource).
pub fn is_native(kind: Kind) -> bool {
    matches!(kind, Kind::Secret | Kind::ConfigMap)
}

/// Parses Kubernetes' `resourceVersion` as a number.
///
/// Kubernetes documents resource versions as opaque strings; every API server backed by etcd
/// (all of them in practice) uses etcd's numeric revision, which is what Kappa's store trait
/// needs (a global, monotonic `u64`). A non-numeric version fails loudly rather than being
/// compared wrongly.
pub fn parse_rv(rv: Option<&str>, what: &str) -> Result<u64, StoreError> {
    let rv = rv.ok_or_else(|| StoreError::Backend(format!("{what} has no resourceVersion")))?;
    rv.parse().map_err(|_| {
        StoreError::Backend(format!(
            "{what} has resourceVersion {rv:?}, which is not a number: the Kubernetes store needs an etcd-backed API server (numeric revisions)"
        ))
    })
}

/// Kind, namespace and name of a Kappa resource JSON, checked with the same rules and messages
/// as the other stores (`kappa-store`'s keying): a JSON object, a known `kind`, a non-empty
/// string `metadata.name`, and a `metadata.namespace` that is absent, `null` (the default
/// namespace) or a non-empty string.
pub fn key_of(value: &Value) -> Result<(Kind, String, String), StoreError> {
    let invalid = |message: &str| StoreError::Invalid(message.to_string());
    let object = value
        .as_object()
        .ok_or_else(|| invalid("the object must be a JSON object"))?;
    let kind: Kind = match object.get("kind") {
        Some(Value::String(kind)) => kind
            .parse()
            .map_err(|e| StoreError::Invalid(format!("kind: {e}")))?,
        Some(_) => return Err(invalid("kind: must be a string")),
        None => return Err(invalid("kind: missing")),
    };
    let meta = match object.get("metadata") {
        Some(Value::Object(meta)) => meta,
        Some(_) => return Err(invalid("metadata: must be an object")),
        None => return Err(invalid("metadata.name: missing")),
    };
    let name = match meta.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        Some(Value::String(_)) => return Err(invalid("metadata.name: must not be empty")),
        Some(_) => return Err(invalid("metadata.name: must be a string")),
        None => return Err(invalid("metadata.name: missing")),
    };
    let namespace = match meta.get("namespace") {
        None | Some(Value::Null) => DEFAULT_NAMESPACE,
        Some(Value::String(ns)) if !ns.is_empty() => ns,
        Some(Value::String(_)) => return Err(invalid("metadata.namespace: must not be empty")),
        Some(_) => return Err(invalid("metadata.namespace: must be a string")),
    };
    Ok((kind, namespace.to_string(), name.to_string()))
}

fn kappa_meta(meta: Option<&Value>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(Value::Object(meta)) = meta {
        for field in KAPPA_META_FIELDS {
            if let Some(v) = meta.get(field)
                && !v.is_null()
            {
                out.insert(field.to_string(), v.clone());
            }
        }
    }
    out
}

/// The Kubernetes object for a Kappa resource JSON (without `status` for CRDs: status goes
/// through the status subresource). `resource_version` is set as the write's precondition.
pub fn to_kube(
    kind: Kind,
    value: &Value,
    resource_version: Option<u64>,
) -> Result<DynamicObject, StoreError> {
    let mut meta = kappa_meta(value.get("metadata"));
    for field in ["uid", "generation", "creationTimestamp", "resourceVersion"] {
        meta.remove(field);
    }
    if let Some(rv) = resource_version {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    let object = if is_native(kind) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(labels) = labels {
            labels.insert(MANAGED_BY_LABEL.into(), Value::String(MANAGED_BY.into()));
        }
        let mut object = json!({
            "apiVersion": "v1",
            "kind": kind.as_str(),
            "metadata": meta,
        });
        if kind == Kind::Secret {
            object["type"] = json!("Opaque");
        }
        for field in ["data", "stringData"] {
            if let Some(v) = spec.get(field)
                && v.as_object().is_some_and(|m| !m.is_empty())
            {
                object[field] = v.clone();
            }
        }
        object
    } else {
        json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": kind.as_str(),
            "metadata": meta,
            "spec": spec,
        })
    };
    serde_json::from_value(object)
        .map_err(|e| StoreError::Invalid(format!("{kind} is not a Kubernetes object: {e}")))
}

/// Whether Kubernetes is deleting the object: it carries `metadata.deletionTimestamp` and
/// waits for its finalizers. To the rest of the platform such an object is already deleted.
pub fn is_terminating(object: &DynamicObject) -> bool {
    object.metadata.deletion_timestamp.is_some()
}

/// Copies the metadata Kubernetes and other controllers own, which Kappa's resource JSON does
/// not carry (see [`to_kube`]), from the object as it is now into a replacement, so that a
/// `PUT` keeps it: `finalizers` (dropping them would skip their cleanup) and
/// `ownerReferences` (dropping them would orphan the object). `managedFields` is left out: the
/// API server keeps the live ones when a replacement carries none.
pub fn keep_cluster_metadata(replacement: &mut DynamicObject, current: &DynamicObject) {
    replacement
        .metadata
        .finalizers
        .clone_from(&current.metadata.finalizers);
    replacement
        .metadata
        .owner_references
        .clone_from(&current.metadata.owner_references);
}

/// The Kappa resource JSON of a Kubernetes object.
pub fn from_kube(kind: Kind, object: &DynamicObject) -> Result<StoredObject, StoreError> {
    let raw = serde_json::to_value(object)
        .map_err(|e| StoreError::Backend(format!("{kind} from Kubernetes: {e}")))?;
    let mut meta = kappa_meta(raw.get("metadata"));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    meta.insert("namespace".into(), Value::String(namespace.clone()));
    if is_native(kind)
        && let Some(Value::Object(labels)) = meta.get_mut("labels")
    {
        labels.remove(MANAGED_BY_LABEL);
        if labels.is_empty() {
            meta.remove("labels");
        }
    }
    let what = format!("{kind} {namespace}/{name}");
    let resource_version = parse_rv(meta.get("resourceVersion").and_then(Value::as_str), &what)?;
    let mut value = json!({
        "apiVersion": kappa_types::API_VERSION,
        "kind": kind.as_str(),
        "metadata": meta,
    });
    if is_native(kind) {
        let mut spec = Map::new();
        if let Some(data) = raw.get("data").filter(|d| !d.is_null()) {
            spec.insert("data".into(), data.clone());
        }
        value["spec"] = Value::Object(spec);
    } else {
        value["spec"] = raw.get("spec").cloned().unwrap_or_else(|| json!({}));
        if let Some(status) = raw.get("status").filter(|s| !s.is_null()) {
            value["status"] = status.clone();
        }
    }
    Ok(StoredObject {
        kind,
        namespace,
        name,
        resource_version,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_objects_round_trip_with_kappa_metadata_only() {
        let value = json!({
            "apiVersion": "kappa.dev/v1", "kind": "Function",
            "metadata": {"name": "hello", "namespace": "team", "resourceVersion": "7", "uid": "u"},
            "spec": {"environment": {"name": "python"}},
            "status": {"lastError": "boom"},
        });
        let object = to_kube(Kind::Function, &value, Some(7)).unwrap();
        let wire = serde_json::to_value(&object).unwrap();
        assert_eq!(wire["metadata"]["resourceVersion"], "7");
        assert!(wire["metadata"].get("uid").is_none());
        assert!(wire.get("status").is_none(), "status goes through /status");

        let mut back = object.clone();
        back.metadata.resource_version = Some("12".into());
        back.metadata.managed_fields = Some(vec![Default::default()]);
        back.data["status"] = json!({"lastError": "boom"});
        let stored = from_kube(Kind::Function, &back).unwrap();
        assert_eq!(stored.resource_version, 12);
        assert_eq!(stored.namespace, "team");
        assert!(stored.value["metadata"].get("managedFields").is_none());
        assert_eq!(stored.value["status"]["lastError"], "boom");
        assert_eq!(stored.value["apiVersion"], "kappa.dev/v1");
    }

    #[test]
    fn secrets_are_native_objects() {
        let value = json!({
            "apiVersion": "kappa.dev/v1", "kind": "Secret",
            "metadata": {"name": "db"},
            "spec": {"data": {"password": "aHVudGVyMg=="}},
        });
        let object = to_kube(Kind::Secret, &value, None).unwrap();
        let wire = serde_json::to_value(&object).unwrap();
        assert_eq!(wire["apiVersion"], "v1");
        assert_eq!(wire["type"], "Opaque");
        assert_eq!(wire["data"]["password"], "aHVudGVyMg==");
        assert_eq!(wire["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        let mut back = object;
        back.metadata.resource_version = Some("3".into());
        let stored = from_kube(Kind::Secret, &back).unwrap();
        assert_eq!(stored.value["spec"]["data"]["password"], "aHVudGVyMg==");
        assert!(stored.value["metadata"].get("labels").is_none());
    }

    #[test]
    fn replacements_keep_finalizers_and_owner_references() {
        let value = json!({
            "apiVersion": "kappa.dev/v1", "kind": "Function",
            "metadata": {"name": "hello", "labels": {"team": "a"}},
            "spec": {"environment": {"name": "python"}},
        });
        let mut replacement = to_kube(Kind::Function, &value, Some(7)).unwrap();
        let current: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kappa.dev/v1", "kind": "Function",
            "metadata": {
                "name": "hello", "namespace": "default", "resourceVersion": "7",
                "finalizers": ["kappa.dev/instances", "example.com/other"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                     "uid": "u-9"}],
                "labels": {"team": "old"},
            },
            "spec": {},
        }))
        .unwrap();
        assert!(!is_terminating(&current));
        keep_cluster_metadata(&mut replacement, &current);
        let wire = serde_json::to_value(&replacement).unwrap();
        assert_eq!(
            wire["metadata"]["finalizers"],
            json!(["kappa.dev/instances", "example.com/other"])
        );
        assert_eq!(wire["metadata"]["ownerReferences"][0]["name"], "owner");
        assert_eq!(
            wire["metadata"]["labels"]["team"], "a",
            "Kappa's own fields win"
        );
        assert_eq!(wire["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn non_numeric_resource_versions_fail_clearly() {
        let err = parse_rv(Some("abc"), "Function default/x").unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
    }
}
