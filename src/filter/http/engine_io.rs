//! Host side of Engine.IO sessions: carries out, with host calls, what
//! `crate::engine_io` decides. A polling handshake takes a slot and keeps it in
//! the shared session table once its answer's `sid` is read; requests of the
//! session refresh it; its upgrade takes the slot over (and gives it back if
//! refused); the root's tick reclaims sessions that went silent.
//!
//! Slot ownership: a slot in the session table belongs to the table, not to
//! a VM (the session outlives the stream that opened it, and any worker may
//! end it). It leaves this VM's ledger when it goes into the table
//! ([`hand_to_table`]), enters the ledger of the VM whose WebSocket takes it
//! over, and is released from the table without touching any ledger
//! ([`release_from_table`]); sessions of a dead VM are reclaimed by expiry.
//!
//! Never reads a body but a polling handshake's answer, and that only up to
//! `MAX_HANDSHAKE_BYTES`.

use std::rc::Rc;

use proxy_wasm::types::{Action, BufferType};

use crate::engine_io::request::{self, Plan};
use crate::engine_io::sessions::{self, Session};
use crate::engine_io::{self as eio, EngineIoPolicy};
use crate::headers::RequestHead;
use crate::policy::{Route, TimeoutClass};
use crate::reply::ErrorCode;
use crate::routing::Method;
use crate::websocket::slots::Admission;

use super::super::host::{self, HostStore};
use super::super::metrics;
use super::super::ownership as owner;
use super::super::worker::Worker;
use super::EdgeGuardHttp;

/// What a stream is to an Engine.IO session.
#[derive(Debug)]
pub enum EioStream {
    /// A polling handshake: holds its slot until the answer's `sid` is read.
    Handshake {
        admission: Option<Admission>,
        ttl_ms: u64,
        body: Vec<u8>,
    },
    /// A request of a recorded polling session.
    Polling { sid: String, get: bool, ttl_ms: u64 },
    /// The upgrade of session `sid`, carrying its slot.
    Upgrade { sid: String, ttl_ms: u64 },
    /// A WebSocket opened directly: an ordinary upgrade whose frames are
    /// Engine.IO packets.
    WebSocket,
}

impl EdgeGuardHttp {
    /// A request on a route with `engine_io` (`policy`), whose class is `class`.
    pub(super) fn on_engine_io_request(
        &mut self,
        (id, route, class): (usize, &Route, &TimeoutClass),
        policy: &EngineIoPolicy,
        head: &RequestHead<'_>,
        upgrade: bool,
        end_of_stream: bool,
    ) -> Action {
        let path = head.path.as_deref().unwrap_or_default();
        let method = Method::parse(head.method.as_deref().unwrap_or_default());
        let ttl_ms = policy.session_ttl_ms();
        match request::plan(policy, request::classify(path), upgrade, method) {
            Plan::TransportNotAllowed(transport) => self.reject(
                head,
                ErrorCode::TransportNotAllowed,
                &format!(
                    "the {transport} transport is not allowed on route {}",
                    route.name
                ),
                None,
            ),
            Plan::BadRequest(why) => self.reject(head, ErrorCode::EngineIoBadRequest, why, None),
            Plan::PassThrough => self.start_deadline(Some(id), head, class, end_of_stream),
            Plan::WebSocketHandshake => {
                self.engine_io = Some(Box::new(EioStream::WebSocket));
                self.upgrade(id, route, class, head, None)
            }
            Plan::Upgrade { sid } => {
                let held = match sessions::remove(&HostStore, &sid) {
                    Ok(session) => session.map(|s| {
                        let admission = admission_of(s, Some(route));
                        owner::acquired(&admission, self.worker.now_ms.get());
                        admission
                    }),
                    Err(e) => {
                        log::warn!("edge-guard: reading engine.io session: {e}");
                        None
                    }
                };
                // An unknown sid is admitted like any WebSocket (the server
                // refuses it unless it knows the session).
                if held.is_some() {
                    self.engine_io = Some(Box::new(EioStream::Upgrade { sid, ttl_ms }));
                } else {
                    self.engine_io = Some(Box::new(EioStream::WebSocket));
                }
                self.upgrade(id, route, class, head, held)
            }
            Plan::PollingHandshake => {
                let admission = match self.acquire_slot(id, route, head) {
                    Ok(admission) => admission,
                    Err(action) => return action,
                };
                self.engine_io = Some(Box::new(EioStream::Handshake {
                    admission: Some(admission),
                    ttl_ms,
                    body: Vec::new(),
                }));
                self.start_deadline(Some(id), head, &policy.long_poll, end_of_stream)
            }
            Plan::Polling { sid, get } => {
                let now = self.worker.now_ms.get();
                if let Err(e) = sessions::refresh(&HostStore, &sid, now.saturating_add(ttl_ms)) {
                    log::warn!("edge-guard: refreshing engine.io session: {e}");
                }
                self.engine_io = Some(Box::new(EioStream::Polling { sid, get, ttl_ms }));
                self.start_deadline(Some(id), head, &policy.long_poll, end_of_stream)
            }
        }
    }

    pub(super) fn engine_io_response_headers(&mut self) {
        let Some(state) = self.engine_io.as_deref_mut() else {
            return;
        };
        match state {
            EioStream::Handshake { admission, .. } => {
                if host::response_header(":status").as_deref() != Some("200") {
                    if let Some(admission) = admission.take() {
                        self.worker.release(self.route(), admission);
                    }
                    self.engine_io = None;
                }
            }
            EioStream::Polling { sid, get, ttl_ms } => {
                let status = host::response_header(":status");
                if *get && status.as_deref() == Some("400") {
                    // engine.io answers a GET poll of a live session with 400 only
                    // when it does not know the sid or has just closed the session
                    // (overlapping polls): the session is over.
                    if let Ok(Some(session)) = sessions::remove(&HostStore, sid) {
                        release_from_table(&self.worker, session);
                    }
                } else {
                    let now = host::now_ms();
                    let _ = sessions::refresh(&HostStore, sid, now.saturating_add(*ttl_ms));
                }
                self.engine_io = None;
            }
            EioStream::Upgrade { .. } | EioStream::WebSocket => {}
        }
    }

    /// Reads the handshake answer until its `sid` shows, then records the session.
    pub(super) fn engine_io_response_body(&mut self, body_size: usize, end_of_stream: bool) {
        let Some(EioStream::Handshake {
            admission,
            ttl_ms,
            body,
        }) = self.engine_io.as_deref_mut()
        else {
            return;
        };
        let room = eio::MAX_HANDSHAKE_BYTES.saturating_sub(body.len());
        if body_size > 0 && room > 0 {
            if let Some(bytes) =
                host::body_bytes(BufferType::HttpResponseBody, 0, body_size.min(room))
            {
                body.extend_from_slice(&bytes);
            }
        }
        let sid = eio::handshake_sid(body).map(str::to_string);
        if sid.is_none() && !end_of_stream && body.len() < eio::MAX_HANDSHAKE_BYTES {
            return;
        }
        let Some(admission) = admission.take() else {
            self.engine_io = None;
            return;
        };
        let ttl_ms = *ttl_ms;
        self.engine_io = None;
        let Some(sid) = sid else {
            log::debug!("#{} engine.io handshake answer without a sid", self.id);
            self.worker.release(self.route(), admission);
            return;
        };
        if let Some(admission) = hand_to_table(sid, admission, ttl_ms) {
            self.worker.release(self.route(), admission);
        }
    }

    /// A refused upgrade: the slot goes back to its polling session (`None`), or
    /// is the caller's to release.
    pub(super) fn engine_io_upgrade_refused(&mut self, admission: Admission) -> Option<Admission> {
        let Some(EioStream::Upgrade { sid, ttl_ms }) = self.engine_io.take().map(|b| *b) else {
            return Some(admission);
        };
        hand_to_table(sid, admission, ttl_ms)
    }

    /// The stream is over: a handshake that never got its answer gives its
    /// slot back.
    pub(super) fn engine_io_done(&mut self) {
        if let Some(EioStream::Handshake { admission, .. }) = self.engine_io.as_deref_mut() {
            if let Some(admission) = admission.take() {
                self.worker.release(self.route(), admission);
            }
        }
        self.engine_io = None;
    }
}

/// The admission a session recorded. Its route name is the policy's own
/// (shared, not copied) when the session is on `route`: an upgrade that takes
/// its session's slot over holds the admission for the connection's life.
fn admission_of(session: Session, route: Option<&Route>) -> Admission {
    let name = match route {
        Some(route) if *route.name == *session.route => Rc::clone(&route.name),
        _ => Rc::from(session.route),
    };
    Admission::restore(name, session.user)
}

/// Records session `sid` holding `admission`'s slot, which leaves this VM's
/// ledger; gives the admission back (in the ledger again) if it could not be
/// recorded. Ledger first: a VM dying between the two leaks this one slot
/// rather than letting its reaper and the session's expiry both give it back.
fn hand_to_table(sid: String, admission: Admission, ttl_ms: u64) -> Option<Admission> {
    let now = host::now_ms();
    owner::released(&admission, now);
    let session = Session {
        sid,
        route: admission.route().to_string(),
        user: admission.counted_user().map(str::to_string),
        expires_ms: now.saturating_add(ttl_ms),
    };
    let recorded = match sessions::insert(&HostStore, &session) {
        Ok(recorded) => recorded,
        Err(e) => {
            log::warn!("edge-guard: recording engine.io session: {e}");
            false
        }
    };
    if recorded {
        return None;
    }
    owner::acquired(&admission, now);
    Some(admission)
}

/// Gives back the slot of a session taken out of the table (in no ledger).
fn release_from_table(worker: &Worker, session: Session) {
    let route = worker
        .policy
        .routes
        .iter()
        .position(|r| *r.name == *session.route);
    if let Err(e) = crate::websocket::slots::release(&HostStore, admission_of(session, None)) {
        log::error!("edge-guard: releasing an engine.io session's slot failed: {e}");
    }
    metrics::increment(worker.metrics.ws_active, -1);
    if let Some(m) = route.and_then(|r| worker.metrics.route(r)) {
        metrics::increment(m.ws_active, -1);
    }
}

/// Run by the root context's tick: ends the polling sessions no request kept
/// alive and releases their slots (each exactly once across workers).
pub fn reclaim_expired(worker: &Worker, now_ms: u64) {
    match sessions::take_expired(&HostStore, now_ms) {
        Ok(expired) => {
            for session in expired {
                log::debug!("engine.io session {} expired", session.sid);
                release_from_table(worker, session);
            }
        }
        Err(e) => log::warn!("edge-guard: reclaiming engine.io sessions: {e}"),
    }
}
