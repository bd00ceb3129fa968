//! Just enough HTTP/1.1 to be an upstream (and, in `tests/`, a client): message
//! heads, `content-length` and chunked bodies. Shared by the demo server and the
//! e2e harness so both sides speak the same (deliberately small) dialect.
//!
//! It never allocates on the stack beyond a few bytes: server threads run with
//! 128 KiB stacks.

use std::io::{self, BufRead, Read, Write};

/// Longest head we accept; Envoy's own default limit is 60 KiB.
const MAX_HEAD_BYTES: usize = 96 * 1024;

/// A request line or status line plus headers, as received.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// `GET /path HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start_line: String,
    /// Header names as received (case kept), in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (`connection`, `upgrade`) contains `token`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// How the body that follows this head is delimited.
    pub fn body_kind(&self) -> BodyKind {
        if self.header_has_token("transfer-encoding", "chunked") {
            BodyKind::Chunked
        } else if let Some(n) = self
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
        {
            BodyKind::Length(n)
        } else {
            BodyKind::None
        }
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// Reads one message head. `Ok(None)` on a clean EOF before any byte (an idle
/// keep-alive connection closed by the peer).
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut head = Head::default();
    let mut line = String::new();
    let mut total = 0usize;
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            if head.start_line.is_empty() && total == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof inside message head",
            ));
        }
        total += n;
        if total > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message head too large",
            ));
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if head.start_line.is_empty() {
            if trimmed.is_empty() {
                continue; // tolerate stray CRLF between messages
            }
            head.start_line = trimmed.to_string();
            continue;
        }
        if trimmed.is_empty() {
            return Ok(Some(head));
        }
        match trimmed.split_once(':') {
            Some((name, value)) => head
                .headers
                .push((name.trim().to_string(), value.trim().to_string())),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad header line {trimmed:?}"),
                ))
            }
        }
    }
}

/// Reads a body of the given kind into `sink`, returning the number of body bytes.
/// Chunk extensions and trailers are read and dropped.
pub fn read_body<R: BufRead, W: Write>(r: &mut R, kind: BodyKind, sink: &mut W) -> io::Result<u64> {
    match kind {
        BodyKind::None => Ok(0),
        BodyKind::Length(n) => {
            let copied = io::copy(&mut r.by_ref().take(n), sink)?;
            if copied < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof inside body",
                ));
            }
            Ok(copied)
        }
        BodyKind::Chunked => {
            let mut total = 0u64;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "eof inside chunked body",
                    ));
                }
                let size_text = line.trim().split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_text, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {size_text:?}"),
                    )
                })?;
                if size == 0 {
                    // trailers until an empty line
                    loop {
                        line.clear();
                        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            return Ok(total);
                        }
                    }
                }
                let copied = io::copy(&mut r.by_ref().take(size), sink)?;
                if copied < size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "eof inside chunk",
                    ));
                }
                total += copied;
                line.clear();
                r.read_line(&mut line)?; // CRLF after the chunk
            }
        }
    }
}

/// Reads until EOF (a response without length, delimited by the connection close).
pub fn read_to_eof<R: Read, W: Write>(r: &mut R, sink: &mut W) -> io::Result<u64> {
    io::copy(r, sink)
}

/// Splits `/path?a=1&b=2` into the path and its decoded-enough query pairs
/// (no percent-decoding: the demo's parameters are plain numbers and words).
pub fn split_query(target: &str) -> (&str, Vec<(&str, &str)>) {
    match target.split_once('?') {
        None => (target, Vec::new()),
        Some((path, q)) => (
            path,
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        ),
    }
}

/// The reason phrase for the statuses the demo and the tests use.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_head_and_chunked_body() {
        let raw = b"POST /x?a=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\nNEXT";
        let mut r = Cursor::new(&raw[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert_eq!(head.start_line, "POST /x?a=1 HTTP/1.1");
        assert_eq!(head.header("host"), Some("h"));
        assert_eq!(head.body_kind(), BodyKind::Chunked);
        let mut body = Vec::new();
        assert_eq!(read_body(&mut r, head.body_kind(), &mut body).unwrap(), 5);
        assert_eq!(body, b"abcde");
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn clean_eof_before_a_head_is_none() {
        assert!(read_head(&mut Cursor::new(&b""[..])).unwrap().is_none());
    }

    #[test]
    fn splits_query() {
        let (p, q) = split_query("/a/b?delay_ms=5&flag&status=503");
        assert_eq!(p, "/a/b");
        assert_eq!(q, vec![("delay_ms", "5"), ("flag", ""), ("status", "503")]);
    }
}
