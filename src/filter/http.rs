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
//!
//! The host side of WebSocket streams (admission, frames, closes) is in
//! `websocket`, that of Engine.IO sessions in `engine_io`.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::budget;
use crate::deadline::{header_value, DeadlineHit, Phase};
use crate::egress;
use crate::headers::{HeaderPairs, RequestHead};
use crate::mismatch;
use crate::path;
use crate::policy::{Identity, OnMismatch, Route, TimeoutClass, UnknownRoute};
use crate::reply::{ErrorCode, LocalReply};
use crate::routing::{Method, RouteMatch};
use crate::timers::Armed;
use crate::upgrade::{self, UpgradeKind};
use crate::websocket::monitor::Direction;

use super::endpoints;
use super::host::{self, HostStore};

pub(super) mod engine_io;
mod websocket;
use super::metrics;
use super::worker::{WatchKind, Watched, WatchedRef, Worker};

pub const UPSTREAM_TIMEOUT_MESSAGE: &str =
    "the upstream did not answer within the request's deadline";
pub const REQUEST_TIMEOUT_MESSAGE: &str = "the request was not received within its deadline";
pub(super) const ROUTER_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";
/// `response.code_details` of the router's own timeout reply (Envoy 1.40
/// says `response_timeout`; older releases `upstream_response_timeout`).
const ROUTER_TIMEOUT_DETAILS: [&str; 2] = ["response_timeout", "upstream_response_timeout"];
/// Tolerance for the wall clock (Envoy's `get_current_time`) stepping back
/// while the router's monotonic timer runs.
const CLOCK_SLACK_MS: u64 = 100;
/// `EdgeGuardHttp::route` of a stream on no declared route.
const NO_ROUTE: u32 = u32::MAX;

pub struct EdgeGuardHttp {
    id: u32,
    worker: Rc<Worker>,
    /// The declared route's index, [`NO_ROUTE`] for none (4 bytes: the
    /// context of an open WebSocket is held for the connection's whole life).
    route: u32,
    /// When the headers arrived (ms); 0 = no deadline started. Read from the
    /// clock only where it must be exact (a body still to come, the opt-in
    /// histogram); otherwise the worker's last clock reading, which is never
    /// later than the true time.
    started_ms: u64,
    /// The budget given to Envoy's router (`x-envoy-upstream-rq-timeout-ms`),
    /// saturated at about 49 days: only ever compared as a lower bound, which
    /// a smaller value keeps (u32: the context of an open WebSocket is held
    /// for the connection's whole life).
    router_budget_ms: u32,
    watched: Option<WatchedRef>,
    /// What this stream is to an Engine.IO session, on `engine_io` routes
    /// (boxed: every other stream's context stays small).
    engine_io: Option<Box<engine_io::EioStream>>,
}

impl EdgeGuardHttp {
    pub fn new(id: u32, worker: Rc<Worker>) -> Self {
        EdgeGuardHttp {
            id,
            worker,
            route: NO_ROUTE,
            started_ms: 0,
            router_budget_ms: 0,
            watched: None,
            engine_io: None,
        }
    }

    /// The declared route this stream is on.
    fn route(&self) -> Option<usize> {
        (self.route != NO_ROUTE).then_some(self.route as usize)
    }

    /// Answers the request with the JSON error (`head`: its `x-request-id`
    /// goes into the reply).
    fn reject(
        &self,
        head: &RequestHead<'_>,
        code: ErrorCode,
        message: &str,
        extra: Option<(&'static str, String)>,
    ) -> Action {
        metrics::increment(self.worker.metrics.rejected(code), 1);
        let mut reply = LocalReply::error(code, message, head.request_id.as_deref());
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
        let chosen = host::cluster_name();
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
        head: &RequestHead<'_>,
        upgrade: bool,
        end_of_stream: bool,
    ) -> Action {
        let worker = Rc::clone(&self.worker);
        let policy = &worker.policy;
        let Some(route) = policy.route(id) else {
            return Action::Continue;
        };
        // A policy cannot hold 2^32 routes; past that, a stream would only
        // go uncounted in the per-route metrics.
        self.route = u32::try_from(id).unwrap_or(NO_ROUTE);
        if upgrade && !route.websocket {
            return self.reject(
                head,
                ErrorCode::RouteNotFound,
                &format!("route {} does not accept WebSocket upgrades", route.name),
                None,
            );
        }
        if self.envoy_disagrees(id, route) {
            return self.reject(
                head,
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
                    head,
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

    /// Starts the exchange's deadline: the router gets the upstream's budget
    /// now, and a request whose body is still to come is watched by the tick
    /// for `total`. Client-sent deadline headers are removed first.
    fn start_deadline(
        &mut self,
        route: Option<usize>,
        head: &RequestHead<'_>,
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
            return self.reject(
                head,
                ErrorCode::UpstreamTimeout,
                budget::SPENT_MESSAGE,
                None,
            );
        };
        self.worker.now_ms.set(now);
        self.started_ms = now;
        let upstream_budget = deadline.upstream_budget(now);
        self.router_budget_ms = u32::try_from(upstream_budget.as_ms()).unwrap_or(u32::MAX);
        host::set_request_header(
            ROUTER_TIMEOUT_HEADER,
            Some(header_value(upstream_budget).as_str()),
        );
        if let Some(value) = budget::grpc_timeout_for(direction, head.grpc_timeout, upstream_budget)
        {
            host::set_request_header("grpc-timeout", Some(&value));
        }
        if !end_of_stream {
            let watched = Rc::new(std::cell::RefCell::new(Watched {
                route,
                timer: Armed::NONE,
                kind: WatchKind::Exchange {
                    phase: Phase::ReceivingRequest,
                    deadline,
                    request_id: head.request_id_owned(),
                },
            }));
            self.worker
                .watch(self.id, Rc::clone(&watched), deadline.total_deadline_ms());
            self.watched = Some(watched);
        }
        Action::Continue
    }

    /// The request, once its head is read and its upgrade classified.
    fn on_request(
        &mut self,
        head: &RequestHead<'_>,
        method: Method,
        websocket: bool,
        end_of_stream: bool,
    ) -> Action {
        let Some(path) = head.path.as_deref() else {
            return self.reject(
                head,
                ErrorCode::InvalidPath,
                "the request has no path",
                None,
            );
        };
        // Decided before any route lookup: a path Envoy and the upstream
        // could read differently is never resolved, counted or logged.
        if let Err(problem) = path::check(path) {
            return self.reject(head, ErrorCode::InvalidPath, &problem.to_string(), None);
        }
        let worker = Rc::clone(&self.worker);
        let policy = &worker.policy;
        let path_only = path::path_part(path);
        if endpoints::answer(&worker, path_only, method) {
            return Action::Pause;
        }
        let authority = head.authority.as_deref().unwrap_or_default();
        match policy.resolve(authority, path, method) {
            RouteMatch::Route(id) => self.on_route(id, head, websocket, end_of_stream),
            RouteMatch::MethodNotAllowed { allowed } => self.reject(
                head,
                ErrorCode::MethodNotAllowed,
                &format!(
                    "{} is not allowed on {path_only}; allowed: {allowed}",
                    method.name()
                ),
                Some(("allow", allowed.to_string())),
            ),
            // An upgrade is never let through without a route that counts it.
            RouteMatch::NotFound if websocket => self.reject(
                head,
                ErrorCode::RouteNotFound,
                &format!("no WebSocket route for {path_only}"),
                None,
            ),
            RouteMatch::NotFound => match policy.unknown_route {
                // Let through, but never without a deadline: the default class.
                UnknownRoute::Allow => match policy.timeout_classes.get(policy.default_class) {
                    Some(class) => self.start_deadline(None, head, class, end_of_stream),
                    None => Action::Continue,
                },
                UnknownRoute::Reject => {
                    let (code, message) =
                        egress::undeclared(policy.direction, authority, path_only);
                    self.reject(head, code, &message, None)
                }
            },
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
pub(super) fn remove_client_deadline_headers(head: &RequestHead<'_>) {
    for name in head.client_deadline_headers() {
        if name != ROUTER_TIMEOUT_HEADER {
            host::set_request_header(name, None);
        }
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
        let identity_header = match &self.worker.policy.websocket.identity {
            Some(Identity::Header(name)) => Some(name.as_str()),
            _ => None,
        };
        // Request headers are out of reach after this callback: a stream the
        // tick may answer later keeps its own copy of the request id.
        let headers = host::request_headers();
        let head = RequestHead::read(HeaderPairs::new(&headers), identity_header);
        let method = Method::parse(head.method.as_deref().unwrap_or_default());
        let websocket = match upgrade::classify(method, head.upgrade.as_deref()) {
            UpgradeKind::Refused(why) => {
                return self.reject(&head, ErrorCode::InvalidUpgrade, &why.to_string(), None)
            }
            kind => kind == UpgradeKind::WebSocket,
        };
        if websocket {
            // The connection's state outlives this callback: the header map
            // is freed before it is allocated (held meanwhile, it cost 14-16 B
            // more per open WebSocket in the VM: BENCHMARKS.md, lever 13).
            let head = head.into_owned();
            drop(headers);
            return self.on_request(&head, method, true, end_of_stream);
        }
        self.on_request(&head, method, false, end_of_stream)
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
                    WatchKind::WebSocket(_) => self.upgrade_answered(&mut w),
                }
            };
            if release {
                self.finish();
            }
        }
        // Only exchanges whose deadline edge-guard started on a declared
        // route are counted and timed.
        let worker = Rc::clone(&self.worker);
        let Some(m) = self.route().and_then(|r| worker.metrics.route(r)) else {
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
        if elapsed.saturating_add(CLOCK_SLACK_MS) >= u64::from(self.router_budget_ms)
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
