//! The request head as edge-guard needs it, read from Envoy's serialized
//! header map in one pass.
//!
//! Owns the decoding of proxy-wasm's header-map wire format (a u32 count,
//! then a u32 key length and a u32 value length per pair, then each key and
//! value followed by a NUL; little endian) and the selection of the few
//! headers the request path looks at. One host call and no per-header
//! allocation replace a host call per header. Never panics on malformed
//! input: a short buffer just ends the iteration.

use std::borrow::Cow;

use crate::budget::{parse_expected_timeout, parse_grpc_timeout, tighter, Inherited};

/// Headers a client could use to change its own deadline; edge-guard
/// removes each one a client sent, and sets the router's itself.
pub const CLIENT_DEADLINE_HEADERS: [&str; 4] = [
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
];

/// `x-envoy-expected-rq-timeout-ms`'s position in `CLIENT_DEADLINE_HEADERS`.
const EXPECTED_TIMEOUT_BIT: usize = 2;

/// The (name, value) pairs of a serialized header map, borrowed.
pub struct HeaderPairs<'a> {
    bytes: &'a [u8],
    count: usize,
    next: usize,
    data_at: usize,
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

impl<'a> HeaderPairs<'a> {
    pub fn new(bytes: &'a [u8]) -> HeaderPairs<'a> {
        let count = read_u32(bytes, 0).unwrap_or(0);
        HeaderPairs {
            bytes,
            count,
            next: 0,
            data_at: count.saturating_mul(8).saturating_add(4),
        }
    }
}

impl<'a> Iterator for HeaderPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let sizes = 4 + self.next * 8;
        let key_len = read_u32(self.bytes, sizes)?;
        let value_len = read_u32(self.bytes, sizes + 4)?;
        let key_end = self.data_at.checked_add(key_len)?;
        let key = self.bytes.get(self.data_at..key_end)?;
        let value_at = key_end.checked_add(1)?;
        let value_end = value_at.checked_add(value_len)?;
        let value = self.bytes.get(value_at..value_end)?;
        self.data_at = value_end.checked_add(1)?;
        self.next += 1;
        Some((key, value))
    }
}

/// What the request path needs from the request headers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
///
/// Values borrow from the serialized map wherever they are valid UTF-8, so
/// reading an ordinary head allocates nothing. Envoy passes bytes 0x80-0xff
/// in values (obs-text): such a value is copied lossily (U+FFFD).
pub struct RequestHead<'a> {
    pub path: Option<Cow<'a, str>>,
    /// The destination of an outbound call (egress mode).
    pub authority: Option<Cow<'a, str>>,
    /// The caller's budget, forwarded on an outbound call in
    /// `x-envoy-expected-rq-timeout-ms` and/or `grpc-timeout` (the tighter
    /// counts; unreadable values are ignored). Only egress mode uses it.
    pub inherited: Inherited,
    /// A `grpc-timeout` was sent: egress mode rewrites it to the call's budget.
    pub grpc_timeout: bool,
    pub method: Option<Cow<'a, str>>,
    pub request_id: Option<Cow<'a, str>>,
    /// The `upgrade` header (repeated ones joined with `,`), or HTTP/2's
    /// `:protocol`; classified by `upgrade::classify`.
    pub upgrade: Option<Cow<'a, str>>,
    /// Which of `CLIENT_DEADLINE_HEADERS` the client sent (bit i = entry i).
    pub client_deadline_headers: u8,
    /// The first value of the identity header, when the policy names one
    /// (read here rather than by a lookup: Envoy indexes a header map on its
    /// first lookup of a header it does not inline, and that index lives as
    /// long as the stream — about 600 bytes per open WebSocket).
    pub identity: Option<Cow<'a, str>>,
    /// The client offered WebSocket extensions (`sec-websocket-extensions`).
    pub websocket_extensions: bool,
}

fn text(value: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(value)
}

impl<'a> RequestHead<'a> {
    pub fn from_pairs(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> RequestHead<'a> {
        RequestHead::read(pairs, None)
    }

    /// As [`RequestHead::from_pairs`], also keeping the first value of
    /// `identity_header` (a lower-case name).
    pub fn read(
        pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        identity_header: Option<&str>,
    ) -> RequestHead<'a> {
        let identity_header = identity_header.map(str::as_bytes);
        let mut head = RequestHead::default();
        for (name, value) in pairs {
            if head.identity.is_none() && Some(name) == identity_header {
                head.identity = Some(text(value));
                continue;
            }
            match name {
                b":path" => head.path = Some(text(value)),
                b":method" => head.method = Some(text(value)),
                b":authority" => head.authority = Some(text(value)),
                b"grpc-timeout" => {
                    head.grpc_timeout = true;
                    if let Ok(inherited) = parse_grpc_timeout(value) {
                        head.inherited = tighter(head.inherited, inherited);
                    }
                }
                b"x-request-id" => head.request_id = Some(text(value)),
                b"sec-websocket-extensions" => head.websocket_extensions = true,
                b"upgrade" | b":protocol" => match &mut head.upgrade {
                    Some(joined) => {
                        let joined = joined.to_mut();
                        joined.push(',');
                        joined.push_str(&text(value));
                    }
                    None => head.upgrade = Some(text(value)),
                },
                b"x-envoy-expected-rq-timeout-ms" => {
                    head.client_deadline_headers |= 1 << EXPECTED_TIMEOUT_BIT;
                    if let Ok(inherited) = parse_expected_timeout(value) {
                        head.inherited = tighter(head.inherited, inherited);
                    }
                }
                _ if name.starts_with(b"x-envoy-") => {
                    for (bit, deadline) in CLIENT_DEADLINE_HEADERS.iter().enumerate() {
                        if name == deadline.as_bytes() {
                            head.client_deadline_headers |= 1 << bit;
                        }
                    }
                }
                _ => {}
            }
        }
        head
    }

    /// The same head owning its values, so that the header map it was read
    /// from can be freed first: an upgrade frees it before it allocates the
    /// connection's state, which would otherwise be placed beyond it.
    pub fn into_owned(self) -> RequestHead<'static> {
        fn own(value: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
            value.map(|v| Cow::Owned(v.into_owned()))
        }
        RequestHead {
            path: own(self.path),
            authority: own(self.authority),
            inherited: self.inherited,
            grpc_timeout: self.grpc_timeout,
            method: own(self.method),
            request_id: own(self.request_id),
            upgrade: own(self.upgrade),
            client_deadline_headers: self.client_deadline_headers,
            identity: own(self.identity),
            websocket_extensions: self.websocket_extensions,
        }
    }

    /// The request id, to keep beyond the request headers' callback.
    pub fn request_id_owned(&self) -> Option<Box<str>> {
        self.request_id.as_deref().map(Box::from)
    }

    /// The deadline headers the client sent, to remove.
    pub fn client_deadline_headers(&self) -> impl Iterator<Item = &'static str> + '_ {
        CLIENT_DEADLINE_HEADERS
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.client_deadline_headers & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }
}

/// What an upgrade's answer says, read from the response headers in one
/// pass (a lookup of `sec-websocket-extensions` would make Envoy index the
/// response header map for the rest of the connection).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpgradeAnswer {
    /// `:status` is 101.
    pub switched: bool,
    /// The extensions the upstream accepted (repeated headers joined with `,`).
    pub extensions: Option<String>,
}

impl UpgradeAnswer {
    pub fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> UpgradeAnswer {
        let mut answer = UpgradeAnswer::default();
        for (name, value) in pairs {
            match name {
                b":status" => answer.switched = value == b"101",
                b"sec-websocket-extensions" => match &mut answer.extensions {
                    Some(joined) => {
                        joined.push(',');
                        joined.push_str(&String::from_utf8_lossy(value));
                    }
                    None => answer.extensions = Some(text(value).into_owned()),
                },
                _ => {}
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_every_pair_of_envoys_format() {
        let bytes = serialize(&[(":path", b"/a?b"), (":method", b"GET"), ("empty", b"")]);
        let pairs: Vec<_> = HeaderPairs::new(&bytes).collect();
        assert_eq!(
            pairs,
            vec![
                (&b":path"[..], &b"/a?b"[..]),
                (&b":method"[..], &b"GET"[..]),
                (&b"empty"[..], &b""[..])
            ]
        );
    }

    #[test]
    fn truncated_or_empty_input_ends_quietly() {
        let bytes = serialize(&[(":path", b"/a"), (":method", b"GET")]);
        for cut in 0..bytes.len() {
            let _ = HeaderPairs::new(&bytes[..cut]).count();
        }
        assert_eq!(HeaderPairs::new(&[]).count(), 0);
        let mut lying = bytes.clone();
        lying[0] = 200;
        assert!(HeaderPairs::new(&lying).count() <= 2);
    }

    #[test]
    fn picks_out_what_the_request_path_needs() {
        let bytes = serialize(&[
            (":path", b"/ws/events"),
            (":method", b"GET"),
            ("x-request-id", b"abc"),
            ("upgrade", b"WebSocket"),
            ("x-envoy-expected-rq-timeout-ms", b"1"),
            ("x-envoy-upstream-rq-timeout-alt-response", b"204"),
            ("x-envoy-other", b"x"),
            ("x-user-id", b"\xff\xfe"),
        ]);
        let head = RequestHead::from_pairs(HeaderPairs::new(&bytes));
        assert_eq!(head.path.as_deref(), Some("/ws/events"));
        assert_eq!(head.method.as_deref(), Some("GET"));
        assert_eq!(head.request_id.as_deref(), Some("abc"));
        assert_eq!(head.request_id_owned().as_deref(), Some("abc"));
        assert_eq!(head.upgrade.as_deref(), Some("WebSocket"));
        // Valid UTF-8 is borrowed from the map, not copied.
        assert!(matches!(head.path, Some(Cow::Borrowed(_))));
        assert!(matches!(head.request_id, Some(Cow::Borrowed(_))));
        let owned = head.clone().into_owned();
        assert_eq!(owned, head);
        for value in [
            &owned.path,
            &owned.method,
            &owned.request_id,
            &owned.upgrade,
        ] {
            assert!(matches!(value, Some(Cow::Owned(_))));
        }
        let no_id = serialize(&[(":path", b"/")]);
        assert_eq!(
            RequestHead::from_pairs(HeaderPairs::new(&no_id)).request_id_owned(),
            None
        );
        assert_eq!(
            head.client_deadline_headers().collect::<Vec<_>>(),
            vec![
                "x-envoy-expected-rq-timeout-ms",
                "x-envoy-upstream-rq-timeout-alt-response"
            ]
        );
    }

    #[test]
    fn repeated_upgrade_headers_are_one_token_list() {
        let bytes = serialize(&[("upgrade", b"websocket"), ("upgrade", b"h2c")]);
        let head = RequestHead::from_pairs(HeaderPairs::new(&bytes));
        assert_eq!(head.upgrade.as_deref(), Some("websocket,h2c"));
        let bytes = serialize(&[(":protocol", b"websocket")]);
        let head = RequestHead::from_pairs(HeaderPairs::new(&bytes));
        assert_eq!(head.upgrade.as_deref(), Some("websocket"));
    }

    #[test]
    fn reads_the_destination_and_the_inherited_budget() {
        use crate::policy::Millis;
        let bytes = serialize(&[
            (":authority", b"sms.example.com:443"),
            ("x-envoy-expected-rq-timeout-ms", b"1200"),
            ("grpc-timeout", b"2S"),
        ]);
        let head = RequestHead::from_pairs(HeaderPairs::new(&bytes));
        assert_eq!(head.authority.as_deref(), Some("sms.example.com:443"));
        assert_eq!(head.inherited, Inherited::Remaining(Millis(1200)));
        assert!(head.grpc_timeout);
        assert_eq!(
            head.client_deadline_headers().collect::<Vec<_>>(),
            vec!["x-envoy-expected-rq-timeout-ms"]
        );
        assert_eq!(head.clone().into_owned(), head);
        let spent = serialize(&[
            ("grpc-timeout", b"0m"),
            ("x-envoy-expected-rq-timeout-ms", b"900"),
        ]);
        assert_eq!(
            RequestHead::from_pairs(HeaderPairs::new(&spent)).inherited,
            Inherited::Spent
        );
        let garbage = serialize(&[("x-envoy-expected-rq-timeout-ms", b"soon")]);
        assert_eq!(
            RequestHead::from_pairs(HeaderPairs::new(&garbage)).inherited,
            Inherited::None
        );
    }

    #[test]
    fn keeps_the_first_identity_value_and_notes_an_extension_offer() {
        let bytes = serialize(&[
            ("x-user-id", b"ann"),
            ("sec-websocket-extensions", b"permessage-deflate"),
            ("x-user-id", b"bob"),
        ]);
        let head = RequestHead::read(HeaderPairs::new(&bytes), Some("x-user-id"));
        assert_eq!(head.identity.as_deref(), Some("ann"));
        assert!(head.websocket_extensions);
        assert_eq!(head.clone().into_owned(), head);
        let head = RequestHead::read(HeaderPairs::new(&bytes), Some("x-other"));
        assert_eq!(head.identity, None);
        let head = RequestHead::from_pairs(HeaderPairs::new(&bytes));
        assert_eq!(head.identity, None, "no identity header configured");
        let plain = serialize(&[(":path", b"/")]);
        assert!(!RequestHead::from_pairs(HeaderPairs::new(&plain)).websocket_extensions);
    }

    #[test]
    fn an_upgrade_answer_is_its_status_and_accepted_extensions() {
        let bytes = serialize(&[
            (":status", b"101"),
            ("sec-websocket-extensions", b"permessage-deflate"),
            ("sec-websocket-extensions", b"x-other"),
        ]);
        let answer = UpgradeAnswer::from_pairs(HeaderPairs::new(&bytes));
        assert!(answer.switched);
        assert_eq!(
            answer.extensions.as_deref(),
            Some("permessage-deflate,x-other")
        );
        let refused = serialize(&[(":status", b"403"), ("upgrade", b"websocket")]);
        assert_eq!(
            UpgradeAnswer::from_pairs(HeaderPairs::new(&refused)),
            UpgradeAnswer::default()
        );
    }

    #[test]
    fn non_utf8_values_do_not_panic() {
        let bytes = serialize(&[(":path", b"/a\xff")]);
        let head = RequestHead::from_pairs(HeaderPairs::new(&bytes));
        assert_eq!(head.path.as_deref(), Some("/a\u{fffd}"));
    }
}
