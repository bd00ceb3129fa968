//! Host side of WebSocket streams: carries out, with host calls, what
//! `crate::websocket` decides. An upgrade is admitted against the instance,
//! route and user limits (a slot from `websocket::slots`, owned by this VM's
//! ledger), watched by the worker's tick until the upstream's 101, then every
//! chunk of its frames goes through the connection monitor; a close the
//! monitor decides on is carried out here (close frames both ways, then a
//! reset after `CLOSE_GRACE_MS`).
//!
//! Never holds a limit of its own; reads a body chunk whole only when it is
//! small, otherwise only the windows the frame scanner asks for.

use std::rc::Rc;

use proxy_wasm::types::{Action, BufferType};

use crate::deadline::Deadline;
use crate::headers::RequestHead;
use crate::policy::{Identity, Route, TimeoutClass};
use crate::reply::ErrorCode;
use crate::timers::Armed;
use crate::websocket::compression;
use crate::websocket::frame::ChunkSource;
use crate::websocket::monitor::{close_frame, ConnectionMonitor, Direction, Verdict};
use crate::websocket::slots::{self, AdmissionRequest, Rejection};

use super::super::host;
use super::super::metrics;
use super::super::worker::{WatchKind, Watched, WebSocketStream, WsPhase};
use super::{remove_client_deadline_headers, EdgeGuardHttp, ROUTER_TIMEOUT_HEADER};

/// After a limit is broken the close handshake gets this long before the
/// stream is reset (the brief: torn down within 1 s, tick lateness included).
const CLOSE_GRACE_MS: u64 = 800;
/// Seconds a client is told to wait after a capacity rejection.
const CAPACITY_RETRY_AFTER: &str = "5";
/// Chunks up to this size are read whole; larger ones only where frame
/// headers lie.
const WHOLE_CHUNK_BYTES: usize = 4096;

impl EdgeGuardHttp {
    /// An upgrade: admitted against the limits, or carrying the slot it took
    /// over (`held`: an Engine.IO session's).
    pub(super) fn upgrade(
        &mut self,
        id: usize,
        route: &Route,
        class: &TimeoutClass,
        head: &RequestHead<'_>,
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
            None => match self.acquire_slot(id, route, head) {
                Ok(admission) => admission,
                Err(action) => return action,
            },
        };
        let deadline = Deadline::start(class, now);
        self.open_websocket(id, admission, deadline, now, head)
    }

    fn identity(&self, head: &RequestHead<'_>) -> Option<String> {
        match self.worker.policy.websocket.identity.as_ref()? {
            // Taken from the header map read once (`host::request_headers`).
            Identity::Header(_) => head.identity.as_deref().map(str::to_owned),
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
    pub(super) fn acquire_slot(
        &mut self,
        id: usize,
        route: &Route,
        head: &RequestHead<'_>,
    ) -> Result<slots::Admission, Action> {
        let worker = Rc::clone(&self.worker);
        let ws = &worker.policy.websocket;
        let route_metrics = worker.metrics.route(id);
        let user = self.identity(head);
        if user.is_none() && ws.require_identity {
            if let Some(m) = route_metrics {
                metrics::increment(m.ws_rejected(ErrorCode::IdentityRequired), 1);
            }
            return Err(self.reject(
                head,
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
                return Err(self.reject(head, code, message, retry));
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
        head: &RequestHead<'_>,
    ) -> Action {
        let worker = Rc::clone(&self.worker);
        let ws = &worker.policy.websocket;
        if head.websocket_extensions && !compression::keep_offer(&ws.connection) {
            // max_message_bytes counts real message bytes: nothing compressed.
            // (Removed only when sent: a removal makes Envoy index the header
            // map for the rest of the connection.)
            host::set_request_header("sec-websocket-extensions", None);
        }
        let watched = Rc::new(std::cell::RefCell::new(Watched {
            route: Some(id),
            timer: Armed::NONE,
            kind: WatchKind::WebSocket(WebSocketStream::new(
                ConnectionMonitor::new(now),
                admission,
                head.request_id_owned(),
            )),
        }));
        worker.watch(self.id, Rc::clone(&watched), deadline.upgrade_deadline_ms());
        self.watched = Some(watched);
        Action::Continue
    }

    /// One chunk of an upgraded stream: check its frames, and carry out a
    /// close the monitor decided on.
    pub(super) fn on_websocket_chunk(&mut self, dir: Direction, body_size: usize) -> Action {
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
        if let Some(reason) = ws.take_owed_close(dir) {
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
            WsPhase::Upgrading { .. } => return Action::Continue,
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
        let teardown = now.saturating_add(CLOSE_GRACE_MS);
        ws.start_closing(reason, &[dir.opposite()], teardown);
        self.worker.schedule(self.id, &mut w, teardown);
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
        if !matches!(ws.phase, WsPhase::Upgrading { .. }) {
            return false;
        }
        let answer = host::upgrade_answer();
        if answer.switched {
            let now = host::now_ms();
            self.worker.now_ms.set(now);
            ws.phase = WsPhase::Open;
            ws.monitor = ConnectionMonitor::new(now);
            if compression::allowed(
                &self.worker.policy.websocket.connection,
                answer.extensions.as_deref(),
            ) {
                ws.monitor.allow_compressed_messages();
            }
            if self.engine_io.is_some() {
                ws.monitor.count_engine_io_data_only();
            }
            false
        } else {
            // The upstream refused the upgrade (or Envoy answered for it): the
            // connection never opened, so its slot goes back now.
            ws.phase.close(u64::MAX);
            true
        }
    }

    /// The upstream's answer to an upgrade: says whether the stream stops
    /// being watched. Anything but a 101 (a refusal, or edge-guard's own 504
    /// for an upgrade past its deadline) is a plain HTTP response: watching
    /// stops so its body passes, and the slot goes back.
    pub(super) fn upgrade_answered(&mut self, w: &mut Watched) -> bool {
        let WatchKind::WebSocket(ws) = &mut w.kind else {
            return true;
        };
        if self.on_websocket_response(ws) {
            if let Some(admission) = ws.admission.take() {
                // A refused upgrade of a polling session gives the slot back to it.
                if let Some(admission) = self.engine_io_upgrade_refused(admission) {
                    self.worker.release(self.route(), admission);
                }
            }
        }
        let open = ws.is_open();
        if open {
            if let Some(due) = ws.next_due(&self.worker.policy.websocket.connection) {
                // Pushes nothing while the upgrade's own timer is earlier:
                // that one re-arms the stream when it comes due.
                self.worker.schedule(self.id, w, due);
            }
        }
        !open
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
