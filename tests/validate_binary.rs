//! The `edge-guard-validate` binary itself, as `./build.sh validate` runs it:
//! its own YAML and JSON reading (the native tests in src/envoy_check pass
//! their own parser), its output and its exit codes (0 clean or warnings
//! only, 1 errors, 2 unreadable input). A test target of the `edge-guard`
//! package (`cli` feature), so cargo builds the binary for it.

// A test target: the package's no-unwrap lints are for the filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo(relative: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(relative)
        .display()
        .to_string()
}

fn fixture(name: &str) -> String {
    repo(&format!("tests/fixtures/validate/{name}"))
}

fn validate(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_edge-guard-validate"))
        .args(args)
        .output()
        .expect("run edge-guard-validate");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn the_shipped_yaml_config_validates_clean() {
    let (code, out, err) = validate(&[
        "--envoy",
        &repo("envoy/envoy.yaml"),
        "--policy",
        &repo("envoy/policy.json"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("0 errors, 0 warnings"), "{out}");
    // The policy embedded in the YAML is read too.
    let (code, out, err) = validate(&["--envoy", &repo("envoy/envoy.yaml")]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_route_idle_timeout_shorter_than_a_class_is_an_error_exit_1() {
    let (code, out, err) = validate(&[
        "--envoy",
        &fixture("route_idle_timeout_short.yaml"),
        "--policy",
        &fixture("policy.json"),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("route_idle_timeout_short"), "{out}");
    // The same in --json.
    let (code, out, err) = validate(&[
        "--envoy",
        &fixture("route_idle_timeout_short.yaml"),
        "--policy",
        &fixture("policy.json"),
        "--json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["ok"], false, "{out}");
    let ids: Vec<&str> = report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert!(ids.contains(&"route_idle_timeout_short"), "{out}");
    // Without the short idle timeout: clean.
    let (code, out, err) = validate(&[
        "--envoy",
        &fixture("good.yaml"),
        "--policy",
        &fixture("policy.json"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_config_dump_json_is_read_as_json() {
    let (code, out, err) = validate(&[
        "--envoy",
        &fixture("config_dump.json"),
        "--policy",
        &fixture("policy.json"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn unreadable_input_exits_2_naming_the_problem() {
    let dir = std::env::temp_dir().join(format!("edge-guard-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "static_resources: [unclosed\n").unwrap();
    let (code, out, err) = validate(&["--envoy", &broken.display().to_string()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("edge-guard-validate"), "{err}");
    let (code, _, err) = validate(&["--envoy", &dir.join("missing.yaml").display().to_string()]);
    assert_eq!(code, 2, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
