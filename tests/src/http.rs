//! A deliberately raw HTTP/1.1 client: one connection per request, explicit
//! timeouts, nothing added to the request that the test did not ask for except
//! `host`, `content-length` and `connection: close`. Raw so that tests can see
//! exactly what Envoy and the filter put on the wire.

use edge_guard_demo::http1::{self, BodyKind};
use serde_json::Value;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a request may take unless the test says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A request to send; build with `Request::get("/path").header("x", "y")`.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }
    pub fn put(path: &str) -> Self {
        Self::new("PUT", path)
    }
    pub fn delete(path: &str) -> Self {
        Self::new("DELETE", path)
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request head as sent. `content_length` overrides the body's length
    /// (slow uploads announce a body they have not sent yet).
    pub fn head_bytes(&self, content_length: Option<usize>) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self.has_header("host") {
            head.push_str("host: edge-guard.test\r\n");
        }
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        let len = content_length.unwrap_or(self.body.len());
        let wants_length = len > 0 || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if wants_length
            && !self.has_header("content-length")
            && !self.has_header("transfer-encoding")
        {
            head.push_str(&format!("content-length: {len}\r\n"));
        }
        if !self.has_header("connection") {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

impl From<&str> for Request {
    fn from(path: &str) -> Self {
        Request::get(path)
    }
}

/// A complete response as received.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    /// Header names as received, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// From the first byte sent to the last byte of the response.
    pub elapsed: Duration,
}

impl Response {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }
    /// `error.code` of edge-guard's JSON error shape, if the body has one.
    /// Asserts edge-guard's JSON error shape (`{"error": {"code", "message",
    /// "request_id"}}` with `content-type: application/json`) with this
    /// status and code; returns the `error` object for further checks.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "content-type {ct:?}: {self:?}"
        );
        let body = self.json();
        let error = &body["error"];
        assert_eq!(error["code"], code, "{self:?}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {self:?}"
        );
        // A request id is a non-empty string, or null when there is none.
        assert!(
            error["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
                || error["request_id"].is_null(),
            "request_id neither a non-empty string nor null: {self:?}"
        );
        error.clone()
    }

    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body).ok()?["error"]["code"]
            .as_str()
            .map(str::to_string)
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "HTTP {} ({:?})", self.status, self.elapsed)?;
        for (n, v) in &self.headers {
            writeln!(f, "  {n}: {v}")?;
        }
        let text = self.text();
        let shown: String = text.chars().take(2000).collect();
        write!(f, "  body ({} bytes): {shown}", self.body.len())
    }
}

pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects to `addr` from the local address `source` (port chosen by the OS).
pub fn connect_from(
    source: std::net::Ipv4Addr,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dest) = addr else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect_from: IPv4 only",
        ));
    };
    fn sockaddr(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr = libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        };
        sa
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; it is
    // handed to TcpStream (which closes it) or closed here on error.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(source, 0);
        if libc::bind(fd, std::ptr::addr_of!(local).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sockaddr(*dest.ip(), dest.port());
        if libc::connect(fd, std::ptr::addr_of!(remote).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// `send`, from the local address `source` (e.g. `127.0.0.2`).
pub fn send_from(
    source: std::net::Ipv4Addr,
    addr: SocketAddr,
    req: &Request,
) -> io::Result<Response> {
    let started = Instant::now();
    let mut stream = connect_from(source, addr, req.timeout)?;
    let mut bytes = req.head_bytes(None);
    bytes.extend_from_slice(&req.body);
    stream.write_all(&bytes)?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, &req.method, started)
}

/// Sends one request on a fresh connection and reads the whole response.
pub fn send(addr: SocketAddr, req: &Request) -> io::Result<Response> {
    let started = Instant::now();
    let mut stream = connect(addr, req.timeout)?;
    let mut bytes = req.head_bytes(None);
    bytes.extend_from_slice(&req.body);
    stream.write_all(&bytes)?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, &req.method, started)
}

/// Reads one final response (skipping `100 Continue`) from a connection.
pub fn read_response<R: io::BufRead>(
    r: &mut R,
    method: &str,
    started: Instant,
) -> io::Result<Response> {
    loop {
        let head = http1::read_head(r)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let status: u16 = head
            .start_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {:?}", head.start_line),
                )
            })?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut body = Vec::new();
        let no_body = method == "HEAD" || status == 204 || status == 304 || status == 101;
        if !no_body {
            match head.body_kind() {
                BodyKind::None => {
                    http1::read_to_eof(r, &mut body)?;
                }
                kind => {
                    http1::read_body(r, kind, &mut body)?;
                }
            }
        }
        return Ok(Response {
            status,
            headers: head.headers,
            body,
            elapsed: started.elapsed(),
        });
    }
}

/// The outcome of a slow upload: the response (which may have arrived before
/// the body was complete) and how much of the body had been sent by then.
#[derive(Debug)]
pub struct SlowUpload {
    pub resp: Response,
    pub bytes_sent: usize,
    /// Whether the whole announced body was sent.
    pub body_complete: bool,
}

impl std::ops::Deref for SlowUpload {
    type Target = Response;
    fn deref(&self) -> &Response {
        &self.resp
    }
}

/// Sends `req`'s head announcing `total_len` body bytes, then `chunk` bytes every
/// `interval`, stopping early as soon as a response arrives or the peer stops
/// accepting data. Waits up to `req.timeout` after the last write for the response.
pub fn slow_upload(
    addr: SocketAddr,
    req: &Request,
    total_len: usize,
    chunk: usize,
    interval: Duration,
) -> io::Result<SlowUpload> {
    let started = Instant::now();
    let budget = interval.saturating_mul((total_len / chunk.max(1)) as u32 + 1) + req.timeout;
    let mut stream = connect(addr, budget)?;
    stream.write_all(&req.head_bytes(Some(total_len)))?;
    let reader_stream = stream.try_clone()?;
    let method = req.method.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader_stream);
        let _ = tx.send(read_response(&mut reader, &method, started));
    });
    let piece = vec![b'u'; chunk.max(1)];
    let mut sent = 0usize;
    let mut early = None;
    while sent < total_len {
        match rx.try_recv() {
            Ok(result) => {
                early = Some(result);
                break;
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let n = piece.len().min(total_len - sent);
        if stream.write_all(&piece[..n]).is_err() {
            break;
        }
        sent += n;
        if sent < total_len {
            std::thread::sleep(interval);
        }
    }
    let result = match early {
        Some(r) => r,
        None => rx
            .recv_timeout(req.timeout)
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response after the upload"))?,
    };
    let resp = result?;
    Ok(SlowUpload {
        resp,
        bytes_sent: sent,
        body_complete: sent == total_len,
    })
}

/// Reads whatever is left on a stream until EOF or timeout (for raw tests).
pub fn drain(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}
