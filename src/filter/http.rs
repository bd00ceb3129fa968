//! The HTTP context: one per request (or WebSocket connection).
//!
//! Owns the order of the per-request decisions — upgrade classification,
//! path canonicalisation, status endpoint, route table, Envoy cross-check,
//! health, deadline or WebSocket admission — and
//! carries each out with as few host calls as it can. A plain GET on a known
//! route, complete at its headers, costs four: the request header map (read
//! once, in place), the `xds.cluster_name` property, the router-timeout
//! header set, and the clock when the response headers pass (`:status` is
//! read only when the response came late enough to be the router's
//! timeout); plus one removal per deadline header the client sent, and a
//! clock read and a histogram record with `metrics.request_duration`.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};

use crate::budget;
use crate::deadline::{header_value, Deadline, DeadlineHit, Phase};
use crate::egress;
use crate::headers::RequestHead;
use crate::mismatch;
use crate::path;
use crate::policy::{Identity, OnMismatch, Route, TimeoutClass, UnknownRoute};
use crate::reply::{ErrorCode, LocalReply};
use crate::routing::{Method, RouteMatch};
use crate::upgrade::{self, UpgradeKind};
use crate::websocket::compression;
use crate::websocket::frame::ChunkSource;
use crate::websocket::monitor::{close_frame, ConnectionMonitor, Direction, Verdict};
use crate::websocket::slots::{self, AdmissionRequest, Rejection};

use super::endpoints;
use super::host::{self, HostStore};

pub(super) mod engine_io;
use super::metrics;
use super::worker::{WatchKind, Watched, WatchedRef, WebSocketStream, Worker, WsPhase};

pub const UPSTREAM_TIMEOUT_MESSAGE: &str =
    "the upstream did not answer within the request's deadline";
pub const REQUEST_TIMEOUT_MESSAGE: &str = "the request was not received within its deadline";
const ROUTER_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";
/// `response.code_details` of the router's own timeout reply (Envoy 1.40
/// says `response_timeout`; older releases `upstream_response_timeout`).
const ROUTER_TIMEOUT_DETAILS: [&str; 2] = ["response_timeout", "upstream_response_timeout"];
/// After a limit is broken the close handshake gets this long before the
/// stream is reset (the brief: torn down within 1 s, tick lateness included).
const CLOSE_GRACE_MS: u64 = 800;
/// Tolerance for the wall clock (Envoy's `get_current_time`) stepping back
/// while the router's monotonic timer runs.
const CLOCK_SLACK_MS: u64 = 100;
/// Seconds a client is told to wait after a capacity rejection.
const CAPACITY_RETRY_AFTER: &str = "5";
/// Chunks up to this size are read whole; larger ones only where frame
/// headers lie.
const WHOLE_CHUNK_BYTES: usize = 4096;

pub struct EdgeGuardHttp {
    id: u32,
    worker: Rc<Worker>,
    route: Option<usize>,
    /// When the headers arrived (ms); 0 = no deadline started. Read from the
    /// clock only where it must be exact (a body still to come, the opt-in
    /// histogram); otherwise the worker's last clock reading, which is never
    /// later than the true time.
    started_ms: u64,
    /// The budget given to Envoy's router (`x-envoy-upstream-rq-timeout-ms`).
    router_budget_ms: u64,
    watched: Option<WatchedRef>,
    /// `x-request-id`, kept from the request headers: Envoy 1.40 gives no
    /// access to request headers (nor `request.id`) in later callbacks.
    request_id: Option<String>,
    /// What this stream is to an Engine.IO session, on `engine_io` routes
    /// (boxed: every other stream's context stays small).
    engine_io: Option<Box<engine_io::EioStream>>,
}

impl EdgeGuardHttp {
    pub fn new(id: u32, worker: Rc<Worker>) -> Self {
        EdgeGuardHttp {
            id,
            worker,
            route: None,
            started_ms: 0,
            router_budget_ms: 0,
            watched: None,
            request_id: None,
            engine_io: None,
        }
    }

    fn reject(
        &self,
        code: ErrorCode,
        message: &str,
        extra: Option<(&'static str, String)>,
    ) -> Action {
        metrics::increment(self.worker.metrics.rejected(code), 1);
        let mut reply = LocalReply::error(code, message, self.request_id.as_deref());
        if let Some((name, value)) = extra {
            reply = reply.with_header(name, value);
        }
        log::debug!("#{} {} ({})", self.id, code.as_str(), message);
        host::send_reply(&reply);
        Action::Pause
    }

    /// Envoy chose another cluster than the policy declares: count it, log it
    /// once per route for the whole instance, and say whether to reject.
    fn envoy_disagrees(&self, id: usize, route: &Route) -> bool {
        let chosen = hostcalls::get_property(vec!["xds", "cluster_name"])
            .ok()
            .flatten();
        if chosen.as_deref() == Some(route.cluster.as_bytes()) {
            return false;
        }
        let chosen = chosen
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Some(m) = self.worker.metrics.route(id) {
            metrics::increment(m.mismatch, 1);
        }
        // Logged once per route for the whole instance: the worker's own flag
        // spares a shared-data write per request, the atomic create decides
        // which worker logs.
        let first_on_worker = self
            .worker
            .mismatch_seen
            .borrow_mut()
            .get_mut(id)
            .is_some_and(|seen| !std::mem::replace(seen, true));
        if first_on_worker && mismatch::record(&HostStore, route, &chosen) {
            let direction = self.worker.policy.direction;
            log::warn!("{}", mismatch::warning(direction, route, &chosen));
        }
        self.worker.policy.on_mismatch == OnMismatch::Reject
    }

    fn on_route(
        &mut self,
        id: usize,
        head: &RequestHead,
        upgrade: bool,
        end_of_stream: bool,
    ) -> Action {
        let worker = Rc::clone(&self.worker);
        let policy = &worker.policy;
        let Some(route) = policy.route(id) else {
            return Action::Continue;
        };
        self.route = Some(id);
        if upgrade && !route.websocket {
            return self.reject(
                ErrorCode::RouteNotFound,
                &format!("route {} does not accept WebSocket upgrades", route.name),
                None,
            );
        }
        if self.envoy_disagrees(id, route) {
            return self.reject(
                ErrorCode::RouteMismatch,
                &format!(
                    "route {} is declared for cluster {}, but Envoy would send it elsewhere",
                    route.name, route.cluster
                ),
                None,
            );
        }
        if let Some(health) = policy.health.as_ref().filter(|h| h.fail_fast) {
            if worker.cluster_unhealthy(route.cluster_index) {
                let retry = health.interval.as_ms().div_ceil(1000).max(1).to_string();
                return self.reject(
                    ErrorCode::UpstreamUnhealthy,
                    &format!("cluster {} is failing its health checks", route.cluster),
                    Some(("retry-after", retry)),
                );
            }
        }
        let Some(class) = policy.class_of(route) else {
            return Action::Continue;
        };
        if let Some(eio) = &route.engine_io {
            return self.on_engine_io_request(
                (id, route, class),
                eio,
                head,
                upgrade,
                end_of_stream,
            );
        }
        if upgrade {
            return self.upgrade(id, route, class, head, None);
        }
        self.start_deadline(Some(id), head, class, end_of_stream)
    }

    /// An upgrade: admitted against the limits, or carrying the slot it took
    /// over (`held`: an Engine.IO session's).
    fn upgrade(
        &mut self,
        id: usize,
        route: &Route,
        class: &TimeoutClass,
        head: &RequestHead,
        held: Option<slots::Admission>,
    ) -> Action {
        remove_client_deadline_headers(head);
        // The class bounds the upgrade only; Envoy's router timeout would
        // otherwise also bound the established connection.
        host::set_request_header(ROUTER_TIMEOUT_HEADER, None);
        let now = host::now_ms();
        self.worker.now_ms.set(now);
        let admission = match held {
            Some(admission) => admission,
            None => match self.acquire_slot(id, route) {
                Ok(admission) => admission,
                Err(action) => return action,
            },
        };
        self.open_websocket(id, admission, Deadline::start(class, now), now)
    }

    /// Starts the exchange's deadline: the router gets the upstream's budget
    /// now, and a request whose body is still to come is watched by the tick
    /// for `total`. Client-sent deadline headers are removed first.
    fn start_deadline(
        &mut self,
        route: Option<usize>,
        head: &RequestHead,
        class: &TimeoutClass,
        end_of_stream: bool,
    ) -> Action {
        remove_client_deadline_headers(head);
        let direction = self.worker.policy.direction;
        // A request complete at its headers gives the router its class's
        // budget whatever the time: no clock read, unless the histogram
        // needs the exact start.
        let now = if end_of_stream && !self.worker.policy.request_duration_histogram {
            self.worker.now_ms.get()
        } else {
            host::now_ms()
        };
        let Some(deadline) = budget::deadline_for(direction, class, head.inherited, now) else {
            if let Some(m) = route.and_then(|r| self.worker.metrics.route(r)) {
                metrics::increment(m.deadline_hit(DeadlineHit::UpstreamTimeout), 1);
            }
            return self.reject(ErrorCode::UpstreamTimeout, budget::SPENT_MESSAGE, None);
        };
        self.worker.now_ms.set(now);
        self.started_ms = now;
        let upstream_budget = deadline.upstream_budget(now);
        self.router_budget_ms = upstream_budget.as_ms();
        host::set_request_header(ROUTER_TIMEOUT_HEADER, Some(&header_value(upstream_budget)));
        if let Some(value) = budget::grpc_timeout_for(direction, head.grpc_timeout, upstream_budget)
        {
            host::set_request_header("grpc-timeout", Some(&value));
        }
        if !end_of_stream {
            let watched = Rc::new(std::cell::RefCell::new(Watched {
                route,
                request_id: self.request_id.clone(),
                kind: WatchKind::Exchange {
                    phase: Phase::ReceivingRequest,
                    deadline,
                },
            }));
            self.worker
                .watch(self.id, Rc::clone(&watched), deadline.total_deadline_ms());
            self.watched = Some(watched);
        }
        Action::Continue
    }

    fn identity(&self) -> Option<String> {
        match self.worker.policy.websocket.identity.as_ref()? {
            Identity::Header(name) => host::request_header(name),
            Identity::Jwt {
                metadata_namespace,
                payload_key,
                claim,
            } => host::property_text(vec![
                "metadata",
                "filter_metadata",
                metadata_namespace,
                payload_key,
                claim,
            ]),
        }
        .filter(|id| !id.is_empty())
    }

    /// Takes a slot against the instance, route and user limits, or answers
    /// the request with the documented error.
    fn acquire_slot(&mut self, id: usize, route: &Route) -> Result<slots::Admission, Action> {
        let worker = Rc::clone(&self.worker);
        let ws = &worker.policy.websocket;
        let route_metrics = worker.metrics.route(id);
        let user = self.identity();
        if user.is_none() && ws.require_identity {
            if let Some(m) = route_metrics {
                metrics::increment(m.ws_rejected(ErrorCode::IdentityRequired), 1);
            }
            return Err(self.reject(
                ErrorCode::IdentityRequired,
                "this WebSocket route needs an authenticated user",
                None,
            ));
        }
        let request = AdmissionRequest {
            route: &route.name,
            route_limit: route.max_connections,
            instance_limit: ws.max_connections,
            user: user.as_deref(),
            user_limit: ws.max_connections_per_user,
        };
        let admission = match worker.admit(id, request) {
            Ok(admission) => admission,
            Err(rejection) => {
                let (code, message, retry) = match rejection {
                    Rejection::UserLimit => (
                        ErrorCode::WebSocketUserLimit,
                        "too many WebSocket connections for this user",
                        None,
                    ),
                    Rejection::InvalidUser => (
                        ErrorCode::IdentityRequired,
                        "the user identity is empty or too long",
                        None,
                    ),
                    Rejection::InstanceFull | Rejection::RouteFull => (
                        ErrorCode::WebSocketCapacity,
                        "no WebSocket capacity left; retry later",
                        Some(("retry-after", CAPACITY_RETRY_AFTER.to_string())),
                    ),
                    Rejection::Contention | Rejection::Store(_) => {
                        log::warn!("edge-guard: websocket admission failed: {rejection}");
                        (
                            ErrorCode::WebSocketCapacity,
                            "WebSocket admission is unavailable; retry later",
                            Some(("retry-after", CAPACITY_RETRY_AFTER.to_string())),
                        )
                    }
                };
                if let Some(m) = route_metrics {
                    metrics::increment(m.ws_rejected(code), 1);
                }
                return Err(self.reject(code, message, retry));
            }
        };
        Ok(admission)
    }

    fn open_websocket(
        &mut self,
        id: usize,
        admission: slots::Admission,
        deadline: Deadline,
        now: u64,
    ) -> Action {
        let worker = Rc::clone(&self.worker);
        let ws = &worker.policy.websocket;
        if !compression::keep_offer(&ws.connection) {
            // max_message_bytes counts real message bytes: nothing compressed.
            host::set_request_header("sec-websocket-extensions", None);
        }
        let watched = Rc::new(std::cell::RefCell::new(Watched {
            route: Some(id),
            request_id: self.request_id.clone(),
            kind: WatchKind::WebSocket(WebSocketStream {
                phase: WsPhase::Upgrading,
                monitor: ConnectionMonitor::new(now),
                admission: Some(admission),
                close_owed_to_client: None,
                close_owed_to_upstream: None,
                drain_at_ms: None,
            }),
        }));
        worker.watch(self.id, Rc::clone(&watched), deadline.upgrade_deadline_ms());
        self.watched = Some(watched);
        Action::Continue
    }

    /// One chunk of an upgraded stream: check its frames, and carry out a
    /// close the monitor decided on.
    fn on_websocket_chunk(&mut self, dir: Direction, body_size: usize) -> Action {
        let Some(watched) = self.watched.clone() else {
            return Action::Continue;
        };
        let mut w = watched.borrow_mut();
        let route = w.route;
        let WatchKind::WebSocket(ws) = &mut w.kind else {
            return Action::Continue;
        };
        let buffer = match dir {
            Direction::ClientToUpstream => BufferType::HttpRequestBody,
            Direction::UpstreamToClient => BufferType::HttpResponseBody,
        };
        let owed = match dir {
            Direction::ClientToUpstream => ws.close_owed_to_upstream.take(),
            Direction::UpstreamToClient => ws.close_owed_to_client.take(),
        };
        if let Some(reason) = owed {
            let frame = close_frame(reason.close_code(), reason.as_str(), self.mask_for(dir));
            host::replace_body(buffer, 0, body_size, &frame);
            return Action::Continue;
        }
        match ws.phase {
            WsPhase::Open => {}
            WsPhase::Closing { .. } => {
                if body_size > 0 {
                    host::replace_body(buffer, 0, body_size, &[]);
                }
                return Action::Continue;
            }
            WsPhase::Upgrading => return Action::Continue,
        }
        let limits = &self.worker.policy.websocket.connection;
        let now = self.worker.now_ms.get();
        let mut chunk = HostChunk::new(buffer, body_size);
        let Verdict::Close {
            reason,
            offset_in_chunk,
            at_frame_boundary,
        } = ws.monitor.on_chunk(limits, dir, &mut chunk, now)
        else {
            return Action::Continue;
        };
        if let Some(m) = route.and_then(|r| self.worker.metrics.route(r)) {
            metrics::increment(m.ws_closed(reason), 1);
        }
        log::debug!(
            "#{} websocket {}: closing with {}",
            self.id,
            reason.as_str(),
            reason.close_code()
        );
        // Towards the receiver of this chunk: keep the frames before the
        // offending one, then a close frame (when the stream is between frames).
        let mut replacement = Vec::new();
        if offset_in_chunk > 0 {
            replacement = host::body_bytes(buffer, 0, offset_in_chunk).unwrap_or_default();
        }
        if at_frame_boundary {
            replacement.extend_from_slice(&close_frame(
                reason.close_code(),
                reason.as_str(),
                self.mask_for(dir),
            ));
        }
        host::replace_body(buffer, 0, body_size, &replacement);
        // Towards the sender: with the next chunk that flows its way.
        match dir {
            Direction::ClientToUpstream => ws.owe_close(Direction::UpstreamToClient, reason),
            Direction::UpstreamToClient => ws.owe_close(Direction::ClientToUpstream, reason),
        }
        let teardown = now.saturating_add(CLOSE_GRACE_MS);
        ws.phase = WsPhase::Closing {
            teardown_ms: teardown,
        };
        drop(w);
        self.worker.schedule(self.id, teardown);
        Action::Continue
    }

    /// Client-to-server frames must be masked; the key only has to vary.
    fn mask_for(&self, dir: Direction) -> Option<[u8; 4]> {
        match dir {
            Direction::ClientToUpstream => {
                let seed = self.id.wrapping_mul(0x9E37_79B9) ^ (self.worker.now_ms.get() as u32);
                Some(seed.to_le_bytes())
            }
            Direction::UpstreamToClient => None,
        }
    }

    fn on_websocket_response(&mut self, ws: &mut WebSocketStream) -> bool {
        if ws.phase != WsPhase::Upgrading {
            return false;
        }
        if host::response_header(":status").as_deref() == Some("101") {
            let now = host::now_ms();
            self.worker.now_ms.set(now);
            ws.phase = WsPhase::Open;
            ws.monitor = ConnectionMonitor::new(now);
            let accepted = host::response_header("sec-websocket-extensions");
            if compression::allowed(
                &self.worker.policy.websocket.connection,
                accepted.as_deref(),
            ) {
                ws.monitor.allow_compressed_messages();
            }
            if self.engine_io.is_some() {
                ws.monitor.count_engine_io_data_only();
            }
            let limits = &self.worker.policy.websocket.connection;
            if let Some(due) = ws.monitor.next_timer_due(limits).or(ws.drain_at_ms) {
                // The tick reschedules the later of the two.
                self.worker
                    .schedule(self.id, ws.drain_at_ms.map_or(due, |d| d.min(due)));
            }
            false
        } else {
            // The upstream refused the upgrade (or Envoy answered for it): the
            // connection never opened, so its slot goes back now.
            ws.phase = WsPhase::Closing {
                teardown_ms: u64::MAX,
            };
            true
        }
    }

    fn finish(&mut self) {
        if self.watched.take().is_some() && !super::fault::skips_release(self.id) {
            self.worker.finish(self.id);
        }
    }
}

/// Removes the deadline headers the client sent (the router timeout one is
/// then set by edge-guard, or removed for an upgrade).
fn remove_client_deadline_headers(head: &RequestHead) {
    for name in head.client_deadline_headers() {
        if name != ROUTER_TIMEOUT_HEADER {
            host::set_request_header(name, None);
        }
    }
}

/// A body chunk read lazily from the host: whole when small, otherwise only
/// the windows the frame scanner asks for.
struct HostChunk {
    buffer: BufferType,
    len: usize,
    window_start: usize,
    window: Vec<u8>,
}

impl HostChunk {
    fn new(buffer: BufferType, len: usize) -> Self {
        HostChunk {
            buffer,
            len,
            window_start: 0,
            window: Vec::new(),
        }
    }
}

impl ChunkSource for HostChunk {
    fn len(&self) -> usize {
        self.len
    }

    fn bytes(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.saturating_add(len);
        let cached_end = self.window_start.saturating_add(self.window.len());
        if start < self.window_start || end > cached_end {
            let (from, size) = if self.len <= WHOLE_CHUNK_BYTES {
                (0, self.len)
            } else {
                (start, len.max(64))
            };
            self.window = host::body_bytes(self.buffer, from, size)?;
            self.window_start = from;
        }
        self.window.get(start.checked_sub(self.window_start)?..)
    }
}

impl Context for EdgeGuardHttp {
    fn on_done(&mut self) -> bool {
        self.finish();
        self.engine_io_done();
        true
    }
}

impl Drop for EdgeGuardHttp {
    fn drop(&mut self) {
        self.finish();
        self.engine_io_done();
    }
}

impl HttpContext for EdgeGuardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        super::fault::on_request_headers(self.id);
        let mut head = host::request_head();
        // Kept for every reply this stream may get, now or later: request
        // headers are out of reach after this callback.
        self.request_id = head.request_id.take();
        let method = Method::parse(head.method.as_deref().unwrap_or_default());
        let websocket = match upgrade::classify(method, head.upgrade.as_deref()) {
            UpgradeKind::Refused(why) => {
                return self.reject(ErrorCode::InvalidUpgrade, &why.to_string(), None)
            }
            kind => kind == UpgradeKind::WebSocket,
        };
        let Some(path) = head.path.as_deref() else {
            return self.reject(ErrorCode::InvalidPath, "the request has no path", None);
        };
        // Decided before any route lookup: a path Envoy and the upstream
        // could read differently is never resolved, counted or logged.
        if let Err(problem) = path::check(path) {
            return self.reject(ErrorCode::InvalidPath, &problem.to_string(), None);
        }
        let worker = Rc::clone(&self.worker);
        let policy = &worker.policy;
        let path_only = path::path_part(path);
        if endpoints::answer(&worker, path_only, method) {
            return Action::Pause;
        }
        let authority = head.authority.as_deref().unwrap_or_default();
        match policy.resolve(authority, path, method) {
            RouteMatch::Route(id) => self.on_route(id, &head, websocket, end_of_stream),
            RouteMatch::MethodNotAllowed { allowed } => self.reject(
                ErrorCode::MethodNotAllowed,
                &format!(
                    "{} is not allowed on {path_only}; allowed: {allowed}",
                    method.name()
                ),
                Some(("allow", allowed.to_string())),
            ),
            // An upgrade is never let through without a route that counts it.
            RouteMatch::NotFound if websocket => self.reject(
                ErrorCode::RouteNotFound,
                &format!("no WebSocket route for {path_only}"),
                None,
            ),
            RouteMatch::NotFound => match policy.unknown_route {
                // Let through, but never without a deadline: the default class.
                UnknownRoute::Allow => match policy.timeout_classes.get(policy.default_class) {
                    Some(class) => self.start_deadline(None, &head, class, end_of_stream),
                    None => Action::Continue,
                },
                UnknownRoute::Reject => {
                    let (code, message) =
                        egress::undeclared(policy.direction, authority, path_only);
                    self.reject(code, &message, None)
                }
            },
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        super::fault::on_request_body(body_size);
        let Some(watched) = self.watched.clone() else {
            return Action::Continue;
        };
        let is_websocket = {
            let mut w = watched.borrow_mut();
            match &mut w.kind {
                WatchKind::Exchange { phase, .. } => {
                    if end_of_stream && *phase == Phase::ReceivingRequest {
                        *phase = Phase::AwaitingResponse;
                    }
                    false
                }
                WatchKind::WebSocket(_) => true,
            }
        };
        if is_websocket {
            return self.on_websocket_chunk(Direction::ClientToUpstream, body_size);
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(watched) = &self.watched {
            if let WatchKind::Exchange { phase, .. } = &mut watched.borrow_mut().kind {
                if *phase == Phase::ReceivingRequest {
                    *phase = Phase::AwaitingResponse;
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.engine_io.is_some() {
            self.engine_io_response_headers();
        }
        if let Some(watched) = self.watched.clone() {
            let release = {
                let mut w = watched.borrow_mut();
                match &mut w.kind {
                    WatchKind::Exchange { phase, .. } => {
                        *phase = Phase::Responded;
                        true
                    }
                    WatchKind::WebSocket(ws) => {
                        self.websocket_response(ws);
                        // Anything but a 101 (a refusal, or edge-guard's own
                        // 504 for an upgrade past its deadline) is a plain
                        // HTTP response: stop watching so its body passes.
                        let open = ws.phase == WsPhase::Open;
                        if open {
                            // Only an upgrade timeout replies; an open
                            // connection holds no more than it needs.
                            w.request_id = None;
                            self.request_id = None;
                        }
                        !open
                    }
                }
            };
            if release {
                self.finish();
            }
        }
        // Only exchanges whose deadline edge-guard started on a declared
        // route are counted and timed.
        let worker = Rc::clone(&self.worker);
        let Some(m) = self.route.and_then(|r| worker.metrics.route(r)) else {
            return Action::Continue;
        };
        if self.started_ms == 0 {
            return Action::Continue;
        }
        let now = host::now_ms();
        worker.now_ms.set(now);
        let elapsed = now.saturating_sub(self.started_ms);
        // The router's timeout fires no earlier than its budget after the
        // headers; `started_ms` is never later than their arrival, so a
        // response sooner than that cannot be one and costs no header read.
        if elapsed.saturating_add(CLOCK_SLACK_MS) >= self.router_budget_ms
            && host::response_header(":status").as_deref() == Some("504")
            && host::property_text(vec!["response", "code_details"])
                .is_some_and(|details| ROUTER_TIMEOUT_DETAILS.contains(&details.as_str()))
        {
            // Envoy's router gave up at the budget edge-guard set. Its body
            // is the JSON error already: the connection manager's
            // local_reply_config writes it (envoy/envoy.yaml).
            metrics::increment(m.deadline_hit(DeadlineHit::UpstreamTimeout), 1);
        }
        // A no-op unless `metrics.request_duration` defined it.
        metrics::record(m.duration_ms, elapsed);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.engine_io.is_some() {
            self.engine_io_response_body(body_size, end_of_stream);
        }
        if self.watched.is_some() {
            return self.on_websocket_chunk(Direction::UpstreamToClient, body_size);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
        self.engine_io_done();
    }
}

impl EdgeGuardHttp {
    fn websocket_response(&mut self, ws: &mut WebSocketStream) -> Action {
        if self.on_websocket_response(ws) {
            if let Some(admission) = ws.admission.take() {
                // A refused upgrade of a polling session gives the slot back to it.
                if let Some(admission) = self.engine_io_upgrade_refused(admission) {
                    self.worker.release(self.route, admission);
                }
            }
        }
        Action::Continue
    }
}
