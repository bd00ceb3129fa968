//! The backstops no correct Envoy reaches, triggered end to end through a real
//! Envoy running the fault-injection build (`paths::fault_wasm()`, see
//! `src/filter/fault.rs`): a stream that ends without releasing its slot in
//! `on_log`/`on_done`/drop (only the reaper can give it back), and a host that
//! does not hand over the body bytes it announced (close 1011).

use edge_guard_e2e::*;
use std::thread;
use std::time::{Duration, Instant};

const EVENTS: &str = "/ws/events";
const STATUS: &str = "/.edge-guard/status";
const FAULT: &str = "x-edge-guard-fault";
/// README (WebSocket limits): "a reaper on the tick that checks every held
/// slot's stream every 5 s".
const REAP_EVERY: Duration = Duration::from_secs(5);
/// The reaper runs on the 50 ms tick, plus what a loaded machine adds to a
/// timer and to reading the gauges back.
const REAP_SLACK: Duration = Duration::from_millis(500);
/// The filter's tick (`src/filter/root.rs`), on which the reaper runs.
const TICK: Duration = Duration::from_millis(50);
const REAPED: &str = "releasing the slot of vanished websocket stream #";

fn policy(limit: u32) -> Value {
    json!({
        "routes": [
            {"name": "events", "prefix": EVENTS, "cluster": "event_service", "websocket": true},
        ],
        "websocket": {"max_connections": limit},
    })
}

fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap_or(0)
}

/// `[instance gauge, route gauge, status endpoint's shared count]`.
fn held(envoy: &Envoy) -> [Option<u64>; 3] {
    let stats = envoy.stats();
    let stat = |name: &str| {
        stats
            .get(name)
            .or_else(|| stats.get(&format!("wasmcustom.{name}")))
            .copied()
    };
    let status = envoy.get(STATUS);
    assert_eq!(status.status, 200, "{status:?}");
    [
        stat("edge_guard.websocket.active"),
        stat("edge_guard.route.events.websocket.active"),
        status.json()["websocket"]["active"].as_u64(),
    ]
}

/// Polls until every count says `n`; returns when that was first seen.
fn wait_held(envoy: &Envoy, n: u64, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let seen = held(envoy);
        if seen == [Some(n); 3] {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "[instance gauge, route gauge, status] expected {n}, still {seen:?} after {within:?}\n{}",
            envoy.log_tail(30)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn upgrade(envoy: &Envoy, headers: &[(&str, &str)]) -> WsClient {
    let mut ws = envoy
        .websocket(EVENTS, headers)
        .unwrap_or_else(|r| panic!("upgrade with {headers:?} refused: {r:?}"));
    ws.send_text("hello");
    assert_eq!(ws.expect_text(), "hello");
    ws
}

fn assert_full(envoy: &Envoy) {
    match envoy.websocket(EVENTS, &[]) {
        Ok(_) => panic!("an upgrade beyond the limit was admitted"),
        Err(r) => {
            assert_eq!(r.status, 503, "{r:?}");
            assert_eq!(
                r.error_code().as_deref(),
                Some("websocket_capacity"),
                "{r:?}"
            );
        }
    }
}

/// Ends the connection cleanly from the client (close handshake, then FIN):
/// Envoy ends the stream; the fault makes it keep its slot.
fn end(mut ws: WsClient) {
    ws.close(1000, "bye");
    let answer = ws.recv_timeout(Duration::from_secs(3));
    assert!(
        matches!(answer, WsEvent::Closed { code: 1000, .. }),
        "close handshake: {answer:?}"
    );
}

/// The stream ids the fault-injection build marked, in order.
fn marked_streams(envoy: &Envoy) -> Vec<u32> {
    envoy
        .log()
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("fault injection: stream #")?;
            rest.split(' ').next()?.parse().ok()
        })
        .collect()
}

/// The reaper's log lines for stream `id`, as milliseconds of the day from
/// Envoy's own timestamp (`[YYYY-MM-DD HH:MM:SS.mmm]`).
fn reaped_at(envoy: &Envoy, id: u32) -> Vec<u64> {
    let needle = format!("{REAPED}{id}");
    envoy
        .log()
        .lines()
        .filter(|l| l.ends_with(&needle))
        .map(|l| {
            let time = l
                .get(12..24)
                .unwrap_or_else(|| panic!("no timestamp in {l:?}"));
            let field = |r: std::ops::Range<usize>| -> u64 {
                time.get(r)
                    .and_then(|f| f.parse().ok())
                    .unwrap_or_else(|| panic!("bad timestamp in {l:?}"))
            };
            ((field(0..2) * 60 + field(3..5)) * 60 + field(6..8)) * 1000 + field(9..12)
        })
        .collect()
}

/// The slot came back through the reaper: its line for stream `id` is logged.
fn wait_reaped(envoy: &Envoy, id: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while reaped_at(envoy, id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the slot came back without the reaper's line for #{id}:\n{}",
            envoy.log_tail(30)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Two connections hold both slots and end without releasing them (the
/// fault skips `on_log`/`on_done`/drop's release). The reaper releases each
/// within 5 s of its end, logging the stream by id, and on one worker its
/// passes are 5 s apart; afterwards exactly the two slots are admitted again.
#[test]
fn the_reaper_releases_the_slot_of_a_stream_that_ended_without_releasing_it_within_5s() {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy(2))
        .upstream(&up)
        // One worker: both streams are on the same reaper's schedule.
        .concurrency(1)
        .wasm(paths::fault_wasm())
        .start();
    let first = upgrade(&envoy, &[(FAULT, "no-release")]);
    let second = upgrade(&envoy, &[(FAULT, "no-release")]);
    wait_held(&envoy, 2, Duration::from_secs(3));
    assert_full(&envoy);
    // The log file is flushed every 50 ms, and not always that soon.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut ids = marked_streams(&envoy);
    while ids.len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        ids = marked_streams(&envoy);
    }
    assert_eq!(
        ids.len(),
        2,
        "marked streams {ids:?}\n{}",
        envoy.log_tail(30)
    );
    let (first_id, second_id) = (ids[0], ids[1]);

    end(first);
    let first_ended = Instant::now();
    let first_released = wait_held(&envoy, 1, REAP_EVERY + REAP_SLACK + Duration::from_secs(2));
    let took = first_released - first_ended;
    wait_reaped(&envoy, first_id);
    assert!(
        took <= REAP_EVERY + REAP_SLACK,
        "the reaper released stream #{first_id} {took:?} after it ended (README: every {REAP_EVERY:?})"
    );

    // Ended right after the first pass: released by the next one, 5 s later.
    end(second);
    let second_ended = Instant::now();
    let second_released = wait_held(&envoy, 0, REAP_EVERY + REAP_SLACK + Duration::from_secs(2));
    let took = second_released - second_ended;
    wait_reaped(&envoy, second_id);
    assert!(
        took <= REAP_EVERY + REAP_SLACK,
        "the reaper released stream #{second_id} {took:?} after it ended (README: every {REAP_EVERY:?})"
    );
    let (first_at, second_at) = (reaped_at(&envoy, first_id), reaped_at(&envoy, second_id));
    assert_eq!(
        (first_at.len(), second_at.len()),
        (1, 1),
        "each stream reaped once"
    );
    // Across midnight the second time of day is the smaller.
    let gap = (second_at[0] + 86_400_000 - first_at[0]) % 86_400_000;
    let gap = Duration::from_millis(gap);
    eprintln!(
        "reaped #{first_id} {:?} after its end, #{second_id} {took:?} after; passes {gap:?} apart",
        first_released - first_ended
    );
    // A pass is due 5 s after the clock reading of the one before; Envoy
    // stamps the log line a little later than that reading (ms resolution),
    // by up to a tick when the worker is preempted in between: one tick of
    // tolerance below, which still tells 5 s from anything shorter.
    assert!(
        gap >= REAP_EVERY - TICK && gap <= REAP_EVERY + REAP_SLACK,
        "the reaper's passes were {gap:?} apart (README: every {REAP_EVERY:?})"
    );

    // Exactly the two slots are back, not one more.
    let _again = [upgrade(&envoy, &[]), upgrade(&envoy, &[])];
    assert_full(&envoy);
    wait_held(&envoy, 2, Duration::from_secs(3));
}

/// A client frame whose bytes the host reports unavailable, as a host that
/// announced a body it does not hand over: the filter cannot check the frame,
/// so it ends the connection with 1011 `internal_error` (the client gets the
/// close through the echoing upstream), counts it, and releases the slot.
#[test]
fn body_bytes_the_host_announced_but_withholds_close_the_websocket_with_1011_internal_error() {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy(4))
        .upstream(&up)
        .wasm(paths::fault_wasm())
        .start();
    let mut ws = upgrade(&envoy, &[]);
    wait_held(&envoy, 1, Duration::from_secs(3));

    // An all-zero mask key: the marker travels as is.
    let marker = b"edge-guard-fault:unavailable";
    let mut frame = vec![0x81, 0x80 | marker.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(marker);
    ws.send_raw(&frame);
    let end = ws.recv_timeout(Duration::from_secs(3));
    match &end {
        WsEvent::Closed { code, reason } => {
            assert_eq!(
                (*code, reason.as_str()),
                (1011, "internal_error"),
                "{end:?}"
            );
        }
        other => panic!("expected close 1011, got {other:?}\n{}", envoy.log_tail(30)),
    }
    assert!(
        envoy.log_contains("fault injection: body bytes reported unavailable"),
        "the fault did not fire:\n{}",
        envoy.log_tail(30)
    );
    drop(ws);
    wait_held(&envoy, 0, Duration::from_secs(3));
    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.closed.internal_error"
        ),
        1
    );
    assert_eq!(
        counter(
            &envoy,
            "edge_guard.route.events.websocket.closed.protocol_error"
        ),
        0
    );
    // Other connections carry on.
    let _next = upgrade(&envoy, &[]);
}

/// The release wasm has none of it: every trigger above is ordinary traffic
/// (the slot released at once by the stream itself, the markers echoed).
#[test]
fn the_release_wasm_ignores_every_fault_trigger() {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy(4)).upstream(&up).start();
    let mut ws = upgrade(&envoy, &[(FAULT, "no-release")]);
    let _trap = upgrade(&envoy, &[(FAULT, "trap")]);
    wait_held(&envoy, 2, Duration::from_secs(3));
    for marker in [
        &b"edge-guard-fault:unavailable"[..],
        &b"edge-guard-fault:trap"[..],
    ] {
        let mut frame = vec![0x81, 0x80 | marker.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(marker);
        ws.send_raw(&frame);
        assert_eq!(ws.expect_text().as_bytes(), marker);
    }
    end(ws);
    // Released by the stream's own callbacks, well before any reaper pass.
    wait_held(&envoy, 1, Duration::from_secs(1));
    assert!(
        !envoy.log_contains("vanished websocket stream") && !envoy.log_contains("fault injection"),
        "{}",
        envoy.log_tail(30)
    );
}
