//! Egress mode (issue 13) through real Envoy: edge-guard on an egress
//! listener bounds the services' own outbound calls. Declared destinations
//! get their class (scaled down here: `notification` 1 s, `internal` and
//! `external` 10 s), a forwarded budget cuts the call down to what the
//! caller has left, a spent budget is refused without reaching the upstream,
//! an undeclared destination gets 403 `destination_not_allowed`, and a
//! three-hop chain of real demo services (edge → A → egress → B → egress →
//! C) ends within the edge class's budget.
//!
//! As in `deadlines.rs`, a deadline may seem to fire up to `EARLY` before
//! its time and must fire at most `LATE` after it. Envoy's routes here have
//! `timeout: 300s`, so any answer near a class's duration comes from
//! edge-guard.

use edge_guard_e2e::*;
use std::fmt::Debug;
use std::time::{Duration, Instant};

const EARLY: Duration = Duration::from_millis(50);
const LATE: Duration = Duration::from_millis(600);

/// The egress policy of these tests: a course service (internal), a
/// stand-in SMS API (external, POST /v1/send only), a notification service
/// and a wildcard partner domain.
fn egress_policy() -> Value {
    json!({
        "direction": "egress",
        "routes": [
            {"name": "courses", "host": "course.internal", "cluster": "course_service", "timeout": "internal"},
            {"name": "sms", "host": "sms.example.com", "prefix": "/v1/send", "cluster": "sms_api", "methods": ["POST"], "timeout": "external"},
            {"name": "notify", "host": "notify.internal", "cluster": "notification_service", "timeout": "notification"},
            {"name": "partners", "host": "*.partners.example.com", "cluster": "partner_api", "timeout": "external"}
        ],
        "timeouts": {
            "classes": {"internal": "10s", "external": "10s", "notification": "1s"},
            "default_class": "internal"
        }
    })
}

/// An egress Envoy whose callers (the services, on loopback) are internal:
/// Envoy keeps the `x-envoy-expected-rq-timeout-ms` they forward (it strips
/// `x-envoy-*` headers from external clients before any filter runs).
fn egress(policy: Value, upstreams: &[&Upstream]) -> Envoy {
    let mut builder = Envoy::builder(policy).internal_clients(&["127.0.0.0/8"]);
    for up in upstreams {
        builder = builder.upstream(up);
    }
    builder.start()
}

fn assert_near(elapsed: Duration, expected: Duration, what: &str, context: &dyn Debug) {
    assert!(
        elapsed + EARLY >= expected && elapsed <= expected + LATE,
        "{what}: answered after {elapsed:?}, expected {expected:?} (-{EARLY:?}/+{LATE:?})\n{context:?}"
    );
}

fn call(host: &str, path: &str) -> Request {
    Request::get(path).header("host", host)
}

fn upstream_saw(resp: &Response, header: &str) -> Option<String> {
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()["headers"][header].as_str().map(str::to_string)
}

#[test]
fn undeclared_host_or_path_gets_403_destination_not_allowed_and_never_leaves() {
    let course = Upstream::start("course_service");
    let sms = Upstream::start("sms_api");
    let envoy = egress(egress_policy(), &[&course, &sms]);

    let resp =
        envoy.request(call("evil.example.net", "/exfiltrate").header("x-request-id", "eg-1"));
    let error = resp.assert_error(403, "destination_not_allowed");
    assert_eq!(error["request_id"], "eg-1");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("evil.example.net"), "{resp:?}");

    // A declared host, but a path its routes do not declare; the bare
    // parent domain of a wildcard.
    envoy
        .request(Request::post("/v2/other").header("host", "sms.example.com"))
        .assert_error(403, "destination_not_allowed");
    envoy
        .request(call("partners.example.com", "/"))
        .assert_error(403, "destination_not_allowed");
    // A declared route with the wrong method.
    envoy
        .request(call("sms.example.com", "/v1/send"))
        .assert_error(405, "method_not_allowed");

    assert_eq!(
        course.requests() + sms.requests(),
        0,
        "nothing reached an upstream"
    );
    assert_eq!(
        envoy.stat("edge_guard.egress.rejected.destination_not_allowed"),
        Some(3)
    );

    // The declared ones pass, whatever the port or case of the authority.
    let ok = envoy.request(call("Course.Internal:8080", "/api/courses/7"));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["service"], "course_service");
    let ok = envoy.request(Request::post("/v1/send").header("host", "sms.example.com"));
    assert_eq!(ok.json()["service"], "sms_api", "{ok:?}");
}

#[test]
fn unknown_route_allow_lets_undeclared_calls_pass_under_the_default_class() {
    let course = Upstream::start("course_service");
    let mut policy = egress_policy();
    policy["unknown_route"] = json!("allow");
    // Envoy itself routes everything else to the course service here.
    let envoy = Envoy::builder(policy)
        .internal_clients(&["127.0.0.0/8"])
        .upstream(&course)
        .routes_yaml("- match: {prefix: /}\n  route: {cluster: course_service, timeout: 300s}")
        .start();
    let resp = envoy.request(call("anything.example.org", "/x"));
    assert_eq!(
        upstream_saw(&resp, "x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("10000"),
        "the default class (internal, 10s) bounds it"
    );
}

#[test]
fn declared_destination_that_hangs_gets_504_at_its_class() {
    let notify = Upstream::start("notification_service");
    let envoy = egress(egress_policy(), &[&notify]);
    let resp = envoy.request(
        Request::post("/send?delay_ms=5000")
            .header("host", "notify.internal")
            .header("x-request-id", "eg-hang"),
    );
    let error = resp.assert_error(504, "upstream_timeout");
    assert_eq!(error["request_id"], "eg-hang");
    assert_near(
        resp.elapsed,
        Duration::from_secs(1),
        "notification class",
        &resp,
    );
    assert_eq!(notify.requests(), 1);
    assert_eq!(
        envoy.stat("edge_guard.egress.route.notify.class.notification.deadline.upstream_timeout"),
        Some(1)
    );
}

#[test]
fn a_forwarded_budget_of_1200ms_ends_a_call_to_a_10s_class_at_1200ms() {
    let sms = Upstream::start("sms_api");
    let envoy = egress(egress_policy(), &[&sms]);
    let resp = envoy.request(
        Request::post("/v1/send?delay_ms=5000")
            .header("host", "sms.example.com")
            .header("x-envoy-expected-rq-timeout-ms", "1200"),
    );
    resp.assert_error(504, "upstream_timeout");
    assert_near(
        resp.elapsed,
        Duration::from_millis(1200),
        "inherited 1.2s budget",
        &resp,
    );
    assert_eq!(sms.requests(), 1);
    // The same through gRPC's header.
    let resp = envoy.request(
        Request::post("/v1/send?delay_ms=5000")
            .header("host", "sms.example.com")
            .header("grpc-timeout", "1200m"),
    );
    resp.assert_error(504, "upstream_timeout");
    assert_near(
        resp.elapsed,
        Duration::from_millis(1200),
        "grpc-timeout 1200m",
        &resp,
    );
}

#[test]
fn the_budget_passed_downstream_is_the_remaining_one() {
    let course = Upstream::start("course_service");
    let envoy = egress(egress_policy(), &[&course]);
    let resp = envoy.request(
        call("course.internal", "/api/courses/7")
            .header("x-envoy-expected-rq-timeout-ms", "1200")
            .header("grpc-timeout", "3S"),
    );
    let passed: u64 = upstream_saw(&resp, "x-envoy-expected-rq-timeout-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no budget passed on: {resp:?}"));
    assert!(
        (1000..=1200).contains(&passed),
        "the callee got {passed} ms, expected what was left of 1200: {resp:?}"
    );
    assert_eq!(
        upstream_saw(&resp, "grpc-timeout").as_deref(),
        Some(format!("{passed}m").as_str()),
        "grpc-timeout is rewritten to the same budget"
    );
    // Without a forwarded budget the callee gets the destination's class.
    let resp = envoy.request(call("course.internal", "/api/courses/7"));
    assert_eq!(
        upstream_saw(&resp, "x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("10000")
    );
    // A budget longer than the class is cut to the class.
    let resp = envoy.request(
        call("course.internal", "/api/courses/7").header("x-envoy-expected-rq-timeout-ms", "60000"),
    );
    assert_eq!(
        upstream_saw(&resp, "x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("10000")
    );
}

/// Why the egress listener needs `internal_address_config`: Envoy itself
/// removes `x-envoy-expected-rq-timeout-ms` from a caller it does not treat
/// as internal, before any filter runs, so such a caller's budget is never
/// inherited (the call gets its destination's class). The same caller,
/// listed as internal, passes its budget on (the test above).
#[test]
fn envoy_strips_a_forwarded_budget_from_callers_it_does_not_treat_as_internal() {
    let course = Upstream::start("course_service");
    let envoy = Envoy::builder(egress_policy()).upstream(&course).start();
    let resp = envoy.request(
        call("course.internal", "/api/courses/7").header("x-envoy-expected-rq-timeout-ms", "1200"),
    );
    assert_eq!(
        upstream_saw(&resp, "x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("10000"),
        "an external caller's 1200 ms budget must not reach edge-guard: the callee is told the class"
    );
    // A spent budget from an external caller is not seen either: the call
    // goes through under its class instead of being refused.
    let resp = envoy.request(
        call("course.internal", "/api/courses/7").header("x-envoy-expected-rq-timeout-ms", "0"),
    );
    assert_eq!(
        upstream_saw(&resp, "x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("10000"),
        "{resp:?}"
    );
    assert_eq!(course.requests(), 2);
}

#[test]
fn a_spent_budget_is_refused_at_once_without_reaching_the_upstream() {
    let sms = Upstream::start("sms_api");
    let envoy = egress(egress_policy(), &[&sms]);
    for (header, value) in [
        ("x-envoy-expected-rq-timeout-ms", "0"),
        ("x-envoy-expected-rq-timeout-ms", "-40"),
        ("grpc-timeout", "0m"),
    ] {
        let started = Instant::now();
        let resp = envoy.request(
            Request::post("/v1/send")
                .header("host", "sms.example.com")
                .header(header, value)
                .header("x-request-id", "eg-spent"),
        );
        let error = resp.assert_error(504, "upstream_timeout");
        assert_eq!(error["request_id"], "eg-spent");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("caller's budget ran out")),
            "{resp:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(500), "{resp:?}");
    }
    assert_eq!(sms.requests(), 0, "a spent call never reaches the upstream");
    assert_eq!(
        envoy.stat("edge_guard.egress.route.sms.class.external.deadline.upstream_timeout"),
        Some(3)
    );
}

// ---- a chain of real services ---------------------------------------------------

/// The edge's policy for the chain: the booking service (A) in a 1.5 s class.
fn edge_policy() -> Value {
    json!({
        "routes": [{"name": "bookings", "prefix": "/api/bookings", "cluster": "booking_service", "timeout": "standard"}],
        "timeouts": {"classes": {"standard": "1500ms"}, "default_class": "standard"}
    })
}

/// edge → A (booking) → egress → B (course) → egress → C (sms): three real
/// demo services, each forwarding what is left of its budget.
struct Chain {
    a: Upstream,
    b: Upstream,
    c: Upstream,
    edge: Envoy,
    egress: Envoy,
}

fn chain() -> Chain {
    let a = Upstream::start("booking_service");
    let b = Upstream::start("course_service");
    let c = Upstream::start("sms_api");
    let egress = egress(egress_policy(), &[&b, &c]);
    a.set_egress(egress.addr());
    b.set_egress(egress.addr());
    let edge = Envoy::builder(edge_policy()).upstream(&a).start();
    Chain {
        a,
        b,
        c,
        edge,
        egress,
    }
}

const CHAIN_PATH: &str =
    "/api/bookings/42/__call/course.internal/api/courses/7/__call/sms.example.com/v1/send";

#[test]
fn a_three_hop_chain_passes_each_hop_what_is_left_of_the_edge_budget() {
    let ch = chain();
    let resp = ch
        .edge
        .request(Request::post(CHAIN_PATH).header("x-request-id", "chain-1"));
    assert_eq!(resp.status, 200, "{resp:?}");
    let a = resp.json();
    let b = &a["response"];
    let c = &b["response"];
    assert_eq!(
        (
            a["service"].as_str(),
            b["service"].as_str(),
            c["service"].as_str()
        ),
        (
            Some("booking_service"),
            Some("course_service"),
            Some("sms_api")
        ),
        "{resp:?}"
    );
    let budget = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
            .unwrap_or_else(|| panic!("no budget in {v}: {resp:?}"))
    };
    // Each hop got at most what the one before it had left.
    let at_a = ch.a.last_budget_ms().expect("A got a budget");
    let at_b = ch.b.last_budget_ms().expect("B got a budget");
    let at_c = budget(&c["headers"]["x-envoy-expected-rq-timeout-ms"]);
    assert_eq!(at_a, 1500, "{resp:?}");
    assert!(budget(&a["forwarded_budget_ms"]) <= at_a);
    assert!(at_b <= budget(&a["forwarded_budget_ms"]), "{at_b} {resp:?}");
    assert!(budget(&b["forwarded_budget_ms"]) <= at_b);
    assert!(
        at_c <= budget(&b["forwarded_budget_ms"]) && at_c > 1000,
        "{at_c} {resp:?}"
    );
    assert_eq!(c["headers"]["x-request-id"], "chain-1");
}

#[test]
fn a_three_hop_chain_whose_last_hop_hangs_ends_within_the_edge_budget() {
    let ch = chain();
    let started = Instant::now();
    let resp = ch
        .edge
        .request(Request::post(&format!("{CHAIN_PATH}?delay_ms=8000")));
    // Two deadlines of about 1.5 s race: the edge's own, and the budget the
    // egress gave C's call (what was left of the edge's, counted from when the
    // egress saw it). Whichever fires first, the client gets a 504
    // upstream_timeout at the edge's budget: edge-guard's own reply, or the
    // egress's reply relayed by the demo services.
    assert_eq!(resp.status, 504, "{resp:?}");
    let body = resp.json();
    let code = if body["error"].is_object() {
        &body["error"]["code"]
    } else {
        &body["response"]["error"]["code"]
    };
    assert_eq!(code, "upstream_timeout", "{resp:?}");
    assert_near(
        resp.elapsed,
        Duration::from_millis(1500),
        "edge class 1.5s",
        &resp,
    );
    // C's call was cut by the egress at what was left of the edge's budget,
    // not at its own 10 s class: by the time the client has its answer the
    // egress has already timed it out.
    let cut = ch.egress.wait_for_stat(
        "edge_guard.egress.route.sms.class.external.deadline.upstream_timeout",
        Duration::from_millis(300),
        |v| v >= 1,
    );
    assert_eq!(cut, Some(1), "C's call outlived the edge deadline");
    assert!(started.elapsed() < Duration::from_millis(1500) + LATE + Duration::from_millis(300));
    let at_c = ch.c.last_budget_ms().expect("C got a budget");
    assert!(at_c <= 1500 && at_c > 1000, "C was given {at_c} ms");
    assert_eq!(
        (ch.a.requests(), ch.b.requests(), ch.c.requests()),
        (1, 1, 1)
    );
}

#[test]
fn metrics_and_status_show_egress_routes() {
    let ch = chain();
    let resp = ch
        .egress
        .request(call("course.internal", "/.edge-guard/status"));
    assert_eq!(resp.status, 200, "{resp:?}");
    let status = resp.json();
    assert_eq!(status["direction"], "egress");
    let routes = status["routes"].as_array().cloned().unwrap_or_default();
    let sms = routes
        .iter()
        .find(|r| r["name"] == "sms")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(sms["host"], "sms.example.com");
    assert_eq!(sms["prefix"], "/v1/send");
    assert_eq!(sms["timeout"]["class"], "external");
    assert!(
        routes.iter().any(|r| r["host"] == "*.partners.example.com"),
        "{status}"
    );

    let ok = ch.edge.request(Request::post(CHAIN_PATH));
    assert_eq!(ok.status, 200, "{ok:?}");
    let prom = ch.egress.prometheus();
    for route in ["courses", "sms"] {
        let plain = format!("edge_guard_egress_route_{route}_class_");
        assert!(
            prom.contains(&plain),
            "no duration histogram for {route}:\n{prom}"
        );
    }
}

#[test]
fn envoy_retries_stay_inside_the_inherited_budget() {
    let sms = Upstream::start("sms_api");
    // The route retries every slow try (per_try_timeout 400ms) up to ten
    // times: without a bound that is 4 s and more; the caller has 1.2 s.
    let envoy = Envoy::builder(egress_policy())
        .internal_clients(&["127.0.0.0/8"])
        .upstream(&sms)
        .routes_yaml(
            "- match: {prefix: /}\n  route: {cluster: sms_api, timeout: 300s, retry_policy: {retry_on: 5xx, num_retries: 10, per_try_timeout: 0.4s}}",
        )
        .start();
    let resp = envoy.request(
        Request::post("/v1/send?delay_ms=5000")
            .header("host", "sms.example.com")
            .header("x-envoy-expected-rq-timeout-ms", "1200"),
    );
    resp.assert_error(504, "upstream_timeout");
    assert_near(
        resp.elapsed,
        Duration::from_millis(1200),
        "retries within 1.2s",
        &resp,
    );
    let tries = sms.requests();
    assert!(
        (2..=4).contains(&tries),
        "{tries} tries in 1.2s of 400ms tries"
    );
    let last = sms.last_budget_ms().expect("each try carries a budget");
    assert!(
        last <= 400,
        "a try was told {last} ms, more than its per-try timeout"
    );
}

#[test]
fn http_proxy_style_absolute_urls_are_matched_by_their_host() {
    // HTTP_PROXY=http://egress clients (axios, curl -x) send the absolute
    // URL; Envoy takes the authority from it, and so does edge-guard.
    let course = Upstream::start("course_service");
    let envoy = egress(egress_policy(), &[&course]);
    let ok = envoy.request(Request::get("http://course.internal/api/courses/7"));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["service"], "course_service");
    envoy
        .request(Request::get("http://evil.example.net/api/courses/7"))
        .assert_error(403, "destination_not_allowed");
    assert_eq!(course.requests(), 1);
}

// ---- the shipped demo stack -----------------------------------------------------

/// envoy/envoy.yaml as shipped, with its fixed ports made OS-assigned, its
/// clusters pointed at test upstreams and the wasm path made absolute.
fn shipped_stack(services: &[&Upstream]) -> Envoy {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut yaml = std::fs::read_to_string(root.join("envoy/envoy.yaml")).unwrap();
    for fixed in [
        "port_value: 9901}",
        "port_value: 10000}",
        "port_value: 10001}",
    ] {
        assert!(yaml.contains(fixed), "envoy.yaml no longer has {fixed}");
        yaml = yaml.replace(fixed, "port_value: 0}");
    }
    for (i, port) in (18081..=18088).enumerate() {
        let up = services
            .get(i)
            .unwrap_or_else(|| panic!("no upstream for port {port}"));
        let fixed = format!("port_value: {port}}}");
        assert!(yaml.contains(&fixed), "envoy.yaml no longer has {fixed}");
        yaml = yaml.replace(&fixed, &format!("port_value: {}}}", up.port()));
    }
    let wasm = std::env::var("EDGE_GUARD_WASM").map_or_else(
        |_| root.join("target/wasm32-wasip1/release/edge_guard.wasm"),
        std::path::PathBuf::from,
    );
    yaml = yaml.replace(
        "filename: target/wasm32-wasip1/release/edge_guard.wasm",
        &format!("filename: {}", wasm.display()),
    );
    // The edge filter comes through ECDS: a copy of its resource with the
    // same absolute wasm path, outliving this test's Envoy (one per process).
    let ecds = std::env::temp_dir().join(format!(
        "edge-guard-shipped-ecds-{}.json",
        std::process::id()
    ));
    std::fs::write(
        &ecds,
        std::fs::read_to_string(root.join("envoy/ecds/edge_guard.json"))
            .unwrap()
            .replace(
                "target/wasm32-wasip1/release/edge_guard.wasm",
                &wasm.display().to_string(),
            ),
    )
    .unwrap();
    let relative = "path_config_source: {path: envoy/ecds/edge_guard.json}";
    assert!(
        yaml.contains(relative),
        "envoy.yaml no longer has {relative}"
    );
    yaml = yaml.replace(
        relative,
        &format!("path_config_source: {{path: {}}}", ecds.display()),
    );
    Envoy::from_bootstrap(yaml, "edge").start()
}

#[test]
fn the_shipped_stack_sends_the_booking_services_calls_through_its_egress_listener() {
    // envoy/envoy.yaml's services by port, 18081..18088 (a demo upstream
    // stands in for the socket.io service on 18088).
    let names = [
        "course_service",
        "booking_service",
        "payment_service",
        "notification_service",
        "upload_service",
        "event_service",
        "sms_api",
        "event_live_service",
    ];
    let services: Vec<Upstream> = names.iter().map(|n| Upstream::start(n)).collect();
    let refs: Vec<&Upstream> = services.iter().collect();
    let envoy = shipped_stack(&refs);
    let egress_addr = envoy.listener_addr("egress");
    let booking = &services[1];
    booking.set_egress(egress_addr);

    // edge → booking → egress → course: the course service is told the
    // internal class (10 s), less than what the booking service had left.
    let resp = envoy.request(Request::get(
        "/api/bookings/1/__call/course.internal/api/courses/7",
    ));
    assert_eq!(resp.status, 200, "{resp:?}");
    let body = resp.json();
    assert_eq!(body["response"]["service"], "course_service", "{resp:?}");
    assert_eq!(
        body["response"]["headers"]["x-envoy-expected-rq-timeout-ms"], "10000",
        "{resp:?}"
    );
    // An undeclared destination is refused by the egress, inside the reply.
    let resp = envoy.request(Request::get("/api/bookings/1/__call/evil.example.net/x"));
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.json()["response"]["error"]["code"],
        "destination_not_allowed"
    );

    // A service calling the SMS API with 500 ms left gets its 504 then.
    let sms = http::send(
        egress_addr,
        &Request::post("/v1/send?delay_ms=3000")
            .header("host", "sms.example.com")
            .header("x-envoy-expected-rq-timeout-ms", "500"),
    )
    .unwrap();
    sms.assert_error(504, "upstream_timeout");
    assert_near(
        sms.elapsed,
        Duration::from_millis(500),
        "inherited 500ms",
        &sms,
    );

    // Edge and egress metrics live side by side in one Envoy, labelled.
    let prom = envoy.prometheus();
    for line in [
        "edge_guard_egress_rejected{edge_guard_reason=\"destination_not_allowed\"} 1",
        "edge_guard_egress_route_deadline_upstream_timeout{edge_guard_route=\"sms\",edge_guard_class=\"external\"} 1",
        "edge_guard_route_deadline_upstream_timeout{edge_guard_route=\"bookings_read\",edge_guard_class=\"standard\"} 0",
    ] {
        assert!(prom.contains(line), "no {line:?} in:\n{prom}");
    }
}
