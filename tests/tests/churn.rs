//! A churn of 10,000 WebSocket connections across 2,000 users through a real
//! Envoy ends with nothing held: every way a connection can end gives its
//! slot back, and per-user state does not outlive the user's connections.
//!
//! In its own test binary: cargo runs test binaries one after another, so
//! this load never shares the machine with the timing tests of
//! `websocket.rs`, `deadlines.rs` and `routing.rs`.

use edge_guard_e2e::*;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const EVENTS: &str = "/ws/events";
const RELEASE_WAIT: Duration = Duration::from_secs(3);

fn stack(websocket: Value) -> (Upstream, Envoy) {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(json!({
        "routes": [
            {"name": "events", "prefix": EVENTS, "cluster": "event_service", "websocket": true},
        ],
        "websocket": websocket,
    }))
    .upstream(&up)
    .start();
    (up, envoy)
}

fn open(envoy: &Envoy, user: &str) -> WsClient {
    envoy
        .websocket(EVENTS, &[("x-user-id", user)])
        .unwrap_or_else(|r| panic!("upgrade of {user} refused: {r:?}"))
}

fn refused(envoy: &Envoy, user: &str) -> UpgradeRejected {
    match envoy.websocket(EVENTS, &[("x-user-id", user)]) {
        Ok(_) => panic!("upgrade of {user} was admitted"),
        Err(r) => r,
    }
}

/// The instance gauge, the route gauge and the status endpoint's two counts.
fn held(envoy: &Envoy) -> [Option<u64>; 4] {
    let stats = envoy.stats();
    let stat = |name: &str| {
        stats
            .get(name)
            .or_else(|| stats.get(&format!("wasmcustom.{name}")))
            .copied()
    };
    let status = envoy.get("/.edge-guard/status").json();
    let route = status["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "events")
        .and_then(|r| r["websocket_connections"]["active"].as_u64());
    [
        stat("edge_guard.websocket.active"),
        stat("edge_guard.route.events.websocket.active"),
        status["websocket"]["active"].as_u64(),
        route,
    ]
}

fn wait_held(envoy: &Envoy, n: u64) {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        let seen = held(envoy);
        if seen == [Some(n); 4] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "[instance gauge, route gauge, status instance, status route]: \
             expected {n} each, still {seen:?} after {RELEASE_WAIT:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn assert_error(r: &UpgradeRejected, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.error_code().as_deref(), Some(code), "{r:?}");
}

/// Ends the connection with a TCP RST (SO_LINGER 0, then close).
fn reset_tcp(ws: WsClient) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor owned by `ws`, with a correctly sized struct.
    let rc = unsafe {
        libc::setsockopt(
            ws.stream().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_LINGER");
    drop(ws);
}

#[test]
fn churn_of_10000_connections_across_2000_users_leaves_nothing_held() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1250;
    const USERS: usize = 2000;
    const INSTANCE_LIMIT: usize = 100;
    const USER_LIMIT: usize = 2;
    let (up, envoy) = stack(json!({
        "max_connections": INSTANCE_LIMIT,
        "max_connections_per_user": USER_LIMIT,
        "identity": {"header": "x-user-id"},
        "require_identity": true,
        "max_message_bytes": 65536,
        "max_messages_per_second": 100,
    }));
    let started = Instant::now();
    let rejected = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (envoy, rejected) = (&envoy, &rejected);
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    // Users t, t+8, t+16, ...: no two threads share a user.
                    let user = format!("churn-{}", (i * THREADS + t) % USERS);
                    let mut ws = match envoy.websocket(EVENTS, &[("x-user-id", &user)]) {
                        Ok(ws) => ws,
                        Err(r) => {
                            eprintln!("churn upgrade of {user} refused: {r:?}");
                            rejected.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    match i % 4 {
                        0 => {
                            ws.close(1000, "");
                            let _ = ws.recv();
                        }
                        1 => {
                            ws.send_text("hi");
                            let _ = ws.recv();
                        }
                        2 => reset_tcp(ws),
                        _ => drop(ws),
                    }
                }
            });
        }
    });
    let churn_time = started.elapsed();
    eprintln!(
        "churn: {} connections in {churn_time:?}",
        THREADS * PER_THREAD
    );
    assert_eq!(
        rejected.load(Ordering::Relaxed),
        0,
        "limits far above the concurrency refused upgrades"
    );
    let upgrades = envoy.stat("http.ingress.downstream_cx_upgrades_total");
    assert!(
        upgrades >= Some((THREADS * PER_THREAD) as u64),
        "{upgrades:?}"
    );
    assert!(up.requests() >= (THREADS * PER_THREAD) as u64);
    wait_held(&envoy, 0);
    let deadline = Instant::now() + RELEASE_WAIT;
    while up.ws_open() != 0 {
        assert!(
            Instant::now() < deadline,
            "upstream still has {} open",
            up.ws_open()
        );
        thread::sleep(Duration::from_millis(50));
    }

    // Nothing per user survived the churn: churned users get exactly their limit
    // again, and the instance exactly its limit. (Shared-data size is not visible
    // from outside Envoy; this is the observable consequence of it being bounded.)
    let mut held_now = Vec::new();
    for u in (0..USERS).step_by(USERS / 20) {
        let user = format!("churn-{u}");
        for _ in 0..USER_LIMIT {
            held_now.push(open(&envoy, &user));
        }
        assert_error(&refused(&envoy, &user), 429, "websocket_user_limit");
    }
    let mut fresh = 0;
    while held_now.len() < INSTANCE_LIMIT {
        held_now.push(open(&envoy, &format!("fresh-{fresh}")));
        fresh += 1;
    }
    assert_error(&refused(&envoy, "one-too-many"), 503, "websocket_capacity");
    wait_held(&envoy, INSTANCE_LIMIT as u64);
    drop(held_now);
    wait_held(&envoy, 0);
}
