//! Per-connection WebSocket limits: message size, message rate, idle timeout and
//! maximum duration, enforced on the frames the scanner finds in both directions.
//!
//! Owns: [`ConnectionMonitor`] (the small state held per open connection), the
//! decisions ([`Verdict`], [`CloseReason`] with its close code and metric name) and the
//! encoding of the Close frame the host injects ([`close_frame`]).
//!
//! Must never: read payload bytes, allocate per chunk, grow with the traffic of the
//! connection, or trust the host clock to be strictly increasing (it may be a cached
//! value advancing in ~50 ms steps, or step backwards): every time difference saturates.

use super::frame::{ChunkSource, Frame, FrameError, FrameScanner, Opcode, Sender};

/// Limits of one connection, from the route's policy. `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Total payload of one data message (all its fragments).
    pub max_message_bytes: Option<u64>,
    /// Data messages plus pings per second, per direction (burst = one second's worth).
    pub max_messages_per_second: Option<u32>,
    /// Close when no byte flowed in either direction for this long.
    pub idle_timeout_ms: Option<u64>,
    /// Close this long after the upgrade, whatever the traffic.
    pub max_duration_ms: Option<u64>,
}

/// Which stream a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Request body of the upgraded stream: client frames, masked.
    ClientToUpstream,
    /// Response body of the upgraded stream: server frames, unmasked.
    UpstreamToClient,
}

impl Direction {
    pub fn opposite(self) -> Self {
        match self {
            Direction::ClientToUpstream => Direction::UpstreamToClient,
            Direction::UpstreamToClient => Direction::ClientToUpstream,
        }
    }

    /// Frames written into this direction must be masked (client → server).
    pub fn requires_mask(self) -> bool {
        matches!(self, Direction::ClientToUpstream)
    }
}

/// Why the monitor closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    MessageTooBig,
    RateLimited,
    ProtocolError,
    IdleTimeout,
    MaxDuration,
    /// The host could not hand us the bytes of a frame header (not the peer's fault).
    InternalError,
    /// The instance is draining (`POST <status.path>/drain`): Going Away.
    Draining,
}

impl CloseReason {
    /// The WebSocket close status code (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            CloseReason::MessageTooBig => 1009,
            CloseReason::RateLimited => 1008,
            CloseReason::ProtocolError => 1002,
            CloseReason::IdleTimeout | CloseReason::MaxDuration | CloseReason::Draining => 1001,
            CloseReason::InternalError => 1011,
        }
    }

    /// Stable metric label / log name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxDuration => "max_duration",
            CloseReason::InternalError => "internal_error",
            CloseReason::Draining => "draining",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the chunk.
    Pass,
    /// Close the connection. Bytes before `offset_in_chunk` may be forwarded; the
    /// offending frame starts there (0 if it started in an earlier chunk).
    /// `at_frame_boundary` is true only when the offending header starts inside this
    /// chunk, i.e. the forwarded bytes end exactly between two frames so a Close frame
    /// may be appended after them; when false the host must not inject a frame into
    /// this stream (part of the frame is already gone) and should just reset it.
    Close {
        reason: CloseReason,
        offset_in_chunk: usize,
        at_frame_boundary: bool,
    },
}

/// One direction's frame state.
#[derive(Debug, Clone)]
struct Side {
    scanner: FrameScanner,
    /// Payload bytes of the current (possibly fragmented) data message so far.
    message_bytes: u64,
}

impl Side {
    fn new(sender: Sender) -> Self {
        Side {
            scanner: FrameScanner::new(sender),
            message_bytes: 0,
        }
    }
}

/// The permessage-deflate bit, as [`FrameScanner::allow_rsv`] takes it.
const RSV1: u8 = 0b100;

/// Milli-tokens per token.
const MILLI: u32 = 1000;

/// State of one open connection: 96 bytes on wasm32, no heap.
#[derive(Debug, Clone)]
pub struct ConnectionMonitor {
    client: Side,
    upstream: Side,
    /// Token buckets in milli-tokens: [client → upstream, upstream → client]. Start
    /// full (`u32::MAX` is clamped to the capacity on first use).
    tokens: [u32; 2],
    started_ms: u64,
    /// The last chunk in either direction, and when both buckets were last
    /// refilled: they are refilled at every chunk (refill is linear in time and
    /// nothing is taken between two chunks, so this is exact and saves a
    /// timestamp per connection).
    last_activity_ms: u64,
    closed: Option<CloseReason>,
    protocol_error: Option<FrameError>,
    /// An Engine.IO connection: its transport packets cost no token.
    engine_io: bool,
}

impl ConnectionMonitor {
    /// A connection upgraded at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ConnectionMonitor {
            client: Side::new(Sender::Client),
            upstream: Side::new(Sender::Server),
            tokens: [u32::MAX; 2],
            started_ms: now_ms,
            last_activity_ms: now_ms,
            closed: None,
            protocol_error: None,
            engine_io: false,
        }
    }

    /// The connection carries Engine.IO: text messages that are transport packets
    /// (ping, pong, upgrade, noop; see [`crate::engine_io::is_transport_packet`]) cost
    /// no rate-limit token. Their first payload byte is the only payload byte read.
    pub fn count_engine_io_data_only(&mut self) {
        self.engine_io = true;
    }

    /// The upstream's 101 accepted permessage-deflate: from now on RSV1 (a
    /// compressed message's first frame) is legal in both directions. Sizes stay
    /// wire sizes; see [`compression`](super::compression) for why that is never
    /// what `max_message_bytes` sees.
    pub fn allow_compressed_messages(&mut self) {
        self.client.scanner.allow_rsv(RSV1);
        self.upstream.scanner.allow_rsv(RSV1);
    }

    /// Checks the frames of the next chunk of `dir` (every byte of the stream exactly
    /// once, in order). After a `Close` every later chunk also gets `Close` (offset 0).
    pub fn on_chunk<S: ChunkSource + ?Sized>(
        &mut self,
        limits: &ConnectionLimits,
        dir: Direction,
        chunk: &mut S,
        now_ms: u64,
    ) -> Verdict {
        if let Some(reason) = self.closed {
            return close(reason, None);
        }
        if !chunk.is_empty() {
            // Any byte counts as activity, including the middle of a large payload:
            // a long upload must not look idle.
            if let Some(rate) = limits.max_messages_per_second {
                self.refill(rate, now_ms);
            }
            self.last_activity_ms = self.last_activity_ms.max(now_ms);
        }
        let mut pos = 0usize;
        loop {
            let side = match dir {
                Direction::ClientToUpstream => &mut self.client,
                Direction::UpstreamToClient => &mut self.upstream,
            };
            match side.scanner.next_frame(chunk, &mut pos) {
                Ok(None) => return Verdict::Pass,
                Ok(Some(frame)) => {
                    let free = self.engine_io && is_engine_io_transport(&frame, chunk);
                    if let Some(reason) = self.check_frame(limits, dir, &frame, free) {
                        self.closed = Some(reason);
                        return close(reason, frame.header_offset);
                    }
                }
                Err(error) => {
                    let reason = if error.error.is_protocol_violation() {
                        CloseReason::ProtocolError
                    } else {
                        CloseReason::InternalError
                    };
                    self.closed = Some(reason);
                    self.protocol_error = Some(error.error);
                    return close(reason, error.header_offset);
                }
            }
        }
    }

    fn check_frame(
        &mut self,
        limits: &ConnectionLimits,
        dir: Direction,
        frame: &Frame,
        free: bool,
    ) -> Option<CloseReason> {
        let side = match dir {
            Direction::ClientToUpstream => &mut self.client,
            Direction::UpstreamToClient => &mut self.upstream,
        };
        let costs_token = match frame.opcode {
            Opcode::Text | Opcode::Binary => {
                side.message_bytes = frame.payload_len;
                !free
            }
            Opcode::Continuation => {
                side.message_bytes = side.message_bytes.saturating_add(frame.payload_len);
                false
            }
            Opcode::Ping => true,
            Opcode::Pong | Opcode::Close => false,
        };
        if !frame.opcode.is_control()
            && limits
                .max_message_bytes
                .is_some_and(|max| side.message_bytes > max)
        {
            return Some(CloseReason::MessageTooBig);
        }
        if costs_token && limits.max_messages_per_second.is_some() && !self.take_token(dir) {
            return Some(CloseReason::RateLimited);
        }
        None
    }

    /// Refills both buckets from the last activity up to `now_ms` (called before
    /// the activity time moves on).
    fn refill(&mut self, rate: u32, now_ms: u64) {
        let capacity =
            u32::try_from(u64::from(rate).saturating_mul(u64::from(MILLI))).unwrap_or(u32::MAX);
        // A clock stepping backwards refills nothing until it catches up again.
        let elapsed = now_ms.saturating_sub(self.last_activity_ms);
        // rate tokens per second = rate milli-tokens per millisecond.
        let refill = elapsed.saturating_mul(u64::from(rate));
        for bucket in &mut self.tokens {
            let filled = u64::from(*bucket).saturating_add(refill);
            *bucket = u32::try_from(filled).unwrap_or(u32::MAX).min(capacity);
        }
    }

    /// Takes one token from `dir`'s bucket (refilled at the chunk's start).
    fn take_token(&mut self, dir: Direction) -> bool {
        let [c2u, u2c] = &mut self.tokens;
        let bucket = match dir {
            Direction::ClientToUpstream => c2u,
            Direction::UpstreamToClient => u2c,
        };
        match bucket.checked_sub(MILLI) {
            Some(left) => {
                *bucket = left;
                true
            }
            None => false,
        }
    }

    /// Whether the connection must close now: max duration reached, or nothing flowed in
    /// either direction for the idle timeout. Max duration wins when both apply.
    pub fn timer_check(&self, limits: &ConnectionLimits, now_ms: u64) -> Option<CloseReason> {
        if limits
            .max_duration_ms
            .is_some_and(|max| now_ms.saturating_sub(self.started_ms) >= max)
        {
            return Some(CloseReason::MaxDuration);
        }
        if limits
            .idle_timeout_ms
            .is_some_and(|idle| now_ms.saturating_sub(self.last_activity_ms) >= idle)
        {
            return Some(CloseReason::IdleTimeout);
        }
        None
    }

    /// The earliest time at which [`timer_check`](Self::timer_check) could fire, for the
    /// host's timer heap. Traffic only moves it later; re-ask after it passes.
    pub fn next_timer_due(&self, limits: &ConnectionLimits) -> Option<u64> {
        let duration = limits
            .max_duration_ms
            .map(|max| self.started_ms.saturating_add(max));
        let idle = limits
            .idle_timeout_ms
            .map(|idle| self.last_activity_ms.saturating_add(idle));
        match (duration, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `dir`'s stream is between frames, so the host may inject a Close frame
    /// into it (e.g. towards the peer of the offender, or on a timer close).
    pub fn at_frame_boundary(&self, dir: Direction) -> bool {
        match dir {
            Direction::ClientToUpstream => self.client.scanner.at_frame_boundary(),
            Direction::UpstreamToClient => self.upstream.scanner.at_frame_boundary(),
        }
    }

    /// The close decided by [`on_chunk`](Self::on_chunk), if any.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// The frame error behind a `ProtocolError`/`InternalError` close, for the log.
    pub fn protocol_error(&self) -> Option<FrameError> {
        self.protocol_error
    }
}

/// A whole, uncompressed text frame whose first payload byte (in this chunk) marks an
/// Engine.IO transport packet. A payload that begins in the next chunk, a compressed or
/// fragmented message is counted like any other.
fn is_engine_io_transport<S: ChunkSource + ?Sized>(frame: &Frame, chunk: &mut S) -> bool {
    if frame.opcode != Opcode::Text || !frame.fin || frame.rsv != 0 || frame.payload_len == 0 {
        return false;
    }
    if frame.payload_offset >= chunk.len() {
        return false;
    }
    let [key0, ..] = frame.mask_key;
    chunk
        .bytes(frame.payload_offset, 1)
        .and_then(|b| b.first().copied())
        .is_some_and(|b| crate::engine_io::is_transport_packet(b ^ key0))
}

fn close(reason: CloseReason, header_offset: Option<usize>) -> Verdict {
    Verdict::Close {
        reason,
        offset_in_chunk: header_offset.unwrap_or(0),
        at_frame_boundary: header_offset.is_some(),
    }
}

/// Longest close reason text: 125 bytes of control payload minus the 2-byte code.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// A Close frame with `code` and `reason` (truncated to 123 bytes on a char boundary).
/// Towards the client (server → client) pass `mask: None`; towards the upstream
/// (client → server) frames must be masked: pass a fresh random key.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CLOSE_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    let reason = reason.get(..end).unwrap_or("");
    let payload_len = 2usize.saturating_add(reason.len());
    let mut out = Vec::with_capacity(payload_len.saturating_add(6));
    out.push(0x80 | Opcode::Close.as_u8());
    // payload_len <= 125 by construction
    let len7 = u8::try_from(payload_len).unwrap_or(125) & 0x7F;
    let payload = code.to_be_bytes().into_iter().chain(reason.bytes());
    match mask {
        None => {
            out.push(len7);
            out.extend(payload);
        }
        Some(key) => {
            out.push(0x80 | len7);
            out.extend_from_slice(&key);
            out.extend(payload.zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::frame::test_support::{frame, header, KEY};
    use super::super::frame::SliceSource;
    use super::*;

    const C2U: Direction = Direction::ClientToUpstream;
    const U2C: Direction = Direction::UpstreamToClient;

    fn feed(
        m: &mut ConnectionMonitor,
        limits: &ConnectionLimits,
        dir: Direction,
        bytes: &[u8],
        now: u64,
    ) -> Verdict {
        m.on_chunk(limits, dir, &mut SliceSource(bytes), now)
    }

    fn cf(fin: bool, op: Opcode, payload: &[u8]) -> Vec<u8> {
        frame(fin, op, payload, Some(KEY))
    }

    fn sf(fin: bool, op: Opcode, payload: &[u8]) -> Vec<u8> {
        frame(fin, op, payload, None)
    }

    fn closed(reason: CloseReason, offset: usize) -> Verdict {
        Verdict::Close {
            reason,
            offset_in_chunk: offset,
            at_frame_boundary: true,
        }
    }

    fn size_limit(max: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_message_bytes: Some(max),
            ..Default::default()
        }
    }

    fn rate_limit(rate: u32) -> ConnectionLimits {
        ConnectionLimits {
            max_messages_per_second: Some(rate),
            ..Default::default()
        }
    }

    #[test]
    fn monitor_is_small() {
        assert!(
            std::mem::size_of::<ConnectionMonitor>() <= 104,
            "{}",
            std::mem::size_of::<ConnectionMonitor>()
        );
    }

    #[test]
    fn close_codes_and_names() {
        let all = [
            (CloseReason::MessageTooBig, 1009, "message_too_big"),
            (CloseReason::RateLimited, 1008, "rate_limited"),
            (CloseReason::ProtocolError, 1002, "protocol_error"),
            (CloseReason::IdleTimeout, 1001, "idle_timeout"),
            (CloseReason::MaxDuration, 1001, "max_duration"),
            (CloseReason::InternalError, 1011, "internal_error"),
        ];
        for (reason, code, name) in all {
            assert_eq!(reason.close_code(), code);
            assert_eq!(reason.as_str(), name);
            assert_eq!(reason.to_string(), name);
        }
    }

    #[test]
    fn engine_io_transport_packets_cost_no_token() {
        let l = rate_limit(2);
        let mut m = ConnectionMonitor::new(0);
        m.count_engine_io_data_only();
        let mut chunk = Vec::new();
        for packet in [&b"2probe"[..], b"5", b"3", b"6", b"2"] {
            chunk.extend(cf(true, Opcode::Text, packet));
        }
        chunk.extend(cf(true, Opcode::Text, b"42[\"a\"]"));
        chunk.extend(cf(true, Opcode::Text, b"42[\"b\"]"));
        assert_eq!(feed(&mut m, &l, C2U, &chunk, 0), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Text, b"4third"), 0),
            closed(CloseReason::RateLimited, 0)
        );
        // Server packets too, unmasked.
        let mut m = ConnectionMonitor::new(0);
        m.count_engine_io_data_only();
        let mut chunk = sf(true, Opcode::Text, b"3probe");
        chunk.extend(sf(true, Opcode::Text, b"2"));
        chunk.extend(sf(true, Opcode::Text, b"40"));
        chunk.extend(sf(true, Opcode::Text, b"42[1]"));
        assert_eq!(feed(&mut m, &l, U2C, &chunk, 0), Verdict::Pass);
    }

    #[test]
    fn without_engine_io_or_when_unreadable_every_message_costs() {
        let l = rate_limit(1);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = cf(true, Opcode::Text, b"2");
        let second = chunk.len();
        chunk.extend(cf(true, Opcode::Text, b"2"));
        assert_eq!(
            feed(&mut m, &l, C2U, &chunk, 0),
            closed(CloseReason::RateLimited, second)
        );
        // Binary, fragmented or compressed "2…" and a payload in the next chunk count.
        let mut m = ConnectionMonitor::new(0);
        m.count_engine_io_data_only();
        m.allow_compressed_messages();
        let l = rate_limit(4);
        let mut chunk = cf(true, Opcode::Binary, b"2");
        chunk.extend(cf(false, Opcode::Text, b"2"));
        chunk.extend(cf(true, Opcode::Continuation, b"x"));
        let mut compressed = cf(true, Opcode::Text, b"2");
        compressed[0] |= 0x40;
        chunk.extend(compressed);
        chunk.extend(header(true, Opcode::Text, 1, Some(KEY)));
        assert_eq!(feed(&mut m, &l, C2U, &chunk, 0), Verdict::Pass);
        // Four tokens gone: the next data message is one too many.
        let mut next = vec![b'2' ^ KEY[0]];
        next.extend(cf(true, Opcode::Text, b"4x"));
        assert_eq!(
            feed(&mut m, &l, C2U, &next, 0),
            closed(CloseReason::RateLimited, 1)
        );
    }

    #[test]
    fn compressed_frames_pass_both_ways_only_once_allowed() {
        let l = ConnectionLimits::default();
        let mut client = cf(true, Opcode::Text, b"compressed");
        client[0] |= 0x40;
        let mut server = sf(true, Opcode::Binary, b"compressed");
        server[0] |= 0x40;
        let mut m = ConnectionMonitor::new(0);
        m.allow_compressed_messages();
        assert_eq!(feed(&mut m, &l, C2U, &client, 0), Verdict::Pass);
        assert_eq!(feed(&mut m, &l, U2C, &server, 0), Verdict::Pass);
        let mut m = ConnectionMonitor::new(0);
        assert_eq!(
            feed(&mut m, &l, U2C, &server, 0),
            closed(CloseReason::ProtocolError, 0)
        );
    }

    #[test]
    fn no_limits_passes_everything() {
        let mut m = ConnectionMonitor::new(0);
        let l = ConnectionLimits::default();
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Text, &[0; 5000]), 0),
            Verdict::Pass
        );
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(true, Opcode::Binary, &[0; 5000]), 0),
            Verdict::Pass
        );
        assert_eq!(m.timer_check(&l, u64::MAX), None);
        assert_eq!(m.next_timer_due(&l), None);
    }

    #[test]
    fn message_exactly_at_limit_passes_one_over_fails() {
        let l = size_limit(100);
        let mut m = ConnectionMonitor::new(0);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Text, &[0; 100]), 0),
            Verdict::Pass
        );
        let mut m = ConnectionMonitor::new(0);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Text, &[0; 101]), 0),
            closed(CloseReason::MessageTooBig, 0)
        );
    }

    #[test]
    fn oversize_is_detected_from_the_header_alone() {
        let l = size_limit(1 << 20);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = sf(true, Opcode::Text, b"ok");
        let at = chunk.len();
        chunk.extend(header(true, Opcode::Binary, 1 << 30, None));
        assert_eq!(
            feed(&mut m, &l, U2C, &chunk, 0),
            closed(CloseReason::MessageTooBig, at)
        );
    }

    #[test]
    fn fragmented_message_exceeding_only_in_total() {
        let l = size_limit(10);
        let mut m = ConnectionMonitor::new(0);
        let first = cf(false, Opcode::Text, &[0; 4]);
        let second = cf(false, Opcode::Continuation, &[0; 4]);
        let third = cf(true, Opcode::Continuation, &[0; 3]);
        assert_eq!(feed(&mut m, &l, C2U, &first, 0), Verdict::Pass);
        assert_eq!(feed(&mut m, &l, C2U, &second, 0), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, C2U, &third, 0),
            closed(CloseReason::MessageTooBig, 0)
        );
    }

    #[test]
    fn fragmented_message_at_limit_then_new_message_resets_total() {
        let l = size_limit(10);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = cf(false, Opcode::Binary, &[0; 6]);
        chunk.extend(cf(true, Opcode::Continuation, &[0; 4]));
        chunk.extend(cf(true, Opcode::Binary, &[0; 10]));
        assert_eq!(feed(&mut m, &l, C2U, &chunk, 0), Verdict::Pass);
    }

    #[test]
    fn control_frames_interleaved_do_not_count_towards_message_size() {
        let l = size_limit(10);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = cf(false, Opcode::Text, &[0; 5]);
        chunk.extend(cf(true, Opcode::Ping, &[0; 100]));
        chunk.extend(cf(false, Opcode::Continuation, &[0; 5]));
        chunk.extend(cf(true, Opcode::Pong, &[0; 100]));
        chunk.extend(cf(true, Opcode::Continuation, &[]));
        chunk.extend(cf(true, Opcode::Close, &[0x03, 0xe8]));
        assert_eq!(feed(&mut m, &l, C2U, &chunk, 0), Verdict::Pass);
    }

    #[test]
    fn message_size_is_per_direction() {
        let l = size_limit(10);
        let mut m = ConnectionMonitor::new(0);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(false, Opcode::Text, &[0; 8]), 0),
            Verdict::Pass
        );
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(false, Opcode::Text, &[0; 8]), 0),
            Verdict::Pass
        );
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(true, Opcode::Continuation, &[0; 2]), 0),
            Verdict::Pass
        );
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Continuation, &[0; 3]), 0),
            closed(CloseReason::MessageTooBig, 0)
        );
    }

    #[test]
    fn offending_frame_offset_among_coalesced_frames() {
        let l = size_limit(50);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = Vec::new();
        for _ in 0..10 {
            chunk.extend(sf(true, Opcode::Binary, &[1; 50]));
        }
        let at = chunk.len();
        chunk.extend(sf(true, Opcode::Binary, &[1; 51]));
        chunk.extend(sf(true, Opcode::Binary, &[1; 5]));
        assert_eq!(
            feed(&mut m, &l, U2C, &chunk, 0),
            closed(CloseReason::MessageTooBig, at)
        );
    }

    #[test]
    fn offending_header_split_across_chunks_is_not_a_boundary() {
        let l = size_limit(50);
        let mut m = ConnectionMonitor::new(0);
        let bytes = header(true, Opcode::Binary, 300, None);
        assert_eq!(feed(&mut m, &l, U2C, &bytes[..1], 0), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, U2C, &bytes[1..], 0),
            Verdict::Close {
                reason: CloseReason::MessageTooBig,
                offset_in_chunk: 0,
                at_frame_boundary: false
            }
        );
    }

    #[test]
    fn split_at_every_byte_of_the_offending_header() {
        let l = size_limit(1000);
        let mut stream = cf(true, Opcode::Text, b"fine");
        let at = stream.len();
        stream.extend(header(true, Opcode::Binary, 70_000, Some(KEY)));
        for cut in 1..stream.len() {
            let mut m = ConnectionMonitor::new(0);
            let first = feed(&mut m, &l, C2U, &stream[..cut], 0);
            let second = feed(&mut m, &l, C2U, &stream[cut..], 0);
            let expected_first = Verdict::Pass;
            let expected_second = if cut <= at {
                closed(CloseReason::MessageTooBig, at - cut)
            } else {
                Verdict::Close {
                    reason: CloseReason::MessageTooBig,
                    offset_in_chunk: 0,
                    at_frame_boundary: false,
                }
            };
            assert_eq!(
                (first, second),
                (expected_first, expected_second),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn close_is_sticky() {
        let l = size_limit(1);
        let mut m = ConnectionMonitor::new(0);
        assert!(matches!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Text, b"xx"), 0),
            Verdict::Close { .. }
        ));
        assert_eq!(m.closed(), Some(CloseReason::MessageTooBig));
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(true, Opcode::Text, b""), 0),
            Verdict::Close {
                reason: CloseReason::MessageTooBig,
                offset_in_chunk: 0,
                at_frame_boundary: false
            }
        );
    }

    #[test]
    fn malformed_frames_close_with_protocol_error() {
        let mut reserved_len = vec![0x82, 127];
        reserved_len.extend_from_slice(&(1u64 << 63).to_be_bytes());
        let cases: Vec<(Direction, Vec<u8>, FrameError)> = vec![
            (U2C, vec![0x83, 0x00], FrameError::ReservedOpcode(3)),
            (U2C, vec![0xC1, 0x00], FrameError::ReservedBitsSet),
            (
                U2C,
                header(true, Opcode::Ping, 126, None),
                FrameError::ControlFrameTooLong,
            ),
            (
                U2C,
                sf(false, Opcode::Ping, b""),
                FrameError::FragmentedControlFrame,
            ),
            (
                U2C,
                sf(true, Opcode::Continuation, b""),
                FrameError::UnexpectedContinuation,
            ),
            (
                U2C,
                [sf(false, Opcode::Text, b""), sf(true, Opcode::Text, b"")].concat(),
                FrameError::MessageNotFinished,
            ),
            (U2C, reserved_len, FrameError::LengthTooLarge),
            (
                U2C,
                cf(true, Opcode::Text, b""),
                FrameError::MaskedServerFrame,
            ),
            (
                C2U,
                sf(true, Opcode::Text, b""),
                FrameError::UnmaskedClientFrame,
            ),
        ];
        for (dir, bytes, error) in cases {
            let mut m = ConnectionMonitor::new(0);
            let verdict = feed(&mut m, &ConnectionLimits::default(), dir, &bytes, 0);
            match verdict {
                Verdict::Close { reason, .. } => {
                    assert_eq!(reason, CloseReason::ProtocolError, "{error}")
                }
                Verdict::Pass => panic!("{error} passed"),
            }
            assert_eq!(m.protocol_error(), Some(error));
            assert_eq!(CloseReason::ProtocolError.close_code(), 1002);
        }
    }

    #[test]
    fn protocol_error_offset_points_at_bad_frame() {
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = sf(true, Opcode::Text, b"hi");
        chunk.extend([0x8B, 0x00]);
        assert_eq!(
            feed(&mut m, &ConnectionLimits::default(), U2C, &chunk, 0),
            closed(CloseReason::ProtocolError, 4)
        );
    }

    #[test]
    fn unavailable_bytes_close_with_internal_error() {
        struct Broken;
        impl ChunkSource for Broken {
            fn len(&self) -> usize {
                4
            }
            fn bytes(&mut self, _: usize, _: usize) -> Option<&[u8]> {
                Some(&[])
            }
        }
        let mut m = ConnectionMonitor::new(0);
        let v = m.on_chunk(&ConnectionLimits::default(), U2C, &mut Broken, 0);
        assert_eq!(v, closed(CloseReason::InternalError, 0));
        assert_eq!(CloseReason::InternalError.close_code(), 1011);
    }

    #[test]
    fn rate_burst_of_capacity_passes_then_one_more_fails() {
        let l = rate_limit(5);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = Vec::new();
        for _ in 0..5 {
            chunk.extend(cf(true, Opcode::Text, b"x"));
        }
        assert_eq!(feed(&mut m, &l, C2U, &chunk, 0), Verdict::Pass);
        let one = cf(true, Opcode::Text, b"x");
        assert_eq!(
            feed(&mut m, &l, C2U, &one, 0),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn rate_offset_points_at_first_message_over() {
        let l = rate_limit(2);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = Vec::new();
        for _ in 0..2 {
            chunk.extend(sf(true, Opcode::Binary, b"abc"));
        }
        let at = chunk.len();
        chunk.extend(sf(true, Opcode::Binary, b"abc"));
        assert_eq!(
            feed(&mut m, &l, U2C, &chunk, 0),
            closed(CloseReason::RateLimited, at)
        );
    }

    #[test]
    fn rate_counts_messages_not_fragments() {
        let l = rate_limit(1);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = cf(false, Opcode::Text, b"a");
        for _ in 0..10 {
            chunk.extend(cf(false, Opcode::Continuation, b"b"));
        }
        chunk.extend(cf(true, Opcode::Continuation, b"c"));
        assert_eq!(feed(&mut m, &l, C2U, &chunk, 0), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Text, b"d"), 0),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn pings_cost_a_token_pongs_and_close_are_free() {
        let l = rate_limit(2);
        let mut m = ConnectionMonitor::new(0);
        let mut chunk = Vec::new();
        for _ in 0..20 {
            chunk.extend(cf(true, Opcode::Pong, b""));
        }
        chunk.extend(cf(true, Opcode::Ping, b""));
        chunk.extend(cf(true, Opcode::Ping, b""));
        chunk.extend(cf(true, Opcode::Close, b""));
        assert_eq!(feed(&mut m, &l, C2U, &chunk, 0), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Ping, b""), 0),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn rate_buckets_are_per_direction() {
        let l = rate_limit(1);
        let mut m = ConnectionMonitor::new(0);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Text, b"x"), 0),
            Verdict::Pass
        );
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(true, Opcode::Text, b"x"), 0),
            Verdict::Pass
        );
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(true, Opcode::Text, b"x"), 0),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn rate_bucket_refills_over_time() {
        let l = rate_limit(10); // one token per 100 ms
        let mut m = ConnectionMonitor::new(1_000);
        let msg = cf(true, Opcode::Text, b"x");
        for _ in 0..10 {
            assert_eq!(feed(&mut m, &l, C2U, &msg, 1_000), Verdict::Pass);
        }
        // 50 ms later: half a token, not enough.
        let mut m2 = m.clone();
        assert_eq!(
            feed(&mut m2, &l, C2U, &msg, 1_050),
            closed(CloseReason::RateLimited, 0)
        );
        // A message the other way at 1050 refills both buckets by half a token; the
        // next 50 ms cached-clock step completes the token.
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(true, Opcode::Text, b"x"), 1_050),
            Verdict::Pass
        );
        assert_eq!(feed(&mut m, &l, C2U, &msg, 1_100), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, C2U, &msg, 1_100),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn rate_bucket_refill_is_capped_at_one_second() {
        let l = rate_limit(3);
        let mut m = ConnectionMonitor::new(0);
        let msg = sf(true, Opcode::Binary, b"x");
        // Long quiet period: the bucket holds at most 3 tokens.
        let mut chunk = Vec::new();
        for _ in 0..3 {
            chunk.extend(msg.clone());
        }
        assert_eq!(feed(&mut m, &l, U2C, &chunk, 3_600_000), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, U2C, &msg, 3_600_000),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn rate_with_backwards_clock_refills_nothing() {
        let l = rate_limit(1);
        let mut m = ConnectionMonitor::new(10_000);
        let msg = sf(true, Opcode::Binary, b"x");
        assert_eq!(feed(&mut m, &l, U2C, &msg, 10_000), Verdict::Pass);
        let mut back = m.clone();
        assert_eq!(
            feed(&mut back, &l, U2C, &msg, 5_000),
            closed(CloseReason::RateLimited, 0)
        );
        assert_eq!(feed(&mut m, &l, U2C, &msg, 11_000), Verdict::Pass);
    }

    #[test]
    fn rate_refill_after_a_backwards_clock_starts_from_the_latest_time() {
        // A message seen at an earlier time (the clock stepped back) does not
        // move the refill mark back: returning to the latest time refills
        // nothing.
        let l = rate_limit(2);
        let mut m = ConnectionMonitor::new(10_000);
        let msg = sf(true, Opcode::Binary, b"x");
        let mut two = msg.clone();
        two.extend(msg.clone());
        assert_eq!(feed(&mut m, &l, U2C, &two, 10_000), Verdict::Pass);
        assert_eq!(
            feed(&mut m, &l, C2U, &cf(true, Opcode::Binary, b"x"), 5_000),
            Verdict::Pass
        );
        assert_eq!(
            feed(&mut m, &l, U2C, &msg, 10_000),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn rate_zero_rejects_the_first_message() {
        let l = rate_limit(0);
        let mut m = ConnectionMonitor::new(0);
        assert_eq!(
            feed(&mut m, &l, U2C, &sf(true, Opcode::Binary, b""), 5_000),
            closed(CloseReason::RateLimited, 0)
        );
    }

    #[test]
    fn huge_rate_does_not_overflow() {
        let l = rate_limit(u32::MAX);
        let mut m = ConnectionMonitor::new(0);
        let msg = sf(true, Opcode::Binary, b"");
        for t in [0, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(feed(&mut m, &l, U2C, &msg, t), Verdict::Pass);
        }
    }

    #[test]
    fn idle_timer_fires_without_traffic() {
        let l = ConnectionLimits {
            idle_timeout_ms: Some(30_000),
            ..Default::default()
        };
        let m = ConnectionMonitor::new(1_000);
        assert_eq!(m.next_timer_due(&l), Some(31_000));
        assert_eq!(m.timer_check(&l, 30_999), None);
        assert_eq!(m.timer_check(&l, 31_000), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn traffic_in_either_direction_postpones_idle() {
        let l = ConnectionLimits {
            idle_timeout_ms: Some(1_000),
            ..Default::default()
        };
        let mut m = ConnectionMonitor::new(0);
        feed(&mut m, &l, C2U, &cf(true, Opcode::Ping, b""), 900);
        assert_eq!(m.timer_check(&l, 1_500), None);
        assert_eq!(m.next_timer_due(&l), Some(1_900));
        feed(&mut m, &l, U2C, &sf(true, Opcode::Pong, b""), 1_800);
        assert_eq!(m.timer_check(&l, 2_700), None);
        assert_eq!(m.timer_check(&l, 2_800), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn payload_bytes_without_a_header_count_as_activity() {
        let l = ConnectionLimits {
            idle_timeout_ms: Some(1_000),
            ..Default::default()
        };
        let mut m = ConnectionMonitor::new(0);
        let big = sf(true, Opcode::Binary, &[0; 3000]);
        feed(&mut m, &l, U2C, &big[..1000], 0);
        feed(&mut m, &l, U2C, &big[1000..2000], 900);
        feed(&mut m, &l, U2C, &big[2000..], 1_800);
        assert_eq!(m.timer_check(&l, 2_700), None);
    }

    #[test]
    fn empty_chunk_is_not_activity() {
        let l = ConnectionLimits {
            idle_timeout_ms: Some(1_000),
            ..Default::default()
        };
        let mut m = ConnectionMonitor::new(0);
        assert_eq!(feed(&mut m, &l, U2C, &[], 900), Verdict::Pass);
        assert_eq!(m.timer_check(&l, 1_000), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn non_increasing_clock_never_moves_activity_back() {
        let l = ConnectionLimits {
            idle_timeout_ms: Some(1_000),
            ..Default::default()
        };
        let mut m = ConnectionMonitor::new(0);
        feed(&mut m, &l, U2C, &sf(true, Opcode::Pong, b""), 500);
        feed(&mut m, &l, U2C, &sf(true, Opcode::Pong, b""), 500);
        feed(&mut m, &l, U2C, &sf(true, Opcode::Pong, b""), 200);
        assert_eq!(m.next_timer_due(&l), Some(1_500));
        // A check with a clock behind the last activity does not fire or underflow.
        assert_eq!(m.timer_check(&l, 100), None);
    }

    #[test]
    fn max_duration_fires_regardless_of_traffic() {
        let l = ConnectionLimits {
            max_duration_ms: Some(60_000),
            idle_timeout_ms: Some(10_000),
            ..Default::default()
        };
        let mut m = ConnectionMonitor::new(5_000);
        for t in (5_000..65_000).step_by(5_000) {
            feed(&mut m, &l, C2U, &cf(true, Opcode::Ping, b""), t);
            assert_eq!(m.timer_check(&l, t), None);
        }
        assert_eq!(m.next_timer_due(&l), Some(65_000));
        assert_eq!(m.timer_check(&l, 65_000), Some(CloseReason::MaxDuration));
    }

    #[test]
    fn max_duration_wins_when_both_timers_are_due() {
        let l = ConnectionLimits {
            max_duration_ms: Some(1_000),
            idle_timeout_ms: Some(1_000),
            ..Default::default()
        };
        let m = ConnectionMonitor::new(0);
        assert_eq!(m.timer_check(&l, 1_000), Some(CloseReason::MaxDuration));
        assert_eq!(m.next_timer_due(&l), Some(1_000));
    }

    #[test]
    fn next_timer_due_saturates() {
        let l = ConnectionLimits {
            max_duration_ms: Some(u64::MAX),
            ..Default::default()
        };
        let m = ConnectionMonitor::new(10);
        assert_eq!(m.next_timer_due(&l), Some(u64::MAX));
    }

    #[test]
    fn frame_boundary_per_direction() {
        let l = ConnectionLimits::default();
        let mut m = ConnectionMonitor::new(0);
        let big = sf(true, Opcode::Binary, &[0; 100]);
        feed(&mut m, &l, U2C, &big[..50], 0);
        assert!(!m.at_frame_boundary(U2C));
        assert!(m.at_frame_boundary(C2U));
        feed(&mut m, &l, U2C, &big[50..], 0);
        assert!(m.at_frame_boundary(U2C));
    }

    #[test]
    fn direction_helpers() {
        assert_eq!(C2U.opposite(), U2C);
        assert!(C2U.requires_mask());
        assert!(!U2C.requires_mask());
    }

    #[test]
    fn close_frame_1009_unmasked() {
        assert_eq!(close_frame(1009, "", None), vec![0x88, 0x02, 0x03, 0xF1]);
    }

    #[test]
    fn close_frame_with_reason_unmasked() {
        let f = close_frame(1001, "bye", None);
        assert_eq!(f, vec![0x88, 0x05, 0x03, 0xE9, b'b', b'y', b'e']);
    }

    #[test]
    fn close_frame_masked_xors_payload_with_key() {
        let key = [0x01, 0x02, 0x03, 0x04];
        let f = close_frame(1008, "ab", Some(key));
        // 1008 = 0x03F0
        assert_eq!(
            f,
            vec![
                0x88,
                0x84,
                1,
                2,
                3,
                4,
                0x03 ^ 1,
                0xF0 ^ 2,
                b'a' ^ 3,
                b'b' ^ 4
            ]
        );
    }

    #[test]
    fn close_frame_reason_truncated_on_char_boundary() {
        let long = "é".repeat(100); // 200 bytes, 2 per char
        let f = close_frame(1000, &long, None);
        assert_eq!(f[1], 2 + 122);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        let ascii = "a".repeat(500);
        let f = close_frame(1000, &ascii, Some(KEY));
        assert_eq!(f[1], 0x80 | 125);
        assert_eq!(f.len(), 2 + 4 + 125);
    }

    #[test]
    fn close_frames_parse_as_valid_frames_in_their_direction() {
        let mut m = ConnectionMonitor::new(0);
        let l = ConnectionLimits::default();
        assert_eq!(
            feed(&mut m, &l, C2U, &close_frame(1009, "too big", Some(KEY)), 0),
            Verdict::Pass
        );
        assert_eq!(
            feed(
                &mut m,
                &l,
                U2C,
                &close_frame(1009, &"x".repeat(300), None),
                0
            ),
            Verdict::Pass
        );
    }

    #[test]
    fn only_header_regions_are_fetched_by_the_monitor() {
        struct Recording<'a> {
            data: &'a [u8],
            asked: Vec<(usize, usize)>,
        }
        impl ChunkSource for Recording<'_> {
            fn len(&self) -> usize {
                self.data.len()
            }
            fn bytes(&mut self, start: usize, len: usize) -> Option<&[u8]> {
                self.asked.push((start, len));
                self.data.get(start..(start + len).min(self.data.len()))
            }
        }
        let mut stream = cf(true, Opcode::Binary, &vec![0; 2_000_000]);
        let second = stream.len();
        stream.extend(cf(true, Opcode::Binary, &vec![0; 70_000]));
        let l = size_limit(10_000_000);
        let mut m = ConnectionMonitor::new(0);
        let mut src = Recording {
            data: &stream,
            asked: Vec::new(),
        };
        assert_eq!(m.on_chunk(&l, C2U, &mut src, 0), Verdict::Pass);
        assert_eq!(src.asked, vec![(0, 14), (second, 14)]);
    }
}
