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
