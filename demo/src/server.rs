//! The HTTP side of the demo upstream: accept loop, keep-alive request loop, the
//! echo, `/health` and the `/__control/*` API. WebSocket upgrades are handed to
//! `ws`.

use crate::http1::{self, Head};
use crate::{outbound, ws, CONNECTION_STACK};
use serde_json::{json, Map, Value};
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HEALTH_OK: u8 = 0;
const HEALTH_FAIL: u8 = 1;
const HEALTH_HANG: u8 = 2;

/// How long a hanging `/health` request is held before the connection is closed.
const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Everything the control API can read or change; shared by all connections.
pub struct State {
    name: String,
    health_mode: AtomicU8,
    health_hits: AtomicU64,
    health_hit_times_ms: Mutex<Vec<u64>>,
    requests: AtomicU64,
    pub(crate) ws_open: AtomicI64,
    /// The egress proxy outbound calls go through (`outbound`).
    egress: Mutex<Option<SocketAddr>>,
    /// `x-envoy-expected-rq-timeout-ms` of the last request (-1: none).
    last_budget_ms: AtomicI64,
}

impl State {
    pub fn new(name: impl Into<String>) -> Self {
        State {
            name: name.into(),
            health_mode: AtomicU8::new(HEALTH_OK),
            health_hits: AtomicU64::new(0),
            health_hit_times_ms: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            ws_open: AtomicI64::new(0),
            egress: Mutex::new(None),
            last_budget_ms: AtomicI64::new(-1),
        }
    }

    /// Where outbound calls (`.../__call/<host>/...`) go.
    pub fn set_egress(&self, addr: Option<SocketAddr>) {
        if let Ok(mut egress) = self.egress.lock() {
            *egress = addr;
        }
    }

    fn record_budget(&self, head: &Head) {
        let budget = head
            .header("x-envoy-expected-rq-timeout-ms")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(-1);
        self.last_budget_ms.store(budget, Ordering::SeqCst);
    }

    fn stats_json(&self) -> Value {
        let times = self
            .health_hit_times_ms
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        json!({
            "service": self.name,
            "health_hits": self.health_hits.load(Ordering::SeqCst),
            "health_hit_times_ms": times,
            "requests": self.requests.load(Ordering::SeqCst),
            "ws_open": self.ws_open.load(Ordering::SeqCst),
            "last_budget_ms": Some(self.last_budget_ms.load(Ordering::SeqCst)).filter(|v| *v >= 0),
        })
    }

    fn reset_stats(&self) {
        self.health_hits.store(0, Ordering::SeqCst);
        if let Ok(mut t) = self.health_hit_times_ms.lock() {
            t.clear();
        }
        self.requests.store(0, Ordering::SeqCst);
        self.last_budget_ms.store(-1, Ordering::SeqCst);
    }
}

/// Serves forever: one thread per connection.
pub fn serve(listener: TcpListener, state: Arc<State>) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("demo-upstream: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let state = Arc::clone(&state);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let _ = handle_connection(stream, &state);
            });
        if let Err(e) = spawned {
            eprintln!("demo-upstream: cannot start a connection thread: {e}");
        }
    }
}

fn handle_connection(stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(8 * 1024, stream.try_clone()?);
    let mut out = stream;
    loop {
        let Some(head) = http1::read_head(&mut reader)? else {
            return Ok(());
        };
        let started = Instant::now();
        let mut parts = head.start_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let version = parts.next().unwrap_or("HTTP/1.1");
        let close_after = version == "HTTP/1.0" || head.header_has_token("connection", "close");
        let (path, query) = http1::split_query(&target);
        let param = |name: &str| query.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let param_ms = |name: &str| {
            param(name)
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        };

        if path.starts_with("/__control/") {
            http1::read_body(&mut reader, head.body_kind(), &mut io::sink())?;
            let (status, body) = control(state, &method, path, param("mode"), param("addr"));
            write_response(
                &mut out,
                status,
                "application/json",
                body.as_bytes(),
                close_after,
            )?;
        } else if head.header_has_token("upgrade", "websocket") {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let leftover = reader.buffer().to_vec();
            drop(reader);
            return ws::handle(
                out,
                leftover,
                &head,
                param("refuse_upgrade") == Some("1"),
                param_ms("delay_ms"),
                state,
            );
        } else if let Some(call) = outbound::parse(&target) {
            state.requests.fetch_add(1, Ordering::SeqCst);
            state.record_budget(&head);
            http1::read_body(&mut reader, head.body_kind(), &mut io::sink())?;
            let egress = state.egress.lock().ok().and_then(|e| *e);
            let (status, body) =
                outbound::call(&state.name, egress, &method, &head, started, &call);
            let body = body.to_string();
            write_response(
                &mut out,
                status,
                "application/json",
                body.as_bytes(),
                close_after,
            )?;
        } else {
            state.requests.fetch_add(1, Ordering::SeqCst);
            state.record_budget(&head);
            if let Some(d) = param_ms("read_delay_ms") {
                std::thread::sleep(d);
            }
            let body_bytes = http1::read_body(&mut reader, head.body_kind(), &mut io::sink())?;
            let (status, content_type, body) = if method == "GET" && path == "/health" {
                match health(state, &mut out)? {
                    Some(answer) => (answer.0, "text/plain", answer.1.to_string()),
                    None => return Ok(()), // hung past the limit: connection closed
                }
            } else {
                let status = param("status")
                    .and_then(|s| s.parse::<u16>().ok())
                    .unwrap_or(200);
                let echo = echo(state, &method, &target, &head, body_bytes);
                (status, "application/json", echo.to_string())
            };
            if let Some(d) = param_ms("delay_ms") {
                std::thread::sleep(d);
            }
            let body = if method == "HEAD" {
                &b""[..]
            } else {
                body.as_bytes()
            };
            write_response(&mut out, status, content_type, body, close_after)?;
        }
        if close_after {
            let _ = out.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

fn echo(state: &State, method: &str, target: &str, head: &Head, body_bytes: u64) -> Value {
    let mut headers = Map::new();
    for (name, value) in &head.headers {
        let key = name.to_ascii_lowercase();
        match headers.get_mut(&key) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                headers.insert(key, Value::String(value.clone()));
            }
        }
    }
    json!({
        "service": state.name,
        "method": method,
        "path": target,
        "headers": headers,
        "body_bytes": body_bytes,
    })
}

/// Answers `/health` per the current mode; `None` if it hung past the limit and
/// the connection was closed.
fn health(state: &State, out: &mut TcpStream) -> io::Result<Option<(u16, &'static str)>> {
    state.health_hits.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut t) = state.health_hit_times_ms.lock() {
        t.push(epoch_ms());
    }
    let started = Instant::now();
    loop {
        match state.health_mode.load(Ordering::SeqCst) {
            HEALTH_OK => return Ok(Some((200, "ok"))),
            HEALTH_FAIL => return Ok(Some((503, "fail"))),
            _ if started.elapsed() >= HANG_LIMIT => {
                let _ = out.shutdown(Shutdown::Both);
                return Ok(None);
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn control(
    state: &State,
    method: &str,
    path: &str,
    mode: Option<&str>,
    addr: Option<&str>,
) -> (u16, String) {
    match (method, path) {
        ("POST", "/__control/egress") => match addr.map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => {
                state.set_egress(Some(addr));
                (200, json!({"egress": addr.to_string()}).to_string())
            }
            _ => (
                400,
                json!({"error": "addr must be an ip:port, e.g. 127.0.0.1:10001"}).to_string(),
            ),
        },
        ("POST", "/__control/health") => {
            let code = match mode {
                Some("ok") => HEALTH_OK,
                Some("fail") => HEALTH_FAIL,
                Some("hang") => HEALTH_HANG,
                _ => {
                    return (
                        400,
                        json!({"error": "mode must be ok, fail or hang"}).to_string(),
                    )
                }
            };
            state.health_mode.store(code, Ordering::SeqCst);
            (200, json!({"mode": mode}).to_string())
        }
        ("GET", "/__control/stats") => (200, state.stats_json().to_string()),
        ("POST", "/__control/reset-stats") => {
            state.reset_stats();
            (200, state.stats_json().to_string())
        }
        _ => (
            404,
            json!({"error": "unknown control endpoint"}).to_string(),
        ),
    }
}

pub(crate) fn write_response(
    out: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let mut msg = format!("HTTP/1.1 {status} {}\r\n", http1::reason(status));
    if !no_body {
        msg.push_str(&format!(
            "content-type: {content_type}\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    if close {
        msg.push_str("connection: close\r\n");
    }
    msg.push_str("\r\n");
    let mut buf = msg.into_bytes();
    if !no_body {
        buf.extend_from_slice(body);
    }
    out.write_all(&buf)?;
    out.flush()
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
