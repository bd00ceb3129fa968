//! The demo service's own outbound calls, made the way the README asks real
//! services to make them: through the egress proxy, forwarding what is left
//! of the budget the service was given.
//!
//! `<any path>/__call/<host>/<rest>` calls `http://<host>/<rest>` (query
//! string included) through the egress proxy set with `--egress ADDR` or
//! `POST /__control/egress?addr=ADDR`, with the incoming method, sending
//! `x-envoy-expected-rq-timeout-ms` = the budget this request arrived with
//! minus the time spent since its head was read (0 when spent), and the
//! incoming `x-request-id`. It answers with the callee's status and
//! `{"service", "called", "forwarded_budget_ms", "status", "response"}`.
//! Nesting the marker (`/__call/b/x/__call/c/y`) builds a chain of calls.

use crate::http1::{self, Head};
use serde_json::{json, Value};
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The marker segment of the call endpoint.
pub const MARKER: &str = "/__call/";

/// How long an outbound call may take when nothing bounds it (the egress
/// proxy normally answers long before).
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// A call the request asks for: the destination host and the target path.
#[derive(Debug, PartialEq, Eq)]
pub struct Call<'a> {
    pub host: &'a str,
    pub target: String,
}

/// `/api/x/__call/sms.example.com/v1/send?q=1` → host `sms.example.com`,
/// target `/v1/send?q=1`.
pub fn parse(target: &str) -> Option<Call<'_>> {
    let at = target.find(MARKER)?;
    let rest = &target[at + MARKER.len()..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = &rest[..end];
    if host.is_empty() {
        return None;
    }
    let tail = &rest[end..];
    let target = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Some(Call { host, target })
}

/// What is left of the budget this request arrived with, `started` being
/// when its head was read: the service-side one-liner, in Rust.
pub fn remaining_budget(head: &Head, started: Instant) -> Option<u64> {
    let given: u64 = head
        .header("x-envoy-expected-rq-timeout-ms")?
        .trim()
        .parse()
        .ok()?;
    let spent = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Some(given.saturating_sub(spent))
}

/// Makes the call and returns (status, JSON body) for the caller.
pub fn call(
    service: &str,
    egress: Option<SocketAddr>,
    method: &str,
    head: &Head,
    started: Instant,
    call: &Call,
) -> (u16, Value) {
    let called = format!("{}{}", call.host, call.target);
    let Some(egress) = egress else {
        return (
            502,
            json!({"service": service, "called": called, "error": "no egress proxy configured (--egress or POST /__control/egress?addr=)"}),
        );
    };
    let budget = remaining_budget(head, started);
    match send(egress, method, head, call, budget) {
        Ok((status, body)) => {
            let response = serde_json::from_slice::<Value>(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            (
                status,
                json!({
                    "service": service,
                    "called": called,
                    "forwarded_budget_ms": budget,
                    "status": status,
                    "response": response,
                }),
            )
        }
        Err(e) => (
            502,
            json!({"service": service, "called": called, "forwarded_budget_ms": budget, "error": e.to_string()}),
        ),
    }
}

fn send(
    egress: SocketAddr,
    method: &str,
    head: &Head,
    call: &Call,
    budget: Option<u64>,
) -> io::Result<(u16, Vec<u8>)> {
    let stream = TcpStream::connect_timeout(&egress, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(CALL_LIMIT))?;
    stream.set_nodelay(true)?;
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nhost: {}\r\n",
        call.target, call.host
    );
    if let Some(ms) = budget {
        request.push_str(&format!("x-envoy-expected-rq-timeout-ms: {ms}\r\n"));
    }
    if let Some(id) = head.header("x-request-id") {
        request.push_str(&format!("x-request-id: {id}\r\n"));
    }
    if matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str("content-length: 0\r\n");
    }
    request.push_str("connection: close\r\n\r\n");
    let mut out = stream.try_clone()?;
    out.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let answer = http1::read_head(&mut reader)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "egress closed without answering",
        )
    })?;
    let status = answer
        .start_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let mut body = Vec::new();
    match answer.body_kind() {
        http1::BodyKind::None => {
            http1::read_to_eof(&mut reader, &mut body)?;
        }
        kind => {
            http1::read_body(&mut reader, kind, &mut body)?;
        }
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_call_marker() {
        assert_eq!(
            parse("/api/bookings/__call/sms.example.com/v1/send?delay_ms=5"),
            Some(Call {
                host: "sms.example.com",
                target: "/v1/send?delay_ms=5".into()
            })
        );
        assert_eq!(
            parse("/__call/course.internal/api/x/__call/sms.example.com/"),
            Some(Call {
                host: "course.internal",
                target: "/api/x/__call/sms.example.com/".into()
            })
        );
        assert_eq!(
            parse("/__call/h?x=1"),
            Some(Call {
                host: "h",
                target: "/?x=1".into()
            })
        );
        assert_eq!(parse("/api/x"), None);
        assert_eq!(parse("/__call//x"), None);
    }

    #[test]
    fn forwards_what_is_left() {
        let head = Head {
            start_line: "GET / HTTP/1.1".into(),
            headers: vec![("X-Envoy-Expected-Rq-Timeout-Ms".into(), "1500".into())],
        };
        let left = remaining_budget(&head, Instant::now()).unwrap();
        assert!((1400..=1500).contains(&left), "{left}");
        let long_ago = Instant::now() - Duration::from_secs(2);
        assert_eq!(remaining_budget(&head, long_ago), Some(0));
        assert_eq!(remaining_budget(&Head::default(), Instant::now()), None);
    }
}
