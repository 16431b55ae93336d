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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use kappa_core::{EndpointIndex, FunctionEndpoints, FunctionId};
use kappa_types::{FunctionReferenceType, HttpTriggerSpec};
use serde::Serialize;

use crate::metrics::FunctionMetrics;

/// Name of the catch-all parameter prefix routes use internally (never exposed as a header).
const PREFIX_REST: &str = "{*kappa_prefix_rest}";

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

/// One HttpTrigger from the store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TriggerRecord {
    pub namespace: String,
    pub name: String,
    pub creation: String,
    pub spec: HttpTriggerSpec,
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
    /// Cumulative weights: pick `r` in `0..total`, take the first entry whose bound exceeds it.
    Weighted {
        total: u32,
        entries: Vec<(u32, Arc<FunctionEntry>)>,
        /// The last entry, so a pick never needs to index out of range.
        last: Arc<FunctionEntry>,
    },
}

impl Choice {
    pub fn pick(&self) -> &Arc<FunctionEntry> {
        match self {
            Choice::One(entry) => entry,
            Choice::Weighted {
                total,
                entries,
                last,
            } => {
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

/// The routes of one host (or of every host).
///
/// One radix tree per tier (0: exact paths and templates, 1: prefixes) and method, so a request
/// is matched only against routes that accept its method: a more specific route for other
/// methods never hides a less specific one for this method (`POST /api/` does not turn
/// `GET /api/x` away from a `GET /` prefix route).
#[derive(Default)]
struct HostRoutes {
    trees: HashMap<(usize, Method), matchit::Router<Arc<RouteTarget>>>,
    /// (tier, method, pattern) → trigger that routes it; build-time only, for conflict messages.
    patterns: HashMap<(usize, Method, String), Arc<str>>,
}

/// The result of a lookup.
pub(crate) enum Lookup<'t, 'p> {
    Found {
        target: &'t Arc<RouteTarget>,
        params: matchit::Params<'t, 'p>,
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

/// The immutable route table.
pub(crate) struct RouteTable {
    any_host: HostRoutes,
    by_host: HashMap<String, HostRoutes>,
    /// Every function in the store, for direct invocation.
    functions: HashMap<FunctionId, Arc<FunctionEntry>>,
    routes: Vec<RouteInfo>,
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

fn escape(path: &str) -> String {
    path.replace('{', "{{").replace('}', "}}")
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
fn template_params(template: &str) -> Vec<TemplateParam> {
    template
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|inner| inner.strip_prefix('*').unwrap_or(inner))
        .filter_map(|name| {
            let kappa = HeaderName::from_bytes(format!("x-kappa-params-{name}").as_bytes()).ok()?;
            let fission =
                HeaderName::from_bytes(format!("x-fission-params-{name}").as_bytes()).ok()?;
            Some(TemplateParam {
                name: Box::from(name),
                kappa,
                fission,
            })
        })
        .collect()
}

impl RouteTable {
    /// A table with no routes and no functions.
    pub fn empty() -> Self {
        Self {
            any_host: HostRoutes::default(),
            by_host: HashMap::new(),
            functions: HashMap::new(),
            routes: Vec::new(),
        }
    }

    /// Builds the table. `previous` lends its function entries when unchanged (keeping their
    /// cached metric handles).
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
            (&a.creation, &a.namespace, &a.name).cmp(&(&b.creation, &b.namespace, &b.name))
        });
        let mut missing: HashMap<FunctionId, Arc<FunctionEntry>> = HashMap::new();
        for t in triggers {
            let mut info = RouteInfo {
                trigger: format!("{}/{}", t.namespace, t.name),
                host: t.spec.host.clone(),
                relativeurl: t.spec.relativeurl.clone(),
                prefix: t.spec.prefix.clone(),
                keep_prefix: t.spec.keep_prefix,
                methods: t.spec.effective_methods(),
                functions: Vec::new(),
                skipped: None,
            };
            match table.add_trigger(t, &mut info, &mut missing, index) {
                Ok(()) => {}
                Err(reason) => {
                    tracing::warn!(trigger = %info.trigger, %reason, "http trigger skipped");
                    info.skipped = Some(reason);
                }
            }
            table.routes.push(info);
        }
        for routes in std::iter::once(&mut table.any_host).chain(table.by_host.values_mut()) {
            routes.patterns = HashMap::new();
        }
        table
    }

    fn function_entry(
        &self,
        id: FunctionId,
        missing: &mut HashMap<FunctionId, Arc<FunctionEntry>>,
        index: &EndpointIndex,
    ) -> Arc<FunctionEntry> {
        if let Some(entry) = self.functions.get(&id) {
            return Arc::clone(entry);
        }
        Arc::clone(
            missing
                .entry(id.clone())
                .or_insert_with(|| Arc::new(FunctionEntry::new(id, false, 0, 60, 120, index))),
        )
    }

    fn add_trigger(
        &mut self,
        t: &TriggerRecord,
        info: &mut RouteInfo,
        missing: &mut HashMap<FunctionId, Arc<FunctionEntry>>,
        index: &EndpointIndex,
    ) -> Result<(), String> {
        let spec = &t.spec;
        let mut methods = Vec::new();
        for m in spec.effective_methods() {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("spec.methods: {m:?} is not an HTTP method"))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }

        // `hello@3` routes to version 3's own entry (`hello.v3`).
        let fn_id = |name: &str| {
            FunctionId::new(t.namespace.clone(), kappa_types::function_ref_target(name))
        };
        let choice = match spec.functionref.kind {
            FunctionReferenceType::Name => {
                info.functions.push((spec.functionref.name.clone(), 1));
                Choice::One(self.function_entry(fn_id(&spec.functionref.name), missing, index))
            }
            FunctionReferenceType::FunctionWeights => {
                let mut total = 0u32;
                let mut entries = Vec::new();
                for (name, weight) in &spec.functionref.functionweights {
                    info.functions.push((name.clone(), *weight));
                    if *weight == 0 {
                        continue;
                    }
                    total = total.saturating_add(*weight);
                    entries.push((total, self.function_entry(fn_id(name), missing, index)));
                }
                let Some(last) = entries.last().map(|(_, e)| Arc::clone(e)) else {
                    return Err(
                        "spec.functionref.functionweights: no function has a weight above 0".into(),
                    );
                };
                Choice::Weighted {
                    total,
                    entries,
                    last,
                }
            }
        };

        // (tier, matchit pattern): tier 0 holds exact paths and templates, tier 1 prefixes.
        let (mode, patterns) = match (&spec.prefix, &spec.relativeurl) {
            (Some(prefix), _) => {
                if !prefix.starts_with('/') {
                    return Err(format!("spec.prefix: {prefix:?} must start with '/'"));
                }
                let base = prefix.trim_end_matches('/');
                let mut patterns = vec![(0, escape(prefix))];
                if !prefix.ends_with('/') {
                    patterns.push((0, escape(&format!("{base}/"))));
                }
                patterns.push((1, format!("{}/{PREFIX_REST}", escape(base))));
                let strip = (!spec.keep_prefix && !base.is_empty()).then(|| Box::from(base));
                (PathMode::Prefix { strip }, patterns)
            }
            (None, Some(url)) => {
                if !url.starts_with('/') {
                    return Err(format!("spec.relativeurl: {url:?} must start with '/'"));
                }
                (
                    PathMode::Template {
                        params: template_params(url),
                    },
                    vec![(0, url.clone())],
                )
            }
            (None, None) => {
                return Err("spec.relativeurl: expected a relativeurl or a prefix".into());
            }
        };

        let route: Arc<str> = match (&spec.prefix, &spec.relativeurl) {
            (Some(prefix), _) => Arc::from(format!("{}/*", prefix.trim_end_matches('/'))),
            (None, Some(url)) => Arc::from(url.as_str()),
            (None, None) => Arc::from(""),
        };
        let target = Arc::new(RouteTarget {
            trigger: Arc::from(info.trigger.as_str()),
            route,
            mode,
            choice,
        });

        let host = spec
            .host
            .as_deref()
            .map(|h| normalize_host(h).into_owned())
            .filter(|h| !h.is_empty());
        let routes = match host {
            Some(h) => self.by_host.entry(h).or_default(),
            None => &mut self.any_host,
        };

        // Check every pattern first, so a trigger is added whole or not at all.
        for (tier, pattern) in &patterns {
            for m in &methods {
                if let Some(other) = routes.patterns.get(&(*tier, m.clone(), pattern.clone())) {
                    return Err(format!(
                        "{m} {pattern} is already routed by trigger {other}"
                    ));
                }
            }
        }
        let mut inserted: Vec<(usize, Method, String)> = Vec::new();
        let mut conflict = None;
        'insert: for (tier, pattern) in &patterns {
            for m in &methods {
                let key = (*tier, m.clone(), pattern.clone());
                let tree = routes.trees.entry((*tier, m.clone())).or_default();
                match tree.insert(pattern.clone(), Arc::clone(&target)) {
                    Ok(()) => {
                        routes
                            .patterns
                            .insert(key.clone(), Arc::clone(&target.trigger));
                        inserted.push(key);
                    }
                    Err(e) => {
                        conflict = Some(format!("{m} {pattern} conflicts with another route: {e}"));
                        break 'insert;
                    }
                }
            }
        }
        if let Some(reason) = conflict {
            for (tier, m, pattern) in inserted {
                if let Some(tree) = routes.trees.get_mut(&(tier, m.clone())) {
                    tree.remove(pattern.clone());
                }
                routes.patterns.remove(&(tier, m, pattern));
            }
            return Err(reason);
        }
        Ok(())
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
        for routes in groups() {
            for tier in 0..2 {
                let Some(tree) = routes.trees.get(&(tier, method.clone())) else {
                    continue;
                };
                if let Ok(m) = tree.at(path) {
                    return Lookup::Found {
                        target: m.value,
                        params: m.params,
                    };
                }
            }
        }
        // Not routed for this method: which methods would be (only on a 404 or 405).
        let mut allowed: Vec<Method> = Vec::new();
        for routes in groups() {
            for ((_, m), tree) in &routes.trees {
                if !allowed.contains(m) && tree.at(path).is_ok() {
                    allowed.push(m.clone());
                }
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

    /// Every trigger with its status, for `/debug/routes`.
    pub fn routes(&self) -> &[RouteInfo] {
        &self.routes
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
        TriggerRecord {
            namespace: "default".into(),
            name: name.into(),
            creation: creation.into(),
            spec,
        }
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
            .iter()
            .filter(|r| r.skipped.is_some())
            .map(|r| r.trigger.as_str())
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
