//! The status endpoint's document.
//!
//! Owns the JSON an operator sees at `status.path`: the version, the routing
//! table as edge-guard enforces it, and live counters the host layer gathers.
//! Never gathers anything itself and never decides who may see it.

use crate::json;
use crate::policy::{Policy, UnknownRoute};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Live figures read by the host layer when the endpoint is called.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    /// Open WebSocket connections on the whole instance.
    pub websocket_active: u64,
    /// Open WebSocket connections per route, in route order.
    pub websocket_active_by_route: Vec<u64>,
    /// Per cluster, in `Policy::clusters` order: `None` when not probed.
    pub cluster_health: Vec<Option<ClusterHealth>>,
    /// Requests Envoy routed to another cluster than declared, per route
    /// (seen by this worker since it started).
    pub route_mismatches: Vec<RouteMismatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterHealth {
    pub healthy: bool,
    pub probes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMismatch {
    pub route: usize,
    pub envoy_cluster: String,
}

pub fn render(policy: &Policy, snapshot: &StatusSnapshot) -> String {
    json::object(|doc| {
        doc.str("name", "edge-guard")
            .str("version", VERSION)
            .str("direction", policy.direction.as_str());
        doc.arr("routes", |routes| {
            for (i, r) in policy.routes.iter().enumerate() {
                routes.obj(|route| {
                    route.str("name", &r.name);
                    if let Some(host) = &r.host {
                        route.str("host", &host.as_written());
                    }
                    route.str("prefix", &r.prefix);
                    if r.methods.is_any() {
                        route.null("methods");
                    } else {
                        route.arr("methods", |m| {
                            r.methods.names().for_each(|name| m.str(name))
                        });
                    }
                    route.str("cluster", &r.cluster);
                    match policy.class_of(r) {
                        Some(c) => route.obj("timeout", |t| {
                            t.str("class", &c.name)
                                .num("total_ms", c.total.as_ms())
                                .num("response_ms", c.response.as_ms());
                        }),
                        None => route.null("timeout"),
                    };
                    route.bool("websocket", r.websocket);
                    if r.websocket {
                        route.obj("websocket_connections", |w| {
                            w.num(
                                "active",
                                snapshot
                                    .websocket_active_by_route
                                    .get(i)
                                    .copied()
                                    .unwrap_or(0),
                            )
                            .opt_num("limit", r.max_connections.map(u64::from));
                        });
                    }
                    if let Some(m) = snapshot.route_mismatches.iter().find(|m| m.route == i) {
                        route.obj("mismatch", |o| {
                            o.str("envoy_cluster", &m.envoy_cluster);
                        });
                    }
                });
            }
        });
        doc.arr("clusters", |clusters| {
            for (i, c) in policy.clusters.iter().enumerate() {
                let health = snapshot.cluster_health.get(i).copied().flatten();
                clusters.obj(|o| {
                    o.str("name", &c.name)
                        .str("health_path", &c.health_path)
                        .opt_bool("healthy", health.map(|h| h.healthy))
                        .opt_num("probes", health.map(|h| h.probes));
                });
            }
        });
        doc.str(
            "unknown_route",
            match policy.unknown_route {
                UnknownRoute::Reject => "reject",
                UnknownRoute::Allow => "allow",
            },
        );
        doc.obj("websocket", |w| {
            w.num("active", snapshot.websocket_active)
                .opt_num("limit", policy.websocket.max_connections.map(u64::from))
                .opt_num(
                    "per_user_limit",
                    policy.websocket.max_connections_per_user.map(u64::from),
                );
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn lists_routes_and_live_counts() {
        let policy = Policy::from_json(
            br#"{"routes": [
                {"name": "courses", "prefix": "/api/courses", "cluster": "course_service", "methods": ["GET"]},
                {"name": "events", "prefix": "/ws/events", "cluster": "event_service", "websocket": true, "max_connections": 10}
            ], "websocket": {"max_connections": 100}}"#,
        )
        .unwrap();
        let snapshot = StatusSnapshot {
            websocket_active: 3,
            websocket_active_by_route: vec![0, 3],
            cluster_health: vec![
                Some(ClusterHealth {
                    healthy: false,
                    probes: 4,
                }),
                None,
            ],
            route_mismatches: vec![RouteMismatch {
                route: 0,
                envoy_cluster: "other".into(),
            }],
        };
        let v: Value = serde_json::from_str(&render(&policy, &snapshot)).unwrap();
        assert_eq!(v["version"], VERSION);
        assert_eq!(v["routes"][0]["name"], "courses");
        assert_eq!(v["routes"][0]["methods"], json!(["GET"]));
        assert_eq!(v["routes"][0]["timeout"]["class"], "standard");
        assert_eq!(v["routes"][0]["mismatch"]["envoy_cluster"], "other");
        assert_eq!(v["routes"][1]["websocket_connections"]["active"], 3);
        assert_eq!(v["routes"][1]["websocket_connections"]["limit"], 10);
        assert_eq!(v["clusters"][0]["healthy"], false);
        assert_eq!(v["clusters"][1]["healthy"], Value::Null);
        assert_eq!(v["websocket"]["limit"], 100);
        assert_eq!(v["direction"], "ingress");
        assert!(v["routes"][0].get("host").is_none());
    }

    #[test]
    fn egress_routes_show_their_host() {
        let policy = Policy::from_json(
            br#"{"direction": "egress", "routes": [
                {"name": "sms", "host": "*.sms.example.com", "cluster": "sms_api"}
            ]}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&render(&policy, &StatusSnapshot::default())).unwrap();
        assert_eq!(v["direction"], "egress");
        assert_eq!(v["routes"][0]["host"], "*.sms.example.com");
        assert_eq!(v["routes"][0]["prefix"], "/");
    }
}
