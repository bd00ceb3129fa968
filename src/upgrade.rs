//! Upgrade classification: is this request one that Envoy would upgrade, and
//! to what?
//!
//! Owns the decision "plain request, WebSocket handshake, or an upgrade
//! edge-guard refuses" from the method and the request's `upgrade` header
//! (and HTTP/2's `:protocol`, should Envoy ever hand it over untranslated).
//! Envoy upgrades a request that carries an `upgrade` header (and
//! `connection: upgrade`) whatever its method, looks the type up in
//! `upgrade_configs` without regard to case, and turns an HTTP/2 extended
//! CONNECT (`:protocol websocket`) into the same `GET` + `upgrade:
//! websocket` before the filter chain. So edge-guard classifies on the
//! header's presence alone — a superset of what Envoy upgrades — and:
//!
//! - `upgrade: websocket` (one token, any case) with `GET` is a WebSocket
//!   handshake, admitted or refused by the WebSocket limits;
//! - the same with any other method is refused: RFC 6455 §4.1 allows only
//!   `GET`, and Envoy would otherwise upgrade a `POST` past every limit;
//! - any other value (`h2c`, `WebSocket, foo`, an empty value, a protocol
//!   the policy has no limits for) and `CONNECT` are refused on every
//!   route: edge-guard only lets through upgrades it can count.
//!
//! Never touches the host; never decides which route a request is on.

use std::fmt;

use crate::routing::Method;

/// What a request is, as far as upgrades go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeKind {
    /// No upgrade asked for.
    None,
    /// A WebSocket handshake (`GET` with `upgrade: websocket`).
    WebSocket,
    /// An upgrade edge-guard refuses on every route.
    Refused(UpgradeRefusal),
}

/// Why an upgrade is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// A WebSocket handshake with a method other than `GET`.
    WebSocketMethod(Method),
    /// A protocol other than a lone `websocket` token.
    UnknownProtocol,
    /// A `CONNECT` request (tunnels are not edge-guard's to allow).
    Connect,
}

impl fmt::Display for UpgradeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeRefusal::WebSocketMethod(m) => write!(
                f,
                "a WebSocket handshake must use GET (RFC 6455 section 4.1), not {}",
                m.name()
            ),
            UpgradeRefusal::UnknownProtocol => {
                f.write_str("only \"upgrade: websocket\" is accepted as an upgrade")
            }
            UpgradeRefusal::Connect => f.write_str("CONNECT is not accepted"),
        }
    }
}

/// Classifies a request from its method and the value of its `upgrade`
/// header (`None` when absent; repeated headers joined with `,`).
pub fn classify(method: Method, upgrade: Option<&str>) -> UpgradeKind {
    if method == Method::Connect {
        return UpgradeKind::Refused(UpgradeRefusal::Connect);
    }
    let Some(value) = upgrade else {
        return UpgradeKind::None;
    };
    let mut tokens = value.split(',').map(str::trim).filter(|t| !t.is_empty());
    let lone_websocket = matches!(
        (tokens.next(), tokens.next()),
        (Some(token), None) if token.eq_ignore_ascii_case("websocket")
    );
    if !lone_websocket {
        return UpgradeKind::Refused(UpgradeRefusal::UnknownProtocol);
    }
    if method != Method::Get {
        return UpgradeKind::Refused(UpgradeRefusal::WebSocketMethod(method));
    }
    UpgradeKind::WebSocket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_are_not_upgrades() {
        assert_eq!(classify(Method::Get, None), UpgradeKind::None);
        assert_eq!(classify(Method::Post, None), UpgradeKind::None);
        assert_eq!(classify(Method::Other, None), UpgradeKind::None);
    }

    #[test]
    fn websocket_get_in_any_case_is_a_handshake() {
        for value in [
            "websocket",
            "WebSocket",
            "WEBSOCKET",
            " websocket ",
            "websocket,",
        ] {
            assert_eq!(
                classify(Method::Get, Some(value)),
                UpgradeKind::WebSocket,
                "{value:?}"
            );
        }
    }

    #[test]
    fn websocket_with_another_method_is_refused() {
        for method in [
            Method::Post,
            Method::Put,
            Method::Head,
            Method::Delete,
            Method::Other,
        ] {
            assert_eq!(
                classify(method, Some("websocket")),
                UpgradeKind::Refused(UpgradeRefusal::WebSocketMethod(method))
            );
        }
        assert_eq!(
            UpgradeRefusal::WebSocketMethod(Method::Post).to_string(),
            "a WebSocket handshake must use GET (RFC 6455 section 4.1), not POST"
        );
    }

    #[test]
    fn other_protocols_and_token_lists_are_refused_whatever_the_method() {
        for value in [
            "h2c",
            "websocket, foo",
            "foo, websocket",
            "",
            " , ",
            "TLS/1.2",
            "connect-udp",
        ] {
            for method in [Method::Get, Method::Post] {
                assert_eq!(
                    classify(method, Some(value)),
                    UpgradeKind::Refused(UpgradeRefusal::UnknownProtocol),
                    "{value:?}"
                );
            }
        }
    }

    #[test]
    fn connect_is_refused() {
        assert_eq!(
            classify(Method::Connect, None),
            UpgradeKind::Refused(UpgradeRefusal::Connect)
        );
        assert_eq!(
            classify(Method::Connect, Some("websocket")),
            UpgradeKind::Refused(UpgradeRefusal::Connect)
        );
    }
}
