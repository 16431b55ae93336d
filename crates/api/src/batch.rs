//! `POST /v1/batch`: several creates, replaces and deletes applied as one change (what
//! `kappa spec apply` sends).
//!
//! The guarantee: **when the request returns, every object of the batch is either at its old or
//! at its new version.** It is kept in two phases, both under the API's write lock (so no other
//! API write interleaves):
//!
//! 1. *Check everything before writing anything*: every object is parsed and validated, no key
//!    appears twice, and every precondition is checked against the store (a create's object is
//!    absent, a replace's or delete's is present and, when a `resourceVersion` is given, at that
//!    version). A failure here writes nothing.
//! 2. *Write, and undo on failure*: operations run in dependency order (trigger deletes; then
//!    creates and replaces by kind: Secret, ConfigMap, Environment, Package, Function,
//!    HttpTrigger, MessageQueueTrigger, TimeTrigger; then the other deletes in the reverse
//!    order), each with the same admission (references, route conflicts, archives) as a single
//!    request, seeing the batch's earlier writes. If one fails, every write already made is
//!    undone in reverse order: a created object is deleted, a replaced one gets its old spec and
//!    status back, a deleted one is created again (with a new uid and resource version), and
//!    archives an admission moved to the archive store are removed.
//!
//! Watchers (the router, the pool manager) see the individual writes as they happen, and see
//! an undone batch as writes followed by their undoing: the guarantee is about the state the
//! batch leaves, not about what a watcher may observe while it runs. A Function whose
//! `packageref.resourceversion` is unset is pinned to its package's version as the batch
//! leaves it, so a function whose package changed in the batch rolls to the new code.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Uri};
use kappa_store::{Precondition, StoreError, StoredObject};
use kappa_types::{
    ConfigMapSpec, EnvironmentSpec, FunctionSpec, HttpTriggerSpec, Kind, MessageQueueTriggerSpec,
    PackageSpec, SecretSpec, TimeTriggerSpec,
};
use serde_json::{Value, json};

use crate::admit::{Admit, Admitted};
use crate::error::ApiError;
use crate::extract::{Params, body_bytes, body_object, path_name};
use crate::resources::{
    create_locked, delete_locked, parse_resource, precondition_from, replace_locked,
};
use crate::state::ApiState;

/// The most operations one batch may hold.
pub const MAX_OPERATIONS: usize = 1000;

/// What one operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Replace,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Replace => "replace",
            Op::Delete => "delete",
        }
    }
}

/// One operation, checked (phase 1).
#[derive(Debug)]
struct Checked {
    index: usize,
    op: Op,
    kind: Kind,
    namespace: String,
    name: String,
    /// The parsed, validated object (create and replace).
    object: Option<Value>,
    /// The delete's precondition.
    precondition: Precondition,
}

impl Checked {
    fn what(&self) -> String {
        format!(
            "operations[{}] ({} {} {}/{})",
            self.index,
            self.op.as_str(),
            self.kind,
            self.namespace,
            self.name
        )
    }

    /// The position in the order of writes (see the module docs).
    fn rank(&self) -> (u8, usize) {
        let kind_rank = Kind::ALL_BY_DEPENDENCY
            .iter()
            .position(|k| *k == self.kind)
            .unwrap_or(0);
        let trigger = matches!(
            self.kind,
            Kind::HttpTrigger | Kind::MessageQueueTrigger | Kind::TimeTrigger
        );
        match (self.op, trigger) {
            (Op::Delete, true) => (0, kind_rank),
            (Op::Create | Op::Replace, _) => (1, kind_rank),
            (Op::Delete, false) => (2, usize::MAX - kind_rank),
        }
    }
}

/// A write made, and how to undo it.
struct Done {
    kind: Kind,
    namespace: String,
    name: String,
    /// The object before the write (`None`: it was created).
    before: Option<StoredObject>,
    /// Whether the write deleted it.
    deleted: bool,
    admitted: Admitted,
}

/// Prefixes an error with the operation it came from; the field path becomes
/// `operations[i].object.<field>`.
fn in_operation(error: ApiError, index: usize, what: &str) -> ApiError {
    let field = |f: Option<String>| {
        Some(match f {
            Some(f) => format!("operations[{index}].object.{f}"),
            None => format!("operations[{index}]"),
        })
    };
    match error {
        ApiError::Invalid { field: f, message } => ApiError::Invalid {
            field: field(f),
            message: format!("{what}: {message}"),
        },
        ApiError::Conflict { field: f, message } => ApiError::Conflict {
            field: field(f),
            message: format!("{what}: {message}"),
        },
        ApiError::NotFound(m) => ApiError::NotFound(format!("{what}: {m}")),
        ApiError::AlreadyExists(m) => ApiError::AlreadyExists(format!("{what}: {m}")),
        ApiError::Unavailable(m) => ApiError::Unavailable(format!("{what}: {m}")),
        ApiError::Internal(m) => ApiError::Internal(format!("{what}: {m}")),
        other => other,
    }
}

macro_rules! by_kind {
    ($kind:expr, $f:ident ( $($arg:expr),* )) => {
        match $kind {
            Kind::Environment => $f::<EnvironmentSpec>($($arg),*).await,
            Kind::Package => $f::<PackageSpec>($($arg),*).await,
            Kind::Function => $f::<FunctionSpec>($($arg),*).await,
            Kind::HttpTrigger => $f::<HttpTriggerSpec>($($arg),*).await,
            Kind::MessageQueueTrigger => $f::<MessageQueueTriggerSpec>($($arg),*).await,
            Kind::TimeTrigger => $f::<TimeTriggerSpec>($($arg),*).await,
            Kind::Secret => $f::<SecretSpec>($($arg),*).await,
            Kind::ConfigMap => $f::<ConfigMapSpec>($($arg),*).await,
            Kind::CanaryConfig => $f::<kappa_types::CanaryConfigSpec>($($arg),*).await,
            Kind::FunctionVersion => $f::<kappa_types::FunctionVersionSpec>($($arg),*).await,
            Kind::Invocation => Err(crate::invocations::not_a_resource()),
        }
    };
}

/// Parses and validates an object, returning it in canonical form (sync, wrapped in async for
/// the dispatch macro).
async fn parse_object<S: Admit>(value: Value, query_ns: Option<&str>) -> Result<Value, ApiError> {
    Ok(parse_resource::<S>(value, query_ns)?.to_json())
}

async fn write<S: Admit>(
    state: &ApiState,
    op: Op,
    value: Value,
) -> Result<(StoredObject, Admitted), ApiError> {
    let object = kappa_types::Resource::<S>::from_json(value)?;
    match op {
        Op::Create => create_locked(state, object).await,
        _ => replace_locked(state, object).await,
    }
}

fn str_field<'a>(op: &'a Value, name: &str, index: usize) -> Result<&'a str, ApiError> {
    op.get(name).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            format!("operations[{index}].{name}"),
            "missing or not a string",
        )
    })
}

/// Phase 1 for one operation, without the store.
async fn parse_operation(
    state: &ApiState,
    index: usize,
    raw: Value,
    query_ns: Option<&str>,
) -> Result<Checked, ApiError> {
    let Value::Object(fields) = &raw else {
        return Err(ApiError::invalid(
            format!("operations[{index}]"),
            "expected an object with `op`",
        ));
    };
    let op = match str_field(&raw, "op", index)? {
        "create" => Op::Create,
        "replace" => Op::Replace,
        "delete" => Op::Delete,
        other => {
            return Err(ApiError::invalid(
                format!("operations[{index}].op"),
                format!("{other:?} is not an operation: expected create, replace or delete"),
            ));
        }
    };
    let allowed: &[&str] = match op {
        Op::Delete => &["op", "kind", "namespace", "name", "resourceVersion"],
        _ => &["op", "object"],
    };
    if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("operations[{index}].{unknown}"),
            format!(
                "unknown field `{unknown}` for {}: expected {}",
                op.as_str(),
                allowed.join(", ")
            ),
        ));
    }
    if op == Op::Delete {
        let kind: Kind = str_field(&raw, "kind", index)?
            .parse()
            .map_err(|e: String| ApiError::invalid(format!("operations[{index}].kind"), e))?;
        let name = str_field(&raw, "name", index)?.to_string();
        path_name(&name).map_err(|e| in_operation(e, index, "delete"))?;
        let namespace = match raw.get("namespace").and_then(Value::as_str) {
            Some(ns) => ns.to_string(),
            None => query_ns
                .unwrap_or(kappa_types::DEFAULT_NAMESPACE)
                .to_string(),
        };
        kappa_types::validate::dns1123_label("namespace", &namespace)
            .map_err(|e| in_operation(e.into(), index, "delete"))?;
        let precondition = match raw.get("resourceVersion").and_then(Value::as_str) {
            Some(rv) => precondition_from(Some(rv), "resourceVersion")
                .map_err(|e| in_operation(e, index, "delete"))?,
            None => Precondition::MustExist,
        };
        return Ok(Checked {
            index,
            op,
            kind,
            namespace,
            name,
            object: None,
            precondition,
        });
    }
    let object = raw.get("object").cloned().ok_or_else(|| {
        ApiError::invalid(
            format!("operations[{index}].object"),
            "missing field `object`",
        )
    })?;
    let kind: Kind = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::invalid(
                format!("operations[{index}].object.kind"),
                "missing or not a string",
            )
        })?
        .parse()
        .map_err(|e: String| ApiError::invalid(format!("operations[{index}].object.kind"), e))?;
    let what = format!("operations[{index}] ({} {kind})", op.as_str());
    let object = by_kind!(kind, parse_object(object, query_ns))
        .map_err(|e| in_operation(e, index, &what))?;
    if kind == Kind::Environment {
        // Stateless, so checked before anything is written (and by a dry run).
        let env = kappa_types::Resource::<EnvironmentSpec>::from_json(object.clone())
            .map_err(|e| in_operation(e.into(), index, &what))?;
        crate::admit::check_runtime(state, &env.spec).map_err(|e| in_operation(e, index, &what))?;
    }
    let meta = &object["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or_default().to_string();
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    Ok(Checked {
        index,
        op,
        kind,
        namespace,
        name,
        object: Some(object),
        precondition: Precondition::None,
    })
}

/// Phase 1 against the store (write lock held): the preconditions.
async fn check_preconditions(state: &ApiState, c: &Checked) -> Result<(), ApiError> {
    let current = state.store.get(c.kind, &c.namespace, &c.name).await?;
    let expected = match c.op {
        Op::Create => {
            if current.is_some() {
                return Err(ApiError::from(StoreError::AlreadyExists {
                    kind: c.kind,
                    namespace: c.namespace.clone(),
                    name: c.name.clone(),
                }));
            }
            return Ok(());
        }
        Op::Replace => c
            .object
            .as_ref()
            .and_then(|o| o["metadata"]["resourceVersion"].as_str())
            .map(|rv| precondition_from(Some(rv), "metadata.resourceVersion"))
            .transpose()?,
        Op::Delete => Some(c.precondition),
    };
    let Some(current) = current else {
        return Err(ApiError::from(StoreError::NotFound {
            kind: c.kind,
            namespace: c.namespace.clone(),
            name: c.name.clone(),
        }));
    };
    if let Some(Precondition::ResourceVersion(expected)) = expected
        && expected != current.resource_version
    {
        return Err(ApiError::from(StoreError::Conflict {
            kind: c.kind,
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            expected,
            actual: current.resource_version,
        }));
    }
    Ok(())
}

/// Pins a Function's unset `packageref.resourceversion` to the package's current version.
async fn pin_package(state: &ApiState, object: &mut Value) -> Result<(), ApiError> {
    let pref = &object["spec"]["package"]["packageref"];
    if pref.get("resourceversion").is_some_and(|v| !v.is_null()) {
        return Ok(());
    }
    let (Some(ns), Some(name)) = (pref["namespace"].as_str(), pref["name"].as_str()) else {
        return Ok(());
    };
    if let Some(pkg) = state.store.get(Kind::Package, ns, name).await? {
        object["spec"]["package"]["packageref"]["resourceversion"] =
            Value::String(pkg.resource_version.to_string());
    }
    Ok(())
}

/// Runs one write of phase 2.
async fn run_one(state: &ApiState, c: &Checked) -> Result<Done, ApiError> {
    let before = state.store.get(c.kind, &c.namespace, &c.name).await?;
    match c.op {
        Op::Delete => {
            delete_locked(state, c.kind, &c.namespace, &c.name, false, c.precondition).await?;
            Ok(Done {
                kind: c.kind,
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                before,
                deleted: true,
                admitted: Admitted::default(),
            })
        }
        op => {
            let mut object = c.object.clone().unwrap_or(Value::Null);
            if c.kind == Kind::Function {
                pin_package(state, &mut object).await?;
            }
            let (_stored, admitted) = by_kind!(c.kind, write(state, op, object))?;
            Ok(Done {
                kind: c.kind,
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                before: if op == Op::Create { None } else { before },
                deleted: false,
                admitted,
            })
        }
    }
}

/// Undoes the writes of a failed batch, newest first. Returns what could not be undone.
async fn roll_back(state: &ApiState, done: Vec<Done>) -> Vec<String> {
    let mut failures = Vec::new();
    for d in done.into_iter().rev() {
        let key = format!("{} {}/{}", d.kind, d.namespace, d.name);
        let result = match (&d.before, d.deleted) {
            (None, _) => state
                .store
                .delete(d.kind, &d.namespace, &d.name, Precondition::MustExist)
                .await
                .map(|_| ()),
            (Some(old), true) => state
                .store
                .put(old.value.clone(), Precondition::MustNotExist)
                .await
                .map(|_| ()),
            (Some(old), false) => {
                let status = old.value.get("status").cloned().unwrap_or(json!({}));
                match state
                    .store
                    .put(old.value.clone(), Precondition::MustExist)
                    .await
                {
                    Ok(_) => state
                        .store
                        .put_status(
                            d.kind,
                            &d.namespace,
                            &d.name,
                            status,
                            Precondition::MustExist,
                        )
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
        };
        d.admitted.roll_back(state).await;
        match result {
            Ok(()) => tracing::info!(object = %key, "batch: undone"),
            Err(e) => {
                tracing::error!(object = %key, error = %e, "batch: undoing a write failed");
                failures.push(format!("{key}: {e}"));
            }
        }
    }
    failures
}

/// `POST /v1/batch[?namespace=&dryRun=true]` with `{"operations": [...]}`.
pub(crate) async fn batch(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = Params::parse(&uri, &["namespace", "dryRun"])?;
    let query_ns = params.explicit_namespace()?;
    let dry_run = params.flag("dryRun")?;
    let body = body_bytes(body)?;
    let value = body_object(&headers, &body)?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::malformed("expected an object with `operations`"));
    };
    if let Some(unknown) = fields.keys().find(|k| k.as_str() != "operations") {
        return Err(ApiError::invalid(
            unknown.clone(),
            format!("unknown field `{unknown}`, expected `operations`"),
        ));
    }
    let Some(Value::Array(raw_ops)) = fields.remove("operations") else {
        return Err(ApiError::invalid("operations", "expected an array"));
    };
    if raw_ops.len() > MAX_OPERATIONS {
        return Err(ApiError::invalid(
            "operations",
            format!(
                "{} operations, more than the {MAX_OPERATIONS} one batch may hold",
                raw_ops.len()
            ),
        ));
    }

    // Phase 1: everything checked before anything is written.
    let mut checked = Vec::with_capacity(raw_ops.len());
    for (index, raw) in raw_ops.into_iter().enumerate() {
        checked.push(parse_operation(&state, index, raw, query_ns.as_deref()).await?);
    }
    for (i, c) in checked.iter().enumerate() {
        if let Some(first) = checked[..i]
            .iter()
            .find(|o| o.kind == c.kind && o.namespace == c.namespace && o.name == c.name)
        {
            return Err(ApiError::invalid(
                format!("operations[{i}]"),
                format!(
                    "{} {}/{} is already in operations[{}]: one operation per object",
                    c.kind, c.namespace, c.name, first.index
                ),
            ));
        }
    }
    let _write = state.write_lock.lock().await;
    for c in &checked {
        check_preconditions(&state, c)
            .await
            .map_err(|e| in_operation(e, c.index, &c.what()))?;
    }
    if dry_run {
        let results: Vec<Value> = checked.iter().map(|c| result(c, None)).collect();
        return Ok(Json(json!({"dryRun": true, "results": results})).into_response());
    }

    // Phase 2: write in dependency order; undo everything on the first failure.
    let mut order: Vec<&Checked> = checked.iter().collect();
    order.sort_by_key(|c| c.rank());
    let mut done = Vec::with_capacity(order.len());
    let mut versions = vec![None; checked.len()];
    for c in order {
        match run_one(&state, c).await {
            Ok(d) => {
                if !d.deleted {
                    versions[c.index] = state
                        .store
                        .get(c.kind, &c.namespace, &c.name)
                        .await
                        .ok()
                        .flatten()
                        .map(|o| o.resource_version);
                }
                done.push(d);
            }
            Err(e) => {
                let written = done.len();
                let failures = roll_back(&state, done).await;
                tracing::warn!(operation = %c.what(), error = %e, written, "batch failed; writes undone");
                let e = in_operation(e, c.index, &c.what());
                if failures.is_empty() {
                    return Err(e);
                }
                return Err(ApiError::Internal(format!(
                    "{e}; undoing the batch's earlier writes failed for {}",
                    failures.join("; ")
                )));
            }
        }
    }
    let latest = state.store.current_version().await.unwrap_or(0);
    drop(_write);
    tracing::info!(
        operations = checked.len(),
        resource_version = latest,
        "batch applied"
    );
    state.settle(Kind::Function, latest).await;
    let results: Vec<Value> = checked
        .iter()
        .map(|c| result(c, versions[c.index]))
        .collect();
    Ok(Json(json!({"dryRun": false, "results": results})).into_response())
}

fn result(c: &Checked, version: Option<u64>) -> Value {
    let mut r = json!({
        "op": c.op.as_str(),
        "kind": c.kind.as_str(),
        "namespace": c.namespace,
        "name": c.name,
    });
    if let Some(v) = version {
        r["resourceVersion"] = Value::String(v.to_string());
    }
    r
}
