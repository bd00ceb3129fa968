//! The command line of `edge-guard-validate`, as a function the tests call.
//!
//! Owns argument parsing, reading the files, the exit codes (0 clean or
//! warnings only, 1 errors, 2 usage/IO/parse problems) and the output
//! format. Never parses YAML itself: the caller passes the document parser,
//! so this module stays free of serde_norway.

use std::path::Path;

use serde_json::Value;

use super::checks::{validate, Options};

pub const USAGE: &str = "\
usage: edge-guard-validate --envoy <envoy.yaml | config_dump.json> [--policy <policy.json>] [--host <host>] [--running <config_dump.json>] [--write-ecds <file>] [--json]

Checks an edge-guard policy against an Envoy bootstrap (static_resources) or a live
admin /config_dump, offline: clusters, where Envoy routes each policy route, WebSocket
upgrades, the edge_guard filter's placement and failure policy, and timeouts.

  --envoy FILE    Envoy bootstrap (YAML or JSON) or `curl localhost:9901/config_dump` output
  --policy FILE   the policy JSON; default: the policy embedded in the edge_guard filter's
                  configuration
  --host HOST     the Host header to simulate (default: the virtual host with domain \"*\")
  --running FILE  the running Envoy's /config_dump: warns if the new configuration gives
                  edge-guard another vm_id (its counters would start from zero)
  --write-ecds F  if there are no errors, write the ECDS resource that delivers the policy
                  to the filter's config_discovery (its default_config with this policy)
                  to F, atomically (a temporary file renamed into place)
  --json          print {\"ok\", \"errors\", \"warnings\", \"findings\": [...]} instead of text

Exit status: 0 no errors (warnings allowed), 1 errors found, 2 usage, I/O or parse problem.
";

/// What the binary prints and returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    fn usage_error(message: impl Into<String>) -> RunOutput {
        RunOutput {
            code: 2,
            stdout: String::new(),
            stderr: format!("edge-guard-validate: {}\n\n{USAGE}", message.into()),
        }
    }

    fn failure(message: impl Into<String>) -> RunOutput {
        RunOutput {
            code: 2,
            stdout: String::new(),
            stderr: format!("edge-guard-validate: {}\n", message.into()),
        }
    }
}

/// The JSON-only document parser (the binary passes one that reads YAML too).
pub fn parse_json_document(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

struct Args {
    envoy: String,
    policy: Option<String>,
    host: Option<String>,
    running: Option<String>,
    write_ecds: Option<String>,
    json: bool,
}

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut envoy = None;
    let mut policy = None;
    let mut host = None;
    let mut running = None;
    let mut write_ecds = None;
    let mut json = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| iter.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--json" => json = true,
            "--envoy" => envoy = Some(value("--envoy")?),
            "--policy" => policy = Some(value("--policy")?),
            "--host" => host = Some(value("--host")?),
            "--running" => running = Some(value("--running")?),
            "--write-ecds" => write_ecds = Some(value("--write-ecds")?),
            other => return Err(format!("unknown argument \"{other}\"")),
        }
    }
    let envoy = envoy.ok_or("--envoy is required")?;
    Ok(Some(Args {
        envoy,
        policy,
        host,
        running,
        write_ecds,
        json,
    }))
}

/// Runs the validator. `parse_envoy` turns the Envoy file's text into a value.
pub fn run(args: &[String], parse_envoy: &dyn Fn(&str) -> Result<Value, String>) -> RunOutput {
    let args = match parse_args(args) {
        Ok(Some(args)) => args,
        Ok(None) => {
            return RunOutput {
                code: 0,
                stdout: USAGE.to_string(),
                stderr: String::new(),
            }
        }
        Err(e) => return RunOutput::usage_error(e),
    };
    let envoy_text = match std::fs::read_to_string(Path::new(&args.envoy)) {
        Ok(text) => text,
        Err(e) => return RunOutput::failure(format!("cannot read {}: {e}", args.envoy)),
    };
    let envoy = match parse_envoy(&envoy_text) {
        Ok(value) => value,
        Err(e) => return RunOutput::failure(format!("{} is not valid YAML/JSON: {e}", args.envoy)),
    };
    let policy = match &args.policy {
        Some(path) => match std::fs::read(Path::new(path)) {
            Ok(bytes) => Some(bytes),
            Err(e) => return RunOutput::failure(format!("cannot read {path}: {e}")),
        },
        None => None,
    };
    let options = Options {
        policy: policy.as_deref(),
        host: args.host.as_deref(),
    };
    let mut report = match validate(&envoy, &options) {
        Ok(report) => report,
        Err(e) => return RunOutput::failure(format!("{}: {e}", args.envoy)),
    };
    if let Some(path) = &args.running {
        let running = match std::fs::read_to_string(Path::new(path)) {
            Ok(text) => match parse_envoy(&text) {
                Ok(value) => value,
                Err(e) => return RunOutput::failure(format!("{path} is not valid YAML/JSON: {e}")),
            },
            Err(e) => return RunOutput::failure(format!("cannot read {path}: {e}")),
        };
        match super::reload::vm_id_change(&envoy, &running) {
            Ok(finding) => report.findings.extend(finding),
            Err(e) => return RunOutput::failure(format!("{path}: {e}")),
        }
    }
    let mut notice = String::new();
    if let Some(path) = &args.write_ecds {
        if !report.ok() {
            notice =
                format!("not written: {path} (the policy has errors; the running one stays)\n");
        } else {
            // Without --policy: the bootstrap's own (default) policy.
            let policy_text = match &policy {
                Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                None => match super::reload::ecds_default_policy(&envoy) {
                    Some(text) => text,
                    None => return RunOutput::failure(
                        "--write-ecds needs --policy (the Envoy config has no ECDS default policy)",
                    ),
                },
            };
            let resource = match super::reload::ecds_resource(&envoy, &policy_text) {
                Ok(resource) => resource,
                Err(e) => return RunOutput::failure(format!("{}: {e}", args.envoy)),
            };
            let mut text = serde_json::to_string_pretty(&resource).unwrap_or_default();
            text.push('\n');
            if let Err(e) = write_atomically(Path::new(path), &text) {
                return RunOutput::failure(format!("cannot write {path}: {e}"));
            }
            notice = format!("wrote {path}\n");
        }
    }
    let stdout = if args.json {
        let mut text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        text.push('\n');
        text
    } else {
        report.to_text()
    };
    RunOutput {
        code: if report.ok() { 0 } else { 1 },
        stdout,
        stderr: notice,
    }
}

/// Writes `text` next to `path`, then renames it onto `path`: a watcher
/// (Envoy's file-based ECDS) sees the old file or the new one, never half.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
