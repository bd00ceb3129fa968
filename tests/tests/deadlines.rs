//! Request deadlines (issue 3) through a real Envoy with `--concurrency 2`:
//! the class bounds the upstream wait (504 `upstream_timeout`) and the whole
//! exchange (408 `request_timeout` while the client is still sending), a
//! client cannot change either, services are told their budget, WebSockets
//! are bounded only while upgrading, the load-balancer rule refuses a config,
//! and every deadline hit is counted.
//!
//! Timing assertions allow a deadline to come at most `EARLY` before its
//! time and at most `LATE` after it: the tick is 50 ms, and these tests share
//! two cores with each other and with whatever else the machine is doing.
//! The harness's Envoy routes have `timeout: 300s`, so any answer near the
//! class's durations comes from edge-guard.

use edge_guard_e2e::*;
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How much before its time a deadline may seem to fire (clock reads on two
/// sides of a socket).
const EARLY: Duration = Duration::from_millis(50);
/// How late a deadline may come: one tick plus a busy machine.
const LATE: Duration = Duration::from_millis(600);

const ONE_S: Duration = Duration::from_secs(1);
const THREE_S: Duration = Duration::from_secs(3);

/// `quick`: one duration (total = response = 1 s). `uploads`: total 3 s,
/// response 1 s. `events`: a WebSocket route in the 1 s class.
fn policy() -> Value {
    json!({
        "routes": [
            {"name": "quick",   "prefix": "/api/quick",   "cluster": "course_service", "timeout": "fast"},
            {"name": "uploads", "prefix": "/api/uploads", "cluster": "course_service", "timeout": "upload"},
            {"name": "events",  "prefix": "/ws/events",   "cluster": "course_service", "websocket": true, "timeout": "fast"}
        ],
        "timeouts": {
            "classes": {
                "fast": "1s",
                "upload": {"total": "3s", "response": "1s"}
            },
            "default_class": "fast"
        }
    })
}

fn stack() -> (Upstream, Envoy) {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy()).upstream(&up).start();
    (up, envoy)
}

/// As `stack`, but Envoy trusts loopback clients as internal (as behind a
/// load balancer): it then keeps the `x-envoy-*` headers they send, so only
/// edge-guard can stop them from steering the router. (To an external
/// client Envoy strips them itself, which would hide a filter that doesn't.)
fn stack_trusting_clients() -> (Upstream, Envoy) {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .internal_clients(&["127.0.0.0/8"])
        .start();
    (up, envoy)
}

/// `elapsed` is `expected` give or take the honest slack.
fn assert_near(elapsed: Duration, expected: Duration, what: &str, context: &dyn Debug) {
    assert!(
        elapsed + EARLY >= expected && elapsed <= expected + LATE,
        "{what}: answered after {elapsed:?}, expected {expected:?} (-{EARLY:?}/+{LATE:?})\n{context:?}"
    );
}

/// The headers the demo upstream received, as it echoed them.
fn upstream_headers(resp: &Response) -> Value {
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()["headers"].clone()
}

/// `x-envoy-expected-rq-timeout-ms` as the upstream saw it.
fn expected_timeout_ms(resp: &Response) -> u64 {
    let headers = upstream_headers(resp);
    headers["x-envoy-expected-rq-timeout-ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!("upstream saw no numeric x-envoy-expected-rq-timeout-ms: {resp:?}")
        })
}

// ---- the upstream wait ----------------------------------------------------------

#[test]
fn upstream_slower_than_response_gets_504_upstream_timeout_at_response_not_at_the_route_timeout() {
    let (up, envoy) = stack();
    let resp = envoy.request(
        Request::get("/api/quick/report?delay_ms=4000").header("x-request-id", "req-deadline-1"),
    );
    resp.assert_error(504, "upstream_timeout");
    assert_eq!(
        resp.json()["error"]["request_id"],
        "req-deadline-1",
        "{resp:?}"
    );
    // 1 s class, Envoy route timeout 300 s: only the class explains ~1 s.
    assert_near(resp.elapsed, ONE_S, "504 on a 1s class", &resp);
    assert_eq!(up.requests(), 1, "the request did reach the upstream");
}

// ---- the whole exchange -----------------------------------------------------------

#[test]
fn body_sent_slower_than_total_gets_408_request_timeout_at_total_and_the_upstream_request_is_cancelled(
) {
    let (up, envoy) = stack();
    // 100 bytes at one every 100 ms would take 10 s; total is 1 s.
    let upload = envoy.slow_upload_with(
        Request::post("/api/quick/upload").header("x-request-id", "req-deadline-2"),
        100,
        1,
        Duration::from_millis(100),
    );
    upload.resp.assert_error(408, "request_timeout");
    assert_eq!(
        upload.json()["error"]["request_id"],
        "req-deadline-2",
        "{:?}",
        upload.resp
    );
    assert!(!upload.body_complete, "{upload:?}");
    assert_near(upload.elapsed, ONE_S, "408 on a 1s class", &upload);
    // The upload was streaming to the upstream; Envoy must have cancelled
    // that request (closed its upstream connection mid-request), and the
    // upstream must not have answered it.
    assert_eq!(up.requests(), 1, "the upload was streaming to the upstream");
    let cancelled = envoy.wait_for_stat(
        "cluster.course_service.upstream_cx_destroy_local_with_active_rq",
        Duration::from_secs(2),
        |v| v >= 1,
    );
    assert_eq!(cancelled, Some(1), "upstream request not cancelled");
    let answered: Vec<_> = envoy
        .stats()
        .into_iter()
        .filter(|(k, v)| {
            k.starts_with("cluster.course_service.upstream_rq_") && k.ends_with("xx") && *v > 0
        })
        .collect();
    assert!(
        answered.is_empty(),
        "the upstream answered a cancelled upload: {answered:?}"
    );
}

#[test]
fn total_is_enforced_on_every_worker() {
    let (_up, envoy) = stack();
    // Connections spread over both workers (SO_REUSEPORT); batches of
    // concurrent stalled uploads until both have had some.
    let served_by = |envoy: &Envoy, worker: &str| {
        envoy
            .stats()
            .iter()
            .filter(|(k, _)| {
                k.starts_with("listener.")
                    && k.contains(&format!(".{worker}."))
                    && k.ends_with(".downstream_cx_total")
            })
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    for _batch in 0..5 {
        std::thread::scope(|s| {
            let uploads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        envoy.slow_upload("/api/quick/upload", 100, 1, Duration::from_millis(100))
                    })
                })
                .collect();
            for upload in uploads {
                let upload = upload.join().expect("upload thread");
                upload.resp.assert_error(408, "request_timeout");
                assert_near(upload.elapsed, ONE_S, "408 on a 1s class", &upload);
            }
        });
        if served_by(&envoy, "worker_0") > 0 && served_by(&envoy, "worker_1") > 0 {
            return;
        }
    }
    panic!(
        "20 connections never reached both workers: {:?}",
        envoy.stats()
    );
}

#[test]
fn upload_that_eats_into_total_leaves_the_upstream_only_the_rest_of_total() {
    let (_up, envoy) = stack();
    // 6 bytes, one every 500 ms: the body is complete at ~2.5 s of a 3 s
    // total. The upstream then takes 800 ms: inside `response` (1 s), but not
    // inside what is left of total (0.5 s). Waiting `response` from the end of
    // the upload would give a 200 at ~3.3 s; the deadline is total, at 3 s.
    let upload = envoy.slow_upload(
        "/api/uploads/file?delay_ms=800",
        6,
        1,
        Duration::from_millis(500),
    );
    assert!(upload.body_complete, "{upload:?}");
    upload.resp.assert_error(504, "upstream_timeout");
    assert_near(upload.elapsed, THREE_S, "504 at total", &upload);
}

#[test]
fn upload_finished_fast_leaves_the_upstream_the_whole_response_budget() {
    let (_up, envoy) = stack();
    let resp =
        envoy.request(Request::post("/api/uploads/file?delay_ms=4000").body(vec![b'x'; 2048]));
    resp.assert_error(504, "upstream_timeout");
    assert_near(
        resp.elapsed,
        ONE_S,
        "504 at response (1s of a 3s total)",
        &resp,
    );

    // An upstream inside `response` is answered normally.
    let resp =
        envoy.request(Request::post("/api/uploads/file?delay_ms=500").body(vec![b'x'; 2048]));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["body_bytes"], 2048, "{resp:?}");
}

// ---- no client control -------------------------------------------------------------

#[test]
fn spoofed_router_timeout_header_changes_nothing() {
    let (_up, envoy) = stack_trusting_clients();
    let resp = envoy.request(
        Request::get("/api/quick/report?delay_ms=4000")
            .header("x-envoy-upstream-rq-timeout-ms", "600000"),
    );
    resp.assert_error(504, "upstream_timeout");
    assert_near(resp.elapsed, ONE_S, "504 despite a 600 s header", &resp);

    // Nor with a body (the deadline is watched by the tick then too).
    let resp = envoy.request(
        Request::post("/api/uploads/file?delay_ms=4000")
            .header("x-envoy-upstream-rq-timeout-ms", "600000")
            .header("x-envoy-upstream-rq-per-try-timeout-ms", "600000")
            .body("{}"),
    );
    resp.assert_error(504, "upstream_timeout");
    assert_near(resp.elapsed, ONE_S, "504 despite 600 s headers", &resp);
}

#[test]
fn spoofed_short_timeout_headers_cannot_shorten_the_deadline() {
    let (_up, envoy) = stack_trusting_clients();
    // 300 ms is well inside the 1 s class; a 50 ms header obeyed would cut it.
    for header in [
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-upstream-rq-per-try-timeout-ms",
        "x-envoy-expected-rq-timeout-ms",
    ] {
        let resp =
            envoy.request(Request::get("/api/quick/report?delay_ms=300").header(header, "50"));
        assert_eq!(
            resp.status, 200,
            "{header}: 50 shortened the deadline\n{resp:?}"
        );
        assert_eq!(expected_timeout_ms(&resp), 1000, "{header}: {resp:?}");
    }
}

#[test]
fn client_deadline_headers_never_reach_the_upstream_with_the_clients_values() {
    let (_up, envoy) = stack_trusting_clients();
    for req in [
        Request::get("/api/quick/report"),
        Request::post("/api/uploads/file").body("payload"),
    ] {
        let resp = envoy.request(
            req.header("x-envoy-upstream-rq-timeout-ms", "600000")
                .header("x-envoy-upstream-rq-per-try-timeout-ms", "600001")
                .header("x-envoy-expected-rq-timeout-ms", "600002"),
        );
        let headers = upstream_headers(&resp);
        let map = headers
            .as_object()
            .unwrap_or_else(|| panic!("no headers object: {resp:?}"));
        for (name, value) in map {
            let value = value.as_str().unwrap_or_default();
            assert!(
                !value.contains("60000"),
                "the client's value reached the upstream as {name}: {value}\n{resp:?}"
            );
        }
        assert!(
            !map.contains_key("x-envoy-upstream-rq-per-try-timeout-ms"),
            "{resp:?}"
        );
        // Envoy's router consumes its timeout header; what it forwards is
        // the expected timeout it derived from edge-guard's budget.
        assert_eq!(expected_timeout_ms(&resp), 1000, "{resp:?}");
    }
}

// ---- the header contract for services -------------------------------------------------

#[test]
fn upstream_sees_expected_timeout_of_exactly_min_response_total() {
    let (_up, envoy) = stack();
    // README: edge-guard sets the router timeout to min(response, total) on
    // the request headers, and Envoy forwards that as the expected timeout.
    // Single-duration class: the budget is the class.
    let resp = envoy.get("/api/quick/report");
    let ms = expected_timeout_ms(&resp);
    assert_eq!(ms, 1000, "min(response, total): {resp:?}");

    // Split class, request complete with its headers: min(response, total).
    let resp = envoy.get("/api/uploads/list");
    let ms = expected_timeout_ms(&resp);
    assert_eq!(ms, 1000, "min(response, total): {resp:?}");

    // A streamed upload: the upstream gets the headers before the body, and
    // the header it sees must already be within the class.
    let upload = envoy.slow_upload("/api/uploads/file", 3, 1, Duration::from_millis(200));
    assert!(upload.body_complete, "{upload:?}");
    let ms = expected_timeout_ms(&upload.resp);
    assert_eq!(
        ms, 1000,
        "min(response, total) when the headers left: {upload:?}"
    );
}

// ---- WebSocket routes ----------------------------------------------------------------

#[test]
fn websocket_stays_open_well_past_its_class() {
    let (up, envoy) = stack();
    let mut ws = envoy
        .websocket("/ws/events", &[])
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    ws.send_text("hello");
    assert_eq!(ws.expect_text(), "hello");
    // Three times the class's total and response: nothing may arrive, no
    // close and no reset.
    assert_eq!(ws.recv_timeout(THREE_S), WsEvent::TimedOut);
    ws.send_text("still here");
    assert_eq!(ws.expect_text(), "still here");
    assert_eq!(up.ws_open(), 1);
    ws.send_text("__close");
    assert_eq!(
        ws.recv(),
        WsEvent::Closed {
            code: 1000,
            reason: String::new()
        }
    );
}

#[test]
fn websocket_upgrade_answered_too_slowly_gets_504_upstream_timeout_at_response() {
    let (_up, envoy) = stack();
    let started = Instant::now();
    let rejected = envoy
        .websocket("/ws/events?delay_ms=4000", &[])
        .err()
        .expect("an upgrade answered after 4 s on a 1 s class must be refused");
    let elapsed = started.elapsed();
    assert_eq!(rejected.status, 504, "{rejected:?}");
    assert_eq!(
        rejected.error_code().as_deref(),
        Some("upstream_timeout"),
        "{rejected:?}"
    );
    assert_near(elapsed, ONE_S, "504 on a slow upgrade", &rejected);

    // An upgrade answered within `response` opens normally.
    let mut ws = envoy
        .websocket("/ws/events?delay_ms=300", &[])
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    ws.send_text("hi");
    assert_eq!(ws.expect_text(), "hi");
}

// ---- the load-balancer rule ------------------------------------------------------------

fn lb_policy(lb_idle: &str) -> Value {
    json!({
        "routes": [
            {"name": "reports", "prefix": "/api/reports", "cluster": "course_service", "timeout": "aggregation"}
        ],
        "timeouts": {
            "classes": {"standard": "30s", "aggregation": "60s"},
            "default_class": "standard",
            "load_balancer_idle_timeout": lb_idle
        }
    })
}

#[test]
fn class_longer_than_the_load_balancer_allows_is_refused_naming_the_class_and_both_fixes() {
    Envoy::builder(lb_policy("60s"))
        .start_expect_failure()
        .assert_refused_with(&[
            "timeouts.classes.aggregation",
            "class \"aggregation\"",
            "raise load_balancer_idle_timeout to at least 65s",
            "lower the class to at most 55s",
        ]);
}

#[test]
fn class_within_the_load_balancer_idle_timeout_and_margin_starts() {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(lb_policy("65s")).upstream(&up).start();
    assert_eq!(envoy.get("/api/reports/q3").status, 200);
}

// ---- metrics ---------------------------------------------------------------------------

#[test]
fn deadline_hits_are_counted_per_route_and_class_and_durations_reach_prometheus() {
    let up = Upstream::start("course_service");
    let mut policy = policy();
    policy["metrics"] = json!({"request_duration": true});
    let envoy = Envoy::builder(policy).upstream(&up).start();
    let resp = envoy.get("/api/quick/report?delay_ms=4000");
    resp.assert_error(504, "upstream_timeout");
    let upload = envoy.slow_upload("/api/quick/upload", 100, 1, Duration::from_millis(100));
    upload.resp.assert_error(408, "request_timeout");
    assert_eq!(envoy.get("/api/quick/report").status, 200);

    let base = "edge_guard.route.quick.class.fast.deadline";
    for (kind, name) in [
        ("upstream_timeout", format!("{base}.upstream_timeout")),
        ("request_timeout", format!("{base}.request_timeout")),
    ] {
        let value = envoy.wait_for_stat(&name, Duration::from_secs(2), |v| v >= 1);
        assert_eq!(value, Some(1), "{kind}: {name}\n{:?}", envoy.stats());
    }
    // The other route and class saw no deadline.
    assert_eq!(
        envoy.stat("edge_guard.route.uploads.class.upload.deadline.upstream_timeout"),
        Some(0)
    );

    // Histograms reach /stats/prometheus at Envoy's stats flush (5 s): one
    // sample per request on the route, the deadline hits included.
    let histogram = "edge_guard_route_quick_class_fast_request_duration_ms";
    let count_line = format!("{histogram}_count");
    let deadline = Instant::now() + Duration::from_secs(8);
    let (text, count) = loop {
        let text = envoy.prometheus();
        let count = prometheus_value(&text, &count_line);
        if count.is_some_and(|c| c >= 3.0) || Instant::now() >= deadline {
            break (text, count);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let ours = text
        .lines()
        .filter(|l| l.contains(histogram))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        count,
        Some(3.0),
        "{histogram} in /stats/prometheus:\n{ours}"
    );
    assert!(
        ours.contains(&format!("{histogram}_bucket{{le=\"")),
        "no buckets:\n{ours}"
    );
    // The 504 and the 408 each took about a second.
    let sum = prometheus_value(&text, &format!("{histogram}_sum")).unwrap_or_default();
    assert!(sum >= 1900.0, "sum {sum}:\n{ours}");
}

/// The duration histogram is opt-in (`metrics.request_duration`): by default
/// no request reads the clock for it, and none is defined; the router's 504
/// is still counted, by a request that took its whole budget.
#[test]
fn without_metrics_request_duration_no_histogram_is_defined_and_router_timeouts_still_count() {
    let (_up, envoy) = stack();
    envoy
        .get("/api/quick/report?delay_ms=4000")
        .assert_error(504, "upstream_timeout");
    assert_eq!(envoy.get("/api/quick/report").status, 200);
    let name = "edge_guard.route.quick.class.fast.deadline.upstream_timeout";
    assert_eq!(
        envoy.wait_for_stat(name, Duration::from_secs(2), |v| v >= 1),
        Some(1),
        "{:?}",
        envoy.stats()
    );
    // One more fast answer is no timeout.
    assert_eq!(envoy.get("/api/quick/report").status, 200);
    assert_eq!(envoy.stat(name), Some(1));
    let text = envoy.prometheus();
    assert!(
        !text.contains("request_duration_ms"),
        "a histogram without metrics.request_duration:\n{}",
        text.lines()
            .filter(|l| l.contains("request_duration"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The value of the sample line that starts with `name` (labels ignored).
fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---- Paths on no declared route ------------------------------------------------------

/// With `unknown_route: allow` a request on no declared route still passes
/// through Envoy, but never without a deadline: it gets the default class,
/// and the client's deadline headers are removed as on any route.
#[test]
fn unknown_route_allowed_through_still_gets_the_default_class() {
    let up = Upstream::start("course_service");
    let mut policy = policy();
    policy["unknown_route"] = json!("allow");
    let envoy = Envoy::builder(policy)
        .upstream(&up)
        .internal_clients(&["127.0.0.0/8"])
        .routes_yaml("- name: anything\n  match: {prefix: /}\n  route: {cluster: course_service, timeout: 300s}")
        .start();

    let resp = envoy.get("/legacy/report");
    assert_eq!(resp.status, 200, "{resp:?}");
    let ms = expected_timeout_ms(&resp);
    assert_eq!(ms, 1000, "min(response, total): {resp:?}");

    let start = Instant::now();
    let resp = envoy.request(
        Request::get("/legacy/slow?delay_ms=3000")
            .header("x-envoy-upstream-rq-timeout-ms", "600000")
            .header("x-request-id", "legacy-1"),
    );
    assert_near(
        start.elapsed(),
        ONE_S,
        "unknown route, slow upstream",
        &resp,
    );
    resp.assert_error(504, "upstream_timeout");
    assert_eq!(resp.json()["error"]["request_id"], "legacy-1");
}
