//! Egress mode: which declared destination an outbound call belongs to.
//!
//! Owns host matching for policies with `"direction": "egress"`: a route's
//! `host` is the destination `:authority` without its port, exact
//! (`sms.example.com`) or a suffix wildcard (`*.example.com`, which matches
//! any name ending in `.example.com` but not `example.com` itself). The most
//! specific host wins (exact, then the longest wildcard suffix), then the
//! longest prefix inside that host's routes, as Envoy picks a virtual host
//! and then a route: a call never falls back to a less specific host.
//! Allocation-free per lookup except for lower-casing an authority that is
//! not already lower case. Never touches the host; never decides what to
//! answer.

use hashbrown::HashMap;

use crate::policy::Direction;
use crate::reply::ErrorCode;
use crate::routing::{Method, MethodSet, RouteMatch, RouteTable};

/// The refusal of a request on no declared route (with `unknown_route:
/// reject`): 404 `route_not_found` at the edge; on egress 403
/// `destination_not_allowed`, naming the host, since the egress policy is
/// an allow-list of destinations.
pub fn undeclared(direction: Direction, authority: &str, path: &str) -> (ErrorCode, String) {
    match direction {
        Direction::Ingress => (ErrorCode::RouteNotFound, format!("no route for {path}")),
        Direction::Egress => (
            ErrorCode::DestinationNotAllowed,
            format!(
                "{}{path} is not an allowed destination: no egress route declares this host and path",
                authority_host(authority)
            ),
        ),
    }
}

/// A compiled `host` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `sms.example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// The pattern as written in the policy (lower case).
    pub fn as_written(&self) -> String {
        match self {
            HostPattern::Exact(host) => host.clone(),
            HostPattern::Suffix(suffix) => format!("*{suffix}"),
        }
    }

    /// A host name this pattern matches, for simulations (the validator).
    pub fn example(&self) -> String {
        match self {
            HostPattern::Exact(host) => host.clone(),
            HostPattern::Suffix(suffix) => format!("edge-guard-check{suffix}"),
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// Parses a policy `host`: a DNS name (letters, digits, `-`, `.`), or
/// `*.` followed by one; no port, no scheme, no path. Lower-cased.
pub fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    let fix = "write the destination host without scheme, port or path, e.g. \"sms.example.com\" or \"*.example.com\"";
    let lower = text.to_ascii_lowercase();
    let (name, wildcard) = match lower.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (lower.as_str(), false),
    };
    if name.is_empty() {
        return Err(format!("\"{text}\" names no host; {fix}"));
    }
    if name.contains(':') || name.contains('/') {
        return Err(format!("\"{text}\" is not a bare host name; {fix}"));
    }
    if name.contains('*') {
        return Err(format!(
            "\"{text}\": a wildcard is only allowed as a leading \"*.\"; {fix}"
        ));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("\"{text}\" is not a valid host name; {fix}"));
    }
    Ok(if wildcard {
        HostPattern::Suffix(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

/// The host part of an `:authority`: port removed (IPv6 brackets kept),
/// a trailing dot removed, lower case.
pub fn authority_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// The routes of one host pattern: a prefix table and the policy's route ids.
#[derive(Debug)]
struct HostRoutes {
    table: RouteTable,
    /// Position in `table` → index into `Policy::routes`.
    ids: Vec<usize>,
}

impl HostRoutes {
    fn resolve(&self, path: &str, method: Method) -> RouteMatch {
        match self.table.resolve(path, method) {
            RouteMatch::Route(local) => self
                .ids
                .get(local)
                .map_or(RouteMatch::NotFound, |id| RouteMatch::Route(*id)),
            other => other,
        }
    }
}

/// (route id, prefix, methods) of one declared route.
type Declared<'a> = (usize, &'a str, MethodSet);

/// Every declared destination: exact hosts by name, wildcard suffixes
/// longest first. Empty for an ingress policy.
#[derive(Debug, Default)]
pub struct DestinationTable {
    exact: HashMap<String, HostRoutes>,
    /// Longest suffix first, so the first match is the most specific.
    suffixes: Vec<(String, HostRoutes)>,
}

impl DestinationTable {
    /// Builds the table from (host, normalised prefix, methods) in route
    /// order; the route id is the position.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (&'a HostPattern, &'a str, MethodSet)>,
    ) -> DestinationTable {
        let mut grouped: Vec<(&HostPattern, Vec<Declared>)> = Vec::new();
        for (id, (host, prefix, methods)) in routes.into_iter().enumerate() {
            match grouped.iter_mut().find(|(h, _)| *h == host) {
                Some((_, list)) => list.push((id, prefix, methods)),
                None => grouped.push((host, vec![(id, prefix, methods)])),
            }
        }
        let mut table = DestinationTable::default();
        for (host, list) in grouped {
            let routes = HostRoutes {
                table: RouteTable::build(list.iter().map(|(_, p, m)| (*p, *m))),
                ids: list.iter().map(|(id, _, _)| *id).collect(),
            };
            match host {
                HostPattern::Exact(name) => {
                    table.exact.insert(name.clone(), routes);
                }
                HostPattern::Suffix(suffix) => table.suffixes.push((suffix.clone(), routes)),
            }
        }
        // Unstable is enough: the suffixes are distinct (grouped above), and a
        // host ends with at most one suffix of a given length. (The stable
        // sort's instantiation cost ~2 KB of wasm.)
        table
            .suffixes
            .sort_unstable_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// The route for a call to `authority` (port ignored) at `path` with
    /// `method`: the most specific host, then the longest prefix.
    pub fn resolve(&self, authority: &str, path: &str, method: Method) -> RouteMatch {
        let host = authority_host(authority);
        let host = host.as_ref();
        if let Some(routes) = self.exact.get(host) {
            return routes.resolve(path, method);
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map_or(RouteMatch::NotFound, |(_, routes)| {
                routes.resolve(path, method)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> HostPattern {
        parse_host_pattern(text).unwrap()
    }

    fn table(routes: &[(&str, &str)]) -> DestinationTable {
        let hosts: Vec<HostPattern> = routes.iter().map(|(h, _)| host(h)).collect();
        DestinationTable::build(
            hosts
                .iter()
                .zip(routes)
                .map(|(h, (_, prefix))| (h, *prefix, MethodSet::ANY)),
        )
    }

    #[test]
    fn exact_host_then_longest_prefix() {
        let t = table(&[
            ("sms.example.com", "/"),
            ("sms.example.com", "/v2/send"),
            ("course.internal", "/api/courses"),
        ]);
        assert_eq!(
            t.resolve("sms.example.com", "/v2/send/1", Method::Post),
            RouteMatch::Route(1)
        );
        assert_eq!(
            t.resolve("sms.example.com", "/status", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            t.resolve("course.internal", "/api/courses/7", Method::Get),
            RouteMatch::Route(2)
        );
        assert_eq!(
            t.resolve("course.internal", "/admin", Method::Get),
            RouteMatch::NotFound
        );
        assert_eq!(
            t.resolve("evil.example.net", "/", Method::Get),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn port_case_and_trailing_dot_are_ignored() {
        let t = table(&[("sms.example.com", "/")]);
        for authority in [
            "sms.example.com:443",
            "SMS.Example.COM",
            "sms.example.com.",
            "sms.example.com.:8080",
        ] {
            assert_eq!(
                t.resolve(authority, "/", Method::Get),
                RouteMatch::Route(0),
                "{authority}"
            );
        }
        assert_eq!(
            t.resolve("sms.example.com.evil.net", "/", Method::Get),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn wildcard_matches_subdomains_only_and_the_most_specific_host_wins() {
        let t = table(&[
            ("*.example.com", "/"),
            ("*.eu.example.com", "/"),
            ("api.eu.example.com", "/v1"),
        ]);
        assert_eq!(
            t.resolve("a.example.com", "/", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            t.resolve("a.b.example.com", "/", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            t.resolve("example.com", "/", Method::Get),
            RouteMatch::NotFound
        );
        assert_eq!(
            t.resolve("x.eu.example.com", "/", Method::Get),
            RouteMatch::Route(1)
        );
        assert_eq!(
            t.resolve("api.eu.example.com", "/v1/x", Method::Get),
            RouteMatch::Route(2)
        );
        // The exact host is chosen, and its routes do not cover /v2: no
        // fallback to the wildcard (Envoy does not fall back either).
        assert_eq!(
            t.resolve("api.eu.example.com", "/v2", Method::Get),
            RouteMatch::NotFound
        );
        assert_eq!(
            t.resolve("badexample.com", "/", Method::Get),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn methods_are_checked_on_the_chosen_route() {
        let hosts = [host("sms.example.com")];
        let t =
            DestinationTable::build([(&hosts[0], "/send", MethodSet::EMPTY.with(Method::Post))]);
        assert_eq!(
            t.resolve("sms.example.com", "/send", Method::Get),
            RouteMatch::MethodNotAllowed {
                allowed: MethodSet::EMPTY.with(Method::Post)
            }
        );
    }

    #[test]
    fn host_patterns_are_checked() {
        assert_eq!(
            host("SMS.example.com"),
            HostPattern::Exact("sms.example.com".into())
        );
        assert_eq!(
            host("*.example.com"),
            HostPattern::Suffix(".example.com".into())
        );
        assert_eq!(host("*.example.com").as_written(), "*.example.com");
        assert!(host("*.example.com").matches(&host("*.example.com").example()));
        for bad in [
            "",
            "*.",
            "sms.example.com:443",
            "https://sms.example.com",
            "a.*.com",
            "*example.com",
            "sms..example.com",
            "sms example.com",
        ] {
            assert!(parse_host_pattern(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_patterns_match_the_host_or_strict_subdomains() {
        let exact = host("sms.example.com");
        assert!(exact.matches("sms.example.com"));
        assert!(!exact.matches("mms.example.com"));
        assert!(!exact.matches("a.sms.example.com"));
        let wildcard = host("*.example.com");
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches(".example.com"));
        assert!(!wildcard.matches("a.example.net"));
    }

    #[test]
    fn a_wildcard_never_resolves_its_bare_suffix() {
        let t = table(&[("*.example.com", "/")]);
        assert_eq!(
            t.resolve(".example.com", "/", Method::Get),
            RouteMatch::NotFound
        );
        assert_eq!(
            t.resolve("a.example.com", "/", Method::Get),
            RouteMatch::Route(0)
        );
    }

    #[test]
    fn host_names_take_hyphens_underscores_and_253_characters() {
        assert_eq!(
            host("sms-gw.example.com"),
            HostPattern::Exact("sms-gw.example.com".into())
        );
        assert_eq!(
            host("*.my_svc.internal"),
            HostPattern::Suffix(".my_svc.internal".into())
        );
        let label = |c: &str, n: usize| c.repeat(n);
        let longest = format!(
            "{}.{}.{}.{}",
            label("a", 63),
            label("b", 63),
            label("c", 63),
            label("d", 61)
        );
        assert_eq!(longest.len(), 253);
        assert_eq!(host(&longest), HostPattern::Exact(longest.clone()));
        let too_long = format!("{longest}d");
        let e = parse_host_pattern(&too_long).unwrap_err();
        assert!(e.contains("is not a valid host name"), "{e}");
    }

    #[test]
    fn a_port_or_a_path_is_named_in_the_error() {
        for bad in ["sms.example.com:443", "sms.example.com/send"] {
            let e = parse_host_pattern(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("\"{bad}\" is not a bare host name;")),
                "{e}"
            );
        }
    }

    #[test]
    fn only_a_numeric_port_is_stripped() {
        assert_eq!(authority_host("a.b:8443"), "a.b");
        assert_eq!(authority_host("a.b:http"), "a.b:http");
        let t = table(&[("sms.example.com", "/")]);
        assert_eq!(
            t.resolve("sms.example.com:evil", "/", Method::Get),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn undeclared_calls_are_refused_by_direction() {
        let (code, message) = undeclared(Direction::Egress, "Evil.example.net:8443", "/steal");
        assert_eq!(code, ErrorCode::DestinationNotAllowed);
        assert!(message.starts_with("evil.example.net/steal is not an allowed destination"));
        let (code, message) = undeclared(Direction::Ingress, "x", "/nope");
        assert_eq!(
            (code, message.as_str()),
            (ErrorCode::RouteNotFound, "no route for /nope")
        );
    }

    #[test]
    fn authority_host_strips_the_port() {
        assert_eq!(authority_host("a.b:80"), "a.b");
        assert_eq!(authority_host("[::1]:80"), "[::1]");
        assert_eq!(authority_host("A.B"), "a.b");
        assert_eq!(authority_host("a.b"), "a.b");
    }

    // ---- the policy side of egress mode --------------------------------------

    use crate::policy::{ConfigError, Direction, Policy};
    use serde_json::json;

    fn compile(v: serde_json::Value) -> Result<Policy, ConfigError> {
        Policy::from_json(v.to_string().as_bytes())
    }

    fn egress_policy() -> serde_json::Value {
        json!({
            "direction": "egress",
            "routes": [
                {"name": "courses", "host": "course.internal", "cluster": "course_service", "timeout": "internal"},
                {"name": "sms", "host": "sms.example.com", "prefix": "/v1/send", "cluster": "sms_api", "methods": ["POST"], "timeout": "external"},
                {"name": "partners", "host": "*.partners.example.com", "cluster": "partners", "timeout": "external"}
            ],
            "timeouts": {"classes": {"internal": "10s", "external": "15s"}, "default_class": "internal"}
        })
    }

    #[test]
    fn policy_egress_routes_resolve_by_host_then_prefix() {
        let p = compile(egress_policy()).unwrap();
        assert_eq!(p.direction, Direction::Egress);
        assert_eq!(p.routes[0].prefix, "/");
        assert_eq!(p.routes[2].host, Some(host("*.partners.example.com")));
        assert_eq!(
            p.resolve("course.internal:8080", "/api/courses/7", Method::Get),
            RouteMatch::Route(0)
        );
        assert_eq!(
            p.resolve("sms.example.com", "/v1/send", Method::Post),
            RouteMatch::Route(1)
        );
        assert_eq!(
            p.resolve("sms.example.com", "/v1/other", Method::Post),
            RouteMatch::NotFound
        );
        assert_eq!(
            p.resolve("a.partners.example.com", "/x", Method::Get),
            RouteMatch::Route(2)
        );
        assert_eq!(
            p.resolve("evil.example.com", "/", Method::Get),
            RouteMatch::NotFound
        );
    }

    #[test]
    fn policy_direction_defaults_to_ingress_and_ingress_ignores_the_host() {
        let p =
            Policy::from_json(br#"{"routes": [{"name": "a", "prefix": "/a", "cluster": "c"}]}"#)
                .unwrap();
        assert_eq!(p.direction, Direction::Ingress);
        assert_eq!(
            p.resolve("anything", "/a/b", Method::Get),
            RouteMatch::Route(0)
        );
    }

    #[test]
    fn policy_host_on_an_ingress_route_is_refused_with_its_path() {
        let e = Policy::from_json(
            br#"{"routes": [{"name": "a", "prefix": "/a", "cluster": "c", "host": "x.example.com"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, "routes[0].host");
        assert!(e.problem.contains("\"direction\": \"egress\""), "{e}");
    }

    #[test]
    fn policy_egress_route_without_host_is_refused_with_its_path() {
        let mut v = egress_policy();
        v["routes"][1].as_object_mut().unwrap().remove("host");
        let e = compile(v).unwrap_err();
        assert_eq!(e.path, "routes[1].host");
        assert!(e.problem.contains("missing field `host`"), "{e}");
    }

    #[test]
    fn policy_ingress_route_still_needs_a_prefix() {
        let e = Policy::from_json(br#"{"routes": [{"name": "a", "cluster": "c"}]}"#).unwrap_err();
        assert_eq!(e.path, "routes[0].prefix");
    }

    #[test]
    fn policy_bad_host_and_bad_direction_are_refused() {
        let mut v = egress_policy();
        v["routes"][0]["host"] = json!("https://course.internal");
        assert_eq!(compile(v).unwrap_err().path, "routes[0].host");
        let mut v = egress_policy();
        v["direction"] = json!("outbound");
        let e = compile(v).unwrap_err();
        assert_eq!(e.path, "direction");
        assert!(e.problem.contains("`egress`"), "{e}");
    }

    #[test]
    fn policy_same_host_and_prefix_twice_is_refused_but_other_hosts_may_share_a_prefix() {
        let mut v = egress_policy();
        v["routes"][2] =
            json!({"name": "courses2", "host": "course.internal", "prefix": "/", "cluster": "x"});
        let e = compile(v).unwrap_err();
        assert_eq!(e.path, "routes[2].prefix");
        assert!(e.problem.contains("course.internal/"), "{e}");
        let mut v = egress_policy();
        v["routes"][2] = json!({"name": "other", "host": "other.internal", "cluster": "x"});
        assert!(compile(v).is_ok());
    }

    #[test]
    fn policy_websocket_on_an_egress_route_is_refused() {
        let mut v = egress_policy();
        v["routes"][0]["websocket"] = json!(true);
        assert_eq!(compile(v).unwrap_err().path, "routes[0].websocket");
    }
}
