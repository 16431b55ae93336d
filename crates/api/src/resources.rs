//! `/v1/{plural}`: create, read, replace, delete and list resources, and write their status.
//!
//! Every write goes through the same steps: parse (JSON or YAML, unknown fields refused),
//! settle the namespace, validate, then — holding the write lock — the kind's referential
//! checks and rewrites ([`Admit`]), and only then the store write. A request that fails any
//! step writes nothing. Every response carrying a Secret is redacted ([`redact`]).

use axum::Json;
use axum::Router;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use kappa_store::{Precondition, StoreError, StoredObject};
use kappa_types::{
    API_VERSION, CanaryConfigSpec, ConfigMapSpec, EnvironmentSpec, FunctionSpec,
    FunctionVersionSpec, HttpTriggerSpec, Kind, MessageQueueTriggerSpec, PackageSpec, Resource,
    SecretSpec, Spec, TimeTriggerSpec,
};
use serde_json::{Value, json};

use crate::admit::{Admit, Admitted};
use crate::error::ApiError;
use crate::extract::{
    Params, body_bytes, body_object, default_reference_namespaces, path_name, settle_namespace,
    typed,
};
use crate::redact::{redact, redact_all};
use crate::state::ApiState;

/// Adds the routes of every kind to `router`. Each kind gets its own concrete routes
/// (`/v1/functions/{name}`) rather than one `/v1/{plural}` pattern, so unknown plurals are
/// plain 404s and metrics are labelled per kind.
pub(crate) fn routes(mut router: Router<ApiState>) -> Router<ApiState> {
    for kind in Kind::ALL {
        let plural = kind.plural();
        router = router
            .route(
                &format!("/v1/{plural}"),
                get(move |state: State<ApiState>, uri: Uri| list(state, kind, uri)).post(
                    move |state: State<ApiState>,
                          uri: Uri,
                          headers: HeaderMap,
                          body: Result<Bytes, BytesRejection>| {
                        create(state, kind, uri, headers, body)
                    },
                ),
            )
            .route(
                &format!("/v1/{plural}/{{name}}"),
                get(
                    move |state: State<ApiState>,
                          name: Result<Path<String>, PathRejection>,
                          uri: Uri| { get_one(state, kind, name, uri) },
                )
                .put(
                    move |state: State<ApiState>,
                          name: Result<Path<String>, PathRejection>,
                          uri: Uri,
                          headers: HeaderMap,
                          body: Result<Bytes, BytesRejection>| {
                        replace(state, kind, name, uri, headers, body)
                    },
                )
                .delete(
                    move |state: State<ApiState>,
                          name: Result<Path<String>, PathRejection>,
                          uri: Uri| { delete(state, kind, name, uri) },
                ),
            )
            .route(
                &format!("/v1/{plural}/{{name}}/status"),
                put(
                    move |state: State<ApiState>,
                          name: Result<Path<String>, PathRejection>,
                          uri: Uri,
                          headers: HeaderMap,
                          body: Result<Bytes, BytesRejection>| {
                        put_status(state, kind, name, uri, headers, body)
                    },
                ),
            );
    }
    router
}

/// The `{name}` path parameter, checked to be a DNS-1123 label (so `..%2Fx` or `a/b` never
/// reach the store).
pub(crate) fn name_param(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    path_name(&name)?;
    Ok(name)
}

fn not_found(kind: Kind, namespace: &str, name: &str) -> ApiError {
    ApiError::from(StoreError::NotFound {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

async fn list(State(state): State<ApiState>, kind: Kind, uri: Uri) -> Result<Response, ApiError> {
    let params = Params::parse(&uri, &["namespace", "allNamespaces"])?;
    let all = params.flag("allNamespaces")?;
    let namespace = params.namespace()?;
    let list = state
        .store
        .list(kind, (!all).then_some(namespace.as_str()))
        .await?;
    let mut items: Vec<Value> = list.items.into_iter().map(|o| o.value).collect();
    redact_all(&mut items);
    Ok(Json(json!({
        "apiVersion": API_VERSION,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": list.resource_version.to_string()},
        "items": items,
    }))
    .into_response())
}

async fn get_one(
    State(state): State<ApiState>,
    kind: Kind,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let name = if kind == Kind::FunctionVersion {
        crate::versions::version_name_param(name)?
    } else {
        name_param(name)?
    };
    let namespace = Params::parse(&uri, &["namespace"])?.namespace()?;
    match state.store.get(kind, &namespace, &name).await? {
        Some(mut object) => {
            redact(&mut object.value);
            Ok(Json(object.value).into_response())
        }
        None => Err(not_found(kind, &namespace, &name)),
    }
}

async fn create(
    State(state): State<ApiState>,
    kind: Kind,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let query_ns = Params::parse(&uri, &["namespace"])?.explicit_namespace()?;
    let body = body_bytes(body)?;
    let value = body_object(&headers, &body)?;
    let mut stored = match kind {
        Kind::Environment => {
            create_typed::<EnvironmentSpec>(&state, value, query_ns.as_deref()).await?
        }
        Kind::Package => create_typed::<PackageSpec>(&state, value, query_ns.as_deref()).await?,
        Kind::Function => create_typed::<FunctionSpec>(&state, value, query_ns.as_deref()).await?,
        Kind::HttpTrigger => {
            create_typed::<HttpTriggerSpec>(&state, value, query_ns.as_deref()).await?
        }
        Kind::MessageQueueTrigger => {
            create_typed::<MessageQueueTriggerSpec>(&state, value, query_ns.as_deref()).await?
        }
        Kind::TimeTrigger => {
            create_typed::<TimeTriggerSpec>(&state, value, query_ns.as_deref()).await?
        }
        Kind::Secret => create_typed::<SecretSpec>(&state, value, query_ns.as_deref()).await?,
        Kind::ConfigMap => {
            create_typed::<ConfigMapSpec>(&state, value, query_ns.as_deref()).await?
        }
        Kind::CanaryConfig => {
            create_typed::<CanaryConfigSpec>(&state, value, query_ns.as_deref()).await?
        }
        Kind::FunctionVersion => {
            create_typed::<FunctionVersionSpec>(&state, value, query_ns.as_deref()).await?
        }
        Kind::Invocation => return Err(crate::invocations::not_a_resource()),
    };
    tracing::info!(kind = %kind, namespace = %stored.namespace, name = %stored.name, resource_version = stored.resource_version, "created");
    state.settle(kind, stored.resource_version).await;
    redact(&mut stored.value);
    Ok((StatusCode::CREATED, Json(stored.value)).into_response())
}

/// Parses, settles the namespace and validates a resource body.
pub(crate) fn parse_resource<S: Admit>(
    mut value: Value,
    query_ns: Option<&str>,
) -> Result<Resource<S>, ApiError> {
    let namespace = settle_namespace(&mut value, query_ns)?;
    default_reference_namespaces(&mut value, S::REFERENCES, &namespace);
    let object = typed::<S>(value).map_err(|e| {
        if S::KIND == Kind::Secret {
            // A parse error may quote the offending value ("invalid type: integer `1234`").
            secret_safe_error(e)
        } else {
            e
        }
    })?;
    object.validate()?;
    Ok(object)
}

/// Replaces the message of a parse error about a Secret's values with one that quotes nothing.
fn secret_safe_error(error: ApiError) -> ApiError {
    match error.field() {
        Some(field @ ("spec.data" | "spec.stringData")) => {
            ApiError::invalid(field.to_string(), "must be a map of keys to string values")
        }
        Some(field) if field.starts_with("spec.data.") || field.starts_with("spec.stringData.") => {
            ApiError::invalid(field.to_string(), "must be a string")
        }
        _ => error,
    }
}

/// Clears what the store stamps, so a client cannot choose it.
fn clear_store_metadata<S: Spec>(object: &mut Resource<S>) {
    object.metadata.uid = None;
    object.metadata.resource_version = None;
    object.metadata.generation = None;
    object.metadata.creation_timestamp = None;
}

async fn create_typed<S: Admit>(
    state: &ApiState,
    value: Value,
    query_ns: Option<&str>,
) -> Result<StoredObject, ApiError> {
    let object = parse_resource::<S>(value, query_ns)?;
    let _write = state.write_lock.lock().await;
    let (stored, _admitted) = create_locked(state, object).await?;
    Ok(stored)
}

/// Creates a parsed, validated resource. The caller holds the write lock. The [`Admitted`]
/// returned undoes the admission's side effects if a later step (of a batch) fails.
pub(crate) async fn create_locked<S: Admit>(
    state: &ApiState,
    mut object: Resource<S>,
) -> Result<(StoredObject, Admitted), ApiError> {
    let namespace = object.metadata.namespace.clone();
    let name = object.metadata.name.clone();
    if state.store.get(S::KIND, &namespace, &name).await?.is_some() {
        return Err(ApiError::from(StoreError::AlreadyExists {
            kind: S::KIND,
            namespace,
            name,
        }));
    }
    let admitted = S::admit(state, &mut object, None).await?;
    object.status = S::initial_status(&object);
    clear_store_metadata(&mut object);
    match state
        .store
        .put(object.to_json(), Precondition::MustNotExist)
        .await
    {
        Ok(stored) => {
            S::after_write(state, &object).await;
            Ok((stored, admitted))
        }
        Err(e) => {
            admitted.roll_back(state).await;
            Err(e.into())
        }
    }
}

/// A stored object as its typed resource.
pub(crate) fn decode_stored<S: Spec>(object: &StoredObject) -> Result<Resource<S>, ApiError> {
    serde_json::from_value(object.value.clone()).map_err(|e| {
        ApiError::Internal(format!(
            "stored {} {}/{} is not readable: {e}",
            object.kind, object.namespace, object.name
        ))
    })
}

pub(crate) fn precondition_from(
    resource_version: Option<&str>,
    field: &str,
) -> Result<Precondition, ApiError> {
    match resource_version {
        None => Ok(Precondition::MustExist),
        Some(rv) => rv
            .parse::<u64>()
            .map(Precondition::ResourceVersion)
            .map_err(|_| {
                ApiError::invalid(
                    field,
                    format!("{rv:?} is not a resource version: expected a decimal number"),
                )
            }),
    }
}

async fn replace(
    State(state): State<ApiState>,
    kind: Kind,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if kind == Kind::FunctionVersion {
        return Err(crate::versions::read_only());
    }
    let name = name_param(name)?;
    let query_ns = Params::parse(&uri, &["namespace"])?.explicit_namespace()?;
    let body = body_bytes(body)?;
    let value = body_object(&headers, &body)?;
    let q = query_ns.as_deref();
    let mut stored = match kind {
        Kind::Environment => replace_typed::<EnvironmentSpec>(&state, &name, value, q).await?,
        Kind::Package => replace_typed::<PackageSpec>(&state, &name, value, q).await?,
        Kind::Function => replace_typed::<FunctionSpec>(&state, &name, value, q).await?,
        Kind::HttpTrigger => replace_typed::<HttpTriggerSpec>(&state, &name, value, q).await?,
        Kind::MessageQueueTrigger => {
            replace_typed::<MessageQueueTriggerSpec>(&state, &name, value, q).await?
        }
        Kind::TimeTrigger => replace_typed::<TimeTriggerSpec>(&state, &name, value, q).await?,
        Kind::Secret => replace_typed::<SecretSpec>(&state, &name, value, q).await?,
        Kind::ConfigMap => replace_typed::<ConfigMapSpec>(&state, &name, value, q).await?,
        Kind::CanaryConfig => replace_typed::<CanaryConfigSpec>(&state, &name, value, q).await?,
        Kind::FunctionVersion => {
            replace_typed::<FunctionVersionSpec>(&state, &name, value, q).await?
        }
        Kind::Invocation => return Err(crate::invocations::not_a_resource()),
    };
    tracing::info!(kind = %kind, namespace = %stored.namespace, name = %stored.name, resource_version = stored.resource_version, "replaced");
    state.settle(kind, stored.resource_version).await;
    redact(&mut stored.value);
    Ok(Json(stored.value).into_response())
}

async fn replace_typed<S: Admit>(
    state: &ApiState,
    name: &str,
    value: Value,
    query_ns: Option<&str>,
) -> Result<StoredObject, ApiError> {
    let object = parse_resource::<S>(value, query_ns)?;
    if object.metadata.name != name {
        return Err(ApiError::invalid(
            "metadata.name",
            format!(
                "name {:?} in the body does not match {name:?} in the path",
                object.metadata.name
            ),
        ));
    }
    let _write = state.write_lock.lock().await;
    let (stored, _admitted) = replace_locked(state, object).await?;
    Ok(stored)
}

/// Replaces a parsed, validated resource (its `metadata.resourceVersion`, when set, is a
/// precondition). The caller holds the write lock. The [`Admitted`] returned undoes the
/// admission's side effects if a later step (of a batch) fails.
pub(crate) async fn replace_locked<S: Admit>(
    state: &ApiState,
    mut object: Resource<S>,
) -> Result<(StoredObject, Admitted), ApiError> {
    let namespace = object.metadata.namespace.clone();
    let name = object.metadata.name.clone();
    let name = name.as_str();
    let precondition = precondition_from(
        object.metadata.resource_version.as_deref(),
        "metadata.resourceVersion",
    )?;
    let Some(old_stored) = state.store.get(S::KIND, &namespace, name).await? else {
        return Err(not_found(S::KIND, &namespace, name));
    };
    if let Precondition::ResourceVersion(expected) = precondition
        && expected != old_stored.resource_version
    {
        return Err(ApiError::from(StoreError::Conflict {
            kind: S::KIND,
            namespace,
            name: name.to_string(),
            expected,
            actual: old_stored.resource_version,
        }));
    }
    let old = decode_stored::<S>(&old_stored)?;
    let admitted = S::admit(state, &mut object, Some(&old)).await?;
    clear_store_metadata(&mut object);
    let stored = match state.store.put(object.to_json(), precondition).await {
        Ok(stored) => stored,
        Err(e) => {
            admitted.roll_back(state).await;
            return Err(e.into());
        }
    };
    S::after_write(state, &object).await;
    match S::status_after_update(&old, &object) {
        Some(status) => {
            let status = serde_json::to_value(status)
                .map_err(|e| ApiError::Internal(format!("encoding status: {e}")))?;
            let stored = state
                .store
                .put_status(
                    S::KIND,
                    &namespace,
                    name,
                    status,
                    Precondition::ResourceVersion(stored.resource_version),
                )
                .await?;
            Ok((stored, admitted))
        }
        None => Ok((stored, admitted)),
    }
}

async fn delete(
    State(state): State<ApiState>,
    kind: Kind,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    if kind == Kind::FunctionVersion {
        return Err(crate::versions::read_only());
    }
    let name = name_param(name)?;
    let params = Params::parse(&uri, &["namespace", "force", "resourceVersion"])?;
    let namespace = params.namespace()?;
    let force = params.flag("force")?;
    let precondition = match params.number("resourceVersion")? {
        Some(rv) => Precondition::ResourceVersion(rv),
        None => Precondition::MustExist,
    };
    let _write = state.write_lock.lock().await;
    let mut deleted = delete_locked(&state, kind, &namespace, &name, force, precondition).await?;
    tracing::info!(kind = %kind, namespace = %namespace, name = %name, resource_version = deleted.resource_version, force, "deleted");
    state.settle(kind, deleted.resource_version).await;
    redact(&mut deleted.value);
    Ok(Json(deleted.value).into_response())
}

/// Deletes `kind` `namespace/name` unless something uses it (and `force` is not set). The
/// caller holds the write lock.
pub(crate) async fn delete_locked(
    state: &ApiState,
    kind: Kind,
    namespace: &str,
    name: &str,
    force: bool,
    precondition: Precondition,
) -> Result<StoredObject, ApiError> {
    if kind == Kind::FunctionVersion {
        return Err(crate::versions::read_only());
    }
    if state.store.get(kind, namespace, name).await?.is_none() {
        return Err(not_found(kind, namespace, name));
    }
    if !force {
        let users = match kind {
            Kind::Environment => EnvironmentSpec::dependents(state, namespace, name).await?,
            Kind::Package => PackageSpec::dependents(state, namespace, name).await?,
            Kind::Function => FunctionSpec::dependents(state, namespace, name).await?,
            Kind::HttpTrigger => HttpTriggerSpec::dependents(state, namespace, name).await?,
            Kind::MessageQueueTrigger => {
                MessageQueueTriggerSpec::dependents(state, namespace, name).await?
            }
            Kind::TimeTrigger => TimeTriggerSpec::dependents(state, namespace, name).await?,
            Kind::Secret => SecretSpec::dependents(state, namespace, name).await?,
            Kind::ConfigMap => ConfigMapSpec::dependents(state, namespace, name).await?,
            Kind::CanaryConfig => CanaryConfigSpec::dependents(state, namespace, name).await?,
            Kind::FunctionVersion => Vec::new(),
            Kind::Invocation => Vec::new(),
        };
        if !users.is_empty() {
            return Err(ApiError::conflict(
                None,
                format!(
                    "{kind} {namespace}/{name} is used by {}: delete them first, or delete with ?force=true",
                    users.join(", ")
                ),
            ));
        }
    }
    let deleted = state
        .store
        .delete(kind, namespace, name, precondition)
        .await?;
    if kind == Kind::Function {
        crate::versions::delete_all(state, namespace, name).await;
    }
    Ok(deleted)
}

/// Fields a status body may carry besides `status`: the whole object, as returned by a GET, may
/// be sent back with its status changed.
const STATUS_BODY_FIELDS: [&str; 5] = ["status", "metadata", "apiVersion", "kind", "spec"];

async fn put_status(
    State(state): State<ApiState>,
    kind: Kind,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if kind == Kind::FunctionVersion {
        return Err(crate::versions::read_only());
    }
    let name = name_param(name)?;
    let namespace = Params::parse(&uri, &["namespace"])?.namespace()?;
    let body = body_bytes(body)?;
    let value = body_object(&headers, &body)?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::malformed("expected an object"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !STATUS_BODY_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            unknown.clone(),
            format!(
                "unknown field `{unknown}`, expected `status` (and optionally `metadata.resourceVersion`)"
            ),
        ));
    }
    let Some(status) = fields.remove("status") else {
        return Err(ApiError::invalid("status", "missing field `status`"));
    };
    let meta = fields.get("metadata");
    if let Some(body_name) = meta.and_then(|m| m.get("name")).and_then(Value::as_str)
        && body_name != name
    {
        return Err(ApiError::invalid(
            "metadata.name",
            format!("name {body_name:?} in the body does not match {name:?} in the path"),
        ));
    }
    let precondition = precondition_from(
        meta.and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str),
        "metadata.resourceVersion",
    )?;
    let status = match kind {
        Kind::Environment => normalise_status::<EnvironmentSpec>(status)?,
        Kind::Package => normalise_status::<PackageSpec>(status)?,
        Kind::Function => normalise_status::<FunctionSpec>(status)?,
        Kind::HttpTrigger => normalise_status::<HttpTriggerSpec>(status)?,
        Kind::MessageQueueTrigger => normalise_status::<MessageQueueTriggerSpec>(status)?,
        Kind::TimeTrigger => normalise_status::<TimeTriggerSpec>(status)?,
        Kind::Secret => normalise_status::<SecretSpec>(status)?,
        Kind::ConfigMap => normalise_status::<ConfigMapSpec>(status)?,
        Kind::CanaryConfig => normalise_status::<CanaryConfigSpec>(status)?,
        Kind::FunctionVersion => return Err(crate::versions::read_only()),
        Kind::Invocation => return Err(crate::invocations::not_a_resource()),
    };
    let mut stored = state
        .store
        .put_status(kind, &namespace, &name, status, precondition)
        .await?;
    redact(&mut stored.value);
    Ok(Json(stored.value).into_response())
}

/// Checks a status against its kind's type, returning it in canonical form.
fn normalise_status<S: Spec>(status: Value) -> Result<Value, ApiError> {
    let typed: S::Status = serde_path_to_error::deserialize(status).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "status".to_string()
        } else {
            format!("status.{path}")
        };
        ApiError::invalid(field, e.inner().to_string())
    })?;
    serde_json::to_value(typed).map_err(|e| ApiError::Internal(format!("encoding status: {e}")))
}
