//! RFC 6455 frame scanner: finds frame boundaries in one direction of an upgraded
//! connection, seen as arbitrary chunks, and validates each frame header.
//!
//! Owns: the [`ChunkSource`] abstraction over a chunk the host fetches lazily, the
//! per-direction [`FrameScanner`] state (≤ 14 partial header bytes and the payload bytes
//! still to skip) and the protocol checks on headers ([`FrameError`]).
//!
//! Must never: read payload bytes (payloads can be megabytes; only header regions are
//! requested from the source), allocate per chunk, or resynchronise after an error (a
//! byte stream that failed to parse has no trustworthy frame boundary left).

use std::fmt;

/// Longest frame header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// Longest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// One chunk of the stream, fetched lazily by the host.
pub trait ChunkSource {
    /// Length of the chunk in bytes.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes starting at `start` (< `len()`); `len` is how many the scanner wants.
    /// May return fewer (a window) or more; only bytes before `self.len()` are used.
    /// `None` or an empty slice means the bytes are unavailable: the scan fails with
    /// [`FrameError::SourceUnavailable`].
    fn bytes(&mut self, start: usize, len: usize) -> Option<&[u8]>;
}

/// A chunk already in memory (tests, or a small chunk the host fetched whole).
#[derive(Debug, Clone, Copy)]
pub struct SliceSource<'a>(pub &'a [u8]);

impl ChunkSource for SliceSource<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn bytes(&mut self, start: usize, len: usize) -> Option<&[u8]> {
        let end = start.saturating_add(len).min(self.0.len());
        self.0.get(start..end)
    }
}

/// Frame opcodes (the non-reserved ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, Ping, Pong.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Who sends the frames a scanner sees: decides the required mask bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Client → server: every frame MUST be masked.
    Client,
    /// Server → client: no frame may be masked.
    Server,
}

/// One parsed and validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1..3 as the 3 low bits (RSV1 = 0b100); non-zero only if allowed.
    pub rsv: u8,
    pub opcode: Opcode,
    pub masked: bool,
    pub payload_len: u64,
    /// Where the header began in the current chunk; `None` if it began in an earlier one.
    pub header_offset: Option<usize>,
    /// Header length in bytes (2..=14).
    pub header_len: u8,
    /// Where the payload begins in the current chunk (the chunk's length when it
    /// begins in the next one).
    pub payload_offset: usize,
    /// The masking key of a client frame (zeros for an unmasked one): payload byte
    /// `i` is `wire[i] ^ mask_key[i % 4]`.
    pub mask_key: [u8; 4],
}

impl Frame {
    /// First frame of a data message (Text or Binary).
    pub fn starts_message(&self) -> bool {
        matches!(self.opcode, Opcode::Text | Opcode::Binary)
    }
}

/// A protocol violation (or unreadable input) found in a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Opcode 0x3-0x7 or 0xB-0xF.
    ReservedOpcode(u8),
    /// An RSV bit is set without a negotiated extension.
    ReservedBitsSet,
    /// A control frame with more than 125 bytes of payload.
    ControlFrameTooLong,
    /// A control frame without FIN.
    FragmentedControlFrame,
    /// A continuation frame without a fragmented message open.
    UnexpectedContinuation,
    /// A new Text/Binary frame while a fragmented message is still open.
    MessageNotFinished,
    /// A 64-bit payload length with the most significant bit set.
    LengthTooLarge,
    /// A client → server frame without the mask bit.
    UnmaskedClientFrame,
    /// A server → client frame with the mask bit.
    MaskedServerFrame,
    /// The chunk source could not return the header bytes.
    SourceUnavailable,
    /// The scanner already failed on this stream; nothing after it can be trusted.
    AfterError,
}

impl FrameError {
    /// Whether the peer broke the protocol (close code 1002) rather than the host
    /// failing to hand us the bytes.
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, FrameError::SourceUnavailable | FrameError::AfterError)
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            FrameError::ReservedBitsSet => f.write_str("reserved bits set without extension"),
            FrameError::ControlFrameTooLong => f.write_str("control frame payload over 125 bytes"),
            FrameError::FragmentedControlFrame => f.write_str("fragmented control frame"),
            FrameError::UnexpectedContinuation => {
                f.write_str("continuation frame without a started message")
            }
            FrameError::MessageNotFinished => {
                f.write_str("new data frame while a fragmented message is open")
            }
            FrameError::LengthTooLarge => f.write_str("64-bit payload length with top bit set"),
            FrameError::UnmaskedClientFrame => f.write_str("client frame not masked"),
            FrameError::MaskedServerFrame => f.write_str("server frame masked"),
            FrameError::SourceUnavailable => f.write_str("frame header bytes unavailable"),
            FrameError::AfterError => f.write_str("stream already failed to parse"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A [`FrameError`] and where the offending header began in the current chunk (`None`
/// if it began in an earlier chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    pub error: FrameError,
    pub header_offset: Option<usize>,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.header_offset {
            Some(offset) => write!(f, "{} (frame at offset {offset})", self.error),
            None => write!(f, "{} (frame began in an earlier chunk)", self.error),
        }
    }
}

impl std::error::Error for ScanError {}

const FLAG_MESSAGE_OPEN: u8 = 0b0000_0001;
const FLAG_FAILED: u8 = 0b0000_0010;
const FLAG_SENDER_CLIENT: u8 = 0b0000_0100;
const RSV_SHIFT: u32 = 4; // allowed RSV bits live in bits 4..=6

/// Frame-boundary state of one direction of one connection. 24 bytes, no heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameScanner {
    /// Payload bytes of the current frame not yet seen.
    remaining: u64,
    /// Header bytes gathered so far (a header split across chunks).
    header: [u8; MAX_HEADER_LEN],
    have: u8,
    flags: u8,
}

impl FrameScanner {
    /// A scanner at the start of a stream sent by `sender`, with no extension (any RSV
    /// bit is an error).
    pub fn new(sender: Sender) -> Self {
        let flags = match sender {
            Sender::Client => FLAG_SENDER_CLIENT,
            Sender::Server => 0,
        };
        FrameScanner {
            remaining: 0,
            header: [0; MAX_HEADER_LEN],
            have: 0,
            flags,
        }
    }

    /// Allows the RSV bits in `rsv` (3 low bits, RSV1 = 0b100) for a negotiated
    /// extension.
    pub fn with_allowed_rsv(mut self, rsv: u8) -> Self {
        self.allow_rsv(rsv);
        self
    }

    /// As [`with_allowed_rsv`](Self::with_allowed_rsv), on a scanner already running
    /// (the extension is known only once the upgrade's 101 arrives).
    pub fn allow_rsv(&mut self, rsv: u8) {
        self.flags |= (rsv & 0b111) << RSV_SHIFT;
    }

    pub fn sender(&self) -> Sender {
        if self.flags & FLAG_SENDER_CLIENT != 0 {
            Sender::Client
        } else {
            Sender::Server
        }
    }

    /// A fragmented data message is open (its next data frame must be a continuation).
    pub fn message_open(&self) -> bool {
        self.flags & FLAG_MESSAGE_OPEN != 0
    }

    /// The stream is between two frames: a frame (e.g. Close) may be injected here.
    pub fn at_frame_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0 && self.flags & FLAG_FAILED == 0
    }

    /// Whether a scan already failed (every later call fails with `AfterError`).
    pub fn failed(&self) -> bool {
        self.flags & FLAG_FAILED != 0
    }

    /// Iterates the frames whose header completes in `chunk`. Drive it to `None` (or
    /// to an error) before scanning the next chunk: stopping early leaves the rest of
    /// this chunk unscanned and the stream state wrong.
    pub fn frames<'a, S: ChunkSource + ?Sized>(&'a mut self, chunk: &'a mut S) -> Frames<'a, S> {
        Frames {
            scanner: self,
            chunk,
            pos: 0,
            done: false,
        }
    }

    /// The next frame whose header completes in `chunk` at or after `*pos`, advancing
    /// `*pos` past its header and whatever of its payload lies in the chunk. `Ok(None)`
    /// when the chunk is exhausted (a partial header or payload is carried over).
    pub fn next_frame<S: ChunkSource + ?Sized>(
        &mut self,
        chunk: &mut S,
        pos: &mut usize,
    ) -> Result<Option<Frame>, ScanError> {
        if self.failed() {
            return Err(ScanError {
                error: FrameError::AfterError,
                header_offset: None,
            });
        }
        let len = chunk.len();
        self.skip_payload(len, pos);
        if self.remaining > 0 || *pos >= len {
            return Ok(None);
        }

        let header_offset = (self.have == 0).then_some(*pos);
        let mut need = header_need(&self.header, self.have);
        while usize::from(self.have) < need {
            let available = len.saturating_sub(*pos);
            if available == 0 {
                return Ok(None); // header continues in the next chunk
            }
            let want = MAX_HEADER_LEN
                .saturating_sub(usize::from(self.have))
                .min(available);
            let bytes = match chunk.bytes(*pos, want) {
                Some(bytes) if !bytes.is_empty() => bytes,
                _ => return Err(self.fail(FrameError::SourceUnavailable, header_offset)),
            };
            for &byte in bytes.iter().take(available) {
                if usize::from(self.have) >= need {
                    break;
                }
                if let Some(slot) = self.header.get_mut(usize::from(self.have)) {
                    *slot = byte;
                }
                self.have = self.have.saturating_add(1);
                *pos = pos.saturating_add(1);
                need = header_need(&self.header, self.have);
            }
        }

        let mut frame = self
            .parse_header(header_offset)
            .map_err(|error| self.fail(error, header_offset))?;
        frame.payload_offset = *pos;
        self.have = 0;
        self.remaining = frame.payload_len;
        self.skip_payload(len, pos);
        Ok(Some(frame))
    }

    fn skip_payload(&mut self, len: usize, pos: &mut usize) {
        let available = len.saturating_sub(*pos);
        let skip = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
        *pos = pos.saturating_add(skip);
        self.remaining = self.remaining.saturating_sub(skip as u64);
    }

    fn fail(&mut self, error: FrameError, header_offset: Option<usize>) -> ScanError {
        self.flags |= FLAG_FAILED;
        ScanError {
            error,
            header_offset,
        }
    }

    /// Parses and validates the complete header in `self.header`, updating the
    /// fragmented-message state.
    fn parse_header(&mut self, header_offset: Option<usize>) -> Result<Frame, FrameError> {
        let h = &self.header;
        let [b0, b1, ..] = *h;
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0b111;
        let raw_opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let (payload_len, len_bytes) = match len7 {
            126 => {
                let [_, _, a, b, ..] = *h;
                (u64::from(u16::from_be_bytes([a, b])), 2u8)
            }
            127 => {
                let [_, _, a, b, c, d, e, f, g, i, ..] = *h;
                (u64::from_be_bytes([a, b, c, d, e, f, g, i]), 8u8)
            }
            n => (u64::from(n), 0u8),
        };

        let allowed_rsv = (self.flags >> RSV_SHIFT) & 0b111;
        if rsv & !allowed_rsv != 0 {
            return Err(FrameError::ReservedBitsSet);
        }
        let opcode = Opcode::from_u8(raw_opcode).ok_or(FrameError::ReservedOpcode(raw_opcode))?;
        // The one RSV extension edge-guard admits is permessage-deflate, whose
        // bit marks a compressed message on its first frame only (RFC 7692
        // §6.1): on control and continuation frames it is still an error.
        if rsv != 0 && !matches!(opcode, Opcode::Text | Opcode::Binary) {
            return Err(FrameError::ReservedBitsSet);
        }
        if payload_len >> 63 != 0 {
            return Err(FrameError::LengthTooLarge);
        }
        match (self.sender(), masked) {
            (Sender::Client, false) => return Err(FrameError::UnmaskedClientFrame),
            (Sender::Server, true) => return Err(FrameError::MaskedServerFrame),
            _ => {}
        }
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::FragmentedControlFrame);
            }
            if payload_len > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::ControlFrameTooLong);
            }
        } else {
            let open = self.message_open();
            match opcode {
                Opcode::Continuation if !open => return Err(FrameError::UnexpectedContinuation),
                Opcode::Text | Opcode::Binary if open => {
                    return Err(FrameError::MessageNotFinished)
                }
                _ => {}
            }
            if fin {
                self.flags &= !FLAG_MESSAGE_OPEN;
            } else {
                self.flags |= FLAG_MESSAGE_OPEN;
            }
        }

        let mut mask_key = [0u8; 4];
        if masked {
            let at = 2usize.saturating_add(usize::from(len_bytes));
            if let Some(key) = h.get(at..at.saturating_add(4)) {
                mask_key.copy_from_slice(key);
            }
        }
        Ok(Frame {
            fin,
            rsv,
            opcode,
            masked,
            payload_len,
            header_offset,
            header_len: 2u8
                .saturating_add(len_bytes)
                .saturating_add(if masked { 4 } else { 0 }),
            payload_offset: 0,
            mask_key,
        })
    }
}

/// How many header bytes the header needs, knowing its first `have` bytes.
fn header_need(header: &[u8; MAX_HEADER_LEN], have: u8) -> usize {
    if have < 2 {
        return 2;
    }
    let b1 = header.get(1).copied().unwrap_or(0);
    let len_bytes = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask_bytes = if b1 & 0x80 != 0 { 4 } else { 0 };
    2usize.saturating_add(len_bytes).saturating_add(mask_bytes)
}

/// Iterator over the frames of one chunk; see [`FrameScanner::frames`]. Fused: ends
/// after the first error.
pub struct Frames<'a, S: ChunkSource + ?Sized> {
    scanner: &'a mut FrameScanner,
    chunk: &'a mut S,
    pos: usize,
    done: bool,
}

impl<S: ChunkSource + ?Sized> Frames<'_, S> {
    /// How far into the chunk the scan has got.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<S: ChunkSource + ?Sized> Iterator for Frames<'_, S> {
    type Item = Result<Frame, ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.scanner.next_frame(self.chunk, &mut self.pos) {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

/// Test helpers shared with the monitor's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Opcode;

    /// Encodes one frame; `mask` masks the payload (content is irrelevant to the
    /// scanner but kept realistic).
    pub fn frame(fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = header(fin, opcode, payload.len() as u64, mask);
        match mask {
            Some(key) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4])),
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// Encodes only a header announcing `len` payload bytes.
    pub fn header(fin: bool, opcode: Opcode, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode.as_u8()];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xFFFF {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
        out
    }

    pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
}

#[cfg(test)]
mod tests {
    use super::test_support::{frame, header, KEY};
    use super::*;

    fn scan_all(scanner: &mut FrameScanner, chunk: &[u8]) -> Result<Vec<Frame>, ScanError> {
        scanner.frames(&mut SliceSource(chunk)).collect()
    }

    /// Scans `stream` cut at the given positions, returning frames and errors.
    fn scan_split(sender: Sender, stream: &[u8], cuts: &[usize]) -> Vec<Result<Frame, ScanError>> {
        let mut scanner = FrameScanner::new(sender);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            out.extend(scanner.frames(&mut SliceSource(&stream[start..cut])));
            start = cut;
        }
        out
    }

    fn server() -> FrameScanner {
        FrameScanner::new(Sender::Server)
    }

    fn client() -> FrameScanner {
        FrameScanner::new(Sender::Client)
    }

    fn only_error(scanner: &mut FrameScanner, bytes: &[u8]) -> FrameError {
        match scan_all(scanner, bytes) {
            Err(e) => e.error,
            Ok(frames) => panic!("expected an error, got {frames:?}"),
        }
    }

    #[test]
    fn scanner_is_small() {
        assert!(std::mem::size_of::<FrameScanner>() <= 24);
    }

    #[test]
    fn single_unmasked_text_frame() {
        let bytes = frame(true, Opcode::Text, b"hello", None);
        let frames = scan_all(&mut server(), &bytes).unwrap();
        assert_eq!(
            frames,
            vec![Frame {
                fin: true,
                rsv: 0,
                opcode: Opcode::Text,
                masked: false,
                payload_len: 5,
                header_offset: Some(0),
                header_len: 2,
                payload_offset: 2,
                mask_key: [0; 4],
            }]
        );
    }

    #[test]
    fn payload_offset_and_mask_key_locate_the_first_payload_byte() {
        let mut stream = frame(true, Opcode::Text, b"2probe", Some(KEY));
        stream.extend(frame(true, Opcode::Text, b"42", Some(KEY)));
        let frames = scan_all(&mut client(), &stream).unwrap();
        for (f, first) in frames.iter().zip([b'2', b'4']) {
            assert_eq!(f.mask_key, KEY);
            assert_eq!(stream[f.payload_offset] ^ f.mask_key[0], first);
        }
        // A header ending the chunk: the payload begins in the next one.
        let head = header(true, Opcode::Text, 5, Some(KEY));
        let frames = scan_all(&mut client(), &head).unwrap();
        assert_eq!(frames[0].payload_offset, head.len());
    }

    #[test]
    fn masked_client_frame_has_mask_in_header_len() {
        let bytes = frame(true, Opcode::Binary, b"abc", Some(KEY));
        let frames = scan_all(&mut client(), &bytes).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].masked);
        assert_eq!(frames[0].header_len, 6);
        assert_eq!(frames[0].payload_len, 3);
    }

    #[test]
    fn many_frames_coalesced_in_one_chunk() {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..50u8 {
            offsets.push(bytes.len());
            let payload = vec![i; usize::from(i) * 3];
            bytes.extend(frame(true, Opcode::Binary, &payload, None));
            offsets.push(bytes.len());
            bytes.extend(frame(true, Opcode::Ping, &[], None));
        }
        let frames = scan_all(&mut server(), &bytes).unwrap();
        assert_eq!(frames.len(), 100);
        let got: Vec<usize> = frames.iter().map(|f| f.header_offset.unwrap()).collect();
        assert_eq!(got, offsets);
        assert_eq!(frames[2].payload_len, 3);
        assert_eq!(frames[3].opcode, Opcode::Ping);
    }

    #[test]
    fn split_at_every_byte_position_of_each_header_size() {
        // 7-bit, 16-bit and 64-bit lengths, masked and unmasked, followed by a ping.
        for (sender, mask) in [(Sender::Server, None), (Sender::Client, Some(KEY))] {
            for len in [5usize, 300, 70_000] {
                let mut stream = frame(true, Opcode::Binary, &vec![7u8; len], mask);
                let ping_at = stream.len();
                stream.extend(frame(true, Opcode::Ping, b"p", mask));
                let header_len = header(true, Opcode::Binary, len as u64, mask).len();
                for cut in 1..header_len + 2 {
                    let results = scan_split(sender, &stream, &[cut]);
                    let frames: Vec<Frame> = results.into_iter().map(Result::unwrap).collect();
                    assert_eq!(frames.len(), 2, "len {len} cut {cut}");
                    assert_eq!(frames[0].payload_len, len as u64);
                    assert_eq!(frames[0].header_len as usize, header_len);
                    // The header began in this chunk only if it also completed in it.
                    let expected_first = (cut >= header_len).then_some(0);
                    assert_eq!(frames[0].header_offset, expected_first, "cut {cut}");
                    assert_eq!(frames[1].opcode, Opcode::Ping);
                    let expected_ping = if ping_at >= cut {
                        ping_at - cut
                    } else {
                        ping_at
                    };
                    assert_eq!(frames[1].header_offset, Some(expected_ping), "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn header_split_across_chunks_reports_earlier_start() {
        let stream = header(true, Opcode::Binary, 70_000, None);
        let mut scanner = server();
        assert_eq!(scan_all(&mut scanner, &stream[..3]).unwrap(), vec![]);
        assert!(!scanner.at_frame_boundary());
        let frames = scan_all(&mut scanner, &stream[3..]).unwrap();
        assert_eq!(frames[0].header_offset, None);
        assert_eq!(frames[0].payload_len, 70_000);
    }

    #[test]
    fn byte_by_byte_stream_finds_every_frame() {
        let mut stream = Vec::new();
        stream.extend(frame(false, Opcode::Text, b"he", Some(KEY)));
        stream.extend(frame(true, Opcode::Ping, b"", Some(KEY)));
        stream.extend(frame(true, Opcode::Continuation, &[1; 200], Some(KEY)));
        stream.extend(frame(true, Opcode::Close, &[3, 232], Some(KEY)));
        let cuts: Vec<usize> = (1..stream.len()).collect();
        let frames: Vec<Frame> = scan_split(Sender::Client, &stream, &cuts)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let ops: Vec<Opcode> = frames.iter().map(|f| f.opcode).collect();
        assert_eq!(
            ops,
            vec![
                Opcode::Text,
                Opcode::Ping,
                Opcode::Continuation,
                Opcode::Close
            ]
        );
        // Every header of one byte+ spans chunks except where it is a single chunk.
        assert!(frames.iter().all(|f| f.header_offset.is_none()));
    }

    #[test]
    fn payload_spanning_many_chunks_is_skipped() {
        let mut stream = frame(true, Opcode::Binary, &vec![0; 10_000], None);
        stream.extend(frame(true, Opcode::Pong, b"", None));
        let cuts: Vec<usize> = (1..10).map(|i| i * 1000).collect();
        let frames: Vec<Frame> = scan_split(Sender::Server, &stream, &cuts)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].opcode, Opcode::Pong);
        assert_eq!(frames[1].header_offset, Some(10_004 - 9000));
    }

    #[test]
    fn boundary_tracking() {
        let mut scanner = server();
        assert!(scanner.at_frame_boundary());
        let bytes = frame(true, Opcode::Text, b"hello", None);
        scan_all(&mut scanner, &bytes[..4]).unwrap();
        assert!(!scanner.at_frame_boundary());
        scan_all(&mut scanner, &bytes[4..]).unwrap();
        assert!(scanner.at_frame_boundary());
    }

    #[test]
    fn sixty_four_bit_length_is_read_big_endian() {
        let bytes = header(true, Opcode::Binary, 0x0000_0001_0000_0002, None);
        let frames = scan_all(&mut server(), &bytes).unwrap();
        assert_eq!(frames[0].payload_len, 0x0000_0001_0000_0002);
        assert_eq!(frames[0].header_len, 10);
    }

    #[test]
    fn sixteen_bit_length_boundaries() {
        for len in [126u64, 0xFFFF] {
            let bytes = header(true, Opcode::Binary, len, None);
            assert_eq!(bytes.len(), 4);
            assert_eq!(scan_all(&mut server(), &bytes).unwrap()[0].payload_len, len);
        }
    }

    #[test]
    fn fragmented_message_with_interleaved_control_frames() {
        let mut stream = Vec::new();
        stream.extend(frame(false, Opcode::Text, b"a", None));
        stream.extend(frame(true, Opcode::Ping, b"", None));
        stream.extend(frame(false, Opcode::Continuation, b"b", None));
        stream.extend(frame(true, Opcode::Pong, b"", None));
        stream.extend(frame(true, Opcode::Continuation, b"c", None));
        stream.extend(frame(true, Opcode::Binary, b"d", None));
        let mut scanner = server();
        let frames = scan_all(&mut scanner, &stream).unwrap();
        assert_eq!(frames.len(), 6);
        assert!(!scanner.message_open());
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        for op in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                only_error(&mut server(), &[0x80 | op, 0x00]),
                FrameError::ReservedOpcode(op)
            );
        }
    }

    #[test]
    fn rsv_bits_are_rejected_without_extension() {
        for rsv in [0x40u8, 0x20, 0x10] {
            assert_eq!(
                only_error(&mut server(), &[0x80 | rsv | 0x1, 0x00]),
                FrameError::ReservedBitsSet
            );
        }
    }

    #[test]
    fn rsv1_is_accepted_when_allowed() {
        let mut scanner = server().with_allowed_rsv(0b100);
        let frames = scan_all(&mut scanner, &[0x80 | 0x40 | 0x1, 0x00]).unwrap();
        assert_eq!(frames[0].rsv, 0b100);
        assert_eq!(
            only_error(&mut scanner, &[0x80 | 0x20 | 0x1, 0x00]),
            FrameError::ReservedBitsSet
        );
    }

    #[test]
    fn rsv1_only_on_the_first_frame_of_a_data_message() {
        let mut scanner = client().with_allowed_rsv(0b100);
        let mut first = frame(false, Opcode::Text, b"ab", Some(KEY));
        first[0] |= 0x40;
        assert!(scan_all(&mut scanner, &first).is_ok());
        let mut cont = frame(true, Opcode::Continuation, b"c", Some(KEY));
        cont[0] |= 0x40;
        assert_eq!(only_error(&mut scanner, &cont), FrameError::ReservedBitsSet);
        let mut ping = frame(true, Opcode::Ping, b"", Some(KEY));
        ping[0] |= 0x40;
        assert_eq!(
            only_error(&mut client().with_allowed_rsv(0b100), &ping),
            FrameError::ReservedBitsSet
        );
    }

    #[test]
    fn control_frame_payload_limit() {
        let ok = frame(true, Opcode::Ping, &[0; 125], None);
        assert!(scan_all(&mut server(), &ok).is_ok());
        let bad = header(true, Opcode::Ping, 126, None);
        assert_eq!(
            only_error(&mut server(), &bad),
            FrameError::ControlFrameTooLong
        );
    }

    #[test]
    fn fragmented_control_frame_is_rejected() {
        let bad = frame(false, Opcode::Close, b"", None);
        assert_eq!(
            only_error(&mut server(), &bad),
            FrameError::FragmentedControlFrame
        );
    }

    #[test]
    fn continuation_without_message_is_rejected() {
        let bad = frame(true, Opcode::Continuation, b"x", None);
        assert_eq!(
            only_error(&mut server(), &bad),
            FrameError::UnexpectedContinuation
        );
    }

    #[test]
    fn new_data_frame_inside_fragmented_message_is_rejected() {
        let mut stream = frame(false, Opcode::Binary, b"x", None);
        stream.extend(frame(true, Opcode::Text, b"y", None));
        let mut scanner = server();
        let results: Vec<_> = scanner.frames(&mut SliceSource(&stream)).collect();
        assert!(results[0].is_ok());
        assert_eq!(
            results[1],
            Err(ScanError {
                error: FrameError::MessageNotFinished,
                header_offset: Some(3)
            })
        );
    }

    #[test]
    fn sixty_four_bit_length_with_top_bit_is_rejected() {
        let mut bad = vec![0x82, 127];
        bad.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(only_error(&mut server(), &bad), FrameError::LengthTooLarge);
    }

    #[test]
    fn mask_bit_per_direction() {
        let unmasked = frame(true, Opcode::Text, b"x", None);
        let masked = frame(true, Opcode::Text, b"x", Some(KEY));
        assert_eq!(
            only_error(&mut client(), &unmasked),
            FrameError::UnmaskedClientFrame
        );
        assert_eq!(
            only_error(&mut server(), &masked),
            FrameError::MaskedServerFrame
        );
        assert!(scan_all(&mut client(), &masked).is_ok());
        assert!(scan_all(&mut server(), &unmasked).is_ok());
    }

    #[test]
    fn scanner_stays_failed_after_an_error() {
        let mut scanner = server();
        let bad = frame(true, Opcode::Continuation, b"x", None);
        assert!(scan_all(&mut scanner, &bad).is_err());
        assert!(scanner.failed());
        assert!(!scanner.at_frame_boundary());
        let good = frame(true, Opcode::Text, b"x", None);
        assert_eq!(only_error(&mut scanner, &good), FrameError::AfterError);
    }

    #[test]
    fn error_offset_for_header_split_across_chunks_is_none() {
        let bad = header(true, Opcode::Ping, 200, None);
        let results = scan_split(Sender::Server, &bad, &[1]);
        assert_eq!(
            results,
            vec![Err(ScanError {
                error: FrameError::ControlFrameTooLong,
                header_offset: None
            })]
        );
    }

    #[test]
    fn empty_chunk_yields_nothing() {
        assert_eq!(scan_all(&mut server(), &[]).unwrap(), vec![]);
    }

    /// A source that records the ranges asked for and serves at most `window` bytes.
    struct RecordingSource<'a> {
        data: &'a [u8],
        window: usize,
        asked: Vec<(usize, usize)>,
        served: usize,
    }

    impl ChunkSource for RecordingSource<'_> {
        fn len(&self) -> usize {
            self.data.len()
        }
        fn bytes(&mut self, start: usize, len: usize) -> Option<&[u8]> {
            self.asked.push((start, len));
            let end = start
                .saturating_add(len.min(self.window))
                .min(self.data.len());
            let slice = self.data.get(start..end)?;
            self.served += slice.len();
            Some(slice)
        }
    }

    #[test]
    fn only_header_regions_are_requested_for_large_payloads() {
        let mut stream = Vec::new();
        let mut header_starts = Vec::new();
        for _ in 0..3 {
            header_starts.push(stream.len());
            stream.extend(frame(true, Opcode::Binary, &vec![0; 1_000_000], Some(KEY)));
        }
        let mut source = RecordingSource {
            data: &stream,
            window: usize::MAX,
            asked: Vec::new(),
            served: 0,
        };
        let frames: Vec<_> = client()
            .frames(&mut source)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(source.asked.len(), 3);
        for ((start, len), header_start) in source.asked.iter().zip(&header_starts) {
            assert_eq!(start, header_start);
            assert!(*len <= MAX_HEADER_LEN);
        }
        assert!(source.served <= 3 * MAX_HEADER_LEN);
    }

    #[test]
    fn source_returning_small_windows_is_handled() {
        let mut stream = frame(true, Opcode::Binary, &[9; 300], Some(KEY));
        stream.extend(frame(true, Opcode::Ping, b"", Some(KEY)));
        let mut source = RecordingSource {
            data: &stream,
            window: 1,
            asked: Vec::new(),
            served: 0,
        };
        let frames: Vec<_> = client()
            .frames(&mut source)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload_len, 300);
        assert_eq!(source.served, 8 + 6);
    }

    struct FailingSource;
    impl ChunkSource for FailingSource {
        fn len(&self) -> usize {
            10
        }
        fn bytes(&mut self, _start: usize, _len: usize) -> Option<&[u8]> {
            None
        }
    }

    #[test]
    fn unavailable_source_fails_the_scan() {
        let mut scanner = server();
        let results: Vec<_> = scanner.frames(&mut FailingSource).collect();
        assert_eq!(
            results,
            vec![Err(ScanError {
                error: FrameError::SourceUnavailable,
                header_offset: Some(0)
            })]
        );
        assert!(!FrameError::SourceUnavailable.is_protocol_violation());
        assert!(FrameError::LengthTooLarge.is_protocol_violation());
    }

    #[test]
    fn source_returning_more_than_the_chunk_is_clipped() {
        struct Overlong<'a>(&'a [u8], usize);
        impl ChunkSource for Overlong<'_> {
            fn len(&self) -> usize {
                self.1
            }
            fn bytes(&mut self, start: usize, _len: usize) -> Option<&[u8]> {
                self.0.get(start..)
            }
        }
        // The chunk is declared as 1 byte although the source serves more.
        let bytes = frame(true, Opcode::Text, b"x", None);
        let mut scanner = server();
        let frames: Vec<_> = scanner.frames(&mut Overlong(&bytes, 1)).collect();
        assert!(frames.is_empty());
        let frames = scan_all(&mut scanner, &bytes[1..]).unwrap();
        assert_eq!(frames[0].payload_len, 1);
        assert_eq!(frames[0].header_offset, None);
    }

    #[test]
    fn an_empty_chunk_is_empty() {
        assert!(SliceSource(&[]).is_empty());
        assert!(!SliceSource(&[0x81]).is_empty());
    }

    #[test]
    fn opcodes_round_trip_with_their_wire_values() {
        let all = [
            (Opcode::Continuation, 0x0),
            (Opcode::Text, 0x1),
            (Opcode::Binary, 0x2),
            (Opcode::Close, 0x8),
            (Opcode::Ping, 0x9),
            (Opcode::Pong, 0xA),
        ];
        for (opcode, wire) in all {
            assert_eq!(opcode.as_u8(), wire);
            assert_eq!(Opcode::from_u8(wire), Some(opcode));
        }
    }

    #[test]
    fn only_text_and_binary_frames_start_a_message() {
        let mut stream = frame(false, Opcode::Text, b"a", None);
        stream.extend(frame(true, Opcode::Ping, b"", None));
        stream.extend(frame(true, Opcode::Continuation, b"b", None));
        stream.extend(frame(true, Opcode::Binary, b"c", None));
        stream.extend(frame(true, Opcode::Close, b"", None));
        let frames = scan_all(&mut server(), &stream).unwrap();
        let starts: Vec<bool> = frames.iter().map(Frame::starts_message).collect();
        assert_eq!(starts, [true, false, false, true, false]);
    }

    #[test]
    fn no_boundary_inside_a_header_nor_after_an_error() {
        let mut scanner = client();
        let bytes = frame(true, Opcode::Text, b"hello", Some(KEY));
        scan_all(&mut scanner, &bytes[..1]).unwrap();
        assert!(!scanner.at_frame_boundary(), "one header byte in");
        scan_all(&mut scanner, &bytes[1..]).unwrap();
        assert!(scanner.at_frame_boundary());
        let _ = only_error(&mut scanner, &frame(true, Opcode::Text, b"", None));
        assert!(!scanner.at_frame_boundary(), "failed");
    }

    #[test]
    fn position_is_how_far_the_scan_has_got() {
        let mut bytes = frame(true, Opcode::Text, b"abc", None);
        bytes.extend(frame(true, Opcode::Binary, b"de", None));
        let mut scanner = server();
        let mut source = SliceSource(&bytes);
        let mut frames = scanner.frames(&mut source);
        assert_eq!(frames.position(), 0);
        assert!(frames.next().is_some());
        assert_eq!(frames.position(), 5);
        assert!(frames.next().is_some());
        assert_eq!(frames.position(), 9);
        assert!(frames.next().is_none());
    }

    #[test]
    fn a_source_serving_no_bytes_fails_the_scan() {
        struct Empty;
        impl ChunkSource for Empty {
            fn len(&self) -> usize {
                4
            }
            fn bytes(&mut self, _start: usize, _len: usize) -> Option<&[u8]> {
                Some(&[])
            }
        }
        let results: Vec<_> = server().frames(&mut Empty).collect();
        assert_eq!(
            results,
            vec![Err(ScanError {
                error: FrameError::SourceUnavailable,
                header_offset: Some(0)
            })]
        );
    }

    #[test]
    fn display_mentions_offset() {
        let e = ScanError {
            error: FrameError::ReservedOpcode(3),
            header_offset: Some(7),
        };
        assert_eq!(e.to_string(), "reserved opcode 0x3 (frame at offset 7)");
    }
}
