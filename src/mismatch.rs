//! The routing cross-check's record: declared routes that Envoy sends to
//! another cluster than the policy names.
//!
//! Owns the instance-wide record in shared data (per route, the first Envoy
//! cluster seen, created once so that exactly one worker logs it), reading
//! it back for the status endpoint, and the warning's wording. Never reads
//! Envoy's choice itself and never decides whether to reject.

use crate::policy::{Direction, Route};
use crate::shared_store::SharedStore;
use crate::status::RouteMismatch;

/// The shared-data key of `route`'s record.
fn key(route: &Route) -> String {
    format!("eg.mismatch.{}", route.name)
}

/// Records `chosen` (empty: no Envoy route) as the cluster Envoy sends
/// `route` to; true for the one call on the whole instance that recorded
/// it (that caller logs the warning).
pub fn record(store: &impl SharedStore, route: &Route, chosen: &str) -> bool {
    let value = if chosen.is_empty() { "(none)" } else { chosen };
    store
        .create_if_absent(&key(route), value.as_bytes())
        .unwrap_or(false)
}

/// Every recorded mismatch, in route order.
pub fn recorded(store: &impl SharedStore, routes: &[Route]) -> Vec<RouteMismatch> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(i, route)| {
            let (value, _) = store.get(&key(route)).ok().flatten()?;
            (!value.is_empty()).then(|| RouteMismatch {
                route: i,
                envoy_cluster: String::from_utf8_lossy(&value).into_owned(),
            })
        })
        .collect()
}

/// The one log line of a route's first mismatch on the instance.
pub fn warning(direction: Direction, route: &Route, chosen: &str) -> String {
    let metrics = match direction {
        Direction::Ingress => "edge_guard",
        Direction::Egress => "edge_guard.egress",
    };
    format!(
        "edge-guard: route {} declares cluster {} but Envoy routes it to {}; counted in {metrics}.route.{}.mismatch, not logged again",
        route.name,
        route.cluster,
        if chosen.is_empty() {
            "no cluster (no Envoy route)"
        } else {
            chosen
        },
        route.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::shared_store::MemoryStore;

    fn policy() -> Policy {
        Policy::from_json(
            br#"{"routes": [
                {"name": "a", "prefix": "/a", "cluster": "ca"},
                {"name": "b", "prefix": "/b", "cluster": "cb"}
            ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_first_mismatch_of_a_route_is_recorded_once_for_the_instance() {
        let p = policy();
        let store = MemoryStore::new();
        assert!(record(&store, &p.routes[1], "other"));
        assert!(!record(&store, &p.routes[1], "third"));
        assert!(record(&store, &p.routes[0], ""));
        let seen = recorded(&store, &p.routes);
        assert_eq!(
            seen,
            vec![
                RouteMismatch {
                    route: 0,
                    envoy_cluster: "(none)".into()
                },
                RouteMismatch {
                    route: 1,
                    envoy_cluster: "other".into()
                },
            ]
        );
    }

    #[test]
    fn the_warning_names_the_route_both_clusters_and_the_counter() {
        let p = policy();
        let w = warning(Direction::Ingress, &p.routes[0], "");
        assert!(w.contains("route a declares cluster ca but Envoy routes it to no cluster"));
        assert!(w.contains("edge_guard.route.a.mismatch"));
        let w = warning(Direction::Egress, &p.routes[1], "x");
        assert!(w.contains("edge_guard.egress.route.b.mismatch"), "{w}");
    }
}
