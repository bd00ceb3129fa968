//! The WebSocket side of the demo upstream: RFC 6455 handshake (no extensions),
//! then an echo loop with three text commands:
//! `__close` (close 1000), `__big <N>` (one binary message of N bytes, byte i =
//! i % 251) and `__reset` (drop the TCP connection with an RST).

use crate::http1::Head;
use crate::server::{write_response, State};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The payload of `__big <n>`: byte i is `i % 251`, so corruption is visible.
pub fn big_payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Decrements the open-WebSocket gauge however the connection ends.
struct OpenGuard<'a>(&'a State);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.ws_open.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) fn handle(
    mut stream: TcpStream,
    leftover: Vec<u8>,
    head: &Head,
    refuse: bool,
    delay: Option<Duration>,
    state: &State,
) -> io::Result<()> {
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    if refuse {
        let body = br#"{"error":"upgrade refused by upstream"}"#;
        return write_response(&mut stream, 403, "application/json", body, true);
    }
    let Some(key) = head.header("sec-websocket-key") else {
        let body = br#"{"error":"missing sec-websocket-key"}"#;
        return write_response(&mut stream, 400, "application/json", body, true);
    };
    let accept = derive_accept_key(key.as_bytes());
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    )?;
    stream.flush()?;

    state.ws_open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(state);
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(None)
        .max_frame_size(None);
    let mut ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(config));
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(_) => return Ok(()), // closed, reset, or protocol error: done
        };
        let result = match msg {
            Message::Text(text) => {
                let text = text.as_str();
                if text == "__close" {
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    // Wait (bounded) for the peer's close reply, as a normal server does.
                    let _ = ws.get_ref().set_read_timeout(Some(Duration::from_secs(5)));
                    ws.close(Some(frame))
                } else if let Some(n) = text.strip_prefix("__big ") {
                    let n = n.trim().parse::<usize>().unwrap_or(0);
                    ws.send(Message::binary(big_payload(n)))
                } else if text == "__reset" {
                    reset(ws.get_ref());
                    return Ok(());
                } else {
                    ws.send(Message::text(text.to_string()))
                }
            }
            Message::Binary(data) => ws.send(Message::Binary(data)),
            // Pings are answered by tungstenite; a Close is answered on the next read.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(()),
        };
        if result.is_err() && !ws.can_read() {
            return Ok(());
        }
    }
}

/// Drops the connection abruptly: SO_LINGER 0 makes close() send an RST.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor we own, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
