//! A stateful, in-memory fake of the Kubernetes API server, usable as a [`kube::Client`]
//! ([`FakeApiServer::client`]): where `mock.rs` answers what each test scripts, this one keeps
//! the objects and answers as the API server does, so the code under test meets the server's
//! semantics (preconditions, conflicts, the status subresource, finalizers, watches from a
//! resource version, `410 Gone`) rather than a test's idea of them.
//!
//! # What it models
//!
//! - **Storage like etcd behind the API server**: objects keyed by (group/version/resource,
//!   namespace, name), one global, monotonic revision counter (every write takes the next one,
//!   whatever the resource), and an event log of the last [`FakeConfig::history`] changes.
//!   Older history is compacted: a watch from a version before it gets `410 Gone`, as does a
//!   watcher that fell that far behind while its stream was not read.
//! - **Resources**: `pods` (status subresource; graceful deletion; a DELETE answers with the
//!   object), `secrets` and `configmaps` (`stringData` merged into base64 `data`), `leases`
//!   (`coordination.k8s.io/v1`), `deployments` (`apps/v1`, status subresource, `generation`) and
//!   every `kappa.dev/v1` kind as a custom resource with a status subresource: `status` is
//!   dropped on create and by writes to the main resource, written only through `/status` (which
//!   changes nothing else), and `metadata.generation` starts at 1 and moves only when the
//!   content outside `metadata` and `status` changes. Any other path answers 404 as the real
//!   server does for an unknown resource.
//! - **Verbs**: GET one (also `/status`; a pod's `/log` answers what [`FakeApiServer::set_log`]
//!   set); LIST with `labelSelector` (`k=v`, `k==v`, `k!=v`,
//!   `k in (..)`, `k notin (..)`, `k`, `!k`), `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`), `limit`/`continue` paging, the list's `metadata.resourceVersion`, and
//!   the metadata-only form (`Accept: ...;as=PartialObjectMetadataList`); POST (409
//!   `AlreadyExists`, also while an object of that name is terminating; `generateName`); PUT
//!   (409 `Conflict` on a stale `metadata.resourceVersion`, none means unconditional; `uid` and
//!   `creationTimestamp` kept, a different `uid` is 422); PATCH with
//!   `application/merge-patch+json` (RFC 7386) and `application/json-patch+json` (RFC 6902,
//!   including `test`), on the object or `/status`, a `resourceVersion` in the patched result
//!   acting as a precondition; DELETE with `preconditions.uid` / `preconditions.resourceVersion`
//!   (409 `Conflict` "Precondition failed"), `gracePeriodSeconds`.
//! - **No-op writes**: a write whose result equals the stored object is not a write: no new
//!   revision, no event (etcd's `GuaranteedUpdate` short-circuits identical bytes).
//! - **Finalizers**: deleting an object with `metadata.finalizers` only sets
//!   `deletionTimestamp` (and bumps `generation`); it is removed (a `DELETED` event) by the
//!   update or patch that empties its finalizers; new finalizers cannot be added to it (422).
//! - **Graceful pod deletion**: a pod bound to a node (`spec.nodeName`) and not finished is
//!   deleted in two steps, as the kubelet would confirm: DELETE with a grace period sets
//!   `deletionTimestamp`, a DELETE with `gracePeriodSeconds: 0` removes it. Unbound pods go at
//!   once (the real server does the same).
//! - **WATCH** (`?watch=true`): `resourceVersion=N` streams every change after N; unset or `0`
//!   first sends the current objects as synthetic `ADDED` events, then changes. Events are
//!   filtered by namespace and selectors, with the server's translation of objects entering or
//!   leaving a label selection into `ADDED`/`DELETED`. `allowWatchBookmarks=true` adds a
//!   `BOOKMARK` every [`FakeConfig::bookmark_interval`] of quiet; `timeoutSeconds` ends the
//!   stream. A too-old version is answered like the watch cache does: `200`, then one `ERROR`
//!   event with a `410 Expired` Status (`too old resource version: N (M)`), then the end.
//! - **Errors** are `kind: Status` bodies with the real reason, code, message and details
//!   (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Expired`,
//!   `MethodNotAllowed`, `UnsupportedMediaType`).
//!
//! # What it does not model (simplifications)
//!
//! - No schema validation, pruning or defaulting of custom resources (a real server prunes
//!   unknown fields with Kappa's CRDs; those schemas are checked by `kubernetes-validate`),
//!   no name validation, no admission, no RBAC.
//! - Namespaces are not objects: every namespace exists (a real server answers 404 to a create
//!   in a namespace that does not exist).
//! - One history for all resources, bounded by count, like etcd's compaction; the real watch
//!   cache keeps one window per resource. Synthetic `ADDED` events come in resource-version
//!   order (the real server promises no order).
//! - Paged lists are not snapshots: later pages read the current state, with the first page's
//!   `resourceVersion` (a watch from it still sees every change after it).
//! - No garbage collector (`ownerReferences` and `propagationPolicy` have no effect), no
//!   `managedFields`, no server-side apply or strategic merge patch (415), no `dryRun`, no
//!   `sendInitialEvents`, no `resourceVersionMatch=Exact` (400), no DELETE of a collection.
//! - Watchers are never cut off for being slow (the real cache closes them when its buffer
//!   fills); a stream that is not read just falls behind, and gets 410 once the history it
//!   needs is compacted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use kappa_kube::crd::{CRD_KINDS, GROUP, VERSION};
use kube::Client;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// Tuning of a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// How many changes the event log keeps (at least 1); a watch from before them gets 410.
    pub history: usize,
    /// Quiet time after which a watch that allows bookmarks gets a `BOOKMARK`.
    pub bookmark_interval: Duration,
    /// The revision of the empty server: the first write gets the next one. A real API
    /// server is never at 0 (etcd starts at 1 and the server writes its own objects first),
    /// and `resourceVersion=0` means "any version" to it, so tests that watch from the
    /// beginning start the fake higher; no history exists before it (a watch from an older
    /// version gets 410).
    pub start_revision: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            history: 10_000,
            bookmark_interval: Duration::from_secs(1),
            start_revision: 0,
        }
    }
}

/// One request the fake served.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Recorded {
    /// The value of a query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        query_pairs(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether this was a watch request.
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }
}

/// The fake server: a handle on its state. Cheap to clone; every clone and every client from
/// [`FakeApiServer::client`] share the same objects.
#[derive(Clone)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
}

struct Shared {
    config: FakeConfig,
    /// The objects, the log and the counter. A std mutex: every section is short and
    /// synchronous (no `.await` inside), including the ones watch streams take to read the log.
    state: Mutex<State>,
    /// The latest revision, published after every write so watch streams wake up.
    revisions: watch::Sender<u64>,
    /// Bumped by [`FakeApiServer::end_watches`]: every open watch ends.
    epochs: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Change>,
    /// The newest revision no longer in the log (0: nothing compacted).
    compacted: u64,
    requests: Vec<Recorded>,
    open_watches: usize,
    /// Container logs served at `pods/<name>/log?container=<c>`: (namespace, pod, container).
    logs: BTreeMap<(String, String, String), String>,
}

/// Where an object lives: resource (`group/version/plural`), namespace, name.
type Key = (String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

struct Change {
    revision: u64,
    key: Key,
    change: ChangeType,
    /// The object before the change (none for `Added`).
    before: Option<Value>,
    /// The object after it; for `Deleted`, its last state with the deletion's revision.
    after: Value,
}

/// A resource type the fake serves.
#[derive(Debug, Clone, Copy)]
struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    /// `status` is written only through `/status`.
    status_subresource: bool,
    /// `metadata.generation` is kept (1 on create, +1 on a content change).
    generation: bool,
    /// A DELETE answers with the deleted object rather than a Status (pods do).
    returns_deleted_object: bool,
    /// Deletion waits for the kubelet (pods bound to a node).
    graceful: bool,
}

impl Resource {
    fn id(&self) -> String {
        format!("{}/{}/{}", self.group, self.version, self.plural)
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `functions.kappa.dev` or `pods`, as messages name it.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn is_custom(&self) -> bool {
        self.group == GROUP
    }
}

const BUILT_IN: [Resource; 5] = [
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        status_subresource: true,
        generation: false,
        returns_deleted_object: true,
        graceful: true,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        status_subresource: false,
        generation: false,
        returns_deleted_object: false,
        graceful: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        status_subresource: false,
        generation: false,
        returns_deleted_object: false,
        graceful: false,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        status_subresource: false,
        generation: false,
        returns_deleted_object: false,
        graceful: false,
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        status_subresource: true,
        generation: true,
        returns_deleted_object: false,
        graceful: false,
    },
];

fn resource(group: &str, version: &str, plural: &str) -> Option<Resource> {
    if let Some(r) = BUILT_IN
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
    {
        return Some(*r);
    }
    if group != GROUP || version != VERSION {
        return None;
    }
    CRD_KINDS
        .into_iter()
        .find(|k| k.plural() == plural)
        .map(|k| Resource {
            group: GROUP,
            version: VERSION,
            plural: k.plural(),
            kind: k.as_str(),
            status_subresource: true,
            generation: true,
            returns_deleted_object: false,
            graceful: false,
        })
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new(FakeConfig::default())
    }
}

impl FakeApiServer {
    /// An empty server (at [`FakeConfig::start_revision`]).
    pub fn new(config: FakeConfig) -> Self {
        let config = FakeConfig {
            history: config.history.max(1),
            ..config
        };
        let state = State {
            revision: config.start_revision,
            compacted: config.start_revision,
            ..State::default()
        };
        Self {
            shared: Arc::new(Shared {
                revisions: watch::Sender::new(config.start_revision),
                config,
                state: Mutex::new(state),
                epochs: watch::Sender::new(0),
            }),
        }
    }

    /// A client on this server (default namespace `default`). Must be called inside a tokio
    /// runtime (the client spawns its request buffer).
    pub fn client(&self) -> Client {
        Client::new(
            FakeService {
                shared: Arc::clone(&self.shared),
            },
            "default",
        )
    }

    /// Sets what `GET pods/<pod>/log?container=<container>` answers (the kubelet's part).
    pub fn set_log(&self, ns: &str, pod: &str, container: &str, text: &str) {
        self.shared.lock().logs.insert(
            (ns.to_string(), pod.to_string(), container.to_string()),
            text.to_string(),
        );
    }

    /// The latest revision.
    pub fn revision(&self) -> u64 {
        self.shared.lock().revision
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// The stored object at `path` (`/api/v1/namespaces/fns/pods/x`), if any.
    pub fn object(&self, path: &str) -> Option<Value> {
        let Some(Target::Object {
            resource, ns, name, ..
        }) = route(path)
        else {
            return None;
        };
        self.shared
            .lock()
            .objects
            .get(&(resource.id(), ns, name))
            .cloned()
    }

    /// Forgets all history (like an etcd compaction at the current revision): a watch from any
    /// earlier version, or one still behind, gets 410.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.log.clear();
        state.compacted = state.revision;
    }

    /// Ends every open watch stream (like an API server restart); clients re-watch.
    pub fn end_watches(&self) {
        self.shared.epochs.send_modify(|e| *e += 1);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------------------------
// The tower service

/// The response body: a whole JSON document, or a watch stream.
pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

/// The fake as a `tower::Service`, which is what [`kube::Client::new`] wraps.
#[derive(Clone)]
pub struct FakeService {
    shared: Arc<Shared>,
}

impl tower::Service<Request<kube::client::Body>> for FakeService {
    type Response = Response<FakeBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<FakeBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            Ok(serve(&shared, &parts, &body))
        })
    }
}

fn full(status: StatusCode, value: &Value) -> Response<FakeBody> {
    let bytes = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
    let mut response = Response::new(http_body_util::Full::new(bytes).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// An error the server answers with: a `kind: Status` body.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }

    fn response(&self) -> Response<FakeBody> {
        full(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.status(),
        )
    }

    fn details(r: &Resource, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": r.plural});
        if !r.group.is_empty() {
            d["group"] = json!(r.group);
        }
        d
    }

    fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
        )
        .with_details(Self::details(r, name))
    }

    fn already_exists(r: &Resource, name: &str, terminating: bool) -> Self {
        let prefix = if terminating {
            "object is being deleted: "
        } else {
            ""
        };
        Self::new(
            409,
            "AlreadyExists",
            format!("{prefix}{} \"{name}\" already exists", r.qualified()),
        )
        .with_details(Self::details(r, name))
    }

    fn conflict(r: &Resource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                r.qualified()
            ),
        )
        .with_details(Self::details(r, name))
    }

    fn stale(r: &Resource, name: &str) -> Self {
        Self::conflict(
            r,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    fn invalid(r: &Resource, name: &str, field: &str, message: &str) -> Self {
        let group = if r.group.is_empty() {
            String::new()
        } else {
            format!(".{}", r.group)
        };
        Self::new(
            422,
            "Invalid",
            format!(
                "{}{group} \"{name}\" is invalid: {field}: {message}",
                r.kind
            ),
        )
        .with_details(json!({
            "name": name, "group": r.group, "kind": r.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}],
        }))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

enum Target {
    Collection {
        resource: Resource,
        ns: Option<String>,
    },
    Object {
        resource: Resource,
        ns: String,
        name: String,
        subresource: Option<String>,
    },
}

fn route(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    match rest {
        [plural] => Some(Target::Collection {
            resource: resource(group, version, plural)?,
            ns: None,
        }),
        ["namespaces", ns, plural] => Some(Target::Collection {
            resource: resource(group, version, plural)?,
            ns: Some((*ns).to_string()),
        }),
        ["namespaces", ns, plural, name] => Some(Target::Object {
            resource: resource(group, version, plural)?,
            ns: (*ns).to_string(),
            name: (*name).to_string(),
            subresource: None,
        }),
        ["namespaces", ns, plural, name, sub] => Some(Target::Object {
            resource: resource(group, version, plural)?,
            ns: (*ns).to_string(),
            name: (*name).to_string(),
            subresource: Some((*sub).to_string()),
        }),
        _ => None,
    }
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }
}

fn serve(shared: &Arc<Shared>, parts: &http::request::Parts, body: &[u8]) -> Response<FakeBody> {
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    shared.lock().requests.push(Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
    });
    let query = Query(query_pairs(&raw_query));
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let metadata_only = header(http::header::ACCEPT).contains("as=PartialObjectMetadata");
    let Some(target) = route(&path) else {
        return ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
        .response();
    };
    if let (
        &Method::GET,
        Target::Object {
            resource,
            ns,
            name,
            subresource: Some(sub),
        },
    ) = (&parts.method, &target)
        && sub == "log"
        && resource.plural == "pods"
    {
        let state = shared.lock();
        if !state
            .objects
            .contains_key(&(resource.id(), ns.clone(), name.clone()))
        {
            return ApiError::not_found(resource, name).response();
        }
        let container = query.get("container").unwrap_or_default().to_string();
        let text = state
            .logs
            .get(&(ns.clone(), name.clone(), container))
            .cloned()
            .unwrap_or_default();
        let mut response =
            Response::new(http_body_util::Full::new(Bytes::from(text)).boxed_unsync());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        return response;
    }
    let result = match (&parts.method, target) {
        (&Method::GET, Target::Collection { resource, ns }) if query.flag("watch") => {
            return watch_response(shared, resource, ns, &query);
        }
        (&Method::GET, Target::Collection { resource, ns }) => {
            list(shared, &resource, ns.as_deref(), &query, metadata_only)
        }
        (
            &Method::GET,
            Target::Object {
                resource,
                ns,
                name,
                subresource,
            },
        ) if subresource.is_none() || subresource.as_deref() == Some("status") => {
            let key = (resource.id(), ns, name.clone());
            match shared.lock().objects.get(&key) {
                Some(o) if metadata_only => Ok((200, partial_metadata(o))),
                Some(o) => Ok((200, o.clone())),
                None => Err(ApiError::not_found(&resource, &name)),
            }
        }
        (
            &Method::POST,
            Target::Collection {
                resource,
                ns: Some(ns),
            },
        ) => {
            parse_body(body).and_then(|object| write(shared, |s| create(s, &resource, &ns, object)))
        }
        (
            &Method::PUT,
            Target::Object {
                resource,
                ns,
                name,
                subresource,
            },
        ) => match sub_kind(&resource, subresource.as_deref(), &name) {
            Ok(sub) => parse_body(body).and_then(|object| {
                write(shared, |s| update(s, &resource, &ns, &name, object, sub))
            }),
            Err(e) => Err(e),
        },
        (
            &Method::PATCH,
            Target::Object {
                resource,
                ns,
                name,
                subresource,
            },
        ) => match sub_kind(&resource, subresource.as_deref(), &name) {
            Ok(sub) => {
                let content_type = header(http::header::CONTENT_TYPE);
                write(shared, |s| {
                    patch(s, &resource, &ns, &name, sub, &content_type, body)
                })
            }
            Err(e) => Err(e),
        },
        (
            &Method::DELETE,
            Target::Object {
                resource,
                ns,
                name,
                subresource: None,
            },
        ) => {
            let options = if body.is_empty() {
                Ok(json!({}))
            } else {
                parse_body(body)
            };
            options.and_then(|options| {
                write(shared, |s| {
                    delete(s, &resource, &ns, &name, &options, &query)
                })
            })
        }
        (method, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
        )),
    };
    match result {
        Ok((code, value)) => full(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), &value),
        Err(e) => e.response(),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

/// Runs a write under the lock, then wakes the watchers if the revision moved.
fn write(
    shared: &Shared,
    f: impl FnOnce(&mut Writer<'_>) -> Result<(u16, Value), ApiError>,
) -> Result<(u16, Value), ApiError> {
    let (result, revision) = {
        let mut state = shared.lock();
        let mut writer = Writer {
            state: &mut state,
            history: shared.config.history,
        };
        let result = f(&mut writer);
        (result, state.revision)
    };
    shared.revisions.send_if_modified(|r| {
        let moved = *r != revision;
        *r = revision;
        moved
    });
    result
}

/// The state during one write.
struct Writer<'a> {
    state: &'a mut State,
    history: usize,
}

impl Writer<'_> {
    /// Records a change at the next revision and returns the object as stored.
    fn commit(
        &mut self,
        key: Key,
        change: ChangeType,
        before: Option<Value>,
        mut after: Value,
    ) -> Value {
        self.state.revision += 1;
        let revision = self.state.revision;
        after["metadata"]["resourceVersion"] = json!(revision.to_string());
        match change {
            ChangeType::Deleted => {
                self.state.objects.remove(&key);
            }
            ChangeType::Added | ChangeType::Modified => {
                self.state.objects.insert(key.clone(), after.clone());
            }
        }
        self.state.log.push_back(Change {
            revision,
            key,
            change,
            before,
            after: after.clone(),
        });
        while self.state.log.len() > self.history {
            if let Some(dropped) = self.state.log.pop_front() {
                self.state.compacted = dropped.revision;
            }
        }
        after
    }
}

/// Which part of an object a PUT or PATCH writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    Main,
    Status,
}

fn sub_kind(r: &Resource, sub: Option<&str>, name: &str) -> Result<Sub, ApiError> {
    match sub {
        None => Ok(Sub::Main),
        Some("status") if r.status_subresource => Ok(Sub::Status),
        Some(other) => Err(ApiError::not_found(r, &format!("{name}/{other}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

fn partial_metadata(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn list(
    shared: &Shared,
    r: &Resource,
    ns: Option<&str>,
    query: &Query,
    metadata_only: bool,
) -> Result<(u16, Value), ApiError> {
    if query.get("resourceVersionMatch") == Some("Exact") {
        return Err(ApiError::bad_request(
            "the fake API server does not model resourceVersionMatch=Exact",
        ));
    }
    let filter = Filter::new(*r, ns.map(str::to_string), query)?;
    let limit = match query.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?,
        )
        .filter(|l| *l > 0),
        None => None,
    };
    // The continue token: "<list revision>/<namespace>/<name>" of the last item sent.
    let (revision, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            match (
                parts.next().and_then(|r| r.parse::<u64>().ok()),
                parts.next(),
                parts.next(),
            ) {
                (Some(rv), Some(ns), Some(name)) => {
                    (Some(rv), Some((ns.to_string(), name.to_string())))
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid continue token {token:?}"
                    )));
                }
            }
        }
        None => (None, None),
    };
    let state = shared.lock();
    let revision = revision.unwrap_or(state.revision);
    let id = r.id();
    let mut items = Vec::new();
    let mut more = None;
    for ((res, ns, name), object) in &state.objects {
        if *res != id || !filter.matches(object) {
            continue;
        }
        if let Some((after_ns, after_name)) = &after
            && (ns, name) <= (after_ns, after_name)
        {
            continue;
        }
        if limit.is_some_and(|l| items.len() == l) {
            more = Some(items_key(&items));
            break;
        }
        items.push(object.clone());
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            if metadata_only {
                partial_metadata(&o)
            } else {
                if !r.is_custom()
                    && let Some(m) = o.as_object_mut()
                {
                    // Built-in lists carry their items without apiVersion/kind.
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            }
        })
        .collect();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(Some((ns, name))) = more {
        metadata["continue"] = json!(format!("{revision}/{ns}/{name}"));
    }
    let (api_version, kind) = if metadata_only {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (r.api_version(), format!("{}List", r.kind))
    };
    Ok((
        200,
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}),
    ))
}

fn items_key(items: &[Value]) -> Option<(String, String)> {
    let last = items.last()?;
    Some((
        last["metadata"]["namespace"].as_str()?.to_string(),
        last["metadata"]["name"].as_str()?.to_string(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Writes

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str().filter(|s| !s.is_empty())
}

fn finalizers(object: &Value) -> BTreeSet<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn is_terminating(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
}

/// Everything but `metadata` and `status`: what `generation` tracks.
fn content(object: &Value) -> Value {
    let mut c = object.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

/// Checks `apiVersion`/`kind` of a body and fills them in when absent.
fn check_type(r: &Resource, object: &mut Value) -> Result<(), ApiError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    for (field, expected) in [
        ("apiVersion", r.api_version()),
        ("kind", r.kind.to_string()),
    ] {
        match map.get(field).and_then(Value::as_str) {
            None => {
                map.insert(field.to_string(), Value::String(expected));
            }
            Some(got) if got == expected => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the object ({got}) does not match the {field} of the resource ({expected})"
                )));
            }
        }
    }
    match map.get("metadata") {
        Some(Value::Object(_)) => Ok(()),
        None => {
            map.insert("metadata".into(), json!({}));
            Ok(())
        }
        Some(_) => Err(ApiError::bad_request("metadata must be an object")),
    }
}

/// Secrets: `stringData` is write-only and merged into `data` (base64).
fn merge_string_data(r: &Resource, object: &mut Value) {
    if r.kind != "Secret" {
        return;
    }
    let Some(Value::Object(string_data)) =
        object.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    if !object["data"].is_object() {
        object["data"] = json!({});
    }
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default().to_string();
        object["data"][k] = Value::String(b64.encode(text));
    }
}

fn create(
    w: &mut Writer<'_>,
    r: &Resource,
    ns: &str,
    mut object: Value,
) -> Result<(u16, Value), ApiError> {
    check_type(r, &mut object)?;
    match meta_str(&object, "namespace") {
        Some(body_ns) if body_ns != ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        _ => {}
    }
    let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
        (Some(name), _) => name.to_string(),
        (None, Some(prefix)) => {
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(5)
                .collect();
            format!("{prefix}{suffix}")
        }
        (None, None) => {
            return Err(ApiError::invalid(
                r,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
    };
    let key = (r.id(), ns.to_string(), name.clone());
    if let Some(existing) = w.state.objects.get(&key) {
        return Err(ApiError::already_exists(r, &name, is_terminating(existing)));
    }
    let meta = &mut object["metadata"];
    meta["name"] = json!(name);
    meta["namespace"] = json!(ns);
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now());
    if let Some(m) = meta.as_object_mut() {
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "generation",
        ] {
            m.remove(field);
        }
    }
    if r.generation {
        object["metadata"]["generation"] = json!(1);
    }
    if r.status_subresource
        && let Some(m) = object.as_object_mut()
    {
        m.remove("status");
    }
    if r.kind == "Pod" {
        object["status"] = json!({"phase": "Pending"});
    }
    merge_string_data(r, &mut object);
    let stored = w.commit(key, ChangeType::Added, None, object);
    Ok((201, stored))
}

fn update(
    w: &mut Writer<'_>,
    r: &Resource,
    ns: &str,
    name: &str,
    mut object: Value,
    sub: Sub,
) -> Result<(u16, Value), ApiError> {
    check_type(r, &mut object)?;
    let key = (r.id(), ns.to_string(), name.to_string());
    let old = w
        .state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(r, name))?;
    if let Some(body_name) = meta_str(&object, "name")
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(body_ns) = meta_str(&object, "namespace")
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if let Some(rv) = meta_str(&object, "resourceVersion")
        && Some(rv) != meta_str(&old, "resourceVersion")
    {
        return Err(ApiError::stale(r, name));
    }
    if let Some(uid) = meta_str(&object, "uid")
        && Some(uid) != meta_str(&old, "uid")
    {
        return Err(ApiError::invalid(
            r,
            name,
            "metadata.uid",
            &format!("Invalid value: {uid:?}: field is immutable"),
        ));
    }
    let mut next = match sub {
        Sub::Status => {
            // Only status is taken from the request.
            let mut next = old.clone();
            match object.get("status") {
                Some(status) => next["status"] = status.clone(),
                None => {
                    if let Some(m) = next.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            next
        }
        Sub::Main => {
            let mut next = object;
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old["metadata"].get(field) {
                    Some(v) => next["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = next["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if let Some(m) = next["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            if r.status_subresource {
                match old.get("status") {
                    Some(status) => next["status"] = status.clone(),
                    None => {
                        if let Some(m) = next.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            merge_string_data(r, &mut next);
            if r.generation && content(&next) != content(&old) {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
                next["metadata"]["generation"] = json!(generation + 1);
            }
            if is_terminating(&old) {
                let before = finalizers(&old);
                if let Some(added) = finalizers(&next).difference(&before).next() {
                    return Err(ApiError::invalid(
                        r,
                        name,
                        "metadata.finalizers",
                        &format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [{added:?}]"
                        ),
                    ));
                }
            }
            next
        }
    };
    next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if next == old {
        // No change, no write: etcd's GuaranteedUpdate keeps the revision.
        return Ok((200, old));
    }
    let stored = w.commit(key.clone(), ChangeType::Modified, Some(old), next);
    if is_terminating(&stored) && finalizers(&stored).is_empty() {
        // The last finalizer is gone: the deletion completes.
        let grace = stored["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        if grace == 0 {
            w.commit(
                key,
                ChangeType::Deleted,
                Some(stored.clone()),
                stored.clone(),
            );
        }
    }
    Ok((200, stored))
}

fn patch(
    w: &mut Writer<'_>,
    r: &Resource,
    ns: &str,
    name: &str,
    sub: Sub,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let key = (r.id(), ns.to_string(), name.to_string());
    let current = w
        .state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(r, name))?;
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let patched = match media {
        "application/merge-patch+json" => {
            let patch = parse_body(body)?;
            let mut target = current;
            merge_patch(&mut target, &patch);
            target
        }
        "application/json-patch+json" => {
            let ops = parse_body(body)?;
            json_patch(current, &ops)?
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types by the fake API server: application/json-patch+json, application/merge-patch+json (got {other:?})"
                ),
            ));
        }
    };
    update(w, r, ns, name, patched, sub)
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(422, "Invalid", message)
}

/// Splits a JSON pointer into its parent and its last token (unescaped).
fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "invalid JSON pointer {path:?}"
        )));
    }
    let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
    Ok((
        parent.to_string(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn json_add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| {
                        unprocessable(format!("add operation: index {last:?} out of bounds"))
                    })?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(unprocessable(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        ))),
    }
}

fn json_remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || {
        unprocessable(format!(
            "remove operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or_else(missing),
        Some(Value::Array(items)) => {
            let index = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < items.len())
                .ok_or_else(missing)?;
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 (add, remove, replace, move, copy, test).
fn json_patch(mut doc: Value, ops: &Value) -> Result<Value, ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    for op in ops {
        let name = op["op"].as_str().unwrap_or_default();
        let path = op["path"]
            .as_str()
            .ok_or_else(|| ApiError::bad_request(format!("operation {op} has no path")))?;
        match name {
            "add" => json_add(&mut doc, path, op["value"].clone())?,
            "remove" => {
                json_remove(&mut doc, path)?;
            }
            "replace" => {
                let target = doc.pointer_mut(path).ok_or_else(|| {
                    unprocessable(format!(
                        "replace operation does not apply: doc is missing key: {path:?}"
                    ))
                })?;
                *target = op["value"].clone();
            }
            "move" | "copy" => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| ApiError::bad_request(format!("operation {op} has no from")))?;
                let value = if name == "move" {
                    json_remove(&mut doc, from)?
                } else {
                    doc.pointer(from).cloned().ok_or_else(|| {
                        unprocessable(format!(
                            "copy operation does not apply: doc is missing from path: {from:?}"
                        ))
                    })?
                };
                json_add(&mut doc, path, value)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(unprocessable(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

fn delete(
    w: &mut Writer<'_>,
    r: &Resource,
    ns: &str,
    name: &str,
    options: &Value,
    query: &Query,
) -> Result<(u16, Value), ApiError> {
    let key = (r.id(), ns.to_string(), name.to_string());
    let old = w
        .state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(r, name))?;
    let preconditions = &options["preconditions"];
    if let Some(uid) = preconditions["uid"].as_str()
        && Some(uid) != meta_str(&old, "uid")
    {
        return Err(ApiError::conflict(
            r,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&old, "uid").unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = preconditions["resourceVersion"].as_str()
        && Some(rv) != meta_str(&old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            r,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta_str(&old, "resourceVersion").unwrap_or_default()
            ),
        ));
    }
    let grace = options["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let has_finalizers = !finalizers(&old).is_empty();
    let bound = r.graceful
        && old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        && !matches!(
            old["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
    if bound {
        let grace = grace
            .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        if grace > 0 {
            if is_terminating(&old) {
                return Ok((200, old));
            }
            let mut next = old.clone();
            let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
            next["metadata"]["deletionTimestamp"] =
                json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let stored = w.commit(key, ChangeType::Modified, Some(old), next);
            return Ok((200, stored));
        }
    }
    if has_finalizers {
        if is_terminating(&old) && old["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0)
        {
            return Ok((200, old));
        }
        let mut next = old.clone();
        if !is_terminating(&old)
            && let Some(generation) = old["metadata"]["generation"].as_i64()
        {
            next["metadata"]["generation"] = json!(generation + 1);
        }
        if !is_terminating(&old) {
            next["metadata"]["deletionTimestamp"] = json!(now());
        }
        next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let stored = w.commit(key, ChangeType::Modified, Some(old), next);
        return Ok((200, stored));
    }
    let deleted = w.commit(key, ChangeType::Deleted, Some(old.clone()), old);
    if r.returns_deleted_object {
        return Ok((200, deleted));
    }
    let mut details = ApiError::details(r, name);
    details["uid"] = deleted["metadata"]["uid"].clone();
    Ok((
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
               "details": details}),
    ))
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        }
    }
}

/// Splits on commas outside parentheses.
fn split_terms(selector: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_selector(selector: &str) -> Result<Vec<Requirement>, ApiError> {
    let bad = |term: &str| {
        ApiError::bad_request(format!(
            "unable to parse requirement: {term:?} in labelSelector {selector:?}"
        ))
    };
    split_terms(selector)
        .into_iter()
        .map(|term| {
            if let Some(key) = term.strip_prefix('!') {
                return Ok(Requirement::NotExists(key.trim().to_string()));
            }
            if let Some(open) = term.find('(') {
                let close = term.rfind(')').ok_or_else(|| bad(&term))?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let values: Vec<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                return match head.as_slice() {
                    [key, "in"] => Ok(Requirement::In((*key).to_string(), values)),
                    [key, "notin"] => Ok(Requirement::NotIn((*key).to_string(), values)),
                    _ => Err(bad(&term)),
                };
            }
            if let Some((k, v)) = term.split_once("!=") {
                return Ok(Requirement::NotEquals(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                return Ok(Requirement::Equals(k.trim().into(), v.trim().into()));
            }
            if term.contains(char::is_whitespace) {
                return Err(bad(&term));
            }
            Ok(Requirement::Exists(term))
        })
        .collect()
}

fn parse_field_selector(selector: &str) -> Result<Vec<(String, bool, String)>, ApiError> {
    split_terms(selector)
        .into_iter()
        .map(|term| {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector term {term:?}")));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace") {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field} (the fake API server knows metadata.name and metadata.namespace)"
                )));
            }
            Ok((field.to_string(), equal, value.trim().to_string()))
        })
        .collect()
}

/// What a list or watch selects.
struct Filter {
    resource: Resource,
    ns: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    fn new(resource: Resource, ns: Option<String>, query: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            resource,
            ns,
            labels: parse_label_selector(query.get("labelSelector").unwrap_or_default())?,
            fields: parse_field_selector(query.get("fieldSelector").unwrap_or_default())?,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(ns) = &self.ns
            && meta["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        let empty = Map::new();
        let labels = meta["labels"].as_object().unwrap_or(&empty);
        if !self.labels.iter().all(|r| r.matches(labels)) {
            return false;
        }
        self.fields.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => meta["name"].as_str(),
                _ => meta["namespace"].as_str(),
            };
            (actual == Some(value.as_str())) == *equal
        })
    }

    /// The watch event a change is for this watcher, if any: objects entering the selection
    /// are `ADDED`, leaving it `DELETED` (as the watch cache does).
    fn event(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.key.0 != self.resource.id() {
            return None;
        }
        let was = change.before.as_ref().is_some_and(|b| self.matches(b));
        let is = self.matches(&change.after);
        let kind = match change.change {
            ChangeType::Added if is => "ADDED",
            ChangeType::Deleted if was => "DELETED",
            ChangeType::Modified => match (was, is) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            },
            _ => return None,
        };
        Some((kind, change.after.clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Watch

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn watch_response(
    shared: &Arc<Shared>,
    resource: Resource,
    ns: Option<String>,
    query: &Query,
) -> Response<FakeBody> {
    if query.flag("sendInitialEvents") {
        return ApiError::bad_request("the fake API server does not model sendInitialEvents")
            .response();
    }
    let filter = match Filter::new(resource, ns, query) {
        Ok(f) => f,
        Err(e) => return e.response(),
    };
    let requested = match query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
    {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return ApiError::bad_request(format!("invalid resource version {v:?}")).response();
            }
        },
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
    let bookmarks = query.flag("allowWatchBookmarks");
    let mut pending = VecDeque::new();
    let mut done = false;
    let cursor = {
        let mut state = shared.lock();
        state.open_watches += 1;
        match requested {
            // Unset or "0": the current objects as synthetic ADDED events, then changes.
            None => {
                let id = resource.id();
                let mut current: Vec<&Value> = state
                    .objects
                    .iter()
                    .filter(|((res, _, _), o)| *res == id && filter.matches(o))
                    .map(|(_, o)| o)
                    .collect();
                current.sort_by_key(|o| {
                    meta_str(o, "resourceVersion")
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                });
                for object in current {
                    pending.push_back(line(&json!({"type": "ADDED", "object": object})));
                }
                state.revision
            }
            Some(v) if v > state.revision => {
                pending.push_back(line(&json!({"type": "ERROR", "object": ApiError::new(
                    504, "Timeout",
                    format!("Too large resource version: {v}, current: {}", state.revision),
                ).with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]})).status()})));
                done = true;
                v
            }
            Some(v) => v,
        }
    };
    let stream = WatchStream {
        shared: Arc::clone(shared),
        filter,
        cursor,
        pending,
        done,
        bookmarks,
        next_bookmark: tokio::time::Instant::now() + shared.config.bookmark_interval,
        timeout,
        revisions: shared.revisions.subscribe(),
        epoch: *shared.epochs.borrow(),
        epochs: shared.epochs.subscribe(),
        _open: OpenWatch(Arc::clone(shared)),
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let bytes = stream.next_line().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), stream))
    })
    .boxed();
    let mut response = Response::new(http_body_util::StreamBody::new(body).boxed_unsync());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Counts an open watch for [`FakeApiServer::open_watches`] while it lives.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open_watches = state.open_watches.saturating_sub(1);
    }
}

struct WatchStream {
    shared: Arc<Shared>,
    filter: Filter,
    /// Every change up to this revision has been considered.
    cursor: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    bookmarks: bool,
    next_bookmark: tokio::time::Instant,
    timeout: Option<tokio::time::Instant>,
    revisions: watch::Receiver<u64>,
    epoch: u64,
    epochs: watch::Receiver<u64>,
    _open: OpenWatch,
}

impl WatchStream {
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.done {
                return None;
            }
            self.pull();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            let timeout = self.timeout;
            tokio::select! {
                changed = self.revisions.changed() => {
                    if changed.is_err() {
                        self.done = true;
                    }
                }
                _ = self.epochs.changed() => {}
                () = tokio::time::sleep_until(self.next_bookmark) => {
                    self.next_bookmark = tokio::time::Instant::now() + self.shared.config.bookmark_interval;
                    if self.bookmarks {
                        let r = &self.filter.resource;
                        self.pending.push_back(line(&json!({"type": "BOOKMARK", "object": {
                            "apiVersion": r.api_version(), "kind": r.kind,
                            "metadata": {"resourceVersion": self.cursor.to_string()},
                        }})));
                    }
                }
                () = async move {
                    match timeout {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.done = true;
                }
            }
        }
    }

    /// Reads the log after the cursor.
    fn pull(&mut self) {
        if *self.epochs.borrow_and_update() != self.epoch {
            self.done = true;
            return;
        }
        self.revisions.borrow_and_update();
        let state = self.shared.lock();
        if self.cursor < state.compacted {
            let status = ApiError::new(
                410,
                "Expired",
                format!(
                    "too old resource version: {} ({})",
                    self.cursor, state.compacted
                ),
            )
            .status();
            self.pending
                .push_back(line(&json!({"type": "ERROR", "object": status})));
            self.done = true;
            return;
        }
        let mut found = false;
        for change in state.log.iter().filter(|c| c.revision > self.cursor) {
            if let Some((kind, object)) = self.filter.event(change) {
                self.pending
                    .push_back(line(&json!({"type": kind, "object": object})));
                found = true;
            }
        }
        self.cursor = self.cursor.max(state.revision);
        if found {
            self.next_bookmark = tokio::time::Instant::now() + self.shared.config.bookmark_interval;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake's own tests: the semantics the other tests rely on.

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{
        Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
    };
    use kube::core::DynamicObject;

    fn function_api(client: Client) -> Api<DynamicObject> {
        Api::namespaced_with(
            client,
            "default",
            &kappa_kube::convert::api_resource(kappa_types::Kind::Function),
        )
    }

    fn function(name: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kappa.dev/v1", "kind": "Function",
            "metadata": {"name": name}, "spec": spec, "status": {"dropped": true},
        }))
        .unwrap()
    }

    fn api_error(e: kube::Error) -> kube::core::Status {
        match e {
            kube::Error::Api(s) => *s,
            other => panic!("expected an API error, got {other}"),
        }
    }

    #[tokio::test]
    async fn writes_take_global_revisions_and_keep_the_servers_metadata() {
        let server = FakeApiServer::default();
        let api = function_api(server.client());
        let created = api
            .create(&PostParams::default(), &function("a", json!({"x": 1})))
            .await
            .unwrap();
        assert_eq!(created.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(created.metadata.generation, Some(1));
        assert!(
            created.data.get("status").is_none(),
            "status is dropped on create"
        );
        let err = api_error(
            api.create(&PostParams::default(), &function("a", json!({})))
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
        assert_eq!(err.message, "functions.kappa.dev \"a\" already exists");

        let configmaps: Api<ConfigMap> = Api::namespaced(server.client(), "other");
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
        let cm = configmaps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
        assert_eq!(
            cm.metadata.resource_version.as_deref(),
            Some("2"),
            "one counter for all"
        );

        // A stale replace conflicts; an identical one is no write.
        let mut stale = created.clone();
        stale.metadata.resource_version = Some("0".into());
        let err = api_error(
            api.replace("a", &PostParams::default(), &stale)
                .await
                .unwrap_err(),
        );
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        let same = api
            .replace("a", &PostParams::default(), &created)
            .await
            .unwrap();
        assert_eq!(same.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(server.revision(), 2);

        // Status only through /status; generation only on content changes.
        let mut with_status = same.clone();
        with_status.data["status"] = json!({"ready": true});
        let replaced = api
            .replace("a", &PostParams::default(), &with_status)
            .await
            .unwrap();
        assert_eq!(
            replaced.metadata.resource_version.as_deref(),
            Some("1"),
            "status ignored"
        );
        let status = api
            .replace_status("a", &PostParams::default(), &with_status)
            .await
            .unwrap();
        assert_eq!(status.data["status"], json!({"ready": true}));
        assert_eq!(status.metadata.generation, Some(1));
        let patched = api
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"x": 2}})),
            )
            .await
            .unwrap();
        assert_eq!(patched.metadata.generation, Some(2));
        assert_eq!(patched.data["status"], json!({"ready": true}));
        assert_eq!(patched.metadata.uid, created.metadata.uid);
        assert_eq!(server.revision(), 4);
    }

    #[tokio::test]
    async fn deletes_honour_preconditions_and_finalizers() {
        let server = FakeApiServer::default();
        let api = function_api(server.client());
        let mut object = function("a", json!({}));
        object.metadata.finalizers = Some(vec!["kappa.dev/cleanup".into()]);
        let created = api.create(&PostParams::default(), &object).await.unwrap();
        let err = api_error(
            api.delete(
                "a",
                &DeleteParams::default().preconditions(kube::api::Preconditions {
                    resource_version: Some("7".into()),
                    uid: None,
                }),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("Precondition failed: ResourceVersion in precondition: 7"),
            "{}",
            err.message
        );

        // With a finalizer the object is only marked.
        let marked = api
            .delete("a", &DeleteParams::default())
            .await
            .unwrap()
            .left()
            .unwrap();
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(marked.metadata.generation, Some(2));
        let err = api_error(
            api.create(&PostParams::default(), &function("a", json!({})))
                .await
                .unwrap_err(),
        );
        assert!(
            err.message.starts_with("object is being deleted"),
            "{}",
            err.message
        );
        // A failing JSON-patch test changes nothing; emptying the finalizers deletes it.
        let guard = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "other"},
                           {"op": "remove", "path": "/metadata/finalizers/0"}]);
        let err = api_error(
            api.patch(
                "a",
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(guard).unwrap()),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code, 422);
        let remove = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "kappa.dev/cleanup"},
                            {"op": "remove", "path": "/metadata/finalizers/0"}]);
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(remove).unwrap()),
        )
        .await
        .unwrap();
        assert!(api.get_opt("a").await.unwrap().is_none());
        assert_eq!(
            server.revision(),
            4,
            "create, mark, finalizer removal, deletion"
        );

        // Without finalizers a custom resource's delete answers with a Status.
        api.create(&PostParams::default(), &function("b", json!({})))
            .await
            .unwrap();
        let status = api
            .delete("b", &DeleteParams::default())
            .await
            .unwrap()
            .right()
            .unwrap();
        assert_eq!(status.details.unwrap().name, "b");
        drop(created);
    }

    #[tokio::test]
    async fn watches_replay_filter_bookmark_and_expire() {
        let server = FakeApiServer::new(FakeConfig {
            history: 3,
            bookmark_interval: Duration::from_millis(50),
            ..FakeConfig::default()
        });
        let pods: Api<Pod> = Api::namespaced(server.client(), "fns");
        let pod = |name: &str, role: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"role": role}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}))
            .unwrap()
        };
        pods.create(&PostParams::default(), &pod("p1", "pool"))
            .await
            .unwrap();
        let params = WatchParams::default().labels("role in (pool,specialized)");
        let stream = pods.watch(&params, "1").await.unwrap();
        let mut stream = std::pin::pin!(stream);
        pods.create(&PostParams::default(), &pod("other", "none"))
            .await
            .unwrap();
        pods.patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "gone"}}})),
        )
        .await
        .unwrap();
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Deleted(p) => {
                assert_eq!(p.metadata.name.as_deref(), Some("p1"));
                assert_eq!(p.metadata.resource_version.as_deref(), Some("3"));
            }
            other => panic!("leaving the selection is DELETED, got {other:?}"),
        }
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, "3"),
            other => panic!("expected a bookmark, got {other:?}"),
        }
        // History keeps 3 changes: from 0 (any) works, from 1 is too old after two more.
        pods.create(&PostParams::default(), &pod("p2", "pool"))
            .await
            .unwrap();
        pods.create(&PostParams::default(), &pod("p3", "pool"))
            .await
            .unwrap();
        let stream = pods.watch(&WatchParams::default(), "1").await.unwrap();
        let events: Vec<_> = stream.try_collect().await.unwrap();
        match &events[..] {
            [WatchEvent::Error(e)] => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
                assert_eq!(e.message, "too old resource version: 1 (2)");
            }
            other => panic!("expected one 410 ERROR event, got {other:?}"),
        }
        let list = pods.list(&ListParams::default().limit(1)).await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.metadata.resource_version.as_deref(), Some("5"));
        let rest = pods
            .list(
                &ListParams::default().continue_token(list.metadata.continue_.as_deref().unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(rest.items.len(), 3, "the other pages");
    }
}
