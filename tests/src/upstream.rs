//! A demo upstream running as its own process (the `upstream` bin of this
//! package), on a port the OS chose, in its own process group with a
//! parent-death signal (see `process`). Killed and waited on drop.

use crate::http::{self, Request, Response};
use crate::paths;
use crate::process;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Upstream {
    name: String,
    port: u16,
    child: Child,
}

impl Upstream {
    /// Starts `demo-upstream --name NAME` on 127.0.0.1:0; the Envoy cluster for
    /// it is called NAME too (see `EnvoyBuilder::upstream`).
    pub fn start(name: &str) -> Upstream {
        paths::prepare_process_limits();
        let bin = paths::upstream_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = process::spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot start the demo upstream {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            process::kill(&mut child);
            panic!("demo upstream {name} did not report its port (got {line:?})");
        };
        Upstream {
            name: name.to_string(),
            port,
            child,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request straight to the upstream, bypassing Envoy.
    pub fn request(&self, req: Request) -> Response {
        http::send(self.addr(), &req)
            .unwrap_or_else(|e| panic!("direct request to upstream {} failed: {e}", self.name))
    }

    /// `GET /__control/stats`: health_hits, health_hit_times_ms, requests, ws_open.
    pub fn stats(&self) -> Value {
        self.request(Request::get("/__control/stats")).json()
    }
    /// `POST /__control/health?mode=ok|fail|hang`.
    pub fn set_health(&self, mode: &str) {
        let resp = self.request(Request::post(&format!("/__control/health?mode={mode}")));
        assert_eq!(resp.status, 200, "setting health mode {mode}: {resp:?}");
    }
    pub fn reset_stats(&self) {
        self.request(Request::post("/__control/reset-stats"));
    }
    /// Open WebSockets on this upstream right now.
    pub fn ws_open(&self) -> i64 {
        self.stats()["ws_open"].as_i64().unwrap_or(-1)
    }
    /// Sends this service's outbound calls (`<path>/__call/<host>/<rest>`)
    /// through the egress proxy at `addr` (`POST /__control/egress`).
    pub fn set_egress(&self, addr: SocketAddr) {
        let resp = self.request(Request::post(&format!("/__control/egress?addr={addr}")));
        assert_eq!(resp.status, 200, "setting the egress proxy: {resp:?}");
    }
    /// `x-envoy-expected-rq-timeout-ms` of the last request served, if it had one.
    pub fn last_budget_ms(&self) -> Option<u64> {
        self.stats()["last_budget_ms"].as_u64()
    }
    /// Requests served (everything but `/__control/*`).
    pub fn requests(&self) -> u64 {
        self.stats()["requests"].as_u64().unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // SIGKILL to its own process group only, then reaped.
        process::kill(&mut self.child);
    }
}
