//! The validator on an Envoy with an edge listener and an egress listener,
//! each running edge-guard with its own policy (egress mode, issue 13).

use serde_json::{json, Value};

use super::*;

fn ingress_policy() -> Value {
    json!({"routes": [{"name": "bookings", "prefix": "/api/bookings", "cluster": "booking_service"}]})
}

fn egress_policy() -> Value {
    json!({
        "direction": "egress",
        "routes": [
            {"name": "courses", "host": "course.internal", "cluster": "course_service"},
            {"name": "sms", "host": "sms.example.com", "prefix": "/v1/send", "cluster": "sms_api", "methods": ["POST"]},
            {"name": "partners", "host": "*.partners.example.com", "cluster": "partner_api"}
        ]
    })
}

fn filter(policy: &Value) -> Value {
    let vm_id = if policy["direction"] == "egress" {
        "edge_guard_egress"
    } else {
        "edge_guard"
    };
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "edge_guard", "root_id": "edge_guard",
                "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": "edge_guard.wasm"}}},
                "failure_policy": "FAIL_CLOSED",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": policy.to_string()}
            }
        }
    })
}

fn hcm(policy: &Value, virtual_hosts: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "x",
        "request_headers_timeout": "10s",
        "use_remote_address": true,
        "internal_address_config": {"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]},
        "route_config": {"name": "r", "virtual_hosts": virtual_hosts},
        "http_filters": [filter(policy), {"name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        // The shipped edge settings (checked by `edge`'s own tests).
        "normalize_path": true,
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "http2_protocol_options": {"max_concurrent_streams": 100, "initial_stream_window_size": 65536, "initial_connection_window_size": 1048576},
        "local_reply_config": {"mappers": [{"body_format_override": {"json_format": {"error": {}}}}]}
    })
}

fn egress_hosts() -> Value {
    json!([
        {"name": "course", "domains": ["course.internal", "course.internal:*"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "course_service", "timeout": "0s"}}]},
        {"name": "sms", "domains": ["sms.example.com"],
         "routes": [{"match": {"prefix": "/v1/send"}, "route": {"cluster": "sms_api", "timeout": "0s"}}]},
        {"name": "partners", "domains": ["*.partners.example.com"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "partner_api", "timeout": "0s"}}]}
    ])
}

fn envoy(egress_hcm: Value) -> Value {
    let listener = |name: &str, hcm: Value| {
        json!({"name": name, "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]})
    };
    json!({"static_resources": {
        "listeners": [
            listener("edge", hcm(&ingress_policy(), json!([{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/api/bookings"}, "route": {"cluster": "booking_service", "timeout": "0s"}}]}]))),
            listener("egress", egress_hcm)
        ],
        "clusters": [{"name": "booking_service"}, {"name": "course_service"}, {"name": "sms_api"}, {"name": "partner_api"}]
    },
    "overload_manager": {
        "resource_monitors": [{"name": "envoy.resource_monitors.global_downstream_max_connections"}],
        "actions": [{"name": "envoy.overload_actions.stop_accepting_requests"}]
    }})
}

fn run(envoy: &Value, policy: Option<&Value>) -> Report {
    let text = policy.map(Value::to_string);
    validate(
        envoy,
        &Options {
            policy: text.as_deref().map(str::as_bytes),
            host: None,
        },
    )
    .unwrap()
}

fn ids(report: &Report) -> Vec<&'static str> {
    report.ids()
}

#[test]
fn edge_and_egress_listeners_each_checked_against_their_own_policy() {
    let e = envoy(hcm(&egress_policy(), egress_hosts()));
    let report = run(&e, None);
    assert!(report.findings.is_empty(), "{}", report.to_text());
    // --policy with the ingress policy: the egress listener keeps its own.
    let report = run(&e, Some(&ingress_policy()));
    assert!(report.findings.is_empty(), "{}", report.to_text());
}

#[test]
fn egress_host_without_a_virtual_host_is_unrouted() {
    let mut hosts = egress_hosts();
    hosts.as_array_mut().unwrap().remove(2);
    let report = run(&envoy(hcm(&egress_policy(), hosts)), None);
    let f = report
        .findings
        .iter()
        .find(|f| f.id == "route_unrouted")
        .unwrap_or_else(|| panic!("{}", report.to_text()));
    assert!(f.message.contains("*.partners.example.com"), "{f}");
    assert_eq!(f.policy_route.as_deref(), Some("routes[2] \"partners\""));
}

#[test]
fn egress_host_routed_to_another_cluster_is_wrong() {
    let mut hosts = egress_hosts();
    hosts[1]["routes"][0]["route"]["cluster"] = json!("course_service");
    let report = run(&envoy(hcm(&egress_policy(), hosts)), None);
    assert!(
        ids(&report).contains(&"route_wrong_cluster"),
        "{}",
        report.to_text()
    );
}

#[test]
fn egress_virtual_host_the_policy_does_not_declare_is_reported() {
    let mut hosts = egress_hosts();
    hosts
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "open", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "partner_api", "timeout": "0s"}}]}));
    let report = run(&envoy(hcm(&egress_policy(), hosts)), None);
    let f = report
        .findings
        .iter()
        .find(|f| f.id == "envoy_route_not_in_policy")
        .unwrap_or_else(|| panic!("{}", report.to_text()));
    assert!(f.message.contains("destination_not_allowed"), "{f}");
    assert_eq!(f.severity, Severity::Error);
}

#[test]
fn egress_listener_that_strips_the_budget_header_is_warned_about() {
    let mut egress = hcm(&egress_policy(), egress_hosts());
    egress
        .as_object_mut()
        .unwrap()
        .remove("internal_address_config");
    let report = run(&envoy(egress), None);
    let found: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.id == "egress_budget_header_stripped")
        .collect();
    assert_eq!(found.len(), 1, "{}", report.to_text());
    assert_eq!(found[0].severity, Severity::Warning);
    assert!(report.ok());
}

#[test]
fn a_broken_egress_policy_is_reported_for_its_listener() {
    let mut bad = egress_policy();
    bad["routes"][0].as_object_mut().unwrap().remove("host");
    let report = run(&envoy(hcm(&bad, egress_hosts())), Some(&ingress_policy()));
    let f = report
        .findings
        .iter()
        .find(|f| f.id == "policy_invalid")
        .unwrap_or_else(|| panic!("{}", report.to_text()));
    assert!(f.message.contains("routes[0].host"), "{f}");
    assert_eq!(f.envoy_object.as_deref(), Some("listener \"egress\""));
}

#[test]
fn edge_and_egress_filters_under_one_vm_id_are_warned_about() {
    let mut egress = hcm(&egress_policy(), egress_hosts());
    egress["http_filters"][0]["typed_config"]["config"]["vm_config"]["vm_id"] = json!("edge_guard");
    let report = run(&envoy(egress), None);
    let found: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.id == "vm_id_shared_across_directions")
        .collect();
    assert_eq!(found.len(), 1, "{}", report.to_text());
    assert_eq!(
        found[0].envoy_object.as_deref(),
        Some("listener \"egress\"")
    );
}
