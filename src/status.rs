//! The status endpoint's document.
//!
//! Owns the JSON an operator sees at `status.path`: the version, the routing
//! table as edge-guard enforces it, and live counters the host layer gathers.
//! Never gathers anything itself and never decides who may see it.

use serde_json::{json, Value};

use crate::policy::Policy;

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
    let routes: Vec<Value> = policy
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let class = policy.class_of(r);
            let mut route = json!({
                "name": r.name,
                "prefix": r.prefix,
                "methods": if r.methods.is_any() { Value::Null } else { json!(r.methods.names().collect::<Vec<_>>()) },
                "cluster": r.cluster,
                "timeout": class.map(|c| json!({
                    "class": c.name,
                    "total_ms": c.total.as_ms(),
                    "response_ms": c.response.as_ms(),
                })),
                "websocket": r.websocket,
            });
            if r.websocket {
                route["websocket_connections"] = json!({
                    "active": snapshot.websocket_active_by_route.get(i).copied().unwrap_or(0),
                    "limit": r.max_connections,
                });
            }
            if let Some(m) = snapshot.route_mismatches.iter().find(|m| m.route == i) {
                route["mismatch"] = json!({"envoy_cluster": m.envoy_cluster});
            }
            route
        })
        .collect();
    let clusters: Vec<Value> = policy
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let health = snapshot.cluster_health.get(i).copied().flatten();
            json!({
                "name": c.name,
                "health_path": c.health_path,
                "healthy": health.map(|h| h.healthy),
                "probes": health.map(|h| h.probes),
            })
        })
        .collect();
    json!({
        "name": "edge-guard",
        "version": VERSION,
        "routes": routes,
        "clusters": clusters,
        "unknown_route": match policy.unknown_route {
            crate::policy::UnknownRoute::Reject => "reject",
            crate::policy::UnknownRoute::Allow => "allow",
        },
        "websocket": {
            "active": snapshot.websocket_active,
            "limit": policy.websocket.max_connections,
            "per_user_limit": policy.websocket.max_connections_per_user,
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
