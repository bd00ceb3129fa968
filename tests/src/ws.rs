//! WebSocket client for the tests: our own upgrade request (so a refusal comes
//! back whole: status, headers, body), then tungstenite for framing, plus
//! `send_raw` for hand-made frames the filter must parse.

use crate::http::{self, Request};
use serde_json::Value;
use std::fmt;
use std::io::{self, BufReader, Write};
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
    /// The transport ended without a close frame (RST or bare FIN).
    Reset,
    /// Nothing arrived within the timeout.
    TimedOut,
}

/// A connected WebSocket (client side).
pub struct WsClient {
    ws: WebSocket<TcpStream>,
    /// Headers of the `101` response.
    pub response_headers: Vec<(String, String)>,
    closed: Option<(u16, String)>,
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
    let ws = WebSocket::from_partially_read(stream, leftover, Role::Client, Some(config));
    Ok(Ok(WsClient {
        ws,
        response_headers: resp.headers,
        closed: None,
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
        let s = self.ws.get_mut();
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

    /// Next data message, close or reset, waiting up to `timeout`. Pings and
    /// pongs are skipped (tungstenite answers pings).
    pub fn recv_timeout(&mut self, timeout: Duration) -> WsEvent {
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
            let _ = self.ws.get_ref().set_read_timeout(Some(left));
            match self.ws.read() {
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
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return match &self.closed {
                        Some((code, reason)) => WsEvent::Closed {
                            code: *code,
                            reason: reason.clone(),
                        },
                        None => WsEvent::Reset,
                    }
                }
                Err(_) => return WsEvent::Reset,
            }
        }
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
        self.ws.get_ref()
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
