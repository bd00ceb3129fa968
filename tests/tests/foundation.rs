//! Foundation behaviour through a real Envoy: declared routes reach their
//! upstream, everything else gets edge-guard's JSON error, the status endpoint
//! is loopback-only by policy, and a bad policy stops Envoy from starting with
//! the offending field path in its log.

use edge_guard_e2e::*;

fn policy() -> Value {
    json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service", "methods": ["GET"], "timeout": "standard"},
            {"name": "events",  "prefix": "/ws/events",   "cluster": "event_service",  "websocket": true}
        ],
        "unknown_route": "reject",
        "timeouts": {"classes": {"standard": "30s"}, "default_class": "standard"},
        "status": {"path": "/.edge-guard/status", "allow_cidrs": ["127.0.0.0/8"]}
    })
}

fn course_stack(policy: Value) -> (Upstream, Envoy) {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy).upstream(&up).start();
    (up, envoy)
}

// ---- routing ----------------------------------------------------------------------

#[test]
fn known_route_reaches_its_upstream() {
    let (up, envoy) = course_stack(policy());
    for path in [
        "/api/courses",
        "/api/courses/7",
        "/api/courses/7?include=lessons&page=2",
    ] {
        let resp = envoy.get(path);
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        let echo = resp.json();
        assert_eq!(echo["service"], "course_service", "{path}: {resp:?}");
        assert_eq!(
            echo["path"], path,
            "the upstream sees the path and query unchanged"
        );
    }
    assert_eq!(up.requests(), 3);
}

#[test]
fn unknown_path_is_404_route_not_found_with_the_clients_request_id() {
    let (up, envoy) = course_stack(policy());
    let resp = envoy.request(Request::get("/admin/secrets").header("x-request-id", "req-e2e-0001"));
    let error = resp.assert_error(404, "route_not_found");
    assert_eq!(error["request_id"], "req-e2e-0001", "{resp:?}");
    assert_eq!(
        up.requests(),
        0,
        "a rejected request must not reach any upstream"
    );
}

#[test]
fn unknown_route_without_request_id_still_has_one() {
    let (_up, envoy) = course_stack(policy());
    let error = envoy.get("/nope").assert_error(404, "route_not_found");
    assert!(
        error["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{error}"
    );
}

#[test]
fn prefix_matches_on_segment_boundaries_only() {
    let (up, envoy) = course_stack(policy());
    envoy
        .get("/api/coursesX")
        .assert_error(404, "route_not_found");
    envoy
        .get("/api/courses-archive/1")
        .assert_error(404, "route_not_found");
    assert_eq!(envoy.get("/api/courses/").status, 200);
    assert_eq!(up.requests(), 1);
}

#[test]
fn wrong_method_is_405_with_allow_header() {
    let (up, envoy) = course_stack(policy());
    let resp = envoy.request(Request::post("/api/courses/7").body("{}"));
    resp.assert_error(405, "method_not_allowed");
    let allow = resp
        .header("allow")
        .unwrap_or_else(|| panic!("no allow header: {resp:?}"));
    assert!(
        allow.split(',').any(|m| m.trim() == "GET"),
        "allow {allow:?}"
    );
    assert_eq!(up.requests(), 0);
}

// ---- status endpoint ----------------------------------------------------------------

#[test]
fn status_endpoint_answers_loopback_with_version_and_routes() {
    let (up, envoy) = course_stack(policy());
    let resp = envoy.get("/.edge-guard/status");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{resp:?}"
    );
    let status = resp.json();
    assert!(
        status["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{status}"
    );
    let routes = status["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("no routes array: {status}"));
    let courses = routes
        .iter()
        .find(|r| r["name"] == "courses")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(courses["prefix"], "/api/courses");
    assert_eq!(courses["cluster"], "course_service");
    assert!(
        routes
            .iter()
            .any(|r| r["name"] == "events" && r["cluster"] == "event_service"),
        "{status}"
    );
    assert_eq!(
        up.requests(),
        0,
        "the status endpoint is answered by the filter itself"
    );
}

#[test]
fn status_endpoint_outside_allowed_cidrs_is_route_not_found() {
    let mut p = policy();
    p["status"]["allow_cidrs"] = json!(["10.0.0.0/8"]);
    let (_up, envoy) = course_stack(p);
    envoy
        .get("/.edge-guard/status")
        .assert_error(404, "route_not_found");
}

// ---- bad policies: Envoy refuses to start ---------------------------------------------

/// Envoy must exit with an error on its own and its log must name every needle.
fn assert_refused(policy: impl Into<Policy>, needles: &[&str]) {
    let failure = Envoy::builder(policy).start_expect_failure();
    failure.assert_refused_with(needles);
}

#[test]
fn malformed_json_policy_is_refused() {
    assert_refused(r#"{"routes": ["#, &["not valid JSON"]);
}

#[test]
fn unknown_field_is_refused_with_its_path() {
    let mut p = policy();
    p["routes"][0]["prefx"] = json!("/api/x");
    assert_refused(p, &["routes[0].prefx", "unknown field"]);
}

#[test]
fn duplicate_route_name_is_refused_with_its_path() {
    let mut p = policy();
    p["routes"][1]["name"] = json!("courses");
    assert_refused(p, &["routes[1].name", "duplicate route name"]);
}

#[test]
fn identical_prefix_with_overlapping_methods_is_refused() {
    let mut p = policy();
    p["routes"][1] = json!({"name": "courses_admin", "prefix": "/api/courses", "cluster": "course_service", "methods": ["GET", "POST"]});
    assert_refused(p, &["routes[1].prefix", "routes[0]"]);
}

#[test]
fn unknown_timeout_class_is_refused_with_its_path() {
    let mut p = policy();
    p["routes"][0]["timeout"] = json!("aggregate");
    assert_refused(p, &["routes[0].timeout", "unknown timeout class"]);
}

#[test]
fn bad_duration_is_refused_with_its_path() {
    let mut p = policy();
    p["timeouts"]["classes"]["standard"] = json!("30");
    assert_refused(p, &["timeouts.classes.standard"]);
}
