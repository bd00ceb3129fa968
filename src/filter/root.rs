//! The root context: one per worker (and one on Envoy's main thread).
//!
//! Owns configuration (parse → compile once → share), the tick that enforces
//! deadlines and WebSocket timers, the health probes and the slot reaper.

use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use hashbrown::HashMap;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MapType};

use crate::deadline::DeadlineHit;
use crate::health::{self, Thresholds, Transition};
use crate::policy::{ConfigError, Policy};
use crate::reply::{ErrorCode, LocalReply};
use crate::shared_store::SharedStore;
use crate::status::{ClusterHealth, VERSION};
use crate::websocket::slots;

use super::host::{self, HostStore};
use super::http::{EdgeGuardHttp, REQUEST_TIMEOUT_MESSAGE, UPSTREAM_TIMEOUT_MESSAGE};
use super::metrics::{self, Metrics};
use super::ownership;
use super::worker::{TimerAction, Worker};

/// Deadlines fire within one tick of their time (the brief allows 100 ms).
const TICK_MS: u64 = 50;
const TICK: Duration = Duration::from_millis(TICK_MS);
/// How often the reaper checks that every held slot's stream still exists.
const REAP_EVERY_MS: u64 = 5_000;
/// How soon every worker follows a drain started on another.
const DRAIN_CHECK_EVERY_MS: u64 = 200;
/// How often each worker looks for Engine.IO polling sessions gone silent.
const SESSION_SWEEP_EVERY_MS: u64 = 1_000;

/// Why `on_configure` refused: Envoy then rejects the configuration.
#[derive(Debug)]
enum ConfigureError {
    NoConfiguration,
    Policy(ConfigError),
    SharedData(String),
}

impl fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigureError::NoConfiguration => f.write_str(
                "no configuration: set the policy JSON as the filter's `configuration` (a google.protobuf.StringValue)",
            ),
            ConfigureError::Policy(e) => write!(f, "invalid policy: {e}"),
            ConfigureError::SharedData(e) => write!(f, "cannot create shared counters: {e}"),
        }
    }
}

pub struct EdgeGuardRoot {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    /// Health probes in flight: call token → (cluster index, when sent).
    probes: HashMap<u32, (usize, u64)>,
    /// `health.transitions` when this worker last read every health record.
    health_transitions_seen: Option<u64>,
    /// Per cluster: when its next probe is due, as last read.
    next_probe_ms: Vec<u64>,
    next_reap_ms: u64,
    next_drain_check_ms: u64,
    /// `drain.requests` when this worker last read the drain record.
    drain_requests_seen: Option<u64>,
    next_session_sweep_ms: u64,
    /// Whether this root context counts in the VM's ownership (configured).
    owns: bool,
}

impl EdgeGuardRoot {
    pub fn new(context_id: u32) -> Self {
        EdgeGuardRoot {
            context_id,
            worker: None,
            probes: HashMap::new(),
            health_transitions_seen: None,
            next_probe_ms: Vec::new(),
            next_reap_ms: 0,
            next_drain_check_ms: 0,
            drain_requests_seen: None,
            next_session_sweep_ms: 0,
            owns: false,
        }
    }

    fn configure(&mut self) -> Result<(), ConfigureError> {
        let bytes = self
            .get_plugin_configuration()
            .ok_or(ConfigureError::NoConfiguration)?;
        let policy = Policy::from_json(&bytes).map_err(ConfigureError::Policy)?;

        let route_names: Vec<&str> = policy
            .routes
            .iter()
            .filter(|r| r.websocket)
            .map(|r| &*r.name)
            .collect();
        slots::ensure_keys(&HostStore, &route_names)
            .map_err(|e| ConfigureError::SharedData(e.to_string()))?;
        if policy.routes.iter().any(|r| r.engine_io.is_some()) {
            crate::engine_io::sessions::ensure_keys(&HostStore)
                .map_err(|e| ConfigureError::SharedData(e.to_string()))?;
        }
        if policy.health.is_some() {
            let clusters: Vec<&str> = policy.clusters.iter().map(|c| c.name.as_str()).collect();
            health::ensure_records(&HostStore, &clusters)
                .map_err(|e| ConfigureError::SharedData(e.to_string()))?;
        }

        // Every root context (each worker, and Envoy's main thread) configures
        // the same policy: the routing table is logged by the first only.
        let table_key = format!("eg.table.{:016x}", fnv1a64(&bytes));
        if HostStore.create_if_absent(&table_key, b"1").unwrap_or(true) {
            log_routing_table(&policy);
            for w in &policy.warnings {
                log::warn!("edge-guard: policy warning [{}]: {}", w.id, w.message);
            }
        }

        let metrics = Metrics::define(&policy);
        let now = host::now_ms();
        if !self.owns {
            self.owns = true;
            ownership::root_configured();
        }
        let worker = Worker::new(Rc::new(policy), metrics, now);
        self.worker = Some(Rc::new(worker));
        self.health_transitions_seen = None;
        self.next_probe_ms.clear();
        Ok(())
    }

    fn run_timers(&self, worker: &Worker, now_ms: u64) {
        let actions = worker.take_due(now_ms);
        if actions.is_empty() {
            return;
        }
        for action in actions {
            match action {
                TimerAction::Deadline {
                    context_id,
                    route,
                    hit,
                    request_id,
                } => {
                    if hostcalls::set_effective_context(context_id).is_err() {
                        worker.finish(context_id);
                        continue;
                    }
                    let (code, message) = match hit {
                        DeadlineHit::RequestTimeout => {
                            (ErrorCode::RequestTimeout, REQUEST_TIMEOUT_MESSAGE)
                        }
                        DeadlineHit::UpstreamTimeout => {
                            (ErrorCode::UpstreamTimeout, UPSTREAM_TIMEOUT_MESSAGE)
                        }
                    };
                    if let Some(m) = route.and_then(|r| worker.metrics.route(r)) {
                        metrics::increment(m.deadline_hit(hit), 1);
                    }
                    host::send_reply(&LocalReply::error(code, message, request_id.as_deref()));
                }
                TimerAction::Closed {
                    route,
                    reason,
                    admission,
                } => {
                    log::debug!("websocket closed: {}", reason.as_str());
                    if let Some(m) = route.and_then(|r| worker.metrics.route(r)) {
                        metrics::increment(m.ws_closed(reason), 1);
                    }
                    if let Some(admission) = admission {
                        worker.release(route, admission);
                    }
                }
                TimerAction::Reset { context_id } => {
                    if hostcalls::set_effective_context(context_id).is_err() {
                        worker.finish(context_id);
                        continue;
                    }
                    let _ = hostcalls::reset_http_request();
                }
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Slots are released from `on_log`, `on_done` and the context's drop;
    /// this catches a stream that vanished without any of them.
    fn reap(&self, worker: &Worker) {
        for id in worker.websocket_ids() {
            if hostcalls::set_effective_context(id).is_err() {
                log::warn!("edge-guard: releasing the slot of vanished websocket stream #{id}");
                worker.finish(id);
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Keeps the worker's view of cluster health current and starts the
    /// probes that are due. An idle tick costs one metric read: the records
    /// are read again only when some worker counted a health transition, and
    /// a cluster's record only when its next probe is due.
    /// Follows a drain started on any worker. The drain endpoint counts
    /// every drain it starts (`drain.requests`, read with `get_metric`: a
    /// number, no copy), so the shared record is read only when that count
    /// moved, on this root's first check, or when the count cannot be read:
    /// an idle tick copies nothing out of shared data.
    fn check_drain(&mut self, worker: &Worker, now_ms: u64) {
        let requests = metrics::read(worker.metrics.drain_requests);
        if requests.is_some() && requests == self.drain_requests_seen {
            return;
        }
        if let Ok(state) = crate::drain::read(&HostStore) {
            self.drain_requests_seen = requests;
            if let Some(state) = state {
                worker.follow_drain(state, now_ms);
            }
        }
    }

    fn refresh_health(&mut self, worker: &Worker, now_ms: u64) {
        let Some(policy) = worker.policy.health.as_ref() else {
            return;
        };
        let transitions = metrics::read(worker.metrics.health_transitions);
        let stale = transitions.is_none() || transitions != self.health_transitions_seen;
        if stale {
            self.health_transitions_seen = transitions;
        }
        if self.next_probe_ms.len() != worker.policy.clusters.len() {
            self.next_probe_ms = vec![0; worker.policy.clusters.len()];
        }
        for (index, cluster) in worker.policy.clusters.iter().enumerate() {
            let due = self
                .next_probe_ms
                .get(index)
                .is_some_and(|due| now_ms >= *due);
            if !stale && !due {
                continue;
            }
            let record = match health::read(&HostStore, &cluster.name) {
                Ok(record) => record,
                Err(e) => {
                    log::warn!("edge-guard: reading health of {}: {e}", cluster.name);
                    continue;
                }
            };
            self.see_health(worker, index, &record);
            // The shared record says when the next probe is due; the claim
            // makes exactly one worker take it.
            if now_ms < record.next_probe_ms || self.probes.values().any(|(c, _)| *c == index) {
                self.set_next_probe(index, record.next_probe_ms);
                continue;
            }
            match health::claim_probe(&HostStore, &cluster.name, now_ms, policy.interval.as_ms()) {
                Ok(true) => self.dispatch_probe(worker, index, policy.timeout.as_ms(), now_ms),
                Ok(false) => {}
                Err(e) => log::warn!("edge-guard: claiming the probe of {}: {e}", cluster.name),
            }
            // Whoever claimed it moved the next due time on: learn it now.
            match health::read(&HostStore, &cluster.name) {
                Ok(record) => self.set_next_probe(index, record.next_probe_ms),
                Err(_) => self.set_next_probe(index, now_ms.saturating_add(TICK_MS)),
            }
        }
    }

    fn set_next_probe(&mut self, index: usize, due_ms: u64) {
        if let Some(slot) = self.next_probe_ms.get_mut(index) {
            *slot = due_ms;
        }
    }

    /// Updates the worker's cached health of one cluster from its record.
    fn see_health(&self, worker: &Worker, index: usize, record: &health::HealthRecord) {
        let view = Some(ClusterHealth {
            healthy: record.healthy,
            probes: record.probes,
        });
        let changed = {
            let mut cache = worker.health.borrow_mut();
            match cache.get_mut(index) {
                Some(slot) if slot.map(|h| h.healthy) != view.map(|h| h.healthy) => {
                    *slot = view;
                    true
                }
                Some(slot) => {
                    *slot = view;
                    false
                }
                None => false,
            }
        };
        if changed {
            if let Some(m) = worker.metrics.clusters.get(index) {
                metrics::record(m.healthy, u64::from(record.healthy));
            }
        }
    }

    fn dispatch_probe(&mut self, worker: &Worker, index: usize, timeout_ms: u64, now_ms: u64) {
        let Some(cluster) = worker.policy.clusters.get(index) else {
            return;
        };
        let headers = vec![
            (":method", "GET"),
            (":path", cluster.health_path.as_str()),
            (":authority", cluster.name.as_str()),
            ("user-agent", "edge-guard-health"),
        ];
        if let Some(m) = worker.metrics.clusters.get(index) {
            metrics::increment(m.probes, 1);
        }
        match hostcalls::dispatch_http_call(
            &cluster.name,
            headers,
            None,
            vec![],
            Duration::from_millis(timeout_ms),
        ) {
            Ok(token) => {
                self.probes.insert(token, (index, now_ms));
            }
            Err(status) => {
                log::debug!(
                    "edge-guard: probe of {} not dispatched: {status:?}",
                    cluster.name
                );
                self.probe_result(worker, index, false);
            }
        }
    }

    fn probe_result(&self, worker: &Worker, index: usize, success: bool) {
        let (Some(cluster), Some(policy)) = (
            worker.policy.clusters.get(index),
            worker.policy.health.as_ref(),
        ) else {
            return;
        };
        if !success {
            if let Some(m) = worker.metrics.clusters.get(index) {
                metrics::increment(m.probe_failures, 1);
            }
        }
        let thresholds = Thresholds {
            unhealthy: policy.unhealthy_threshold,
            healthy: policy.healthy_threshold,
        };
        match health::record_probe(&HostStore, &cluster.name, success, thresholds) {
            Ok(Some(transition)) => {
                // Every worker's next tick re-reads the records.
                metrics::increment(worker.metrics.health_transitions, 1);
                self.log_transition(worker, index, transition);
            }
            Ok(None) => {}
            Err(e) => log::warn!("edge-guard: recording the probe of {}: {e}", cluster.name),
        }
    }

    fn log_transition(&self, worker: &Worker, index: usize, transition: Transition) {
        let (Some(cluster), Some(policy)) = (
            worker.policy.clusters.get(index),
            worker.policy.health.as_ref(),
        ) else {
            return;
        };
        match transition {
            Transition::BecameUnhealthy => {
                log::warn!(
                    "edge-guard: cluster {} is unhealthy ({} failed probes of {})",
                    cluster.name,
                    policy.unhealthy_threshold,
                    cluster.health_path
                );
            }
            Transition::BecameHealthy => {
                log::info!("edge-guard: cluster {} is healthy again", cluster.name);
            }
        }
    }
}

fn log_routing_table(policy: &Policy) {
    log::info!(
        "edge-guard {VERSION}: {} routes, unknown_route={:?}, status at {}, direction {}",
        policy.routes.len(),
        policy.unknown_route,
        policy.status.path,
        policy.direction.as_str()
    );
    for route in &policy.routes {
        log::info!(
            "edge-guard route {}: {}prefix={} methods={} cluster={} class={} websocket={}",
            route.name,
            route
                .host
                .as_ref()
                .map_or(String::new(), |h| format!("host={} ", h.as_written())),
            route.prefix,
            if route.methods.is_any() {
                "*".to_string()
            } else {
                route.methods.to_string()
            },
            route.cluster,
            policy.class_of(route).map_or("?", |c| c.name.as_str()),
            route.websocket
        );
    }
}

/// A stable fingerprint of the policy bytes, to recognise the same policy.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Context for EdgeGuardRoot {
    fn on_done(&mut self) -> bool {
        if std::mem::take(&mut self.owns) {
            ownership::root_done();
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((index, sent_ms)) = self.probes.remove(&token_id) else {
            return;
        };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let healthy = health::is_healthy_status(status);
        let timeout_ms = worker
            .policy
            .health
            .as_ref()
            .map_or(0, |h| h.timeout.as_ms());
        if !healthy && health::answered_after_a_pause(sent_ms, host::now_ms(), timeout_ms) {
            log::debug!("edge-guard: a probe failed after this process was paused; not counted");
            return;
        }
        self.probe_result(&worker, index, healthy);
    }
}

impl RootContext for EdgeGuardRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        if let Ok(LogLevel::Trace | LogLevel::Debug) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(LogLevel::Debug);
        }
        log::info!("edge-guard {VERSION} starting");
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match self.configure() {
            Ok(()) => {
                self.set_tick_period(TICK);
                true
            }
            Err(error) => {
                log::error!("edge-guard: {error}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = host::now_ms();
        worker.now_ms.set(now);
        self.refresh_health(&worker, now);
        self.run_timers(&worker, now);
        if worker.drain.get().is_none() && now >= self.next_drain_check_ms {
            self.next_drain_check_ms = now.saturating_add(DRAIN_CHECK_EVERY_MS);
            self.check_drain(&worker, now);
        }
        let reaped = ownership::tick(now);
        if !reaped.is_empty() {
            worker.reclaimed(&reaped);
        }
        if now >= self.next_reap_ms {
            self.next_reap_ms = now.saturating_add(REAP_EVERY_MS);
            self.reap(&worker);
        }
        if now >= self.next_session_sweep_ms {
            self.next_session_sweep_ms = now.saturating_add(SESSION_SWEEP_EVERY_MS);
            if worker.policy.routes.iter().any(|r| r.engine_io.is_some()) {
                super::http::engine_io::reclaim_expired(&worker, now);
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(EdgeGuardHttp::new(context_id, worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
