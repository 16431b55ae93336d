//! The route index: a persistent path-segment tree per host and tier.
//!
//! A pattern is a list of segments (the text between `/`s after the leading one), each a
//! literal, a `{param}` (one non-empty segment) or, last only, a `{*catch-all}` (the non-empty
//! rest of the path). Parameter names are not part of the tree: `/u/{id}` and `/u/{uid}` share
//! a node, and each route keeps its own names. A node holds its literal children, one parameter
//! child, the routes ending in a catch-all there and the routes ending there.
//!
//! Lookup walks the request path segment by segment, trying a literal child, then the
//! parameter child, then the catch-all, and backtracks when a branch has no route for the
//! request's method: the first route found is the most specific one (compared segment by
//! segment, literal over parameter over catch-all). Its cost is bounded by the path's depth
//! and the few nodes that match it, never by the number of routes.
//!
//! Nodes are immutable and shared (`Arc`); the literal children of a node live in a
//! persistent B-tree (`imbl::OrdMap`: its leaves are at least a third full, where a hash array
//! mapped trie allocates every leaf node at full width, about six times the memory per entry
//! at a few thousand routes). Inserting or removing a route copies only the nodes on its
//! path (and O(log n) of a wide node's map), so a changed table shares everything else with the
//! previous one.
//!
//! Conflicts, pairwise and symmetric (two routes of one host and tier with a common method):
//! the same shape (parameter names ignored), or a `{param}` and a `{*catch-all}` at the same
//! position after the same segments (`/p/{a}/x` and `/p/{*r}`). These are the rules the radix
//! tree the table used before (`matchit` 0.9) applied to whole-segment patterns.

use std::sync::Arc;

use http::Method;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Literal(Arc<str>),
    Param,
    CatchAll,
}

/// Splits a template (`/users/{id}`) into segments and its parameter names, in order.
pub(crate) fn template_shape(template: &str) -> (Vec<Seg>, Vec<Box<str>>) {
    let mut names = Vec::new();
    let segs = template
        .strip_prefix('/')
        .unwrap_or(template)
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(inner) => match inner.strip_prefix('*') {
                    Some(name) => {
                        names.push(Box::from(name));
                        Seg::CatchAll
                    }
                    None => {
                        names.push(Box::from(inner));
                        Seg::Param
                    }
                },
                None => Seg::Literal(Arc::from(s)),
            },
        )
        .collect();
    (segs, names)
}

/// Splits a literal path (braces are plain characters) into segments.
pub(crate) fn literal_shape(path: &str) -> Vec<Seg> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(|s| Seg::Literal(Arc::from(s)))
        .collect()
}

/// The methods a route accepts: a bit per standard method, a list for the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MethodSet {
    standard: u16,
    other: Box<[Method]>,
}

const STANDARD: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::PATCH,
    Method::TRACE,
];

fn standard_bit(m: &Method) -> Option<u16> {
    STANDARD.iter().position(|s| s == m).map(|i| 1 << i)
}

impl MethodSet {
    pub fn from_methods(methods: &[Method]) -> Self {
        let mut standard = 0;
        let mut other = Vec::new();
        for m in methods {
            match standard_bit(m) {
                Some(bit) => standard |= bit,
                None if !other.contains(m) => other.push(m.clone()),
                None => {}
            }
        }
        Self {
            standard,
            other: other.into(),
        }
    }

    pub fn contains(&self, m: &Method) -> bool {
        match standard_bit(m) {
            Some(bit) => self.standard & bit != 0,
            None => self.other.contains(m),
        }
    }

    /// A method both sets hold.
    pub fn common(&self, other: &MethodSet) -> Option<Method> {
        let both = self.standard & other.standard;
        if both != 0 {
            return Some(STANDARD[both.trailing_zeros() as usize].clone());
        }
        self.other.iter().find(|m| other.other.contains(m)).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = Method> + '_ {
        STANDARD
            .iter()
            .enumerate()
            .filter(|(i, _)| self.standard & (1 << i) != 0)
            .map(|(_, m)| m.clone())
            .chain(self.other.iter().cloned())
    }
}

/// A route at a terminal of the tree (held in its node, not behind a pointer of its own).
#[derive(Clone)]
pub(crate) struct Leaf<T> {
    pub methods: MethodSet,
    /// Parameter names of the pattern, in order (values are collected in the same order).
    pub names: Arc<[Box<str>]>,
    pub value: T,
}

/// A node of the tree (see the module documentation).
pub(crate) struct Node<T> {
    literal: Option<imbl::OrdMap<Arc<str>, Arc<Node<T>>>>,
    param: Option<Arc<Node<T>>>,
    /// Boxed slices, not vectors: a node is copied on every change below it, and most hold
    /// one leaf or none.
    catch_all: Box<[Leaf<T>]>,
    here: Box<[Leaf<T>]>,
}

impl<T: Clone> Clone for Node<T> {
    fn clone(&self) -> Self {
        Self {
            literal: self.literal.clone(),
            param: self.param.clone(),
            catch_all: self.catch_all.clone(),
            here: self.here.clone(),
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            literal: None,
            param: None,
            catch_all: Box::default(),
            here: Box::default(),
        }
    }
}

impl<T: Clone> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.as_ref().is_none_or(|m| m.is_empty())
            && self.param.is_none()
            && self.catch_all.is_empty()
            && self.here.is_empty()
    }

    fn child(&self, seg: &Seg) -> Option<&Arc<Node<T>>> {
        match seg {
            Seg::Literal(s) => self.literal.as_ref()?.get(s),
            Seg::Param => self.param.as_ref(),
            Seg::CatchAll => None,
        }
    }

    /// Adds every route under this node (itself included) with a method of `methods`.
    fn all_with<'a>(&'a self, methods: &MethodSet, out: &mut Vec<(&'a T, Method)>) {
        for leaves in [&self.here, &self.catch_all] {
            out.extend(
                leaves
                    .iter()
                    .filter_map(|l| Some((&l.value, l.methods.common(methods)?))),
            );
        }
        if let Some(p) = &self.param {
            p.all_with(methods, out);
        }
        for c in self.literal.iter().flat_map(|m| m.values()) {
            c.all_with(methods, out);
        }
    }
}

/// The values of a match's parameters, in the route's order.
pub(crate) type Values<'p> = Vec<&'p str>;

/// A path-segment tree of routes carrying `T`.
pub(crate) struct Tree<T> {
    root: Arc<Node<T>>,
}

impl<T> Clone for Tree<T> {
    fn clone(&self) -> Self {
        Self {
            root: Arc::clone(&self.root),
        }
    }
}

impl<T> Default for Tree<T> {
    fn default() -> Self {
        Self {
            root: Arc::new(Node::default()),
        }
    }
}

/// Adds `leaf` to a node's leaves.
fn push<T>(leaves: &mut Box<[Leaf<T>]>, leaf: Leaf<T>) {
    let mut all = std::mem::take(leaves).into_vec();
    all.push(leaf);
    *leaves = all.into_boxed_slice();
}

/// Keeps the leaves for which `keep` holds.
fn retain<T>(leaves: &mut Box<[Leaf<T>]>, keep: impl Fn(&Leaf<T>) -> bool) {
    if leaves.iter().all(&keep) {
        return;
    }
    let mut all = std::mem::take(leaves).into_vec();
    all.retain(keep);
    *leaves = all.into_boxed_slice();
}

impl<T: Clone> Tree<T> {
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// The routes that conflict with a route of `shape` accepting `methods`, each with a
    /// method both accept.
    pub fn conflicts(&self, shape: &[Seg], methods: &MethodSet) -> Vec<(&T, Method)> {
        fn overlapping<'a, T>(
            leaves: &'a [Leaf<T>],
            methods: &MethodSet,
            out: &mut Vec<(&'a T, Method)>,
        ) {
            out.extend(
                leaves
                    .iter()
                    .filter_map(|l| Some((&l.value, l.methods.common(methods)?))),
            );
        }
        let mut out = Vec::new();
        let mut node = &*self.root;
        for (i, seg) in shape.iter().enumerate() {
            match seg {
                Seg::Param => overlapping(&node.catch_all, methods, &mut out),
                Seg::CatchAll => {
                    if let Some(p) = &node.param {
                        p.all_with(methods, &mut out);
                    }
                    overlapping(&node.catch_all, methods, &mut out);
                    return out;
                }
                Seg::Literal(_) => {}
            }
            match node.child(seg) {
                Some(child) => node = child,
                None => return out,
            }
            if i + 1 == shape.len() {
                overlapping(&node.here, methods, &mut out);
            }
        }
        out
    }

    /// Adds a route (the caller has checked [`Tree::conflicts`]). Copies the nodes on its path.
    pub fn insert(&mut self, shape: &[Seg], leaf: Leaf<T>) {
        fn go<T: Clone>(node: &mut Arc<Node<T>>, shape: &[Seg], leaf: Leaf<T>) {
            let node = Arc::make_mut(node);
            match shape.split_first() {
                None => push(&mut node.here, leaf),
                Some((Seg::CatchAll, _)) => push(&mut node.catch_all, leaf),
                Some((Seg::Param, rest)) => {
                    let child = node.param.get_or_insert_with(Default::default);
                    go(child, rest, leaf);
                }
                Some((Seg::Literal(s), rest)) => {
                    let map = node.literal.get_or_insert_with(imbl::OrdMap::new);
                    let child = map.entry(Arc::clone(s)).or_default();
                    go(child, rest, leaf);
                }
            }
        }
        go(&mut self.root, shape, leaf);
    }

    /// Removes the routes of `shape` for which `is_it` holds; prunes emptied nodes.
    pub fn remove(&mut self, shape: &[Seg], is_it: &dyn Fn(&T) -> bool) {
        fn go<T: Clone>(node: &mut Arc<Node<T>>, shape: &[Seg], is_it: &dyn Fn(&T) -> bool) {
            let node = Arc::make_mut(node);
            match shape.split_first() {
                None => retain(&mut node.here, |l| !is_it(&l.value)),
                Some((Seg::CatchAll, _)) => retain(&mut node.catch_all, |l| !is_it(&l.value)),
                Some((Seg::Param, rest)) => {
                    if let Some(child) = &mut node.param {
                        go(child, rest, is_it);
                        if child.is_empty() {
                            node.param = None;
                        }
                    }
                }
                Some((Seg::Literal(s), rest)) => {
                    if let Some(map) = &mut node.literal {
                        let mut emptied = false;
                        if let Some(child) = map.get_mut(s) {
                            go(child, rest, is_it);
                            emptied = child.is_empty();
                        }
                        if emptied {
                            map.remove(s);
                        }
                        if map.is_empty() {
                            node.literal = None;
                        }
                    }
                }
            }
        }
        // Only walk (and copy) the path when the route is there.
        if self.find_exact(shape, is_it) {
            go(&mut self.root, shape, is_it);
        }
    }

    fn find_exact(&self, shape: &[Seg], is_it: &dyn Fn(&T) -> bool) -> bool {
        let mut node = &*self.root;
        for seg in shape {
            if *seg == Seg::CatchAll {
                return node.catch_all.iter().any(|l| is_it(&l.value));
            }
            match node.child(seg) {
                Some(c) => node = c,
                None => return false,
            }
        }
        node.here.iter().any(|l| is_it(&l.value))
    }

    /// The most specific route for `path` (which starts with `/`) accepting `method`, with its
    /// parameter values.
    pub fn find<'t, 'p>(
        &'t self,
        method: &Method,
        path: &'p str,
    ) -> Option<(&'t Leaf<T>, Values<'p>)> {
        let rest = path.strip_prefix('/')?;
        let mut values = Vec::new();
        let leaf = find_in(
            &self.root,
            rest,
            &mut |l: &Leaf<T>| l.methods.contains(method),
            &mut values,
        )?;
        Some((leaf, values))
    }

    /// Adds the methods of every route matching `path` to `out`.
    pub fn methods_at(&self, path: &str, out: &mut Vec<Method>) {
        let Some(rest) = path.strip_prefix('/') else {
            return;
        };
        let mut values = Vec::new();
        let mut collect = |l: &Leaf<T>| {
            for m in l.methods.iter() {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
            false
        };
        find_in(&self.root, rest, &mut collect, &mut values);
    }
}

/// Depth-first search from `node` for the remaining path `rest` (what follows a `/`); `accept`
/// says whether a matching route is the answer (`false` goes on searching).
fn find_in<'t, 'p, T: Clone>(
    node: &'t Node<T>,
    rest: &'p str,
    accept: &mut dyn FnMut(&Leaf<T>) -> bool,
    values: &mut Values<'p>,
) -> Option<&'t Leaf<T>> {
    let (seg, after) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut descend = |child: &'t Node<T>, values: &mut Values<'p>| match after {
        None => child.here.iter().find(|l| accept(l)),
        Some(after) => find_in(child, after, accept, values),
    };
    if let Some(child) = node.literal.as_ref().and_then(|m| m.get(seg))
        && let Some(found) = descend(child, values)
    {
        return Some(found);
    }
    if !seg.is_empty()
        && let Some(child) = &node.param
    {
        values.push(seg);
        if let Some(found) = descend(child, values) {
            return Some(found);
        }
        values.pop();
    }
    if !rest.is_empty()
        && let Some(found) = node.catch_all.iter().find(|l| accept(l))
    {
        values.push(rest);
        return Some(found);
    }
    None
}
