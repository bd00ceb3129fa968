//! The instance's own endpoints, answered by the filter itself:
//! - `GET <status.path>`: the status document (from `status.allow_cidrs`);
//! - `GET|HEAD <health.path>`: 200 serving / 503 draining, for load balancers
//!   (from `health.allow_cidrs`, everywhere by default);
//! - `POST <status.path>/drain`: starts draining the whole instance, 202
//!   (from `status.allow_cidrs`): what a pre-stop hook calls before SIGTERM.
//!
//! Owns which request is which endpoint and who may call it (the
//! connection's source address, never `x-forwarded-for`), and gathers the
//! figures with host calls. Never decides a figure or a state itself:
//! `status` and `drain` do. A caller from elsewhere gets no answer here: the
//! request goes on as any other (an unknown route).

use crate::drain::{self, InstanceView};
use crate::policy::cidr::peer_ip_of_socket_address;
use crate::policy::Cidr;
use crate::reply::LocalReply;
use crate::routing::Method;
use crate::status::{self, StatusSnapshot};
use crate::websocket::slots;

use super::host::{self, HostStore};
use super::metrics;
use super::worker::Worker;

/// Suffix of the drain endpoint under `status.path`.
pub const DRAIN_SUFFIX: &str = "/drain";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Status,
    Health { head: bool },
    Drain,
}

fn endpoint(worker: &Worker, path: &str, method: Method) -> Option<Endpoint> {
    let policy = &worker.policy;
    if path == policy.health_endpoint.path {
        return match method {
            Method::Get => Some(Endpoint::Health { head: false }),
            Method::Head => Some(Endpoint::Health { head: true }),
            _ => None,
        };
    }
    let status = policy.status.path.as_str();
    if let Some(rest) = path.strip_prefix(status) {
        return match (rest, method) {
            ("", Method::Get) => Some(Endpoint::Status),
            (DRAIN_SUFFIX, Method::Post) => Some(Endpoint::Drain),
            _ => None,
        };
    }
    None
}

/// Only the connection's own peer address counts: an address Envoy took
/// from a header (no port) never opens an endpoint.
fn source_in(allow: &[Cidr]) -> bool {
    host::property_text(vec!["source", "address"])
        .and_then(|addr| peer_ip_of_socket_address(&addr))
        .is_some_and(|ip| allow.iter().any(|cidr| cidr.contains(ip)))
}

/// Answers the request if it is one of the endpoints and its caller may use
/// it; returns whether it answered.
pub fn answer(worker: &Worker, path: &str, method: Method) -> bool {
    let Some(endpoint) = endpoint(worker, path, method) else {
        return false;
    };
    let policy = &worker.policy;
    let allow = match endpoint {
        Endpoint::Health { .. } => &policy.health_endpoint.allow,
        Endpoint::Status | Endpoint::Drain => &policy.status.allow,
    };
    if !source_in(allow) {
        return false;
    }
    let reply = match endpoint {
        Endpoint::Status => LocalReply::json(status_document(worker)),
        Endpoint::Health { head } => {
            let view = instance_view(worker, read_drain());
            let mut reply = LocalReply::json(drain::health_body(&view));
            reply.status = drain::health_status(&view);
            if head {
                reply.body.clear();
            }
            reply
        }
        Endpoint::Drain => {
            let now = host::now_ms();
            match drain::start(&HostStore, now, worker.policy.drain_period.as_ms()) {
                Ok(state) => {
                    // After the record is written: a worker that sees the
                    // count move finds the record.
                    metrics::increment(worker.metrics.drain_requests, 1);
                    log::info!(
                        "edge-guard: draining: every WebSocket is closed with 1001 within {} ms; new upgrades get 503",
                        state.ends_ms().saturating_sub(now)
                    );
                    worker.follow_drain(state, now);
                    let view = instance_view(worker, Some(state));
                    let mut reply = LocalReply::json(drain::drain_body(&view, &state));
                    reply.status = 202;
                    reply
                }
                Err(e) => {
                    log::error!("edge-guard: cannot start draining: {e}");
                    let mut reply = LocalReply::json(format!(
                        "{{\"status\":\"error\",\"message\":\"cannot start draining: {e}\"}}"
                    ));
                    reply.status = 500;
                    reply
                }
            }
        }
    };
    host::send_reply(&reply);
    true
}

fn read_drain() -> Option<drain::DrainState> {
    drain::read(&HostStore).unwrap_or_else(|e| {
        log::warn!("edge-guard: reading the drain state: {e}");
        None
    })
}

fn instance_view(worker: &Worker, drain: Option<drain::DrainState>) -> InstanceView {
    InstanceView {
        websocket_active: slots::read_counts(&HostStore, &[])
            .map(|c| u64::from(c.instance))
            .unwrap_or(0),
        websocket_limit: worker.policy.websocket.max_connections,
        drain,
        now_ms: host::now_ms(),
    }
}

fn status_document(worker: &Worker) -> String {
    let policy = &worker.policy;
    let ws_routes: Vec<&str> = policy
        .routes
        .iter()
        .filter(|r| r.websocket)
        .map(|r| &*r.name)
        .collect();
    let mut snapshot = StatusSnapshot {
        cluster_health: worker.health_snapshot(),
        ..StatusSnapshot::default()
    };
    match slots::read_counts(&HostStore, &ws_routes) {
        Ok(counts) => {
            snapshot.websocket_active = u64::from(counts.instance);
            snapshot.websocket_active_by_route = policy
                .routes
                .iter()
                .map(|r| {
                    counts
                        .routes
                        .iter()
                        .find(|(name, _)| **name == *r.name)
                        .map_or(0, |(_, n)| u64::from(*n))
                })
                .collect();
        }
        Err(e) => log::warn!("edge-guard: reading websocket counts: {e}"),
    }
    snapshot.route_mismatches = crate::mismatch::recorded(&HostStore, &policy.routes);
    status::render(policy, &snapshot)
}
