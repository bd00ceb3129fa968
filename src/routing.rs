//! The route table: which declared route a request path and method belong to.
//!
//! Owns longest-prefix matching at path-segment boundaries and the method
//! check. A lookup walks the path's segments through a trie, so its cost grows
//! with the path's depth, never with the number of routes, and it allocates
//! nothing. Never touches the host; never decides what to answer.

use std::fmt;

/// HTTP methods a route can list. Anything else is `Method::Other`, which no
/// route admits unless the route lists no methods at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other,
}

impl Method {
    const KNOWN: [(Method, &'static str); 9] = [
        (Method::Get, "GET"),
        (Method::Head, "HEAD"),
        (Method::Post, "POST"),
        (Method::Put, "PUT"),
        (Method::Delete, "DELETE"),
        (Method::Patch, "PATCH"),
        (Method::Options, "OPTIONS"),
        (Method::Connect, "CONNECT"),
        (Method::Trace, "TRACE"),
    ];

    pub fn parse(text: &str) -> Method {
        Self::KNOWN
            .iter()
            .find(|(_, name)| *name == text)
            .map_or(Method::Other, |(method, _)| *method)
    }

    /// Like `parse`, but for the policy: an unknown name is an error there.
    pub fn parse_known(text: &str) -> Option<Method> {
        Some(Self::parse(text)).filter(|m| *m != Method::Other)
    }

    /// The method's name; `Other` (not kept) reads "this method".
    pub fn name(self) -> &'static str {
        Self::KNOWN
            .iter()
            .find(|(method, _)| *method == self)
            .map_or("this method", |(_, name)| *name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of methods; `MethodSet::ANY` admits every method, unknown ones too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

impl MethodSet {
    pub const ANY: MethodSet = MethodSet(u16::MAX);
    pub const EMPTY: MethodSet = MethodSet(0);

    pub fn with(self, method: Method) -> MethodSet {
        MethodSet(self.0 | method.bit())
    }

    pub fn contains(self, method: Method) -> bool {
        self.0 & method.bit() != 0
    }

    pub fn overlaps(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    pub fn is_any(self) -> bool {
        self == MethodSet::ANY
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Method::KNOWN
            .iter()
            .filter(move |(m, _)| self.contains(*m))
            .map(|(_, name)| *name)
    }
}

impl fmt::Display for MethodSet {
    /// The `allow` header form: `GET, HEAD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// The answer to "which route is this?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    Route(usize),
    MethodNotAllowed { allowed: MethodSet },
    NotFound,
}

#[derive(Debug, Default)]
struct Node {
    /// Children sorted by segment, for binary search.
    children: Vec<(Box<str>, usize)>,
    /// Routes whose prefix ends here, with pairwise disjoint method sets.
    routes: Vec<(MethodSet, usize)>,
}

/// Segment trie over the declared prefixes.
#[derive(Debug)]
pub struct RouteTable {
    nodes: Vec<Node>,
}

/// The segments of a normalised prefix or of a request path (query removed).
/// `/` has none; a trailing `/` adds one empty segment on paths, which no
/// prefix has, so `/api/` still matches the prefix `/api`.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let path = crate::path::path_part(path);
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split('/').filter({
        let mut first = true;
        move |seg| {
            // "/" alone yields one empty segment: skip it so "/" is the root.
            let skip = first && seg.is_empty();
            first = false;
            !skip
        }
    })
}

impl RouteTable {
    /// Builds the trie. `routes` yields (normalised prefix, methods) in route
    /// order; the route id is the position. Duplicate prefixes with overlapping
    /// methods are the caller's to refuse (see `policy::compile`).
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a str, MethodSet)>) -> RouteTable {
        let mut table = RouteTable {
            nodes: vec![Node::default()],
        };
        for (id, (prefix, methods)) in routes.into_iter().enumerate() {
            let mut node = 0;
            for seg in segments(prefix) {
                node = table.child_or_insert(node, seg);
            }
            if let Some(n) = table.nodes.get_mut(node) {
                n.routes.push((methods, id));
            }
        }
        table
    }

    fn child_or_insert(&mut self, node: usize, seg: &str) -> usize {
        let next_index = self.nodes.len();
        let Some(parent) = self.nodes.get_mut(node) else {
            return 0;
        };
        match parent.children.binary_search_by(|(s, _)| (**s).cmp(seg)) {
            Ok(pos) => parent.children.get(pos).map_or(0, |(_, child)| *child),
            Err(pos) => {
                parent.children.insert(pos, (seg.into(), next_index));
                self.nodes.push(Node::default());
                next_index
            }
        }
    }

    /// The route for `path` (query string ignored) and `method`: the longest
    /// declared prefix that ends at a segment boundary, then the method check.
    pub fn resolve(&self, path: &str, method: Method) -> RouteMatch {
        let mut node = 0;
        let mut best: Option<&Node> = self.nodes.first().filter(|n| !n.routes.is_empty());
        for seg in segments(path) {
            let Some(current) = self.nodes.get(node) else {
                break;
            };
            match current.children.binary_search_by(|(s, _)| (**s).cmp(seg)) {
                Ok(pos) => {
                    node = current.children.get(pos).map_or(0, |(_, child)| *child);
                    if let Some(n) = self.nodes.get(node).filter(|n| !n.routes.is_empty()) {
                        best = Some(n);
                    }
                }
                Err(_) => break,
            }
        }
        let Some(found) = best else {
            return RouteMatch::NotFound;
        };
        let mut allowed = MethodSet::EMPTY;
        for (methods, id) in &found.routes {
            if methods.contains(method) {
                return RouteMatch::Route(*id);
            }
            allowed = allowed.union(*methods);
        }
        RouteMatch::MethodNotAllowed { allowed }
    }
}

/// Normalises a declared prefix: `/api/courses/` → `/api/courses`.
/// Returns why it is not a usable prefix otherwise.
pub fn normalise_prefix(prefix: &str) -> Result<String, &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with \"/\", e.g. \"/api/courses\"");
    }
    if prefix.contains(['?', '#']) {
        return Err("must not contain a query string or fragment");
    }
    let trimmed = if prefix.len() > 1 {
        prefix.strip_suffix('/').unwrap_or(prefix)
    } else {
        prefix
    };
    if trimmed.contains("//") {
        return Err("must not contain an empty segment (\"//\")");
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_only() -> MethodSet {
        MethodSet::EMPTY.with(Method::Get)
    }

    fn table(prefixes: &[(&str, MethodSet)]) -> RouteTable {
        RouteTable::build(prefixes.iter().copied())
    }

    #[test]
    fn prefix_matches_at_segment_boundaries_only() {
        let t = table(&[("/api/courses", MethodSet::ANY)]);
        assert_eq!(t.resolve("/api/courses", Method::Get), RouteMatch::Route(0));
        assert_eq!(
            t.resolve("/api/courses/7", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            t.resolve("/api/courses/", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            t.resolve("/api/coursesX", Method::Get),
            RouteMatch::NotFound
        );
        assert_eq!(t.resolve("/api", Method::Get), RouteMatch::NotFound);
        assert_eq!(t.resolve("/", Method::Get), RouteMatch::NotFound);
    }

    #[test]
    fn query_string_and_fragment_are_ignored() {
        let t = table(&[("/api/courses", MethodSet::ANY)]);
        assert_eq!(
            t.resolve("/api/courses?x=/y", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            t.resolve("/api/coursesX?/api/courses", Method::Get),
            RouteMatch::NotFound
        );
        assert_eq!(
            t.resolve("/api/courses#a", Method::Get),
            RouteMatch::Route(0)
        );
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let t = table(&[
            ("/api", MethodSet::ANY),
            ("/api/courses/special", MethodSet::ANY),
            ("/api/courses", MethodSet::ANY),
        ]);
        assert_eq!(
            t.resolve("/api/courses/special/1", Method::Get),
            RouteMatch::Route(1)
        );
        assert_eq!(
            t.resolve("/api/courses/1", Method::Get),
            RouteMatch::Route(2)
        );
        assert_eq!(t.resolve("/api/other", Method::Get), RouteMatch::Route(0));
        assert_eq!(
            t.resolve("/api/courses/specialist", Method::Get),
            RouteMatch::Route(2)
        );
    }

    #[test]
    fn root_prefix_catches_everything_else() {
        let t = table(&[("/", MethodSet::ANY), ("/api", MethodSet::ANY)]);
        assert_eq!(t.resolve("/", Method::Get), RouteMatch::Route(0));
        assert_eq!(
            t.resolve("/anything/else", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(t.resolve("/api/x", Method::Get), RouteMatch::Route(1));
    }

    #[test]
    fn method_is_checked_on_the_longest_prefix() {
        let t = table(&[("/api", MethodSet::ANY), ("/api/courses", get_only())]);
        assert_eq!(t.resolve("/api/courses", Method::Get), RouteMatch::Route(1));
        assert_eq!(
            t.resolve("/api/courses", Method::Post),
            RouteMatch::MethodNotAllowed {
                allowed: get_only()
            }
        );
    }

    #[test]
    fn same_prefix_split_by_method() {
        let writes = MethodSet::EMPTY.with(Method::Post).with(Method::Put);
        let t = table(&[("/api/bookings", get_only()), ("/api/bookings", writes)]);
        assert_eq!(
            t.resolve("/api/bookings", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            t.resolve("/api/bookings/1", Method::Put),
            RouteMatch::Route(1)
        );
        assert_eq!(
            t.resolve("/api/bookings", Method::Delete),
            RouteMatch::MethodNotAllowed {
                allowed: get_only().union(writes)
            }
        );
    }

    #[test]
    fn unknown_methods_only_match_routes_without_a_method_list() {
        let t = table(&[("/a", MethodSet::ANY), ("/b", get_only())]);
        assert_eq!(
            t.resolve("/a", Method::parse("PROPFIND")),
            RouteMatch::Route(0)
        );
        assert!(matches!(
            t.resolve("/b", Method::parse("PROPFIND")),
            RouteMatch::MethodNotAllowed { .. }
        ));
    }

    #[test]
    fn method_names_round_trip() {
        assert_eq!(Method::parse("PATCH").name(), "PATCH");
        assert_eq!(Method::parse("PROPFIND").name(), "this method");
    }

    #[test]
    fn adding_a_method_twice_keeps_it() {
        let twice = MethodSet::EMPTY.with(Method::Get).with(Method::Get);
        assert!(twice.contains(Method::Get));
        assert_eq!(twice, MethodSet::EMPTY.with(Method::Get));
        assert_eq!(MethodSet::ANY.with(Method::Post), MethodSet::ANY);
    }

    #[test]
    fn union_with_shared_methods_keeps_them() {
        let get = MethodSet::EMPTY.with(Method::Get);
        let get_post = get.with(Method::Post);
        assert_eq!(get.union(get), get);
        assert_eq!(get_post.union(get), get_post);
        assert_eq!(MethodSet::ANY.union(get), MethodSet::ANY);
    }

    #[test]
    fn allow_header_lists_method_names() {
        let set = MethodSet::EMPTY.with(Method::Post).with(Method::Get);
        assert_eq!(set.to_string(), "GET, POST");
    }

    #[test]
    fn scales_to_many_routes() {
        let prefixes: Vec<String> = (0..10_000).map(|i| format!("/svc{i}/api")).collect();
        let t = RouteTable::build(prefixes.iter().map(|p| (p.as_str(), MethodSet::ANY)));
        assert_eq!(
            t.resolve("/svc9999/api/x", Method::Get),
            RouteMatch::Route(9999)
        );
        assert_eq!(
            t.resolve("/svc10000/api", Method::Get),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn prefixes_are_normalised_or_refused() {
        assert_eq!(normalise_prefix("/api/"), Ok("/api".to_string()));
        assert_eq!(normalise_prefix("/"), Ok("/".to_string()));
        assert!(normalise_prefix("api").is_err());
        assert!(normalise_prefix("/a//b").is_err());
        assert!(normalise_prefix("/a?b").is_err());
    }
}
