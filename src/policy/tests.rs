use super::*;
use crate::routing::RouteMatch;
use serde_json::json;

fn base() -> serde_json::Value {
    json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service", "methods": ["GET"], "timeout": "standard"},
            {"name": "events", "prefix": "/ws/events", "cluster": "event_service", "websocket": true}
        ],
        "unknown_route": "reject",
        "timeouts": {"classes": {"standard": "30s"}, "default_class": "standard"},
        "status": {"path": "/.edge-guard/status", "allow_cidrs": ["127.0.0.0/8"]}
    })
}

fn compile_value(v: &serde_json::Value) -> Result<Policy, ConfigError> {
    Policy::from_json(v.to_string().as_bytes())
}

fn error_of(v: serde_json::Value) -> ConfigError {
    compile_value(&v).expect_err("policy should be refused")
}

#[test]
fn parse_config_issue_example_compiles() {
    let policy = compile_value(&base()).unwrap();
    assert_eq!(policy.routes.len(), 2);
    assert_eq!(policy.clusters.len(), 2);
    assert_eq!(policy.unknown_route, UnknownRoute::Reject);
    let class = policy.class_of(&policy.routes[1]).unwrap();
    assert_eq!(
        (class.total, class.response),
        (Millis(30_000), Millis(30_000))
    );
    assert_eq!(
        policy.route_table.resolve("/api/courses/7", Method::Get),
        RouteMatch::Route(0)
    );
}

#[test]
fn parse_config_minimal_uses_defaults() {
    let policy =
        Policy::from_json(br#"{"routes": [{"name": "a", "prefix": "/", "cluster": "c"}]}"#)
            .unwrap();
    assert_eq!(policy.timeout_classes[0].name, "standard");
    assert_eq!(policy.status.path, "/.edge-guard/status");
    assert_eq!(policy.on_mismatch, OnMismatch::Log);
    assert!(policy.health.is_none());
    assert_eq!(policy.clusters[0].health_path, "/health");
}

#[test]
fn parse_config_malformed_json() {
    let e = Policy::from_json(b"{\"routes\": [").unwrap_err();
    assert!(e.problem.contains("not valid JSON"), "{e}");
}

#[test]
fn parse_config_unknown_field_names_path() {
    let mut v = base();
    v["routes"][0]["prefx"] = json!("/x");
    let e = error_of(v);
    assert_eq!(e.path, "routes[0].prefx");
    assert!(e.problem.contains("unknown field `prefx`"), "{e}");
    assert!(e.problem.contains("expected one of"), "{e}");
}

#[test]
fn parse_config_unknown_top_level_field() {
    let mut v = base();
    v["rutes"] = json!([]);
    assert_eq!(error_of(v).path, "rutes");
}

#[test]
fn parse_config_duplicate_route_name() {
    let mut v = base();
    v["routes"][1]["name"] = json!("courses");
    let e = error_of(v);
    assert_eq!(e.path, "routes[1].name");
    assert!(e.problem.contains("duplicate route name"), "{e}");
}

#[test]
fn parse_config_identical_prefix_overlapping_methods() {
    let mut v = base();
    v["routes"][1] = json!({"name": "courses2", "prefix": "/api/courses/", "cluster": "x", "methods": ["GET", "POST"]});
    let e = error_of(v);
    assert_eq!(e.path, "routes[1].prefix");
    assert!(e.problem.contains("routes[0]"), "{e}");
}

#[test]
fn parse_config_identical_prefix_disjoint_methods_is_fine() {
    let mut v = base();
    v["routes"][1] = json!({"name": "courses_write", "prefix": "/api/courses", "cluster": "x", "methods": ["POST"]});
    let policy = compile_value(&v).unwrap();
    assert_eq!(
        policy.route_table.resolve("/api/courses", Method::Post),
        RouteMatch::Route(1)
    );
}

#[test]
fn parse_config_prefix_without_methods_overlaps_everything() {
    let mut v = base();
    v["routes"][1] = json!({"name": "all", "prefix": "/api/courses", "cluster": "x"});
    assert_eq!(error_of(v).path, "routes[1].prefix");
}

#[test]
fn parse_config_unknown_timeout_class() {
    let mut v = base();
    v["timeouts"]["classes"]["upload"] = json!({"total": "120s", "response": "55s"});
    v["routes"][0]["timeout"] = json!("aggregate");
    let e = error_of(v);
    assert_eq!(
        e.to_string(),
        "routes[0].timeout: unknown timeout class \"aggregate\"; defined classes: standard, upload"
    );
}

#[test]
fn parse_config_unknown_default_class() {
    let mut v = base();
    v["timeouts"]["default_class"] = json!("nope");
    assert_eq!(error_of(v).path, "timeouts.default_class");
}

#[test]
fn parse_config_bad_duration_names_class() {
    let mut v = base();
    v["timeouts"]["classes"]["standard"] = json!("30");
    let e = error_of(v);
    assert_eq!(e.path, "timeouts.classes.standard");
    assert!(e.problem.contains("\"30s\""), "{e}");
}

#[test]
fn parse_config_bad_split_duration_names_field() {
    let mut v = base();
    v["timeouts"]["classes"]["upload"] = json!({"total": "2 minutes", "response": "55s"});
    let e = error_of(v);
    assert!(e.path.starts_with("timeouts.classes.upload"), "{e}");
}

#[test]
fn parse_config_response_longer_than_total() {
    let mut v = base();
    v["timeouts"]["classes"]["upload"] = json!({"total": "10s", "response": "55s"});
    assert_eq!(error_of(v).path, "timeouts.classes.upload.response");
}

#[test]
fn parse_config_load_balancer_rule() {
    let mut v = base();
    v["timeouts"]["classes"]["aggregation"] = json!("60s");
    v["timeouts"]["load_balancer_idle_timeout"] = json!("60s");
    let e = error_of(v.clone());
    assert_eq!(e.path, "timeouts.classes.aggregation");
    assert!(e.problem.contains("60s"), "{e}");
    assert!(
        e.problem
            .contains("raise load_balancer_idle_timeout to at least 65s"),
        "{e}"
    );
    assert!(e.problem.contains("lower the class to at most 55s"), "{e}");

    v["timeouts"]["load_balancer_idle_timeout"] = json!("65s");
    assert!(compile_value(&v).is_ok());
}

#[test]
fn parse_config_load_balancer_rule_uses_response_not_total() {
    let mut v = base();
    v["timeouts"]["classes"]["upload"] = json!({"total": "120s", "response": "55s"});
    v["timeouts"]["load_balancer_idle_timeout"] = json!("65s");
    assert!(compile_value(&v).is_ok());
}

#[test]
fn parse_config_bad_prefix() {
    let mut v = base();
    v["routes"][0]["prefix"] = json!("api/courses");
    let e = error_of(v);
    assert_eq!(e.path, "routes[0].prefix");
    assert!(e.problem.contains("must start with"), "{e}");
}

#[test]
fn parse_config_unknown_method() {
    let mut v = base();
    v["routes"][0]["methods"] = json!(["GET", "get"]);
    assert_eq!(error_of(v).path, "routes[0].methods[1]");
}

#[test]
fn parse_config_unknown_route_mode() {
    let mut v = base();
    v["unknown_route"] = json!("drop");
    let e = error_of(v);
    assert_eq!(e.path, "unknown_route");
    assert!(e.problem.contains("reject"), "{e}");
}

#[test]
fn parse_config_bad_cidr() {
    let mut v = base();
    v["status"]["allow_cidrs"] = json!(["127.0.0.0/8", "10.0.0.0/40"]);
    assert_eq!(error_of(v).path, "status.allow_cidrs[1]");
}

#[test]
fn parse_config_route_name_must_suit_metrics() {
    let mut v = base();
    v["routes"][0]["name"] = json!("courses.v1");
    assert_eq!(error_of(v).path, "routes[0].name");
}

#[test]
fn parse_config_websocket_limits_must_be_positive() {
    let mut v = base();
    v["websocket"] = json!({"max_connections": 0});
    assert_eq!(error_of(v).path, "websocket.max_connections");
}

#[test]
fn parse_config_websocket_per_user_at_most_instance() {
    let mut v = base();
    v["websocket"] = json!({"max_connections": 5, "max_connections_per_user": 6, "identity": {"header": "x-user-id"}});
    assert_eq!(error_of(v).path, "websocket.max_connections_per_user");
}

#[test]
fn parse_config_websocket_per_user_needs_identity() {
    let mut v = base();
    v["websocket"] = json!({"max_connections_per_user": 2});
    assert_eq!(error_of(v).path, "websocket.identity");
}

#[test]
fn parse_config_websocket_identity_forms() {
    let mut v = base();
    v["websocket"] = json!({"identity": {"jwt": {"payload_key": "jwt_payload", "claim": "sub"}}, "require_identity": true});
    let policy = compile_value(&v).unwrap();
    assert!(matches!(
        policy.websocket.identity,
        Some(Identity::Jwt { .. })
    ));
    v["websocket"] = json!({"identity": {"cookie": "x"}});
    assert!(error_of(v).path.starts_with("websocket.identity"));
}

#[test]
fn parse_config_websocket_durations() {
    let mut v = base();
    v["websocket"] = json!({"idle_timeout": "5m", "max_duration": "1h", "max_message_bytes": 1048576, "max_messages_per_second": 50});
    let policy = compile_value(&v).unwrap();
    assert_eq!(policy.websocket.connection.idle_timeout_ms, Some(300_000));
    assert_eq!(policy.websocket.connection.max_duration_ms, Some(3_600_000));
    v["websocket"]["idle_timeout"] = json!("5 min");
    assert_eq!(error_of(v).path, "websocket.idle_timeout");
}

#[test]
fn parse_config_route_max_connections_only_on_websocket_routes() {
    let mut v = base();
    v["routes"][0]["max_connections"] = json!(3);
    assert_eq!(error_of(v).path, "routes[0].max_connections");
}

#[test]
fn parse_config_health_checks() {
    let mut v = base();
    v["health_checks"] = json!({"interval": "10s", "timeout": "2s", "path": "/health", "unhealthy_threshold": 3, "healthy_threshold": 1, "fail_fast": true});
    v["routes"][1]["health_check_path"] = json!("/ws-health");
    let policy = compile_value(&v).unwrap();
    assert_eq!(policy.clusters[1].health_path, "/ws-health");
    assert_eq!(policy.clusters[0].health_path, "/health");
    v["health_checks"]["timeout"] = json!("20s");
    assert_eq!(error_of(v).path, "health_checks.timeout");
}

#[test]
fn parse_config_conflicting_health_paths_for_one_cluster() {
    let mut v = base();
    v["routes"][0]["health_check_path"] = json!("/a");
    v["routes"][1]["cluster"] = json!("course_service");
    v["routes"][1]["health_check_path"] = json!("/b");
    assert_eq!(error_of(v).path, "routes[1].health_check_path");
}

#[test]
fn parse_config_routing_mode() {
    let mut v = base();
    v["routing"] = json!({"on_mismatch": "reject"});
    assert_eq!(compile_value(&v).unwrap().on_mismatch, OnMismatch::Reject);
}

#[test]
fn parse_config_status_path_must_not_shadow_a_route() {
    let mut v = base();
    v["status"]["path"] = json!("/api/courses");
    assert_eq!(error_of(v).path, "status.path");
}

#[test]
fn parse_config_wrong_types_name_the_field() {
    let e = Policy::from_json(br#"{"routes": {}}"#).unwrap_err();
    assert_eq!(e.path, "routes");
    assert!(e.problem.contains("expected an array"), "{e}");
    let mut v = base();
    v["routes"][0]["websocket"] = json!("yes");
    assert_eq!(error_of(v).path, "routes[0].websocket");
    let mut v = base();
    v["websocket"] = json!({"max_connections": -1});
    assert_eq!(error_of(v).path, "websocket.max_connections");
    let mut v = base();
    v["websocket"] = json!({"max_connections": 5_000_000_000u64});
    assert!(error_of(v).problem.contains("too large"));
}

#[test]
fn parse_config_missing_required_field() {
    let mut v = base();
    v["routes"][0].as_object_mut().unwrap().remove("cluster");
    let e = error_of(v);
    assert_eq!(e.path, "routes[0].cluster");
    assert!(e.problem.contains("missing field"), "{e}");
}

#[test]
fn parse_config_split_class_needs_both_budgets() {
    let mut v = base();
    v["timeouts"]["classes"]["upload"] = json!({"total": "120s"});
    assert_eq!(error_of(v).path, "timeouts.classes.upload.response");
    let mut v = base();
    v["timeouts"]["classes"]["upload"] = json!(120);
    assert_eq!(error_of(v).path, "timeouts.classes.upload");
}

#[test]
fn parse_config_identity_needs_exactly_one_source() {
    let mut v = base();
    v["websocket"] =
        json!({"identity": {"header": "x-user-id", "jwt": {"payload_key": "p", "claim": "sub"}}});
    assert_eq!(error_of(v).path, "websocket.identity");
    let mut v = base();
    v["websocket"] = json!({"identity": {"jwt": {"payload_key": "p"}}});
    assert_eq!(error_of(v).path, "websocket.identity.jwt.claim");
}

#[test]
fn parse_config_explicit_null_means_default() {
    let mut v = base();
    v["routes"][0]["methods"] = serde_json::Value::Null;
    assert!(compile_value(&v).unwrap().routes[0].methods.is_any());
}

#[test]
fn parse_config_trailing_garbage_is_not_json() {
    let e = Policy::from_json(br#"{"routes": []} x"#).unwrap_err();
    assert!(e.problem.contains("not valid JSON"), "{e}");
}

#[test]
fn request_duration_histogram_is_off_unless_asked_for() {
    assert!(!compile_value(&base()).unwrap().request_duration_histogram);
    let mut v = base();
    v["metrics"] = json!({"request_duration": true});
    assert!(compile_value(&v).unwrap().request_duration_histogram);
}

#[test]
fn metrics_section_refuses_unknown_fields_and_wrong_types() {
    let mut v = base();
    v["metrics"] = json!({"histograms": true});
    let e = error_of(v);
    assert_eq!(e.path, "metrics.histograms", "{e}");
    let mut v = base();
    v["metrics"] = json!({"request_duration": "yes"});
    let e = error_of(v);
    assert_eq!(e.path, "metrics.request_duration", "{e}");
}

#[test]
fn engine_io_defaults_are_socket_io_defaults() {
    let mut v = base();
    v["routes"][1]["engine_io"] = json!({});
    let policy = compile_value(&v).unwrap();
    let eio = policy.routes[1].engine_io.as_ref().unwrap();
    assert_eq!(
        (
            eio.ping_interval,
            eio.ping_timeout,
            eio.polling,
            eio.websocket
        ),
        (Millis(25_000), Millis(20_000), true, true)
    );
    assert_eq!(eio.session_ttl_ms(), 45_000);
    assert_eq!(eio.long_poll.response, Millis(45_000));
    assert!(policy.warnings.is_empty());
}

#[test]
fn engine_io_errors_name_the_field() {
    let mut v = base();
    v["routes"][0]["engine_io"] = json!({});
    let e = error_of(v);
    assert_eq!(e.path, "routes[0].engine_io");
    assert!(e.problem.contains("\"websocket\": true"), "{e}");

    let mut v = base();
    v["routes"][1]["engine_io"] = json!({"transports": ["websocket", "sse"]});
    assert_eq!(error_of(v).path, "routes[1].engine_io.transports[1]");

    let mut v = base();
    v["routes"][1]["engine_io"] = json!({"transports": []});
    assert_eq!(error_of(v).path, "routes[1].engine_io.transports");

    let mut v = base();
    v["routes"][1]["engine_io"] = json!({"ping_interval": "0s"});
    assert_eq!(error_of(v).path, "routes[1].engine_io.ping_interval");

    let mut v = base();
    v["routes"][1]["engine_io"] = json!({"ping_intervall": "25s"});
    let e = error_of(v);
    assert_eq!(e.path, "routes[1].engine_io.ping_intervall");
    assert!(e.problem.contains("`ping_interval`"), "{e}");
}

#[test]
fn a_short_class_on_a_socket_io_route_without_engine_io_is_a_warning() {
    let v = json!({
        "routes": [
            {"name": "sio", "prefix": "/socket.io", "cluster": "c", "websocket": true, "timeout": "notification"},
            {"name": "sio2", "prefix": "/chat/socket.io", "cluster": "c", "websocket": true, "timeout": "notification", "engine_io": {}},
            {"name": "api", "prefix": "/api", "cluster": "c", "timeout": "notification"},
        ],
        "timeouts": {"classes": {"standard": "30s", "notification": "5s"}},
    });
    let policy = compile_value(&v).unwrap();
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    assert_eq!(policy.warnings[0].id, "engine_io_missing");
    assert_eq!(policy.warnings[0].route, "sio");
    assert!(policy.warnings[0].message.contains("engine_io"));
    // The engine_io route's long polls get 45s whatever its 5s class says.
    let eio = policy.routes[1].engine_io.as_ref().unwrap();
    assert_eq!(eio.long_poll.total, Millis(45_000));
}

#[test]
fn health_endpoint_and_drain_period_default_to_the_documented_values() {
    let policy = compile_value(&base()).unwrap();
    assert_eq!(policy.health_endpoint.path, "/.edge-guard/health");
    let anywhere: Vec<String> = policy
        .health_endpoint
        .allow
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    assert_eq!(anywhere.len(), 2, "IPv4 and IPv6 everywhere: {anywhere:?}");
    assert!(policy
        .health_endpoint
        .allow
        .iter()
        .any(|c| c.contains("203.0.113.9".parse().unwrap())));
    assert_eq!(policy.drain_period, DEFAULT_DRAIN_PERIOD);
    assert_eq!(DEFAULT_DRAIN_PERIOD, Millis(30_000));
}

#[test]
fn health_endpoint_and_drain_period_are_configurable() {
    let mut v = base();
    v["health"] = json!({"path": "/healthz", "allow_cidrs": ["10.0.0.0/8"]});
    v["websocket"] = json!({"drain_period": "90s"});
    let policy = compile_value(&v).unwrap();
    assert_eq!(policy.health_endpoint.path, "/healthz");
    assert!(!policy
        .health_endpoint
        .allow
        .iter()
        .any(|c| c.contains("127.0.0.1".parse().unwrap())));
    assert_eq!(policy.drain_period, Millis(90_000));
}

#[test]
fn health_endpoint_errors_name_the_field() {
    let mut v = base();
    v["health"] = json!({"path": "/.edge-guard/status"});
    assert_eq!(error_of(v).path, "health.path");
    let mut v = base();
    v["health"] = json!({"path": "/api/courses"});
    assert_eq!(error_of(v).path, "health.path");
    let mut v = base();
    v["health"] = json!({"allow_cidrs": ["10.0.0.0/99"]});
    assert_eq!(error_of(v).path, "health.allow_cidrs[0]");
    let mut v = base();
    v["health"] = json!({"pth": "/x"});
    assert_eq!(error_of(v).path, "health.pth");
}

#[test]
fn drain_period_must_be_positive_and_at_most_an_hour() {
    for bad in ["0s", "2h"] {
        let mut v = base();
        v["websocket"] = json!({"drain_period": bad});
        let e = error_of(v);
        assert_eq!(e.path, "websocket.drain_period", "{bad}");
        assert!(e.problem.contains("default 30s"), "{e}");
    }
}

/// Stage one alone: every default of README's policy table, read from a
/// policy that gives none of the optional fields (and each optional object
/// empty).
#[test]
fn the_readers_defaults_are_the_documented_ones() {
    use config::{IdentityConfig, TimeoutClassConfig};
    let minimal = json!({"routes": [{"name": "a", "prefix": "/", "cluster": "c"}]});
    let c = PolicyConfig::from_value(&minimal).unwrap();
    assert_eq!(c.direction, Direction::Ingress);
    assert_eq!(c.direction.as_str(), "ingress");
    assert_eq!(Direction::Egress.as_str(), "egress");
    assert_eq!(c.unknown_route, UnknownRoute::Reject);
    assert_eq!(c.routing.on_mismatch, OnMismatch::Log);
    assert!(!c.metrics.request_duration);
    assert!(c.websocket.is_none() && c.health_checks.is_none());
    let classes: Vec<(&str, Millis)> = c
        .timeouts
        .classes
        .iter()
        .map(|(name, class)| match class {
            TimeoutClassConfig::Single(ms) => (name.as_str(), *ms),
            TimeoutClassConfig::Split(s) => panic!("{name}: {:?}/{:?}", s.total, s.response),
        })
        .collect();
    assert_eq!(classes, vec![("standard", Millis(30_000))]);
    assert_eq!(c.timeouts.default_class, "standard");
    assert_eq!(c.timeouts.load_balancer_idle_timeout, None);
    assert_eq!(c.timeouts.load_balancer_margin, Millis(5_000));
    assert_eq!(c.status.path, "/.edge-guard/status");
    assert_eq!(c.status.allow_cidrs, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(c.health.path, "/.edge-guard/health");
    assert_eq!(c.health.allow_cidrs, ["0.0.0.0/0", "::/0"]);
    let route = &c.routes[0];
    assert!(!route.websocket);
    assert!(route.methods.is_none() && route.timeout.is_none() && route.engine_io.is_none());

    // The same defaults when each object is there but empty.
    let empty = json!({
        "routes": [{"name": "a", "prefix": "/", "cluster": "c", "websocket": true, "engine_io": {}}],
        "timeouts": {}, "status": {}, "health": {}, "routing": {}, "metrics": {},
        "websocket": {"identity": {"jwt": {"payload_key": "payload", "claim": "sub"}}},
        "health_checks": {}
    });
    let c = PolicyConfig::from_value(&empty).unwrap();
    let names: Vec<&String> = c.timeouts.classes.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["standard"]);
    assert_eq!(c.timeouts.default_class, "standard");
    assert_eq!(c.timeouts.load_balancer_margin, Millis(5_000));
    assert_eq!(c.status.path, "/.edge-guard/status");
    assert_eq!(c.status.allow_cidrs, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(c.health.path, "/.edge-guard/health");
    assert_eq!(c.health.allow_cidrs, ["0.0.0.0/0", "::/0"]);
    assert_eq!(c.routing.on_mismatch, OnMismatch::Log);
    assert!(!c.metrics.request_duration);
    let engine_io = c.routes[0].engine_io.as_ref().unwrap();
    assert_eq!(engine_io.ping_interval, Millis(25_000));
    assert_eq!(engine_io.ping_timeout, Millis(20_000));
    assert_eq!(engine_io.transports, ["websocket", "polling"]);
    let ws = c.websocket.as_ref().unwrap();
    assert!(!ws.require_identity);
    assert_eq!(ws.drain_period, None);
    match &ws.identity {
        Some(IdentityConfig::Jwt(jwt)) => {
            assert_eq!(jwt.payload_key, "payload");
            assert_eq!(jwt.claim, "sub");
            assert_eq!(jwt.metadata_namespace, "envoy.filters.http.jwt_authn");
        }
        other => panic!("{other:?}"),
    }
    let hc = c.health_checks.as_ref().unwrap();
    assert_eq!(hc.interval, Millis(10_000));
    assert_eq!(hc.timeout, Millis(2_000));
    assert_eq!(hc.path, "/health");
    assert_eq!((hc.unhealthy_threshold, hc.healthy_threshold), (3, 1));
    assert!(hc.fail_fast);
}

/// The reader's messages name what was expected and what was found, for
/// every kind of JSON value.
#[test]
fn wrong_types_say_what_was_found() {
    let problem = |field: &str, value: serde_json::Value| {
        let mut v = base();
        v["routes"][0][field] = value;
        let e = error_of(v);
        format!("{}: {}", e.path, e.problem)
    };
    assert_eq!(
        problem("prefix", json!(5)),
        "routes[0].prefix: expected a string, found a number"
    );
    assert_eq!(
        problem("cluster", json!(true)),
        "routes[0].cluster: expected a string, found a boolean"
    );
    assert_eq!(
        problem("websocket", json!("yes")),
        "routes[0].websocket: expected true or false, found a string"
    );
    assert_eq!(
        problem("methods", json!(["GET", null])),
        "routes[0].methods[1]: expected a string, found null"
    );
    assert_eq!(
        problem("methods", json!({"GET": 1})),
        "routes[0].methods: expected an array of strings, found an object"
    );
    assert_eq!(
        problem("max_connections", json!([1])),
        "routes[0].max_connections: expected a whole number ≥ 0, found an array"
    );
    assert_eq!(
        problem("max_connections", json!(5_000_000_000u64)),
        "routes[0].max_connections: 5000000000 is too large"
    );
    let e = Policy::from_json(br#"{"routes": [], "direction": "sideways"}"#).unwrap_err();
    assert_eq!(e.path, "direction");
    assert_eq!(
        e.problem,
        "unknown value `sideways`, expected one of `ingress`, `egress`"
    );
}

#[test]
fn config_error_reads_field_path_then_problem() {
    assert_eq!(
        ConfigError::new("routes[0].name", "bad").to_string(),
        "routes[0].name: bad"
    );
    assert_eq!(ConfigError::new("", "not JSON").to_string(), "not JSON");
}

#[test]
fn names_are_1_to_64_letters_digits_underscores_and_dashes() {
    let ok = format!("a_b-{}", "c".repeat(60));
    assert_eq!(ok.len(), 64);
    let mut v = base();
    v["routes"][0]["name"] = json!(ok);
    v["timeouts"]["classes"] = json!({"std_1-a": "30s"});
    v["timeouts"]["default_class"] = json!("std_1-a");
    v["routes"][0]["timeout"] = json!("std_1-a");
    assert_eq!(
        compile_value(&v).unwrap().routes[0].name,
        ok.as_str().into()
    );
    for bad in [String::new(), "c".repeat(65), "a b".into(), "a.b".into()] {
        let mut v = base();
        v["routes"][0]["name"] = json!(bad);
        assert_eq!(error_of(v).path, "routes[0].name", "{bad:?}");
    }
}

#[test]
fn an_empty_method_list_is_refused() {
    let mut v = base();
    v["routes"][0]["methods"] = json!([]);
    let e = error_of(v);
    assert_eq!(e.path, "routes[0].methods");
    assert!(e.problem.contains("empty method list"), "{e}");
}

#[test]
fn engine_io_with_one_transport_compiles() {
    for (list, polling, websocket) in [("websocket", false, true), ("polling", true, false)] {
        let mut v = base();
        v["routes"][1]["engine_io"] = json!({"transports": [list]});
        let policy = compile_value(&v).unwrap();
        let eio = policy.routes[1].engine_io.as_ref().unwrap();
        assert_eq!((eio.polling, eio.websocket), (polling, websocket), "{list}");
    }
}

#[test]
fn drain_period_of_exactly_an_hour_or_a_millisecond_is_accepted() {
    for (text, ms) in [("1h", 3_600_000), ("1ms", 1)] {
        let mut v = base();
        v["websocket"] = json!({"drain_period": text});
        assert_eq!(
            compile_value(&v).unwrap().drain_period,
            Millis(ms),
            "{text}"
        );
    }
}

#[test]
fn a_zero_budget_in_a_split_class_is_refused() {
    for class in [
        json!({"total": "10s", "response": "0s"}),
        json!({"total": "0s", "response": "0s"}),
    ] {
        let mut v = base();
        v["timeouts"]["classes"]["upload"] = class;
        let e = error_of(v);
        assert_eq!(e.path, "timeouts.classes.upload");
        assert!(e.problem.contains("greater than zero"), "{e}");
    }
}

#[test]
fn per_user_limit_equal_to_the_instance_limit_is_fine() {
    let mut v = base();
    v["websocket"] = json!({"max_connections": 5, "max_connections_per_user": 5, "identity": {"header": "x-user-id"}});
    let policy = compile_value(&v).unwrap();
    assert_eq!(policy.websocket.max_connections_per_user, Some(5));
    assert_eq!(
        policy.websocket.identity,
        Some(Identity::Header("x-user-id".into()))
    );
}

#[test]
fn identity_header_must_be_a_lower_case_regular_header() {
    for bad in ["", ":authority", "X-User-Id", "x user"] {
        let mut v = base();
        v["websocket"] = json!({"identity": {"header": bad}});
        assert_eq!(error_of(v).path, "websocket.identity.header", "{bad:?}");
    }
}

#[test]
fn jwt_identity_needs_a_payload_key_and_a_claim() {
    for (key, claim) in [("jwt_payload", ""), ("", "sub")] {
        let mut v = base();
        v["websocket"] = json!({"identity": {"jwt": {"payload_key": key, "claim": claim}}});
        assert_eq!(
            error_of(v).path,
            "websocket.identity.jwt",
            "{key:?} {claim:?}"
        );
    }
}

#[test]
fn health_check_interval_and_timeout_boundaries() {
    let checks = |interval: &str, timeout: &str| {
        let mut v = base();
        v["health_checks"] = json!({"interval": interval, "timeout": timeout});
        compile_value(&v)
    };
    let h = checks("100ms", "100ms").unwrap().health.unwrap();
    assert_eq!((h.interval, h.timeout), (Millis(100), Millis(100)));
    assert_eq!(
        checks("99ms", "50ms").unwrap_err().path,
        "health_checks.interval"
    );
    assert_eq!(
        checks("10s", "0s").unwrap_err().path,
        "health_checks.timeout"
    );
}

#[test]
fn routes_are_listed_by_their_class() {
    let mut v = base();
    v["timeouts"]["classes"]["long"] = json!("60s");
    v["routes"][1]["timeout"] = json!("long");
    v["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "more", "prefix": "/more", "cluster": "c"}));
    let policy = compile_value(&v).unwrap();
    let by_class = routes_by_class(&policy);
    assert_eq!(
        by_class.into_iter().collect::<Vec<_>>(),
        vec![
            ("long", vec!["events"]),
            ("standard", vec!["courses", "more"])
        ]
    );
}

#[test]
fn lookups_by_route_id_and_websocket_presence() {
    let policy = compile_value(&base()).unwrap();
    assert_eq!(policy.route(1).map(|r| &*r.name), Some("events"));
    assert!(policy.route(2).is_none());
    assert!(policy.has_websocket_routes());
    let mut v = base();
    v["routes"][1]["websocket"] = json!(false);
    assert!(!compile_value(&v).unwrap().has_websocket_routes());
}
