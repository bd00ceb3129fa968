//! Routing-table validation through a real Envoy with two workers (issue 5,
//! parts 2 and 3): the filter logs its routing table at startup, notices when
//! Envoy routes a declared route to another cluster (or to none), and probes
//! every cluster once per interval for the whole instance, failing fast while
//! a cluster is unhealthy.

use edge_guard_e2e::*;
use std::thread;
use std::time::{Duration, Instant};

// ---- shared helpers -------------------------------------------------------------

/// Log lines containing every one of `needles`.
fn log_lines(envoy: &Envoy, needles: &[&str]) -> Vec<String> {
    envoy
        .log()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn status(envoy: &Envoy) -> Value {
    let resp = envoy.get("/.edge-guard/status");
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()
}

fn status_route(status: &Value, name: &str) -> Value {
    status["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no route {name} in the status document: {status}"))
}

fn status_cluster(status: &Value, name: &str) -> Value {
    status["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no cluster {name} in the status document: {status}"))
}

/// Sends `n` GETs to `path` from `n` threads at once (fresh connections, so
/// Envoy spreads them over both workers); returns the statuses.
fn concurrent_gets(envoy: &Envoy, path: &str, n: usize) -> Vec<u16> {
    let addr = envoy.addr();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            thread::spawn(move || {
                http::send(addr, &Request::get(&path))
                    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
                    .status
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("request thread"))
        .collect()
}

/// Connections Envoy's worker `worker` (e.g. `worker_0`) accepted.
fn connections_on(envoy: &Envoy, worker: &str) -> u64 {
    let infix = format!(".{worker}.");
    envoy
        .stats()
        .iter()
        .filter(|(k, _)| {
            k.starts_with("listener.") && k.contains(&infix) && k.ends_with(".downstream_cx_total")
        })
        .map(|(_, v)| *v)
        .sum()
}

/// Bursts of 10 concurrent GETs to `path`, each answered `status`, until both
/// workers have accepted connections (the kernel spreads them); returns how
/// many requests were sent.
fn bursts_until_both_workers_served(envoy: &Envoy, path: &str, status: u16) -> u64 {
    let mut sent = 0;
    for _ in 0..5 {
        let statuses = concurrent_gets(envoy, path, 10);
        assert!(statuses.iter().all(|s| *s == status), "{statuses:?}");
        sent += 10;
        if connections_on(envoy, "worker_0") > 0 && connections_on(envoy, "worker_1") > 0 {
            return sent;
        }
    }
    panic!("{sent} connections never reached both workers");
}

// ---- startup: the routing table in the log -----------------------------------------

#[test]
fn startup_logs_one_line_per_route_with_prefix_methods_cluster_and_class() {
    let policy = json!({
        "routes": [
            {"name": "courses",  "prefix": "/api/courses",  "cluster": "course_service",  "methods": ["GET"], "timeout": "standard"},
            {"name": "bookings", "prefix": "/api/bookings", "cluster": "booking_service", "methods": ["GET", "POST"], "timeout": "slow"},
            {"name": "events",   "prefix": "/ws/events",    "cluster": "event_service",   "websocket": true}
        ],
        "timeouts": {
            "classes": {"standard": "30s", "slow": {"total": "120s", "response": "55s"}},
            "default_class": "standard"
        }
    });
    let envoy = Envoy::builder(policy).start();
    assert!(
        envoy.wait_for_log("edge-guard route events", Duration::from_secs(2)),
        "no routing table in the log\n{}",
        envoy.log_tail(40)
    );
    // Envoy is ready only once every worker has configured; let the log
    // file catch up with the last of them.
    thread::sleep(Duration::from_millis(300));
    let expected: [(&str, &[&str]); 3] = [
        (
            "courses",
            &[
                "prefix=/api/courses ",
                "methods=GET cluster=",
                "cluster=course_service ",
                "class=standard ",
            ],
        ),
        (
            "bookings",
            &[
                "prefix=/api/bookings ",
                "methods=GET, POST cluster=",
                "cluster=booking_service ",
                "class=slow ",
            ],
        ),
        (
            "events",
            &[
                "prefix=/ws/events ",
                "methods=* cluster=",
                "cluster=event_service ",
                "class=standard ",
                "websocket=true",
            ],
        ),
    ];
    // Every root context (each worker, and Envoy's main thread) configures
    // the policy, but the table is logged once for the whole instance.
    let tables = log_lines(&envoy, &[": 3 routes, unknown_route="]).len();
    assert_eq!(tables, 1, "table header count\n{}", envoy.log_tail(40));
    for (name, fields) in expected {
        let head = format!("edge-guard route {name}:");
        let lines = log_lines(&envoy, &[&head]);
        assert_eq!(
            lines.len(),
            tables,
            "route {name}: one line per table logged, got {lines:#?}"
        );
        let line = &lines[0];
        for field in fields {
            assert!(
                line.contains(field),
                "route {name}: {field:?} missing from {line:?}"
            );
        }
        let text = |l: &str| l.split_once(&head).map(|(_, rest)| rest.to_string());
        assert!(
            lines.iter().all(|l| text(l) == text(line)),
            "route {name}: the copies differ: {lines:#?}"
        );
    }
}

// ---- mismatch: Envoy routes a declared route elsewhere ------------------------------

/// Three declared routes; Envoy's own table (below) sends `courses` to the
/// bookings cluster, routes `bookings` as declared and has nothing for `payments`.
/// `on_mismatch: None` leaves `routing` out (the default, `log`).
fn mismatch_policy(on_mismatch: Option<&str>) -> Value {
    let mut policy = json!({
        "routes": [
            {"name": "courses",  "prefix": "/api/courses",  "cluster": "course_service"},
            {"name": "bookings", "prefix": "/api/bookings", "cluster": "booking_service"},
            {"name": "payments", "prefix": "/api/payments", "cluster": "payment_service"}
        ]
    });
    if let Some(on_mismatch) = on_mismatch {
        policy["routing"] = json!({"on_mismatch": on_mismatch});
    }
    policy
}

const MISROUTED_ENVOY_ROUTES: &str = r#"
- name: courses_misrouted
  match: {prefix: /api/courses}
  route: {cluster: booking_service}
- name: bookings
  match: {prefix: /api/bookings}
  route: {cluster: booking_service}
"#;

struct MisroutedStack {
    course: Upstream,
    booking: Upstream,
    envoy: Envoy,
}

fn misrouted_stack(on_mismatch: Option<&str>) -> MisroutedStack {
    let course = Upstream::start("course_service");
    let booking = Upstream::start("booking_service");
    let envoy = Envoy::builder(mismatch_policy(on_mismatch))
        .upstream(&course)
        .upstream(&booking)
        .routes_yaml(MISROUTED_ENVOY_ROUTES)
        .concurrency(2)
        .start();
    MisroutedStack {
        course,
        booking,
        envoy,
    }
}

fn mismatch_count(envoy: &Envoy, route: &str) -> u64 {
    envoy
        .stat(&format!("edge_guard.route.{route}.mismatch"))
        .unwrap_or(0)
}

/// Waits until a line with every needle is in the log, then lets a few more
/// flushes pass so that a duplicate written by the other worker would show too.
fn settled_log_lines(envoy: &Envoy, needles: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while log_lines(envoy, needles).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    log_lines(envoy, needles)
}

#[test]
fn mismatch_is_counted_per_request_logged_once_per_route_and_shown_on_status_while_traffic_flows() {
    let MisroutedStack {
        course,
        booking,
        envoy,
    } = misrouted_stack(None);

    // Concurrent bursts first, so both workers meet the mismatch at once,
    // then sequential requests.
    let sent = bursts_until_both_workers_served(&envoy, "/api/courses/burst", 200);
    for i in 0..10 {
        let resp = envoy.get(&format!("/api/courses/{i}"));
        assert_eq!(
            resp.status, 200,
            "the default on_mismatch (log) lets it through: {resp:?}"
        );
        assert_eq!(
            resp.json()["service"],
            "booking_service",
            "Envoy's routing decides where it lands: {resp:?}"
        );
    }
    assert_eq!(course.requests(), 0);
    assert_eq!(booking.requests(), sent + 10);
    assert_eq!(
        mismatch_count(&envoy, "courses"),
        sent + 10,
        "one count per request"
    );

    // A route Envoy sends where the policy says is no mismatch.
    for _ in 0..5 {
        assert_eq!(envoy.get("/api/bookings/1").status, 200);
    }
    assert_eq!(mismatch_count(&envoy, "bookings"), 0);

    // A declared route Envoy has no route for: Envoy's own 404, but counted.
    for _ in 0..3 {
        let resp = envoy.get("/api/payments/1");
        assert_eq!(resp.status, 404, "Envoy has no route: {resp:?}");
    }
    let _ = concurrent_gets(&envoy, "/api/payments/2", 6);
    assert_eq!(mismatch_count(&envoy, "payments"), 9);

    let courses_lines = settled_log_lines(
        &envoy,
        &[
            "route courses declares cluster course_service",
            "Envoy routes it to booking_service",
        ],
    );
    assert_eq!(
        courses_lines.len(),
        1,
        "one warning for the route, not one per request or per worker: {courses_lines:#?}"
    );
    assert!(
        courses_lines[0].contains("[warning]"),
        "{:?}",
        courses_lines[0]
    );
    let payments_lines = settled_log_lines(
        &envoy,
        &[
            "route payments declares cluster payment_service",
            "no Envoy route",
        ],
    );
    assert_eq!(payments_lines.len(), 1, "{payments_lines:#?}");
    assert!(
        log_lines(&envoy, &["route bookings declares"]).is_empty(),
        "a consistent route is not reported"
    );

    // Every worker answers the status endpoint with the same picture.
    for _ in 0..6 {
        let st = status(&envoy);
        assert_eq!(
            status_route(&st, "courses")["mismatch"]["envoy_cluster"],
            "booking_service",
            "{st}"
        );
        assert_eq!(
            status_route(&st, "payments")["mismatch"]["envoy_cluster"],
            "(none)",
            "{st}"
        );
        assert!(
            status_route(&st, "bookings").get("mismatch").is_none(),
            "{st}"
        );
    }
}

#[test]
fn mismatch_with_reject_is_502_route_mismatch_and_never_reaches_the_wrong_upstream() {
    let MisroutedStack {
        course,
        booking,
        envoy,
    } = misrouted_stack(Some("reject"));

    for i in 0..5 {
        let resp = envoy.request(
            Request::get(&format!("/api/courses/{i}")).header("x-request-id", "mismatch-req-1"),
        );
        let error = resp.assert_error(502, "route_mismatch");
        assert_eq!(error["request_id"], "mismatch-req-1", "{resp:?}");
    }
    let sent = bursts_until_both_workers_served(&envoy, "/api/courses/burst", 502);

    // No Envoy route for a declared prefix: 502 from edge-guard, not a bare 404.
    for _ in 0..3 {
        envoy
            .get("/api/payments/1")
            .assert_error(502, "route_mismatch");
    }

    // The consistent route still works.
    assert_eq!(envoy.get("/api/bookings/1").status, 200);

    assert_eq!(
        booking.requests(),
        1,
        "the wrong upstream got only the consistent route's request"
    );
    assert_eq!(course.requests(), 0);
    assert_eq!(mismatch_count(&envoy, "courses"), 5 + sent);
    assert_eq!(mismatch_count(&envoy, "payments"), 3);
    assert_eq!(
        envoy.stat("edge_guard.rejected.route_mismatch"),
        Some(5 + sent + 3)
    );

    let lines = settled_log_lines(&envoy, &["route courses declares cluster course_service"]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let st = status(&envoy);
    assert_eq!(
        status_route(&st, "courses")["mismatch"]["envoy_cluster"],
        "booking_service",
        "{st}"
    );
}

// ---- health checks -----------------------------------------------------------------

const INTERVAL_MS: u64 = 1_000;
const PROBE_TIMEOUT_MS: u64 = 300;
const UNHEALTHY_THRESHOLD: u64 = 2;
const HEALTHY_THRESHOLD: u64 = 1;
/// The filter's tick: a due probe starts, and a worker sees a shared state
/// change, up to one tick late.
const TICK_MS: u64 = 50;
/// What a 2-core machine shared with other builds adds: thread scheduling,
/// the stats poll, the log flush.
const SCHEDULING_SLACK_MS: u64 = 400;

fn health_policy() -> Value {
    json!({
        "routes": [
            {"name": "courses",  "prefix": "/api/courses",  "cluster": "course_service"},
            {"name": "bookings", "prefix": "/api/bookings", "cluster": "booking_service"}
        ],
        "health_checks": {
            "interval": "1s", "timeout": "300ms",
            "unhealthy_threshold": UNHEALTHY_THRESHOLD, "healthy_threshold": HEALTHY_THRESHOLD,
            "fail_fast": true
        }
    })
}

struct HealthStack {
    course: Upstream,
    booking: Upstream,
    envoy: Envoy,
}

fn health_stack() -> HealthStack {
    let course = Upstream::start("course_service");
    let booking = Upstream::start("booking_service");
    let envoy = Envoy::builder(health_policy())
        .upstream(&course)
        .upstream(&booking)
        .concurrency(2)
        .start();
    HealthStack {
        course,
        booking,
        envoy,
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn healthy_gauge(cluster: &str) -> String {
    format!("edge_guard.cluster.{cluster}.healthy")
}

/// Polls the cluster's `healthy` gauge until it reads `want`; returns the
/// epoch ms at which it did, or panics after `limit`.
fn wait_for_health(envoy: &Envoy, cluster: &str, want: u64, limit: Duration) -> u64 {
    let started = Instant::now();
    loop {
        if envoy.stat(&healthy_gauge(cluster)) == Some(want) {
            return epoch_ms();
        }
        assert!(
            started.elapsed() < limit,
            "{} still {:?} after {limit:?}, expected {want}",
            healthy_gauge(cluster),
            envoy.stat(&healthy_gauge(cluster))
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the first probes are in and every worker has picked up their
/// result (each worker refreshes its view of the shared health records on
/// its tick, so right after start a worker may not have a view yet).
fn wait_until_probed_healthy(envoy: &Envoy, clusters: &[&str]) {
    for cluster in clusters {
        wait_for_health(envoy, cluster, 1, Duration::from_secs(3));
    }
    thread::sleep(Duration::from_millis(2 * TICK_MS));
    for _ in 0..4 {
        let st = status(envoy);
        for cluster in clusters {
            assert_eq!(status_cluster(&st, cluster)["healthy"], true, "{st}");
        }
    }
}

/// When the upstream received each health probe (epoch ms).
fn probe_times(up: &Upstream) -> Vec<u64> {
    up.stats()["health_hit_times_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect()
}

/// Returns once the upstream has received one more probe.
fn wait_for_next_probe(up: &Upstream) {
    let seen = probe_times(up).len();
    let deadline = Instant::now() + Duration::from_millis(2 * INTERVAL_MS);
    while probe_times(up).len() == seen {
        assert!(
            Instant::now() < deadline,
            "{}: no probe for {} ms",
            up.name(),
            2 * INTERVAL_MS
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Requests that reached the upstream, probes excluded.
fn served(up: &Upstream) -> u64 {
    let stats = up.stats();
    stats["requests"].as_u64().unwrap_or(0) - stats["health_hits"].as_u64().unwrap_or(0)
}

/// One prober per cluster for the whole instance. Probes are due on a grid
/// one interval apart and any one may start late (a tick, a busy machine),
/// so a single gap after a late probe can be well under the interval; what
/// one prober can never do is fit more probes into a span than the grid has
/// slots. Counting slots tolerates lateness up to half an interval; a second
/// prober adds a probe per slot and is caught.
fn assert_probes_spaced(up: &Upstream) {
    let times = probe_times(up);
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return;
    };
    let slots = (last - first + INTERVAL_MS / 2) / INTERVAL_MS + 1;
    assert!(
        times.len() as u64 <= slots,
        "{}: {} probes within {} ms (interval {INTERVAL_MS} ms) fit at most {slots} grid slots: more than one prober; gaps {:?}",
        up.name(),
        times.len(),
        last - first,
        times.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
    );
}

/// Sends `n` requests at once to `path` and asserts each got edge-guard's
/// fail-fast 503 promptly.
fn assert_fails_fast(envoy: &Envoy, path: &str, n: usize) {
    let addr = envoy.addr();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            thread::spawn(move || http::send(addr, &Request::get(&path)).expect("request"))
        })
        .collect();
    for h in handles {
        let resp = h.join().expect("request thread");
        resp.assert_error(503, "upstream_unhealthy");
        let retry = resp
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            retry.is_some_and(|s| s >= 1),
            "retry-after must be whole seconds: {resp:?}"
        );
        assert!(
            resp.elapsed < Duration::from_millis(TICK_MS + SCHEDULING_SLACK_MS),
            "a fail-fast answer must not wait for anything: {resp:?}"
        );
    }
}

/// The upstream stops answering its health checks with `mode` ("fail" or
/// "hang"): it is marked unhealthy in time, its routes fail fast, the state
/// change is logged once; then it recovers and traffic flows again.
fn unhealthy_then_recovers(mode: &str) {
    let HealthStack {
        course,
        booking,
        envoy,
    } = health_stack();
    wait_until_probed_healthy(&envoy, &["course_service", "booking_service"]);
    assert_eq!(envoy.get("/api/courses/1").status, 200);

    // Break it just after a probe was answered: the slowest case, and no
    // probe in flight while the mode changes.
    wait_for_next_probe(&course);
    thread::sleep(Duration::from_millis(100));
    course.set_health(mode);
    let broke_at = epoch_ms();
    let budget = INTERVAL_MS * UNHEALTHY_THRESHOLD + PROBE_TIMEOUT_MS;
    let limit = budget + UNHEALTHY_THRESHOLD * TICK_MS + TICK_MS + SCHEDULING_SLACK_MS;
    let marked_at = wait_for_health(
        &envoy,
        "course_service",
        0,
        Duration::from_millis(limit + 2_000),
    );
    let took = marked_at - broke_at;
    eprintln!("{mode}: marked unhealthy {took} ms after the upstream broke (budget {budget} ms, limit {limit} ms)");
    // Workers re-read the health records only when a transition is counted.
    assert!(
        envoy.stat("edge_guard.health.transitions") >= Some(1),
        "{mode}: no transition counted: {:?}",
        envoy.stats()
    );
    assert!(
        took <= limit,
        "{mode}: marked unhealthy after {took} ms; interval × threshold + timeout is {budget} ms (+{} ms slack)",
        limit - budget
    );
    // Not before `unhealthy_threshold` probes failed, and (when they hang) not
    // before the last one timed out.
    let failing: Vec<u64> = probe_times(&course)
        .into_iter()
        .filter(|t| (broke_at..=marked_at).contains(t))
        .collect();
    assert!(
        failing.len() as u64 >= UNHEALTHY_THRESHOLD,
        "{mode}: marked unhealthy after {} failing probes: {failing:?}",
        failing.len()
    );
    let decisive = failing[UNHEALTHY_THRESHOLD as usize - 1];
    let after_decisive = marked_at.saturating_sub(decisive);
    eprintln!(
        "{mode}: failing probes at +{:?} ms; marked {after_decisive} ms after the decisive one",
        failing.iter().map(|t| t - broke_at).collect::<Vec<_>>()
    );
    // A failing probe counts when its answer arrives, a hung one at its timeout.
    let counts_after = if mode == "hang" { PROBE_TIMEOUT_MS } else { 0 };
    assert!(
        after_decisive + TICK_MS >= counts_after,
        "{mode}: marked {after_decisive} ms after the decisive probe was sent, before its {counts_after} ms timeout"
    );
    assert!(
        after_decisive <= counts_after + TICK_MS + SCHEDULING_SLACK_MS,
        "{mode}: marked {after_decisive} ms after the decisive probe"
    );

    // Every worker sees the shared state within one tick.
    thread::sleep(Duration::from_millis(2 * TICK_MS));
    let served_before = served(&course);
    assert_fails_fast(&envoy, "/api/courses/7", 8);
    assert_eq!(
        served(&course),
        served_before,
        "fail-fast requests never reach the upstream"
    );
    // The other cluster is unaffected (and a hanging probe blocks nothing).
    let resp = envoy.get("/api/bookings/1");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.elapsed < Duration::from_millis(TICK_MS + SCHEDULING_SLACK_MS));
    assert_eq!(envoy.stat(&healthy_gauge("course_service")), Some(0));
    assert_eq!(envoy.stat(&healthy_gauge("booking_service")), Some(1));
    for _ in 0..4 {
        let st = status(&envoy);
        assert_eq!(
            status_cluster(&st, "course_service")["healthy"],
            false,
            "{st}"
        );
        assert_eq!(
            status_cluster(&st, "booking_service")["healthy"],
            true,
            "{st}"
        );
    }

    course.set_health("ok");
    let fixed_at = epoch_ms();
    let recovered_at = wait_for_health(
        &envoy,
        "course_service",
        1,
        Duration::from_millis(INTERVAL_MS * HEALTHY_THRESHOLD + PROBE_TIMEOUT_MS + 3_000),
    );
    eprintln!(
        "{mode}: marked healthy {} ms after it came back",
        recovered_at - fixed_at
    );
    let recovery_limit = INTERVAL_MS * HEALTHY_THRESHOLD + TICK_MS * 2 + SCHEDULING_SLACK_MS;
    assert!(
        recovered_at - fixed_at <= recovery_limit,
        "{mode}: marked healthy {} ms after it came back (limit {recovery_limit} ms)",
        recovered_at - fixed_at
    );
    thread::sleep(Duration::from_millis(2 * TICK_MS));
    for i in 0..6 {
        let resp = envoy.get(&format!("/api/courses/{i}"));
        assert_eq!(resp.status, 200, "traffic flows again: {resp:?}");
        assert_eq!(resp.json()["service"], "course_service");
    }
    assert_eq!(
        status_cluster(&status(&envoy), "course_service")["healthy"],
        true
    );

    thread::sleep(Duration::from_millis(300));
    let down = log_lines(&envoy, &["cluster course_service is unhealthy"]);
    assert_eq!(down.len(), 1, "one line per state change: {down:#?}");
    let up = log_lines(&envoy, &["cluster course_service is healthy again"]);
    assert_eq!(up.len(), 1, "one line per state change: {up:#?}");
    assert!(log_lines(&envoy, &["cluster booking_service is"]).is_empty());
    assert_probes_spaced(&course);
    assert_probes_spaced(&booking);
}

#[test]
fn failing_upstream_is_marked_unhealthy_in_time_fails_fast_and_recovers() {
    unhealthy_then_recovers("fail");
}

#[test]
fn hanging_health_check_times_out_marks_unhealthy_and_recovers() {
    unhealthy_then_recovers("hang");
}

#[test]
fn one_probe_per_cluster_per_interval_for_the_whole_instance() {
    let HealthStack {
        course,
        booking,
        envoy,
    } = health_stack();
    wait_until_probed_healthy(&envoy, &["course_service", "booking_service"]);
    let probes_counter = |cluster: &str| {
        envoy
            .stat(&format!("edge_guard.cluster.{cluster}.probes"))
            .unwrap_or(0)
    };
    course.reset_stats();
    booking.reset_stats();
    let counted_before = [
        probes_counter("course_service"),
        probes_counter("booking_service"),
    ];
    let window = Duration::from_millis(5 * INTERVAL_MS);
    thread::sleep(window);
    let counted_after = [
        probes_counter("course_service"),
        probes_counter("booking_service"),
    ];
    for (i, up) in [&course, &booking].into_iter().enumerate() {
        let hits = probe_times(up);
        let expected = window.as_millis() as u64 / INTERVAL_MS;
        assert!(
            (expected - 1..=expected + 1).contains(&(hits.len() as u64)),
            "{}: {} probes in {window:?} with a {INTERVAL_MS} ms interval and 2 workers, expected {expected} ± 1: {hits:?}",
            up.name(),
            hits.len()
        );
        assert_probes_spaced(up);
        let dispatched = counted_after[i] - counted_before[i];
        assert!(
            dispatched.abs_diff(hits.len() as u64) <= 1,
            "{}: the filter counted {dispatched} probes, the upstream saw {}",
            up.name(),
            hits.len()
        );
    }
}

/// A probe that times out only because the whole Envoy process was paused
/// (`SIGSTOP`, a frozen VM) says nothing about its cluster: it is not counted,
/// even with `unhealthy_threshold: 1`, and the cluster never leaves healthy.
/// Without the rule the late timeout marks it unhealthy at once.
#[test]
fn a_probe_timed_out_by_a_paused_process_is_not_counted() {
    let course = Upstream::start("course_service");
    let booking = Upstream::start("booking_service");
    let (interval_ms, timeout_ms): (u64, u64) = (2_000, 1_500);
    let mut policy = health_policy();
    policy["health_checks"]["interval"] = json!(format!("{interval_ms}ms"));
    policy["health_checks"]["timeout"] = json!(format!("{timeout_ms}ms"));
    policy["health_checks"]["unhealthy_threshold"] = json!(1);
    let envoy = Envoy::builder(policy)
        .upstream(&course)
        .upstream(&booking)
        .concurrency(2)
        .start();
    wait_until_probed_healthy(&envoy, &["course_service", "booking_service"]);

    // A probe in flight (held by the upstream) when the process stops ...
    course.set_health("hang");
    let seen = probe_times(&course).len();
    let deadline = Instant::now() + Duration::from_millis(2 * interval_ms);
    while probe_times(&course).len() == seen {
        assert!(
            Instant::now() < deadline,
            "no probe for {} ms",
            2 * interval_ms
        );
        thread::sleep(Duration::from_millis(10));
    }
    let pid = envoy.pid() as libc::pid_t;
    // SAFETY: signals to the Envoy this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // ... stays stopped well past its timeout + the 1 s slack ...
    thread::sleep(Duration::from_millis(timeout_ms + 2_000));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // ... so its timeout fires at the resume, late. The probes after it are
    // answered (the upstream is fine again well within their timeout).
    thread::sleep(Duration::from_millis(200));
    course.set_health("ok");
    thread::sleep(Duration::from_millis(2 * interval_ms));

    let failures = envoy.stat("edge_guard.cluster.course_service.probe_failures");
    let transitions = envoy.stat("edge_guard.health.transitions");
    assert_eq!(
        failures,
        Some(0),
        "a paused process's timeout was counted as a failed probe"
    );
    assert_eq!(
        transitions,
        Some(0),
        "the cluster changed health: {}",
        status(&envoy)
    );
    assert!(
        probe_times(&course).len() >= 3,
        "probes went on after the pause: {:?}",
        probe_times(&course)
    );
    assert_eq!(envoy.get("/api/courses/1").status, 200);
}
