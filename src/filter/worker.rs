//! Per-worker state shared by the worker's root context and its HTTP
//! contexts (one thread, one VM instance: `Rc`/`RefCell` are enough).
//!
//! Owns the timer heap the root context's tick drains, the streams that
//! have a deadline or an open WebSocket, and the worker's cached view of
//! cluster health. Never holds a borrow across a host call that may
//! re-enter the VM; `take_due` hands actions out for the caller to run.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU64;
use std::rc::Rc;

use hashbrown::HashMap;

use crate::deadline::{Deadline, DeadlineHit, Phase};
use crate::drain::{self, DrainState};
use crate::health;
use crate::policy::Policy;
use crate::status::ClusterHealth;
use crate::timers::{self, Armed, TimerHeap};
use crate::websocket::monitor::{CloseReason, ConnectionLimits, ConnectionMonitor, Direction};
use crate::websocket::ownership::{self, Reaped};
use crate::websocket::slots::{self, Admission, AdmissionRequest, Rejection};

use super::host::HostStore;
use super::metrics::{self, Metrics};
use super::ownership as owner;

/// Where an upgraded (or upgrading) connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsPhase {
    /// Upgrade sent upstream; waiting for its 101 within the class's
    /// `response`. Keeps `x-request-id` for the one reply a WebSocket can
    /// still get, the tick's 504 if no 101 comes in time.
    Upgrading {
        request_id: Option<Box<str>>,
    },
    Open,
    /// A limit was broken and close frames are on their way; torn down at
    /// `teardown_ms` whatever the peers do (`u64::MAX`: nothing left to do).
    Closing {
        teardown_ms: u64,
        /// Close frames still owed to each peer, sent with the next chunk
        /// that flows its way (a filter cannot write into an idle stream).
        owed_to_client: Option<CloseReason>,
        owed_to_upstream: Option<CloseReason>,
    },
}

impl WsPhase {
    /// Moves to `Closing` owing nothing; returns the request id an upgrading
    /// connection kept.
    pub fn close(&mut self, teardown_ms: u64) -> Option<Box<str>> {
        let closing = WsPhase::Closing {
            teardown_ms,
            owed_to_client: None,
            owed_to_upstream: None,
        };
        match std::mem::replace(self, closing) {
            WsPhase::Upgrading { request_id } => request_id,
            WsPhase::Open | WsPhase::Closing { .. } => None,
        }
    }
}

/// How long a connection closed by its idle or lifetime limit has for the
/// close frames to pass before it is reset.
const TIMER_CLOSE_GRACE_MS: u64 = 250;

#[derive(Debug)]
pub struct WebSocketStream {
    pub phase: WsPhase,
    pub monitor: ConnectionMonitor,
    /// The slot this connection holds; `take()`n exactly once on release.
    pub admission: Option<Admission>,
    /// When a drain closes this connection (1001), once the worker follows
    /// one (a time in ms since the epoch is never 0: no tag byte needed).
    drain_at_ms: Option<NonZeroU64>,
}

impl WebSocketStream {
    pub fn new(
        monitor: ConnectionMonitor,
        admission: Admission,
        request_id: Option<Box<str>>,
    ) -> Self {
        WebSocketStream {
            phase: WsPhase::Upgrading { request_id },
            monitor,
            admission: Some(admission),
            drain_at_ms: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.phase == WsPhase::Open
    }

    /// When a drain closes this connection, once the worker follows one.
    pub fn drain_at_ms(&self) -> Option<u64> {
        self.drain_at_ms.map(NonZeroU64::get)
    }

    /// When an open connection next needs the tick: its idle or lifetime
    /// limit, or its drain close, whichever comes first.
    pub fn next_due(&self, limits: &ConnectionLimits) -> Option<u64> {
        match (self.monitor.next_timer_due(limits), self.drain_at_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A limit was broken: moves to `Closing` until `teardown_ms`, owing
    /// `reason`'s close frame to each peer in `towards` whose stream is between
    /// frames (a close frame in the middle of a frame would corrupt it: then
    /// the remaining bytes are just dropped until the reset).
    pub fn start_closing(&mut self, reason: CloseReason, towards: &[Direction], teardown_ms: u64) {
        let owed = |to: Direction| {
            (towards.contains(&to) && self.monitor.at_frame_boundary(to)).then_some(reason)
        };
        self.phase = WsPhase::Closing {
            teardown_ms,
            owed_to_client: owed(Direction::UpstreamToClient),
            owed_to_upstream: owed(Direction::ClientToUpstream),
        };
    }

    /// The close frame owed to the peer `towards` flows to, taken (sent once).
    pub fn take_owed_close(&mut self, towards: Direction) -> Option<CloseReason> {
        let WsPhase::Closing {
            owed_to_client,
            owed_to_upstream,
            ..
        } = &mut self.phase
        else {
            return None;
        };
        match towards {
            Direction::UpstreamToClient => owed_to_client.take(),
            Direction::ClientToUpstream => owed_to_upstream.take(),
        }
    }
}

#[derive(Debug)]
// One allocation per connection: the WebSocket state lives inline in the
// watched stream's `Rc`, not in a box of its own; an exchange with a body
// (short-lived) pays the difference.
#[allow(clippy::large_enum_variant)]
pub enum WatchKind {
    /// A request with a body: its `total` deadline is enforced by the tick.
    Exchange {
        phase: Phase,
        deadline: Deadline,
        /// For the reply the tick sends: request headers are out of reach then.
        request_id: Option<Box<str>>,
    },
    WebSocket(WebSocketStream),
}

/// A stream the tick has to look at.
#[derive(Debug)]
pub struct Watched {
    /// The declared route; `None` for a request on no declared route that
    /// `unknown_route: allow` lets through under the default class.
    pub route: Option<usize>,
    /// This stream's one live entry in the timer heap.
    pub timer: Armed,
    pub kind: WatchKind,
}

pub type WatchedRef = Rc<RefCell<Watched>>;

/// What the tick must do to a stream, once no borrow is held.
#[derive(Debug)]
pub enum TimerAction {
    /// Answer with a deadline error (408 / 504).
    Deadline {
        context_id: u32,
        route: Option<usize>,
        hit: DeadlineHit,
        request_id: Option<Box<str>>,
    },
    /// Tear an upgraded connection down.
    Reset { context_id: u32 },
    /// A connection hit its idle or lifetime limit: count it and give its
    /// slot back now (the stream itself is reset at its teardown time).
    Closed {
        route: Option<usize>,
        reason: CloseReason,
        admission: Option<Admission>,
    },
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: TimerHeap,
    streams: HashMap<u32, WatchedRef>,
}

/// Everything a worker shares between its contexts.
pub struct Worker {
    pub policy: Rc<Policy>,
    pub metrics: Metrics,
    /// Refreshed by every tick and by every host clock read; good to ~50 ms.
    pub now_ms: Cell<u64>,
    pub timers: RefCell<Timers>,
    /// Per cluster, refreshed from shared data by the tick.
    pub health: RefCell<Vec<Option<ClusterHealth>>>,
    /// Per route: this worker has seen Envoy disagree with the policy.
    pub mismatch_seen: RefCell<Vec<bool>>,
    /// The instance's drain, once this worker follows it.
    pub drain: Cell<Option<DrainState>>,
}

impl Worker {
    pub fn new(policy: Rc<Policy>, metrics: Metrics, now_ms: u64) -> Worker {
        let clusters = policy.clusters.len();
        let routes = policy.routes.len();
        Worker {
            policy,
            metrics,
            now_ms: Cell::new(now_ms),
            timers: RefCell::new(Timers::default()),
            health: RefCell::new(vec![None; clusters]),
            mismatch_seen: RefCell::new(vec![false; routes]),
            drain: Cell::new(None),
        }
    }

    /// Starts watching a stream; `due_ms` is its first timer.
    pub fn watch(&self, context_id: u32, watched: WatchedRef, due_ms: u64) {
        let mut timers = self.timers.borrow_mut();
        let timers = &mut *timers;
        timers
            .heap
            .arm(&mut watched.borrow_mut().timer, context_id, due_ms);
        timers.streams.insert(context_id, watched);
    }

    /// Makes sure the tick looks at the stream (`w`, borrowed by the caller)
    /// by `due_ms`.
    pub fn schedule(&self, context_id: u32, w: &mut Watched, due_ms: u64) {
        self.timers
            .borrow_mut()
            .heap
            .arm(&mut w.timer, context_id, due_ms);
    }

    /// Stops watching a stream and releases its WebSocket slot if it still
    /// holds one. Safe to call any number of times from any callback.
    pub fn finish(&self, context_id: u32) {
        let removed = self.timers.borrow_mut().streams.remove(&context_id);
        if let Some(watched) = removed {
            let (route, admission) = {
                let mut w = watched.borrow_mut();
                let route = w.route;
                let admission = match &mut w.kind {
                    WatchKind::WebSocket(ws) => ws.admission.take(),
                    WatchKind::Exchange { .. } => None,
                };
                (route, admission)
            };
            if let Some(admission) = admission {
                self.release(route, admission);
            }
        }
    }

    /// Takes a WebSocket slot for `route`. The instance gauge goes up first
    /// and down last, so that in this process it is never below the shared
    /// count: the difference is then what another process holds (see
    /// `held_elsewhere`). The slot is recorded in this VM's ledger.
    pub fn admit(
        &self,
        route: usize,
        mut request: AdmissionRequest<'_>,
    ) -> Result<Admission, Rejection> {
        // A draining instance takes no new connection (read from shared
        // data: exact even before this worker's tick has followed the drain).
        if self.drain.get().is_some() || drain::read(&HostStore).is_ok_and(|d| d.is_some()) {
            return Err(Rejection::InstanceFull);
        }
        if request.instance_limit.is_some() {
            request.instance_limit =
                ownership::local_limit(request.instance_limit, self.held_elsewhere());
        }
        metrics::increment(self.metrics.ws_active, 1);
        let admission = match slots::try_acquire(&HostStore, &request) {
            Ok(admission) => admission,
            Err(rejection) => {
                metrics::increment(self.metrics.ws_active, -1);
                return Err(rejection);
            }
        };
        owner::acquired(&admission, self.now_ms.get());
        if let Some(m) = self.metrics.route(route) {
            metrics::increment(m.ws_active, 1);
        }
        Ok(admission)
    }

    pub fn release(&self, route: Option<usize>, admission: Admission) {
        // Ledger first: a VM dying between the two leaks this one slot
        // rather than letting the reaper subtract it twice.
        owner::released(&admission, self.now_ms.get());
        if let Err(e) = slots::release(&HostStore, admission) {
            log::error!("edge-guard: releasing a websocket slot failed: {e}");
        }
        metrics::increment(self.metrics.ws_active, -1);
        if let Some(m) = route.and_then(|r| self.metrics.route(r)) {
            metrics::increment(m.ws_active, -1);
        }
    }

    /// What a hot-restart parent holds: the merged instance gauge minus this
    /// process's shared count (read in that order, the count can only be
    /// lower than at the gauge read, never higher, so the difference never
    /// under-counts the parent). Envoy merges the parent's gauges at every
    /// stats flush (5 s by default), so capacity the parent frees reaches
    /// this process within one flush.
    fn held_elsewhere(&self) -> u32 {
        let merged = metrics::read(self.metrics.ws_active).unwrap_or(0);
        slots::read_counts(&HostStore, &[])
            .map(|counts| ownership::held_elsewhere(merged, counts.instance))
            .unwrap_or(0)
    }

    /// A dead VM generation's slots were given back: count it, and take its
    /// connections off the gauges it had raised.
    pub fn reclaimed(&self, reaped: &[Reaped]) {
        for generation in reaped {
            let held = &generation.holdings;
            log::warn!(
                "edge-guard: VM generation {} stopped (no heartbeat for {} ms): reclaimed {} websocket slots",
                generation.generation,
                ownership::STALE_AFTER_MS,
                held.instance
            );
            metrics::increment(self.metrics.vm_failures, 1);
            metrics::increment(self.metrics.ws_reclaimed, i64::from(held.instance));
            metrics::increment(self.metrics.ws_active, -i64::from(held.instance));
            for (name, n) in &held.routes {
                let route = self.policy.routes.iter().position(|r| *r.name == **name);
                if let Some(m) = route.and_then(|r| self.metrics.route(r)) {
                    metrics::increment(m.ws_active, -i64::from(*n));
                }
            }
        }
    }

    /// Follows the instance's drain: every WebSocket this worker holds gets
    /// its close time, spread evenly over what is left of the period. Those
    /// still upgrading are scheduled when their 101 arrives.
    pub fn follow_drain(&self, state: DrainState, now_ms: u64) {
        if self.drain.get().is_some() {
            return;
        }
        self.drain.set(Some(state));
        let mut timers = self.timers.borrow_mut();
        let timers = &mut *timers;
        let mut held: Vec<(u32, WatchedRef)> = timers
            .streams
            .iter()
            .filter(|(_, w)| matches!(w.borrow().kind, WatchKind::WebSocket(_)))
            .map(|(id, w)| (*id, Rc::clone(w)))
            .collect();
        // Ids are unique: unstable gives the same order, in less wasm.
        held.sort_unstable_by_key(|(id, _)| *id);
        let times = drain::close_times(&state, held.len(), now_ms);
        for ((id, watched), at) in held.into_iter().zip(times) {
            let w = &mut *watched.borrow_mut();
            if let WatchKind::WebSocket(ws) = &mut w.kind {
                ws.drain_at_ms = NonZeroU64::new(at.max(1));
                if ws.is_open() {
                    timers.heap.arm(&mut w.timer, id, at);
                }
            }
        }
    }

    /// Ids of the open WebSocket streams, for the reaper.
    pub fn websocket_ids(&self) -> Vec<u32> {
        self.timers
            .borrow()
            .streams
            .iter()
            .filter(|(_, w)| matches!(w.borrow().kind, WatchKind::WebSocket(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Pops every timer due at `now_ms` and decides what each one means.
    /// Stale entries (stream gone, superseded by an earlier one) are dropped
    /// here; a stream that still needs the tick is armed again from its state
    /// (always later than `now_ms`, so not popped again in this pass).
    pub fn take_due(&self, now_ms: u64) -> Vec<TimerAction> {
        let mut actions = Vec::new();
        let mut guard = self.timers.borrow_mut();
        let timers = &mut *guard;
        let limits = &self.policy.websocket.connection;
        while let Some((due, id)) = timers.heap.pop_due(now_ms) {
            let Some(watched) = timers.streams.get(&id) else {
                continue;
            };
            let w = &mut *watched.borrow_mut();
            if !timers::fire(&mut w.timer, due) {
                continue;
            }
            let route = w.route;
            let rearm = match &mut w.kind {
                WatchKind::Exchange {
                    phase,
                    deadline,
                    request_id,
                } => {
                    let total = deadline.total_deadline_ms();
                    if total > now_ms {
                        Some(total)
                    } else {
                        if let Some(hit) = Deadline::hit_in(*phase) {
                            *phase = Phase::Responded;
                            actions.push(TimerAction::Deadline {
                                context_id: id,
                                route,
                                hit,
                                request_id: request_id.take(),
                            });
                        }
                        None
                    }
                }
                WatchKind::WebSocket(ws) => match ws.phase {
                    WsPhase::Upgrading { .. } => {
                        let request_id = ws.phase.close(u64::MAX);
                        actions.push(TimerAction::Deadline {
                            context_id: id,
                            route,
                            hit: DeadlineHit::UpstreamTimeout,
                            request_id,
                        });
                        None
                    }
                    WsPhase::Open => match ws
                        .drain_at_ms()
                        .filter(|at| *at <= now_ms)
                        .map(|_| CloseReason::Draining)
                        .or_else(|| ws.monitor.timer_check(limits, now_ms))
                    {
                        Some(reason) => {
                            // Close politely where the protocol lets us: the
                            // close frames ride on the next chunk each way (a
                            // filter cannot write into an idle stream); the
                            // stream is reset at teardown whatever happens.
                            // The slot goes back now: the connection is over.
                            let teardown_ms = now_ms.saturating_add(TIMER_CLOSE_GRACE_MS);
                            ws.start_closing(
                                reason,
                                &[Direction::UpstreamToClient, Direction::ClientToUpstream],
                                teardown_ms,
                            );
                            actions.push(TimerAction::Closed {
                                route,
                                reason,
                                admission: ws.admission.take(),
                            });
                            Some(teardown_ms)
                        }
                        None => ws
                            .next_due(limits)
                            .map(|next| next.max(now_ms.saturating_add(1))),
                    },
                    WsPhase::Closing { teardown_ms, .. } if teardown_ms <= now_ms => {
                        ws.phase.close(u64::MAX);
                        actions.push(TimerAction::Reset { context_id: id });
                        None
                    }
                    // Not yet (an earlier timer of this stream came first).
                    WsPhase::Closing { teardown_ms, .. } => Some(teardown_ms),
                },
            };
            if let Some(at) = rearm {
                timers.heap.arm(&mut w.timer, id, at);
            }
        }
        // Stale entries stay in the heap until due; keep the heap from
        // growing far beyond the live streams under load.
        if timers.heap.len() > 1024 && timers.heap.len() > 4 * timers.streams.len() {
            let streams = &timers.streams;
            timers.heap.compact(|id, due| {
                streams.get(&id).is_some_and(|w| {
                    w.try_borrow()
                        .map_or(true, |w| timers::is_live(w.timer, due))
                })
            });
        }
        actions
    }

    /// Every cluster's shared health record as it is now, for the status
    /// endpoint (the worker's own view is refreshed on transitions only, so
    /// its probe counts may be behind).
    pub fn health_snapshot(&self) -> Vec<Option<ClusterHealth>> {
        if self.policy.health.is_none() {
            return vec![None; self.policy.clusters.len()];
        }
        self.policy
            .clusters
            .iter()
            .map(|cluster| {
                health::read(&HostStore, &cluster.name)
                    .ok()
                    .map(|record| ClusterHealth {
                        healthy: record.healthy,
                        probes: record.probes,
                    })
            })
            .collect()
    }

    pub fn cluster_unhealthy(&self, cluster: usize) -> bool {
        self.health
            .borrow()
            .get(cluster)
            .copied()
            .flatten()
            .is_some_and(|h| !h.healthy)
    }
}
