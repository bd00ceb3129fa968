//! Operating edge-guard through real Envoy: VM failures that give their
//! WebSocket slots back, hot restarts within the instance limit, drains and
//! the health endpoint, policy changes through ECDS.

use edge_guard_e2e::*;
use std::time::{Duration, Instant};

const EVENTS: &str = "/ws/events";
/// A dead VM's slots are back within this long of its failure (README: the
/// heartbeat goes stale after 4 s and every live VM reaps every 1 s).
const RECLAIM_BOUND: Duration = Duration::from_secs(6);

fn policy(limit: u32) -> Value {
    json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service"},
            {"name": "events", "prefix": EVENTS, "cluster": "event_service", "websocket": true},
        ],
        "websocket": {"max_connections": limit},
    })
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap_or(0)
}

/// A client text frame with an all-zero mask key, so the payload travels
/// as is (the fault-injection build looks for its marker in the raw bytes).
fn unmasked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

fn assert_capacity(r: &UpgradeRejected) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.error_code().as_deref(),
        Some("websocket_capacity"),
        "{r:?}"
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");
}

/// Envoy's own 503 for a worker whose VM failed under `FAIL_CLOSED`.
fn dead_worker(r: &UpgradeRejected) -> bool {
    r.status == 503 && r.error_code().as_deref() == Some("filter_unavailable")
}

/// Opens upgrades until `n` are admitted; upgrades that land on a worker
/// whose VM is dead (`FAIL_CLOSED`: Envoy's own 503, `filter_unavailable`
/// from the shipped local_reply_config) are retried. Panics
/// on a capacity rejection before `n`.
fn admit_exactly(envoy: &Envoy, n: usize) -> Vec<WsClient> {
    let mut open = Vec::new();
    let mut dead_worker_503s = 0;
    while open.len() < n {
        match envoy.websocket(EVENTS, &[]) {
            Ok(ws) => open.push(ws),
            Err(r) if dead_worker(&r) => {
                dead_worker_503s += 1;
                assert!(dead_worker_503s < 200, "only dead-worker 503s: {r:?}");
            }
            Err(r) => panic!("upgrade {} of {n} refused: {r:?}", open.len() + 1),
        }
    }
    open
}

/// The next upgrade that reaches a live VM is refused for capacity.
fn assert_full(envoy: &Envoy) {
    for _ in 0..200 {
        match envoy.websocket(EVENTS, &[]) {
            Ok(_) => panic!("an upgrade beyond the limit was admitted"),
            Err(r) if dead_worker(&r) => continue,
            Err(r) => return assert_capacity(&r),
        }
    }
    panic!("no live worker answered");
}

/// Two workers, `limit` connections held; the VM of the worker holding the
/// first connection traps. Its connections are reset at their next frame,
/// the others keep working, the failure is counted, and every slot it held
/// is back within `RECLAIM_BOUND`: exactly that many new upgrades are then
/// admitted, and not one more.
fn vm_failure_returns_its_slots(failure_policy: &str) {
    let limit = 8;
    let up = Upstream::start("event_service");
    let course = Upstream::start("course_service");
    let envoy = Envoy::builder(policy(limit))
        .upstream(&up)
        .upstream(&course)
        .concurrency(2)
        .failure_policy(failure_policy)
        .wasm(paths::fault_wasm())
        .start();
    let mut held = admit_exactly(&envoy, limit as usize);
    assert_full(&envoy);
    assert_eq!(
        stat(&envoy, "edge_guard.websocket.active"),
        u64::from(limit)
    );

    let failed_at = Instant::now();
    held[0].send_raw(&unmasked_text_frame(b"edge-guard-fault:trap"));
    assert!(
        envoy.wait_for_log("fault injection: trapping this VM", Duration::from_secs(5)),
        "the fault-injection build did not trap"
    );
    // The failure is noticed and its slots reclaimed in one reaper pass.
    let failures = envoy.wait_for_stat("edge_guard.vm.failures", RECLAIM_BOUND, |n| n >= 1);
    let took = failed_at.elapsed();
    assert_eq!(
        failures,
        Some(1),
        "the VM failure is counted ({failure_policy})"
    );
    assert!(took <= RECLAIM_BOUND, "slots came back after {took:?}");

    // Which connections were on the dead VM: Envoy resets them at their next frame.
    let mut on_dead_vm = 0u64;
    for ws in held.iter_mut() {
        ws.send_text("ping");
        match ws.recv_timeout(Duration::from_secs(3)) {
            WsEvent::Text(t) => assert_eq!(t, "ping"),
            WsEvent::Reset | WsEvent::Closed { .. } => on_dead_vm += 1,
            other => panic!("neither echo nor reset: {other:?}"),
        }
    }
    assert!(
        on_dead_vm >= 1,
        "the trapping connection itself must be gone"
    );
    assert_eq!(
        stat(&envoy, "edge_guard.websocket.reclaimed"),
        on_dead_vm,
        "exactly the dead VM's slots are reclaimed ({failure_policy})"
    );
    assert_eq!(
        stat(&envoy, "edge_guard.websocket.active"),
        u64::from(limit) - on_dead_vm,
        "the gauge no longer counts the dead VM's connections"
    );
    eprintln!("{failure_policy}: {on_dead_vm} slots back after {took:?}");

    // Exactly the dead VM's slots are available again, and no more.
    let _new = admit_exactly(&envoy, on_dead_vm as usize);
    assert_full(&envoy);
    // No second failure is counted later (the reloaded VM, if any, beats).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stat(&envoy, "edge_guard.vm.failures"), 1);
}

#[test]
fn a_vm_failure_with_fail_reload_returns_every_slot_it_held() {
    vm_failure_returns_its_slots("FAIL_RELOAD");
}

#[test]
fn a_vm_failure_with_fail_closed_returns_every_slot_it_held() {
    vm_failure_returns_its_slots("FAIL_CLOSED");
}

// ---- hot restart ------------------------------------------------------------------

/// Upgrades until one is refused for capacity; returns the admitted ones.
fn admit_until_full(envoy: &Envoy, at_most: usize) -> Vec<WsClient> {
    let mut open = Vec::new();
    loop {
        match envoy.websocket(EVENTS, &[]) {
            Ok(ws) => {
                open.push(ws);
                assert!(open.len() <= at_most, "admitted more than {at_most}");
            }
            Err(r) => {
                assert_capacity(&r);
                return open;
            }
        }
    }
}

/// Limit 5, 3 held by the running Envoy; a hot restart starts epoch 1, which
/// takes the listener. The child admits only the 2 the parent leaves, and as
/// the parent's connections end their slots come to the child.
#[test]
fn a_hot_restart_never_holds_more_than_the_instance_limit() {
    let limit = 5;
    let up = Upstream::start("event_service");
    let parent = Envoy::builder(policy(limit))
        .upstream(&up)
        .hot_restart_parent()
        .start();
    let mut on_parent = admit_exactly(&parent, 3);
    assert_eq!(stat(&parent, "edge_guard.websocket.active"), 3);

    let child = Envoy::builder(policy(limit))
        .upstream(&up)
        .hot_restart_child(parent.base_id(), 1)
        .listener_port(parent.listener_port())
        .arg("--parent-shutdown-time-s")
        .arg("120")
        .arg("--drain-time-s")
        .arg("120")
        .start();
    // The child's gauge carries the parent's 3 as soon as it is ready.
    assert_eq!(stat(&child, "edge_guard.websocket.active"), 3);
    // Independent of the filter: the WebSockets actually open at the
    // upstream both processes proxy to, sampled throughout.
    let sampler = max_sampler(up.addr());
    let on_child = admit_until_full(&child, 2);
    assert_eq!(on_child.len(), 2, "the child admits what the parent leaves");
    assert_eq!(
        stat(&child, "edge_guard.websocket.active"),
        u64::from(limit),
        "parent 3 + child 2, merged"
    );
    for ws in on_parent.iter_mut() {
        assert_echo(ws, "parent still serves");
    }

    // The parent's connections end: within one stats flush (5 s) plus the
    // filter's re-read, their slots are the child's.
    let closed_at = Instant::now();
    for mut ws in on_parent.drain(..) {
        ws.close(1000, "bye");
        let _ = ws.recv_timeout(Duration::from_secs(2));
    }
    let mut more = Vec::new();
    while more.len() < 3 {
        assert!(
            closed_at.elapsed() < Duration::from_secs(8),
            "the parent's slots did not come to the child: {} of 3",
            more.len()
        );
        match child.websocket(EVENTS, &[]) {
            Ok(ws) => more.push(ws),
            Err(r) => {
                assert_capacity(&r);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eprintln!(
        "parent's slots back to the child after {:?}",
        closed_at.elapsed()
    );
    assert_full(&child);
    assert_eq!(
        stat(&child, "edge_guard.websocket.active"),
        u64::from(limit)
    );
    let highest = sampler.finish();
    assert!(
        (3..=i64::from(limit)).contains(&highest),
        "WebSockets open at the upstream over both processes peaked at {highest} (limit {limit})"
    );
    // And the upstream sees exactly the limit now: the measure is live.
    let deadline = Instant::now() + Duration::from_secs(3);
    while up.ws_open() != i64::from(limit) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(up.ws_open(), i64::from(limit), "open at the upstream");
}

/// Polls the demo upstream's count of open WebSockets every 20 ms and
/// keeps its maximum.
struct MaxSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<i64>,
}

impl MaxSampler {
    fn finish(self) -> i64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("sampler thread")
    }
}

fn max_sampler(upstream: std::net::SocketAddr) -> MaxSampler {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut max = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(r) = http::send(upstream, &Request::get("/__control/stats")) {
                max = max.max(r.json()["ws_open"].as_i64().unwrap_or(0));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        max
    });
    MaxSampler { stop, handle }
}

fn assert_echo(ws: &mut WsClient, text: &str) {
    ws.send_text(text);
    assert_eq!(ws.expect_text(), text);
}

// ---- health and drain ----------------------------------------------------------------

const HEALTH: &str = "/.edge-guard/health";
const DRAIN: &str = "/.edge-guard/status/drain";

/// A client that keeps data flowing both ways (a message every 100 ms, the
/// demo upstream echoes it) until its connection ends; returns how it ended
/// and when.
fn chatty(mut ws: WsClient) -> std::thread::JoinHandle<(WsEvent, Instant)> {
    std::thread::spawn(move || loop {
        ws.send_text("tick");
        match ws.recv_timeout(Duration::from_millis(100)) {
            WsEvent::Text(_) | WsEvent::TimedOut => {}
            end => return (end, Instant::now()),
        }
        std::thread::sleep(Duration::from_millis(100));
    })
}

fn drain_policy(limit: u32, period: &str) -> Value {
    let mut p = policy(limit);
    p["websocket"]["drain_period"] = json!(period);
    p
}

#[test]
fn health_answers_serving_with_the_websocket_counts_and_head_has_no_body() {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy(10)).upstream(&up).start();
    let _held = admit_exactly(&envoy, 2);
    let r = envoy.get(HEALTH);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"status": "serving", "websocket": {"active": 2, "limit": 10}})
    );
    let r = envoy.request(Request::new("HEAD", HEALTH));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    // Only POST drains; a GET on the drain path is just an unknown route.
    assert_eq!(envoy.get(DRAIN).status, 404);
    assert_eq!(envoy.get(HEALTH).status, 200);
}

#[test]
fn health_and_drain_answer_only_their_allowed_sources() {
    let up = Upstream::start("event_service");
    let mut p = policy(10);
    p["health"] = json!({"allow_cidrs": ["10.0.0.0/8"]});
    p["status"] = json!({"allow_cidrs": ["10.0.0.0/8"]});
    let envoy = Envoy::builder(p).upstream(&up).start();
    // From 127.0.0.1 neither exists: the paths are unknown routes.
    assert_eq!(envoy.get(HEALTH).status, 404);
    assert_eq!(envoy.request(Request::post(DRAIN)).status, 404);
    // Nor can a forwarded-for header claim an allowed address.
    let r = envoy.request(Request::post(DRAIN).header("x-forwarded-for", "10.1.2.3"));
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(envoy.get(HEALTH).status, 404, "no drain started");
}

/// The contract: `POST <status.path>/drain` answers 202, health turns 503,
/// every open WebSocket is closed with 1001 within `drain_period` + 1 s,
/// spread over the period, every slot is released, new upgrades get 503
/// `websocket_capacity` with `retry-after`, and plain HTTP keeps working.
#[test]
fn drain_closes_every_websocket_with_1001_spread_over_the_period() {
    let period = Duration::from_secs(3);
    let up = Upstream::start("event_service");
    let course = Upstream::start("course_service");
    let envoy = Envoy::builder(drain_policy(10, "3s"))
        .upstream(&up)
        .upstream(&course)
        .concurrency(2)
        .start();
    let clients: Vec<_> = admit_exactly(&envoy, 6).into_iter().map(chatty).collect();
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let r = envoy.request(Request::post(DRAIN));
    assert_eq!(r.status, 202, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["status"], "draining", "{doc}");
    assert_eq!(doc["drain"]["period_ms"], 3000, "{doc}");
    assert_eq!(doc["websocket"]["active"], 6, "{doc}");

    let r = envoy.get(HEALTH);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["status"], "draining");
    assert_eq!(envoy.request(Request::new("HEAD", HEALTH)).status, 503);
    match envoy.websocket(EVENTS, &[]) {
        Ok(_) => panic!("an upgrade was admitted while draining"),
        Err(r) => assert_capacity(&r),
    }
    assert_eq!(
        envoy.get("/api/courses/1").status,
        200,
        "plain HTTP keeps working"
    );
    // A second POST (a retried hook) keeps the first drain.
    let again = envoy.request(Request::post(DRAIN)).json();
    assert_eq!(again["drain"]["started_ms"], doc["drain"]["started_ms"]);
    // Each accepted request is counted: the other worker follows the drain
    // when it sees this counter move (its idle ticks read no shared data).
    assert_eq!(stat(&envoy, "edge_guard.drain.requests"), 2);

    let mut closed_after = Vec::new();
    for client in clients {
        let (end, at) = client.join().expect("client thread");
        assert_eq!(
            end,
            WsEvent::Closed {
                code: 1001,
                reason: "draining".into()
            },
            "a drained connection gets Going Away"
        );
        closed_after.push(at.saturating_duration_since(started));
    }
    closed_after.sort();
    eprintln!("closed after {closed_after:?}");
    let last = *closed_after.last().unwrap();
    let first = closed_after[0];
    assert!(
        last <= period + Duration::from_secs(1),
        "last close at {last:?}"
    );
    assert!(
        last - first >= period / 3,
        "closes not spread over the period: {closed_after:?}"
    );
    let early = closed_after
        .iter()
        .filter(|d| **d < Duration::from_millis(500))
        .count();
    assert!(early <= 2, "too many closes at the start: {closed_after:?}");

    // Every slot released.
    assert_eq!(
        envoy.wait_for_stat("edge_guard.websocket.active", Duration::from_secs(2), |n| n
            == 0),
        Some(0)
    );
    assert_eq!(
        stat(&envoy, "edge_guard.route.events.websocket.closed.draining"),
        6
    );
    let status = envoy.get("/.edge-guard/status").json();
    assert_eq!(status["websocket"]["active"], 0, "{status}");
}

// ---- policy changes through ECDS -------------------------------------------------------

fn ecds_stat(envoy: &Envoy, what: &str) -> u64 {
    envoy
        .stats()
        .iter()
        .find(|(name, _)| {
            name.starts_with("extension_config_discovery.")
                && name.ends_with(&format!("edge_guard.{what}"))
        })
        .map_or(0, |(_, v)| *v)
}

fn wait_ecds(envoy: &Envoy, what: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ecds_stat(envoy, what) < n {
        assert!(
            Instant::now() < deadline,
            "no ECDS {what} #{n}: {:?}",
            envoy
                .stats()
                .iter()
                .filter(|(k, _)| k.starts_with("extension_config_discovery."))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Plain GETs in a loop until stopped; returns (requests, failures).
fn http_load(
    envoy_addr: std::net::SocketAddr,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<(u64, Vec<String>)>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let (mut n, mut failures) = (0u64, Vec::new());
        while !flag.load(Ordering::Relaxed) {
            n += 1;
            match http::send(envoy_addr, &Request::get("/api/courses/1")) {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failures.push(format!("{r:?}")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (n, failures)
    });
    (stop, handle)
}

fn route_limit_policy(route_limit: u32, standard: &str) -> Value {
    json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service"},
            {"name": "events", "prefix": EVENTS, "cluster": "event_service", "websocket": true, "max_connections": route_limit},
        ],
        "timeouts": {"classes": {"standard": standard}},
        "websocket": {"max_connections": 10, "drain_period": "2s"},
    })
}

/// A policy change delivered by ECDS under HTTP load leaves the open
/// WebSockets open and counted, takes effect for new requests, and a bad
/// policy is refused with its reason logged while the last good one serves.
#[test]
fn an_ecds_policy_change_keeps_open_websockets_and_a_bad_one_is_refused() {
    use std::sync::atomic::Ordering;
    let up = Upstream::start("event_service");
    let course = Upstream::start("course_service");
    let envoy = Envoy::builder(route_limit_policy(8, "30s"))
        .upstream(&up)
        .upstream(&course)
        .concurrency(2)
        .ecds()
        .start();
    wait_ecds(&envoy, "config_reload", 1);
    let mut held = admit_exactly(&envoy, 3);
    let (stop, load) = http_load(envoy.addr());
    std::thread::sleep(Duration::from_millis(300));

    // Lower the route limit to 4 and change a timeout.
    envoy.push_policy(route_limit_policy(4, "20s"));
    wait_ecds(&envoy, "config_reload", 2);
    std::thread::sleep(Duration::from_millis(300));
    for ws in held.iter_mut() {
        assert_echo(ws, "still here");
    }
    let status = envoy.get("/.edge-guard/status").json();
    let events = &status["routes"][1];
    assert_eq!(events["websocket_connections"]["limit"], 4, "{status}");
    assert_eq!(events["websocket_connections"]["active"], 3, "{status}");
    // The new limit counts the connections opened under the old policy.
    held.extend(admit_until_full(&envoy, 1));
    assert_eq!(held.len(), 4);

    // A bad policy: refused, reason logged, the last good one serves.
    let mut bad = route_limit_policy(2, "20s");
    bad["routes"][0]["prefx"] = json!("/oops");
    envoy.push_policy(bad);
    wait_ecds(&envoy, "config_fail", 1);
    assert!(
        envoy.wait_for_log("routes[0].prefx", Duration::from_secs(3)),
        "the refusal's reason is logged"
    );
    let status = envoy.get("/.edge-guard/status").json();
    assert_eq!(
        status["routes"][1]["websocket_connections"]["limit"], 4,
        "{status}"
    );
    for ws in held.iter_mut() {
        assert_echo(ws, "still here after the refusal");
    }
    assert_full(&envoy);

    stop.store(true, Ordering::Relaxed);
    let (requests, failures) = load.join().expect("load thread");
    assert!(requests > 20, "the load ran ({requests} requests)");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(stat(&envoy, "edge_guard.websocket.active"), 4);

    // Connections opened under the first policy still follow the instance:
    // a drain closes them too, and gives every slot back.
    let clients: Vec<_> = held.into_iter().map(chatty).collect();
    assert_eq!(envoy.request(Request::post(DRAIN)).status, 202);
    for client in clients {
        let (end, _) = client.join().expect("client thread");
        assert_eq!(
            end,
            WsEvent::Closed {
                code: 1001,
                reason: "draining".into()
            }
        );
    }
    assert_eq!(
        envoy.wait_for_stat("edge_guard.websocket.active", Duration::from_secs(2), |n| n
            == 0),
        Some(0)
    );
}
