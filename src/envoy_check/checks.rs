//! The checks: policy × Envoy model → findings.
//!
//! Owns which questions are asked and how each answer is worded. Each check
//! reads the typed model (`model`) and Envoy's simulated routing
//! (`matching`); none reads raw JSON.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::edge;
use super::matching::{self, select_route, Request, Selection};
use super::model::{
    quoted_list, Action, EnvoyConfig, EnvoyRoute, FilterKind, Hcm, HttpFilter, PathMatch,
    RouteConfiguration, RouteSource, Source, VirtualHost, WasmFilter,
};
use super::{Finding, Report, Severity};
use crate::policy::{routes_by_class, Direction, Millis, Policy, Route, UnknownRoute};
use crate::routing::{Method, RouteMatch};

/// What to check besides the Envoy document.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// The policy JSON given on the command line; without it, the policy
    /// embedded in the edge_guard filter's `configuration` is used.
    pub policy: Option<&'a [u8]>,
    /// The Host to simulate; by default the virtual host with domain `*`.
    pub host: Option<&'a str>,
}

/// Validates a policy against an Envoy bootstrap or `/config_dump` value.
/// `Err` when there is nothing to check: not an Envoy document, or no policy.
pub fn validate(envoy_doc: &Value, options: &Options) -> Result<Report, String> {
    let envoy = EnvoyConfig::from_value(envoy_doc)?;
    let mut out = Out::default();
    out.findings.extend(envoy.notes.iter().cloned());

    let (policy_text, policy_source) = choose_policy(&envoy, options, &mut out)?;
    let policy = match Policy::from_json(&policy_text) {
        Ok(policy) => Some(policy),
        Err(e) => {
            out.push(
                "policy_invalid",
                Severity::Error,
                None,
                None,
                format!(
                    "the policy does not compile, so edge-guard would refuse it at startup: {e}"
                ),
            );
            None
        }
    };

    let guarded: Vec<bool> = envoy
        .hcms
        .iter()
        .map(|h| edge_guard_filter(&h.http_filters).is_some())
        .collect();
    let any_guarded = guarded.iter().any(|g| *g);
    if envoy.hcms.is_empty() {
        out.push(
            "filter_missing",
            Severity::Error,
            None,
            None,
            "no listener has an http_connection_manager, so nothing runs edge-guard; add a listener with an HCM whose http_filters contain the edge_guard wasm filter".to_string(),
        );
    }
    for (hcm, is_guarded) in envoy.hcms.iter().zip(&guarded) {
        if *is_guarded {
            check_filter(hcm, &mut out);
        } else if !any_guarded {
            out.push(
                "filter_missing",
                Severity::Error,
                None,
                Some(&hcm.label),
                format!(
                    "{} has no envoy.filters.http.wasm filter running edge_guard (config.name or root_id \"edge_guard\", or code ending in edge_guard.wasm); add it to http_filters before envoy.filters.http.router",
                    hcm.label
                ),
            );
        }
    }

    let Some(policy) = policy else {
        for (hcm, is_guarded) in envoy.hcms.iter().zip(&guarded) {
            if *is_guarded {
                out.findings
                    .extend(edge::check_hcm(&hcm.label, &hcm.edge, None));
            }
        }
        if any_guarded {
            out.findings.extend(edge::check_process(&envoy.process));
        }
        return Ok(out.into_report(policy_source));
    };
    for w in &policy.warnings {
        out.push(
            w.id,
            Severity::Warning,
            Some(&w.route),
            None,
            w.message.clone(),
        );
    }
    // An HCM whose filter embeds a policy of the other direction (the
    // egress listener next to the edge one) is checked against its own.
    let own = other_direction_policies(&envoy, &policy, &mut out);
    check_clusters(&envoy, &policy, &mut out);
    for other in own.iter().flatten() {
        check_clusters(&envoy, other, &mut out);
    }
    check_vm_ids_by_direction(&envoy, &policy, &own, &mut out);
    for ((hcm, is_guarded), own) in envoy.hcms.iter().zip(&guarded).zip(&own) {
        let policy = own.as_ref().unwrap_or(&policy);
        let rc = route_configuration(&envoy, hcm, &mut out);
        if !is_guarded && any_guarded {
            if let Some(rc) = rc {
                check_bypass(hcm, rc, policy, &mut out);
            }
            continue;
        }
        if *is_guarded {
            out.findings
                .extend(edge::check_hcm(&hcm.label, &hcm.edge, Some(policy)));
        }
        let landing = match rc {
            Some(rc) => check_routes(hcm, rc, policy, options.host, &mut out),
            None => vec![Vec::new(); policy.routes.len()],
        };
        check_websockets(hcm, policy, &landing, &mut out);
        check_timeouts(hcm, policy, &landing, &mut out);
        check_route_stats(hcm, policy, &landing, &mut out);
        check_egress_callers(hcm, policy, &mut out);
    }
    if any_guarded {
        out.findings.extend(edge::check_process(&envoy.process));
    }
    Ok(out.into_report(policy_source))
}

#[derive(Default)]
struct Out {
    findings: Vec<Finding>,
}

impl Out {
    fn push(
        &mut self,
        id: &'static str,
        severity: Severity,
        route: Option<&str>,
        object: Option<&str>,
        message: String,
    ) {
        self.findings.push(Finding {
            id,
            severity,
            policy_route: route.map(str::to_string),
            envoy_object: object.map(str::to_string),
            message,
        });
    }

    /// Errors first, each severity in check order.
    fn into_report(mut self, policy_source: String) -> Report {
        self.findings.sort_by_key(|f| f.severity);
        Report {
            findings: self.findings,
            policy_source,
        }
    }
}

fn route_label(i: usize, route: &Route) -> String {
    format!("routes[{i}] \"{}\"", route.name)
}

fn envoy_route_label(rc: &RouteConfiguration, vh: &VirtualHost, route: &EnvoyRoute) -> String {
    let mut label = String::new();
    if !rc.name.is_empty() {
        label.push_str(&format!("route_config \"{}\" ", rc.name));
    }
    label.push_str(&format!(
        "virtual_host \"{}\" routes[{}]",
        vh.name, route.index
    ));
    if let Some(name) = &route.name {
        label.push_str(&format!(" (\"{name}\")"));
    }
    label
}

fn with_default(value: Option<Millis>, effective: Millis) -> String {
    match value {
        Some(_) => effective.to_string(),
        None => format!("{effective} (Envoy's default)"),
    }
}

// ---------------------------------------------------------------------------
// The policy to check

fn edge_guard_filter(filters: &[HttpFilter]) -> Option<(usize, &HttpFilter, &WasmFilter)> {
    filters.iter().enumerate().find_map(|(i, f)| match &f.kind {
        FilterKind::Wasm(w) if w.is_edge_guard() => Some((i, f, w)),
        _ => None,
    })
}

fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.trim_ascii() == b.trim_ascii(),
    }
}

fn choose_policy(
    envoy: &EnvoyConfig,
    options: &Options,
    out: &mut Out,
) -> Result<(Vec<u8>, String), String> {
    let embedded: Vec<(&str, &str, bool)> = envoy
        .hcms
        .iter()
        .filter_map(|h| {
            let (_, filter, wasm) = edge_guard_filter(&h.http_filters)?;
            Some((
                h.label.as_str(),
                wasm.configuration.as_deref()?,
                filter.ecds_default,
            ))
        })
        .filter(|(_, text, _)| !text.trim().is_empty())
        .collect();
    let (chosen, source) = match (options.policy, embedded.first()) {
        (Some(given), _) => (given.to_vec(), "--policy".to_string()),
        (None, Some((label, text, _))) => (
            text.as_bytes().to_vec(),
            format!("the edge_guard filter's configuration in {label}"),
        ),
        (None, None) => {
            return Err("no policy to check: pass --policy <policy.json>, or embed the policy in the edge_guard wasm filter's configuration".to_string())
        }
    };
    let chosen_direction = direction_of(&chosen);
    for (label, text, ecds_default) in &embedded {
        // A policy delivered by ECDS replaces the bootstrap's default at
        // run time: checking another one against it is the point.
        if *ecds_default || direction_of(text.as_bytes()) != chosen_direction {
            continue;
        }
        if !same_json(&chosen, text.as_bytes()) {
            out.push(
                "policy_differs",
                Severity::Warning,
                None,
                Some(label),
                format!(
                    "the policy embedded in the edge_guard filter of {label} differs from the one checked ({source}); Envoy runs the embedded one, so make them the same"
                ),
            );
        }
    }
    Ok((chosen, source))
}

/// The `direction` a policy text declares (ingress when unreadable).
fn direction_of(text: &[u8]) -> Direction {
    crate::policy::parse(text).map_or(Direction::Ingress, |c| c.direction)
}

/// Per HCM: the policy its edge_guard filter embeds, when that policy runs
/// in the other direction than the one checked (compiled here; a policy
/// that does not compile is reported). `None`: check the main policy.
fn other_direction_policies(
    envoy: &EnvoyConfig,
    main: &Policy,
    out: &mut Out,
) -> Vec<Option<Policy>> {
    envoy
        .hcms
        .iter()
        .map(|hcm| {
            let (_, _, wasm) = edge_guard_filter(&hcm.http_filters)?;
            let text = wasm.configuration.as_deref()?;
            if direction_of(text.as_bytes()) == main.direction {
                return None;
            }
            match Policy::from_json(text.as_bytes()) {
                Ok(policy) => Some(policy),
                Err(e) => {
                    out.push(
                        "policy_invalid",
                        Severity::Error,
                        None,
                        Some(&hcm.label),
                        format!("the policy embedded in the edge_guard filter of {} does not compile, so edge-guard would refuse it at startup: {e}", hcm.label),
                    );
                    None
                }
            }
        })
        .collect()
}

/// Shared data is one map per `vm_id`: an edge filter and an egress filter
/// under the same one would mix their records (route mismatches keyed by
/// route name, the logged routing table).
fn check_vm_ids_by_direction(
    envoy: &EnvoyConfig,
    main: &Policy,
    own: &[Option<Policy>],
    out: &mut Out,
) {
    let mut seen: Vec<(&str, Direction, &str)> = Vec::new();
    for (hcm, own) in envoy.hcms.iter().zip(own) {
        let Some((_, _, wasm)) = edge_guard_filter(&hcm.http_filters) else {
            continue;
        };
        let direction = own.as_ref().unwrap_or(main).direction;
        let clash = seen
            .iter()
            .find(|(vm, d, _)| *vm == wasm.vm_id && *d != direction && !vm.is_empty());
        if let Some((vm, other, label)) = clash {
            out.push(
                "vm_id_shared_across_directions",
                Severity::Warning,
                None,
                Some(&hcm.label),
                format!("the edge_guard filter of {} ({}) has vm_id \"{vm}\", like the {} filter of {label}: shared data is one map per vm_id, so their records (route mismatches, by route name) would mix; give the egress filter its own vm_id, e.g. \"edge_guard_egress\"", hcm.label, direction.as_str(), other.as_str()),
            );
        }
        seen.push((wasm.vm_id.as_str(), direction, hcm.label.as_str()));
    }
}

/// Egress mode reads the budget services forward in
/// `x-envoy-expected-rq-timeout-ms`, which Envoy removes from callers it
/// does not treat as internal before any filter runs.
fn check_egress_callers(hcm: &Hcm, policy: &Policy, out: &mut Out) {
    if policy.direction != Direction::Egress || hcm.internal_callers {
        return;
    }
    out.push(
        "egress_budget_header_stripped",
        Severity::Warning,
        None,
        Some(&hcm.label),
        format!("{} runs edge-guard in egress mode but has no internal_address_config, so Envoy removes the x-envoy-expected-rq-timeout-ms the services forward before edge-guard sees it and their calls get only their class (grpc-timeout still counts); set use_remote_address: true and internal_address_config.cidr_ranges to the services' addresses", hcm.label),
    );
}

// ---------------------------------------------------------------------------
// Check 5: the filter itself

fn check_filter(hcm: &Hcm, out: &mut Out) {
    let Some((position, filter, wasm)) = edge_guard_filter(&hcm.http_filters) else {
        return;
    };
    let at = &hcm.label;
    if let Some(router) = hcm
        .http_filters
        .iter()
        .position(|f| matches!(f.kind, FilterKind::Router))
    {
        if router < position {
            out.push(
                "filter_after_router",
                Severity::Error,
                None,
                Some(at),
                format!(
                    "the edge_guard wasm filter is http_filters[{position}], after envoy.filters.http.router (http_filters[{router}]); filters after the router never run, so move edge_guard before the router"
                ),
            );
        }
    }
    if filter.disabled {
        out.push(
            "filter_missing",
            Severity::Error,
            None,
            Some(at),
            format!("the edge_guard wasm filter \"{}\" in {at} has disabled: true, so it only runs on routes that enable it; remove disabled", filter.name),
        );
    }
    if wasm.vm_id.is_empty() {
        out.push(
            "filter_no_vm_id",
            Severity::Error,
            None,
            Some(at),
            format!("the edge_guard wasm filter in {at} has no vm_config.vm_id; edge-guard's shared state (health records, connection counts) is keyed by vm_id, so set a non-empty vm_id such as \"edge_guard\" (the same on every edge listener; egress listeners share their own)"),
        );
    }
    let policy = wasm.failure_policy.as_deref().unwrap_or("");
    if wasm.fail_open || policy.eq_ignore_ascii_case("FAIL_OPEN") {
        let setting = if wasm.fail_open {
            "fail_open: true"
        } else {
            "failure_policy: FAIL_OPEN"
        };
        out.push(
            "filter_fail_open",
            Severity::Error,
            None,
            Some(at),
            format!("the edge_guard wasm filter in {at} has {setting}: if the VM fails, Envoy passes requests on with no deadlines, limits or route checks; use failure_policy: FAIL_CLOSED (or FAIL_RELOAD) and drop fail_open"),
        );
    }
    if let Some(upgrade_filters) = hcm.websocket.as_ref().and_then(|u| u.filters.as_ref()) {
        match edge_guard_filter(upgrade_filters) {
            None => out.push(
                "filter_missing",
                Severity::Error,
                None,
                Some(at),
                format!("{at} has upgrade_configs for websocket with its own filters, which replace http_filters for WebSocket upgrades, and edge_guard is not among them: upgrades bypass edge-guard; add the edge_guard wasm filter to that list before the router"),
            ),
            Some((pos, _, _)) => {
                if let Some(router) = upgrade_filters.iter().position(|f| matches!(f.kind, FilterKind::Router)) {
                    if router < pos {
                        out.push(
                            "filter_after_router",
                            Severity::Error,
                            None,
                            Some(at),
                            format!("in the websocket upgrade_configs filters of {at}, edge_guard (filters[{pos}]) comes after the router (filters[{router}]) and never runs; move it before the router"),
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Check 1: clusters

fn check_clusters(envoy: &EnvoyConfig, policy: &Policy, out: &mut Out) {
    let Some(clusters) = &envoy.clusters else {
        return;
    };
    for cluster in &policy.clusters {
        if clusters.contains(&cluster.name) {
            continue;
        }
        let users: Vec<String> = policy
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.cluster == cluster.name)
            .map(|(i, r)| route_label(i, r))
            .collect();
        let known = if clusters.is_empty() {
            "Envoy defines no clusters".to_string()
        } else {
            format!("Envoy's clusters: {}", quoted_list(clusters))
        };
        out.push(
            "cluster_missing",
            Severity::Error,
            users.first().map(String::as_str),
            None,
            format!(
                "cluster \"{}\" (used by {}) does not exist in Envoy ({known}); add a cluster with that name or fix the policy's cluster",
                cluster.name,
                users.join(", ")
            ),
        );
    }
}

// ---------------------------------------------------------------------------
// Route configurations

fn route_configuration<'e>(
    envoy: &'e EnvoyConfig,
    hcm: &'e Hcm,
    out: &mut Out,
) -> Option<&'e RouteConfiguration> {
    match &hcm.routes {
        RouteSource::Inline(rc) => Some(rc),
        RouteSource::Rds(name) => {
            let found = envoy.route_configs.iter().find(|rc| rc.name == *name);
            if found.is_none() {
                let (severity, hint) = match envoy.source {
                    Source::ConfigDump => (
                        Severity::Error,
                        "Envoy has not received it, so it answers 404 (or the listener stays warming); check the RDS server",
                    ),
                    Source::Bootstrap => (
                        Severity::Warning,
                        "it comes from RDS and is not in this file, so routes were not checked; run the validator on the admin /config_dump",
                    ),
                };
                out.push(
                    "route_config_missing",
                    severity,
                    None,
                    Some(&hcm.label),
                    format!("{} uses rds route_config_name \"{name}\", which is not in the document: {hint}", hcm.label),
                );
            }
            found
        }
        RouteSource::Unsupported(what) => {
            out.push(
                "route_config_not_simulated",
                Severity::Warning,
                None,
                Some(&hcm.label),
                format!("{} routes with {what}, which edge-guard-validate does not simulate; routes were not checked", hcm.label),
            );
            None
        }
    }
}

/// The virtual host plain requests reach: `--host`'s, else the `*` one.
fn pick_virtual_host<'c>(
    hcm: &Hcm,
    rc: &'c RouteConfiguration,
    host: Option<&str>,
    out: &mut Out,
) -> Option<&'c VirtualHost> {
    if let Some(host) = host {
        return matching::virtual_host_for(rc, host);
    }
    if let Some(vh) = rc
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == "*"))
    {
        return Some(vh);
    }
    let first = rc.virtual_hosts.first()?;
    out.push(
        "host_assumed",
        Severity::Warning,
        None,
        Some(&hcm.label),
        format!(
            "no virtual host of {} has domain \"*\"; requests were simulated on virtual host \"{}\" (domains {}); pass --host to choose another",
            hcm.label,
            first.name,
            quoted_list(&first.domains)
        ),
    );
    Some(first)
}

// ---------------------------------------------------------------------------
// Checks 2 and 3: where requests go

/// The representative requests of policy route `i` that edge-guard files
/// under that route: its prefix and a sub-path, for each of its methods
/// (every known method for a route that allows any: an Envoy route may
/// match on `:method`). A WebSocket route is reached by `GET` only.
fn representative_requests(
    policy: &Policy,
    i: usize,
    route: &Route,
) -> Vec<(&'static str, String)> {
    let host = route.host.as_ref().map(|h| h.example()).unwrap_or_default();
    let methods: Vec<&'static str> = if route.websocket {
        vec!["GET"]
    } else {
        route.methods.names().collect()
    };
    let sub = if route.prefix == "/" {
        "/x".to_string()
    } else {
        format!("{}/x", route.prefix)
    };
    let mut requests = Vec::new();
    for method in methods {
        for path in [route.prefix.clone(), sub.clone()] {
            if policy.resolve(&host, &path, Method::parse(method)) == RouteMatch::Route(i) {
                requests.push((method, path));
            }
        }
    }
    requests
}

const UPGRADE_HEADERS: [(&str, &str); 2] = [("upgrade", "websocket"), ("connection", "Upgrade")];

fn skipped_note(rc: &RouteConfiguration, vh: &VirtualHost, selection: &Selection) -> String {
    if selection.skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = selection
        .skipped
        .iter()
        .map(|(r, why)| format!("{} {why}", envoy_route_label(rc, vh, r)))
        .collect();
    format!(
        " (skipped because the simulated request lacks what they need: {})",
        list.join("; ")
    )
}

fn undecided_note(rc: &RouteConfiguration, vh: &VirtualHost, selection: &Selection) -> String {
    let list: Vec<String> = selection
        .undecided
        .iter()
        .map(|(r, why)| format!("{}: {why}", envoy_route_label(rc, vh, r)))
        .collect();
    list.join("; ")
}

/// Forward (policy route → Envoy) and reverse (Envoy route → policy) checks.
/// Returns, per policy route, the Envoy routes its requests land on.
fn check_routes<'c>(
    hcm: &Hcm,
    rc: &'c RouteConfiguration,
    policy: &Policy,
    host: Option<&str>,
    out: &mut Out,
) -> Vec<Vec<Landed<'c>>> {
    let mut landing: Vec<Vec<Landed>> = vec![Vec::new(); policy.routes.len()];
    let mut wrong_pairs: HashSet<(usize, *const EnvoyRoute)> = HashSet::new();
    if policy.direction == Direction::Egress {
        for (i, route) in policy.routes.iter().enumerate() {
            let Some(pattern) = &route.host else {
                continue;
            };
            match matching::virtual_host_for(rc, &pattern.example()) {
                Some(vh) => {
                    check_route_lands(hcm, rc, vh, policy, i, route, &mut landing, &mut wrong_pairs, out)
                }
                None => out.push(
                    "route_unrouted",
                    Severity::Error,
                    Some(&route_label(i, route)),
                    Some(&hcm.label),
                    format!("no virtual host of {} accepts Host \"{}\", so Envoy answers 404 to calls to it before edge-guard applies; add a virtual host with domains [\"{}\"] routing prefix \"{}\" to cluster \"{}\"", hcm.label, pattern.as_written(), pattern.as_written(), route.prefix, route.cluster),
                ),
            }
        }
        for vh in &rc.virtual_hosts {
            for envoy_route in &vh.routes {
                check_envoy_route(hcm, rc, vh, envoy_route, policy, &mut wrong_pairs, out);
            }
        }
        return landing;
    }
    let Some(vh) = pick_virtual_host(hcm, rc, host, out) else {
        let why = match host {
            Some(h) => format!("no virtual host of {} accepts Host \"{h}\"", hcm.label),
            None => format!("{} has no virtual hosts", hcm.label),
        };
        for (i, route) in policy.routes.iter().enumerate() {
            out.push(
                "route_unrouted",
                Severity::Error,
                Some(&route_label(i, route)),
                Some(&hcm.label),
                format!("{why}, so Envoy answers 404 to {} before edge-guard applies; add a virtual host (domain \"*\") with a route to cluster \"{}\"", route.prefix, route.cluster),
            );
        }
        return landing;
    };

    for (i, route) in policy.routes.iter().enumerate() {
        check_route_lands(
            hcm,
            rc,
            vh,
            policy,
            i,
            route,
            &mut landing,
            &mut wrong_pairs,
            out,
        );
    }

    for vh in &rc.virtual_hosts {
        for envoy_route in &vh.routes {
            check_envoy_route(hcm, rc, vh, envoy_route, policy, &mut wrong_pairs, out);
        }
    }
    landing
}

/// Check 2 for one policy route: where Envoy sends its representative
/// requests within virtual host `vh`.
#[allow(clippy::too_many_arguments)]
fn check_route_lands<'c>(
    hcm: &Hcm,
    rc: &'c RouteConfiguration,
    vh: &'c VirtualHost,
    policy: &Policy,
    i: usize,
    route: &Route,
    landing: &mut [Vec<Landed<'c>>],
    wrong_pairs: &mut HashSet<(usize, *const EnvoyRoute)>,
    out: &mut Out,
) {
    {
        let label = route_label(i, route);
        let mut reported: HashSet<(&'static str, Option<usize>)> = HashSet::new();
        for (method, path) in representative_requests(policy, i, route) {
            let headers: &[(&str, &str)] = if route.websocket {
                &UPGRADE_HEADERS
            } else {
                &[]
            };
            let request = Request {
                method,
                path: &path,
                headers,
            };
            let selection = select_route(vh, &request);
            let shown = format!("{method} {path}");
            let mut report =
                |id: &'static str, severity, envoy_route: Option<&EnvoyRoute>, message: String| {
                    if reported.insert((id, envoy_route.map(|r| r.index))) {
                        let object = envoy_route.map_or_else(
                            || hcm.label.clone(),
                            |r| format!("{} {}", hcm.label, envoy_route_label(rc, vh, r)),
                        );
                        out.push(id, severity, Some(&label), Some(&object), message);
                    }
                };
            let Some(winner) = selection.winner else {
                if selection.undecided.is_empty() {
                    report(
                        "route_unrouted",
                        Severity::Error,
                        None,
                        format!(
                            "no route of virtual host \"{}\" in {} matches {shown}, so Envoy answers 404 and cluster \"{}\" is never reached{}; add a route with prefix \"{}\" and cluster \"{}\"",
                            vh.name, hcm.label, route.cluster, skipped_note(rc, vh, &selection), route.prefix, route.cluster
                        ),
                    );
                } else {
                    report(
                        "regex_not_simulated",
                        Severity::Warning,
                        None,
                        format!("could not tell where Envoy sends {shown}: {}; no other route matches it", undecided_note(rc, vh, &selection)),
                    );
                }
                continue;
            };
            let envoy_label = envoy_route_label(rc, vh, winner);
            let uncertain = !selection.undecided.is_empty();
            if uncertain {
                report(
                    "regex_not_simulated",
                    Severity::Warning,
                    Some(winner),
                    format!(
                        "{shown} reaches {envoy_label} ({}) unless an earlier route matches it: {}",
                        winner.action.describe(),
                        undecided_note(rc, vh, &selection)
                    ),
                );
            }
            match &winner.action {
                Action::Cluster(_) | Action::Weighted(_) => {
                    let clusters = winner.clusters().unwrap_or_default();
                    if clusters.iter().all(|c| *c == route.cluster) && !clusters.is_empty() {
                        land(
                            &mut landing[i],
                            winner,
                            &format!("{} {envoy_label}", hcm.label),
                        );
                    } else if clusters.contains(&route.cluster) {
                        land(
                            &mut landing[i],
                            winner,
                            &format!("{} {envoy_label}", hcm.label),
                        );
                        report(
                            "route_split_cluster",
                            Severity::Warning,
                            Some(winner),
                            format!(
                                "{envoy_label} splits {shown} over {}, not only the policy's cluster \"{}\"; edge-guard's health state and limits are kept for \"{}\" only",
                                winner.action.describe(), route.cluster, route.cluster
                            ),
                        );
                    } else if !uncertain {
                        wrong_pairs.insert((i, winner as *const EnvoyRoute));
                        report(
                            "route_wrong_cluster",
                            Severity::Error,
                            Some(winner),
                            format!(
                                "Envoy sends {shown} to {} ({envoy_label}), but the policy route sends it to cluster \"{}\"{}; edge-guard would apply this route's deadlines and health to the wrong upstream. Fix the cluster of one of them, or add an earlier Envoy route for prefix \"{}\"",
                                winner.action.describe(), route.cluster, skipped_note(rc, vh, &selection), route.prefix
                            ),
                        );
                    }
                }
                Action::ClusterHeader(_) | Action::ClusterPlugin => {
                    land(
                        &mut landing[i],
                        winner,
                        &format!("{} {envoy_label}", hcm.label),
                    );
                    report(
                        "cluster_not_simulated",
                        Severity::Warning,
                        Some(winner),
                        format!(
                            "{envoy_label} picks the cluster for {shown} at request time ({}); make sure it is \"{}\"",
                            winner.action.describe(),
                            route.cluster
                        ),
                    );
                }
                Action::Redirect
                | Action::DirectResponse(_)
                | Action::NonForwarding
                | Action::Unknown => {
                    if !uncertain {
                        report(
                            "route_unrouted",
                            Severity::Error,
                            Some(winner),
                            format!(
                                "Envoy answers {shown} with {} ({envoy_label}), so cluster \"{}\" is never reached{}; route prefix \"{}\" to cluster \"{}\" before it",
                                winner.action.describe(), route.cluster, skipped_note(rc, vh, &selection), route.prefix, route.cluster
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// An Envoy route that a policy route's requests reach, with its full name.
#[derive(Debug, Clone)]
struct Landed<'c> {
    route: &'c EnvoyRoute,
    label: String,
}

fn land<'c>(landed: &mut Vec<Landed<'c>>, route: &'c EnvoyRoute, label: &str) {
    if !landed.iter().any(|l| std::ptr::eq(l.route, route)) {
        landed.push(Landed {
            route,
            label: label.to_string(),
        });
    }
}

/// Check 3 (and the reverse of route_wrong_cluster): a request Envoy forwards
/// on this route, seen by edge-guard's route table.
fn check_envoy_route(
    hcm: &Hcm,
    rc: &RouteConfiguration,
    vh: &VirtualHost,
    envoy_route: &EnvoyRoute,
    policy: &Policy,
    wrong_pairs: &mut HashSet<(usize, *const EnvoyRoute)>,
    out: &mut Out,
) {
    if !envoy_route.forwards() {
        return;
    }
    let path = match &envoy_route.matcher.path {
        PathMatch::Prefix(p) if p.is_empty() => "/",
        PathMatch::Prefix(p) | PathMatch::Path(p) | PathMatch::SeparatedPrefix(p) => p.as_str(),
        PathMatch::Regex(_) | PathMatch::Unsupported(_) => return,
    };
    if !path.starts_with('/') {
        return;
    }
    let label = envoy_route_label(rc, vh, envoy_route);
    let object = format!("{} {label}", hcm.label);
    let required = matching::required_method(envoy_route);
    if !matching::has_extra_conditions(envoy_route) {
        let request = Request {
            method: required.unwrap_or("GET"),
            path,
            headers: &[],
        };
        let selection = select_route(vh, &request);
        match selection.winner {
            Some(w) if std::ptr::eq(w, envoy_route) => {}
            Some(w) if selection.undecided.is_empty() => {
                out.push(
                    "envoy_route_shadowed",
                    Severity::Warning,
                    None,
                    Some(&object),
                    format!(
                        "{label} is never reached by {} {path}: {} matches it first (Envoy uses the first matching route); reorder the routes",
                        request.method,
                        envoy_route_label(rc, vh, w)
                    ),
                );
                return;
            }
            _ => return,
        }
    }
    let method = required.map_or(Method::Get, Method::parse);
    // On egress, the host a call through this virtual host carries: one
    // per domain, as the policy may declare them apart.
    let mut hosts: Vec<String> = match policy.direction {
        Direction::Ingress => vec![String::new()],
        Direction::Egress => vh.domains.iter().map(|d| example_host(d)).collect(),
    };
    hosts.sort();
    hosts.dedup();
    for host in &hosts {
        check_envoy_route_for(
            hcm,
            envoy_route,
            policy,
            (host, path, method, required),
            &label,
            &object,
            wrong_pairs,
            out,
        );
    }
}

/// A host name Envoy's virtual-host `domain` accepts.
fn example_host(domain: &str) -> String {
    let domain = domain.to_ascii_lowercase();
    let domain = domain.strip_suffix(":*").unwrap_or(&domain);
    if domain == "*" {
        "edge-guard-check.invalid".to_string()
    } else if let Some(suffix) = domain.strip_prefix('*') {
        format!("edge-guard-check{suffix}")
    } else if let Some(prefix) = domain.strip_suffix('*') {
        format!("{prefix}edge-guard-check")
    } else {
        domain.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
fn check_envoy_route_for(
    hcm: &Hcm,
    envoy_route: &EnvoyRoute,
    policy: &Policy,
    (host, path, method, required): (&str, &str, Method, Option<&str>),
    label: &str,
    object: &str,
    wrong_pairs: &mut HashSet<(usize, *const EnvoyRoute)>,
    out: &mut Out,
) {
    let resolved = match policy.resolve(host, path, method) {
        RouteMatch::MethodNotAllowed { allowed } if required.is_none() => {
            match allowed.names().next() {
                Some(m) => (policy.resolve(host, path, Method::parse(m)), m),
                None => (RouteMatch::NotFound, "GET"),
            }
        }
        other => (other, required.unwrap_or("GET")),
    };
    let shown_path = if host.is_empty() {
        path.to_string()
    } else {
        format!("{host}{path}")
    };
    match resolved {
        (RouteMatch::Route(j), shown_method) => {
            let Some(policy_route) = policy.route(j) else {
                return;
            };
            let Some(clusters) = envoy_route.clusters() else {
                return;
            };
            if clusters.contains(&policy_route.cluster)
                || !wrong_pairs.insert((j, envoy_route as *const EnvoyRoute))
            {
                return;
            }
            out.push(
                "route_wrong_cluster",
                Severity::Error,
                Some(&route_label(j, policy_route)),
                Some(object),
                format!(
                    "{label} sends {shown_method} {shown_path} to {}, but edge-guard files it under the policy route with cluster \"{}\" and would apply that route's deadlines and health to it; add a policy route for prefix \"{path}\" with the right cluster, or fix the Envoy route",
                    envoy_route.action.describe(),
                    policy_route.cluster
                ),
            );
        }
        (RouteMatch::NotFound, shown_method)
        | (RouteMatch::MethodNotAllowed { .. }, shown_method) => {
            let (severity, consequence) = match policy.unknown_route {
                UnknownRoute::Reject if policy.direction == Direction::Egress => (
                    Severity::Error,
                    "edge-guard refuses the call (destination_not_allowed)",
                ),
                UnknownRoute::Reject => {
                    (Severity::Error, "edge-guard rejects it (route_not_found)")
                }
                UnknownRoute::Allow => (
                    Severity::Warning,
                    "edge-guard lets it through without a route's deadlines (unknown_route: allow)",
                ),
            };
            let consequence = if matches!(resolved.0, RouteMatch::MethodNotAllowed { .. }) {
                "edge-guard answers 405 (the policy route for this path does not list the method)"
            } else {
                consequence
            };
            out.push(
                "envoy_route_not_in_policy",
                severity,
                None,
                Some(object),
                format!(
                    "{label} forwards {shown_method} {shown_path} to {} in {}, but no policy route covers it, so {consequence}; add a policy route for prefix \"{path}\" or remove the Envoy route",
                    envoy_route.action.describe(),
                    hcm.label
                ),
            );
        }
    }
}

/// An HCM without the filter, while others have it: traffic to the policy's
/// clusters through it bypasses edge-guard.
fn check_bypass(hcm: &Hcm, rc: &RouteConfiguration, policy: &Policy, out: &mut Out) {
    let mut reached: Vec<String> = Vec::new();
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            for c in r.clusters().unwrap_or_default() {
                if policy.clusters.iter().any(|pc| pc.name == *c) && !reached.contains(c) {
                    reached.push(c.clone());
                }
            }
        }
    }
    if !reached.is_empty() {
        out.push(
            "filter_missing",
            Severity::Error,
            None,
            Some(&hcm.label),
            format!(
                "{} has no edge_guard wasm filter but routes to the policy's cluster(s) {}, so requests through it bypass edge-guard; add the filter to its http_filters before the router",
                hcm.label,
                quoted_list(&reached)
            ),
        );
    }
}

// ---------------------------------------------------------------------------
// Check 4 and the WebSocket part of check 6

fn check_websockets(hcm: &Hcm, policy: &Policy, landing: &[Vec<Landed>], out: &mut Out) {
    let limits = policy.websocket.connection;
    for (i, route) in policy
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.websocket)
    {
        let label = route_label(i, route);
        for landed in landing.get(i).into_iter().flatten() {
            let (envoy_route, object) = (landed.route, &landed.label);
            let hcm_enabled = hcm.websocket.as_ref().is_some_and(|u| u.enabled);
            let why_not = match envoy_route.websocket {
                Some(false) => Some(
                    "the Envoy route sets upgrade_configs websocket enabled: false".to_string(),
                ),
                Some(true) => None,
                None if hcm_enabled => None,
                None if hcm.websocket.is_some() => Some(format!(
                    "{} has upgrade_configs websocket with enabled: false",
                    hcm.label
                )),
                None => Some(format!(
                    "neither {} nor the Envoy route has upgrade_configs for websocket",
                    hcm.label
                )),
            };
            if let Some(why) = why_not {
                out.push(
                    "websocket_not_upgradeable",
                    Severity::Error,
                    Some(&label),
                    Some(object),
                    format!("the policy route is a WebSocket route but {why}, so Envoy refuses the upgrade (403/404); add upgrade_configs: [{{upgrade_type: websocket}}] to the HCM (or to the route)"),
                );
            }
            let (idle, idle_source) = match envoy_route.idle_timeout {
                Some(t) => (t, format!("the Envoy route's idle_timeout {t}")),
                None => (
                    hcm.effective_stream_idle(),
                    format!(
                        "{}'s stream_idle_timeout {}",
                        hcm.label,
                        with_default(hcm.stream_idle_timeout, hcm.effective_stream_idle())
                    ),
                ),
            };
            let wanted = limits
                .idle_timeout_ms
                .map(|ms| ("websocket.idle_timeout", ms))
                .or(limits
                    .max_duration_ms
                    .map(|ms| ("websocket.max_duration", ms)));
            if let Some((field, ms)) = wanted {
                if idle.as_ms() != 0 && idle.as_ms() < ms {
                    out.push(
                        "websocket_idle_cut",
                        Severity::Warning,
                        Some(&label),
                        Some(object),
                        format!("{idle_source} closes quiet WebSocket connections before the policy's {field} ({}); raise it to at least {} (or 0s to leave it to edge-guard)", Millis(ms), Millis(ms)),
                    );
                }
            }
            let duration = envoy_route
                .max_stream_duration
                .or(hcm.max_stream_duration)
                .filter(|d| d.as_ms() != 0);
            if let (Some(cap), Some(ms)) = (duration, limits.max_duration_ms) {
                if cap.as_ms() < ms {
                    out.push(
                        "websocket_idle_cut",
                        Severity::Warning,
                        Some(&label),
                        Some(object),
                        format!("Envoy's max_stream_duration {cap} ends WebSocket connections before the policy's websocket.max_duration ({}); raise it to at least {}", Millis(ms), Millis(ms)),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Per-route durations: Envoy's route stats, or edge-guard's opt-in histogram

/// Envoy keeps per-route stats on some routes (`stat_prefix`) but not on a
/// route the policy's requests land on, and the policy's own duration
/// histogram is off: that route's requests are timed nowhere, and a
/// dashboard by Envoy route silently misses it.
fn check_route_stats(hcm: &Hcm, policy: &Policy, landing: &[Vec<Landed>], out: &mut Out) {
    if policy.request_duration_histogram {
        return;
    }
    let landed: Vec<&Landed> = landing.iter().flatten().collect();
    if !landed.iter().any(|l| l.route.stat_prefix.is_some()) {
        // No per-route stats anywhere: a choice, not an oversight.
        return;
    }
    let mut missing: Vec<&str> = Vec::new();
    for l in &landed {
        if l.route.stat_prefix.is_none()
            && l.route.clusters().is_some()
            && !missing.contains(&l.label.as_str())
        {
            missing.push(&l.label);
        }
    }
    if missing.is_empty() {
        return;
    }
    out.push(
        "route_stats_missing",
        Severity::Warning,
        None,
        Some(&hcm.label),
        format!(
            "{} keeps per-route stats (stat_prefix) on some routes but not on {}, and the policy's metrics.request_duration is off: requests there are timed nowhere; add a stat_prefix to each (Envoy then records vhost.<virtual host>.route.<stat_prefix>.upstream_rq_time), or set \"metrics\": {{\"request_duration\": true}} in the policy",
            hcm.label,
            missing.join(", ")
        ),
    );
}

// ---------------------------------------------------------------------------
// Check 6: timeouts

fn check_timeouts(hcm: &Hcm, policy: &Policy, landing: &[Vec<Landed>], out: &mut Out) {
    let at = &hcm.label;
    let used = routes_by_class(policy);
    let hcm_idle = hcm.effective_stream_idle();
    // class name → policy routes whose stream idle timeout is the HCM's and too short
    let mut idle_short: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, route) in policy.routes.iter().enumerate() {
        let Some(class) = policy.class_of(route) else {
            continue;
        };
        let label = route_label(i, route);
        let lands = landing.get(i).map(Vec::as_slice).unwrap_or_default();
        let uses_hcm_idle =
            lands.is_empty() || lands.iter().any(|l| l.route.idle_timeout.is_none());
        if uses_hcm_idle && hcm_idle.as_ms() != 0 && hcm_idle < class.total {
            idle_short
                .entry(class.name.as_str())
                .or_default()
                .push(&*route.name);
        }
        for landed in lands {
            let (envoy_route, object) = (landed.route, &landed.label);
            if let Some(idle) = envoy_route.idle_timeout.filter(|t| t.as_ms() != 0) {
                if idle < class.total {
                    out.push(
                        "route_idle_timeout_short",
                        Severity::Error,
                        Some(&label),
                        Some(object),
                        format!("the Envoy route's idle_timeout {idle} is shorter than class \"{}\"'s total {}: Envoy resets a slow exchange before edge-guard's deadline answers; raise it to at least {} (or remove it)", class.name, class.total, class.total),
                    );
                }
            }
            let timeout = envoy_route.effective_timeout();
            if !route.websocket && timeout.as_ms() != 0 && timeout < class.response {
                out.push(
                    "route_timeout_short",
                    Severity::Warning,
                    Some(&label),
                    Some(object),
                    format!(
                        "the Envoy route's timeout {} is shorter than class \"{}\"'s response {}. edge-guard sets x-envoy-upstream-rq-timeout-ms on every request it forwards, which overrides the route timeout, so this only bites when the filter is bypassed; set timeout: {} (or 0s) to keep them in agreement",
                        with_default(envoy_route.timeout, timeout), class.name, class.response, class.response
                    ),
                );
            }
        }
    }
    for (class_name, routes) in idle_short {
        let Some(class) = policy.timeout_classes.iter().find(|c| c.name == class_name) else {
            continue;
        };
        out.push(
            "hcm_stream_idle_timeout_short",
            Severity::Error,
            None,
            Some(at),
            format!(
                "{at}'s stream_idle_timeout {} is shorter than class \"{class_name}\"'s total {} (routes: {}): Envoy resets a quiet exchange before edge-guard's deadline answers; set stream_idle_timeout to at least {} (0s disables it)",
                with_default(hcm.stream_idle_timeout, hcm_idle), class.total, routes.join(", "), class.total
            ),
        );
    }
    if let Some(request_timeout) = hcm.request_timeout.filter(|t| t.as_ms() != 0) {
        for class in policy
            .timeout_classes
            .iter()
            .filter(|c| used.contains_key(c.name.as_str()))
        {
            if request_timeout < class.total {
                let routes = used
                    .get(class.name.as_str())
                    .map(|r| r.join(", "))
                    .unwrap_or_default();
                out.push(
                    "hcm_request_timeout_short",
                    Severity::Error,
                    None,
                    Some(at),
                    format!(
                        "{at}'s request_timeout {request_timeout} is shorter than class \"{}\"'s total {} (routes: {routes}): Envoy answers 408 before edge-guard's deadline; raise request_timeout to at least {} or remove it",
                        class.name, class.total, class.total
                    ),
                );
            }
        }
    }
    if hcm.request_headers_timeout.map_or(true, |t| t.as_ms() == 0) {
        out.push(
            "request_headers_timeout_missing",
            Severity::Warning,
            None,
            Some(at),
            format!("{at} has no request_headers_timeout: edge-guard's deadlines start once the headers have arrived, so a client sending headers slowly (slowloris) holds a connection unbounded; set request_headers_timeout, e.g. 10s"),
        );
    }
}
