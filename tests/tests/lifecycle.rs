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
}

fn assert_echo(ws: &mut WsClient, text: &str) {
    ws.send_text(text);
    assert_eq!(ws.expect_text(), text);
}
