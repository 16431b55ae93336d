//! The route table: an immutable value built from the store's HttpTriggers and Functions, and
//! swapped whole when they change.
//!
//! Invariants:
//! - Built only by the watcher task, never on the request path; requests read it through an
//!   `ArcSwap` without locking.
//! - Lookup cost does not depend on the number of routes: per host and method, one radix tree
//!   (`matchit`) for exact paths and templates and one for prefixes; among the routes that accept
//!   the request's method, a host-specific route wins over a host-less one, an exact or template
//!   route over a prefix, a longer prefix over a shorter one (a route for other methods never
//!   hides one for this method). `table/fuzz.rs` checks this against a reference matcher.
//! - Every entry carries what the request path needs of its function (id, generation, timeout,
//!   cached endpoint list and metric handles) so a request makes no further lookups.
//! - Conflicting triggers never fail the build: the later one (by creation time, then
//!   namespace/name) is skipped with a warning and shown as skipped in `/debug/routes`.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use kappa_core::{EndpointIndex, FunctionEndpoints, FunctionId};
use kappa_types::{FunctionReferenceType, HttpTriggerSpec};
use serde::Serialize;

use crate::metrics::FunctionMetrics;

mod index;

use index::{Leaf, MethodSet, Seg, Tree, Values, literal_shape, template_shape};

/// Name of the catch-all parameter prefix routes use internally (never exposed as a header).
const PREFIX_REST: &str = "kappa_prefix_rest";

/// A function as the request path needs it.
pub(crate) struct FunctionEntry {
    pub id: FunctionId,
    /// `false` when a trigger names a function the store does not have (404 on request).
    pub exists: bool,
    /// `metadata.generation`: only endpoints of this generation are admitted.
    pub generation: i64,
    /// `functionTimeout`: bounds the wait for the response head and the queue wait.
    pub timeout: Duration,
    /// `specializationTimeout`: bounds a cold start.
    pub specialization_timeout: Duration,
    /// The function's entry in the endpoint index, cached so a warm request needs no map lookup.
    /// The index never drops a function's entry, so this stays the live one (a miss re-checks).
    pub endpoints: Arc<FunctionEndpoints>,
    pub metrics: FunctionMetrics,
    pub name_header: HeaderValue,
    pub namespace_header: HeaderValue,
}

impl FunctionEntry {
    pub fn new(
        id: FunctionId,
        exists: bool,
        generation: i64,
        timeout_s: u64,
        spec_timeout_s: u64,
        index: &EndpointIndex,
    ) -> Self {
        let endpoints = if exists {
            index.entry(&id)
        } else {
            Arc::new(FunctionEndpoints::default())
        };
        let metrics = FunctionMetrics::new(&id.namespace, &id.name);
        let name_header =
            HeaderValue::from_str(&id.name).unwrap_or_else(|_| HeaderValue::from_static(""));
        let namespace_header =
            HeaderValue::from_str(&id.namespace).unwrap_or_else(|_| HeaderValue::from_static(""));
        Self {
            exists,
            generation,
            timeout: Duration::from_secs(timeout_s.max(1)),
            specialization_timeout: Duration::from_secs(spec_timeout_s.max(1)),
            endpoints,
            metrics,
            name_header,
            namespace_header,
            id,
        }
    }

    fn same_as(&self, exists: bool, generation: i64, timeout_s: u64, spec_timeout_s: u64) -> bool {
        self.exists == exists
            && self.generation == generation
            && self.timeout == Duration::from_secs(timeout_s.max(1))
            && self.specialization_timeout == Duration::from_secs(spec_timeout_s.max(1))
    }
}

/// What the store says about one function (the fields the router uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FunctionRecord {
    pub id: FunctionId,
    pub generation: i64,
    pub timeout_s: u64,
    pub spec_timeout_s: u64,
}

/// One HttpTrigger as the table keeps it: what routing and `/debug/routes` read, packed, not
/// the decoded spec (the table holds one per trigger, so its size is the route's size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TriggerRecord {
    /// `namespace/name`: the table's key for the trigger, shared with its map entry, its
    /// route target and the function → triggers map (one allocation for all of them).
    pub key: Arc<str>,
    /// Where the namespace ends in `key`.
    ns_len: u32,
    /// Which of the optional fields are set ([`HAS_HOST`] …).
    flags: u8,
    /// The creation time, host, relativeurl, prefix and function name (of a `name`
    /// reference), one after another: one allocation for the spec's strings.
    text: Box<str>,
    /// Where each field of `text` ends ([`CREATION`] …).
    ends: [u32; 5],
    /// The methods as written; empty for `GET` alone (what an empty list means), so the
    /// common case holds no allocation.
    methods: Box<[Box<str>]>,
    /// A `functionWeights` reference's functions and weights (by name); empty otherwise.
    weights: Box<[(Box<str>, u32)]>,
}

const CREATION: usize = 0;
const HOST: usize = 1;
const URL: usize = 2;
const PREFIX: usize = 3;
const FUNCTION: usize = 4;

const HAS_HOST: u8 = 1;
const HAS_URL: u8 = 2;
const HAS_PREFIX: u8 = 4;
const KEEP_PREFIX: u8 = 8;
const WEIGHTED: u8 = 16;

impl TriggerRecord {
    pub fn new(namespace: &str, name: &str, creation: &str, spec: HttpTriggerSpec) -> Self {
        let weighted = spec.functionref.kind == FunctionReferenceType::FunctionWeights;
        let mut flags = 0;
        let mut text = String::new();
        let mut ends = [0u32; 5];
        let fields = [
            (Some(creation), 0),
            (spec.host.as_deref(), HAS_HOST),
            (spec.relativeurl.as_deref(), HAS_URL),
            (spec.prefix.as_deref(), HAS_PREFIX),
            ((!weighted).then_some(spec.functionref.name.as_str()), 0),
        ];
        for (i, (value, flag)) in fields.into_iter().enumerate() {
            if let Some(value) = value {
                text.push_str(value);
                flags |= flag;
            }
            // Fields are bounded far below 4 GiB by validation; saturate rather than wrap.
            ends[i] = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        if spec.keep_prefix {
            flags |= KEEP_PREFIX;
        }
        let weights: Box<[(Box<str>, u32)]> = if weighted {
            flags |= WEIGHTED;
            spec.functionref
                .functionweights
                .into_iter()
                .map(|(n, w)| (n.into_boxed_str(), w))
                .collect()
        } else {
            Box::default()
        };
        // `["GET"]` is what an empty list means (`effective_methods`): kept empty.
        let methods: Box<[Box<str>]> = if spec.methods.len() == 1 && spec.methods[0] == "GET" {
            Box::default()
        } else {
            spec.methods
                .into_iter()
                .map(String::into_boxed_str)
                .collect()
        };
        Self {
            key: Arc::from(format!("{namespace}/{name}")),
            ns_len: u32::try_from(namespace.len()).unwrap_or(u32::MAX),
            flags,
            text: text.into_boxed_str(),
            ends,
            methods,
            weights,
        }
    }

    pub fn namespace(&self) -> &str {
        self.key.get(..self.ns_len as usize).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.key.get(self.ns_len as usize + 1..).unwrap_or_default()
    }

    fn field(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        self.text
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }

    fn optional(&self, i: usize, flag: u8) -> Option<&str> {
        (self.flags & flag != 0).then(|| self.field(i))
    }

    pub fn creation(&self) -> &str {
        self.field(CREATION)
    }

    pub fn host(&self) -> Option<&str> {
        self.optional(HOST, HAS_HOST)
    }

    pub fn relativeurl(&self) -> Option<&str> {
        self.optional(URL, HAS_URL)
    }

    pub fn prefix(&self) -> Option<&str> {
        self.optional(PREFIX, HAS_PREFIX)
    }

    pub fn keep_prefix(&self) -> bool {
        self.flags & KEEP_PREFIX != 0
    }

    /// The methods the trigger matches (`GET` when none are given).
    pub fn effective_methods(&self) -> impl Iterator<Item = &str> {
        let default: &[Box<str>] = &[];
        let (written, get) = if self.methods.is_empty() {
            (default, Some("GET"))
        } else {
            (&*self.methods, None)
        };
        get.into_iter().chain(written.iter().map(|m| &**m))
    }

    /// The weighted functions, `None` for a reference by name.
    pub fn weights(&self) -> Option<&[(Box<str>, u32)]> {
        (self.flags & WEIGHTED != 0).then_some(&*self.weights)
    }

    /// Every function the trigger may invoke.
    pub fn function_names(&self) -> Vec<&str> {
        match self.weights() {
            Some(weights) => weights.iter().map(|(n, _)| &**n).collect(),
            None => vec![self.field(FUNCTION)],
        }
    }

    /// The trigger's spec as far as the record keeps it (for tests).
    #[cfg(test)]
    pub fn spec(&self) -> HttpTriggerSpec {
        use kappa_types::FunctionReference;
        let functionref = match self.weights() {
            Some(weights) => FunctionReference {
                kind: FunctionReferenceType::FunctionWeights,
                name: String::new(),
                functionweights: weights.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
            },
            None => FunctionReference::name(self.field(FUNCTION)),
        };
        HttpTriggerSpec {
            host: self.host().map(str::to_owned),
            relativeurl: self.relativeurl().map(str::to_owned),
            prefix: self.prefix().map(str::to_owned),
            keep_prefix: self.keep_prefix(),
            methods: self.methods.iter().map(|m| m.to_string()).collect(),
            functionref,
        }
    }
}

/// How the forwarded path is derived from the request path.
pub(crate) enum PathMode {
    /// A `relativeurl` template: the function receives `/`; its parameters become headers.
    Template { params: Vec<TemplateParam> },
    /// A prefix: `strip` is the prefix to remove (without its trailing `/`), `None` to keep it.
    Prefix { strip: Option<Box<str>> },
}

/// Which function a route invokes.
pub(crate) enum Choice {
    One(Arc<FunctionEntry>),
    /// Boxed: most routes name one function, and every route target holds a `Choice`.
    Weighted(Box<Weighted>),
}

/// Cumulative weights: pick `r` in `0..total`, take the first entry whose bound exceeds it.
pub(crate) struct Weighted {
    total: u32,
    entries: Vec<(u32, Arc<FunctionEntry>)>,
    /// The last entry, so a pick never needs to index out of range.
    last: Arc<FunctionEntry>,
}

impl Choice {
    pub fn pick(&self) -> &Arc<FunctionEntry> {
        match self {
            Choice::One(entry) => entry,
            Choice::Weighted(w) => {
                let Weighted {
                    total,
                    entries,
                    last,
                } = &**w;
                let r = rand::random_range(0..*total);
                let i = entries.partition_point(|(bound, _)| *bound <= r);
                // `r < total`, the last bound, so `i` is always in range.
                entries.get(i).map_or(last, |(_, e)| e)
            }
        }
    }
}

/// A trigger compiled for the request path.
pub(crate) struct RouteTarget {
    /// `namespace/name` of the trigger, for logs.
    pub trigger: Arc<str>,
    /// The route as written (`/users/{id}`, or a prefix as `/api/*`): the `http.route` span
    /// attribute and the `path` label of the Fission-compatible metrics (bounded by triggers).
    pub route: Arc<str>,
    pub mode: PathMode,
    pub choice: Choice,
}

/// The trees of one host (or of every host): index 0 holds exact paths and templates, 1 the
/// prefixes' catch-all routes. One tree per tier serves every method: a lookup skips routes
/// that do not accept the request's method, so a more specific route for other methods never
/// hides a less specific one for this method (`POST /api/` does not turn `GET /api/x` away
/// from a `GET /` prefix route).
type Tiers = [Tree<Arc<RouteTarget>>; 2];

/// The parameters of a match, named by the route's pattern.
pub(crate) struct Params<'t, 'p> {
    names: &'t [Box<str>],
    values: Values<'p>,
}

impl<'t, 'p> Params<'t, 'p> {
    /// `(name, value)` pairs in the pattern's order.
    pub fn iter(&self) -> impl Iterator<Item = (&'t str, &'p str)> + '_ {
        self.names
            .iter()
            .map(|n| &**n)
            .zip(self.values.iter().copied())
    }

    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// The result of a lookup.
pub(crate) enum Lookup<'t, 'p> {
    Found {
        target: &'t Arc<RouteTarget>,
        params: Params<'t, 'p>,
    },
    /// The path matched but not the method: the methods that would.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// One trigger as `/debug/routes` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteInfo {
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relativeurl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub keep_prefix: bool,
    pub methods: Vec<String>,
    /// Function name → weight (1 for a single function).
    pub functions: Vec<(String, u32)>,
    /// Why the trigger is not routed, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A trigger's place in the precedence order: creation time, then namespace, then name.
#[derive(Clone)]
struct Order(Arc<TriggerRecord>);

impl Order {
    fn key(&self) -> (&str, &str, &str) {
        (self.0.creation(), self.0.namespace(), self.0.name())
    }
}

impl PartialEq for Order {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Order {}
impl PartialOrd for Order {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Order {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// One route of a trigger: tier, shape and parameter names.
type Pattern = (usize, Vec<Seg>, Arc<[Box<str>]>);

/// A trigger compiled into routes: transient, while it is placed (the table keeps only the
/// leaves; taking the routes out computes the patterns again from the record).
struct Compiled {
    host: Option<Arc<str>>,
    methods: MethodSet,
    /// (tier, shape, parameter names) of each route the trigger adds.
    patterns: Vec<Pattern>,
    target: Arc<RouteTarget>,
}

/// Where a trigger's routes go: its normalized host (`None`: every host) and its patterns.
fn placement(t: &TriggerRecord) -> Result<(Option<Arc<str>>, Vec<Pattern>), String> {
    let patterns = match (t.prefix(), t.relativeurl()) {
        (Some(prefix), _) => {
            if !prefix.starts_with('/') {
                return Err(format!("spec.prefix: {prefix:?} must start with '/'"));
            }
            let base = prefix.trim_end_matches('/');
            let with_slash = format!("{base}/");
            let mut patterns = vec![(0, literal_shape(prefix), NO_NAMES.clone())];
            if !prefix.ends_with('/') {
                patterns.push((0, literal_shape(&with_slash), NO_NAMES.clone()));
            }
            let mut rest = literal_shape(&with_slash);
            if let Some(last) = rest.last_mut() {
                *last = Seg::CatchAll;
            }
            patterns.push((1, rest, PREFIX_NAMES.clone()));
            patterns
        }
        (None, Some(url)) => {
            if !url.starts_with('/') {
                return Err(format!("spec.relativeurl: {url:?} must start with '/'"));
            }
            let (shape, names) = template_shape(url);
            let names: Arc<[Box<str>]> = if names.is_empty() {
                NO_NAMES.clone()
            } else {
                Arc::from(names)
            };
            vec![(0, shape, names)]
        }
        (None, None) => {
            return Err("spec.relativeurl: expected a relativeurl or a prefix".into());
        }
    };
    let host = t
        .host()
        .map(normalize_host)
        .filter(|h| !h.is_empty())
        .map(|h| Arc::from(h.as_ref()));
    Ok((host, patterns))
}

/// What the table holds of one trigger.
#[derive(Clone)]
struct TriggerState {
    record: Arc<TriggerRecord>,
    /// Whether the trigger is routed (its leaves are in the trees).
    routed: bool,
    /// Why it is not routed (`None` while routed or not yet placed).
    skipped: Option<Arc<str>>,
}

/// The route table: a persistent value. Requests read one version through an `ArcSwap`; the
/// watcher clones the current one (cheap: every part is shared), applies a store change to
/// the clone (O(log n) plus the nodes on the touched routes' paths) and swaps it in.
#[derive(Clone)]
pub(crate) struct RouteTable {
    any_host: Tiers,
    by_host: imbl::OrdMap<Arc<str>, Tiers>,
    /// Every function in the store, for direct invocation.
    functions: imbl::OrdMap<FunctionId, Arc<FunctionEntry>>,
    /// Entries for functions that triggers name but the store does not have (404 on request).
    missing: imbl::OrdMap<FunctionId, Arc<FunctionEntry>>,
    /// Every trigger, by `namespace/name`.
    triggers: imbl::OrdMap<Arc<str>, TriggerState>,
    /// Function (`namespace/name`, one allocation per entry) → the triggers naming it, so a
    /// function change re-targets only those.
    users: imbl::OrdMap<Arc<str>, Users>,
    /// The triggers not routed, in precedence order: retried when a route goes away.
    skipped: imbl::OrdSet<Order>,
}

/// The triggers (`namespace/name`) naming one function: most functions have one, held
/// inline without an allocation of its own.
#[derive(Clone)]
enum Users {
    One(Arc<str>),
    Many(Arc<[Arc<str>]>),
}

impl Users {
    fn as_slice(&self) -> &[Arc<str>] {
        match self {
            Users::One(key) => std::slice::from_ref(key),
            Users::Many(keys) => keys,
        }
    }

    fn from_vec(mut keys: Vec<Arc<str>>) -> Option<Self> {
        match keys.len() {
            0 => None,
            1 => keys.pop().map(Users::One),
            _ => Some(Users::Many(Arc::from(keys))),
        }
    }
}

/// Lower-cases a host and strips its port (`Example.com:8080` → `example.com`, `[::1]:80` → `[::1]`).
pub(crate) fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// A path parameter of a template and the headers that carry its value to the function.
pub(crate) struct TemplateParam {
    pub name: Box<str>,
    /// `X-Kappa-Params-<name>`.
    pub kappa: HeaderName,
    /// `X-Fission-Params-<name>`, for functions written for Fission.
    pub fission: HeaderName,
}

/// The `{name}` / `{*name}` parameters of a template, in order.
fn template_params(names: &[Box<str>]) -> Vec<TemplateParam> {
    names
        .iter()
        .filter_map(|name| {
            let kappa = HeaderName::from_bytes(format!("x-kappa-params-{name}").as_bytes()).ok()?;
            let fission =
                HeaderName::from_bytes(format!("x-fission-params-{name}").as_bytes()).ok()?;
            Some(TemplateParam {
                name: name.clone(),
                kappa,
                fission,
            })
        })
        .collect()
}

static NO_NAMES: LazyLock<Arc<[Box<str>]>> = LazyLock::new(|| Arc::from(Vec::new()));
static PREFIX_NAMES: LazyLock<Arc<[Box<str>]>> =
    LazyLock::new(|| Arc::from(vec![Box::from(PREFIX_REST)]));

/// A change to apply, as the watcher reads it from the store.
pub(crate) enum Change {
    Trigger(Box<TriggerRecord>),
    /// `(namespace, name)`.
    TriggerGone(String, String),
    Function(FunctionRecord),
    FunctionGone(FunctionId),
}

impl RouteTable {
    /// A table with no routes and no functions.
    pub fn empty() -> Self {
        Self {
            any_host: Tiers::default(),
            by_host: imbl::OrdMap::new(),
            functions: imbl::OrdMap::new(),
            missing: imbl::OrdMap::new(),
            triggers: imbl::OrdMap::new(),
            users: imbl::OrdMap::new(),
            skipped: imbl::OrdSet::new(),
        }
    }

    /// Builds a table from a full list (after a fresh list of the store). `previous` lends its
    /// function entries when unchanged (keeping their cached metric handles).
    pub fn build<'a>(
        triggers: impl IntoIterator<Item = &'a TriggerRecord>,
        functions: impl IntoIterator<Item = &'a FunctionRecord>,
        previous: &RouteTable,
        index: &EndpointIndex,
    ) -> Self {
        let mut table = Self::empty();
        for f in functions {
            let entry = match previous.functions.get(&f.id) {
                Some(prev) if prev.same_as(true, f.generation, f.timeout_s, f.spec_timeout_s) => {
                    Arc::clone(prev)
                }
                _ => Arc::new(FunctionEntry::new(
                    f.id.clone(),
                    true,
                    f.generation,
                    f.timeout_s,
                    f.spec_timeout_s,
                    index,
                )),
            };
            table.functions.insert(f.id.clone(), entry);
        }
        let mut triggers: Vec<&TriggerRecord> = triggers.into_iter().collect();
        triggers.sort_by(|a, b| {
            (a.creation(), a.namespace(), a.name()).cmp(&(b.creation(), b.namespace(), b.name()))
        });
        // In precedence order each trigger only meets older ones: nothing is displaced.
        for t in triggers {
            table.apply(Change::Trigger(Box::new(t.clone())), index);
        }
        table
    }

    /// Applies one store change, touching only the routes it concerns.
    pub fn apply(&mut self, change: Change, index: &EndpointIndex) {
        match change {
            Change::Trigger(record) => self.upsert_trigger(*record, index),
            Change::TriggerGone(namespace, name) => {
                let key: Arc<str> = Arc::from(format!("{namespace}/{name}"));
                let mut queue = BTreeSet::new();
                if let Some(old) = self.triggers.remove(&key) {
                    self.forget(&key, &old, &mut queue);
                }
                self.settle(queue, index);
            }
            Change::Function(f) => self.upsert_function(f, index),
            Change::FunctionGone(id) => {
                if self.functions.remove(&id).is_some() {
                    self.retarget(&id, index);
                }
            }
        }
    }

    fn upsert_function(&mut self, f: FunctionRecord, index: &EndpointIndex) {
        if self
            .functions
            .get(&f.id)
            .is_some_and(|e| e.same_as(true, f.generation, f.timeout_s, f.spec_timeout_s))
        {
            return;
        }
        let entry = Arc::new(FunctionEntry::new(
            f.id.clone(),
            true,
            f.generation,
            f.timeout_s,
            f.spec_timeout_s,
            index,
        ));
        self.functions.insert(f.id.clone(), entry);
        self.missing.remove(&f.id);
        self.retarget(&f.id, index);
    }

    /// Rebuilds the targets of the routed triggers naming `id` (same routes, new entry).
    fn retarget(&mut self, id: &FunctionId, index: &EndpointIndex) {
        let Some(users) = self
            .users
            .get(format!("{}/{}", id.namespace, id.name).as_str())
            .cloned()
        else {
            return;
        };
        for key in users.as_slice() {
            let Some(state) = self.triggers.get(key).cloned() else {
                continue;
            };
            if !state.routed {
                continue;
            }
            self.unroute(key, &state.record);
            match self.compile(key, &state.record, index) {
                Ok(compiled) => {
                    self.route(&compiled);
                    self.set(key, &state.record, true, None);
                }
                // Compiling depends on the trigger alone, which did not change.
                Err(reason) => self.set(key, &state.record, false, Some(Arc::from(reason))),
            }
        }
    }

    fn upsert_trigger(&mut self, record: TriggerRecord, index: &EndpointIndex) {
        let key = Arc::clone(&record.key);
        let mut queue = BTreeSet::new();
        if let Some(old) = self.triggers.get(&key).cloned() {
            if *old.record == record {
                return;
            }
            self.forget(&key, &old, &mut queue);
        }
        let record = Arc::new(record);
        for f in record.function_names() {
            let user: Arc<str> = Arc::from(format!("{}/{f}", record.namespace()));
            let mut names: Vec<Arc<str>> = self
                .users
                .get(&user)
                .map(|u| u.as_slice().to_vec())
                .unwrap_or_default();
            if !names.contains(&key) {
                names.push(Arc::clone(&key));
            }
            if let Some(users) = Users::from_vec(names) {
                self.users.insert(user, users);
            }
        }
        self.triggers.insert(
            Arc::clone(&key),
            TriggerState {
                record: Arc::clone(&record),
                routed: false,
                skipped: None,
            },
        );
        queue.insert(Order(record));
        self.settle(queue, index);
    }

    /// Takes a trigger's routes and references out; queues the triggers its routes kept out.
    fn forget(&mut self, key: &Arc<str>, old: &TriggerState, queue: &mut BTreeSet<Order>) {
        let order = Order(Arc::clone(&old.record));
        self.skipped.remove(&order);
        if old.routed {
            self.unroute(key, &old.record);
            self.queue_skipped_after(&order, queue);
        }
        for f in old.record.function_names() {
            let user = format!("{}/{f}", old.record.namespace());
            if let Some(users) = self.users.get(user.as_str()) {
                let rest: Vec<Arc<str>> = users
                    .as_slice()
                    .iter()
                    .filter(|n| *n != key)
                    .cloned()
                    .collect();
                if let Some(rest) = Users::from_vec(rest) {
                    self.users.insert(Arc::from(user), rest);
                } else {
                    self.users.remove(user.as_str());
                    self.missing
                        .remove(&FunctionId::new(old.record.namespace(), f));
                }
            }
        }
    }

    fn queue_skipped_after(&self, order: &Order, queue: &mut BTreeSet<Order>) {
        use std::ops::Bound;
        for s in self
            .skipped
            .range((Bound::Excluded(order.clone()), Bound::Unbounded))
        {
            queue.insert(s.clone());
        }
    }

    /// Places the queued triggers, oldest first, as a full build would: a trigger is routed
    /// when none of its routes conflicts with a routed older trigger; newer routed triggers it
    /// conflicts with are taken out and placed again after it.
    fn settle(&mut self, mut queue: BTreeSet<Order>, index: &EndpointIndex) {
        while let Some(order) = queue.pop_first() {
            let key = Arc::clone(&order.0.key);
            let Some(state) = self.triggers.get(&key).cloned() else {
                continue;
            };
            if state.routed || !Arc::ptr_eq(&state.record, &order.0) {
                continue;
            }
            let compiled = match self.compile(&key, &state.record, index) {
                Ok(c) => c,
                Err(reason) => {
                    self.skip(&key, &state.record, reason);
                    continue;
                }
            };
            let (older, newer) = self.conflicts(&key, &order, &compiled);
            if let Some(reason) = older {
                self.skip(&key, &state.record, reason);
                continue;
            }
            for other in newer {
                let Some(o) = self.triggers.get(&other).cloned() else {
                    continue;
                };
                if o.routed {
                    self.unroute(&other, &o.record);
                    self.set(&other, &o.record, false, None);
                    let o_order = Order(Arc::clone(&o.record));
                    self.queue_skipped_after(&o_order, &mut queue);
                    queue.insert(o_order);
                }
            }
            self.route(&compiled);
            self.skipped.remove(&order);
            self.set(&key, &state.record, true, None);
        }
    }

    fn skip(&mut self, key: &Arc<str>, record: &Arc<TriggerRecord>, reason: String) {
        tracing::warn!(trigger = %key, %reason, "http trigger skipped");
        self.skipped.insert(Order(Arc::clone(record)));
        self.set(key, record, false, Some(Arc::from(reason)));
    }

    fn set(
        &mut self,
        key: &Arc<str>,
        record: &Arc<TriggerRecord>,
        routed: bool,
        skipped: Option<Arc<str>>,
    ) {
        self.triggers.insert(
            Arc::clone(key),
            TriggerState {
                record: Arc::clone(record),
                routed,
                skipped,
            },
        );
    }

    /// The first conflict with an older routed trigger (as a reason), and the newer routed
    /// triggers that conflict.
    fn conflicts(
        &self,
        key: &Arc<str>,
        order: &Order,
        c: &Compiled,
    ) -> (Option<String>, Vec<Arc<str>>) {
        let Some(tiers) = self.tiers(c.host.as_deref()) else {
            return (None, Vec::new());
        };
        let mut newer: Vec<Arc<str>> = Vec::new();
        for (tier, shape, _) in &c.patterns {
            for (other, common) in tiers[*tier].conflicts(shape, &c.methods) {
                if other.trigger == *key {
                    continue;
                }
                let Some(o) = self.triggers.get(&other.trigger) else {
                    continue;
                };
                if Order(Arc::clone(&o.record)) < *order {
                    let path = order.0.prefix().or(order.0.relativeurl()).unwrap_or("/");
                    return (
                        Some(format!(
                            "{common} {path} conflicts with a route of trigger {}",
                            other.trigger
                        )),
                        Vec::new(),
                    );
                }
                if !newer.contains(&other.trigger) {
                    newer.push(Arc::clone(&other.trigger));
                }
            }
        }
        (None, newer)
    }

    fn tiers(&self, host: Option<&str>) -> Option<&Tiers> {
        match host {
            None => Some(&self.any_host),
            Some(h) => self.by_host.get(h),
        }
    }

    fn route(&mut self, c: &Compiled) {
        let tiers = match &c.host {
            None => &mut self.any_host,
            Some(h) => self.by_host.entry(Arc::clone(h)).or_default(),
        };
        for (tier, shape, names) in &c.patterns {
            tiers[*tier].insert(
                shape,
                Leaf {
                    methods: c.methods.clone(),
                    names: Arc::clone(names),
                    value: Arc::clone(&c.target),
                },
            );
        }
    }

    /// Takes a routed trigger's leaves out (its patterns computed again from the record, which
    /// placed them: a routed trigger's record always compiles).
    fn unroute(&mut self, key: &Arc<str>, record: &TriggerRecord) {
        let Ok((host, patterns)) = placement(record) else {
            return;
        };
        let tiers = match &host {
            None => &mut self.any_host,
            Some(h) => match self.by_host.get_mut(h) {
                Some(t) => t,
                None => return,
            },
        };
        for (tier, shape, _) in &patterns {
            tiers[*tier].remove(shape, &|t: &Arc<RouteTarget>| t.trigger == *key);
        }
        if let Some(h) = &host
            && self
                .by_host
                .get(h)
                .is_some_and(|t| t.iter().all(Tree::is_empty))
        {
            self.by_host.remove(h);
        }
    }

    fn function_entry(&mut self, id: FunctionId, index: &EndpointIndex) -> Arc<FunctionEntry> {
        if let Some(entry) = self.functions.get(&id) {
            return Arc::clone(entry);
        }
        if let Some(entry) = self.missing.get(&id) {
            return Arc::clone(entry);
        }
        let entry = Arc::new(FunctionEntry::new(id.clone(), false, 0, 60, 120, index));
        self.missing.insert(id, Arc::clone(&entry));
        entry
    }

    /// Compiles a trigger into its routes (an `Err` is why it cannot be routed at all).
    /// `key` is the trigger's `namespace/name`, shared with the route target.
    fn compile(
        &mut self,
        key: &Arc<str>,
        t: &TriggerRecord,
        index: &EndpointIndex,
    ) -> Result<Compiled, String> {
        let mut methods = Vec::new();
        for m in t.effective_methods() {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("spec.methods: {m:?} is not an HTTP method"))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }

        // `hello@3` routes to version 3's own entry (`hello.v3`).
        let fn_id =
            |name: &str| FunctionId::new(t.namespace(), kappa_types::function_ref_target(name));
        let choice = match t.weights() {
            None => Choice::One(self.function_entry(fn_id(t.field(FUNCTION)), index)),
            Some(weights) => {
                let mut total = 0u32;
                let mut entries = Vec::new();
                for (name, weight) in weights {
                    if *weight == 0 {
                        continue;
                    }
                    total = total.saturating_add(*weight);
                    entries.push((total, self.function_entry(fn_id(name), index)));
                }
                let Some(last) = entries.last().map(|(_, e)| Arc::clone(e)) else {
                    return Err(
                        "spec.functionref.functionweights: no function has a weight above 0".into(),
                    );
                };
                Choice::Weighted(Box::new(Weighted {
                    total,
                    entries,
                    last,
                }))
            }
        };

        let (host, patterns) = placement(t)?;
        let mode = match (t.prefix(), patterns.first()) {
            (Some(prefix), _) => {
                let base = prefix.trim_end_matches('/');
                let strip = (!t.keep_prefix() && !base.is_empty()).then(|| Box::from(base));
                PathMode::Prefix { strip }
            }
            (None, Some((_, _, names))) => PathMode::Template {
                params: template_params(names),
            },
            (None, None) => PathMode::Template { params: Vec::new() },
        };
        let route: Arc<str> = match (t.prefix(), t.relativeurl()) {
            (Some(prefix), _) => Arc::from(format!("{}/*", prefix.trim_end_matches('/'))),
            (None, Some(url)) => Arc::from(url),
            (None, None) => Arc::from(""),
        };
        Ok(Compiled {
            host,
            methods: MethodSet::from_methods(&methods),
            patterns,
            target: Arc::new(RouteTarget {
                trigger: Arc::clone(key),
                route,
                mode,
                choice,
            }),
        })
    }

    /// Finds the route for a request: the most specific route that accepts its method, looking
    /// at the request's host before every host and, within each, at exact paths and templates
    /// before prefixes. When no route accepts the method, the methods of the routes whose path
    /// matches (405), or none (404).
    pub fn lookup<'t, 'p>(
        &'t self,
        host: Option<&str>,
        method: &Method,
        path: &'p str,
    ) -> Lookup<'t, 'p> {
        let host_routes = match host {
            Some(h) if !self.by_host.is_empty() => self.by_host.get(normalize_host(h).as_ref()),
            _ => None,
        };
        let groups = || {
            host_routes
                .into_iter()
                .chain(std::iter::once(&self.any_host))
        };
        for tiers in groups() {
            for tree in tiers {
                if let Some((leaf, values)) = tree.find(method, path) {
                    return Lookup::Found {
                        target: &leaf.value,
                        params: Params {
                            names: &leaf.names,
                            values,
                        },
                    };
                }
            }
        }
        // Not routed for this method: which methods would be (only on a 404 or 405).
        let mut allowed: Vec<Method> = Vec::new();
        for tiers in groups() {
            for tree in tiers {
                tree.methods_at(path, &mut allowed);
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            Lookup::MethodNotAllowed(allowed)
        }
    }

    /// A function by id (only functions the store has).
    pub fn function(&self, id: &FunctionId) -> Option<&Arc<FunctionEntry>> {
        self.functions.get(id)
    }

    /// How many triggers the table holds (routed or not).
    pub fn trigger_count(&self) -> usize {
        self.triggers.len()
    }

    /// Every trigger with its status, in precedence order, for `/debug/routes`.
    pub fn routes(&self) -> Vec<RouteInfo> {
        let mut states: Vec<&TriggerState> = self.triggers.values().collect();
        states.sort_by(|a, b| Order(Arc::clone(&a.record)).cmp(&Order(Arc::clone(&b.record))));
        states
            .into_iter()
            .map(|s| {
                let t = &s.record;
                let functions = match t.weights() {
                    None => vec![(t.field(FUNCTION).to_owned(), 1)],
                    Some(weights) => weights.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
                };
                RouteInfo {
                    trigger: t.key.to_string(),
                    host: t.host().map(str::to_owned),
                    relativeurl: t.relativeurl().map(str::to_owned),
                    prefix: t.prefix().map(str::to_owned),
                    keep_prefix: t.keep_prefix(),
                    methods: t.effective_methods().map(str::to_owned).collect(),
                    functions,
                    skipped: s.skipped.as_deref().map(str::to_owned),
                }
            })
            .collect()
    }

    /// Every function the store has.
    pub fn functions(&self) -> impl Iterator<Item = &Arc<FunctionEntry>> {
        self.functions.values()
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_types::FunctionReference;

    fn trigger(name: &str, creation: &str, f: impl FnOnce(&mut HttpTriggerSpec)) -> TriggerRecord {
        let mut spec = HttpTriggerSpec {
            functionref: FunctionReference::name("hello"),
            ..HttpTriggerSpec::default()
        };
        f(&mut spec);
        TriggerRecord::new("default", name, creation, spec)
    }

    fn func(name: &str) -> FunctionRecord {
        FunctionRecord {
            id: FunctionId::new("default", name),
            generation: 1,
            timeout_s: 60,
            spec_timeout_s: 120,
        }
    }

    fn build(triggers: &[TriggerRecord]) -> RouteTable {
        let index = EndpointIndex::new();
        RouteTable::build(
            triggers,
            &[func("hello"), func("other")],
            &RouteTable::empty(),
            &index,
        )
    }

    fn found(table: &RouteTable, host: Option<&str>, method: Method, path: &str) -> Option<String> {
        match table.lookup(host, &method, path) {
            Lookup::Found { target, .. } => Some(target.trigger.to_string()),
            _ => None,
        }
    }

    /// The packed record gives back every field of the spec it was made from.
    #[test]
    fn records_keep_what_routing_reads() {
        let specs = [
            HttpTriggerSpec {
                host: Some("Api.Example.com:80".into()),
                relativeurl: Some("/users/{id}".into()),
                prefix: Some("/u/".into()),
                keep_prefix: true,
                methods: vec!["POST".into(), "get".into()],
                functionref: FunctionReference {
                    kind: FunctionReferenceType::FunctionWeights,
                    name: String::new(),
                    functionweights: [("a".to_string(), 30), ("b@2".to_string(), 70)].into(),
                },
            },
            HttpTriggerSpec {
                relativeurl: Some(String::new()),
                functionref: FunctionReference::name("hello@3"),
                ..HttpTriggerSpec::default()
            },
        ];
        for spec in specs {
            let t = TriggerRecord::new("ns", "t", "2026-12-08T00:00:00Z", spec.clone());
            assert_eq!(t.spec(), spec);
            assert_eq!((t.namespace(), t.name()), ("ns", "t"));
            assert_eq!(t.creation(), "2026-12-08T00:00:00Z");
            assert_eq!(
                t.function_names(),
                spec.functionref.function_names(),
                "{spec:?}"
            );
            assert_eq!(
                t.effective_methods().collect::<Vec<_>>(),
                spec.effective_methods()
            );
        }
        let get = trigger("g", "1", |s| s.methods = vec!["GET".into()]);
        assert!(
            get.spec().methods.is_empty(),
            "GET alone is kept as no list"
        );
        assert_eq!(get.effective_methods().collect::<Vec<_>>(), ["GET"]);
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn templates_prefixes_and_precedence() {
        let table = build(&[
            trigger("tpl", "1", |s| s.relativeurl = Some("/users/{id}".into())),
            trigger("pfx", "2", |s| s.prefix = Some("/users/".into())),
            trigger("exact", "3", |s| s.prefix = Some("/files".into())),
            trigger("deep", "4", |s| s.prefix = Some("/users/admin/".into())),
        ]);
        assert_eq!(
            found(&table, None, Method::GET, "/users/7").as_deref(),
            Some("default/tpl")
        );
        assert_eq!(
            found(&table, None, Method::GET, "/users/7/x").as_deref(),
            Some("default/pfx")
        );
        assert_eq!(
            found(&table, None, Method::GET, "/users/").as_deref(),
            Some("default/pfx")
        );
        assert_eq!(
            found(&table, None, Method::GET, "/users/admin/x").as_deref(),
            Some("default/deep")
        );
        assert_eq!(
            found(&table, None, Method::GET, "/files").as_deref(),
            Some("default/exact")
        );
        assert_eq!(
            found(&table, None, Method::GET, "/files/").as_deref(),
            Some("default/exact")
        );
        assert_eq!(
            found(&table, None, Method::GET, "/files/a/b").as_deref(),
            Some("default/exact")
        );
        assert!(found(&table, None, Method::GET, "/filesx").is_none());
        assert!(matches!(
            table.lookup(None, &Method::GET, "/nope"),
            Lookup::NotFound
        ));
        match table.lookup(None, &Method::POST, "/users/7") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, vec![Method::GET]),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn params_are_named() {
        let table = build(&[trigger("tpl", "1", |s| {
            s.relativeurl = Some("/u/{a}/v/{b}".into())
        })]);
        let Lookup::Found { target, params } = table.lookup(None, &Method::GET, "/u/1/v/2") else {
            panic!("expected a match");
        };
        let PathMode::Template { params: names } = &target.mode else {
            panic!("template expected");
        };
        assert_eq!(
            names.iter().map(|p| &*p.name).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(names[0].kappa.as_str(), "x-kappa-params-a");
        assert_eq!(names[0].fission.as_str(), "x-fission-params-a");
        assert_eq!(params.get("b"), Some("2"));
    }

    #[test]
    fn host_specific_wins_and_methods_merge() {
        let table = build(&[
            trigger("any", "1", |s| s.relativeurl = Some("/x".into())),
            trigger("host", "2", |s| {
                s.relativeurl = Some("/x".into());
                s.host = Some("Api.Example.com".into());
            }),
            trigger("post", "3", |s| {
                s.relativeurl = Some("/x".into());
                s.methods = vec!["POST".into()];
            }),
        ]);
        assert_eq!(
            found(&table, Some("api.example.com:80"), Method::GET, "/x").as_deref(),
            Some("default/host")
        );
        assert_eq!(
            found(&table, Some("other"), Method::GET, "/x").as_deref(),
            Some("default/any")
        );
        assert_eq!(
            found(&table, Some("api.example.com"), Method::POST, "/x").as_deref(),
            Some("default/post")
        );
    }

    /// Found by the fuzz target (`table/fuzz.rs`): a more specific route for other methods hid
    /// a less specific route for the request's method in the same tier.
    #[test]
    fn a_route_for_other_methods_hides_nothing() {
        let table = build(&[
            trigger("root", "1", |s| s.prefix = Some("/".into())),
            trigger("api", "2", |s| {
                s.prefix = Some("/a/".into());
                s.methods = vec!["POST".into()];
            }),
            trigger("user", "3", |s| {
                s.relativeurl = Some("/u/{id}".into());
                s.methods = vec!["DELETE".into()];
            }),
            trigger("me", "4", |s| s.relativeurl = Some("/u/me".into())),
        ]);
        assert_eq!(
            found(&table, None, Method::GET, "/a/x").as_deref(),
            Some("default/root")
        );
        assert_eq!(
            found(&table, None, Method::POST, "/a/x").as_deref(),
            Some("default/api")
        );
        assert_eq!(
            found(&table, None, Method::DELETE, "/u/me").as_deref(),
            Some("default/user")
        );
        match table.lookup(None, &Method::PUT, "/u/me") {
            Lookup::MethodNotAllowed(allow) => {
                assert_eq!(allow, vec![Method::DELETE, Method::GET]);
            }
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn conflicts_skip_the_later_trigger() {
        let table = build(&[
            trigger("b-second", "2", |s| s.relativeurl = Some("/x".into())),
            trigger("a-first", "1", |s| s.relativeurl = Some("/x".into())),
            trigger("param", "3", |s| s.relativeurl = Some("/p/{id}".into())),
            trigger("param2", "4", |s| s.relativeurl = Some("/p/{other}".into())),
        ]);
        assert_eq!(
            found(&table, None, Method::GET, "/x").as_deref(),
            Some("default/a-first")
        );
        assert_eq!(
            found(&table, None, Method::GET, "/p/1").as_deref(),
            Some("default/param")
        );
        let skipped: Vec<_> = table
            .routes()
            .into_iter()
            .filter(|r| r.skipped.is_some())
            .map(|r| r.trigger)
            .collect();
        assert_eq!(skipped, ["default/b-second", "default/param2"]);
    }

    #[test]
    fn weights_cover_every_function() {
        let table = build(&[trigger("w", "1", |s| {
            s.relativeurl = Some("/w".into());
            s.functionref = FunctionReference {
                kind: FunctionReferenceType::FunctionWeights,
                name: String::new(),
                functionweights: [("hello".to_string(), 50), ("other".to_string(), 50)].into(),
            };
        })]);
        let Lookup::Found { target, .. } = table.lookup(None, &Method::GET, "/w") else {
            panic!("expected a match");
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(target.choice.pick().id.name.clone());
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn missing_function_stays_routable() {
        let table = build(&[trigger("t", "1", |s| {
            s.relativeurl = Some("/m".into());
            s.functionref = FunctionReference::name("ghost");
        })]);
        let Lookup::Found { target, .. } = table.lookup(None, &Method::GET, "/m") else {
            panic!("expected a match");
        };
        assert!(!target.choice.pick().exists);
    }
}
