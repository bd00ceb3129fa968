//! Open-loop HTTP/1.1 load at a fixed rate, wrk2's method.
//!
//! Request k is due at `start + k / rate` whatever happened before it; it
//! goes out on the first idle keep-alive connection, and its latency is
//! measured from when it was *due*, not from when it could be sent. A server
//! that stalls therefore shows its stall in every request that queued behind
//! it (no coordinated omission), which a closed-loop tool like wrk hides.
//!
//! One thread, non-blocking sockets and epoll; the loop busy-polls when the
//! next request is due within 2 ms, so run it pinned to a core of its own.
//! Prints one JSON object on stdout; with `--latencies FILE`, also writes every
//! completed request's latency (µs, u32 little-endian, sorted) to FILE, so that
//! runs can be pooled.
//!
//! usage: openloop --target 127.0.0.1:PORT --rate RPS --duration SECS
//!                 [--connections N] [--path /a --path /b ...] [--host HOST]
//!                 [--latencies FILE]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::exit;
use std::time::{Duration, Instant};

/// Responses still outstanding this long after the last request was due are
/// counted as unfinished.
const DRAIN: Duration = Duration::from_secs(2);

struct Args {
    target: String,
    rate: f64,
    duration: f64,
    connections: usize,
    paths: Vec<String>,
    host: String,
    latencies: Option<String>,
}

fn usage(problem: &str) -> ! {
    eprintln!("openloop: {problem}");
    eprintln!(
        "usage: openloop --target HOST:PORT --rate RPS --duration SECS [--connections N] [--path P]... [--host H] [--latencies FILE]"
    );
    exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        target: String::new(),
        rate: 0.0,
        duration: 0.0,
        connections: 64,
        paths: Vec::new(),
        host: "bench.local".to_string(),
        latencies: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--target" => args.target = value(),
            "--rate" => args.rate = value().parse().unwrap_or_else(|_| usage("bad --rate")),
            "--duration" => {
                args.duration = value().parse().unwrap_or_else(|_| usage("bad --duration"))
            }
            "--connections" => {
                args.connections = value()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --connections"))
            }
            "--path" => args.paths.push(value()),
            "--host" => args.host = value(),
            "--latencies" => args.latencies = Some(value()),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if args.target.is_empty() || args.rate <= 0.0 || args.duration <= 0.0 || args.connections == 0 {
        usage("--target, --rate and --duration are required");
    }
    if args.paths.is_empty() {
        args.paths.push("/".to_string());
    }
    args
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// When the request now in flight was due; `None` when idle.
    due: Option<Instant>,
    dead: bool,
}

/// A complete response at the start of `buf`: (bytes it takes, status code).
fn parse_response(buf: &[u8]) -> Result<Option<(usize, u16)>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let body_start = head_end + 4;
    if chunked {
        // The benchmark's upstreams send small bodies; the last chunk marks the end.
        return Ok(buf[body_start..]
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|p| (body_start + p + 5, status)));
    }
    let length = length.unwrap_or(0);
    if buf.len() >= body_start + length {
        Ok(Some((body_start + length, status)))
    } else {
        Ok(None)
    }
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let args = parse_args();
    let requests: Vec<Vec<u8>> = args
        .paths
        .iter()
        .map(|p| {
            format!(
                "GET {p} HTTP/1.1\r\nhost: {}\r\nuser-agent: edge-guard-bench\r\n\r\n",
                args.host
            )
            .into_bytes()
        })
        .collect();

    // SAFETY: plain syscall; the fd is closed at process exit.
    let epfd = unsafe { libc::epoll_create1(0) };
    if epfd < 0 {
        usage("epoll_create1 failed");
    }
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let stream = TcpStream::connect(&args.target)
            .unwrap_or_else(|e| usage(&format!("connect {}: {e}", args.target)));
        let _ = stream.set_nodelay(true);
        let _ = stream.set_nonblocking(true);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: registering a socket we own with a valid event struct.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut ev) };
        conns.push(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            due: None,
            dead: false,
        });
    }

    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let total = (args.rate * args.duration).round() as u64;
    let mut latencies: Vec<u32> = Vec::with_capacity(total as usize);
    let (mut sent, mut errors, mut non_2xx) = (0u64, 0u64, 0u64);
    let mut idle: Vec<usize> = (0..conns.len()).rev().collect();
    let mut pending: VecDeque<Instant> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut next_k = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut scratch = vec![0u8; 64 * 1024];
    let start = Instant::now() + Duration::from_millis(10);
    let last_due = start + interval.mul_f64(total as f64);
    let mut last_completion = start;

    loop {
        let now = Instant::now();
        while next_k < total {
            let due = start + interval.mul_f64(next_k as f64);
            if due > now {
                break;
            }
            pending.push_back(due);
            next_k += 1;
        }
        while !pending.is_empty() {
            let Some(ci) = idle.pop() else { break };
            let Some(due) = pending.pop_front() else {
                break;
            };
            let conn = &mut conns[ci];
            let request = &requests[(sent % requests.len() as u64) as usize];
            sent += 1;
            // A request is ~100 bytes on an idle socket: it fits whole.
            match conn.stream.write(request) {
                Ok(n) if n == request.len() => {
                    conn.due = Some(due);
                    in_flight += 1;
                }
                _ => {
                    errors += 1;
                    conn.dead = true;
                }
            }
        }
        if next_k >= total && pending.is_empty() && in_flight == 0 {
            break;
        }
        if now > last_due + DRAIN {
            break;
        }
        if idle.is_empty() && in_flight == 0 {
            usage("every connection failed");
        }
        let next_due = start + interval.mul_f64(next_k as f64);
        // Sleep in epoll (1 ms) unless a request is due within 2 ms: then
        // poll, so that it leaves on time. Queued requests wait for a
        // response, which wakes epoll anyway.
        let busy_poll =
            pending.is_empty() && next_k < total && next_due <= now + Duration::from_millis(2);
        let timeout_ms = if busy_poll { 0 } else { 1 };
        // SAFETY: the buffer holds `events.len()` entries.
        let n =
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        let now = Instant::now();
        for ev in events.iter().take(n.max(0) as usize) {
            let ci = ev.u64 as usize;
            let conn = &mut conns[ci];
            if conn.dead {
                continue;
            }
            loop {
                match conn.stream.read(&mut scratch) {
                    Ok(0) => {
                        conn.dead = true;
                        break;
                    }
                    Ok(n) => conn.buf.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        conn.dead = true;
                        break;
                    }
                }
            }
            loop {
                match parse_response(&conn.buf) {
                    Ok(Some((used, status))) => {
                        conn.buf.drain(..used);
                        if let Some(due) = conn.due.take() {
                            in_flight -= 1;
                            let us = now.saturating_duration_since(due).as_micros();
                            latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                            if !(200..300).contains(&status) {
                                non_2xx += 1;
                            }
                            last_completion = now;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        conn.dead = true;
                        break;
                    }
                }
            }
            if conn.dead {
                if conn.due.take().is_some() {
                    in_flight -= 1;
                    errors += 1;
                }
            } else if conn.due.is_none() {
                idle.push(ci);
            }
        }
    }

    let completed = latencies.len() as u64;
    let elapsed = last_completion
        .saturating_duration_since(start)
        .as_secs_f64();
    latencies.sort_unstable();
    if let Some(path) = &args.latencies {
        let bytes: Vec<u8> = latencies.iter().flat_map(|l| l.to_le_bytes()).collect();
        if let Err(e) = std::fs::write(path, bytes) {
            eprintln!("openloop: cannot write {path}: {e}");
            exit(1);
        }
    }
    let mean = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / latencies.len() as f64
    };
    println!(
        "{{\"target_rate\": {}, \"duration_s\": {}, \"sent\": {sent}, \"completed\": {completed}, \"errors\": {errors}, \"non_2xx\": {non_2xx}, \"unfinished\": {}, \"achieved_rps\": {:.1}, \"mean_us\": {:.1}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \"max_us\": {}}}",
        args.rate,
        args.duration,
        total.saturating_sub(completed + errors),
        if elapsed > 0.0 { completed as f64 / elapsed } else { 0.0 },
        mean,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(0),
    );
}
