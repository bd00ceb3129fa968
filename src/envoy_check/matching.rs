//! Envoy's request routing, simulated: which virtual host a Host picks and
//! which route of it a request reaches.
//!
//! Owns Envoy's domain precedence (exact, `*.suffix`, `prefix.*`, `*`) and its
//! first-match-wins route order with prefix/path/regex/separated-prefix and
//! header conditions. Never guesses: a condition it cannot evaluate makes the
//! route "undecided", and the caller says so instead of reporting an error.

use super::model::{
    EnvoyRoute, HeaderMatcher, HeaderTest, PathMatch, RouteConfiguration, VirtualHost,
};
use super::regex;

/// A simulated request. Our requests never carry a query string.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Lower-case names; pseudo-headers come from the fields above.
    pub headers: &'a [(&'a str, &'a str)],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        match name {
            ":method" => Some(self.method),
            ":path" => Some(self.path),
            _ => self
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v),
        }
    }
}

/// The virtual host Envoy picks for `host`, by its domain precedence.
pub fn virtual_host_for<'c>(rc: &'c RouteConfiguration, host: &str) -> Option<&'c VirtualHost> {
    let host = host.to_ascii_lowercase();
    let domains = || {
        rc.virtual_hosts
            .iter()
            .flat_map(|vh| vh.domains.iter().map(move |d| (vh, d.to_ascii_lowercase())))
    };
    if let Some((vh, _)) = domains().find(|(_, d)| *d == host) {
        return Some(vh);
    }
    // Wildcards never match the empty string; the longest one wins.
    let suffix = domains()
        .filter(|(_, d)| d.len() > 1 && d.starts_with('*'))
        .filter(|(_, d)| host.len() > d.len() - 1 && host.ends_with(&d[1..]))
        .max_by_key(|(_, d)| d.len());
    if let Some((vh, _)) = suffix {
        return Some(vh);
    }
    let prefix = domains()
        .filter(|(_, d)| d.len() > 1 && d.ends_with('*'))
        .filter(|(_, d)| host.len() > d.len() - 1 && host.starts_with(&d[..d.len() - 1]))
        .max_by_key(|(_, d)| d.len());
    if let Some((vh, _)) = prefix {
        return Some(vh);
    }
    domains().find(|(_, d)| d == "*").map(|(vh, _)| vh)
}

/// Where a request lands within one virtual host.
#[derive(Debug, Default)]
pub struct Selection<'c> {
    /// The first route whose conditions all hold.
    pub winner: Option<&'c EnvoyRoute>,
    /// Earlier routes that might have matched: the simulation could not tell.
    pub undecided: Vec<(&'c EnvoyRoute, String)>,
    /// Earlier routes whose path fits but that need something our plain
    /// request lacks (a header, query parameters, gRPC…).
    pub skipped: Vec<(&'c EnvoyRoute, String)>,
}

enum Fit {
    Yes,
    No,
    Skipped(String),
    Unknown(String),
}

/// Envoy's rule: the first route in order whose match fits wins.
pub fn select_route<'c>(vh: &'c VirtualHost, request: &Request) -> Selection<'c> {
    let mut selection = Selection::default();
    for route in &vh.routes {
        match fits(route, request) {
            Fit::Yes => {
                selection.winner = Some(route);
                break;
            }
            Fit::No => {}
            Fit::Skipped(why) => selection.skipped.push((route, why)),
            Fit::Unknown(why) => selection.undecided.push((route, why)),
        }
    }
    selection
}

fn fold(s: &str, case_sensitive: bool) -> String {
    if case_sensitive {
        s.to_string()
    } else {
        s.to_ascii_lowercase()
    }
}

fn fits(route: &EnvoyRoute, request: &Request) -> Fit {
    let m = &route.matcher;
    let path = fold(request.path, m.case_sensitive);
    let path_fits = match &m.path {
        // A plain string prefix in Envoy, not a segment prefix.
        PathMatch::Prefix(p) => path.starts_with(&fold(p, m.case_sensitive)),
        PathMatch::Path(p) => path == fold(p, m.case_sensitive),
        PathMatch::SeparatedPrefix(p) => {
            let p = fold(p, m.case_sensitive);
            path == p
                || path
                    .strip_prefix(&p)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
        // case_sensitive does not apply to regexes.
        PathMatch::Regex(re) => match regex::full_match(re, request.path) {
            Some(fits) => fits,
            None => {
                return Fit::Unknown(format!(
                "its safe_regex \"{re}\" is outside the RE2 subset edge-guard-validate evaluates"
            ))
            }
        },
        PathMatch::Unsupported(what) => {
            return Fit::Unknown(format!(
                "it matches with {what}, which edge-guard-validate does not simulate"
            ))
        }
    };
    if !path_fits {
        return Fit::No;
    }
    if let Some(why) = &m.other_condition {
        return Fit::Skipped(why.clone());
    }
    for header in &m.headers {
        match header_fits(header, request) {
            Some(true) => {}
            Some(false)
                if header.name.starts_with(':') || request.header(&header.name).is_some() =>
            {
                return Fit::No
            }
            Some(false) => return Fit::Skipped(format!("requires header \"{}\"", header.name)),
            None => {
                return Fit::Unknown(format!(
                    "its matcher on header \"{}\" is not simulated",
                    header.name
                ))
            }
        }
    }
    Fit::Yes
}

/// Envoy's header matcher on our request; `None` when it cannot be evaluated.
fn header_fits(h: &HeaderMatcher, request: &Request) -> Option<bool> {
    let Some(value) = request.header(&h.name) else {
        // An absent header only satisfies a presence test that wants it absent.
        return Some(matches!(h.test, HeaderTest::Present(want) if want == h.invert));
    };
    let cmp = |expected: &str, ignore_case: bool, f: fn(&str, &str) -> bool| {
        if ignore_case {
            f(&value.to_ascii_lowercase(), &expected.to_ascii_lowercase())
        } else {
            f(value, expected)
        }
    };
    let result = match &h.test {
        HeaderTest::Exact(e, ic) => cmp(e, *ic, |v, e| v == e),
        HeaderTest::Prefix(e, ic) => cmp(e, *ic, |v, e| v.starts_with(e)),
        HeaderTest::Suffix(e, ic) => cmp(e, *ic, |v, e| v.ends_with(e)),
        HeaderTest::Contains(e, ic) => cmp(e, *ic, |v, e| v.contains(e)),
        HeaderTest::Regex(re) => regex::full_match(re, value)?,
        HeaderTest::Present(want) => *want,
        HeaderTest::Unsupported => return None,
    };
    Some(result != h.invert)
}

/// The method a route's `:method` header matcher requires, if it names one.
pub fn required_method(route: &EnvoyRoute) -> Option<&str> {
    route.matcher.headers.iter().find_map(|h| match &h.test {
        HeaderTest::Exact(m, _) if h.name == ":method" && !h.invert => Some(m.as_str()),
        _ => None,
    })
}

/// Whether a route has conditions beyond its path and `:method`.
pub fn has_extra_conditions(route: &EnvoyRoute) -> bool {
    route.matcher.other_condition.is_some()
        || route.matcher.headers.iter().any(|h| h.name != ":method")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy_check::model::{Action, RouteMatch};

    fn route(index: usize, path: PathMatch, headers: Vec<HeaderMatcher>) -> EnvoyRoute {
        EnvoyRoute {
            index,
            name: None,
            matcher: RouteMatch {
                path,
                case_sensitive: true,
                headers,
                other_condition: None,
            },
            action: Action::Cluster(format!("c{index}")),
            timeout: None,
            idle_timeout: None,
            max_stream_duration: None,
            websocket: None,
            stat_prefix: None,
        }
    }

    fn vhost(name: &str, domains: &[&str], routes: Vec<EnvoyRoute>) -> VirtualHost {
        VirtualHost {
            name: name.to_string(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
        }
    }

    fn get(path: &str) -> Request<'_> {
        Request {
            method: "GET",
            path,
            headers: &[],
        }
    }

    fn winner(vh: &VirtualHost, request: &Request) -> Option<usize> {
        select_route(vh, request).winner.map(|r| r.index)
    }

    #[test]
    fn domain_precedence_is_exact_then_suffix_then_prefix_then_star() {
        let rc = RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![
                vhost("star", &["*"], vec![]),
                vhost("prefix", &["api.*"], vec![]),
                vhost("suffix", &["*.example.com"], vec![]),
                vhost("longer_suffix", &["*.api.example.com"], vec![]),
                vhost("exact", &["api.example.com"], vec![]),
            ],
        };
        let pick = |host: &str| virtual_host_for(&rc, host).map(|vh| vh.name.clone());
        assert_eq!(pick("api.example.com").as_deref(), Some("exact"));
        assert_eq!(pick("API.example.com").as_deref(), Some("exact"));
        assert_eq!(pick("v1.api.example.com").as_deref(), Some("longer_suffix"));
        assert_eq!(pick("www.example.com").as_deref(), Some("suffix"));
        assert_eq!(pick("api.internal").as_deref(), Some("prefix"));
        assert_eq!(pick("other.org").as_deref(), Some("star"));
        // A wildcard never matches the empty string.
        assert_eq!(pick(".example.com").as_deref(), Some("star"));
    }

    #[test]
    fn first_matching_route_wins_and_prefix_is_a_plain_string_prefix() {
        let vh = vhost(
            "v",
            &["*"],
            vec![
                route(0, PathMatch::Path("/exact".into()), vec![]),
                route(1, PathMatch::Prefix("/api".into()), vec![]),
                route(2, PathMatch::Prefix("/api/courses".into()), vec![]),
                route(3, PathMatch::SeparatedPrefix("/ws".into()), vec![]),
            ],
        );
        assert_eq!(winner(&vh, &get("/exact")), Some(0));
        assert_eq!(winner(&vh, &get("/exact/x")), None);
        assert_eq!(winner(&vh, &get("/api/courses")), Some(1));
        assert_eq!(winner(&vh, &get("/apix")), Some(1));
        assert_eq!(winner(&vh, &get("/ws/x")), Some(3));
        assert_eq!(winner(&vh, &get("/wsx")), None);
    }

    #[test]
    fn case_insensitive_prefix() {
        let mut r = route(0, PathMatch::Prefix("/API".into()), vec![]);
        r.matcher.case_sensitive = false;
        let vh = vhost("v", &["*"], vec![r]);
        assert_eq!(winner(&vh, &get("/api/x")), Some(0));
    }

    #[test]
    fn method_matchers_are_evaluated_and_other_headers_skip() {
        let method = |m: &str| HeaderMatcher {
            name: ":method".into(),
            test: HeaderTest::Exact(m.into(), false),
            invert: false,
        };
        let canary = HeaderMatcher {
            name: "x-canary".into(),
            test: HeaderTest::Present(true),
            invert: false,
        };
        let vh = vhost(
            "v",
            &["*"],
            vec![
                route(0, PathMatch::Prefix("/a".into()), vec![canary]),
                route(1, PathMatch::Prefix("/a".into()), vec![method("POST")]),
                route(2, PathMatch::Prefix("/a".into()), vec![]),
            ],
        );
        let selection = select_route(&vh, &get("/a"));
        assert_eq!(selection.winner.map(|r| r.index), Some(2));
        assert_eq!(selection.skipped.len(), 1);
        assert!(selection.skipped[0].1.contains("x-canary"));
        let post = Request {
            method: "POST",
            path: "/a",
            headers: &[],
        };
        assert_eq!(winner(&vh, &post), Some(1));
    }

    #[test]
    fn unknown_regex_is_undecided_not_a_match() {
        let vh = vhost(
            "v",
            &["*"],
            vec![
                route(0, PathMatch::Regex("(?i)/a".into()), vec![]),
                route(1, PathMatch::Prefix("/".into()), vec![]),
            ],
        );
        let selection = select_route(&vh, &get("/a"));
        assert_eq!(selection.winner.map(|r| r.index), Some(1));
        assert_eq!(selection.undecided.len(), 1);
    }

    #[test]
    fn wildcard_domains_need_at_least_one_character_beyond_the_wildcard() {
        let rc = RouteConfiguration {
            name: "r".into(),
            virtual_hosts: vec![
                vhost("star", &["*"], vec![]),
                vhost("prefix", &["api.*"], vec![]),
                vhost("suffix", &["*.example.com"], vec![]),
                vhost("exact", &["api.example.com"], vec![]),
            ],
        };
        let pick = |host: &str| virtual_host_for(&rc, host).map(|vh| vh.name.clone());
        // One character is enough, none is not.
        assert_eq!(pick("a.example.com").as_deref(), Some("suffix"));
        assert_eq!(pick("api.x").as_deref(), Some("prefix"));
        assert_eq!(pick("api.").as_deref(), Some("star"));
        // An exact domain is never a prefix wildcard.
        assert_eq!(pick("api.example.cox").as_deref(), Some("prefix"));
    }

    #[test]
    fn path_and_plain_header_matchers_are_evaluated() {
        let exact = |name: &str, value: &str| HeaderMatcher {
            name: name.into(),
            test: HeaderTest::Exact(value.into(), false),
            invert: false,
        };
        let vh = vhost(
            "v",
            &["*"],
            vec![
                route(
                    0,
                    PathMatch::Prefix("/a".into()),
                    vec![exact(":path", "/a/x")],
                ),
                route(
                    1,
                    PathMatch::Prefix("/a".into()),
                    vec![exact("x-canary", "1")],
                ),
                route(2, PathMatch::Prefix("/a".into()), vec![]),
            ],
        );
        assert_eq!(winner(&vh, &get("/a/x")), Some(0));
        assert_eq!(winner(&vh, &get("/a/y")), Some(2));
        let yes = [("x-other", "z"), ("x-canary", "1")];
        let no = [("x-other", "z"), ("x-canary", "0")];
        let canary = |headers| Request {
            method: "GET",
            path: "/a/y",
            headers,
        };
        assert_eq!(winner(&vh, &canary(&yes)), Some(1));
        // Present but different: a plain mismatch, not a skipped route.
        let selection = select_route(&vh, &canary(&no));
        assert_eq!(selection.winner.map(|r| r.index), Some(2));
        assert!(selection.skipped.is_empty(), "{:?}", selection.skipped);
    }

    #[test]
    fn required_method_and_extra_conditions() {
        let matcher = |name: &str, invert: bool| HeaderMatcher {
            name: name.into(),
            test: HeaderTest::Exact("GET".into(), false),
            invert,
        };
        let with = |headers| route(0, PathMatch::Prefix("/".into()), headers);
        assert_eq!(
            required_method(&with(vec![matcher(":method", false)])),
            Some("GET")
        );
        assert_eq!(required_method(&with(vec![matcher(":method", true)])), None);
        assert_eq!(
            required_method(&with(vec![matcher("x-method", false)])),
            None
        );
        assert_eq!(required_method(&with(vec![])), None);
        assert!(!has_extra_conditions(&with(vec![matcher(
            ":method", false
        )])));
        assert!(has_extra_conditions(&with(vec![matcher(
            "x-canary", false
        )])));
        let mut other = with(vec![]);
        other.matcher.other_condition = Some("runtime_fraction".into());
        assert!(has_extra_conditions(&other));
        assert!(!has_extra_conditions(&with(vec![])));
    }
}
