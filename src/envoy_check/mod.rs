//! Offline validation of an edge-guard policy against an Envoy configuration
//! (a bootstrap, or a live admin `/config_dump`).
//!
//! Owns the findings (stable ids, severities, messages that name the policy
//! route, the Envoy object and the fix), the Envoy model they are computed on
//! (`model`), the simulation of Envoy's routing (`matching`, `regex`) and the
//! command line of `edge-guard-validate` (`cli::run`).
//!
//! Must never: import `proxy_wasm` or `serde_norway` (the binary turns YAML into
//! a `serde_json::Value` before calling in), or run inside Envoy. It works on
//! values only, so every check is a native unit test.
//!
//! Finding ids (severity):
//! - `policy_invalid` (error): the policy does not compile (includes the
//!   load-balancer rule); `policy_differs` (warning): `--policy` and the
//!   filter's embedded configuration disagree.
//! - `cluster_missing` (error).
//! - `route_unrouted`, `route_wrong_cluster` (errors); `route_split_cluster`,
//!   `cluster_not_simulated`, `regex_not_simulated`, `host_assumed`,
//!   `envoy_route_shadowed` (warnings).
//! - `envoy_route_not_in_policy` (warning, error when `unknown_route: reject`).
//! - `websocket_not_upgradeable` (error); `websocket_idle_cut` (warning).
//! - `filter_missing`, `filter_after_router`, `filter_no_vm_id`,
//!   `filter_fail_open` (errors).
//! - `hcm_stream_idle_timeout_short`, `hcm_request_timeout_short`,
//!   `route_idle_timeout_short` (errors); `request_headers_timeout_missing`,
//!   `route_timeout_short` (warnings).
//! - Edge settings (`edge`): `local_reply_config_missing` (error),
//!   `headers_with_underscores_allowed` (error when the identity is a header,
//!   else warning); `path_normalization_missing`, `escaped_slashes_kept`,
//!   `remote_address_untrusted`, `http2_limits_missing`,
//!   `upgrade_type_refused`, `connection_limit_missing`,
//!   `overload_manager_missing` (warnings).
//! - `egress_budget_header_stripped` (warning): an egress-mode listener
//!   without `internal_address_config`, so Envoy drops the forwarded budget;
//!   `vm_id_shared_across_directions` (warning): edge and egress filters
//!   under one `vm_id`.
//! - `route_config_missing` (error for a config_dump, warning for a
//!   bootstrap), `route_config_not_simulated`, `envoy_dynamic`,
//!   `envoy_unreadable` (warnings).

mod checks;
mod cli;
pub mod edge;
mod matching;
pub mod model;
mod regex;
pub mod reload;

#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::{json, Value};

pub use checks::{validate, Options};
pub use cli::{parse_json_document, run, RunOutput, USAGE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One inconsistency between the policy and Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable identifier, e.g. `route_wrong_cluster`.
    pub id: &'static str,
    pub severity: Severity,
    /// `routes[0] "courses"`, when the finding is about a policy route.
    pub policy_route: Option<String>,
    /// `listener "main"`, `route_config "local" virtual_host "backend" routes[2]`…
    pub envoy_object: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Finding {
    /// `error[route_wrong_cluster] routes[0] "courses": …`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.severity.as_str(), self.id)?;
        match (&self.policy_route, &self.envoy_object) {
            (Some(route), _) => write!(f, " {route}")?,
            (None, Some(object)) => write!(f, " {object}")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything found, in check order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Where the checked policy came from (`--policy` or the filter's configuration).
    pub policy_source: String,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    pub fn ok(&self) -> bool {
        self.errors() == 0
    }

    pub fn ids(&self) -> Vec<&'static str> {
        self.findings.iter().map(|f| f.id).collect()
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// One line per finding, then `N errors, M warnings`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for finding in &self.findings {
            out.push_str(&finding.to_string());
            out.push('\n');
        }
        let plural = |n: usize, word: &str| {
            if n == 1 {
                format!("{n} {word}")
            } else {
                format!("{n} {word}s")
            }
        };
        out.push_str(&format!(
            "{}, {} (policy from {})\n",
            plural(self.errors(), "error"),
            plural(self.warnings(), "warning"),
            self.policy_source
        ));
        out
    }

    pub fn to_json(&self) -> Value {
        let findings: Vec<Value> = self
            .findings
            .iter()
            .map(|f| {
                let mut v =
                    json!({"id": f.id, "severity": f.severity.as_str(), "message": f.message});
                if let Some(route) = &f.policy_route {
                    v["policy_route"] = json!(route);
                }
                if let Some(object) = &f.envoy_object {
                    v["envoy_object"] = json!(object);
                }
                v
            })
            .collect();
        json!({
            "ok": self.ok(),
            "errors": self.errors(),
            "warnings": self.warnings(),
            "policy_source": self.policy_source,
            "findings": findings,
        })
    }
}
