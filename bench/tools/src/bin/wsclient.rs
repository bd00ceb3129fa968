//! A raw WebSocket client for the benchmark (RFC 6455, no extensions: no
//! permessage-deflate, so frame sizes on the wire are the message sizes).
//!
//! `hold`: opens N connections (each with its own `x-user-id`), sends one
//! small message on each and reads its echo, prints `HELD <ok> <failed>`, then
//! keeps every connection open until its stdin closes.
//!
//! `echo`: C connections, each keeping W small messages in flight against an
//! echo upstream. Prints `READY` once all are upgraded, starts on a line on
//! stdin, runs for the duration and prints one JSON object with the echoes
//! counted in that window.
//!
//! usage: wsclient hold --target HOST:PORT --path /ws/events --n N [--user-prefix P]
//!        wsclient echo --target HOST:PORT --path /ws/events --connections C
//!                      --window W --size BYTES --duration SECS

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Handshakes are written in batches of this many before their answers are
/// read, so that opening 10,000 connections takes seconds, not a minute.
const HANDSHAKE_BATCH: usize = 200;
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn usage(problem: &str) -> ! {
    eprintln!("wsclient: {problem}");
    eprintln!("usage: wsclient hold --target HOST:PORT --path P --n N [--user-prefix U]");
    eprintln!("       wsclient echo --target HOST:PORT --path P --connections C --window W --size B --duration S");
    exit(2);
}

struct Args {
    mode: String,
    target: String,
    path: String,
    n: usize,
    user_prefix: String,
    connections: usize,
    window: usize,
    size: usize,
    duration: f64,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage("missing mode"));
    let mut a = Args {
        mode,
        target: String::new(),
        path: "/".to_string(),
        n: 0,
        user_prefix: "bench-user-".to_string(),
        connections: 32,
        window: 8,
        size: 64,
        duration: 5.0,
    };
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let num = |v: String| v.parse::<usize>().unwrap_or_else(|_| usage("bad number"));
        match flag.as_str() {
            "--target" => a.target = value(),
            "--path" => a.path = value(),
            "--n" => a.n = num(value()),
            "--user-prefix" => a.user_prefix = value(),
            "--connections" => a.connections = num(value()),
            "--window" => a.window = num(value()),
            "--size" => a.size = num(value()),
            "--duration" => {
                a.duration = value().parse().unwrap_or_else(|_| usage("bad --duration"))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if a.target.is_empty() {
        usage("--target is required");
    }
    a
}

fn handshake_request(args: &Args, user: &str, i: usize) -> Vec<u8> {
    // Any 16 bytes, base64: the key only has to differ between connections.
    let key = format!("ZWRnZS1ndWFyZC0{:07}==", i % 10_000_000);
    format!(
        "GET {} HTTP/1.1\r\nhost: bench.local\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\nx-user-id: {user}\r\n\r\n",
        args.path
    )
    .into_bytes()
}

/// Reads the answer to an upgrade; true on `101`. Nothing follows a 101
/// before the client speaks, so reading byte by byte never eats a frame.
fn read_upgrade_answer(stream: &mut TcpStream) -> Result<(), String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err("closed during the handshake".into()),
            Err(e) => return Err(format!("handshake read: {e}")),
        }
        if head.len() > 16 * 1024 {
            return Err("oversized handshake answer".into());
        }
    }
    let text = String::from_utf8_lossy(&head);
    if text.starts_with("HTTP/1.1 101") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or_default().to_string())
    }
}

/// One masked binary client frame with `size` payload bytes.
fn client_frame(size: usize) -> Vec<u8> {
    let mut f = vec![0x82u8];
    if size < 126 {
        f.push(0x80 | size as u8);
    } else if size <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(size as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(size as u64).to_be_bytes());
    }
    f.extend_from_slice(&MASK);
    f.extend((0..size).map(|i| (b'a' + (i % 26) as u8) ^ MASK[i % 4]));
    f
}

/// Reads one (unmasked, server) frame and returns its payload length.
fn read_frame<R: Read>(r: &mut R, scratch: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            usize::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => usize::from(n),
    };
    if h[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        r.read_exact(&mut m)?;
    }
    scratch.resize(len, 0);
    r.read_exact(scratch)?;
    if h[0] & 0x0f == 0x8 {
        return Err(std::io::Error::other("close frame received"));
    }
    Ok(len)
}

fn connect(target: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(target).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    Ok(s)
}

fn hold(args: &Args) {
    let mut open: Vec<TcpStream> = Vec::with_capacity(args.n);
    let mut failed = 0usize;
    let mut first_error: Option<String> = None;
    let mut note = |e: String, failed: &mut usize| {
        *failed += 1;
        if first_error.is_none() {
            first_error = Some(e);
        }
    };
    let mut i = 0;
    while i < args.n {
        let batch_end = (i + HANDSHAKE_BATCH).min(args.n);
        let mut batch = Vec::new();
        for j in i..batch_end {
            match connect(&args.target) {
                Ok(mut s) => {
                    let user = format!("{}{j}", args.user_prefix);
                    match s.write_all(&handshake_request(args, &user, j)) {
                        Ok(()) => batch.push(s),
                        Err(e) => note(format!("handshake write: {e}"), &mut failed),
                    }
                }
                Err(e) => note(e, &mut failed),
            }
        }
        for mut s in batch {
            match read_upgrade_answer(&mut s) {
                Ok(()) => open.push(s),
                Err(e) => note(e, &mut failed),
            }
        }
        i = batch_end;
    }
    // One message each way on every connection: the frame path and its
    // per-connection state are then live, as on a real connection.
    let frame = client_frame(32);
    let mut alive = Vec::with_capacity(open.len());
    for chunk in open.chunks_mut(HANDSHAKE_BATCH) {
        let mut sent = Vec::new();
        for (k, s) in chunk.iter_mut().enumerate() {
            if s.write_all(&frame).is_ok() {
                sent.push(k);
            }
        }
        let mut scratch = Vec::new();
        for k in sent {
            if read_frame(&mut chunk[k], &mut scratch).is_ok() {
                alive.push(k);
            }
        }
    }
    let echoed = alive.len();
    let failed_total = failed + (open.len() - echoed);
    println!("HELD {echoed} {failed_total}");
    if let Some(e) = first_error {
        eprintln!("wsclient: first failure: {e}");
    }
    let _ = std::io::stdout().flush();
    // Hold until the parent closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(open);
}

fn echo(args: &Args) {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(args.connections + 1));
    let go = Arc::new(Barrier::new(args.connections + 1));
    let frame = Arc::new(client_frame(args.size));
    let failures = Arc::new(AtomicU64::new(0));
    for i in 0..args.connections {
        let (count, stop, ready, go, frame, failures) = (
            Arc::clone(&count),
            Arc::clone(&stop),
            Arc::clone(&ready),
            Arc::clone(&go),
            Arc::clone(&frame),
            Arc::clone(&failures),
        );
        let request = handshake_request(args, &format!("{}echo-{i}", args.user_prefix), i);
        let target = args.target.clone();
        let window = args.window;
        std::thread::spawn(move || {
            let stream = connect(&target).and_then(|mut s| {
                s.write_all(&request).map_err(|e| e.to_string())?;
                read_upgrade_answer(&mut s)?;
                Ok(s)
            });
            ready.wait();
            go.wait();
            let Ok(mut writer) = stream else {
                failures.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let Ok(read_half) = writer.try_clone() else {
                failures.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut reader = BufReader::with_capacity(16 * 1024, read_half);
            let mut scratch = Vec::new();
            for _ in 0..window {
                if writer.write_all(&frame).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            while !stop.load(Ordering::Relaxed) {
                if read_frame(&mut reader, &mut scratch).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
                if writer.write_all(&frame).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
    ready.wait();
    println!("READY");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    go.wait();
    let started = Instant::now();
    let before = count.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let after = count.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let messages = after - before;
    println!(
        "{{\"messages\": {messages}, \"seconds\": {seconds:.3}, \"msgs_per_s\": {:.1}, \"failed_connections\": {}}}",
        messages as f64 / seconds,
        failures.load(Ordering::Relaxed)
    );
    let _ = std::io::stdout().flush();
    exit(0);
}

fn main() {
    let args = parse_args();
    match args.mode.as_str() {
        "hold" => hold(&args),
        "echo" => echo(&args),
        other => usage(&format!("unknown mode {other}")),
    }
}
