//! Engine.IO (the transport under Socket.IO) as the unit of the WebSocket limits.
//!
//! Owns every Engine.IO decision, all pure: the route option (`engine_io`) and its
//! long-poll budget ([`EngineIoPolicy`]), what a request on such a route is
//! ([`request::classify`]) and what the host must do with it ([`request::plan`]), the
//! session id in a handshake answer ([`handshake_sid`]), which packets are transport
//! overhead ([`is_transport_packet`]), and the shared-data table of polling sessions
//! ([`sessions`]).
//!
//! Must never: read a payload byte beyond the first of a WebSocket text frame, read any
//! body but a polling handshake's answer, or talk to the host (the host layer in
//! `filter/engine_io.rs` only sequences these decisions).

pub mod request;
pub mod sessions;

use crate::policy::{Millis, TimeoutClass};

/// socket.io's defaults.
pub const DEFAULT_PING_INTERVAL: Millis = Millis(25_000);
pub const DEFAULT_PING_TIMEOUT: Millis = Millis(20_000);

/// The compiled `engine_io` option of a WebSocket route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineIoPolicy {
    pub ping_interval: Millis,
    pub ping_timeout: Millis,
    pub polling: bool,
    pub websocket: bool,
    /// The budget of long-poll requests: `ping_interval + ping_timeout`, or the
    /// route's class where that is longer.
    pub long_poll: TimeoutClass,
}

impl EngineIoPolicy {
    /// How long a polling session lives without a request carrying its `sid`.
    pub fn session_ttl_ms(&self) -> u64 {
        self.ping_interval
            .as_ms()
            .saturating_add(self.ping_timeout.as_ms())
    }

    /// The long-poll class for a route whose own class is `class`: never shorter.
    pub fn long_poll_class(
        ping_interval: Millis,
        ping_timeout: Millis,
        class: &TimeoutClass,
    ) -> TimeoutClass {
        let budget = Millis(ping_interval.as_ms().saturating_add(ping_timeout.as_ms()));
        TimeoutClass {
            name: class.name.clone(),
            total: class.total.max(budget),
            response: class.response.max(budget),
        }
    }
}

/// Engine.IO packet types that are transport overhead, not application data:
/// `2` ping, `3` pong (also `2probe`/`3probe`), `5` upgrade, `6` noop. `0` open, `1`
/// close and `4` message (every Socket.IO packet) count.
pub fn is_transport_packet(first_payload_byte: u8) -> bool {
    matches!(first_payload_byte, b'2' | b'3' | b'5' | b'6')
}

/// Longest session id accepted (engine.io's are 20 characters).
pub const MAX_SID_BYTES: usize = 64;

/// The `sid` of a handshake answer `0{"sid":"…",…}` (the first packet of the polling
/// payload), if `body` begins with one. Only `[A-Za-z0-9_-]` ids are accepted.
pub fn handshake_sid(body: &[u8]) -> Option<&str> {
    let rest = body.strip_prefix(b"0")?;
    let rest = skip_ws(rest).strip_prefix(b"{")?;
    // Find the "sid" key at the top level of a flat object of simple values.
    let at = find(rest, b"\"sid\"")?;
    let rest = skip_ws(rest.get(at.saturating_add(5)..)?);
    let rest = skip_ws(rest.strip_prefix(b":")?);
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let sid = rest.get(..end)?;
    if sid.is_empty()
        || sid.len() > MAX_SID_BYTES
        || !sid
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    {
        return None;
    }
    std::str::from_utf8(sid).ok()
}

fn skip_ws(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    bytes.get(n..).unwrap_or_default()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Longest handshake answer edge-guard reads while looking for the `sid`.
pub const MAX_HANDSHAKE_BYTES: usize = 1024;

/// What a route's prefix must look like for the policy to warn that it seems to serve
/// Socket.IO without `engine_io`.
pub fn looks_like_socket_io(prefix: &str) -> bool {
    prefix.split('/').any(|segment| {
        segment.eq_ignore_ascii_case("socket.io") || segment.eq_ignore_ascii_case("engine.io")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_packets_are_ping_pong_upgrade_noop() {
        for b in [b'2', b'3', b'5', b'6'] {
            assert!(is_transport_packet(b));
        }
        for b in [b'0', b'1', b'4', b'x', b'{', 0] {
            assert!(!is_transport_packet(b));
        }
    }

    #[test]
    fn sid_is_read_from_the_open_packet() {
        let body = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(handshake_sid(body), Some("lv_VI97HAXpY6yYWAAAC"));
        assert_eq!(
            handshake_sid(br#"0{ "upgrades":[], "sid" : "abc-1" }"#),
            Some("abc-1")
        );
        // Followed by further packets (record separator).
        assert_eq!(handshake_sid(b"0{\"sid\":\"a\"}\x1e40"), Some("a"));
    }

    #[test]
    fn anything_else_has_no_sid() {
        for body in [
            &b""[..],
            b"0",
            b"0{}",
            br#"{"sid":"a"}"#,
            br#"4{"sid":"a"}"#,
            br#"0{"sid":""}"#,
            br#"0{"sid":"a b"}"#,
            br#"0{"sid":"a"#,
            br#"0{"sid":12}"#,
            br#"{"code":1,"message":"Session ID unknown"}"#,
        ] {
            assert_eq!(
                handshake_sid(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!("0{{\"sid\":\"{}\"}}", "a".repeat(MAX_SID_BYTES + 1));
        assert_eq!(handshake_sid(long.as_bytes()), None);
        // The longest accepted id is exactly MAX_SID_BYTES.
        let longest = "a".repeat(MAX_SID_BYTES);
        let body = format!("0{{\"sid\":\"{longest}\"}}");
        assert_eq!(handshake_sid(body.as_bytes()), Some(longest.as_str()));
    }

    #[test]
    fn long_polls_never_get_less_than_ping_interval_plus_timeout() {
        let short = TimeoutClass {
            name: "notification".into(),
            total: Millis(5_000),
            response: Millis(5_000),
        };
        let c =
            EngineIoPolicy::long_poll_class(DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT, &short);
        assert_eq!((c.total, c.response), (Millis(45_000), Millis(45_000)));
        let long = TimeoutClass {
            name: "aggregation".into(),
            total: Millis(120_000),
            response: Millis(60_000),
        };
        let c = EngineIoPolicy::long_poll_class(DEFAULT_PING_INTERVAL, DEFAULT_PING_TIMEOUT, &long);
        assert_eq!((c.total, c.response), (Millis(120_000), Millis(60_000)));
    }

    #[test]
    fn socket_io_looking_prefixes() {
        assert!(looks_like_socket_io("/socket.io"));
        assert!(looks_like_socket_io("/chat/socket.io"));
        assert!(looks_like_socket_io("/engine.io"));
        assert!(!looks_like_socket_io("/ws/events"));
        assert!(!looks_like_socket_io("/socket.iox"));
    }
}
