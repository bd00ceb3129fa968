//! Script processes for the tests that need real third-party clients and
//! servers: Node.js (`ws`, `socket.io`, `socket.io-client`; scripts in
//! `tests/node/`, packages in `demo/socketio/node_modules`, installed by
//! `./build.sh test` from the committed package-lock) and Python (`websockets`
//! in `.venv`; scripts in `tests/python/`). Each process runs in its own
//! process group with a parent-death signal (`process::spawn`), killed
//! (SIGKILL to the group, by its PID) and waited on drop, so nothing a script
//! starts outlives its test, nor a SIGKILLed test binary.

use crate::paths;
use crate::process;
use std::io::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `demo/socketio/node_modules`; panics with the fix if absent.
pub fn node_modules() -> PathBuf {
    let p = paths::repo_root().join("demo/socketio/node_modules");
    assert!(
        p.join("socket.io").is_dir() && p.join("ws").is_dir(),
        "Node packages not found in {} — run ./build.sh test (it runs npm ci there)",
        p.display()
    );
    p
}

/// A running script; stdout is read line by line.
pub struct ScriptProcess {
    script: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ScriptProcess {
    /// Starts `node tests/node/<script> args…` with `NODE_PATH` at the
    /// project's Node packages and `env` added.
    pub fn node(script: &str, args: &[&str], env: &[(&str, &str)]) -> ScriptProcess {
        let path = paths::repo_root().join("tests/node").join(script);
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", node_modules());
        Self::spawn(cmd, script, &path, args, env, false)
    }

    /// As [`node`](Self::node), with stdin open for [`send`](Self::send).
    pub fn node_interactive(script: &str, args: &[&str], env: &[(&str, &str)]) -> ScriptProcess {
        let path = paths::repo_root().join("tests/node").join(script);
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", node_modules());
        Self::spawn(cmd, script, &path, args, env, true)
    }

    /// Writes one line to the script's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{} was not started interactive", self.script));
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to {}: {e}", self.script));
    }

    /// Starts `.venv/bin/python tests/python/<script> args…` (the venv next
    /// to the Envoy the tests use).
    pub fn python(script: &str, args: &[&str]) -> ScriptProcess {
        let path = paths::repo_root().join("tests/python").join(script);
        let envoy = paths::envoy_bin();
        let python = envoy.with_file_name("python");
        Self::spawn(Command::new(python), script, &path, args, &[], false)
    }

    fn spawn(
        mut cmd: Command,
        script: &str,
        path: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        interactive: bool,
    ) -> ScriptProcess {
        cmd.stdin(if interactive {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.arg(path)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Own process group and a parent-death signal (see `process`).
        let mut child =
            process::spawn(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ScriptProcess {
            script: script.to_string(),
            child,
            stdin,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, or `None` after `timeout` or at end of output.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next line starting with `prefix` (earlier lines are skipped),
    /// without the prefix; panics after `timeout`.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!(
                    "{} printed no line starting with {prefix:?} within {timeout:?}",
                    self.script
                ),
            }
        }
    }

    /// The next stdout line parsed as JSON; panics after `timeout`.
    pub fn expect_json(&self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("{} printed no JSON line within {timeout:?}", self.script)
            });
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v.is_object() {
                    return v;
                }
            }
        }
    }

    /// `LISTENING <port>` from a server script.
    pub fn listening_port(&self) -> u16 {
        self.expect_line("LISTENING ", Duration::from_secs(15))
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad port: {e}", self.script))
    }

    /// Kills the whole process group now (what a vanished client looks like).
    pub fn kill(&mut self) {
        // SIGKILL to the group our own unreaped child leads, then reaped.
        process::kill(&mut self.child);
    }
}

impl Drop for ScriptProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.kill();
    }
}
