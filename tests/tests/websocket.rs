//! Issue 4, WebSocket limits, through a real Envoy (`--concurrency 2`) with real
//! WebSocket clients: exact instance, route and user limits under concurrent
//! bursts; the 401/404/429/503 replies; a released slot however a connection
//! ends; the per-connection limits (1009, 1008, idle, max duration); traffic
//! under the limits passing unchanged both ways; permessage-deflate refused so
//! sizes stay exact; jwt identity ignoring a spoofed header. (The churn of
//! 10,000 connections is in `churn.rs`, its own test binary, away from these
//! timing tests.)
//!
//! "Released" is checked three ways each time: the instance gauge
//! `edge_guard.websocket.active`, the route gauge
//! `edge_guard.route.<r>.websocket.active` and the status endpoint (which reads
//! the shared-data counts the admission uses) all return to 0, and new
//! connections are admitted again exactly up to the limit.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edge_guard_e2e::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const EVENTS: &str = "/ws/events";
const STATUS: &str = "/.edge-guard/status";
/// How long a release may take to show (it happens in the stream's own
/// callbacks; the 5 s reaper is only a backstop and must not be needed).
const RELEASE_WAIT: Duration = Duration::from_secs(3);

// ---- stacks -------------------------------------------------------------------------

/// `courses` (plain HTTP) and `events` (WebSocket, optional route limit), with
/// `websocket` as the policy's websocket section.
fn policy(route_limit: Option<u32>, websocket: Value) -> Value {
    let mut events =
        json!({"name": "events", "prefix": EVENTS, "cluster": "event_service", "websocket": true});
    if let Some(limit) = route_limit {
        events["max_connections"] = json!(limit);
    }
    json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service"},
            events,
        ],
        "websocket": websocket,
    })
}

/// The demo `event_service` behind an Envoy with the filter and `policy`.
fn stack(policy: Value) -> (Upstream, Envoy) {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy).upstream(&up).start();
    (up, envoy)
}

// ---- upgrades -----------------------------------------------------------------------

fn open(envoy: &Envoy, path: &str, user: &str) -> WsClient {
    envoy
        .websocket(path, &[("x-user-id", user)])
        .unwrap_or_else(|r| panic!("upgrade of {user} on {path} refused: {r:?}"))
}

fn refused(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> UpgradeRejected {
    match envoy.websocket(path, headers) {
        Ok(_) => panic!("upgrade on {path} with {headers:?} was admitted"),
        Err(r) => r,
    }
}

/// Asserts edge-guard's JSON error with `status` and `code`.
fn assert_error(r: &UpgradeRejected, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{r:?}"
    );
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{r:?}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
}

fn assert_capacity(r: &UpgradeRejected) {
    assert_error(r, 503, "websocket_capacity");
    // README: `retry-after: 5`.
    assert_eq!(r.header("retry-after"), Some("5"), "{r:?}");
}

fn assert_user_limit(r: &UpgradeRejected) {
    assert_error(r, 429, "websocket_user_limit");
}

/// The connection still carries traffic both ways.
fn assert_echo(ws: &mut WsClient, text: &str) {
    ws.send_text(text);
    assert_eq!(ws.expect_text(), text);
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

type Outcome = (usize, Result<WsClient, UpgradeRejected>);

/// What a burst of upgrades got, by client index.
struct Burst {
    /// Still open.
    admitted: Vec<(usize, WsClient)>,
    rejected: Vec<(usize, UpgradeRejected)>,
}

/// `n` clients upgrade at the same moment (a thread each, released together by
/// a barrier); client `i` uses `path_of(i)` and `user_of(i)`. Admitted
/// connections are returned open.
fn burst(
    envoy: &Envoy,
    n: usize,
    path_of: impl Fn(usize) -> String + Sync,
    user_of: impl Fn(usize) -> String + Sync,
) -> Burst {
    let barrier = Barrier::new(n);
    let outcomes: Vec<Outcome> = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, path_of, user_of) = (&barrier, &path_of, &user_of);
                s.spawn(move || {
                    let (path, user) = (path_of(i), user_of(i));
                    barrier.wait();
                    (i, envoy.websocket(&path, &[("x-user-id", &user)]))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("upgrade thread"))
            .collect()
    });
    let mut admitted = Vec::new();
    let mut rejected = Vec::new();
    for (i, outcome) in outcomes {
        match outcome {
            Ok(ws) => admitted.push((i, ws)),
            Err(r) => rejected.push((i, r)),
        }
    }
    Burst { admitted, rejected }
}

// ---- what is held -------------------------------------------------------------------

/// `[instance gauge, route gauge, status instance, status route]`.
fn held(envoy: &Envoy, route: &str) -> [Option<u64>; 4] {
    let stats = envoy.stats();
    let stat = |name: &str| {
        stats
            .get(name)
            .or_else(|| stats.get(&format!("wasmcustom.{name}")))
            .copied()
    };
    let status = envoy.get(STATUS);
    assert_eq!(status.status, 200, "{status:?}");
    let status = status.json();
    let route_active = status["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == route)
        .and_then(|r| r["websocket_connections"]["active"].as_u64());
    [
        stat("edge_guard.websocket.active"),
        stat(&format!("edge_guard.route.{route}.websocket.active")),
        status["websocket"]["active"].as_u64(),
        route_active,
    ]
}

/// Waits until the gauges and the status endpoint all say `n` open on `route`
/// and `n` on the instance.
fn wait_held(envoy: &Envoy, route: &str, n: u64) {
    wait_counts(envoy, route, n, n);
}

/// Waits until the instance gauge and status say `instance` open, and the
/// route gauge and status say `on_route`.
fn wait_counts(envoy: &Envoy, route: &str, instance: u64, on_route: u64) {
    let want = [
        Some(instance),
        Some(on_route),
        Some(instance),
        Some(on_route),
    ];
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        let seen = held(envoy, route);
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "[instance gauge, route gauge, status instance, status route] on {route}: \
             expected {want:?}, still {seen:?} after {RELEASE_WAIT:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap_or(0)
}

/// Opens `limit` connections on `path` (all admitted), shows the next one is
/// refused with 503, and returns the open ones.
fn fill(envoy: &Envoy, path: &str, limit: usize, tag: &str) -> Vec<WsClient> {
    let mut open_now: Vec<WsClient> = (0..limit)
        .map(|i| open(envoy, path, &format!("{tag}-{i}")))
        .collect();
    assert_capacity(&refused(
        envoy,
        path,
        &[("x-user-id", &format!("{tag}-extra"))],
    ));
    for ws in &mut open_now {
        assert_echo(ws, tag);
    }
    open_now
}

/// Reads until something other than a data message arrives.
fn drain_until_end(ws: &mut WsClient, timeout: Duration) -> (usize, WsEvent) {
    let deadline = Instant::now() + timeout;
    let mut messages = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv_timeout(left) {
            WsEvent::Text(_) | WsEvent::Binary(_) => messages += 1,
            end => return (messages, end),
        }
    }
}

fn is_end(event: &WsEvent) -> bool {
    matches!(event, WsEvent::Closed { .. } | WsEvent::Reset)
}

// ---- admission: exact limits under bursts ---------------------------------------------

#[test]
fn instance_limit_is_exact_under_a_burst_of_40_upgrades() {
    let (_up, envoy) = stack(policy(
        None,
        json!({"max_connections": 10, "max_connections_per_user": 10, "identity": {"header": "x-user-id"}}),
    ));
    for round in 0..2 {
        let Burst {
            mut admitted,
            rejected,
        } = burst(&envoy, 40, |_| EVENTS.into(), |i| format!("burst-{i}"));
        assert_eq!(
            admitted.len(),
            10,
            "round {round}: {} admitted, rejections: {rejected:?}",
            admitted.len()
        );
        for (_, r) in &rejected {
            assert_capacity(r);
        }
        wait_held(&envoy, "events", 10);
        if round == 1 {
            // Exact *across workers*: both took part in the bursts.
            for worker in ["worker_0", "worker_1"] {
                let upgrades: u64 = envoy
                    .stats()
                    .iter()
                    .filter(|(k, _)| {
                        k.starts_with("listener.")
                            && k.contains(&format!(".{worker}."))
                            && k.ends_with(".downstream_cx_total")
                    })
                    .map(|(_, v)| *v)
                    .sum();
                assert!(
                    upgrades > 0,
                    "{worker} accepted none of 80 connections: the bursts did not test exactness across workers"
                );
            }
        }
        for (i, ws) in &mut admitted {
            assert_echo(ws, &format!("hello from {i}"));
        }
        assert_eq!(
            counter(
                &envoy,
                "edge_guard.route.events.websocket.rejected.websocket_capacity"
            ),
            30 * (round + 1)
        );
        drop(admitted);
        // Everything released: the next round admits exactly 10 again.
        wait_held(&envoy, "events", 0);
    }
}

#[test]
fn route_limit_is_exact_under_a_burst_and_leaves_other_routes_alone() {
    let mut p = policy(Some(5), json!({"max_connections": 100}));
    p["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "chat", "prefix": "/ws/chat", "cluster": "event_service", "websocket": true}));
    let (_up, envoy) = stack(p);
    // 40 upgrades on events (limit 5) and 10 on chat (no route limit) at once.
    let Burst { admitted, rejected } = burst(
        &envoy,
        50,
        |i| {
            if i < 40 {
                EVENTS.into()
            } else {
                "/ws/chat".into()
            }
        },
        |i| format!("user-{i}"),
    );
    let events = admitted.iter().filter(|(i, _)| *i < 40).count();
    let chat = admitted.iter().filter(|(i, _)| *i >= 40).count();
    assert_eq!(events, 5, "events admitted; rejections: {rejected:?}");
    assert_eq!(chat, 10, "chat admitted; rejections: {rejected:?}");
    for (i, r) in &rejected {
        assert!(*i < 40, "chat upgrade {i} refused: {r:?}");
        assert_capacity(r);
    }
    wait_counts(&envoy, "events", 15, 5);
    wait_counts(&envoy, "chat", 15, 10);
    drop(admitted);
    wait_held(&envoy, "events", 0);
    wait_held(&envoy, "chat", 0);
    let again = fill(&envoy, EVENTS, 5, "again");
    drop(again);
    wait_held(&envoy, "events", 0);
}

#[test]
fn user_limit_is_exact_under_a_burst_and_429s_the_rest() {
    let (_up, envoy) = stack(policy(
        None,
        json!({"max_connections": 100, "max_connections_per_user": 3, "identity": {"header": "x-user-id"}, "require_identity": true}),
    ));
    // 4 users, 10 simultaneous upgrades each.
    let user_of = |i: usize| format!("user-{}", i % 4);
    let Burst { admitted, rejected } = burst(&envoy, 40, |_| EVENTS.into(), user_of);
    for u in 0..4 {
        let n = admitted.iter().filter(|(i, _)| i % 4 == u).count();
        assert_eq!(n, 3, "user-{u} admitted {n}; rejections: {rejected:?}");
    }
    assert_eq!(rejected.len(), 28);
    for (_, r) in &rejected {
        assert_user_limit(r);
    }
    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.rejected.websocket_user_limit"
        ),
        28
    );
    wait_held(&envoy, "events", 12);
    // Another user is not affected; user-0 gets exactly one more once one of its own closes.
    let other = open(&envoy, EVENTS, "user-other");
    let mut admitted = admitted;
    let pos = admitted.iter().position(|(i, _)| i % 4 == 0).unwrap();
    let (_, mut closing) = admitted.swap_remove(pos);
    closing.close(1000, "");
    assert!(is_end(&closing.recv()));
    drop(closing);
    wait_held(&envoy, "events", 12);
    let mut again = open(&envoy, EVENTS, "user-0");
    assert_echo(&mut again, "again");
    assert_user_limit(&refused(&envoy, EVENTS, &[("x-user-id", "user-0")]));
    drop((admitted, other, again));
    wait_held(&envoy, "events", 0);
}

#[test]
fn missing_identity_is_401_and_an_upgrade_to_a_plain_route_is_404() {
    let (up, envoy) = stack(policy(
        None,
        json!({"max_connections": 10, "max_connections_per_user": 2, "identity": {"header": "x-user-id"}, "require_identity": true}),
    ));
    assert_error(&refused(&envoy, EVENTS, &[]), 401, "identity_required");
    assert_error(
        &refused(&envoy, EVENTS, &[("x-other-id", "alice")]),
        401,
        "identity_required",
    );
    assert_error(
        &refused(&envoy, "/api/courses/live", &[("x-user-id", "alice")]),
        404,
        "route_not_found",
    );
    assert_eq!(
        up.requests(),
        0,
        "a refused upgrade must not reach the upstream"
    );
    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.rejected.identity_required"
        ),
        2
    );
    wait_held(&envoy, "events", 0);
    let mut ws = open(&envoy, EVENTS, "alice");
    assert_echo(&mut ws, "with identity");
}

// ---- release on every close path ------------------------------------------------------

#[test]
fn every_way_a_connection_ends_releases_its_slot() {
    const LIMIT: usize = 2;
    let up = Upstream::start("event_service");
    let mut p = policy(None, json!({"max_connections": LIMIT}));
    let routes = p["routes"].as_array_mut().unwrap();
    routes.push(
        json!({"name": "dead", "prefix": "/ws/dead", "cluster": "dead_service", "websocket": true}),
    );
    routes.push(json!({"name": "slow", "prefix": "/ws/slow", "cluster": "event_service", "websocket": true, "timeout": "quick"}));
    p["timeouts"] =
        json!({"classes": {"standard": "30s", "quick": "1s"}, "default_class": "standard"});
    let envoy = Envoy::builder(p)
        .upstream(&up)
        .dead_cluster("dead_service")
        .start();
    let upstream_open_is = |n: i64| {
        let deadline = Instant::now() + RELEASE_WAIT;
        while up.ws_open() != n {
            assert!(
                Instant::now() < deadline,
                "upstream still has {} open",
                up.ws_open()
            );
            thread::sleep(Duration::from_millis(50));
        }
    };

    // Client close handshake.
    for mut ws in fill(&envoy, EVENTS, LIMIT, "client-close") {
        ws.close(1000, "bye");
        let end = ws.recv();
        assert!(matches!(end, WsEvent::Closed { code: 1000, .. }), "{end:?}");
    }
    wait_held(&envoy, "events", 0);
    upstream_open_is(0);

    // Client TCP drop (FIN without a close frame).
    drop(fill(&envoy, EVENTS, LIMIT, "client-fin"));
    wait_held(&envoy, "events", 0);
    upstream_open_is(0);

    // Client TCP reset.
    for ws in fill(&envoy, EVENTS, LIMIT, "client-rst") {
        reset_tcp(ws);
    }
    wait_held(&envoy, "events", 0);
    upstream_open_is(0);

    // Upstream closes (close frame 1000).
    for mut ws in fill(&envoy, EVENTS, LIMIT, "upstream-close") {
        ws.send_text("__close");
        let end = ws.recv();
        assert!(matches!(end, WsEvent::Closed { code: 1000, .. }), "{end:?}");
    }
    wait_held(&envoy, "events", 0);

    // Upstream resets its TCP connection.
    for mut ws in fill(&envoy, EVENTS, LIMIT, "upstream-rst") {
        ws.send_text("__reset");
        assert_eq!(ws.recv(), WsEvent::Reset);
    }
    wait_held(&envoy, "events", 0);
    upstream_open_is(0);

    // Upstream refuses the upgrade: its 403 comes back, no slot is kept.
    for i in 0..3 * LIMIT {
        let r = refused(
            &envoy,
            &format!("{EVENTS}?refuse_upgrade=1"),
            &[("x-user-id", &format!("refused-{i}"))],
        );
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.text().contains("refused"), "{r:?}");
    }
    wait_held(&envoy, "events", 0);

    // Upstream down (nothing listens on the cluster's port): Envoy's 503, no slot kept.
    for i in 0..3 * LIMIT {
        let r = refused(&envoy, "/ws/dead", &[("x-user-id", &format!("down-{i}"))]);
        assert_eq!(r.status, 503, "{r:?}");
        assert_ne!(
            r.error_code().as_deref(),
            Some("websocket_capacity"),
            "{r:?}"
        );
    }
    wait_held(&envoy, "dead", 0);
    wait_held(&envoy, "events", 0);

    // Upstream too slow to answer the upgrade: edge-guard's own 504 (a local
    // reply from the tick) for every upgrade holding a slot, and no slot kept.
    let Burst {
        admitted,
        rejected: timed_out,
    } = burst(
        &envoy,
        LIMIT,
        |_| "/ws/slow?delay_ms=3000".into(),
        |i| format!("slow-{i}"),
    );
    assert!(admitted.is_empty(), "a delayed upgrade was admitted");
    for (_, r) in &timed_out {
        assert_error(r, 504, "upstream_timeout");
    }
    wait_held(&envoy, "slow", 0);

    // All of the above left the full limit free.
    let last = fill(&envoy, EVENTS, LIMIT, "after-all");
    wait_held(&envoy, "events", LIMIT as u64);
    drop(last);
    wait_held(&envoy, "events", 0);
    assert!(
        !envoy.log_contains("vanished websocket stream"),
        "a slot was only released by the reaper:\n{}",
        envoy.log_tail(40)
    );
}

// ---- per-connection limits ------------------------------------------------------------

fn limits_policy() -> Value {
    policy(
        None,
        json!({
            "max_connections": 3,
            "max_message_bytes": 65536,
            "max_messages_per_second": 20,
            "idle_timeout": "30s",
        }),
    )
}

/// A close from the filter reaches the client with `code`, and the slot is back.
fn assert_closed_with(ws: &mut WsClient, code: u16) {
    let (_, end) = drain_until_end(ws, Duration::from_secs(5));
    assert!(
        matches!(&end, WsEvent::Closed { code: c, .. } if *c == code),
        "expected close {code}, got {end:?}"
    );
}

#[test]
fn oversize_messages_get_1009_from_either_side_and_release_the_slot() {
    let (_up, envoy) = stack(limits_policy());

    // One client message over the limit.
    let mut ws = open(&envoy, EVENTS, "big-client");
    assert_echo(&mut ws, "fine");
    ws.send_binary(&vec![7u8; 100_000]);
    assert_closed_with(&mut ws, 1009);
    drop(ws);
    wait_held(&envoy, "events", 0);

    // A fragmented client message whose fragments are each under the limit.
    let mut ws = open(&envoy, EVENTS, "big-fragments");
    let part = vec![1u8; 40_000];
    let mut frames = raw_frame(0x2, false, &part);
    frames.extend(raw_frame(0x0, false, &part));
    frames.extend(raw_frame(0x0, true, &part));
    ws.send_raw(&frames);
    assert_closed_with(&mut ws, 1009);
    drop(ws);
    wait_held(&envoy, "events", 0);

    // One upstream message over the limit.
    let mut ws = open(&envoy, EVENTS, "big-upstream");
    ws.send_text("__big 100000");
    assert_closed_with(&mut ws, 1009);
    drop(ws);
    wait_held(&envoy, "events", 0);

    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.closed.message_too_big"
        ),
        3
    );
    drop(fill(&envoy, EVENTS, 3, "after-1009"));
    wait_held(&envoy, "events", 0);
}

#[test]
fn a_flood_over_max_messages_per_second_gets_1008_and_releases_the_slot() {
    let (_up, envoy) = stack(limits_policy());
    let mut ws = open(&envoy, EVENTS, "flooder");
    for i in 0..100 {
        if ws
            .try_send(tungstenite::Message::text(format!("m{i}")))
            .is_err()
        {
            break;
        }
    }
    let (echoed, end) = drain_until_end(&mut ws, Duration::from_secs(5));
    assert!(
        matches!(end, WsEvent::Closed { code: 1008, .. }),
        "expected close 1008 after {echoed} echoes, got {end:?}"
    );
    // The bucket holds one second's worth (20) and refills at 20/s.
    assert!(echoed <= 25, "{echoed} messages passed a 20/s limit");
    drop(ws);
    wait_held(&envoy, "events", 0);
    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.closed.rate_limited"
        ),
        1
    );

    // A steady sender under the rate is never cut.
    let mut ws = open(&envoy, EVENTS, "steady");
    for i in 0..30 {
        assert_echo(&mut ws, &format!("steady {i}"));
        thread::sleep(Duration::from_millis(70));
    }
    drop(ws);
    drop(fill(&envoy, EVENTS, 3, "after-1008"));
    wait_held(&envoy, "events", 0);
}

/// Polls the instance gauge until the filter has let go of every connection;
/// returns how long after `since` that was.
fn released_after(envoy: &Envoy, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy.stat("edge_guard.websocket.active") != Some(0) {
        assert!(Instant::now() < deadline, "the slot was never released");
        thread::sleep(Duration::from_millis(20));
    }
    since.elapsed()
}

#[test]
fn idle_and_max_duration_end_the_connection_near_their_limit() {
    const IDLE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(2);
    // The filter checks its timers every 50 ms tick and then resets the stream.
    const TICK: Duration = Duration::from_millis(50);
    // After a reset Envoy's HTTP/1 codec closes the client's socket only after
    // the HCM's delayed_close_timeout (default 1 s, left at the default here as
    // in envoy/envoy.yaml): the client sees the end that much after the teardown.
    const DELAYED_CLOSE: Duration = Duration::from_secs(1);
    // Scheduling on a busy 2-core machine.
    const SLACK: Duration = Duration::from_millis(500);
    // The test's clock starts after the filter's (at the 101), and the filter's
    // cached clock may lag by a tick.
    const EARLY: Duration = Duration::from_millis(100);
    let (_up, envoy) = stack(policy(
        None,
        json!({"max_connections": 2, "idle_timeout": "1s", "max_duration": "2s"}),
    ));

    // Idle: traffic at 0.6 s restarts the idle clock; then nothing flows.
    let mut ws = open(&envoy, EVENTS, "idle");
    let opened = Instant::now();
    thread::sleep(Duration::from_millis(600));
    assert_echo(&mut ws, "still here");
    let last_traffic = Instant::now();
    let teardown = released_after(&envoy, last_traffic);
    assert!(
        teardown >= IDLE - EARLY && teardown <= IDLE + TICK + SLACK,
        "idle connection torn down {teardown:?} after its last message (idle_timeout {IDLE:?})"
    );
    let end = ws.recv_timeout(IDLE + DELAYED_CLOSE + Duration::from_secs(3));
    let quiet = last_traffic.elapsed();
    assert!(is_end(&end), "idle connection not ended: {end:?}");
    assert!(
        quiet <= IDLE + TICK + DELAYED_CLOSE + SLACK,
        "the client saw the idle connection end {quiet:?} after its last message \
         (torn down after {teardown:?}, idle_timeout {IDLE:?})"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "traffic did not restart the idle clock"
    );
    drop(ws);
    wait_held(&envoy, "events", 0);

    // Max duration: busy all along (a message every 50 ms), still ended at 2 s,
    // and since traffic flows the close frames ride on it: the client gets 1001.
    let mut ws = open(&envoy, EVENTS, "long");
    let opened = Instant::now();
    let (teardown, (end, lived)) = thread::scope(|s| {
        let client = s.spawn(|| {
            let end = loop {
                if ws.try_send(tungstenite::Message::text("tick")).is_err() {
                    break ws.recv_timeout(Duration::from_secs(3));
                }
                match ws.recv_timeout(MAX + DELAYED_CLOSE + Duration::from_secs(3)) {
                    WsEvent::Text(_) => thread::sleep(Duration::from_millis(50)),
                    other => break other,
                }
            };
            (end, opened.elapsed())
        });
        let teardown = released_after(&envoy, opened);
        (teardown, client.join().expect("client thread"))
    });
    assert!(
        teardown >= MAX - EARLY && teardown <= MAX + TICK + SLACK,
        "busy connection torn down {teardown:?} after opening (max_duration {MAX:?})"
    );
    assert!(
        matches!(&end, WsEvent::Closed { code: 1001, .. }),
        "a busy connection past max_duration should get close 1001, got {end:?}"
    );
    assert!(
        lived <= MAX + TICK + DELAYED_CLOSE + SLACK,
        "the client saw the connection end {lived:?} after opening \
         (torn down after {teardown:?}, max_duration {MAX:?})"
    );
    drop(ws);
    wait_held(&envoy, "events", 0);

    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.closed.idle_timeout"
        ),
        1
    );
    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.closed.max_duration"
        ),
        1
    );
    let again = fill(&envoy, EVENTS, 2, "after-timers");
    drop(again);
    wait_held(&envoy, "events", 0);
}

#[test]
fn messages_under_the_limits_pass_unchanged_both_ways() {
    const LIMIT: usize = 2 * 1024 * 1024;
    let (_up, envoy) = stack(policy(
        None,
        json!({
            "max_connections": 4,
            "max_message_bytes": LIMIT,
            "max_messages_per_second": 1000,
            "idle_timeout": "30s",
            "max_duration": "1h",
        }),
    ));
    let mut ws = open(&envoy, EVENTS, "alice");

    assert_echo(&mut ws, "héllo wörld ✓");
    let all_bytes: Vec<u8> = (0..=255).collect();
    ws.send_binary(&all_bytes);
    assert_eq!(ws.expect_binary(), all_bytes);

    // Fragmented text with a ping between the fragments; fragmented binary.
    let mut frames = raw_frame(0x1, false, "frag".as_bytes());
    frames.extend(raw_frame(0x9, true, b"ping"));
    frames.extend(raw_frame(0x0, false, "mén".as_bytes()));
    frames.extend(raw_frame(0x0, true, "ted ✓".as_bytes()));
    ws.send_raw(&frames);
    assert_eq!(ws.expect_text(), "fragménted ✓");
    let mut frames = raw_frame(0x2, false, &[1, 2, 3]);
    frames.extend(raw_frame(0x0, true, &[4, 5]));
    ws.send_raw(&frames);
    assert_eq!(ws.expect_binary(), vec![1, 2, 3, 4, 5]);

    // Fifty messages coalesced into one write come back in order.
    let batch: Vec<u8> = (0..50)
        .flat_map(|i| raw_frame(0x1, true, format!("n{i}").as_bytes()))
        .collect();
    ws.send_raw(&batch);
    for i in 0..50 {
        assert_eq!(ws.expect_text(), format!("n{i}"));
    }

    // About 1 MiB, and exactly the limit, from the client (echoed back).
    for len in [1_000_003, LIMIT] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        ws.send_binary(&payload);
        let back = ws.expect_binary();
        assert!(back == payload, "{len}-byte message changed on the way");
    }
    // About 1 MiB, and exactly the limit, from the upstream.
    for len in [1_048_000, LIMIT] {
        ws.send_text(&format!("__big {len}"));
        let back = ws.expect_binary();
        assert!(
            back == edge_guard_e2e::ws::big_payload(len),
            "{len}-byte upstream message changed"
        );
    }
    assert_echo(&mut ws, "still open");
    let closes: u64 = envoy
        .stats()
        .iter()
        .filter(|(k, _)| k.contains("edge_guard.route.events.websocket.closed."))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(closes, 0, "the filter closed something");
    ws.close(1000, "");
    assert!(matches!(ws.recv(), WsEvent::Closed { code: 1000, .. }));
    drop(ws);
    wait_held(&envoy, "events", 0);
}

// ---- permessage-deflate ---------------------------------------------------------------

/// An upstream that accepts one WebSocket upgrade (no extensions) and sends
/// the request head it received to the returned channel.
fn head_recording_upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut out: TcpStream = stream;
        let _ = write!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        );
        let _ = tx.send(head);
        // Hold the connection until Envoy closes it.
        let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
    });
    (port, rx)
}

/// The `sec-websocket-extensions` the upstream saw when a client offered
/// permessage-deflate, under `websocket`.
fn extensions_seen_upstream(websocket: Value) -> Option<String> {
    let (port, heads) = head_recording_upstream();
    let envoy = Envoy::builder(policy(None, websocket))
        .cluster_at_port("event_service", port)
        .start();
    let ws = envoy
        .websocket(
            EVENTS,
            &[(
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            )],
        )
        .expect("upgrade");
    assert!(
        !ws.response_headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions")),
        "{:?}",
        ws.response_headers
    );
    let head = heads
        .recv_timeout(Duration::from_secs(5))
        .expect("upstream saw the upgrade");
    drop(ws);
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_string())
    })
}

#[test]
fn permessage_deflate_is_stripped_when_message_sizes_are_limited() {
    assert_eq!(
        extensions_seen_upstream(json!({"max_message_bytes": 65536})),
        None,
        "with max_message_bytes the offer must not reach the upstream (sizes would be compressed)"
    );
    // Control: without a size limit the offer goes through, so the check above can fail.
    assert_eq!(
        extensions_seen_upstream(json!({"max_connections": 5})).as_deref(),
        Some("permessage-deflate; client_max_window_bits")
    );
}

// ---- jwt identity ---------------------------------------------------------------------

const JWT_SECRET: &[u8] = b"edge-guard-e2e-hs256-secret-0123456789";
const JWT_ISSUER: &str = "edge-guard-e2e";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 token for `sub`, valid for an hour.
fn token(sub: &str, secret: &[u8]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64(json!({"iss": JWT_ISSUER, "sub": sub, "exp": exp})
        .to_string()
        .as_bytes());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

fn jwt_authn_filter() -> String {
    let jwks = json!({"keys": [{"kty": "oct", "alg": "HS256", "k": b64(JWT_SECRET)}]}).to_string();
    format!(
        r#"
name: envoy.filters.http.jwt_authn
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
  providers:
    test:
      issuer: {JWT_ISSUER}
      local_jwks: {{inline_string: {}}}
      payload_in_metadata: jwt_payload
  rules:
  - match: {{prefix: /}}
    requires:
      requires_any:
        requirements:
        - provider_name: test
        - allow_missing: {{}}
"#,
        serde_json::to_string(&jwks).unwrap()
    )
}

#[test]
fn jwt_identity_counts_the_verified_claim_and_ignores_a_spoofed_header() {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy(
        None,
        json!({
            "max_connections": 10,
            "max_connections_per_user": 1,
            "identity": {"jwt": {"payload_key": "jwt_payload", "claim": "sub"}},
            "require_identity": true,
        }),
    ))
    .upstream(&up)
    .http_filter_yaml(&jwt_authn_filter())
    .start();
    let bearer = |sub: &str| format!("Bearer {}", token(sub, JWT_SECRET));

    let mut alice = envoy
        .websocket(
            EVENTS,
            &[
                ("authorization", &bearer("alice")),
                ("x-user-id", "mallory"),
            ],
        )
        .unwrap_or_else(|r| panic!("alice's first connection refused: {r:?}"));
    assert_echo(&mut alice, "alice 1");
    // Alice again, claiming to be someone else in the header: still alice.
    assert_user_limit(&refused(
        &envoy,
        EVENTS,
        &[("authorization", &bearer("alice")), ("x-user-id", "carol")],
    ));
    // Another verified user is admitted.
    let mut bob = envoy
        .websocket(
            EVENTS,
            &[("authorization", &bearer("bob")), ("x-user-id", "alice")],
        )
        .unwrap_or_else(|r| panic!("bob refused: {r:?}"));
    assert_echo(&mut bob, "bob 1");
    // No token: the header alone is no identity.
    assert_error(
        &refused(&envoy, EVENTS, &[("x-user-id", "bob")]),
        401,
        "identity_required",
    );
    // A token signed with another key never reaches the filter.
    let forged = format!(
        "Bearer {}",
        token("erin", b"not-the-secret-not-the-secret!!")
    );
    let r = refused(&envoy, EVENTS, &[("authorization", &forged)]);
    assert_eq!(r.status, 401, "{r:?}");
    // jwt_authn's own 401, in the JSON shape the shipped local_reply_config
    // gives Envoy's replies: not edge-guard's identity_required.
    assert_eq!(
        r.error_code().as_deref(),
        Some("unauthenticated"),
        "edge-guard answered, not jwt_authn: {r:?}"
    );
    wait_held(&envoy, "events", 2);

    // Alice's slot comes back when she leaves.
    drop(alice);
    wait_held(&envoy, "events", 1);
    let mut alice = envoy
        .websocket(EVENTS, &[("authorization", &bearer("alice"))])
        .unwrap_or_else(|r| panic!("alice refused after closing: {r:?}"));
    assert_echo(&mut alice, "alice 2");
    drop((alice, bob));
    wait_held(&envoy, "events", 0);
}
