//! Function versions (design note 004): every accepted change of a function's spec or code
//! records an immutable, numbered `FunctionVersion` (`hello.v3`); the function carries its
//! current number in the `kappa.dev/version` annotation. `GET .../versions` lists them,
//! `POST .../rollback` makes one current again through the ordinary write path, and old
//! versions are collected beyond the function's `versionLimit` unless a route or a canary
//! names them.
//!
//! Everything here runs with the API's write lock held (admission, rollback), so the version
//! numbers it hands out cannot race.

use async_trait::async_trait;
use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Uri};
use kappa_store::Precondition;
use kappa_types::{
    API_VERSION, CanaryConfigSpec, FunctionReferenceType, FunctionSpec, FunctionVersionSpec,
    HttpTriggerSpec, Kind, PackageSpec, Resource, VERSION_ANNOTATION, VERSION_FUNCTION_LABEL,
    parse_version_ref, version_object_name, versions_to_collect,
};
use serde_json::{Value, json};

use crate::admit::{Admit, Admitted, list_typed, require};
use crate::error::ApiError;
use crate::extract::{Params, body_bytes};
use crate::resources::{decode_stored, name_param, replace_locked};
use crate::state::ApiState;

/// The error for a write to a FunctionVersion: only the platform writes them.
pub(crate) fn read_only() -> ApiError {
    ApiError::MethodNotAllowed(
        "function versions are recorded by the platform on every change of a function and are read-only: change the function, or use `kappa fn rollback`".into(),
    )
}

/// A version's stored name from the path (`hello.v3`), checked.
pub(crate) fn version_name_param(
    name: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::invalid("name", e.body_text()))?;
    if kappa_types::parse_version_object_name(&name).is_none() {
        return Err(ApiError::invalid(
            "name",
            format!("{name:?} is not a function version name: expected NAME.vN, like hello.v3"),
        ));
    }
    Ok(name)
}

/// The current version number a function carries, if any.
pub(crate) fn current_version(function: &Resource<FunctionSpec>) -> Option<u32> {
    function
        .metadata
        .annotations
        .get(VERSION_ANNOTATION)
        .and_then(|v| v.parse().ok())
}

/// Every kept version of `function` in `namespace`.
async fn versions_of(
    state: &ApiState,
    namespace: &str,
    function: &str,
) -> Result<Vec<Resource<FunctionVersionSpec>>, ApiError> {
    // Only this function's range of names (`hello.v…`), not every version in the namespace.
    let prefix = format!("{}.v", function);
    let list = state
        .store
        .list_prefix(Kind::FunctionVersion, namespace, &prefix)
        .await?;
    let mut versions: Vec<_> = list
        .items
        .iter()
        .filter_map(|o| match decode_stored::<FunctionVersionSpec>(o) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable function version skipped");
                None
            }
        })
        .filter(|v| v.spec.function == function)
        .collect();
    versions.sort_by_key(|v| v.spec.version);
    Ok(versions)
}

/// Records the version `object` is about to become (admission of a Function, before its
/// write): an existing version with the same content becomes current again, anything else
/// gets the next number. Sets the function's `kappa.dev/version` annotation. Returns the
/// version created, for the undo of a failed write.
pub(crate) async fn record(
    state: &ApiState,
    object: &mut Resource<FunctionSpec>,
    old: Option<&Resource<FunctionSpec>>,
) -> Result<Option<(String, String)>, ApiError> {
    let namespace = object.metadata.namespace.clone();
    let name = object.metadata.name.clone();
    let pref = &object.spec.package.packageref;
    let package = match state
        .store
        .get(Kind::Package, &pref.namespace, &pref.name)
        .await?
    {
        Some(stored) => Some(decode_stored::<PackageSpec>(&stored)?),
        None => None,
    };
    let mut candidate = FunctionVersionSpec {
        function: name.clone(),
        version: 0,
        snapshot: object.spec.clone(),
        deployment: package.as_ref().and_then(|p| p.spec.deployment.clone()),
        source: package.as_ref().and_then(|p| p.spec.source.clone()),
        buildcmd: package.as_ref().and_then(|p| p.spec.buildcmd.clone()),
        changes: Vec::new(),
    };
    let versions = versions_of(state, &namespace, &name).await?;
    let current = old.and_then(current_version);
    let current_spec = current.and_then(|n| versions.iter().find(|v| v.spec.version == n));
    // No change of content: the same version stays current.
    if let Some(cur) = current_spec
        && cur.spec.same_content(&candidate)
    {
        object
            .metadata
            .annotations
            .insert(VERSION_ANNOTATION.into(), cur.spec.version.to_string());
        return Ok(None);
    }
    // Back to a version still kept (a rollback, or a spec applied again): it becomes current.
    if let Some(same) = versions
        .iter()
        .rev()
        .find(|v| v.spec.same_content(&candidate))
    {
        object
            .metadata
            .annotations
            .insert(VERSION_ANNOTATION.into(), same.spec.version.to_string());
        return Ok(None);
    }
    let number = versions
        .iter()
        .map(|v| v.spec.version)
        .chain(current)
        .max()
        .unwrap_or(0)
        + 1;
    candidate.version = number;
    candidate.changes = match current_spec {
        Some(cur) => candidate.changes_from(&cur.spec),
        None if old.is_some() => vec!["recorded".into()],
        None => vec!["created".into()],
    };
    let stored_name = version_object_name(&name, number);
    let mut version = Resource::new(&stored_name, candidate);
    version.metadata.namespace = namespace.clone();
    version
        .metadata
        .labels
        .insert(VERSION_FUNCTION_LABEL.into(), name.clone());
    state
        .store
        .put(version.to_json(), Precondition::MustNotExist)
        .await?;
    tracing::info!(function = %name, namespace = %namespace, version = number, "function version recorded");
    object
        .metadata
        .annotations
        .insert(VERSION_ANNOTATION.into(), number.to_string());
    Ok(Some((namespace, stored_name)))
}

/// A route or canary in the function's namespace that names one of its versions (`hello@3`).
struct Pin {
    version: u32,
    kind: Kind,
    name: String,
}

/// The routes and canaries in `namespace` that pin versions of `function`.
async fn version_pins(
    state: &ApiState,
    namespace: &str,
    function: &str,
) -> Result<Vec<Pin>, ApiError> {
    let mut refs: Vec<(Kind, String, String)> = Vec::new();
    for t in list_typed::<HttpTriggerSpec>(state, Some(namespace)).await? {
        for f in t.spec.functionref.function_names() {
            refs.push((Kind::HttpTrigger, t.metadata.name.clone(), f.to_string()));
        }
    }
    for c in list_typed::<CanaryConfigSpec>(state, Some(namespace)).await? {
        for f in [&c.spec.newfunction, &c.spec.oldfunction] {
            refs.push((Kind::CanaryConfig, c.metadata.name.clone(), f.clone()));
        }
    }
    Ok(refs
        .into_iter()
        .filter_map(|(kind, name, reference)| {
            let (f, version) = parse_version_ref(&reference)?;
            (f == function).then_some(Pin {
                version,
                kind,
                name,
            })
        })
        .collect())
}

/// The versions of `function` that routes and canaries in `namespace` name (`hello@3`).
async fn referenced_versions(
    state: &ApiState,
    namespace: &str,
    function: &str,
) -> Result<Vec<u32>, ApiError> {
    Ok(version_pins(state, namespace, function)
        .await?
        .iter()
        .map(|p| p.version)
        .collect())
}

/// Deletes the versions of `function` beyond its `versionLimit`, oldest first, never the
/// current one nor one a route or canary names.
pub(crate) async fn collect(
    state: &ApiState,
    namespace: &str,
    function: &str,
) -> Result<(), ApiError> {
    let Some(stored) = state.store.get(Kind::Function, namespace, function).await? else {
        return Ok(());
    };
    let f = decode_stored::<FunctionSpec>(&stored)?;
    let versions: Vec<u32> = versions_of(state, namespace, function)
        .await?
        .iter()
        .map(|v| v.spec.version)
        .collect();
    let current = current_version(&f).unwrap_or(0);
    // Nothing beyond the limit even when no route pins a version: no need to read the routes
    // and canaries (every trigger of the namespace) on each write of a function.
    if versions_to_collect(&versions, current, &[], f.spec.version_limit).is_empty() {
        return Ok(());
    }
    let keep = referenced_versions(state, namespace, function).await?;
    for number in versions_to_collect(&versions, current, &keep, f.spec.version_limit) {
        let name = version_object_name(function, number);
        match state
            .store
            .delete(
                Kind::FunctionVersion,
                namespace,
                &name,
                Precondition::MustExist,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(function = %function, version = number, "old function version collected")
            }
            Err(e) => tracing::warn!(version = %name, error = %e, "collecting a version failed"),
        }
    }
    Ok(())
}

/// Deletes every version of a deleted function.
pub(crate) async fn delete_all(state: &ApiState, namespace: &str, function: &str) {
    let versions = match versions_of(state, namespace, function).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(function = %function, error = %e, "listing the versions of a deleted function failed");
            return;
        }
    };
    for v in versions {
        if let Err(e) = state
            .store
            .delete(
                Kind::FunctionVersion,
                namespace,
                &v.metadata.name,
                Precondition::MustExist,
            )
            .await
        {
            tracing::warn!(version = %v.metadata.name, error = %e, "deleting a version of a deleted function failed");
        }
    }
}

/// A route's or canary's function reference (`hello`, or `hello@3`) must name something that
/// exists: the function, or a kept version of it.
pub(crate) async fn require_function_ref(
    state: &ApiState,
    namespace: &str,
    reference: &str,
    field: &str,
) -> Result<(), ApiError> {
    match parse_version_ref(reference) {
        None => require(state, Kind::Function, namespace, reference, field).await,
        Some((function, version)) => {
            let name = version_object_name(function, version);
            if state
                .store
                .get(Kind::FunctionVersion, namespace, &name)
                .await?
                .is_some()
            {
                return Ok(());
            }
            Err(ApiError::invalid(
                field,
                format!(
                    "function {function:?} has no version {version} in namespace {namespace:?}: `kappa fn history {function}` lists the versions kept"
                ),
            ))
        }
    }
}

/// `GET /v1/functions/{name}/versions`: the kept versions, oldest first, the current one, and
/// the routes and canaries that pin a version (`pins`: `{version, kind, name}`).
pub(crate) async fn list(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let name = name_param(name)?;
    let namespace = Params::parse(&uri, &["namespace"])?.namespace()?;
    let Some(stored) = state.store.get(Kind::Function, &namespace, &name).await? else {
        return Err(ApiError::NotFound(format!(
            "Function {namespace}/{name} not found"
        )));
    };
    let function = decode_stored::<FunctionSpec>(&stored)?;
    let items: Vec<Value> = versions_of(&state, &namespace, &name)
        .await?
        .into_iter()
        .map(|v| v.to_json())
        .collect();
    let pins: Vec<Value> = version_pins(&state, &namespace, &name)
        .await?
        .into_iter()
        .map(|p| json!({"version": p.version, "kind": p.kind.as_str(), "name": p.name}))
        .collect();
    Ok(Json(json!({
        "apiVersion": API_VERSION,
        "kind": "FunctionVersionList",
        "function": name,
        "current": current_version(&function),
        "items": items,
        "pins": pins,
    }))
    .into_response())
}

/// `POST /v1/functions/{name}/rollback?to=N` (default: the newest kept version before the
/// current one): makes version N current. The function's spec becomes N's, and its package's
/// archives N's (so new instances run N's code); the function's generation changes, so the
/// pool manager rolls its instances as on any update.
pub(crate) async fn rollback(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
    _headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = name_param(name)?;
    let params = Params::parse(&uri, &["namespace", "to"])?;
    let namespace = params.namespace()?;
    let to = params.number("to")?;
    let _ = body_bytes(body)?;
    let _write = state.write_lock.lock().await;
    let Some(stored) = state.store.get(Kind::Function, &namespace, &name).await? else {
        return Err(ApiError::NotFound(format!(
            "Function {namespace}/{name} not found"
        )));
    };
    let function = decode_stored::<FunctionSpec>(&stored)?;
    let current = current_version(&function);
    let versions = versions_of(&state, &namespace, &name).await?;
    let target = match to {
        Some(n) => {
            let n = u32::try_from(n)
                .map_err(|_| ApiError::invalid("to", format!("{n} is not a version number")))?;
            versions
                .iter()
                .find(|v| v.spec.version == n)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "to",
                        format!(
                            "function {name:?} has no version {n}: kept versions are {}",
                            list_numbers(&versions)
                        ),
                    )
                })?
        }
        None => {
            let below = current.unwrap_or(u32::MAX);
            versions
                .iter()
                .rev()
                .find(|v| v.spec.version < below)
                .ok_or_else(|| {
                    ApiError::conflict(
                        Some("to"),
                        format!(
                            "function {name:?} has no version before {} to roll back to (kept: {})",
                            current.map_or("the current one".to_string(), |c| c.to_string()),
                            list_numbers(&versions)
                        ),
                    )
                })?
        }
    };
    let target = target.clone();
    // The package: back to the version's archives, unless it already holds them.
    let pref = &target.spec.snapshot.package.packageref;
    let Some(pkg_stored) = state
        .store
        .get(Kind::Package, &pref.namespace, &pref.name)
        .await?
    else {
        return Err(ApiError::conflict(
            None,
            format!(
                "version {} runs package {}/{}, which no longer exists",
                target.spec.version, pref.namespace, pref.name
            ),
        ));
    };
    let package = decode_stored::<PackageSpec>(&pkg_stored)?;
    // A version recorded while its source was being built has no deployment of its own: the
    // package's build of that same source is its deployment.
    let same_source =
        package.spec.source == target.spec.source && package.spec.buildcmd == target.spec.buildcmd;
    let deployment = match &target.spec.deployment {
        Some(d) => Some(d.clone()),
        None if same_source => package.spec.deployment.clone(),
        None => None,
    };
    let same_code = package.spec.deployment == deployment && same_source;
    let mut restored_package = None;
    let mut package_rv = pkg_stored.resource_version.to_string();
    if !same_code {
        let others: Vec<String> = list_typed::<FunctionSpec>(&state, None)
            .await?
            .into_iter()
            .filter(|f| {
                let p = &f.spec.package.packageref;
                p.namespace == pref.namespace
                    && p.name == pref.name
                    && !(f.metadata.namespace == namespace && f.metadata.name == name)
            })
            .map(|f| format!("function {}/{}", f.metadata.namespace, f.metadata.name))
            .collect();
        if !others.is_empty() {
            return Err(ApiError::conflict(
                None,
                format!(
                    "rolling back would change the code of package {}/{}, which {} also run(s): give the function a package of its own first",
                    pref.namespace,
                    pref.name,
                    others.join(", ")
                ),
            ));
        }
        let mut new_package = package.clone();
        new_package.spec.deployment = deployment;
        new_package.spec.source = target.spec.source.clone();
        new_package.spec.buildcmd = target.spec.buildcmd.clone();
        new_package.metadata.resource_version = Some(pkg_stored.resource_version.to_string());
        let (written, _admitted) = replace_locked(&state, new_package).await?;
        package_rv = written.resource_version.to_string();
        restored_package = Some(package);
    }
    let mut new_function = function.clone();
    new_function.spec = target.spec.snapshot.clone();
    new_function.spec.package.packageref.resourceversion = Some(package_rv);
    new_function.metadata.resource_version = Some(stored.resource_version.to_string());
    match replace_locked(&state, new_function).await {
        Ok((written, _admitted)) => {
            tracing::info!(function = %name, namespace = %namespace, to = target.spec.version, "function rolled back");
            state.settle(Kind::Function, written.resource_version).await;
            Ok(Json(written.value).into_response())
        }
        Err(e) => {
            if let Some(mut package) = restored_package {
                package.metadata.resource_version = None;
                if let Err(undo) = replace_locked(&state, package).await {
                    tracing::error!(error = %undo, "restoring the package after a failed rollback failed");
                }
            }
            Err(e)
        }
    }
}

fn list_numbers(versions: &[Resource<FunctionVersionSpec>]) -> String {
    if versions.is_empty() {
        return "none".into();
    }
    versions
        .iter()
        .map(|v| v.spec.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Admit for FunctionVersionSpec {
    async fn admit(
        _state: &ApiState,
        _object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        Err(read_only())
    }
}

#[async_trait]
impl Admit for CanaryConfigSpec {
    async fn admit(
        state: &ApiState,
        object: &mut Resource<Self>,
        _old: Option<&Resource<Self>>,
    ) -> Result<Admitted, ApiError> {
        let namespace = object.metadata.namespace.clone();
        let Some(trigger) = state
            .store
            .get(Kind::HttpTrigger, &namespace, &object.spec.trigger)
            .await?
        else {
            return Err(ApiError::invalid(
                "spec.trigger",
                format!(
                    "httptrigger {:?} does not exist in namespace {namespace:?}: create it first",
                    object.spec.trigger
                ),
            ));
        };
        let trigger = decode_stored::<HttpTriggerSpec>(&trigger)?;
        require_function_ref(
            state,
            &namespace,
            &object.spec.newfunction,
            "spec.newfunction",
        )
        .await?;
        require_function_ref(
            state,
            &namespace,
            &object.spec.oldfunction,
            "spec.oldfunction",
        )
        .await?;
        // The route must serve the old side now (by name, or among its weights).
        let serves_old = match trigger.spec.functionref.kind {
            FunctionReferenceType::Name => trigger.spec.functionref.name == object.spec.oldfunction,
            FunctionReferenceType::FunctionWeights => trigger
                .spec
                .functionref
                .functionweights
                .contains_key(&object.spec.oldfunction),
        };
        if !serves_old {
            return Err(ApiError::invalid(
                "spec.oldfunction",
                format!(
                    "httptrigger {:?} does not route to {:?}: the canary shifts a route's traffic away from the function it serves",
                    object.spec.trigger, object.spec.oldfunction
                ),
            ));
        }
        Ok(Admitted::default())
    }
}
