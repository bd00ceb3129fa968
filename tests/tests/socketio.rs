//! Issue 15 through a real Envoy with real JavaScript peers (Node `ws`,
//! `socket.io` 4.8, `socket.io-client` 4.8, run by `tests/node/*.js`):
//! compressed WebSockets (permessage-deflate) in both directions with and
//! without `max_message_bytes`, and Engine.IO sessions as the unit of the
//! WebSocket limits.

use edge_guard_e2e::*;
use std::time::Duration;

const EVENTS: &str = "/ws/events";

fn events_policy(websocket: Value) -> Value {
    json!({
        "routes": [
            {"name": "events", "prefix": EVENTS, "cluster": "event_service", "websocket": true},
        ],
        "websocket": websocket,
    })
}

// ---- permessage-deflate ---------------------------------------------------------------

/// A Node `ws` echo upstream that compresses every message, behind Envoy with
/// `websocket` as the policy's websocket section.
fn deflate_stack(websocket: Value) -> (ScriptProcess, Envoy) {
    let upstream = ScriptProcess::node("ws_deflate_server.js", &[], &[]);
    let port = upstream.listening_port();
    let envoy = Envoy::builder(events_policy(websocket))
        .cluster_at_port("event_service", port)
        .start();
    (upstream, envoy)
}

/// The two compressing clients: Node `ws` and Python `websockets`, each with
/// its default permessage-deflate offer.
#[derive(Debug, Clone, Copy)]
enum Client {
    NodeWs,
    PythonWebsockets,
}

/// Runs `client` sending one message of each size (each echoed back,
/// compressed by the upstream when negotiated); its JSON report.
fn deflate_client(envoy: &Envoy, client: Client, sizes: &[usize]) -> Value {
    let url = format!("ws://{}{EVENTS}", envoy.addr());
    let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    let mut args = vec![url.as_str()];
    args.extend(sizes.iter().map(String::as_str));
    let process = match client {
        Client::NodeWs => ScriptProcess::node("ws_deflate_client.js", &args, &[]),
        Client::PythonWebsockets => ScriptProcess::python("ws_deflate_client.py", &args),
    };
    process.expect_json(Duration::from_secs(30))
}

fn downstream_bytes(envoy: &Envoy) -> (u64, u64) {
    (
        envoy
            .stat("http.ingress.downstream_cx_rx_bytes_total")
            .unwrap_or(0),
        envoy
            .stat("http.ingress.downstream_cx_tx_bytes_total")
            .unwrap_or(0),
    )
}

#[test]
fn compressed_messages_pass_both_ways_without_a_size_limit() {
    for client in [Client::NodeWs, Client::PythonWebsockets] {
        let (_upstream, envoy) = deflate_stack(json!({"max_messages_per_second": 100}));
        let sizes = [10, 2_000, 200_000, 1_000_000, 5];
        let report = deflate_client(&envoy, client, &sizes);
        assert_eq!(report["error"], Value::Null, "{client:?}: {report}");
        assert!(
            report["extensions"]
                .as_str()
                .is_some_and(|e| e.contains("permessage-deflate")),
            "{client:?} negotiated compression through Envoy: {report}"
        );
        assert!(
            report["offer"]
                .as_str()
                .is_some_and(|o| o.contains("permessage-deflate")),
            "{client:?}: {report}"
        );
        assert_eq!(report["echoed"], json!(sizes), "{client:?}: {report}");
        assert_eq!(report["close"], json!(1000), "{client:?}: {report}");
        // The 1.2 MB each way crossed Envoy compressed (RSV1 frames): the
        // client's connection carried a small fraction of it.
        let (rx, tx) = downstream_bytes(&envoy);
        assert!(rx < 200_000 && tx < 200_000, "{client:?}: rx {rx} tx {tx}");
        let closed: u64 = envoy
            .stats()
            .iter()
            .filter(|(k, _)| k.contains("websocket.closed."))
            .map(|(_, v)| *v)
            .sum();
        assert_eq!(closed, 0, "{client:?}: the filter closed nothing");
    }
}

#[test]
fn with_a_size_limit_nothing_is_compressed_and_real_bytes_count() {
    for client in [Client::NodeWs, Client::PythonWebsockets] {
        let (_upstream, envoy) = deflate_stack(json!({"max_message_bytes": 65536}));
        // Under the limit: the same client works, uncompressed (the offer
        // never reached the upstream).
        let report = deflate_client(&envoy, client, &[10, 65_536]);
        assert_eq!(report["error"], Value::Null, "{client:?}: {report}");
        assert_eq!(report["offer"], json!(""), "{client:?}: {report}");
        assert_eq!(report["extensions"], json!(""), "{client:?}: {report}");
        assert_eq!(
            report["echoed"],
            json!([10, 65_536]),
            "{client:?}: {report}"
        );
        assert_eq!(report["close"], json!(1000), "{client:?}: {report}");
        // Over it: 70,000 bytes that would deflate to a few hundred are
        // refused with 1009: the limit counts what the application sent.
        let report = deflate_client(&envoy, client, &[70_000]);
        assert_eq!(report["echoed"], json!([]), "{client:?}: {report}");
        assert_eq!(report["close"], json!(1009), "{client:?}: {report}");
        assert_eq!(
            envoy.wait_for_stat(
                "edge_guard.route.events.websocket.closed.message_too_big",
                Duration::from_secs(3),
                |v| v == 1
            ),
            Some(1),
            "{client:?}"
        );
    }
}

// ---- Engine.IO sessions with socket.io 4.8 -------------------------------------------

const SIO: &str = "/socket.io";
const ACTIVE: &str = "edge_guard.route.sio.websocket.active";

/// The demo socket.io service (`demo/socketio/server.js`) behind Envoy: route
/// `sio` (prefix `/socket.io`, class `class`) with `engine_io`, users by
/// `x-user-id`, per-user limit 3, instance limit 10, and `extra` merged into
/// the websocket section.
struct SioStack {
    server: ScriptProcess,
    server_port: u16,
    envoy: Envoy,
}

fn sio_stack(engine_io: Option<Value>, class: &str, ping_ms: (u64, u64), extra: Value) -> SioStack {
    let (interval, timeout) = (ping_ms.0.to_string(), ping_ms.1.to_string());
    let server = ScriptProcess::node(
        "../../demo/socketio/server.js",
        &[],
        &[
            ("PING_INTERVAL_MS", &interval),
            ("PING_TIMEOUT_MS", &timeout),
        ],
    );
    let server_port = server.listening_port();
    let mut route = json!({"name": "sio", "prefix": SIO, "cluster": "socketio_service",
        "websocket": true, "timeout": class});
    if let Some(eio) = engine_io {
        route["engine_io"] = eio;
    }
    let mut websocket = json!({
        "max_connections": 10,
        "max_connections_per_user": 3,
        "identity": {"header": "x-user-id"},
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        websocket[k] = v.clone();
    }
    let policy = json!({
        "routes": [route],
        "timeouts": {"classes": {"standard": "30s", "notification": "5s"}},
        "websocket": websocket,
    });
    let envoy = Envoy::builder(policy)
        .cluster_at_port("socketio_service", server_port)
        .start();
    SioStack {
        server,
        server_port,
        envoy,
    }
}

impl SioStack {
    /// The server's own view: open sockets by user and by transport.
    fn server_stats(&self) -> Value {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.server_port));
        edge_guard_e2e::http::send(addr, &Request::get("/__stats"))
            .expect("server stats")
            .json()
    }

    fn user_sockets(&self, user: &str) -> u64 {
        self.server_stats()["by_user"][user].as_u64().unwrap_or(0)
    }

    fn clients(&self) -> Clients {
        let url = format!("http://{}", self.envoy.addr());
        let process = ScriptProcess::node_interactive("sio_clients.js", &[], &[("URL", &url)]);
        let clients = Clients {
            process,
            backlog: Vec::new(),
        };
        clients
            .process
            .expect_line("{\"event\":\"ready\"", Duration::from_secs(10));
        clients
    }

    fn active(&self) -> u64 {
        self.envoy.stat(ACTIVE).unwrap_or(u64::MAX)
    }

    fn wait_active(&self, want: u64, timeout: Duration) -> u64 {
        self.envoy
            .wait_for_stat(ACTIVE, timeout, |v| v == want)
            .unwrap_or(u64::MAX)
    }
}

/// socket.io-client instances in one Node process (`tests/node/sio_clients.js`).
struct Clients {
    process: ScriptProcess,
    backlog: Vec<Value>,
}

impl Clients {
    fn connect(&mut self, id: &str, user: &str, transports: &[&str]) {
        let cmd = json!({"cmd": "connect", "id": id, "user": user, "transports": transports});
        self.process.send(&cmd.to_string());
    }

    fn emit(&mut self, id: &str, count: u32) {
        let cmd = json!({"cmd": "emit", "id": id, "count": count});
        self.process.send(&cmd.to_string());
    }

    fn close(&mut self, id: &str) {
        self.process
            .send(&json!({"cmd": "close", "id": id}).to_string());
    }

    /// The next of `events` for client `id`, within `timeout`; `None` if none
    /// came. Other clients' events are kept for later.
    fn next(&mut self, id: &str, events: &[&str], timeout: Duration) -> Option<Value> {
        let matches = |v: &Value| v["id"] == id && events.iter().any(|e| v["event"] == *e);
        if let Some(i) = self.backlog.iter().position(matches) {
            return Some(self.backlog.remove(i));
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.process.next_line(left)?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if matches(&v) {
                return Some(v);
            }
            self.backlog.push(v);
        }
    }

    fn expect(&mut self, id: &str, event: &str) -> Value {
        self.next(id, &[event], Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "client {id}: no {event} within 10 s; seen {:?}",
                    self.backlog
                )
            })
    }

    /// Nothing of `events` for `id` during `quiet`.
    fn assert_none(&mut self, id: &str, events: &[&str], quiet: Duration) {
        if let Some(v) = self.next(id, events, quiet) {
            panic!("client {id}: unexpected {v}");
        }
    }
}

const BOTH: &[&str] = &["polling", "websocket"];
const POLLING: &[&str] = &["polling"];
const WEBSOCKET: &[&str] = &["websocket"];

#[test]
fn the_fourth_default_client_of_a_user_gets_connect_error_not_polling() {
    let stack = sio_stack(Some(json!({})), "standard", (25_000, 20_000), json!({}));
    let mut clients = stack.clients();
    for id in ["a1", "a2", "a3"] {
        clients.connect(id, "alice", BOTH);
        clients.expect(id, "connect");
        clients.expect(id, "upgrade");
    }
    // Three sessions, each upgraded: three slots, not six.
    assert_eq!(stack.wait_active(3, Duration::from_secs(3)), 3);
    assert_eq!(stack.user_sockets("alice"), 3);

    clients.connect("a4", "alice", BOTH);
    let err = clients.expect("a4", "connect_error");
    assert_eq!(err["description"], json!(429), "{err}");
    // It keeps retrying (every attempt refused) and never connects over polling.
    clients.assert_none("a4", &["connect"], Duration::from_secs(3));
    assert_eq!(stack.user_sockets("alice"), 3);
    assert_eq!(stack.active(), 3);
    // The refusal is the documented JSON error, at the handshake.
    let resp = stack
        .envoy
        .request(Request::get("/socket.io/?EIO=4&transport=polling").header("x-user-id", "alice"));
    resp.assert_error(429, "websocket_user_limit");
    // Another user is not affected.
    clients.connect("b1", "bob", BOTH);
    clients.expect("b1", "connect");

    // One of alice's sessions ends: the waiting client gets in on its next retry.
    clients.close("a1");
    clients.expect("a4", "connect");
    clients.expect("a4", "upgrade");
    assert_eq!(stack.user_sockets("alice"), 3);
    assert_eq!(stack.wait_active(4, Duration::from_secs(3)), 4);
    drop(clients);
    assert_eq!(stack.wait_active(0, Duration::from_secs(5)), 0);
}

#[test]
fn polling_sessions_count_and_come_back_after_ping_interval_plus_timeout() {
    // ping 1 s + 1 s on the server and in the policy.
    let stack = sio_stack(
        Some(json!({"ping_interval": "1s", "ping_timeout": "1s"})),
        "standard",
        (1_000, 1_000),
        json!({}),
    );
    let mut clients = stack.clients();
    clients.connect("p1", "carol", POLLING);
    clients.connect("p2", "carol", POLLING);
    clients.connect("w1", "carol", WEBSOCKET);
    for id in ["p1", "p2"] {
        assert_eq!(clients.expect(id, "connect")["transport"], "polling");
    }
    assert_eq!(clients.expect("w1", "connect")["transport"], "websocket");
    assert_eq!(stack.wait_active(3, Duration::from_secs(3)), 3);
    // A fourth session of any transport is refused at its handshake.
    for (id, transports) in [("p4", POLLING), ("w4", WEBSOCKET), ("d4", BOTH)] {
        clients.connect(id, "carol", transports);
        clients.expect(id, "connect_error");
    }
    // Polling sessions stay counted while their client polls (several ping rounds).
    clients.assert_none("p1", &["disconnect"], Duration::from_secs(3));
    assert_eq!(stack.user_sockets("carol"), 3);
    assert_eq!(stack.active(), 3);

    // Every client vanishes at once (SIGKILL, no close): the WebSocket slot
    // comes back with its connection, the polling ones within 1 s + 1 s (plus
    // the once-a-second sweep).
    let started = std::time::Instant::now();
    drop(clients);
    assert_eq!(stack.wait_active(0, Duration::from_secs(5)), 0);
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    let _ = &stack.server;
}

#[test]
fn a_websocket_only_route_refuses_polling() {
    let stack = sio_stack(
        Some(json!({"transports": ["websocket"]})),
        "standard",
        (25_000, 20_000),
        json!({}),
    );
    let resp = stack
        .envoy
        .request(Request::get("/socket.io/?EIO=4&transport=polling").header("x-user-id", "dave"));
    resp.assert_error(400, "transport_not_allowed");
    let mut clients = stack.clients();
    clients.connect("p", "dave", POLLING);
    assert_eq!(
        clients.expect("p", "connect_error")["description"],
        json!(400)
    );
    clients.connect("w", "dave", WEBSOCKET);
    assert_eq!(clients.expect("w", "connect")["transport"], "websocket");
    clients.assert_none("p", &["connect"], Duration::from_secs(1));
    assert_eq!(stack.wait_active(1, Duration::from_secs(3)), 1);
}

#[test]
fn a_short_class_no_longer_cuts_long_polls() {
    // Class 5 s, server ping interval 8 s: every long poll is held 8 s.
    let stack = sio_stack(
        Some(json!({"ping_interval": "8s", "ping_timeout": "5s"})),
        "notification",
        (8_000, 5_000),
        json!({}),
    );
    let mut clients = stack.clients();
    clients.connect("p", "erin", POLLING);
    clients.expect("p", "connect");
    clients.assert_none("p", &["disconnect", "connect"], Duration::from_secs(12));
    assert_eq!(stack.user_sockets("erin"), 1);
    assert_eq!(
        stack
            .envoy
            .stat("edge_guard.route.sio.class.notification.deadline.upstream_timeout"),
        Some(0)
    );
}

#[test]
fn engine_io_packets_cost_no_rate_limit_tokens() {
    let stack = sio_stack(
        Some(json!({})),
        "standard",
        (25_000, 20_000),
        json!({"max_messages_per_second": 5}),
    );
    let mut clients = stack.clients();
    clients.connect("r", "frank", BOTH);
    clients.expect("r", "connect");
    clients.expect("r", "upgrade");
    // Right after the upgrade (2probe, 3probe and 5 went through the same
    // second's buckets): five events and their five acks.
    clients.emit("r", 5);
    assert_eq!(clients.expect("r", "acked")["count"], json!(5));
    clients.assert_none("r", &["disconnect"], Duration::from_secs(2));
    assert_eq!(
        stack
            .envoy
            .stat("edge_guard.route.sio.websocket.closed.rate_limited"),
        Some(0)
    );
    // A sixth data message in the same second is over the limit.
    clients.emit("r", 6);
    let gone = clients.expect("r", "disconnect");
    assert_eq!(gone["reason"], "transport close", "{gone}");
    assert_eq!(
        stack
            .envoy
            .stat("edge_guard.route.sio.websocket.closed.rate_limited"),
        Some(1)
    );
}

#[test]
fn a_poll_the_server_refuses_ends_the_session_and_uncountable_handshakes_are_refused() {
    let stack = sio_stack(Some(json!({})), "standard", (25_000, 20_000), json!({}));
    let envoy = &stack.envoy;
    let handshake = envoy
        .request(Request::get("/socket.io/?EIO=4&transport=polling").header("x-user-id", "gina"));
    assert_eq!(handshake.status, 200, "{handshake:?}");
    let body = handshake.text();
    let sid = body
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {body:?}"))
        .to_string();
    assert_eq!(stack.wait_active(1, Duration::from_secs(3)), 1);

    // Two overlapping polls: engine.io answers the second with 400 and closes
    // the session; edge-guard gives the slot back at once (not after 45 s).
    let poll = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let addr = envoy.addr();
    let first = {
        let req = Request::get(&poll).header("x-user-id", "gina");
        std::thread::spawn(move || edge_guard_e2e::http::send(addr, &req))
    };
    std::thread::sleep(Duration::from_millis(300));
    let second = envoy.request(Request::get(&poll).header("x-user-id", "gina"));
    assert_eq!(second.status, 400, "{second:?}");
    let _ = first.join();
    assert_eq!(stack.wait_active(0, Duration::from_secs(3)), 0);
    // Its sid is unknown now: requests with it pass through to the server.
    let stale = envoy.request(Request::get(&poll).header("x-user-id", "gina"));
    assert_eq!(stale.status, 400, "{stale:?}");
    assert_ne!(stale.json()["error"]["code"], "transport_not_allowed");
    assert_eq!(stack.active(), 0);

    // Handshakes edge-guard could not count are refused.
    for path in [
        "/socket.io/?EIO=3&transport=polling",
        "/socket.io/?EIO=4&EIO=4&transport=polling",
        "/socket.io/?EIO=4&transport=polling&transport=websocket",
    ] {
        envoy
            .request(Request::get(path).header("x-user-id", "gina"))
            .assert_error(400, "engine_io_bad_request");
    }
    // Requests without EIO are the server's business.
    let plain = envoy.request(Request::get("/socket.io/socket.io.js").header("x-user-id", "gina"));
    assert!(plain.json()["error"]["code"].is_null(), "{plain:?}");
    assert_eq!(stack.active(), 0);
}
