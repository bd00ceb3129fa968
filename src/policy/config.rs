//! Stage one of the policy: the JSON document as written, parsed by serde.
//!
//! Owns the public field names (a contract with users: keep them, extend
//! freely) and their defaults. Never checks cross-field rules; that is
//! `compile`'s job, so that every rule has exactly one place.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::duration::Millis;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub unknown_route: UnknownRoute,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub status: StatusConfig,
    #[serde(default)]
    pub websocket: Option<WebSocketConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub health_checks: Option<HealthChecksConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub prefix: String,
    pub cluster: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub websocket: bool,
    /// Only with `websocket: true`: open connections allowed on this route.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Overrides `health_checks.path` for this route's cluster.
    #[serde(default)]
    pub health_check_path: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownRoute {
    #[default]
    Reject,
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "default_classes")]
    pub classes: BTreeMap<String, TimeoutClassConfig>,
    #[serde(default = "default_class_name")]
    pub default_class: String,
    #[serde(default)]
    pub load_balancer_idle_timeout: Option<Millis>,
    #[serde(default = "default_lb_margin")]
    pub load_balancer_margin: Millis,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            classes: default_classes(),
            default_class: default_class_name(),
            load_balancer_idle_timeout: None,
            load_balancer_margin: default_lb_margin(),
        }
    }
}

fn default_classes() -> BTreeMap<String, TimeoutClassConfig> {
    BTreeMap::from([(
        "standard".to_string(),
        TimeoutClassConfig::Single(Millis(30_000)),
    )])
}

fn default_class_name() -> String {
    "standard".to_string()
}

fn default_lb_margin() -> Millis {
    Millis(5_000)
}

/// `"30s"` (total = response) or `{"total": "120s", "response": "55s"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a duration such as \"30s\", or {\"total\": \"120s\", \"response\": \"55s\"}"
)]
pub enum TimeoutClassConfig {
    Single(Millis),
    Split(SplitTimeout),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTimeout {
    pub total: Millis,
    pub response: Millis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    #[serde(default = "default_status_path")]
    pub path: String,
    #[serde(default = "default_status_cidrs")]
    pub allow_cidrs: Vec<String>,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            path: default_status_path(),
            allow_cidrs: default_status_cidrs(),
        }
    }
}

fn default_status_path() -> String {
    "/.edge-guard/status".to_string()
}

fn default_status_cidrs() -> Vec<String> {
    vec!["127.0.0.0/8".to_string(), "::1/128".to_string()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_connections_per_user: Option<u32>,
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    #[serde(default)]
    pub require_identity: bool,
    #[serde(default)]
    pub max_message_bytes: Option<u64>,
    #[serde(default)]
    pub max_messages_per_second: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<Millis>,
    #[serde(default)]
    pub max_duration: Option<Millis>,
}

/// `{"header": "x-user-id"}` or `{"jwt": {"payload_key": "jwt_payload", "claim": "sub"}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum IdentityConfig {
    Header(String),
    Jwt(JwtIdentityConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIdentityConfig {
    pub payload_key: String,
    pub claim: String,
    /// The filter namespace jwt_authn writes its metadata under.
    #[serde(default = "default_jwt_namespace")]
    pub metadata_namespace: String,
}

fn default_jwt_namespace() -> String {
    "envoy.filters.http.jwt_authn".to_string()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub on_mismatch: OnMismatch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMismatch {
    #[default]
    Log,
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecksConfig {
    #[serde(default = "default_hc_interval")]
    pub interval: Millis,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Millis,
    #[serde(default = "default_hc_path")]
    pub path: String,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_true")]
    pub fail_fast: bool,
}

fn default_hc_interval() -> Millis {
    Millis(10_000)
}
fn default_hc_timeout() -> Millis {
    Millis(2_000)
}
fn default_hc_path() -> String {
    "/health".to_string()
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
