//! What a request on an `engine_io` route is, from its query string alone, and what
//! the host must do with it.
//!
//! The query is read the way engine.io's server reads it (`URLSearchParams`:
//! percent-decoding, `+` as space, the last of duplicated keys wins) except that a
//! duplicated `EIO`, `transport` or `sid` makes the request ambiguous: edge-guard and
//! the server could then disagree on what it is, and a request the server takes for a
//! handshake must never pass uncounted.

use super::EngineIoPolicy;
use crate::routing::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
    /// Anything else (the server refuses it).
    Other,
}

impl Transport {
    fn parse(value: &str) -> Transport {
        match value {
            "polling" => Transport::Polling,
            "websocket" => Transport::WebSocket,
            _ => Transport::Other,
        }
    }
}

/// An Engine.IO request, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EioRequest {
    /// No `sid` (or an empty one, which the server also reads as none): a handshake if
    /// `eio` is `4`. `eio` is `None` without the parameter (e.g. the server's
    /// `/socket.io/socket.io.js`).
    Handshake {
        eio: Option<String>,
        transport: Option<Transport>,
    },
    /// A request of session `sid`.
    Session {
        sid: String,
        transport: Option<Transport>,
    },
    /// `EIO`, `transport` or `sid` given more than once.
    Ambiguous,
}

/// Classifies `path` (with its query string).
pub fn classify(path: &str) -> EioRequest {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    let mut eio: Option<String> = None;
    let mut transport: Option<String> = None;
    let mut sid: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match decode(key).as_str() {
            "EIO" => &mut eio,
            "transport" => &mut transport,
            "sid" => &mut sid,
            _ => continue,
        };
        if slot.is_some() {
            return EioRequest::Ambiguous;
        }
        *slot = Some(decode(value));
    }
    let transport = transport.as_deref().map(Transport::parse);
    match sid.filter(|s| !s.is_empty()) {
        Some(sid) => EioRequest::Session { sid, transport },
        None => EioRequest::Handshake { eio, transport },
    }
}

/// `application/x-www-form-urlencoded` decoding as `URLSearchParams` does it: `+` is a
/// space, `%XX` a byte, a malformed escape stays as written; invalid UTF-8 is replaced.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i.saturating_add(1)..i.saturating_add(3))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i = i.saturating_add(3);
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i = i.saturating_add(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the host does with a request on an `engine_io` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// 400 `transport_not_allowed`: the route's `transports` exclude this one.
    TransportNotAllowed(&'static str),
    /// 400 `engine_io_bad_request`: the server could take it for a session edge-guard
    /// cannot count.
    BadRequest(&'static str),
    /// A new polling session: it takes a slot now; the answer's `sid` keeps it.
    PollingHandshake,
    /// A WebSocket opened directly: the connection is the session (one slot).
    WebSocketHandshake,
    /// A request of polling session `sid`: its budget is the long poll's; it refreshes
    /// the session, and a `GET` answered 400 ends it.
    Polling { sid: String, get: bool },
    /// The upgrade of session `sid` to WebSocket: it takes over the session's slot.
    Upgrade { sid: String },
    /// Not an Engine.IO request edge-guard counts: the server answers it.
    PassThrough,
}

pub fn plan(policy: &EngineIoPolicy, request: EioRequest, upgrade: bool, method: Method) -> Plan {
    let transport = match &request {
        EioRequest::Ambiguous => {
            return Plan::BadRequest(
                "EIO, transport or sid appears more than once in the query; send each once",
            )
        }
        EioRequest::Handshake { transport, .. } | EioRequest::Session { transport, .. } => {
            *transport
        }
    };
    match transport {
        Some(Transport::Polling) if !policy.polling => return Plan::TransportNotAllowed("polling"),
        Some(Transport::WebSocket) if !policy.websocket => {
            return Plan::TransportNotAllowed("websocket")
        }
        _ => {}
    }
    match request {
        EioRequest::Ambiguous => Plan::PassThrough,
        EioRequest::Session { sid, .. } if upgrade => Plan::Upgrade { sid },
        EioRequest::Session { sid, .. } => Plan::Polling {
            sid,
            get: method == Method::Get,
        },
        EioRequest::Handshake { eio: None, .. } if !upgrade => Plan::PassThrough,
        EioRequest::Handshake { eio, .. } if eio.as_deref() != Some("4") => Plan::BadRequest(
            "only Engine.IO protocol 4 (EIO=4, socket.io 3 and later) is accepted on this route",
        ),
        EioRequest::Handshake { .. } if upgrade => Plan::WebSocketHandshake,
        EioRequest::Handshake { .. } if method == Method::Get => Plan::PollingHandshake,
        EioRequest::Handshake { .. } => Plan::PassThrough,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Millis, TimeoutClass};

    fn policy(polling: bool, websocket: bool) -> EngineIoPolicy {
        EngineIoPolicy {
            ping_interval: Millis(25_000),
            ping_timeout: Millis(20_000),
            polling,
            websocket,
            long_poll: TimeoutClass {
                name: "standard".into(),
                total: Millis(45_000),
                response: Millis(45_000),
            },
        }
    }

    fn plan_of(path: &str, upgrade: bool, method: Method) -> Plan {
        plan(&policy(true, true), classify(path), upgrade, method)
    }

    #[test]
    fn handshakes_sessions_and_upgrades() {
        let get = Method::Get;
        assert_eq!(
            plan_of("/socket.io/?EIO=4&transport=polling&t=Pabc", false, get),
            Plan::PollingHandshake
        );
        assert_eq!(
            plan_of("/socket.io/?EIO=4&transport=websocket", true, get),
            Plan::WebSocketHandshake
        );
        assert_eq!(
            plan_of(
                "/socket.io/?EIO=4&transport=polling&t=x&sid=abc",
                false,
                get
            ),
            Plan::Polling {
                sid: "abc".into(),
                get: true
            }
        );
        assert_eq!(
            plan_of(
                "/socket.io/?EIO=4&transport=polling&sid=abc",
                false,
                Method::Post
            ),
            Plan::Polling {
                sid: "abc".into(),
                get: false
            }
        );
        assert_eq!(
            plan_of("/socket.io/?EIO=4&transport=websocket&sid=abc", true, get),
            Plan::Upgrade { sid: "abc".into() }
        );
        // An empty sid is no sid, for the server too.
        assert_eq!(
            plan_of("/socket.io/?EIO=4&transport=polling&sid=", false, get),
            Plan::PollingHandshake
        );
    }

    #[test]
    fn the_query_is_decoded_like_the_server_does() {
        assert_eq!(
            plan_of(
                "/socket.io/?%45IO=%34&transport=pol%6cing",
                false,
                Method::Get
            ),
            Plan::PollingHandshake
        );
        assert_eq!(
            classify("/x?sid=a%2Bb+c&EIO=4"),
            EioRequest::Session {
                sid: "a+b c".into(),
                transport: None
            }
        );
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn duplicated_parameters_are_refused() {
        for q in [
            "?EIO=4&EIO=4&transport=polling",
            "?EIO=4&transport=websocket&transport=polling",
            "?EIO=4&transport=polling&sid=a&sid=b",
            "?EIO=4&transport=polling&s%69d=a&sid=",
        ] {
            assert!(
                matches!(plan_of(q, false, Method::Get), Plan::BadRequest(_)),
                "{q}"
            );
        }
    }

    #[test]
    fn other_protocols_are_refused_and_plain_requests_pass() {
        assert!(matches!(
            plan_of("/socket.io/?EIO=3&transport=polling", false, Method::Get),
            Plan::BadRequest(_)
        ));
        assert!(matches!(
            plan_of("/socket.io/?transport=websocket", true, Method::Get),
            Plan::BadRequest(_)
        ));
        assert_eq!(
            plan_of("/socket.io/socket.io.js", false, Method::Get),
            Plan::PassThrough
        );
        assert_eq!(
            plan_of("/socket.io/?EIO=4&transport=polling", false, Method::Post),
            Plan::PassThrough
        );
    }

    #[test]
    fn transports_outside_the_policy_are_refused() {
        let ws_only = policy(false, true);
        for path in [
            "/socket.io/?EIO=4&transport=polling",
            "/socket.io/?EIO=4&transport=polling&sid=abc",
        ] {
            assert_eq!(
                plan(&ws_only, classify(path), false, Method::Get),
                Plan::TransportNotAllowed("polling")
            );
        }
        assert_eq!(
            plan(
                &ws_only,
                classify("/socket.io/?EIO=4&transport=websocket"),
                true,
                Method::Get
            ),
            Plan::WebSocketHandshake
        );
        let polling_only = policy(true, false);
        assert_eq!(
            plan(
                &polling_only,
                classify("/socket.io/?EIO=4&transport=websocket&sid=a"),
                true,
                Method::Get
            ),
            Plan::TransportNotAllowed("websocket")
        );
    }
}
