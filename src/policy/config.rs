//! Stage one of the policy: the JSON document as written, read from
//! serde_json's `Value` field by field.
//!
//! Owns the public field names (a contract with users: keep them, extend
//! freely), their defaults, and the field path of every error. Never checks
//! cross-field rules; that is `compile`'s job, so that every rule has exactly
//! one place. (Hand-written rather than derived: a derive plus path tracking
//! cost ~80 KB of wasm, a quarter of the filter.)

use serde_json::{Map, Value};

use super::duration::{parse_duration, Millis};
use super::ConfigError;

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// `"ingress"` (default): the edge; `"egress"`: services' outbound calls.
    pub direction: Direction,
    pub routes: Vec<RouteConfig>,
    pub unknown_route: UnknownRoute,
    pub timeouts: TimeoutsConfig,
    pub status: StatusConfig,
    pub websocket: Option<WebSocketConfig>,
    pub routing: RoutingConfig,
    pub health_checks: Option<HealthChecksConfig>,
    /// The instance's own health endpoint, for load balancers.
    pub health: HealthEndpointConfig,
    pub metrics: MetricsConfig,
}

/// `metrics`: what edge-guard records beyond its counters and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The per-route `request_duration_ms` histogram. Off by default: Envoy's
    /// own per-route stats (`stat_prefix` on the route) give the same
    /// durations without a clock read and a histogram record per request.
    pub request_duration: bool,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Required on ingress; `/` by default on egress.
    pub prefix: Option<String>,
    /// Egress only (and required there): the destination host.
    pub host: Option<String>,
    pub cluster: String,
    pub methods: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub websocket: bool,
    /// Only with `websocket: true`: open connections allowed on this route.
    pub max_connections: Option<u32>,
    /// Overrides `health_checks.path` for this route's cluster.
    pub health_check_path: Option<String>,
    /// Only with `websocket: true`: Engine.IO sessions are the unit of the limits.
    pub engine_io: Option<EngineIoConfig>,
}

/// `{"ping_interval": "25s", "ping_timeout": "20s", "transports": ["websocket", "polling"]}`.
#[derive(Debug, Clone)]
pub struct EngineIoConfig {
    pub ping_interval: Millis,
    pub ping_timeout: Millis,
    pub transports: Vec<String>,
}

impl EngineIoConfig {
    fn from_value(value: &Value, path: &str) -> Result<EngineIoConfig, ConfigError> {
        let f = Fields::new(
            value,
            path,
            &["ping_interval", "ping_timeout", "transports"],
        )?;
        Ok(EngineIoConfig {
            ping_interval: f
                .duration("ping_interval")?
                .unwrap_or(crate::engine_io::DEFAULT_PING_INTERVAL),
            ping_timeout: f
                .duration("ping_timeout")?
                .unwrap_or(crate::engine_io::DEFAULT_PING_TIMEOUT),
            transports: f
                .strings("transports")?
                .unwrap_or_else(|| vec!["websocket".to_string(), "polling".to_string()]),
        })
    }
}

/// Where the filter runs: in front of the services, or on their way out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownRoute {
    #[default]
    Reject,
    Allow,
}

#[derive(Debug, Clone)]
pub struct TimeoutsConfig {
    /// By name, in name order, each name once (a JSON object's keys: serde_json's
    /// `Map` is sorted). A `Vec`, not a map: only ever iterated, and a
    /// `BTreeMap` of these cost ~7 KB of wasm for its bulk build and sort.
    pub classes: Vec<(String, TimeoutClassConfig)>,
    pub default_class: String,
    pub load_balancer_idle_timeout: Option<Millis>,
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

fn default_classes() -> Vec<(String, TimeoutClassConfig)> {
    vec![(
        "standard".to_string(),
        TimeoutClassConfig::Single(Millis(30_000)),
    )]
}

fn default_class_name() -> String {
    "standard".to_string()
}

fn default_lb_margin() -> Millis {
    Millis(5_000)
}

/// `"30s"` (total = response) or `{"total": "120s", "response": "55s"}`.
#[derive(Debug, Clone)]
pub enum TimeoutClassConfig {
    Single(Millis),
    Split(SplitTimeout),
}

#[derive(Debug, Clone)]
pub struct SplitTimeout {
    pub total: Millis,
    pub response: Millis,
}

#[derive(Debug, Clone)]
pub struct StatusConfig {
    pub path: String,
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

#[derive(Debug, Clone)]
pub struct HealthEndpointConfig {
    pub path: String,
    pub allow_cidrs: Vec<String>,
}

impl Default for HealthEndpointConfig {
    fn default() -> Self {
        HealthEndpointConfig {
            path: default_health_path(),
            allow_cidrs: default_health_cidrs(),
        }
    }
}

fn default_health_path() -> String {
    "/.edge-guard/health".to_string()
}

/// Everywhere: load balancers probe from their own addresses.
fn default_health_cidrs() -> Vec<String> {
    vec!["0.0.0.0/0".to_string(), "::/0".to_string()]
}

#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    pub max_connections: Option<u32>,
    pub max_connections_per_user: Option<u32>,
    pub identity: Option<IdentityConfig>,
    pub require_identity: bool,
    pub max_message_bytes: Option<u64>,
    pub max_messages_per_second: Option<u32>,
    pub idle_timeout: Option<Millis>,
    pub max_duration: Option<Millis>,
    /// Over how long a drain closes the open connections.
    pub drain_period: Option<Millis>,
}

/// `{"header": "x-user-id"}` or `{"jwt": {"payload_key": "jwt_payload", "claim": "sub"}}`.
#[derive(Debug, Clone)]
pub enum IdentityConfig {
    Header(String),
    Jwt(JwtIdentityConfig),
}

#[derive(Debug, Clone)]
pub struct JwtIdentityConfig {
    pub payload_key: String,
    pub claim: String,
    /// The filter namespace jwt_authn writes its metadata under.
    pub metadata_namespace: String,
}

fn default_jwt_namespace() -> String {
    "envoy.filters.http.jwt_authn".to_string()
}

#[derive(Debug, Clone, Default)]
pub struct RoutingConfig {
    pub on_mismatch: OnMismatch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnMismatch {
    #[default]
    Log,
    Reject,
}

#[derive(Debug, Clone)]
pub struct HealthChecksConfig {
    pub interval: Millis,
    pub timeout: Millis,
    pub path: String,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
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

/// One JSON object being read: knows its path, refuses unknown fields.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: &str, value: &Value, expected: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!("expected {expected}, found {}", kind_of(value)),
    )
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    value
        .as_object()
        .ok_or_else(|| wrong_type(path, value, "an object"))
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, path: &str, known: &[&str]) -> Result<Fields<'a>, ConfigError> {
        let map = as_object(value, path)?;
        if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
            let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            return Err(ConfigError::new(
                join(path, key),
                format!(
                    "unknown field `{key}`, expected one of {}",
                    expected.join(", ")
                ),
            ));
        }
        Ok(Fields {
            path: path.to_string(),
            map,
        })
    }

    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The field's value; an explicit `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required<T>(
        &self,
        key: &str,
        read: impl FnOnce(&Self, &str) -> Result<Option<T>, ConfigError>,
    ) -> Result<T, ConfigError> {
        read(self, key)?
            .ok_or_else(|| ConfigError::new(self.at(key), format!("missing field `{key}`")))
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong_type(&self.at(key), v, "a string"))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| wrong_type(&self.at(key), v, "true or false"))
            })
            .transpose()
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| wrong_type(&self.at(key), v, "a whole number ≥ 0"))
            })
            .transpose()
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        self.u64(key)?
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| ConfigError::new(self.at(key), format!("{n} is too large")))
            })
            .transpose()
    }

    fn duration(&self, key: &str) -> Result<Option<Millis>, ConfigError> {
        self.get(key)
            .map(|v| duration_at(v, &self.at(key)))
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let path = self.at(key);
        let items = value
            .as_array()
            .ok_or_else(|| wrong_type(&path, value, "an array of strings"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong_type(&format!("{path}[{i}]"), item, "a string"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<Option<T>, ConfigError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        options
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| *value)
            .map(Some)
            .ok_or_else(|| {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
                ConfigError::new(
                    self.at(key),
                    format!(
                        "unknown value `{text}`, expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

fn duration_at(value: &Value, path: &str) -> Result<Millis, ConfigError> {
    let text = value
        .as_str()
        .ok_or_else(|| wrong_type(path, value, "a duration string such as \"30s\""))?;
    parse_duration(text).map_err(|e| ConfigError::new(path, e.to_string()))
}

impl PolicyConfig {
    /// Reads the policy document; the error names the first bad field.
    pub fn from_value(value: &Value) -> Result<PolicyConfig, ConfigError> {
        let f = Fields::new(
            value,
            "",
            &[
                "direction",
                "routes",
                "unknown_route",
                "timeouts",
                "status",
                "websocket",
                "routing",
                "health_checks",
                "health",
                "metrics",
            ],
        )?;
        let routes_value = f
            .get("routes")
            .ok_or_else(|| ConfigError::new("routes", "missing field `routes`"))?;
        let routes = routes_value
            .as_array()
            .ok_or_else(|| wrong_type("routes", routes_value, "an array of routes"))?
            .iter()
            .enumerate()
            .map(|(i, route)| RouteConfig::from_value(route, &format!("routes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PolicyConfig {
            direction: f
                .choice(
                    "direction",
                    &[
                        ("ingress", Direction::Ingress),
                        ("egress", Direction::Egress),
                    ],
                )?
                .unwrap_or_default(),
            routes,
            unknown_route: f
                .choice(
                    "unknown_route",
                    &[
                        ("reject", UnknownRoute::Reject),
                        ("allow", UnknownRoute::Allow),
                    ],
                )?
                .unwrap_or_default(),
            timeouts: f
                .get("timeouts")
                .map(|v| TimeoutsConfig::from_value(v, "timeouts"))
                .transpose()?
                .unwrap_or_default(),
            status: f
                .get("status")
                .map(|v| StatusConfig::from_value(v, "status"))
                .transpose()?
                .unwrap_or_default(),
            websocket: f
                .get("websocket")
                .map(|v| WebSocketConfig::from_value(v, "websocket"))
                .transpose()?,
            routing: match f.get("routing") {
                Some(v) => {
                    let r = Fields::new(v, "routing", &["on_mismatch"])?;
                    RoutingConfig {
                        on_mismatch: r
                            .choice(
                                "on_mismatch",
                                &[("log", OnMismatch::Log), ("reject", OnMismatch::Reject)],
                            )?
                            .unwrap_or_default(),
                    }
                }
                None => RoutingConfig::default(),
            },
            health_checks: f
                .get("health_checks")
                .map(|v| HealthChecksConfig::from_value(v, "health_checks"))
                .transpose()?,
            health: match f.get("health") {
                Some(v) => {
                    let h = Fields::new(v, "health", &["path", "allow_cidrs"])?;
                    HealthEndpointConfig {
                        path: h.string("path")?.unwrap_or_else(default_health_path),
                        allow_cidrs: h
                            .strings("allow_cidrs")?
                            .unwrap_or_else(default_health_cidrs),
                    }
                }
                None => HealthEndpointConfig::default(),
            },
            metrics: match f.get("metrics") {
                Some(v) => {
                    let m = Fields::new(v, "metrics", &["request_duration"])?;
                    MetricsConfig {
                        request_duration: m.bool("request_duration")?.unwrap_or(false),
                    }
                }
                None => MetricsConfig::default(),
            },
        })
    }
}

impl RouteConfig {
    fn from_value(value: &Value, path: &str) -> Result<RouteConfig, ConfigError> {
        let f = Fields::new(
            value,
            path,
            &[
                "name",
                "host",
                "prefix",
                "cluster",
                "methods",
                "timeout",
                "websocket",
                "max_connections",
                "health_check_path",
                "engine_io",
            ],
        )?;
        Ok(RouteConfig {
            name: f.required("name", Fields::string)?,
            prefix: f.string("prefix")?,
            host: f.string("host")?,
            cluster: f.required("cluster", Fields::string)?,
            methods: f.strings("methods")?,
            timeout: f.string("timeout")?,
            websocket: f.bool("websocket")?.unwrap_or(false),
            max_connections: f.u32("max_connections")?,
            health_check_path: f.string("health_check_path")?,
            engine_io: f
                .get("engine_io")
                .map(|v| EngineIoConfig::from_value(v, &f.at("engine_io")))
                .transpose()?,
        })
    }
}

impl TimeoutsConfig {
    fn from_value(value: &Value, path: &str) -> Result<TimeoutsConfig, ConfigError> {
        let f = Fields::new(
            value,
            path,
            &[
                "classes",
                "default_class",
                "load_balancer_idle_timeout",
                "load_balancer_margin",
            ],
        )?;
        let classes = match f.get("classes") {
            None => default_classes(),
            Some(v) => as_object(v, &f.at("classes"))?
                .iter()
                .map(|(name, class)| {
                    let at = format!("{}.{name}", f.at("classes"));
                    let parsed = match class {
                        Value::Object(_) => {
                            let c = Fields::new(class, &at, &["total", "response"])?;
                            TimeoutClassConfig::Split(SplitTimeout {
                                total: c.required("total", Fields::duration)?,
                                response: c.required("response", Fields::duration)?,
                            })
                        }
                        Value::String(_) => TimeoutClassConfig::Single(duration_at(class, &at)?),
                        other => {
                            return Err(wrong_type(
                                &at,
                                other,
                                "a duration such as \"30s\", or {\"total\": \"120s\", \"response\": \"55s\"}",
                            ))
                        }
                    };
                    Ok((name.clone(), parsed))
                })
                .collect::<Result<Vec<_>, ConfigError>>()?,
        };
        Ok(TimeoutsConfig {
            classes,
            default_class: f
                .string("default_class")?
                .unwrap_or_else(default_class_name),
            load_balancer_idle_timeout: f.duration("load_balancer_idle_timeout")?,
            load_balancer_margin: f
                .duration("load_balancer_margin")?
                .unwrap_or_else(default_lb_margin),
        })
    }
}

impl StatusConfig {
    fn from_value(value: &Value, path: &str) -> Result<StatusConfig, ConfigError> {
        let f = Fields::new(value, path, &["path", "allow_cidrs"])?;
        Ok(StatusConfig {
            path: f.string("path")?.unwrap_or_else(default_status_path),
            allow_cidrs: f
                .strings("allow_cidrs")?
                .unwrap_or_else(default_status_cidrs),
        })
    }
}

impl WebSocketConfig {
    fn from_value(value: &Value, path: &str) -> Result<WebSocketConfig, ConfigError> {
        let f = Fields::new(
            value,
            path,
            &[
                "max_connections",
                "max_connections_per_user",
                "identity",
                "require_identity",
                "max_message_bytes",
                "max_messages_per_second",
                "idle_timeout",
                "max_duration",
                "drain_period",
            ],
        )?;
        let identity = match f.get("identity") {
            None => None,
            Some(v) => {
                let at = f.at("identity");
                let id = Fields::new(v, &at, &["header", "jwt"])?;
                match (id.get("header"), id.get("jwt")) {
                    (Some(_), None) => Some(IdentityConfig::Header(id.required("header", Fields::string)?)),
                    (None, Some(jwt)) => {
                        let j = Fields::new(jwt, &id.at("jwt"), &["payload_key", "claim", "metadata_namespace"])?;
                        Some(IdentityConfig::Jwt(JwtIdentityConfig {
                            payload_key: j.required("payload_key", Fields::string)?,
                            claim: j.required("claim", Fields::string)?,
                            metadata_namespace: j.string("metadata_namespace")?.unwrap_or_else(default_jwt_namespace),
                        }))
                    }
                    _ => {
                        return Err(ConfigError::new(
                            at,
                            "give exactly one of {\"header\": \"x-user-id\"} or {\"jwt\": {\"payload_key\": ..., \"claim\": ...}}",
                        ))
                    }
                }
            }
        };
        Ok(WebSocketConfig {
            max_connections: f.u32("max_connections")?,
            max_connections_per_user: f.u32("max_connections_per_user")?,
            identity,
            require_identity: f.bool("require_identity")?.unwrap_or(false),
            max_message_bytes: f.u64("max_message_bytes")?,
            max_messages_per_second: f.u32("max_messages_per_second")?,
            idle_timeout: f.duration("idle_timeout")?,
            max_duration: f.duration("max_duration")?,
            drain_period: f.duration("drain_period")?,
        })
    }
}

impl HealthChecksConfig {
    fn from_value(value: &Value, path: &str) -> Result<HealthChecksConfig, ConfigError> {
        let f = Fields::new(
            value,
            path,
            &[
                "interval",
                "timeout",
                "path",
                "unhealthy_threshold",
                "healthy_threshold",
                "fail_fast",
            ],
        )?;
        Ok(HealthChecksConfig {
            interval: f.duration("interval")?.unwrap_or_else(default_hc_interval),
            timeout: f.duration("timeout")?.unwrap_or_else(default_hc_timeout),
            path: f.string("path")?.unwrap_or_else(default_hc_path),
            unhealthy_threshold: f
                .u32("unhealthy_threshold")?
                .unwrap_or_else(default_unhealthy_threshold),
            healthy_threshold: f
                .u32("healthy_threshold")?
                .unwrap_or_else(default_healthy_threshold),
            fail_fast: f.bool("fail_fast")?.unwrap_or(true),
        })
    }
}
