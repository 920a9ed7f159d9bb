//! Route patterns and the route table: `(method set, path pattern)` → target.
//!
//! Patterns are exact (`/a/b`), have named segments (`/users/:id`) or end in a wildcard
//! (`/static/...`). At each segment a literal beats a parameter, which beats a wildcard, so the
//! most specific route wins. Two routes with the same shape and overlapping methods are
//! ambiguous and refused when the table is built.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// Matches any one non-empty segment and binds it to this name.
    Param(Box<str>),
}

/// A parsed path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutePattern {
    /// The segments before any wildcard.
    pub segments: Vec<Segment>,
    /// Whether the pattern ends in `/...` (matches the rest of the path, including nothing).
    pub wildcard: bool,
    source: Box<str>,
}

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The pattern text is malformed.
    #[error("invalid route path {path:?}: {reason}")]
    InvalidPattern {
        /// The pattern text.
        path: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An HTTP method name is not valid.
    #[error("invalid HTTP method {method:?}: use names such as \"GET\" or \"POST\"")]
    InvalidMethod {
        /// The method text.
        method: String,
    },
    /// Two routes would match the same requests.
    #[error(
        "routes {first} and {second} are ambiguous: both match the same requests; change one path or give them disjoint methods"
    )]
    Ambiguous {
        /// Description of the route already in the table.
        first: String,
        /// Description of the route being added.
        second: String,
    },
}

impl RoutePattern {
    /// Parses a pattern such as `/users/:id` or `/static/...`.
    pub fn parse(path: &str) -> Result<Self, RouteError> {
        let invalid = |reason: &str| RouteError::InvalidPattern {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if !path.starts_with('/') {
            return Err(invalid("a route path must start with '/', like \"/hello\""));
        }
        if path.len() > 1024 {
            return Err(invalid("a route path may be at most 1024 bytes long"));
        }
        let mut segments = Vec::new();
        let mut wildcard = false;
        let body = &path[1..];
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        let mut names = std::collections::HashSet::new();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *part == "..." {
                if !last {
                    return Err(invalid(
                        "'...' may only be the last segment, like \"/static/...\"",
                    ));
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(invalid(
                        "a parameter segment is ':' followed by letters, digits or '_', like \"/users/:id\"",
                    ));
                }
                if !names.insert(name) {
                    return Err(invalid(&format!("parameter ':{name}' appears twice")));
                }
                segments.push(Segment::Param(name.into()));
            } else if part.is_empty() {
                if last {
                    // A trailing slash is insignificant: "/a/" is "/a".
                    continue;
                }
                return Err(invalid("empty segment ('//'): remove the extra '/'"));
            } else if part.contains(['?', '#', ' ', '*', '{', '}']) {
                return Err(invalid(
                    "segments may not contain '?', '#', spaces, '*' or braces; use ':name' for a parameter and a final '/...' for a wildcard",
                ));
            } else if part.starts_with("...") || part.ends_with("...") {
                return Err(invalid(
                    "a wildcard is a whole final segment: write \"/prefix/...\"",
                ));
            } else {
                segments.push(Segment::Literal((*part).into()));
            }
        }
        Ok(RoutePattern {
            segments,
            wildcard,
            source: path.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The shape that decides ambiguity: parameter names do not matter.
    fn shape(&self) -> (Vec<Option<&str>>, bool) {
        let segs = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => Some(&**l),
                Segment::Param(_) => None,
            })
            .collect();
        (segs, self.wildcard)
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The methods a route accepts: any, or a set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MethodSet {
    /// Every method.
    Any,
    /// Only these (upper-case, sorted, deduplicated).
    Only(Vec<Box<str>>),
}

impl MethodSet {
    /// Builds a set from method names; an empty list means any method.
    pub fn parse<S: AsRef<str>>(methods: &[S]) -> Result<Self, RouteError> {
        if methods.is_empty() {
            return Ok(MethodSet::Any);
        }
        let mut out: Vec<Box<str>> = Vec::new();
        for m in methods {
            let m = m.as_ref();
            if m == "*" || m.eq_ignore_ascii_case("any") {
                return Ok(MethodSet::Any);
            }
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) || m.len() > 20 {
                return Err(RouteError::InvalidMethod {
                    method: m.to_string(),
                });
            }
            out.push(m.to_ascii_uppercase().into());
        }
        out.sort();
        out.dedup();
        Ok(MethodSet::Only(out))
    }

    /// Whether `method` is in the set.
    pub fn contains(&self, method: &str) -> bool {
        match self {
            MethodSet::Any => true,
            MethodSet::Only(ms) => ms.iter().any(|m| **m == *method),
        }
    }

    fn overlaps(&self, other: &MethodSet) -> bool {
        match (self, other) {
            (MethodSet::Any, _) | (_, MethodSet::Any) => true,
            (MethodSet::Only(a), MethodSet::Only(b)) => a.iter().any(|m| b.contains(m)),
        }
    }
}

impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodSet::Any => f.write_str("*"),
            MethodSet::Only(ms) => f.write_str(&ms.join(",")),
        }
    }
}

#[derive(Debug)]
struct Entry<T> {
    methods: MethodSet,
    pattern: Arc<RoutePattern>,
    target: T,
    label: String,
}

/// The parameter child of a node and the parameter names that lead to it.
type ParamChild<T> = (Box<Node<T>>, Vec<Box<str>>);

/// A route's shape (literal or parameter per segment, wildcard) → the routes with that shape.
type Shapes = HashMap<(Vec<Option<String>>, bool), Vec<(MethodSet, String)>>;

#[derive(Debug)]
struct Node<T> {
    literals: HashMap<Box<str>, Node<T>>,
    param: Option<ParamChild<T>>,
    /// Routes ending exactly here.
    here: Vec<Entry<T>>,
    /// Routes with a wildcard starting here.
    rest: Vec<Entry<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literals: HashMap::new(),
            param: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

/// Collects routes, refusing ambiguous ones, then freezes into a [`RouteTable`].
#[derive(Debug)]
pub struct RouteTableBuilder<T> {
    root: Node<T>,
    shapes: Shapes,
    len: usize,
}

impl<T> Default for RouteTableBuilder<T> {
    fn default() -> Self {
        RouteTableBuilder {
            root: Node::default(),
            shapes: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> RouteTableBuilder<T> {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route. `label` describes it in errors (e.g. `"GET /users/:id (app shop, function api)"`).
    pub fn add(
        &mut self,
        methods: MethodSet,
        pattern: RoutePattern,
        target: T,
        label: impl Into<String>,
    ) -> Result<(), RouteError> {
        let label = label.into();
        let (shape, wild) = pattern.shape();
        let key = (shape.iter().map(|s| s.map(str::to_string)).collect(), wild);
        let same = self.shapes.entry(key).or_default();
        if let Some((_, first)) = same.iter().find(|(m, _)| m.overlaps(&methods)) {
            return Err(RouteError::Ambiguous {
                first: first.clone(),
                second: label,
            });
        }
        same.push((methods.clone(), label.clone()));

        let pattern = Arc::new(pattern);
        let mut node = &mut self.root;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Literal(l) => node.literals.entry(l.clone()).or_default(),
                Segment::Param(name) => {
                    let (child, names) = node
                        .param
                        .get_or_insert_with(|| (Box::default(), Vec::new()));
                    names.push(name.clone());
                    child
                }
            };
        }
        let entry = Entry {
            methods,
            pattern: pattern.clone(),
            target,
            label,
        };
        if pattern.wildcard {
            node.rest.push(entry);
        } else {
            node.here.push(entry);
        }
        self.len += 1;
        Ok(())
    }

    /// Freezes the table.
    pub fn build(self) -> RouteTable<T> {
        RouteTable {
            root: self.root,
            len: self.len,
        }
    }
}

/// An immutable route table. Built once per deploy and swapped atomically; lookups take no lock.
#[derive(Debug)]
pub struct RouteTable<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            root: Node::default(),
            len: 0,
        }
    }
}

/// A successful lookup.
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    /// The route's target.
    pub target: &'a T,
    /// The matched pattern.
    pub pattern: &'a RoutePattern,
    /// Named parameters, in pattern order.
    pub params: Vec<(&'a str, &'a str)>,
    /// For wildcard routes, the rest of the path after the matched prefix (starting with '/',
    /// or empty).
    pub rest: Option<&'a str>,
}

impl<T> RouteTable<T> {
    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finds the most specific route for `method` and `path` (the path without query).
    /// `Err(true)` means some route matched the path but none the method (405);
    /// `Err(false)` means no route matched the path (404).
    pub fn lookup<'a>(&'a self, method: &str, path: &'a str) -> Result<RouteMatch<'a, T>, bool> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let mut segs: Vec<(usize, &str)> = Vec::with_capacity(8);
        if !trimmed.is_empty() {
            let base = path.len() - path.trim_start_matches('/').len();
            let mut off = base;
            for s in trimmed.split('/') {
                segs.push((off, s));
                off += s.len() + 1;
            }
        }
        let mut params = Vec::new();
        let mut path_matched = false;
        match Self::walk(
            &self.root,
            &segs,
            path,
            method,
            &mut params,
            &mut path_matched,
        ) {
            Some(m) => Ok(m),
            None => Err(path_matched),
        }
    }

    fn walk<'a>(
        node: &'a Node<T>,
        segs: &[(usize, &'a str)],
        path: &'a str,
        method: &str,
        params: &mut Vec<&'a str>,
        path_matched: &mut bool,
    ) -> Option<RouteMatch<'a, T>> {
        if let Some(((_, seg), tail)) = segs.split_first() {
            if let Some(child) = node.literals.get(*seg)
                && let Some(m) = Self::walk(child, tail, path, method, params, path_matched)
            {
                return Some(m);
            }
            if let Some((child, _)) = &node.param
                && !seg.is_empty()
            {
                params.push(seg);
                if let Some(m) = Self::walk(child, tail, path, method, params, path_matched) {
                    return Some(m);
                }
                params.pop();
            }
        } else if let Some(m) = Self::pick(&node.here, params, None, method, path_matched) {
            return Some(m);
        }
        let rest = segs.first().map_or("", |(off, _)| &path[off - 1..]);
        Self::pick(&node.rest, params, Some(rest), method, path_matched)
    }

    fn pick<'a>(
        entries: &'a [Entry<T>],
        params: &[&'a str],
        rest: Option<&'a str>,
        method: &str,
        path_matched: &mut bool,
    ) -> Option<RouteMatch<'a, T>> {
        if !entries.is_empty() {
            *path_matched = true;
        }
        let e = entries.iter().find(|e| e.methods.contains(method))?;
        let names = e.pattern.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(&**n),
            Segment::Literal(_) => None,
        });
        Some(RouteMatch {
            target: &e.target,
            pattern: &e.pattern,
            params: names.zip(params.iter().copied()).collect(),
            rest,
        })
    }

    /// Every route's label, for listings and errors.
    pub fn labels(&self) -> Vec<&str> {
        fn collect<'a, T>(n: &'a Node<T>, out: &mut Vec<&'a str>) {
            out.extend(n.here.iter().chain(&n.rest).map(|e| e.label.as_str()));
            for c in n.literals.values() {
                collect(c, out);
            }
            if let Some((c, _)) = &n.param {
                collect(c, out);
            }
        }
        let mut out = Vec::new();
        collect(&self.root, &mut out);
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, &'static str)]) -> RouteTable<&'static str> {
        let mut b = RouteTableBuilder::new();
        for (methods, path, target) in routes {
            let ms: Vec<&str> = if methods.is_empty() {
                vec![]
            } else {
                methods.split(',').collect()
            };
            b.add(
                MethodSet::parse(&ms).unwrap(),
                RoutePattern::parse(path).unwrap(),
                *target,
                *path,
            )
            .unwrap();
        }
        b.build()
    }

    #[test]
    fn most_specific_wins() {
        let t = table(&[
            ("", "/users/me", "me"),
            ("", "/users/:id", "user"),
            ("", "/users/...", "users-rest"),
            ("", "/...", "fallback"),
            ("GET", "/users/:id/posts/:post", "post"),
        ]);
        let hit = |m: &str, p: &str| t.lookup(m, p).map(|r| *r.target);
        assert_eq!(hit("GET", "/users/me"), Ok("me"));
        assert_eq!(hit("GET", "/users/42"), Ok("user"));
        assert_eq!(hit("GET", "/users/42/"), Ok("user"));
        assert_eq!(hit("GET", "/users/42/posts/7"), Ok("post"));
        assert_eq!(hit("POST", "/users/42/posts/7"), Ok("users-rest"));
        assert_eq!(hit("GET", "/users/42/other"), Ok("users-rest"));
        assert_eq!(hit("GET", "/users"), Ok("users-rest"));
        assert_eq!(hit("GET", "/"), Ok("fallback"));
        assert_eq!(hit("GET", "/x/y"), Ok("fallback"));
        let m = t.lookup("GET", "/users/42/posts/7").unwrap();
        assert_eq!(m.params, vec![("id", "42"), ("post", "7")]);
        let m = t.lookup("GET", "/users/42/other/x").unwrap();
        assert_eq!(m.rest, Some("/42/other/x"));
    }

    #[test]
    fn methods_and_not_found() {
        let t = table(&[("GET", "/a", "get"), ("POST,PUT", "/a", "write")]);
        assert_eq!(t.lookup("GET", "/a").map(|m| *m.target), Ok("get"));
        assert_eq!(t.lookup("PUT", "/a").map(|m| *m.target), Ok("write"));
        assert!(
            t.lookup("DELETE", "/a").map(|m| *m.target).unwrap_err(),
            "405"
        );
        assert!(
            !t.lookup("GET", "/b").map(|m| *m.target).unwrap_err(),
            "404"
        );
    }

    #[test]
    fn method_mismatch_falls_back_to_less_specific() {
        let t = table(&[("GET", "/users/me", "me"), ("POST", "/users/:id", "update")]);
        assert_eq!(
            t.lookup("POST", "/users/me").map(|m| *m.target),
            Ok("update")
        );
    }

    #[test]
    fn ambiguity_is_refused() {
        let mut b = RouteTableBuilder::new();
        let any = MethodSet::Any;
        b.add(
            any.clone(),
            RoutePattern::parse("/users/:id").unwrap(),
            1,
            "a",
        )
        .unwrap();
        let err = b.add(
            any.clone(),
            RoutePattern::parse("/users/:name").unwrap(),
            2,
            "b",
        );
        assert!(matches!(err, Err(RouteError::Ambiguous { .. })));
        let get = MethodSet::parse(&["GET"]).unwrap();
        let post = MethodSet::parse(&["post"]).unwrap();
        b.add(get.clone(), RoutePattern::parse("/x").unwrap(), 3, "c")
            .unwrap();
        b.add(post, RoutePattern::parse("/x/").unwrap(), 4, "d")
            .unwrap();
        assert!(
            b.add(get, RoutePattern::parse("/x").unwrap(), 5, "e")
                .is_err()
        );
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "hello", "/a//b", "/.../x", "/a/:", "/a/:x/:x", "/a/b*", "/a/x...",
        ] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(MethodSet::parse(&["GE T"]).is_err());
    }
}
