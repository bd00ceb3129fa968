//! `edge-guard-validate`: checks an edge-guard policy against an Envoy
//! bootstrap or admin `/config_dump`, offline (`./build.sh validate --help`).
//!
//! Only the YAML reading lives here (serde_norway, the maintained fork of the
//! archived serde_yaml; feature `cli`); everything
//! else is `edge_guard::envoy_check`, so the checks stay unit-testable and the
//! wasm filter never links a YAML parser.

use std::process::ExitCode;

use serde_json::Value;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let output = edge_guard::envoy_check::run(&args, &parse_envoy);
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    ExitCode::from(output.code)
}

/// JSON (a config_dump, with exact error positions) or YAML. Anchors and
/// aliases resolve; `<<` merge keys stay plain keys, because Envoy rejects
/// them too and the validator must not accept what Envoy refuses.
fn parse_envoy(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        if let Ok(value) = serde_json::from_str(text) {
            return Ok(value);
        }
    }
    let yaml: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    serde_json::to_value(yaml).map_err(|e| e.to_string())
}
