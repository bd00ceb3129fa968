//! Metric ids, defined once per worker on configure, so the request path
//! only ever calls `increment_metric` / `record_metric` with a known id.
//!
//! Names (Envoy prefixes them with `wasmcustom.` internally, which its
//! `/stats` output drops; Prometheus output turns `.` into `_`):
//! - `edge_guard.route.<route>.class.<class>.deadline.request_timeout|upstream_timeout` counters
//! - `edge_guard.route.<route>.class.<class>.request_duration_ms` histogram (only
//!   with `metrics.request_duration: true`)
//! - `edge_guard.route.<route>.mismatch` counter
//! - `edge_guard.route.<route>.websocket.active` gauge,
//!   `...websocket.rejected.<code>` and `...websocket.closed.<reason>` counters
//!   (`draining` among the reasons)
//! - `edge_guard.websocket.active` gauge (whole instance)
//! - `edge_guard.vm.failures` counter (VM generations declared dead by the
//!   reaper) and `edge_guard.websocket.reclaimed` counter (their slots given back)
//! - `edge_guard.rejected.<error code>` counters (`destination_not_allowed` on egress)
//! - `edge_guard.cluster.<cluster>.healthy` gauge (1/0), `...probes`, `...probe_failures` counters
//! - the policy, for alerts and dashboards: `edge_guard.route.<route>.class.<class>.budget_ms`
//!   (the class's total), `edge_guard.websocket.max_connections` and
//!   `edge_guard.route.<route>.websocket.max_connections` gauges (where set)
//! - `edge_guard.health.transitions` counter: clusters turning healthy or unhealthy
//!
//! An egress-mode filter uses `edge_guard.egress.` instead of `edge_guard.`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::deadline::DeadlineHit;
use crate::policy::{Direction, Policy};
use crate::reply::ErrorCode;
use crate::websocket::monitor::CloseReason;

/// An id of 0 is never handed out by Envoy for a real metric; it stands for
/// "could not be defined" and is skipped when used.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricId(u32);

fn define(kind: MetricType, name: &str) -> MetricId {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => MetricId(id),
        Err(_) => {
            log::warn!("edge-guard: could not define metric {name}");
            MetricId::default()
        }
    }
}

pub fn increment(id: MetricId, by: i64) {
    if id.0 != 0 {
        let _ = hostcalls::increment_metric(id.0, by);
    }
}

/// The current value of a metric this plugin defined (a gauge's value
/// includes a hot-restart parent's, which Envoy merges into it).
pub fn read(id: MetricId) -> Option<u64> {
    (id.0 != 0)
        .then(|| hostcalls::get_metric(id.0).ok())
        .flatten()
}

/// Defines a gauge and sets it: the policy's limits and budgets, published
/// so that alerts and dashboards compare against them (every worker sets the
/// same value on configure).
fn publish(name: &str, value: u64) {
    record(define(MetricType::Gauge, name), value);
}

pub fn record(id: MetricId, value: u64) {
    if id.0 != 0 {
        let _ = hostcalls::record_metric(id.0, value);
    }
}

/// Metric names may only use what Envoy's stat names and Prometheus take.
fn sanitise(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub const CLOSE_REASONS: [CloseReason; 7] = [
    CloseReason::MessageTooBig,
    CloseReason::InternalError,
    CloseReason::RateLimited,
    CloseReason::ProtocolError,
    CloseReason::IdleTimeout,
    CloseReason::MaxDuration,
    CloseReason::Draining,
];

const WS_REJECTIONS: [ErrorCode; 3] = [
    ErrorCode::WebSocketCapacity,
    ErrorCode::WebSocketUserLimit,
    ErrorCode::IdentityRequired,
];

const REJECTIONS: [ErrorCode; 9] = [
    ErrorCode::RouteNotFound,
    ErrorCode::MethodNotAllowed,
    ErrorCode::RouteMismatch,
    ErrorCode::UpstreamUnhealthy,
    ErrorCode::InvalidPath,
    ErrorCode::InvalidUpgrade,
    ErrorCode::TransportNotAllowed,
    ErrorCode::EngineIoBadRequest,
    ErrorCode::DestinationNotAllowed,
];

#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub request_timeout: MetricId,
    pub upstream_timeout: MetricId,
    pub duration_ms: MetricId,
    pub mismatch: MetricId,
    pub ws_active: MetricId,
    ws_rejected: [MetricId; 3],
    ws_closed: [MetricId; 7],
}

impl RouteMetrics {
    pub fn deadline_hit(&self, hit: DeadlineHit) -> MetricId {
        match hit {
            DeadlineHit::RequestTimeout => self.request_timeout,
            DeadlineHit::UpstreamTimeout => self.upstream_timeout,
        }
    }

    pub fn ws_rejected(&self, code: ErrorCode) -> MetricId {
        WS_REJECTIONS
            .iter()
            .position(|c| *c == code)
            .and_then(|i| self.ws_rejected.get(i).copied())
            .unwrap_or_default()
    }

    pub fn ws_closed(&self, reason: CloseReason) -> MetricId {
        CLOSE_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.ws_closed.get(i).copied())
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub healthy: MetricId,
    pub probes: MetricId,
    pub probe_failures: MetricId,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub routes: Vec<RouteMetrics>,
    pub clusters: Vec<ClusterMetrics>,
    pub ws_active: MetricId,
    pub vm_failures: MetricId,
    pub ws_reclaimed: MetricId,
    /// Health transitions of any cluster, instance-wide: a worker re-reads
    /// the shared health records only when this moved.
    pub health_transitions: MetricId,
    /// Drain requests accepted, instance-wide: a worker reads the shared
    /// drain record only when this moved.
    pub drain_requests: MetricId,
    rejected: [MetricId; REJECTIONS.len()],
}

impl Metrics {
    pub fn define(policy: &Policy) -> Metrics {
        // Stats are one namespace per Envoy process: an egress filter's
        // metrics live under their own prefix, so an egress route may share
        // a name with an edge route.
        let root = match policy.direction {
            Direction::Ingress => "edge_guard",
            Direction::Egress => "edge_guard.egress",
        };
        let routes = policy
            .routes
            .iter()
            .map(|route| {
                let class = policy.class_of(route).map_or("none", |c| c.name.as_str());
                let base = format!("{root}.route.{}", route.name);
                let with_class = format!("{base}.class.{class}");
                if let Some(c) = policy.class_of(route) {
                    publish(&format!("{with_class}.budget_ms"), c.total.as_ms());
                }
                let mut metrics = RouteMetrics {
                    request_timeout: define(
                        MetricType::Counter,
                        &format!("{with_class}.deadline.request_timeout"),
                    ),
                    upstream_timeout: define(
                        MetricType::Counter,
                        &format!("{with_class}.deadline.upstream_timeout"),
                    ),
                    // Opt-in (`metrics.request_duration`): an id of 0 makes
                    // every record a no-op.
                    duration_ms: if policy.request_duration_histogram {
                        define(
                            MetricType::Histogram,
                            &format!("{with_class}.request_duration_ms"),
                        )
                    } else {
                        MetricId::default()
                    },
                    mismatch: define(MetricType::Counter, &format!("{base}.mismatch")),
                    ..RouteMetrics::default()
                };
                if let (true, Some(limit)) = (route.websocket, route.max_connections) {
                    publish(
                        &format!("{base}.websocket.max_connections"),
                        u64::from(limit),
                    );
                }
                if route.websocket {
                    metrics.ws_active =
                        define(MetricType::Gauge, &format!("{base}.websocket.active"));
                    for (slot, code) in metrics.ws_rejected.iter_mut().zip(WS_REJECTIONS) {
                        *slot = define(
                            MetricType::Counter,
                            &format!("{base}.websocket.rejected.{}", code.as_str()),
                        );
                    }
                    for (slot, reason) in metrics.ws_closed.iter_mut().zip(CLOSE_REASONS) {
                        *slot = define(
                            MetricType::Counter,
                            &format!("{base}.websocket.closed.{}", reason.as_str()),
                        );
                    }
                }
                metrics
            })
            .collect();
        let clusters = policy
            .clusters
            .iter()
            .map(|cluster| {
                let base = format!("{root}.cluster.{}", sanitise(&cluster.name));
                ClusterMetrics {
                    healthy: define(MetricType::Gauge, &format!("{base}.healthy")),
                    probes: define(MetricType::Counter, &format!("{base}.probes")),
                    probe_failures: define(MetricType::Counter, &format!("{base}.probe_failures")),
                }
            })
            .collect();
        if let Some(limit) = policy.websocket.max_connections {
            publish(
                &format!("{root}.websocket.max_connections"),
                u64::from(limit),
            );
        }
        let mut rejected = [MetricId::default(); REJECTIONS.len()];
        for (slot, code) in rejected.iter_mut().zip(REJECTIONS) {
            *slot = define(
                MetricType::Counter,
                &format!("{root}.rejected.{}", code.as_str()),
            );
        }
        Metrics {
            routes,
            clusters,
            ws_active: define(MetricType::Gauge, &format!("{root}.websocket.active")),
            vm_failures: define(MetricType::Counter, &format!("{root}.vm.failures")),
            ws_reclaimed: define(MetricType::Counter, &format!("{root}.websocket.reclaimed")),
            health_transitions: if policy.health.is_some() {
                define(MetricType::Counter, &format!("{root}.health.transitions"))
            } else {
                MetricId::default()
            },
            drain_requests: define(MetricType::Counter, &format!("{root}.drain.requests")),
            rejected,
        }
    }

    pub fn route(&self, id: usize) -> Option<&RouteMetrics> {
        self.routes.get(id)
    }

    pub fn rejected(&self, code: ErrorCode) -> MetricId {
        REJECTIONS
            .iter()
            .position(|c| *c == code)
            .and_then(|i| self.rejected.get(i).copied())
            .unwrap_or_default()
    }
}
