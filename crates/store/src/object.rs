//! The write semantics both stores share: how an object is keyed, how preconditions are checked
//! and how metadata is stamped. Everything here is pure (no IO, no locks): a store reads the
//! stored object under its own transaction, calls [`apply`] with the next resource version and,
//! only when that succeeds, writes the result and the event it returns. A failed [`apply`]
//! therefore changes nothing: no version bump, no event.
//!
//! Rules (identical for [`crate::MemoryStore`] and [`crate::RedbStore`]):
//! - The key is `(kind, metadata.namespace, metadata.name)`; a missing or `null` namespace means
//!   [`kappa_types::DEFAULT_NAMESPACE`] and is written back into the stored JSON, as is the
//!   canonical `kind` name.
//! - Every successful write gets the next global resource version, written to
//!   `metadata.resourceVersion` as a decimal string.
//! - Create stamps `metadata.uid` (a new UUID v4), `metadata.creationTimestamp` (RFC 3339, UTC,
//!   seconds) and `metadata.generation = 1`, ignoring whatever the client sent for them, and keeps
//!   the `status` it was given.
//! - Update keeps `uid`, `creationTimestamp` and `status` from the stored object and increments
//!   `generation` only when `spec` changed. A `metadata.resourceVersion` in the value is ignored:
//!   optimistic concurrency is the explicit [`Precondition::ResourceVersion`].
//! - `put_status` replaces only `status` (and the resource version); `generation` never changes.
//! - Delete removes the object; its event and return value are the last state with the
//!   deletion's resource version.

use std::str::FromStr;

use kappa_types::{DEFAULT_NAMESPACE, Kind};
use serde_json::{Map, Value};

use crate::{EventType, Precondition, StoreError, StoredObject, WatchEvent};

/// Where an object lives: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjectKey {
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl ObjectKey {
    pub(crate) fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn not_found(&self) -> StoreError {
        StoreError::NotFound {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    fn already_exists(&self) -> StoreError {
        StoreError::AlreadyExists {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// One write, before it is applied.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Create or replace with this (already keyed and normalised, see [`normalise`]) object.
    Put { value: Value },
    /// Replace the status of the existing object.
    Status { status: Value },
    /// Remove the object.
    Delete,
}

/// Reads and checks the key of `value`, returning it with the JSON normalised: `kind` spelled
/// canonically and `metadata.namespace` filled in.
pub(crate) fn normalise(mut value: Value) -> Result<(ObjectKey, Value), StoreError> {
    let object = value
        .as_object_mut()
        .ok_or_else(|| StoreError::Invalid("the object must be a JSON object".to_string()))?;
    let kind = match object.get("kind") {
        Some(Value::String(kind)) => {
            Kind::from_str(kind).map_err(|e| StoreError::Invalid(format!("kind: {e}")))?
        }
        Some(_) => return Err(StoreError::Invalid("kind: must be a string".to_string())),
        None => return Err(StoreError::Invalid("kind: missing".to_string())),
    };
    object.insert("kind".to_string(), Value::String(kind.as_str().to_string()));
    let metadata = match object.get_mut("metadata") {
        Some(Value::Object(metadata)) => metadata,
        Some(_) => {
            return Err(StoreError::Invalid(
                "metadata: must be an object".to_string(),
            ));
        }
        None => return Err(StoreError::Invalid("metadata.name: missing".to_string())),
    };
    let name = match metadata.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) => {
            return Err(StoreError::Invalid(
                "metadata.name: must not be empty".to_string(),
            ));
        }
        Some(_) => {
            return Err(StoreError::Invalid(
                "metadata.name: must be a string".to_string(),
            ));
        }
        None => return Err(StoreError::Invalid("metadata.name: missing".to_string())),
    };
    let namespace = match metadata.get("namespace") {
        None | Some(Value::Null) => DEFAULT_NAMESPACE.to_string(),
        Some(Value::String(namespace)) if !namespace.is_empty() => namespace.clone(),
        Some(Value::String(_)) => {
            return Err(StoreError::Invalid(
                "metadata.namespace: must not be empty".to_string(),
            ));
        }
        Some(_) => {
            return Err(StoreError::Invalid(
                "metadata.namespace: must be a string".to_string(),
            ));
        }
    };
    metadata.insert("namespace".to_string(), Value::String(namespace.clone()));
    Ok((
        ObjectKey {
            kind,
            namespace,
            name,
        },
        value,
    ))
}

/// Checks `precondition` against what is stored.
pub(crate) fn check(
    key: &ObjectKey,
    existing: Option<&StoredObject>,
    precondition: Precondition,
) -> Result<(), StoreError> {
    match (precondition, existing) {
        (Precondition::None, _) => Ok(()),
        (Precondition::MustNotExist, Some(_)) => Err(key.already_exists()),
        (Precondition::MustNotExist, None) => Ok(()),
        (Precondition::MustExist | Precondition::ResourceVersion(_), None) => Err(key.not_found()),
        (Precondition::MustExist, Some(_)) => Ok(()),
        (Precondition::ResourceVersion(expected), Some(stored))
            if stored.resource_version == expected =>
        {
            Ok(())
        }
        (Precondition::ResourceVersion(expected), Some(stored)) => Err(StoreError::Conflict {
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            expected,
            actual: stored.resource_version,
        }),
    }
}

/// Applies `change` to the object stored under `key` (if any) as the write with resource version
/// `version`, returning the event to record. For `Added`/`Modified` the event's object is the new
/// stored state; for `Deleted` the key must be removed. Errors leave the store untouched.
pub(crate) fn apply(
    key: &ObjectKey,
    existing: Option<&StoredObject>,
    change: Change,
    precondition: Precondition,
    version: u64,
) -> Result<WatchEvent, StoreError> {
    check(key, existing, precondition)?;
    let (event_type, mut value) = match (change, existing) {
        (Change::Put { value }, None) => (EventType::Added, stamp_created(value)?),
        (Change::Put { value }, Some(stored)) => {
            (EventType::Modified, stamp_updated(value, &stored.value)?)
        }
        (Change::Status { .. } | Change::Delete, None) => return Err(key.not_found()),
        (Change::Status { status }, Some(stored)) => {
            let mut value = stored.value.clone();
            object_mut(&mut value)?.insert("status".to_string(), status);
            (EventType::Modified, value)
        }
        (Change::Delete, Some(stored)) => (EventType::Deleted, stored.value.clone()),
    };
    metadata_mut(&mut value)?.insert(
        "resourceVersion".to_string(),
        Value::String(version.to_string()),
    );
    Ok(WatchEvent {
        event_type,
        object: StoredObject {
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            resource_version: version,
            value,
        },
    })
}

fn stamp_created(mut value: Value) -> Result<Value, StoreError> {
    let metadata = metadata_mut(&mut value)?;
    metadata.insert(
        "uid".to_string(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    metadata.insert(
        "creationTimestamp".to_string(),
        Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    metadata.insert("generation".to_string(), Value::from(1));
    Ok(value)
}

fn stamp_updated(mut value: Value, stored: &Value) -> Result<Value, StoreError> {
    let spec_changed = value.get("spec") != stored.get("spec");
    let stored_meta = stored.get("metadata");
    let stored_generation = stored_meta
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let object = object_mut(&mut value)?;
    match stored.get("status") {
        Some(status) => object.insert("status".to_string(), status.clone()),
        None => object.remove("status"),
    };
    let metadata = metadata_mut(&mut value)?;
    for field in ["uid", "creationTimestamp"] {
        match stored_meta.and_then(|m| m.get(field)) {
            Some(kept) => metadata.insert(field.to_string(), kept.clone()),
            None => metadata.remove(field),
        };
    }
    let generation = if spec_changed {
        stored_generation.saturating_add(1)
    } else {
        stored_generation
    };
    metadata.insert("generation".to_string(), Value::from(generation));
    Ok(value)
}

fn object_mut(value: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    value
        .as_object_mut()
        .ok_or_else(|| StoreError::Invalid("the object must be a JSON object".to_string()))
}

fn metadata_mut(value: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    object_mut(value)?
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Invalid("metadata: must be an object".to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn function(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "kappa.dev/v1", "kind": "Function", "metadata": {"name": name}, "spec": spec})
    }

    fn create(value: Value, version: u64) -> StoredObject {
        let (key, value) = normalise(value).expect("valid");
        apply(
            &key,
            None,
            Change::Put { value },
            Precondition::None,
            version,
        )
        .expect("create")
        .object
    }

    #[test]
    fn normalise_fills_namespace_and_canonical_kind() {
        let (key, value) =
            normalise(json!({"kind": "functions", "metadata": {"name": "a"}})).expect("valid");
        assert_eq!(key, ObjectKey::new(Kind::Function, "default", "a"));
        assert_eq!(value["kind"], "Function");
        assert_eq!(value["metadata"]["namespace"], "default");
    }

    #[test]
    fn normalise_names_the_bad_field() {
        let cases = [
            (json!([]), "the object must be a JSON object"),
            (json!({"metadata": {"name": "a"}}), "kind: missing"),
            (
                json!({"kind": 3, "metadata": {"name": "a"}}),
                "kind: must be a string",
            ),
            (
                json!({"kind": "Nope", "metadata": {"name": "a"}}),
                "kind: unknown kind \"Nope\"",
            ),
            (json!({"kind": "Function"}), "metadata.name: missing"),
            (
                json!({"kind": "Function", "metadata": []}),
                "metadata: must be an object",
            ),
            (
                json!({"kind": "Function", "metadata": {}}),
                "metadata.name: missing",
            ),
            (
                json!({"kind": "Function", "metadata": {"name": ""}}),
                "metadata.name: must not be empty",
            ),
            (
                json!({"kind": "Function", "metadata": {"name": 1}}),
                "metadata.name: must be a string",
            ),
            (
                json!({"kind": "Function", "metadata": {"name": "a", "namespace": ""}}),
                "metadata.namespace: must not be empty",
            ),
            (
                json!({"kind": "Function", "metadata": {"name": "a", "namespace": 2}}),
                "metadata.namespace: must be a string",
            ),
        ];
        for (value, message) in cases {
            assert_eq!(
                normalise(value).err(),
                Some(StoreError::Invalid(message.to_string()))
            );
        }
    }

    #[test]
    fn create_stamps_metadata_and_ignores_client_values() {
        let mut value = function("a", json!({"x": 1}));
        value["metadata"]["uid"] = json!("client");
        value["metadata"]["generation"] = json!(7);
        value["status"] = json!({"s": 1});
        let stored = create(value, 5);
        let meta = &stored.value["metadata"];
        assert_ne!(meta["uid"], "client");
        assert!(uuid::Uuid::parse_str(meta["uid"].as_str().expect("uid")).is_ok());
        assert!(
            chrono::DateTime::parse_from_rfc3339(meta["creationTimestamp"].as_str().expect("ts"))
                .is_ok()
        );
        assert_eq!(meta["generation"], 1);
        assert_eq!(meta["resourceVersion"], "5");
        assert_eq!(stored.resource_version, 5);
        assert_eq!(stored.value["status"], json!({"s": 1}));
    }

    #[test]
    fn update_keeps_identity_and_status_and_bumps_generation_on_spec_change_only() {
        let stored = create(function("a", json!({"x": 1})), 1);
        let mut stored = apply(
            &ObjectKey::new(Kind::Function, "default", "a"),
            Some(&stored),
            Change::Status {
                status: json!({"ready": true}),
            },
            Precondition::MustExist,
            2,
        )
        .expect("status")
        .object;
        assert_eq!(stored.value["metadata"]["generation"], 1);
        let key = ObjectKey::new(Kind::Function, "default", "a");
        for (version, spec, generation) in [
            (3, json!({"x": 1}), 1),
            (4, json!({"x": 2}), 2),
            (5, json!({"x": 2}), 2),
        ] {
            let (_, mut value) = normalise(function("a", spec)).expect("valid");
            value["status"] = json!({"ignored": true});
            let event = apply(
                &key,
                Some(&stored),
                Change::Put { value },
                Precondition::None,
                version,
            )
            .expect("update");
            assert_eq!(event.event_type, EventType::Modified);
            let new = event.object;
            assert_eq!(
                new.value["metadata"]["uid"],
                stored.value["metadata"]["uid"]
            );
            assert_eq!(
                new.value["metadata"]["creationTimestamp"],
                stored.value["metadata"]["creationTimestamp"]
            );
            assert_eq!(new.value["metadata"]["generation"], generation);
            assert_eq!(new.value["status"], json!({"ready": true}));
            assert_eq!(
                new.value["metadata"]["resourceVersion"],
                version.to_string()
            );
            stored = new;
        }
    }

    #[test]
    fn preconditions() {
        let key = ObjectKey::new(Kind::Function, "default", "a");
        let stored = create(function("a", json!({})), 3);
        assert_eq!(check(&key, None, Precondition::None), Ok(()));
        assert_eq!(check(&key, Some(&stored), Precondition::None), Ok(()));
        assert_eq!(check(&key, None, Precondition::MustNotExist), Ok(()));
        assert!(matches!(
            check(&key, Some(&stored), Precondition::MustNotExist),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert!(matches!(
            check(&key, None, Precondition::MustExist),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(check(&key, Some(&stored), Precondition::MustExist), Ok(()));
        assert!(matches!(
            check(&key, None, Precondition::ResourceVersion(3)),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(
            check(&key, Some(&stored), Precondition::ResourceVersion(3)),
            Ok(())
        );
        assert_eq!(
            check(&key, Some(&stored), Precondition::ResourceVersion(2)),
            Err(StoreError::Conflict {
                kind: Kind::Function,
                namespace: "default".to_string(),
                name: "a".to_string(),
                expected: 2,
                actual: 3,
            })
        );
    }

    #[test]
    fn delete_and_status_need_the_object() {
        let key = ObjectKey::new(Kind::Function, "default", "a");
        for change in [Change::Delete, Change::Status { status: json!({}) }] {
            assert!(matches!(
                apply(&key, None, change, Precondition::None, 1),
                Err(StoreError::NotFound { .. })
            ));
        }
    }

    #[test]
    fn delete_event_carries_last_state_at_the_deletion_version() {
        let key = ObjectKey::new(Kind::Function, "default", "a");
        let stored = create(function("a", json!({"x": 1})), 1);
        let event =
            apply(&key, Some(&stored), Change::Delete, Precondition::None, 9).expect("delete");
        assert_eq!(event.event_type, EventType::Deleted);
        assert_eq!(event.object.resource_version, 9);
        assert_eq!(event.object.value["metadata"]["resourceVersion"], "9");
        assert_eq!(event.object.value["spec"], json!({"x": 1}));
    }
}
