//! Child processes that cannot outlive the test binary.
//!
//! Every process the harness starts (Envoy, demo upstreams, and any client
//! process a test starts through `spawn`) runs in its own process group and
//! gets `SIGKILL` from the kernel the moment the test binary dies, even by
//! `SIGKILL` (Linux `PR_SET_PDEATHSIG`). Stopping one signals its whole group,
//! so anything it forked goes with it.
//!
//! The parent-death signal fires when the *thread* that forked the child
//! exits, not the process: children are therefore forked by one spawner
//! thread that lives as long as the test binary, so a process started from
//! a short-lived test thread is not killed when that thread ends.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("edge-guard-e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(contain(&mut cmd).spawn());
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the process spawner thread: {e}"));
        Mutex::new(tx)
    })
}

/// Makes `cmd` start in its own process group with `SIGKILL` as its
/// parent-death signal. Prefer `spawn`, which also forks from a thread that
/// outlives every test.
pub fn contain(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The test binary died between fork and prctl: nobody will signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}

/// Starts `cmd` contained (own process group, killed with the test binary).
pub fn spawn(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?
}

/// Sends `signal` to the process group of `child` (started by `spawn`, so
/// its group id is its pid). Only while `child` has not been reaped: until
/// then its pid, and so its group id, cannot belong to anyone else.
pub fn signal_group(child: &Child, signal: libc::c_int) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: signalling the group our own unreaped child leads.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// `SIGTERM` to the group, up to `grace` for the child to exit, then
/// `SIGKILL` to the group; always reaped. Returns the exit status.
pub fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal_group(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child)
}

/// `SIGKILL` to the group, then reaped.
pub fn kill(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal_group(child, libc::SIGKILL);
    child.wait().ok()
}

/// A contained child that is killed (with its group) and reaped on drop: for
/// client processes a test starts (`node`, `python3`, load tools).
pub struct Guarded {
    child: Child,
}

impl Guarded {
    /// Starts `cmd` contained; panics with the command if it cannot start.
    pub fn start(cmd: Command) -> Guarded {
        let shown = format!("{cmd:?}");
        let child = spawn(cmd).unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        Guarded { child }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
    /// Waits up to `timeout` for the child to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// SIGTERM, `grace`, SIGKILL (to the group); reaped.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        stop(&mut self.child, grace)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
