//! The demo upstream for edge-guard: a small, real HTTP/1.1 + WebSocket server.
//!
//! Used by `./build.sh run` (the local demo stack) and by the e2e tests, always as
//! a separate process: `demo-upstream --listen 127.0.0.1:0 --name course_service`
//! prints `LISTENING <port>` once bound. It owns nothing of the filter's logic; it
//! only makes upstream behaviour (slow, failing, hanging, resetting) easy to ask
//! for from a URL:
//!
//! - any path: 200 JSON echo `{"service","method","path","headers","body_bytes"}`;
//!   query `delay_ms=N` (sleep before answering), `status=NNN`,
//!   `read_delay_ms=N` (sleep before reading the body);
//! - `GET /health`: `ok`, or 503 / no answer, as set by `POST /__control/health?mode=ok|fail|hang`;
//! - `GET /__control/stats`, `POST /__control/reset-stats`;
//! - `<path>/__call/<host>/<rest>`: call `http://<host>/<rest>` through the
//!   egress proxy (`--egress ADDR` or `POST /__control/egress?addr=ADDR`),
//!   forwarding the remaining budget (see `outbound`);
//! - WebSocket upgrade on any path (`refuse_upgrade=1` → 403): echoes data
//!   messages; text commands `__close`, `__big <N>`, `__reset`.
//!
//! One thread per connection with a 128 KiB stack, so 10,000 idle WebSockets
//! cost little.

pub mod http1;
pub mod outbound;
mod server;
mod ws;

pub use server::{serve, State};
pub use ws::big_payload;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;

/// Stack size of every connection thread.
pub const CONNECTION_STACK: usize = 128 * 1024;

/// Entry point of the `demo-upstream` binary (also wrapped by the e2e harness).
/// Exits the process on bad arguments.
pub fn run() {
    let mut listen = String::from("127.0.0.1:0");
    let mut name = String::from("demo");
    let mut egress = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .unwrap_or_else(|| usage("--listen needs an address"))
            }
            "--name" => name = args.next().unwrap_or_else(|| usage("--name needs a value")),
            "--egress" => {
                let addr = args
                    .next()
                    .unwrap_or_else(|| usage("--egress needs an address"));
                egress = Some(
                    addr.parse()
                        .unwrap_or_else(|_| usage("--egress needs an ip:port")),
                );
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    raise_fd_limit();
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-upstream: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    widen_backlog(&listener);
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "LISTENING {port}");
    let _ = out.flush();
    drop(out);
    let state = State::new(name);
    state.set_egress(egress);
    serve(listener, Arc::new(state));
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("demo-upstream: {problem}");
    }
    eprintln!(
        "usage: demo-upstream [--listen 127.0.0.1:0] [--name SERVICE] [--egress 127.0.0.1:10001]"
    );
    std::process::exit(2);
}

/// std listens with a backlog of 128; a burst of thousands of connects (the
/// WebSocket capacity tests) then loses SYNs and stalls a second per retry.
/// Calling listen() again on a listening socket just raises the backlog.
fn widen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen() on a socket we own.
    unsafe {
        libc::listen(listener.as_raw_fd(), 4096);
    }
}

/// Lifts the open-files limit (inherited by child processes): 10,000 idle
/// WebSockets need 10,000 descriptors here and twice that in Envoy. Tries
/// 262,144 (works as root), else the soft limit up to the hard one.
pub fn raise_fd_limit() {
    const WANTED: libc::rlim_t = 262_144;
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= WANTED {
            return;
        }
        let both = libc::rlimit {
            rlim_cur: WANTED,
            rlim_max: WANTED.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &both) != 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
