//! WebSocket client for the tests: our own upgrade request (so a refusal comes
//! back whole: status, headers, body), then tungstenite for framing, plus
//! `send_raw` for hand-made frames the filter must parse.
//!
//! The client watches the frame boundaries of everything the server sends
//! (`Tap`), so a connection that ends inside a frame is a `ProtocolError`,
//! never a `Reset` or a `Closed`: a filter that cuts a frame in two cannot
//! pass a test that expects a clean end.

use crate::http::{self, Request};
use serde_json::Value;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// How long `recv` waits by default.
pub const DEFAULT_RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// What came back instead of `101 Switching Protocols`.
#[derive(Clone)]
pub struct UpgradeRejected {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl UpgradeRejected {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("rejection body is not JSON ({e}): {self:?}"))
    }
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body).ok()?["error"]["code"]
            .as_str()
            .map(str::to_string)
    }
}

impl fmt::Debug for UpgradeRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upgrade rejected: HTTP {} {:?} body: {}",
            self.status,
            self.headers,
            self.text()
        )
    }
}

/// One thing observed on a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame arrived (code 1005 if it carried none).
    Closed {
        code: u16,
        reason: String,
    },
    /// The transport ended without a close frame (RST or bare FIN), between
    /// frames.
    Reset,
    /// The server broke the protocol: the connection ended inside a frame
    /// (a frame cut in two), or a frame tungstenite refuses (reserved bits or
    /// opcodes, a masked server frame, invalid UTF-8 in text, ...). Says what.
    ProtocolError(String),
    /// Nothing arrived within the timeout.
    TimedOut,
}

/// A connected WebSocket (client side).
pub struct WsClient {
    ws: WebSocket<Tap>,
    /// Headers of the `101` response.
    pub response_headers: Vec<(String, String)>,
    closed: Option<(u16, String)>,
    /// Set once a `ProtocolError` was seen; returned again after that.
    failed: Option<String>,
}

/// The client's socket, with the frame boundaries of what it reads tracked.
pub struct Tap {
    inner: TcpStream,
    frames: FrameTracker,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.frames.feed(&buf[..n]);
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Follows RFC 6455 frame headers and payload lengths through a byte
/// stream, to tell whether the stream is between frames.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    /// Bytes of the current frame's header read so far.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Complete frames seen.
    frames: u64,
}

impl FrameTracker {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes
                    .len()
                    .min(self.payload_left.min(usize::MAX as u64) as usize);
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frames += 1;
                }
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some(payload) = self.header_complete() {
                self.head.clear();
                self.payload_left = payload;
                if payload == 0 {
                    self.frames += 1;
                }
            }
        }
    }

    /// The payload length once `head` holds a whole header.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.head;
        if h.len() < 2 {
            return None;
        }
        let len7 = h[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        if h.len() < 2 + ext + mask {
            return None;
        }
        Some(match len7 {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        })
    }

    /// `Some(what)` while the stream is inside a frame.
    pub fn inside_frame(&self) -> Option<String> {
        if !self.head.is_empty() {
            Some(format!("{} bytes into a frame header", self.head.len()))
        } else if self.payload_left > 0 {
            Some(format!(
                "{} payload bytes of a frame missing",
                self.payload_left
            ))
        } else {
            None
        }
    }

    /// Complete frames seen so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

/// Performs the upgrade on a fresh connection.
pub fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, UpgradeRejected> {
    try_connect(addr, path, headers)
        .unwrap_or_else(|e| panic!("WebSocket upgrade to {path} failed at the transport: {e}"))
}

/// As `connect`, with transport errors returned instead of panicking.
pub fn try_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Result<WsClient, UpgradeRejected>> {
    let started = Instant::now();
    let key = generate_key();
    let mut req = Request::get(path)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", &key);
    for (n, v) in headers {
        req = req.header(n, v);
    }
    let mut stream = http::connect(addr, http::DEFAULT_TIMEOUT)?;
    stream.write_all(&req.head_bytes(None))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let resp = http::read_response(&mut reader, "GET", started)?;
    if resp.status != 101 {
        return Ok(Err(UpgradeRejected {
            status: resp.status,
            headers: resp.headers,
            body: resp.body,
        }));
    }
    let expected = derive_accept_key(key.as_bytes());
    let got = resp.header("sec-websocket-accept").unwrap_or("");
    if got != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad sec-websocket-accept {got:?}"),
        ));
    }
    let leftover = reader.buffer().to_vec();
    drop(reader);
    stream.set_read_timeout(Some(DEFAULT_RECV_TIMEOUT))?;
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let mut frames = FrameTracker::default();
    frames.feed(&leftover);
    let tap = Tap {
        inner: stream,
        frames,
    };
    let ws = WebSocket::from_partially_read(tap, leftover, Role::Client, Some(config));
    Ok(Ok(WsClient {
        ws,
        response_headers: resp.headers,
        closed: None,
        failed: None,
    }))
}

impl WsClient {
    pub fn send_text(&mut self, text: &str) {
        self.try_send(Message::text(text.to_string()))
            .unwrap_or_else(|e| panic!("WebSocket send failed: {e}"));
    }
    pub fn send_binary(&mut self, data: &[u8]) {
        self.try_send(Message::binary(data.to_vec()))
            .unwrap_or_else(|e| panic!("WebSocket send failed: {e}"));
    }
    pub fn try_send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg)
    }
    /// Writes bytes straight to the socket (after anything tungstenite queued):
    /// for hand-made frames, see `raw_frame`.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.ws.flush();
        let s = &mut self.ws.get_mut().inner;
        s.write_all(bytes)
            .and_then(|_| s.flush())
            .unwrap_or_else(|e| panic!("raw WebSocket write failed: {e}"));
    }
    /// Starts the closing handshake; read on with `recv` to see the peer's close.
    pub fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        let _ = self.ws.close(Some(frame));
    }

    /// Next event, waiting up to 5 s.
    pub fn recv(&mut self) -> WsEvent {
        self.recv_timeout(DEFAULT_RECV_TIMEOUT)
    }

    /// Next data message, close, reset or protocol error, waiting up to
    /// `timeout`. Pings and pongs are skipped (tungstenite answers pings).
    pub fn recv_timeout(&mut self, timeout: Duration) -> WsEvent {
        if let Some(what) = &self.failed {
            return WsEvent::ProtocolError(what.clone());
        }
        if let Some((code, reason)) = &self.closed {
            return WsEvent::Closed {
                code: *code,
                reason: reason.clone(),
            };
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WsEvent::TimedOut;
            }
            let _ = self.ws.get_ref().inner.set_read_timeout(Some(left));
            let err = match self.ws.read() {
                Ok(Message::Text(t)) => return WsEvent::Text(t.as_str().to_string()),
                Ok(Message::Binary(b)) => return WsEvent::Binary(b.to_vec()),
                Ok(Message::Close(frame)) => {
                    let (code, reason) = match frame {
                        Some(f) => (u16::from(f.code), f.reason.as_str().to_string()),
                        None => (1005, String::new()),
                    };
                    self.closed = Some((code, reason.clone()));
                    return WsEvent::Closed { code, reason };
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return WsEvent::TimedOut
                }
                Err(e) => e,
            };
            return self.ended(err);
        }
    }

    /// What a read error means: the transport ending between frames is a
    /// reset (or the close already seen), inside a frame or on a bad frame a
    /// protocol error.
    fn ended(&mut self, err: tungstenite::Error) -> WsEvent {
        use tungstenite::error::ProtocolError as P;
        let transport_end = matches!(
            &err,
            tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(P::ResetWithoutClosingHandshake)
                | tungstenite::Error::Io(_)
        );
        let what = match (transport_end, self.ws.get_ref().frames.inside_frame()) {
            (true, None) => {
                return match &self.closed {
                    Some((code, reason)) => WsEvent::Closed {
                        code: *code,
                        reason: reason.clone(),
                    },
                    None => WsEvent::Reset,
                }
            }
            (true, Some(cut)) => format!("the connection ended inside a frame ({cut}): {err}"),
            (false, _) => format!("bad frame from the server: {err}"),
        };
        self.failed = Some(what.clone());
        WsEvent::ProtocolError(what)
    }

    /// The next event must be a text message; returns it.
    pub fn expect_text(&mut self) -> String {
        match self.recv() {
            WsEvent::Text(t) => t,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next event must be a binary message; returns it.
    pub fn expect_binary(&mut self) -> Vec<u8> {
        match self.recv() {
            WsEvent::Binary(b) => b,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.ws.get_ref().inner
    }

    /// Complete frames received from the server so far (data and control).
    pub fn frames_received(&self) -> u64 {
        self.ws.get_ref().frames.frames()
    }
}

/// A masked client frame: `fin` + `opcode` (0x1 text, 0x2 binary, 0x8 close,
/// 0x9 ping, 0x0 continuation), any payload length. The mask key is fixed so
/// tests are reproducible.
pub fn raw_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The payload the demo upstream sends for `__big <n>`.
pub use edge_guard_demo::big_payload;

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked server frame.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn tracker_knows_frame_boundaries_across_any_split() {
        let mut stream = server_frame(0x1, b"hello");
        stream.extend(server_frame(0x2, &[7u8; 300]));
        stream.extend(server_frame(0x2, &[9u8; 70_000]));
        stream.extend(server_frame(0x9, b""));
        stream.extend(raw_frame(0x1, true, b"masked"));
        for split in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut t = FrameTracker::default();
            for chunk in stream.chunks(split) {
                t.feed(chunk);
            }
            assert_eq!(t.inside_frame(), None, "split {split}");
            assert_eq!(t.frames(), 5, "split {split}");
        }
        for cut in [1, 2, 5, 8, 9, 12, 400, stream.len() - 1] {
            let mut t = FrameTracker::default();
            t.feed(&stream[..cut]);
            assert!(t.inside_frame().is_some(), "cut at {cut} not seen");
        }
    }

    /// A server that answers the upgrade, sends `bytes` and closes the
    /// socket; the client's first event.
    fn first_event_after_server_sends(bytes: Vec<u8>) -> WsEvent {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut key = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("sec-websocket-key") {
                        key = value.trim().to_string();
                    }
                }
            }
            let mut out = stream;
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            out.write_all(head.as_bytes()).unwrap();
            out.write_all(&bytes).unwrap();
            // FIN, after which the client reads EOF.
        });
        let mut ws = connect(addr, "/", &[]).expect("upgrade");
        server.join().unwrap();
        ws.recv()
    }

    #[test]
    fn the_client_tells_a_cut_frame_from_a_clean_end() {
        let whole = server_frame(0x1, b"hello");
        // A whole frame then FIN: the message, then a reset.
        assert_eq!(
            first_event_after_server_sends(whole.clone()),
            WsEvent::Text("hello".into())
        );
        // FIN inside the frame: a protocol error, not a reset.
        let event = first_event_after_server_sends(whole[..4].to_vec());
        assert!(
            matches!(&event, WsEvent::ProtocolError(what) if what.contains("inside a frame")),
            "{event:?}"
        );
        // FIN between frames, no close frame: a reset.
        assert_eq!(first_event_after_server_sends(Vec::new()), WsEvent::Reset);
        // A close frame cut after its header.
        let close = server_frame(0x8, &[0x03, 0xe9]);
        let event = first_event_after_server_sends(close[..2].to_vec());
        assert!(matches!(event, WsEvent::ProtocolError(_)), "{event:?}");
        // A reserved opcode: a protocol error.
        let event = first_event_after_server_sends(server_frame(0x3, b"x"));
        assert!(
            matches!(&event, WsEvent::ProtocolError(what) if what.contains("bad frame")),
            "{event:?}"
        );
        // A whole close frame: closed with its code.
        assert_eq!(
            first_event_after_server_sends(close),
            WsEvent::Closed {
                code: 1001,
                reason: String::new()
            }
        );
    }
}
