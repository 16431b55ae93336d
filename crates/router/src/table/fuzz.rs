//! Fuzz target: the route table agrees with a reference matcher on random route tables and
//! requests.
//!
//! The reference below knows nothing of radix trees: it keeps every routed pattern as a list of
//! segments and, for a request, tries them all. It states the table's documented precedence
//! directly: a host-specific route over a host-less one, an exact path or template (tier 0) over
//! a prefix (tier 1), and within a tier the most specific pattern, comparing segment by segment
//! (a literal over a `{param}` over a `{*catch-all}`, so a longer prefix beats a shorter one).
//! Run longer with `BOLERO_RANDOM_TEST_TIME_MS`, or with libFuzzer through `cargo bolero test`
//! (docs/security.md, "Fuzzing").

use std::collections::BTreeSet;
use std::time::Duration;

use bolero::{TypeGenerator, check};
use http::Method;
use kappa_core::{EndpointIndex, FunctionId};
use kappa_types::{FunctionReference, HttpTriggerSpec, Spec};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{Change, FunctionRecord, Lookup, PathMode, RouteTable, TriggerRecord};

/// How long the target runs in an ordinary test run (`BOLERO_RANDOM_TEST_TIME_MS` overrides).
const TEST_TIME: Duration = Duration::from_secs(3);

const LITERALS: [&str; 6] = ["a", "b", "ab", "users", "x.y", "%7B"];
const VALUES: [&str; 5] = ["1", "zz", "a", "{p0}", "b%2Fc"];
const PARAMS: [&str; 3] = ["p0", "p1", "id"];
const HOSTS: [Option<&str>; 7] = [
    None,
    Some("a.example"),
    Some("A.Example:8080"),
    Some("b.example"),
    Some(""),
    Some("[::1]:80"),
    Some("[::1]"),
];
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

#[derive(Debug, Clone, Copy, TypeGenerator)]
enum GenSeg {
    Literal(u8),
    Param(u8),
    CatchAll,
    Empty,
}

#[derive(Debug, TypeGenerator)]
struct GenTrigger {
    host: u8,
    is_prefix: bool,
    segs: Vec<GenSeg>,
    trailing_slash: bool,
    keep_prefix: bool,
    /// Bit i set: `METHODS[i]` is routed; no bit: the default (GET).
    methods: u8,
}

#[derive(Debug, Clone, Copy, TypeGenerator)]
enum GenReqSeg {
    Literal(u8),
    Value(u8),
    Empty,
}

#[derive(Debug, TypeGenerator)]
struct GenRequest {
    host: u8,
    method: u8,
    segs: Vec<GenReqSeg>,
    trailing_slash: bool,
}

#[derive(Debug, TypeGenerator)]
struct Case {
    triggers: Vec<GenTrigger>,
    requests: Vec<GenRequest>,
}

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

fn render_path(segs: &[String], trailing_slash: bool) -> String {
    let mut path = format!("/{}", segs.join("/"));
    if trailing_slash && !segs.is_empty() {
        path.push('/');
    }
    path
}

impl GenTrigger {
    fn spec(&self) -> HttpTriggerSpec {
        let segs: Vec<String> = self
            .segs
            .iter()
            .take(5)
            .map(|s| match (*s, self.is_prefix) {
                (GenSeg::Literal(i), _) | (GenSeg::Param(i), true) => pick(&LITERALS, i).into(),
                (GenSeg::Param(i), false) => format!("{{{}}}", pick(&PARAMS, i)),
                (GenSeg::CatchAll, false) => "{*rest}".into(),
                (GenSeg::CatchAll, true) => "rest".into(),
                (GenSeg::Empty, _) => String::new(),
            })
            .collect();
        let path = render_path(&segs, self.trailing_slash);
        let methods = METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.methods & (1 << i) != 0)
            .map(|(_, m)| m.to_string())
            .collect();
        HttpTriggerSpec {
            host: pick(&HOSTS, self.host).map(str::to_owned),
            relativeurl: (!self.is_prefix).then(|| path.clone()),
            prefix: self.is_prefix.then_some(path),
            keep_prefix: self.keep_prefix,
            methods,
            functionref: FunctionReference::name("f"),
        }
    }
}

impl GenRequest {
    fn render(&self) -> (Option<&'static str>, Method, String) {
        let segs: Vec<String> = self
            .segs
            .iter()
            .take(6)
            .map(|s| match *s {
                GenReqSeg::Literal(i) => pick(&LITERALS, i).into(),
                GenReqSeg::Value(i) => pick(&VALUES, i).into(),
                GenReqSeg::Empty => String::new(),
            })
            .collect();
        (
            pick(&HOSTS, self.host),
            METHODS[usize::from(self.method) % METHODS.len()].clone(),
            render_path(&segs, self.trailing_slash),
        )
    }
}

// ---- the reference matcher ----

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pat {
    Literal(String),
    Param(String),
    CatchAll(String),
}

impl Pat {
    /// Higher is more specific.
    fn rank(&self) -> u8 {
        match self {
            Pat::Literal(_) => 2,
            Pat::Param(_) => 1,
            Pat::CatchAll(_) => 0,
        }
    }
}

#[derive(Debug)]
struct RefRoute {
    trigger: String,
    /// Normalised host, `None` for every host.
    host: Option<String>,
    tier: u8,
    pattern: Vec<Pat>,
    methods: Vec<Method>,
    /// For prefix routes: the prefix the function should not see.
    strip: Option<Option<String>>,
}

fn ref_host(host: &str) -> String {
    let host = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

/// Literal segments of a path (or of a prefix, whose braces are plain characters).
fn literal_pattern(path: &str) -> Vec<Pat> {
    path.split('/')
        .map(|s| Pat::Literal(s.to_owned()))
        .collect()
}

fn template_pattern(path: &str) -> Vec<Pat> {
    path.split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(inner) => match inner.strip_prefix('*') {
                    Some(name) => Pat::CatchAll(name.to_owned()),
                    None => Pat::Param(inner.to_owned()),
                },
                None => Pat::Literal(s.to_owned()),
            },
        )
        .collect()
}

/// The routes a trigger adds, as the table documents them.
fn ref_routes(name: &str, spec: &HttpTriggerSpec) -> Vec<RefRoute> {
    let host = spec.host.as_deref().map(ref_host).filter(|h| !h.is_empty());
    let mut methods: Vec<Method> = Vec::new();
    for m in spec.effective_methods() {
        let m = Method::from_bytes(m.as_bytes()).expect("generated methods are valid");
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    let route = |tier, pattern, strip| RefRoute {
        trigger: name.to_owned(),
        host: host.clone(),
        tier,
        pattern,
        methods: methods.clone(),
        strip,
    };
    match (&spec.prefix, &spec.relativeurl) {
        (Some(prefix), _) => {
            let base = prefix.trim_end_matches('/');
            let strip = (!spec.keep_prefix && !base.is_empty()).then(|| base.to_owned());
            let mut out = vec![route(0, literal_pattern(prefix), Some(strip.clone()))];
            if !prefix.ends_with('/') {
                out.push(route(
                    0,
                    literal_pattern(&format!("{base}/")),
                    Some(strip.clone()),
                ));
            }
            let mut rest = literal_pattern(base);
            rest.push(Pat::CatchAll("kappa_prefix_rest".into()));
            out.push(route(1, rest, Some(strip)));
            out
        }
        (None, Some(url)) => vec![route(0, template_pattern(url), None)],
        (None, None) => Vec::new(),
    }
}

/// The parameters if `pattern` matches `path` (a parameter matches one non-empty segment, a
/// catch-all the non-empty rest of the path).
fn ref_match(pattern: &[Pat], path: &str) -> Option<Vec<(String, String)>> {
    let segs: Vec<&str> = path.split('/').collect();
    let mut params = Vec::new();
    for (i, pat) in pattern.iter().enumerate() {
        match pat {
            Pat::Literal(l) => {
                if segs.get(i) != Some(&l.as_str()) {
                    return None;
                }
            }
            Pat::Param(name) => {
                let seg = segs.get(i).filter(|s| !s.is_empty())?;
                params.push((name.clone(), (*seg).to_owned()));
            }
            Pat::CatchAll(name) => {
                let rest = segs.get(i..).map(|s| s.join("/")).unwrap_or_default();
                if rest.is_empty() {
                    return None;
                }
                params.push((name.clone(), rest));
                return Some(params);
            }
        }
    }
    (segs.len() == pattern.len()).then_some(params)
}

#[derive(Debug, PartialEq, Eq)]
enum RefOutcome {
    Found {
        trigger: String,
        params: Vec<(String, String)>,
        strip: Option<Option<String>>,
    },
    MethodNotAllowed(BTreeSet<String>),
    NotFound,
}

fn ref_lookup(routes: &[RefRoute], host: Option<&str>, method: &Method, path: &str) -> RefOutcome {
    let host = host.map(ref_host).filter(|h| !h.is_empty());
    let mut allowed = BTreeSet::new();
    let groups = [host, None];
    let groups = if groups[0].is_some() {
        &groups[..]
    } else {
        &groups[1..]
    };
    for group in groups {
        for tier in 0..2 {
            // Every route of this host and tier that matches, most specific first.
            let mut matching: Vec<(&RefRoute, Vec<(String, String)>)> = routes
                .iter()
                .filter(|r| r.host == *group && r.tier == tier)
                .filter_map(|r| Some((r, ref_match(&r.pattern, path)?)))
                .collect();
            matching.sort_by(|(a, _), (b, _)| {
                let ka: Vec<u8> = a.pattern.iter().map(Pat::rank).collect();
                let kb: Vec<u8> = b.pattern.iter().map(Pat::rank).collect();
                kb.cmp(&ka)
            });
            if let Some((route, params)) = matching.iter().find(|(r, _)| r.methods.contains(method))
            {
                return RefOutcome::Found {
                    trigger: route.trigger.clone(),
                    params: params.clone(),
                    strip: route.strip.clone(),
                };
            }
            for (route, _) in &matching {
                allowed.extend(route.methods.iter().map(Method::to_string));
            }
        }
    }
    if allowed.is_empty() {
        RefOutcome::NotFound
    } else {
        RefOutcome::MethodNotAllowed(allowed)
    }
}

fn table_lookup(table: &RouteTable, host: Option<&str>, method: &Method, path: &str) -> RefOutcome {
    match table.lookup(host, method, path) {
        Lookup::Found { target, params } => {
            let (params, strip) = match &target.mode {
                PathMode::Template { .. } => (
                    params
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    None,
                ),
                PathMode::Prefix { strip } => (
                    params
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    Some(strip.as_deref().map(str::to_owned)),
                ),
            };
            RefOutcome::Found {
                trigger: target.trigger.to_string(),
                params,
                strip,
            }
        }
        Lookup::MethodNotAllowed(methods) => {
            RefOutcome::MethodNotAllowed(methods.iter().map(Method::to_string).collect())
        }
        Lookup::NotFound => RefOutcome::NotFound,
    }
}

fn check_case(case: &Case) {
    let index = EndpointIndex::new();
    let functions = [FunctionRecord {
        id: FunctionId::new("default", "f"),
        generation: 1,
        timeout_s: 60,
        spec_timeout_s: 120,
    }];
    // Only triggers that validate reach the store, so only they reach the table.
    let triggers: Vec<TriggerRecord> = case
        .triggers
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, t)| TriggerRecord::new("default", &format!("t{i}"), &format!("{i:03}"), t.spec()))
        .filter(|t| t.spec().validate().is_ok())
        .collect();
    let table = RouteTable::build(&triggers, &functions, &RouteTable::empty(), &index);

    // The table says which triggers it routes; the reference routes exactly those.
    let mut routes: Vec<RefRoute> = Vec::new();
    for (t, info) in triggers.iter().zip(table.routes()) {
        let name = format!("default/{}", t.name());
        assert_eq!(info.trigger, name, "routes() keeps the creation order");
        let mine = ref_routes(&name, &t.spec());
        match &info.skipped {
            None => routes.extend(mine),
            Some(reason) => {
                // A trigger is skipped only for a conflict with one routed before it on the same
                // host; one without parameters only when a routed trigger has one of its
                // patterns with a common method.
                let host = mine.first().and_then(|r| r.host.clone());
                assert!(
                    routes.iter().any(|r| r.host == host),
                    "{name} skipped ({reason}) with nothing routed before it on its host:\n{t:#?}"
                );
                let literal = mine
                    .iter()
                    .all(|r| r.pattern.iter().all(|p| !matches!(p, Pat::Param(_))))
                    && t.relativeurl().is_none_or(|u| !u.contains('{'));
                if literal {
                    let clash = mine.iter().any(|m| {
                        routes.iter().any(|r| {
                            r.host == m.host
                                && r.tier == m.tier
                                && r.pattern == m.pattern
                                && r.methods.iter().any(|x| m.methods.contains(x))
                        })
                    });
                    assert!(
                        clash,
                        "{name} skipped ({reason}) without a clashing route:\n{t:#?}"
                    );
                }
            }
        }
    }

    for request in case.requests.iter().take(8) {
        let (host, method, path) = request.render();
        let want = ref_lookup(&routes, host, &method, &path);
        let got = table_lookup(&table, host, &method, &path);
        assert_eq!(
            got,
            want,
            "{method} {path} (host {host:?}) on routes {:#?}",
            table.routes()
        );
    }
}

#[test]
fn route_table_agrees_with_the_reference_matcher() {
    check!()
        .with_type::<Case>()
        .with_test_time(TEST_TIME)
        .for_each(check_case);
}

// ---- the table at scale, built one change at a time ----

/// A seeded random trigger: literals from a wider pool than the fuzz target's, so thousands of
/// triggers mostly route (some still collide, to exercise precedence and displacement).
fn scale_spec(rng: &mut StdRng) -> HttpTriggerSpec {
    let segs: Vec<String> = (0..rng.random_range(1..5))
        .map(|_| match rng.random_range(0..10) {
            0 => format!("{{{}}}", pick(&PARAMS, rng.random_range(0..3))),
            1 => String::new(),
            2 => pick(&LITERALS, rng.random_range(0..6)).to_owned(),
            _ => format!("s{}", rng.random_range(0..40)),
        })
        .collect();
    let is_prefix = rng.random_range(0..4) == 0;
    let mut segs = segs;
    if is_prefix {
        for s in &mut segs {
            if s.starts_with('{') {
                *s = "p".into();
            }
        }
    } else if rng.random_range(0..8) == 0 {
        segs.push("{*rest}".into());
    }
    let path = render_path(&segs, rng.random_range(0..4) == 0);
    let methods: u8 = rng.random_range(0..16);
    HttpTriggerSpec {
        host: pick(&HOSTS, rng.random_range(0..7)).map(str::to_owned),
        relativeurl: (!is_prefix).then(|| path.clone()),
        prefix: is_prefix.then_some(path),
        keep_prefix: rng.random_range(0..2) == 0,
        methods: METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| methods & (1 << i) != 0)
            .map(|(_, m)| m.to_string())
            .collect(),
        functionref: FunctionReference::name(format!("f{}", rng.random_range(0..5))),
    }
}

/// A request path near the routes: a route's path with its parameters filled in, cut short,
/// extended or with one segment changed.
fn scale_request(
    rng: &mut StdRng,
    triggers: &[TriggerRecord],
) -> (Option<&'static str>, Method, String) {
    let t = &triggers[rng.random_range(0..triggers.len())];
    let path = t.prefix().or(t.relativeurl()).unwrap_or("/");
    let mut segs: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| {
            if s.starts_with('{') {
                pick(&VALUES, rng.random_range(0..5)).to_owned()
            } else {
                s.to_owned()
            }
        })
        .collect();
    match rng.random_range(0..5) {
        0 => {
            segs.pop();
        }
        1 => segs.push(format!("s{}", rng.random_range(0..40))),
        2 => {
            let i = rng.random_range(0..segs.len().max(1));
            if let Some(s) = segs.get_mut(i) {
                *s = pick(&VALUES, rng.random_range(0..5)).to_owned();
            }
        }
        _ => {}
    }
    (
        pick(&HOSTS, rng.random_range(0..7)),
        METHODS[rng.random_range(0..4)].clone(),
        format!("/{}", segs.join("/")),
    )
}

/// Thousands of triggers applied one change at a time, in random order (so older triggers
/// arrive after newer ones they conflict with), then some removed and some replaced: the table
/// equals a full build of the final set, and its lookups equal the reference matcher's.
#[test]
fn incremental_table_at_scale_agrees_with_a_full_build_and_the_reference() {
    const TRIGGERS: usize = 6_000;
    const REQUESTS: usize = 3_000;
    let mut rng = StdRng::seed_from_u64(0x006b_6170_7061);
    let index = EndpointIndex::new();
    let functions: Vec<FunctionRecord> = (0..4)
        .map(|i| FunctionRecord {
            id: FunctionId::new("default", format!("f{i}")),
            generation: 1,
            timeout_s: 60,
            spec_timeout_s: 120,
        })
        .collect();
    let mut triggers: Vec<TriggerRecord> = (0..TRIGGERS)
        .map(|i| {
            TriggerRecord::new(
                if i % 3 == 0 { "ns-a" } else { "default" },
                &format!("t{i}"),
                // Ties on purpose: precedence falls back to namespace and name.
                &format!("{:05}", rng.random_range(0..TRIGGERS as u32)),
                scale_spec(&mut rng),
            )
        })
        .filter(|t| t.spec().validate().is_ok())
        .collect();

    let mut table = RouteTable::empty();
    for f in &functions {
        table.apply(Change::Function(f.clone()), &index);
    }
    let mut order: Vec<usize> = (0..triggers.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    for &i in &order {
        table.apply(Change::Trigger(Box::new(triggers[i].clone())), &index);
    }
    // Remove a fifth, replace a tenth (new spec, same creation time), add function f4 that
    // some triggers named while it was missing, and remove f0.
    let mut kept = Vec::new();
    for (i, mut t) in triggers.drain(..).enumerate() {
        match i % 10 {
            0 | 5 => table.apply(
                Change::TriggerGone(t.namespace().to_owned(), t.name().to_owned()),
                &index,
            ),
            3 => {
                t = TriggerRecord::new(t.namespace(), t.name(), t.creation(), scale_spec(&mut rng));
                if t.spec().validate().is_ok() {
                    table.apply(Change::Trigger(Box::new(t.clone())), &index);
                    kept.push(t);
                } else {
                    table.apply(
                        Change::TriggerGone(t.namespace().to_owned(), t.name().to_owned()),
                        &index,
                    );
                }
            }
            _ => kept.push(t),
        }
    }
    let triggers = kept;
    let f4 = FunctionRecord {
        id: FunctionId::new("default", "f4"),
        generation: 1,
        timeout_s: 60,
        spec_timeout_s: 120,
    };
    table.apply(Change::Function(f4.clone()), &index);
    table.apply(
        Change::FunctionGone(FunctionId::new("default", "f0")),
        &index,
    );
    let mut final_functions = functions[1..].to_vec();
    final_functions.push(f4);

    let full = RouteTable::build(&triggers, &final_functions, &RouteTable::empty(), &index);
    let status = |t: &RouteTable| -> Vec<(String, bool)> {
        t.routes()
            .into_iter()
            .map(|r| (r.trigger, r.skipped.is_none()))
            .collect()
    };
    let incremental = status(&table);
    let built = status(&full);
    let differ: Vec<_> = incremental
        .iter()
        .zip(&built)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| {
            let t = triggers
                .iter()
                .find(|t| format!("{}/{}", t.namespace(), t.name()) == a.0)
                .map(|t| (t.creation().to_owned(), t.spec()));
            format!("{a:?} vs {b:?}: {t:?}")
        })
        .collect();
    assert!(
        incremental.len() == built.len() && differ.is_empty(),
        "incremental and full build route the same triggers ({} vs {}): {differ:#?}",
        incremental.len(),
        built.len()
    );
    let routed = incremental.iter().filter(|(_, r)| *r).count();
    assert!(routed >= 2_000, "only {routed} triggers routed");

    // Function entries follow the store: f0 is missing, f4 exists.
    for t in &triggers {
        let spec = t.spec();
        let name = &spec.functionref.name;
        if let Lookup::Found { target, .. } = table.lookup(
            spec.host.as_deref(),
            &Method::from_bytes(spec.effective_methods()[0].as_bytes()).expect("valid"),
            "/",
        ) && target.trigger.ends_with(&format!("/{}", t.name()))
        {
            let exists = t.namespace() == "default" && name != "f0";
            assert_eq!(
                target.choice.pick().exists,
                exists,
                "{}/{name}",
                t.namespace()
            );
        }
    }

    let mut routes: Vec<RefRoute> = Vec::new();
    let mut by_order: Vec<&TriggerRecord> = triggers.iter().collect();
    by_order.sort_by(|a, b| {
        (a.creation(), a.namespace(), a.name()).cmp(&(b.creation(), b.namespace(), b.name()))
    });
    for (t, (name, ok)) in by_order.iter().zip(&incremental) {
        assert_eq!(*name, format!("{}/{}", t.namespace(), t.name()));
        if *ok {
            routes.extend(ref_routes(name, &t.spec()));
        }
    }
    let mut found = 0;
    for _ in 0..REQUESTS {
        let (host, method, path) = scale_request(&mut rng, &triggers);
        let want = ref_lookup(&routes, host, &method, &path);
        found += usize::from(matches!(want, RefOutcome::Found { .. }));
        assert_eq!(
            table_lookup(&table, host, &method, &path),
            want,
            "{method} {path} (host {host:?})"
        );
        assert_eq!(table_lookup(&full, host, &method, &path), want);
    }
    assert!(
        found > REQUESTS / 4,
        "only {found} requests matched a route"
    );
}
