//! permessage-deflate (RFC 7692) at the edge: whether a connection may carry
//! compressed frames, and what `max_message_bytes` then means.
//!
//! Owns the two decisions: the upgrade request keeps its extension offer only on
//! connections without `max_message_bytes` ([`keep_offer`]); compressed frames
//! (RSV1) are legal only when the upstream's 101 accepted the extension
//! ([`allowed`]). With `max_message_bytes` set nothing is ever compressed, so the
//! limit counts the real (uncompressed) message bytes: a wire-size limit on
//! compressed frames would let a few kilobytes inflate to gigabytes at the
//! upstream. Without it, compressed messages pass and rate, idle and lifetime
//! limits apply to them as to any other.
//!
//! Must never: inflate or read payloads, or trust the client's offer (only the
//! upstream's answer says what was negotiated).

use super::monitor::ConnectionLimits;

/// The extension token, as offered and accepted in `sec-websocket-extensions`.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// Whether the client's `sec-websocket-extensions` offer may reach the upstream.
pub fn keep_offer(limits: &ConnectionLimits) -> bool {
    limits.max_message_bytes.is_none()
}

/// Whether frames with RSV1 are legal on a connection whose 101 carried
/// `accepted` as its `sec-websocket-extensions` (`None`: no such header).
/// An upstream that accepts an extension the edge removed from the offer is
/// not believed: its compressed frames stay protocol errors.
pub fn allowed(limits: &ConnectionLimits, accepted: Option<&str>) -> bool {
    keep_offer(limits) && accepted.is_some_and(accepts_permessage_deflate)
}

/// `permessage-deflate; server_no_context_takeover, x-other` → true. Only the
/// extension names count (the part of each comma-separated element before its
/// first `;`), compared case-insensitively.
pub fn accepts_permessage_deflate(header: &str) -> bool {
    header.split(',').any(|element| {
        element
            .split(';')
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: Option<u64>) -> ConnectionLimits {
        ConnectionLimits {
            max_message_bytes: max,
            ..Default::default()
        }
    }

    #[test]
    fn accepted_extension_names_are_matched_exactly() {
        assert!(accepts_permessage_deflate("permessage-deflate"));
        assert!(accepts_permessage_deflate(
            "permessage-deflate; client_max_window_bits=15; server_no_context_takeover"
        ));
        assert!(accepts_permessage_deflate("x-foo, PerMessage-Deflate"));
        assert!(!accepts_permessage_deflate(""));
        assert!(!accepts_permessage_deflate("x-webkit-deflate-frame"));
        assert!(!accepts_permessage_deflate("permessage-deflatex"));
        assert!(!accepts_permessage_deflate("x-foo; permessage-deflate"));
    }

    #[test]
    fn compression_only_when_the_upstream_accepted_it() {
        let none = limits(None);
        assert!(allowed(&none, Some("permessage-deflate")));
        assert!(!allowed(&none, None));
        assert!(!allowed(&none, Some("x-other")));
    }

    #[test]
    fn a_size_limit_strips_the_offer_and_refuses_compressed_frames() {
        let sized = limits(Some(1024));
        assert!(!keep_offer(&sized));
        assert!(keep_offer(&limits(None)));
        assert!(!allowed(&sized, Some("permessage-deflate")));
    }
}
