//! Each check on a tiny Envoy config, then the command line on the fixtures in
//! `tests/fixtures/validate/`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;

// ---------------------------------------------------------------------------
// Builders: a clean bootstrap and policy, then one change per test.

fn policy() -> Value {
    json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service", "methods": ["GET", "POST"]},
            {"name": "events", "prefix": "/ws/events", "cluster": "event_service", "websocket": true}
        ],
        "unknown_route": "reject",
        "timeouts": {"classes": {"standard": "30s"}, "default_class": "standard"},
        "websocket": {"idle_timeout": "60s"}
    })
}

fn wasm_filter() -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "edge_guard",
                "root_id": "edge_guard",
                "vm_config": {"vm_id": "edge_guard", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": "/etc/envoy/edge_guard.wasm"}}},
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router",
           "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

fn envoy_routes() -> Value {
    json!([
        {"match": {"prefix": "/api/courses"}, "route": {"cluster": "course_service", "timeout": "30s"}},
        {"match": {"prefix": "/ws/events"},
         "route": {"cluster": "event_service", "upgrade_configs": [{"upgrade_type": "websocket"}]}}
    ])
}

fn hcm_with(routes: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "request_headers_timeout": "10s",
        "route_config": {"name": "local", "virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": routes}]},
        "http_filters": [wasm_filter(), router()],
        // The shipped edge settings (checked by `edge`'s own tests).
        "use_remote_address": true,
        "normalize_path": true,
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "http2_protocol_options": {"max_concurrent_streams": 100, "initial_stream_window_size": 65536, "initial_connection_window_size": 1048576},
        "local_reply_config": {"mappers": [{"body_format_override": {"json_format": {"error": {}}}}]}
    })
}

fn listener(name: &str, hcm: Value) -> Value {
    json!({"name": name, "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
    ]}]})
}

fn bootstrap_with(hcm: Value) -> Value {
    json!({
        "static_resources": {
            "listeners": [listener("main", hcm)],
            "clusters": [{"name": "course_service"}, {"name": "event_service"}]
        },
        "overload_manager": {
            "resource_monitors": [{"name": "envoy.resource_monitors.global_downstream_max_connections"}],
            "actions": [{"name": "envoy.overload_actions.stop_accepting_requests"}]
        }
    })
}

fn good() -> Value {
    bootstrap_with(hcm_with(envoy_routes()))
}

fn hcm_of(envoy: &mut Value) -> &mut Value {
    &mut envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn wasm_config_of(envoy: &mut Value) -> &mut Value {
    &mut hcm_of(envoy)["http_filters"][0]["typed_config"]["config"]
}

fn check(envoy: &Value, policy: &Value) -> Report {
    let text = policy.to_string();
    validate(
        envoy,
        &Options {
            policy: Some(text.as_bytes()),
            host: None,
        },
    )
    .unwrap()
}

fn findings<'r>(report: &'r Report, id: &str) -> Vec<&'r Finding> {
    report.findings.iter().filter(|f| f.id == id).collect()
}

/// The single finding with `id`, for assertions on its text.
fn only(report: &Report, id: &str) -> Finding {
    let found = findings(report, id);
    assert_eq!(
        found.len(),
        1,
        "expected one {id}, got:\n{}",
        report.to_text()
    );
    found[0].clone()
}

// ---------------------------------------------------------------------------

#[test]
fn clean_config_has_no_findings() {
    let report = check(&good(), &policy());
    assert!(report.findings.is_empty(), "{}", report.to_text());
    assert!(report.ok());
}

#[test]
fn cluster_missing_names_the_routes_and_the_known_clusters() {
    let mut envoy = good();
    envoy["static_resources"]["clusters"] = json!([{"name": "course_service"}]);
    let report = check(&envoy, &policy());
    let f = only(&report, "cluster_missing");
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.policy_route.as_deref(), Some("routes[1] \"events\""));
    assert!(
        f.message.contains("\"event_service\"") && f.message.contains("\"course_service\""),
        "{}",
        f.message
    );
}

#[test]
fn route_wrong_cluster_when_an_earlier_envoy_route_wins() {
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().insert(
        0,
        json!({"match": {"prefix": "/api"}, "route": {"cluster": "legacy"}}),
    );
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    let f = findings(&report, "route_wrong_cluster");
    assert_eq!(f.len(), 1, "{}", report.to_text());
    assert_eq!(f[0].policy_route.as_deref(), Some("routes[0] \"courses\""));
    assert!(
        f[0].message.contains("cluster \"legacy\"") && f[0].message.contains("\"course_service\""),
        "{}",
        f[0].message
    );
    assert_eq!(
        f[0].envoy_object.as_deref(),
        Some("listener \"main\" route_config \"local\" virtual_host \"backend\" routes[0]")
    );
}

#[test]
fn route_wrong_cluster_for_one_method_only() {
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().insert(
        0,
        json!({"match": {"prefix": "/api/courses", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
               "route": {"cluster": "writer"}}),
    );
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    let f = only(&report, "route_wrong_cluster");
    assert!(f.message.contains("POST /api/courses"), "{}", f.message);
}

#[test]
fn route_wrong_cluster_from_the_envoy_side() {
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().insert(
        0,
        json!({"match": {"prefix": "/api/courses/admin"}, "route": {"cluster": "admin_service"}}),
    );
    let mut envoy = bootstrap_with(hcm_with(routes));
    envoy["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "admin_service"}));
    let report = check(&envoy, &policy());
    let f = only(&report, "route_wrong_cluster");
    assert_eq!(f.policy_route.as_deref(), Some("routes[0] \"courses\""));
    assert!(
        f.message.contains("/api/courses/admin") && f.message.contains("admin_service"),
        "{}",
        f.message
    );
}

#[test]
fn route_unrouted_when_nothing_matches_or_envoy_answers_itself() {
    let routes = json!([
        {"match": {"prefix": "/ws/events"}, "route": {"cluster": "event_service", "upgrade_configs": [{"upgrade_type": "websocket"}]}},
        {"match": {"path": "/api/courses"}, "direct_response": {"status": 503}}
    ]);
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    let f = findings(&report, "route_unrouted");
    assert_eq!(f.len(), 2, "{}", report.to_text());
    assert!(f
        .iter()
        .any(|f| f.message.contains("direct_response with status 503")));
    assert!(f.iter().any(
        |f| f.message.contains("no route of virtual host \"backend\"")
            && f.message.contains("/api/courses/x")
    ));
}

#[test]
fn header_matchers_do_not_match_a_plain_request_and_are_noted() {
    let routes = json!([
        {"match": {"prefix": "/api/courses", "headers": [{"name": "x-canary", "present_match": true}]},
         "route": {"cluster": "course_service"}},
        {"match": {"prefix": "/ws/events"}, "route": {"cluster": "event_service", "upgrade_configs": [{"upgrade_type": "websocket"}]}}
    ]);
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    let f = findings(&report, "route_unrouted");
    assert!(!f.is_empty(), "{}", report.to_text());
    assert!(
        f[0].message.contains("requires header \"x-canary\""),
        "{}",
        f[0].message
    );
}

#[test]
fn simple_regexes_are_evaluated_and_others_are_warnings() {
    let mut routes = envoy_routes();
    routes[0]["match"] = json!({"safe_regex": {"regex": "/api/courses(/.*)?"}});
    let report = check(&bootstrap_with(hcm_with(routes.clone())), &policy());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    routes[0]["match"] = json!({"safe_regex": {"regex": "(?i)/api/courses.*"}});
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    assert!(report.ok(), "{}", report.to_text());
    assert!(!findings(&report, "regex_not_simulated").is_empty());
}

#[test]
fn envoy_route_not_in_policy_is_an_error_only_when_unknown_routes_are_rejected() {
    let mut routes = envoy_routes();
    routes
        .as_array_mut()
        .unwrap()
        .push(json!({"match": {"prefix": "/admin"}, "route": {"cluster": "admin_service"}}));
    let envoy = bootstrap_with(hcm_with(routes));
    let report = check(&envoy, &policy());
    let f = only(&report, "envoy_route_not_in_policy");
    assert_eq!(f.severity, Severity::Error);
    assert!(
        f.message.contains("GET /admin") && f.message.contains("route_not_found"),
        "{}",
        f.message
    );

    let mut allow = policy();
    allow["unknown_route"] = json!("allow");
    assert_eq!(
        only(&check(&envoy, &allow), "envoy_route_not_in_policy").severity,
        Severity::Warning
    );
}

#[test]
fn shadowed_envoy_routes_are_reported() {
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().push(
        json!({"match": {"prefix": "/api/courses/x"}, "route": {"cluster": "course_service"}}),
    );
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    let f = only(&report, "envoy_route_shadowed");
    assert!(f.message.contains("routes[0]"), "{}", f.message);
}

#[test]
fn websocket_needs_an_upgrade_config_on_the_hcm_or_the_route() {
    let mut routes = envoy_routes();
    routes[1]["route"] = json!({"cluster": "event_service"});
    let mut envoy = bootstrap_with(hcm_with(routes.clone()));
    let report = check(&envoy, &policy());
    let f = only(&report, "websocket_not_upgradeable");
    assert_eq!(f.policy_route.as_deref(), Some("routes[1] \"events\""));

    hcm_of(&mut envoy)["upgrade_configs"] = json!([{"upgrade_type": "WebSocket"}]);
    assert!(findings(&check(&envoy, &policy()), "websocket_not_upgradeable").is_empty());

    routes[1]["route"]["upgrade_configs"] =
        json!([{"upgrade_type": "websocket", "enabled": false}]);
    let mut envoy = bootstrap_with(hcm_with(routes));
    hcm_of(&mut envoy)["upgrade_configs"] = json!([{"upgrade_type": "websocket"}]);
    assert!(only(&check(&envoy, &policy()), "websocket_not_upgradeable")
        .message
        .contains("enabled: false"));
}

#[test]
fn filter_missing_when_no_hcm_runs_edge_guard() {
    let mut envoy = good();
    hcm_of(&mut envoy)["http_filters"] = json!([router()]);
    let report = check(&envoy, &policy());
    let f = only(&report, "filter_missing");
    assert_eq!(f.envoy_object.as_deref(), Some("listener \"main\""));
}

#[test]
fn filter_after_router() {
    let mut envoy = good();
    hcm_of(&mut envoy)["http_filters"] = json!([router(), wasm_filter()]);
    let f = only(&check(&envoy, &policy()), "filter_after_router");
    assert!(f.message.contains("http_filters[1]"), "{}", f.message);
}

#[test]
fn filter_needs_a_vm_id() {
    let mut envoy = good();
    wasm_config_of(&mut envoy)["vm_config"]["vm_id"] = json!("");
    only(&check(&envoy, &policy()), "filter_no_vm_id");
}

#[test]
fn filter_must_fail_closed() {
    let mut envoy = good();
    wasm_config_of(&mut envoy)["failure_policy"] = json!("FAIL_OPEN");
    only(&check(&envoy, &policy()), "filter_fail_open");

    let mut envoy = good();
    wasm_config_of(&mut envoy)["fail_open"] = json!(true);
    only(&check(&envoy, &policy()), "filter_fail_open");

    let mut envoy = good();
    wasm_config_of(&mut envoy)["failure_policy"] = json!("FAIL_RELOAD");
    assert!(check(&envoy, &policy()).findings.is_empty());
}

#[test]
fn edge_guard_is_recognised_by_its_code_file_alone() {
    let mut envoy = good();
    let config = wasm_config_of(&mut envoy);
    config["name"] = json!("x");
    config["root_id"] = json!("");
    assert!(check(&envoy, &policy()).findings.is_empty());
}

/// Another team's wasm filter (fail-open, no vm_id) next to edge-guard.
fn other_wasm_filter() -> Value {
    json!({
        "name": "authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "authz",
                "root_id": "authz",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": "/etc/envoy/authz.wasm"}}},
                "fail_open": true
            }
        }
    })
}

#[test]
fn another_wasm_filter_is_neither_checked_nor_taken_for_edge_guard() {
    // Before edge-guard: its settings are not edge-guard's business.
    let mut envoy = good();
    hcm_of(&mut envoy)["http_filters"] = json!([other_wasm_filter(), wasm_filter(), router()]);
    let report = check(&envoy, &policy());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    // Alone: edge-guard is missing.
    let mut envoy = good();
    hcm_of(&mut envoy)["http_filters"] = json!([other_wasm_filter(), router()]);
    let f = only(&check(&envoy, &policy()), "filter_missing");
    assert_eq!(f.envoy_object.as_deref(), Some("listener \"main\""));
}

#[test]
fn embedded_policy_equal_as_json_does_not_differ() {
    // The same policy, pretty-printed in the Envoy config and compact in
    // --policy: the same JSON, so not "differs".
    let mut envoy = good();
    let pretty = serde_json::to_string_pretty(&policy()).unwrap();
    wasm_config_of(&mut envoy)["configuration"] =
        json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": pretty});
    let report = check(&envoy, &policy());
    assert!(report.findings.is_empty(), "{}", report.to_text());
    assert_eq!(report.policy_source, "--policy");
}

#[test]
fn embedded_policy_that_is_not_json_is_compared_as_text() {
    // Not JSON: it differs from a JSON --policy...
    let mut envoy = good();
    wasm_config_of(&mut envoy)["configuration"] = json!("routes: []");
    let f = only(&check(&envoy, &policy()), "policy_differs");
    assert_eq!(f.envoy_object.as_deref(), Some("listener \"main\""));
    // ...and equals the same text, whitespace around it aside.
    let options = Options {
        policy: Some(b"  routes: []\n"),
        host: None,
    };
    let report = validate(&envoy, &options).unwrap();
    assert!(
        findings(&report, "policy_differs").is_empty(),
        "{}",
        report.to_text()
    );
    only(&report, "policy_invalid");
}

#[test]
fn timeouts_equal_to_the_class_total_are_long_enough() {
    // The class total is 30s; each Envoy timeout at exactly 30s is "at least"
    // the total the messages ask for, so nothing is reported.
    let mut envoy = good();
    hcm_of(&mut envoy)["stream_idle_timeout"] = json!("30s");
    hcm_of(&mut envoy)["request_timeout"] = json!("30s");
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["idle_timeout"] =
        json!("30s");
    let mut p = policy();
    p["websocket"]["idle_timeout"] = json!("30s");
    let report = check(&envoy, &p);
    assert!(report.findings.is_empty(), "{}", report.to_text());

    // One millisecond less and each is reported.
    hcm_of(&mut envoy)["stream_idle_timeout"] = json!("29.999s");
    hcm_of(&mut envoy)["request_timeout"] = json!("29.999s");
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["idle_timeout"] =
        json!("29.999s");
    let report = check(&envoy, &p);
    only(&report, "hcm_stream_idle_timeout_short");
    only(&report, "hcm_request_timeout_short");
    only(&report, "route_idle_timeout_short");
}

#[test]
fn websocket_upgrade_filters_without_edge_guard_bypass_it() {
    let mut envoy = good();
    hcm_of(&mut envoy)["upgrade_configs"] =
        json!([{"upgrade_type": "websocket", "filters": [router()]}]);
    let f = only(&check(&envoy, &policy()), "filter_missing");
    assert!(f.message.contains("upgrade"), "{}", f.message);
}

#[test]
fn websocket_upgrade_filters_must_run_edge_guard_before_the_router() {
    let mut envoy = good();
    hcm_of(&mut envoy)["upgrade_configs"] =
        json!([{"upgrade_type": "websocket", "filters": [wasm_filter(), router()]}]);
    let report = check(&envoy, &policy());
    assert!(report.findings.is_empty(), "{}", report.to_text());

    hcm_of(&mut envoy)["upgrade_configs"] =
        json!([{"upgrade_type": "websocket", "filters": [router(), wasm_filter()]}]);
    let f = only(&check(&envoy, &policy()), "filter_after_router");
    assert!(
        f.message.contains("websocket upgrade_configs") && f.message.contains("(filters[1])"),
        "{}",
        f.message
    );
}

#[test]
fn a_listener_without_the_filter_that_reaches_policy_clusters_is_a_bypass() {
    let mut envoy = good();
    let mut plain = hcm_with(envoy_routes());
    plain["http_filters"] = json!([router()]);
    envoy["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(listener("plain_http", plain));
    let f = only(&check(&envoy, &policy()), "filter_missing");
    assert_eq!(f.envoy_object.as_deref(), Some("listener \"plain_http\""));
}

#[test]
fn stream_idle_timeout_default_is_five_minutes() {
    let mut long = policy();
    long["timeouts"]["classes"] = json!({"standard": "30s", "slow": "10m"});
    long["routes"][0]["timeout"] = json!("slow");
    let mut envoy = good();
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"] =
        json!("0s");
    let report = check(&envoy, &long);
    let f = only(&report, "hcm_stream_idle_timeout_short");
    assert!(
        f.message.contains("5m") || f.message.contains("300s"),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("Envoy's default") && f.message.contains("\"slow\""),
        "{}",
        f.message
    );

    hcm_of(&mut envoy)["stream_idle_timeout"] = json!("0s");
    assert!(check(&envoy, &long).findings.is_empty());
}

#[test]
fn stream_idle_timeout_overridden_by_the_route() {
    let mut envoy = good();
    hcm_of(&mut envoy)["stream_idle_timeout"] = json!("10s");
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["idle_timeout"] =
        json!("60s");
    let report = check(&envoy, &policy());
    // courses is covered by its route's idle_timeout; events is not.
    let f = only(&report, "hcm_stream_idle_timeout_short");
    assert!(
        f.message.contains("events") && !f.message.contains("courses"),
        "{}",
        f.message
    );

    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["idle_timeout"] =
        json!("5s");
    only(&check(&envoy, &policy()), "route_idle_timeout_short");
}

#[test]
fn report_ids_list_every_finding() {
    let mut envoy = good();
    hcm_of(&mut envoy)["request_timeout"] = json!("12.5s");
    assert_eq!(
        check(&envoy, &policy()).ids(),
        vec!["hcm_request_timeout_short"]
    );
    assert!(check(&good(), &policy()).ids().is_empty());
}

#[test]
fn request_timeout_shorter_than_total() {
    let mut envoy = good();
    hcm_of(&mut envoy)["request_timeout"] = json!("12.5s");
    let f = only(&check(&envoy, &policy()), "hcm_request_timeout_short");
    assert!(
        f.message.contains("12500ms") && f.message.contains("30s"),
        "{}",
        f.message
    );
}

#[test]
fn request_headers_timeout_missing_is_a_warning() {
    let mut envoy = good();
    hcm_of(&mut envoy)
        .as_object_mut()
        .unwrap()
        .remove("request_headers_timeout");
    let report = check(&envoy, &policy());
    assert_eq!(
        only(&report, "request_headers_timeout_missing").severity,
        Severity::Warning
    );
    assert!(report.ok());
}

#[test]
fn route_timeout_default_is_fifteen_seconds_and_only_a_warning() {
    let mut envoy = good();
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        .as_object_mut()
        .unwrap()
        .remove("timeout");
    let report = check(&envoy, &policy());
    let f = only(&report, "route_timeout_short");
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.message.contains("15s (Envoy's default)")
            && f.message.contains("x-envoy-upstream-rq-timeout-ms"),
        "{}",
        f.message
    );
    assert!(report.ok());
}

#[test]
fn websocket_idle_cut() {
    let mut envoy = good();
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][1]["route"]["idle_timeout"] =
        json!("45s");
    let mut p = policy();
    p["timeouts"]["classes"]["standard"] = json!("30s");
    let f = only(&check(&envoy, &p), "websocket_idle_cut");
    assert!(
        f.message.contains("45s") && f.message.contains("websocket.idle_timeout"),
        "{}",
        f.message
    );

    let mut envoy = good();
    hcm_of(&mut envoy)["common_http_protocol_options"] = json!({"max_stream_duration": "3600s"});
    p["websocket"]["max_duration"] = json!("2h");
    let f = only(&check(&envoy, &p), "websocket_idle_cut");
    assert!(f.message.contains("max_stream_duration"), "{}", f.message);
}

#[test]
fn policy_invalid_reports_the_load_balancer_rule() {
    let mut p = policy();
    p["timeouts"]["load_balancer_idle_timeout"] = json!("30s");
    let report = check(&good(), &p);
    let f = only(&report, "policy_invalid");
    assert!(
        f.message.contains("load_balancer_idle_timeout"),
        "{}",
        f.message
    );
    // The filter checks still ran; nothing else needs the policy.
    assert_eq!(report.findings.len(), 1);
}

#[test]
fn embedded_policy_is_used_and_compared() {
    let mut envoy = good();
    wasm_config_of(&mut envoy)["configuration"] = json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": policy().to_string()});
    let report = validate(&envoy, &Options::default()).unwrap();
    assert!(report.findings.is_empty(), "{}", report.to_text());
    assert!(report.policy_source.contains("listener \"main\""));

    let mut other = policy();
    other["unknown_route"] = json!("allow");
    only(&check(&envoy, &other), "policy_differs");
}

#[test]
fn no_policy_at_all_is_a_usage_problem() {
    let e = validate(&good(), &Options::default()).unwrap_err();
    assert!(e.contains("--policy"), "{e}");
}

#[test]
fn host_selection() {
    let mut envoy = good();
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["domains"] = json!(["api.example.com"]);
    let report = check(&envoy, &policy());
    only(&report, "host_assumed");

    let text = policy().to_string();
    let options = Options {
        policy: Some(text.as_bytes()),
        host: Some("www.example.com"),
    };
    let report = validate(&envoy, &options).unwrap();
    assert_eq!(
        findings(&report, "route_unrouted").len(),
        2,
        "{}",
        report.to_text()
    );
    let options = Options {
        policy: Some(text.as_bytes()),
        host: Some("api.example.com"),
    };
    assert!(validate(&envoy, &options).unwrap().findings.is_empty());
}

#[test]
fn rds_route_config_missing_from_a_dump_is_an_error() {
    let mut hcm = hcm_with(envoy_routes());
    hcm.as_object_mut().unwrap().remove("route_config");
    hcm["rds"] = json!({"route_config_name": "missing", "config_source": {"ads": {}}});
    let dump = json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "dynamic_listeners": [{"name": "main", "active_state": {"listener": listener("main", hcm)}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "dynamic_active_clusters": [{"cluster": {"name": "course_service"}}, {"cluster": {"name": "event_service"}}]}
    ]});
    let report = check(&dump, &policy());
    assert_eq!(
        only(&report, "route_config_missing").severity,
        Severity::Error
    );
}

#[test]
fn text_and_json_output() {
    let mut envoy = good();
    envoy["static_resources"]["clusters"] = json!([{"name": "course_service"}]);
    hcm_of(&mut envoy)
        .as_object_mut()
        .unwrap()
        .remove("request_headers_timeout");
    let report = check(&envoy, &policy());
    let text = report.to_text();
    assert!(
        text.starts_with("error[cluster_missing] routes[1] \"events\": cluster \"event_service\""),
        "{text}"
    );
    assert!(
        text.contains("\nwarning[request_headers_timeout_missing] listener \"main\": "),
        "{text}"
    );
    assert!(
        text.ends_with("1 error, 1 warning (policy from --policy)\n"),
        "{text}"
    );
    let v = report.to_json();
    assert_eq!(v["ok"], json!(false));
    assert_eq!(
        (v["errors"].clone(), v["warnings"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        v["findings"][0]["policy_route"],
        json!("routes[1] \"events\"")
    );
    assert_eq!(v["findings"][1]["envoy_object"], json!("listener \"main\""));
    assert!(v["findings"][1].get("policy_route").is_none());
}

// ---------------------------------------------------------------------------
// The command line, on the fixtures.

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn fixture(name: &str) -> String {
    repo_path(&format!("tests/fixtures/validate/{name}"))
        .display()
        .to_string()
}

/// The binary's document parser (YAML needs the `cli` feature).
fn parse_envoy(text: &str) -> Result<Value, String> {
    #[cfg(feature = "cli")]
    {
        let yaml: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        serde_json::to_value(yaml).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "cli"))]
    parse_json_document(text)
}

fn run_with(args: &[&str]) -> RunOutput {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    run(&args, &parse_envoy)
}

/// `edge-guard-validate --envoy <repo>/<envoy> --policy <repo>/<policy>` must
/// report nothing at all. For the shipped config:
/// `assert_validates_clean("envoy/envoy.yaml", "envoy/policy.json");`
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
fn assert_validates_clean(envoy: &str, policy: &str) {
    let envoy = repo_path(envoy).display().to_string();
    let policy = repo_path(policy).display().to_string();
    let out = run_with(&["--envoy", &envoy, "--policy", &policy]);
    assert_eq!(out.stderr, "");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "0 errors, 0 warnings (policy from --policy)\n")
    );
}

#[test]
fn cli_usage_problems_exit_2() {
    let out = run_with(&[]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--envoy is required") && out.stderr.contains("usage:"),
        "{}",
        out.stderr
    );
    assert_eq!(run_with(&["--bogus"]).code, 2);
    assert_eq!(run_with(&["--help"]).code, 0);
    let out = run_with(&[
        "--envoy",
        &fixture("does_not_exist.yaml"),
        "--policy",
        &fixture("policy.json"),
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
    let out = run_with(&[
        "--envoy",
        &fixture("policy.json"),
        "--policy",
        &fixture("policy.json"),
    ]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("config_dump"), "{}", out.stderr);
}

#[test]
fn cli_flags_take_their_value_inline_only_in_long_form() {
    let envoy = format!("--envoy={}", fixture("config_dump.json"));
    let policy = format!("--policy={}", fixture("policy.json"));
    let out = run_with(&[&envoy, &policy]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // A short flag is never split at '=': "-h=x" is no "-h".
    let out = run_with(&["-h=x"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("unknown argument \"-h=x\""),
        "{}",
        out.stderr
    );
}

#[test]
fn the_json_only_parser_reads_json_and_refuses_yaml() {
    assert_eq!(
        crate::envoy_check::cli::parse_json_document(r#"{"a": [1]}"#),
        Ok(json!({"a": [1]}))
    );
    assert!(crate::envoy_check::cli::parse_json_document("a: 1").is_err());
}

#[test]
fn cli_config_dump_sample_validates_clean() {
    let out = run_with(&[
        "--envoy",
        &fixture("config_dump.json"),
        "--policy",
        &fixture("policy.json"),
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "0 errors, 0 warnings (policy from --policy)\n")
    );
}

#[test]
fn cli_json_output() {
    let out = run_with(&[
        "--envoy",
        &fixture("config_dump.json"),
        "--policy",
        &fixture("policy_lb_rule.json"),
        "--json",
    ]);
    assert_eq!(out.code, 1);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], json!(false));
    assert_eq!(v["findings"][0]["id"], json!("policy_invalid"));
}

#[cfg(feature = "cli")]
mod yaml_fixtures {
    use super::*;

    #[test]
    fn shipped_config_validates_clean() {
        assert_validates_clean("envoy/envoy.yaml", "envoy/policy.json");
    }

    /// The egress listener's policy (envoy/egress-policy.json, embedded in
    /// its filter: a different one would be a policy_differs warning).
    #[test]
    fn shipped_egress_policy_validates_clean() {
        assert_validates_clean("envoy/envoy.yaml", "envoy/egress-policy.json");
    }

    /// envoy/envoy.yaml embeds the policy; envoy/policy.json is the same
    /// document for people to read and tools to take.
    #[test]
    fn shipped_policy_is_the_one_embedded_in_the_envoy_config() {
        let out = run_with(&[
            "--envoy",
            &repo_path("envoy/envoy.yaml").display().to_string(),
        ]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let with_file = run_with(&[
            "--envoy",
            &repo_path("envoy/envoy.yaml").display().to_string(),
            "--policy",
            &repo_path("envoy/policy.json").display().to_string(),
        ]);
        assert!(
            !with_file.stdout.contains("policy_differs"),
            "{}",
            with_file.stdout
        );
    }

    /// The ingress filter comes through ECDS: its bootstrap default is the
    /// shipped policy too (it serves until the ECDS file is read), and
    /// checking another policy against it is what `./build.sh reload` does,
    /// so it is no `policy_differs`.
    #[test]
    fn shipped_ecds_default_is_the_shipped_policy_and_another_policy_may_replace_it() {
        let text = std::fs::read_to_string(repo_path("envoy/envoy.yaml")).unwrap();
        let doc = parse_envoy(&text).unwrap();
        let default = crate::envoy_check::reload::ecds_default_policy(&doc)
            .expect("envoy/envoy.yaml configures edge-guard through ECDS");
        let shipped = std::fs::read_to_string(repo_path("envoy/policy.json")).unwrap();
        let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        assert_eq!(parse(&default), parse(&shipped));

        let dir = std::env::temp_dir().join(format!("eg-ecds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let changed = dir.join("policy.json");
        std::fs::write(
            &changed,
            shipped.replace("\"max_connections\": 800", "\"max_connections\": 700"),
        )
        .unwrap();
        let out = run_with(&[
            "--envoy",
            &repo_path("envoy/envoy.yaml").display().to_string(),
            "--policy",
            &changed.display().to_string(),
        ]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(!out.stdout.contains("policy_differs"), "{}", out.stdout);
    }

    /// The compose stack's ECDS resource (deploy/compose/ecds, mounted into
    /// its Envoy) carries the compose config's own default policy and wasm.
    #[test]
    fn compose_ecds_resource_is_the_compose_default() {
        let text = std::fs::read_to_string(repo_path("deploy/compose/envoy.yaml")).unwrap();
        let doc = parse_envoy(&text).unwrap();
        let default = crate::envoy_check::reload::ecds_default_policy(&doc).unwrap();
        let expected = crate::envoy_check::reload::ecds_resource(&doc, &default).unwrap();
        let shipped: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_path("deploy/compose/ecds/edge_guard.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            shipped, expected,
            "regenerate with: ./build.sh validate --envoy deploy/compose/envoy.yaml --write-ecds deploy/compose/ecds/edge_guard.json"
        );
    }

    /// `--write-ecds` writes the ECDS resource delivering the checked policy
    /// (whole, by rename) when there is no error, and leaves the file alone
    /// when there is one.
    #[test]
    fn write_ecds_writes_the_resource_only_for_a_policy_without_errors() {
        let envoy = repo_path("envoy/envoy.yaml").display().to_string();
        let policy = repo_path("envoy/policy.json").display().to_string();
        let doc = parse_envoy(&std::fs::read_to_string(&envoy).unwrap()).unwrap();
        let policy_text = std::fs::read_to_string(&policy).unwrap();
        let expected = crate::envoy_check::reload::ecds_resource(&doc, &policy_text).unwrap();
        let dir = std::env::temp_dir().join(format!("eg-write-ecds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("edge_guard.json");
        let target_s = target.display().to_string();
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"routes": "none"}"#).unwrap();

        let good = run_with(&[
            "--envoy",
            &envoy,
            "--policy",
            &policy,
            "--write-ecds",
            &target_s,
        ]);
        let written = std::fs::read_to_string(&target).unwrap_or_default();
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        let refused = run_with(&[
            "--envoy",
            &envoy,
            "--policy",
            &bad.display().to_string(),
            "--write-ecds",
            &target_s,
        ]);
        let kept = std::fs::read_to_string(&target).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);

        assert_eq!(good.code, 0, "{}{}", good.stdout, good.stderr);
        assert_eq!(good.stderr, format!("wrote {target_s}\n"));
        assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), expected);
        assert!(written.ends_with('\n'));
        assert_eq!(
            leftovers, 2,
            "only bad.json and the resource, no temporary file"
        );
        assert_eq!(refused.code, 1, "{}", refused.stdout);
        assert_eq!(
            refused.stderr,
            format!("not written: {target_s} (the policy has errors; the running one stays)\n")
        );
        assert_eq!(kept, written);
    }

    fn ids_of(envoy: &str, extra: &[&str]) -> (u8, String) {
        let envoy = fixture(envoy);
        let policy = fixture("policy.json");
        let mut args = vec!["--envoy", envoy.as_str()];
        if !extra.contains(&"--no-policy") {
            args.extend(["--policy", policy.as_str()]);
        }
        args.extend(extra.iter().filter(|a| **a != "--no-policy"));
        let out = run_with(&args);
        assert_eq!(out.stderr, "");
        (out.code, out.stdout)
    }

    #[test]
    fn good_bootstrap_validates_clean() {
        let (code, stdout) = ids_of("good.yaml", &[]);
        assert_eq!(
            (code, stdout.as_str()),
            (0, "0 errors, 0 warnings (policy from --policy)\n")
        );
    }

    #[test]
    fn embedded_policy_is_used_without_policy_flag() {
        let (code, stdout) = ids_of("embedded_policy.yaml", &["--no-policy"]);
        assert_eq!(code, 0, "{stdout}");
        assert!(stdout.ends_with("0 errors, 0 warnings (policy from the edge_guard filter's configuration in listener \"main\")\n"), "{stdout}");
    }

    /// One fixture per check: each yields its finding, and only the expected ones.
    #[test]
    fn each_bad_fixture_reports_its_check() {
        let cases: &[(&str, u8, &[&str])] = &[
            ("cluster_missing.yaml", 1, &["cluster_missing"]),
            ("route_wrong_cluster.yaml", 1, &["route_wrong_cluster"]),
            ("route_unrouted.yaml", 1, &["route_unrouted"]),
            (
                "envoy_route_not_in_policy.yaml",
                1,
                &["envoy_route_not_in_policy"],
            ),
            (
                "websocket_not_upgradeable.yaml",
                1,
                &["websocket_not_upgradeable"],
            ),
            ("filter_missing.yaml", 1, &["filter_missing"]),
            ("filter_after_router.yaml", 1, &["filter_after_router"]),
            ("filter_no_vm_id.yaml", 1, &["filter_no_vm_id"]),
            ("filter_fail_open.yaml", 1, &["filter_fail_open"]),
            // A 10s stream idle timeout also cuts quiet WebSockets.
            (
                "hcm_stream_idle_timeout_short.yaml",
                1,
                &["hcm_stream_idle_timeout_short", "websocket_idle_cut"],
            ),
            (
                "hcm_request_timeout_short.yaml",
                1,
                &["hcm_request_timeout_short"],
            ),
            (
                "request_headers_timeout_missing.yaml",
                0,
                &["request_headers_timeout_missing"],
            ),
            ("route_timeout_short.yaml", 0, &["route_timeout_short"]),
            ("route_stats_missing.yaml", 0, &["route_stats_missing"]),
            ("websocket_idle_cut.yaml", 0, &["websocket_idle_cut"]),
            // Edge settings (envoy/envoy.yaml ships every one of them).
            (
                "local_reply_config_missing.yaml",
                1,
                &["local_reply_config_missing"],
            ),
            (
                "path_normalization_missing.yaml",
                0,
                &["path_normalization_missing"],
            ),
            ("escaped_slashes_kept.yaml", 0, &["escaped_slashes_kept"]),
            (
                "remote_address_untrusted.yaml",
                0,
                &["remote_address_untrusted"],
            ),
            (
                "headers_with_underscores_allowed.yaml",
                0,
                &["headers_with_underscores_allowed"],
            ),
            ("http2_limits_missing.yaml", 0, &["http2_limits_missing"]),
            ("upgrade_type_refused.yaml", 0, &["upgrade_type_refused"]),
            (
                "connection_limit_missing.yaml",
                0,
                &["connection_limit_missing"],
            ),
            (
                "overload_manager_missing.yaml",
                0,
                &["overload_manager_missing"],
            ),
            (
                "edge_defaults.yaml",
                1,
                &[
                    "local_reply_config_missing",
                    "path_normalization_missing",
                    "escaped_slashes_kept",
                    "remote_address_untrusted",
                    "headers_with_underscores_allowed",
                    "http2_limits_missing",
                    "connection_limit_missing",
                    "overload_manager_missing",
                ],
            ),
        ];
        for (file, code, expected) in cases {
            let (got_code, stdout) = ids_of(file, &[]);
            let ids: Vec<&str> = stdout
                .lines()
                .filter_map(|l| {
                    l.split_once('[')
                        .and_then(|(_, rest)| rest.split_once(']'))
                        .map(|(id, _)| id)
                })
                .collect();
            assert_eq!(
                (got_code, &ids[..]),
                (*code, *expected),
                "{file}:\n{stdout}"
            );
        }
    }
}

#[test]
fn a_short_class_on_a_socket_io_route_without_engine_io_is_a_warning() {
    let mut p = policy();
    p["routes"][1]["prefix"] = json!("/ws/events/socket.io");
    p["timeouts"]["classes"]["standard"] = json!("5s");
    let mut envoy = good();
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][1]["match"]["prefix"] =
        json!("/ws/events/socket.io");
    let report = check(&envoy, &p);
    let finding = only(&report, "engine_io_missing");
    assert_eq!(finding.severity, Severity::Warning);
    assert_eq!(finding.policy_route.as_deref(), Some("events"));
    assert!(finding.message.contains("engine_io"), "{}", finding.message);
    // With engine_io the warning goes.
    p["routes"][1]["engine_io"] = json!({});
    assert!(findings(&check(&envoy, &p), "engine_io_missing").is_empty());
}

// ---------------------------------------------------------------------------
// Per-route durations

fn routes_with_stat_prefix(prefixes: [Option<&str>; 2]) -> Value {
    let mut routes = envoy_routes();
    for (route, prefix) in routes.as_array_mut().unwrap().iter_mut().zip(prefixes) {
        if let Some(p) = prefix {
            route["stat_prefix"] = json!(p);
        }
    }
    routes
}

#[test]
fn route_stats_on_some_routes_only_name_the_route_timed_nowhere() {
    let envoy = bootstrap_with(hcm_with(routes_with_stat_prefix([Some("courses"), None])));
    let f = only(&check(&envoy, &policy()), "route_stats_missing");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("routes[1]"), "{}", f.message);
    assert!(!f.message.contains("routes[0]"), "{}", f.message);
    assert!(
        f.message.contains("metrics.request_duration"),
        "{}",
        f.message
    );
}

#[test]
fn route_stats_everywhere_nowhere_or_the_histogram_on_are_fine() {
    for prefixes in [[Some("courses"), Some("events")], [None, None]] {
        let envoy = bootstrap_with(hcm_with(routes_with_stat_prefix(prefixes)));
        assert!(findings(&check(&envoy, &policy()), "route_stats_missing").is_empty());
    }
    let envoy = bootstrap_with(hcm_with(routes_with_stat_prefix([Some("courses"), None])));
    let mut with_histogram = policy();
    with_histogram["metrics"] = json!({"request_duration": true});
    assert!(findings(&check(&envoy, &with_histogram), "route_stats_missing").is_empty());
}

#[test]
fn websocket_not_upgradeable_says_whether_the_hcm_disables_or_lacks_the_upgrade() {
    let mut routes = envoy_routes();
    routes[1]["route"] = json!({"cluster": "event_service"});
    let mut envoy = bootstrap_with(hcm_with(routes));
    let f = only(&check(&envoy, &policy()), "websocket_not_upgradeable");
    assert!(f.message.contains("neither"), "{}", f.message);

    hcm_of(&mut envoy)["upgrade_configs"] =
        json!([{"upgrade_type": "websocket", "enabled": false}]);
    let f = only(&check(&envoy, &policy()), "websocket_not_upgradeable");
    assert!(
        f.message
            .contains("has upgrade_configs websocket with enabled: false"),
        "{}",
        f.message
    );
}

#[test]
fn websocket_timeouts_equal_to_the_policy_limits_do_not_cut() {
    let mut envoy = good();
    hcm_of(&mut envoy)["route_config"]["virtual_hosts"][0]["routes"][1]["route"]["idle_timeout"] =
        json!("60s");
    assert!(findings(&check(&envoy, &policy()), "websocket_idle_cut").is_empty());

    let mut envoy = good();
    hcm_of(&mut envoy)["common_http_protocol_options"] = json!({"max_stream_duration": "7200s"});
    let mut p = policy();
    p["websocket"]["max_duration"] = json!("2h");
    assert!(findings(&check(&envoy, &p), "websocket_idle_cut").is_empty());
}

#[test]
fn a_bypass_names_each_policy_cluster_it_reaches_once() {
    let mut envoy = good();
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().extend([
        json!({"match": {"prefix": "/api/courses/v2"}, "route": {"cluster": "course_service"}}),
        json!({"match": {"prefix": "/other"}, "route": {"cluster": "other_service"}}),
    ]);
    let mut plain = hcm_with(routes);
    plain["http_filters"] = json!([router()]);
    envoy["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(listener("plain_http", plain));
    let f = only(&check(&envoy, &policy()), "filter_missing");
    assert!(
        f.message
            .contains("cluster(s) \"course_service\", \"event_service\", so"),
        "{}",
        f.message
    );
}

#[test]
fn an_empty_envoy_prefix_is_checked_as_slash() {
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().extend([
        json!({"match": {"prefix": "/"}, "route": {"cluster": "course_service"}}),
        json!({"match": {"prefix": ""}, "route": {"cluster": "course_service"}}),
    ]);
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    assert!(
        findings(&report, "envoy_route_shadowed")
            .iter()
            .any(|f| f.message.contains("routes[3]") && f.message.contains("GET /:")),
        "{}",
        report.to_text()
    );
}

#[test]
fn an_envoy_route_for_a_method_the_policy_route_refuses_is_not_in_policy() {
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().insert(
        0,
        json!({"match": {"prefix": "/api/courses", "headers": [{"name": ":method", "string_match": {"exact": "DELETE"}}]},
               "route": {"cluster": "course_service"}}),
    );
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    let f = only(&report, "envoy_route_not_in_policy");
    assert!(
        f.envoy_object
            .as_deref()
            .unwrap_or_default()
            .contains("routes[0]"),
        "{}",
        report.to_text()
    );
    assert!(f.message.contains("DELETE /api/courses"), "{}", f.message);
}

#[test]
fn a_route_behind_an_undecided_regex_is_not_called_shadowed() {
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().insert(
        0,
        json!({"match": {"prefix": "/api"}, "route": {"cluster": "course_service"}}),
    );
    let report = check(&bootstrap_with(hcm_with(routes.clone())), &policy());
    assert_eq!(findings(&report, "envoy_route_shadowed").len(), 1);

    routes.as_array_mut().unwrap().insert(
        0,
        json!({"match": {"safe_regex": {"regex": "(?i)/nothing.*"}}, "route": {"cluster": "course_service"}}),
    );
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    assert!(
        findings(&report, "envoy_route_shadowed").is_empty(),
        "{}",
        report.to_text()
    );
}

#[test]
fn regex_not_simulated_names_the_undecided_envoy_route() {
    let mut routes = envoy_routes();
    routes[0]["match"] = json!({"safe_regex": {"regex": "(?i)/api/courses.*"}});
    let report = check(&bootstrap_with(hcm_with(routes)), &policy());
    let f = findings(&report, "regex_not_simulated");
    assert!(!f.is_empty(), "{}", report.to_text());
    assert!(f[0].message.contains("routes[0]"), "{}", f[0].message);
}

#[test]
fn a_route_allowing_any_method_is_checked_for_every_method() {
    // The policy route takes any method; Envoy answers POSTs itself before
    // its cluster route, so a POST never reaches the cluster. Checking the
    // route with GET only would find nothing wrong.
    let mut p = policy();
    p["routes"][0].as_object_mut().unwrap().remove("methods");
    let mut routes = envoy_routes();
    routes.as_array_mut().unwrap().insert(
        0,
        json!({"match": {"prefix": "/api/courses", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
               "direct_response": {"status": 405}}),
    );
    let report = check(&bootstrap_with(hcm_with(routes)), &p);
    let f = only(&report, "route_unrouted");
    assert_eq!(f.policy_route.as_deref(), Some("routes[0] \"courses\""));
    assert!(
        f.message.contains("POST /api/courses")
            && f.message.contains("direct_response with status 405"),
        "{}",
        report.to_text()
    );
}
