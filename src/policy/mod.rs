//! The policy: parsed once from the filter's configuration, then compiled into
//! an immutable `Policy` that every request on the worker shares.
//!
//! Owns every validation rule and the error a user sees for a bad policy (the
//! field path, what is wrong, and how to fix it). Never talks to the host:
//! `on_configure` hands it bytes and gets a `Policy` or one `ConfigError`.

pub mod cidr;
pub mod config;
pub mod duration;

use std::collections::BTreeMap;
use std::fmt;

use hashbrown::HashMap;

pub use cidr::Cidr;
pub use config::{Direction, OnMismatch, PolicyConfig, UnknownRoute};
pub use duration::Millis;

use crate::egress::{parse_host_pattern, DestinationTable, HostPattern};
use crate::engine_io::EngineIoPolicy;
use crate::routing::{normalise_prefix, Method, MethodSet, RouteMatch, RouteTable};
use config::{EngineIoConfig, IdentityConfig, TimeoutClassConfig};

/// A refused policy: where, what, and the fix, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path in the policy JSON, e.g. `routes[2].timeout`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.path, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// One declared route, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: std::rc::Rc<str>,
    /// Egress routes only: the destination host.
    pub host: Option<HostPattern>,
    pub prefix: String,
    pub methods: MethodSet,
    pub cluster: String,
    /// Index into `Policy::clusters`.
    pub cluster_index: usize,
    /// Index into `Policy::timeout_classes`.
    pub timeout_class: usize,
    pub websocket: bool,
    pub max_connections: Option<u32>,
    /// Engine.IO sessions are the unit of this route's limits.
    pub engine_io: Option<EngineIoPolicy>,
}

/// A deadline class: `total` bounds the exchange from the first request byte
/// until the response headers leave; `response` bounds the upstream's answer
/// once the request is fully received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutClass {
    pub name: String,
    pub total: Millis,
    pub response: Millis,
}

#[derive(Debug, Clone)]
pub struct StatusEndpoint {
    pub path: String,
    pub allow: Vec<Cidr>,
}

/// The instance's health endpoint (for load balancers): `GET`/`HEAD`.
#[derive(Debug, Clone)]
pub struct HealthEndpoint {
    pub path: String,
    pub allow: Vec<Cidr>,
}

/// How long a drain (`POST <status.path>/drain`) takes to close every open
/// WebSocket, when `websocket.drain_period` is not set.
pub const DEFAULT_DRAIN_PERIOD: Millis = Millis(30_000);

/// Where the identity of a WebSocket user comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A request header set by a trusted filter earlier in the chain.
    Header(String),
    /// A claim of the verified JWT payload that jwt_authn wrote to dynamic
    /// metadata (`payload_in_metadata`); a client-sent header never counts.
    Jwt {
        metadata_namespace: String,
        payload_key: String,
        claim: String,
    },
}

/// Limits every upgraded connection is held to, read from its frames.
pub use crate::websocket::monitor::ConnectionLimits;

#[derive(Debug, Clone)]
pub struct WebSocketPolicy {
    pub max_connections: Option<u32>,
    pub max_connections_per_user: Option<u32>,
    pub identity: Option<Identity>,
    pub require_identity: bool,
    pub connection: ConnectionLimits,
}

#[derive(Debug, Clone)]
pub struct HealthPolicy {
    pub interval: Millis,
    pub timeout: Millis,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub fail_fast: bool,
}

/// A distinct upstream cluster named by at least one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub health_path: String,
}

/// The compiled, immutable policy.
#[derive(Debug)]
pub struct Policy {
    pub direction: Direction,
    pub routes: Vec<Route>,
    /// Ingress: the routes by prefix (empty on egress).
    pub route_table: RouteTable,
    /// Egress: the routes by destination host, then prefix (empty on ingress).
    pub destinations: DestinationTable,
    pub unknown_route: UnknownRoute,
    pub timeout_classes: Vec<TimeoutClass>,
    /// Index into `timeout_classes`: routes without `timeout`, and requests
    /// on no declared route when `unknown_route` is `allow`.
    pub default_class: usize,
    pub load_balancer_idle_timeout: Option<Millis>,
    pub load_balancer_margin: Millis,
    pub status: StatusEndpoint,
    pub websocket: WebSocketPolicy,
    pub on_mismatch: OnMismatch,
    pub health: Option<HealthPolicy>,
    pub clusters: Vec<Cluster>,
    pub health_endpoint: HealthEndpoint,
    /// Over how long a drain closes the open WebSockets.
    pub drain_period: Millis,
    /// `metrics.request_duration`: record the per-route duration histogram.
    pub request_duration_histogram: bool,
    /// Valid but probably not what was meant: logged at startup, reported by the
    /// offline validator.
    pub warnings: Vec<PolicyWarning>,
}

/// A policy that compiles but is probably wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    /// Stable id, e.g. `engine_io_missing`.
    pub id: &'static str,
    pub route: String,
    pub message: String,
}

impl Policy {
    /// Parses and compiles the policy JSON; the first problem found is returned.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, ConfigError> {
        let config = parse(bytes)?;
        compile(&config)
    }

    pub fn route(&self, id: usize) -> Option<&Route> {
        self.routes.get(id)
    }

    /// The declared route of a request: by path on ingress, by destination
    /// host (`:authority`) then path on egress.
    pub fn resolve(&self, authority: &str, path: &str, method: Method) -> RouteMatch {
        match self.direction {
            Direction::Ingress => self.route_table.resolve(path, method),
            Direction::Egress => self.destinations.resolve(authority, path, method),
        }
    }

    pub fn class_of(&self, route: &Route) -> Option<&TimeoutClass> {
        self.timeout_classes.get(route.timeout_class)
    }

    pub fn has_websocket_routes(&self) -> bool {
        self.routes.iter().any(|r| r.websocket)
    }
}

/// Stage one: JSON → `PolicyConfig`, with the failing field's path.
pub fn parse(bytes: &[u8]) -> Result<PolicyConfig, ConfigError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ConfigError::new(
            "",
            format!("the policy is not valid JSON ({e}); fix the JSON syntax"),
        )
    })?;
    PolicyConfig::from_value(&value)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const NAME_RULE: &str =
    "use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-' (it becomes part of metric names)";

/// Stage two: cross-field rules and the runtime structures.
pub fn compile(config: &PolicyConfig) -> Result<Policy, ConfigError> {
    let timeout_classes = compile_timeouts(config)?;
    let class_index: HashMap<&str, usize> = timeout_classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let default_class = *class_index
        .get(config.timeouts.default_class.as_str())
        .ok_or_else(|| {
            ConfigError::new(
                "timeouts.default_class",
                format!(
                    "unknown timeout class \"{}\"; defined classes: {}",
                    config.timeouts.default_class,
                    class_names(&timeout_classes)
                ),
            )
        })?;

    if config.routes.is_empty() {
        return Err(ConfigError::new(
            "routes",
            "no routes declared; declare at least one route, e.g. {\"name\": \"api\", \"prefix\": \"/api\", \"cluster\": \"api_service\"}",
        ));
    }

    let mut routes: Vec<Route> = Vec::with_capacity(config.routes.len());
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut health_path_set_by: HashMap<String, usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut by_prefix: HashMap<String, Vec<usize>> = HashMap::new();
    let default_health_path = config
        .health_checks
        .as_ref()
        .map_or("/health", |h| h.path.as_str());

    for (i, rc) in config.routes.iter().enumerate() {
        let at = |field: &str| format!("routes[{i}].{field}");
        if !valid_name(&rc.name) {
            return Err(ConfigError::new(
                at("name"),
                format!("invalid route name \"{}\"; {NAME_RULE}", rc.name),
            ));
        }
        if let Some(first) = names.insert(rc.name.as_str(), i) {
            return Err(ConfigError::new(
                at("name"),
                format!("duplicate route name \"{}\" (also routes[{first}]); give every route a unique name", rc.name),
            ));
        }
        let host = match (config.direction, &rc.host) {
            (Direction::Ingress, None) => None,
            (Direction::Ingress, Some(_)) => {
                return Err(ConfigError::new(
                    at("host"),
                    "host is for egress policies (a destination of the services' outbound calls); remove it, or set \"direction\": \"egress\" at the top of the policy",
                ))
            }
            (Direction::Egress, None) => {
                return Err(ConfigError::new(
                    at("host"),
                    "missing field `host`: every egress route names its destination host, e.g. \"host\": \"sms.example.com\" or \"*.example.com\"",
                ))
            }
            (Direction::Egress, Some(text)) => Some(
                parse_host_pattern(text).map_err(|why| ConfigError::new(at("host"), why))?,
            ),
        };
        let prefix_text = match (&rc.prefix, config.direction) {
            (Some(prefix), _) => prefix.as_str(),
            (None, Direction::Egress) => "/",
            (None, Direction::Ingress) => {
                return Err(ConfigError::new(at("prefix"), "missing field `prefix`"))
            }
        };
        let prefix = normalise_prefix(prefix_text).map_err(|why| {
            ConfigError::new(at("prefix"), format!("prefix \"{prefix_text}\" {why}"))
        })?;
        if rc.cluster.is_empty() {
            return Err(ConfigError::new(
                at("cluster"),
                "empty cluster; name the Envoy cluster this route is sent to",
            ));
        }
        let methods = match &rc.methods {
            None => MethodSet::ANY,
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    at("methods"),
                    "empty method list; list methods such as [\"GET\"], or leave the field out to allow every method",
                ))
            }
            Some(list) => {
                let mut set = MethodSet::EMPTY;
                for (j, name) in list.iter().enumerate() {
                    let method = Method::parse_known(name).ok_or_else(|| {
                        ConfigError::new(
                            format!("routes[{i}].methods[{j}]"),
                            format!("unknown method \"{name}\"; use one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE (upper case)"),
                        )
                    })?;
                    set = set.with(method);
                }
                set
            }
        };
        let destination = match &host {
            Some(h) => format!("{}{prefix}", h.as_written()),
            None => prefix.clone(),
        };
        let others = by_prefix.entry(destination.clone()).or_default();
        if let Some(&other) = others.iter().find(|&&o| {
            routes
                .get(o)
                .is_some_and(|r: &Route| r.methods.overlaps(methods))
        }) {
            return Err(ConfigError::new(
                at("prefix"),
                format!(
                    "prefix \"{prefix}\" with these methods is already taken by routes[{other}] ({destination}); use a different prefix or disjoint methods"
                ),
            ));
        }
        others.push(i);

        let timeout_class = match &rc.timeout {
            None => default_class,
            Some(name) => *class_index.get(name.as_str()).ok_or_else(|| {
                ConfigError::new(
                    at("timeout"),
                    format!(
                        "unknown timeout class \"{name}\"; defined classes: {}",
                        class_names(&timeout_classes)
                    ),
                )
            })?,
        };
        if rc.max_connections.is_some() && !rc.websocket {
            return Err(ConfigError::new(
                at("max_connections"),
                "max_connections only applies to WebSocket routes; set \"websocket\": true or remove it",
            ));
        }
        if rc.max_connections == Some(0) {
            return Err(ConfigError::new(
                at("max_connections"),
                "must be at least 1; remove it for no per-route limit",
            ));
        }
        if let Some(path) = &rc.health_check_path {
            if !path.starts_with('/') {
                return Err(ConfigError::new(
                    at("health_check_path"),
                    format!("\"{path}\" must start with \"/\""),
                ));
            }
        }
        let cluster_index = match clusters.iter().position(|c| c.name == rc.cluster) {
            Some(index) => index,
            None => {
                clusters.push(Cluster {
                    name: rc.cluster.clone(),
                    health_path: default_health_path.to_string(),
                });
                clusters.len() - 1
            }
        };
        if let (Some(path), Some(cluster)) =
            (&rc.health_check_path, clusters.get_mut(cluster_index))
        {
            if let Some(&first) = health_path_set_by.get(&rc.cluster) {
                if cluster.health_path != *path {
                    return Err(ConfigError::new(
                        at("health_check_path"),
                        format!(
                            "cluster \"{}\" already has health_check_path \"{}\" from routes[{first}]; one cluster has one health path",
                            rc.cluster, cluster.health_path
                        ),
                    ));
                }
            }
            health_path_set_by.insert(rc.cluster.clone(), i);
            cluster.health_path = path.clone();
        }
        if host.is_some() && rc.websocket {
            return Err(ConfigError::new(
                at("websocket"),
                "WebSocket limits apply at the edge; remove \"websocket\" from egress routes",
            ));
        }
        let engine_io = match &rc.engine_io {
            None => None,
            Some(eio) => {
                let class = timeout_classes
                    .get(timeout_class)
                    .ok_or_else(|| ConfigError::new(at("timeout"), "unknown timeout class"))?;
                Some(compile_engine_io(
                    eio,
                    rc.websocket,
                    class,
                    &at("engine_io"),
                )?)
            }
        };
        routes.push(Route {
            name: rc.name.as_str().into(),
            host,
            prefix,
            methods,
            cluster: rc.cluster.clone(),
            cluster_index,
            timeout_class,
            websocket: rc.websocket,
            max_connections: rc.max_connections,
            engine_io,
        });
    }
    let warnings = routes
        .iter()
        .filter_map(|r| engine_io_missing(r, timeout_classes.get(r.timeout_class)?))
        .collect();

    let status = compile_status(config)?;
    if routes.iter().any(|r| status.path == r.prefix) {
        return Err(ConfigError::new(
            "status.path",
            format!(
                "\"{}\" is also a route prefix; choose a path no route uses",
                status.path
            ),
        ));
    }
    let websocket = compile_websocket(config)?;
    let health = compile_health(config)?;
    let health_endpoint = compile_health_endpoint(config, &status, &routes)?;
    let drain_period = compile_drain_period(config)?;
    let (route_table, destinations) = match config.direction {
        Direction::Ingress => (
            RouteTable::build(routes.iter().map(|r| (r.prefix.as_str(), r.methods))),
            DestinationTable::default(),
        ),
        Direction::Egress => (
            RouteTable::build(std::iter::empty()),
            DestinationTable::build(
                routes
                    .iter()
                    .filter_map(|r| Some((r.host.as_ref()?, r.prefix.as_str(), r.methods))),
            ),
        ),
    };

    // hashbrown's map (unlike std's) may not outlive what its keys borrow.
    drop(class_index);
    Ok(Policy {
        direction: config.direction,
        routes,
        route_table,
        destinations,
        unknown_route: config.unknown_route,
        timeout_classes,
        default_class,
        load_balancer_idle_timeout: config.timeouts.load_balancer_idle_timeout,
        load_balancer_margin: config.timeouts.load_balancer_margin,
        status,
        websocket,
        on_mismatch: config.routing.on_mismatch,
        health,
        clusters,
        health_endpoint,
        drain_period,
        request_duration_histogram: config.metrics.request_duration,
        warnings,
    })
}

fn compile_engine_io(
    config: &EngineIoConfig,
    websocket: bool,
    class: &TimeoutClass,
    at: &str,
) -> Result<EngineIoPolicy, ConfigError> {
    if !websocket {
        return Err(ConfigError::new(
            at,
            "engine_io only applies to WebSocket routes; set \"websocket\": true on the route or remove engine_io",
        ));
    }
    for (field, value) in [
        ("ping_interval", config.ping_interval),
        ("ping_timeout", config.ping_timeout),
    ] {
        if value == Millis::ZERO {
            return Err(ConfigError::new(
                format!("{at}.{field}"),
                "must be greater than zero; use the server's value (socket.io's default is 25s for ping_interval, 20s for ping_timeout)",
            ));
        }
    }
    let (mut polling, mut ws) = (false, false);
    for (i, transport) in config.transports.iter().enumerate() {
        match transport.as_str() {
            "polling" => polling = true,
            "websocket" => ws = true,
            other => {
                return Err(ConfigError::new(
                    format!("{at}.transports[{i}]"),
                    format!("unknown transport \"{other}\"; use \"websocket\" and/or \"polling\""),
                ))
            }
        }
    }
    if !polling && !ws {
        return Err(ConfigError::new(
            format!("{at}.transports"),
            "no transport allowed; list \"websocket\", \"polling\" or both",
        ));
    }
    Ok(EngineIoPolicy {
        ping_interval: config.ping_interval,
        ping_timeout: config.ping_timeout,
        polling,
        websocket: ws,
        long_poll: EngineIoPolicy::long_poll_class(
            config.ping_interval,
            config.ping_timeout,
            class,
        ),
    })
}

/// A route that looks like it serves Socket.IO, without `engine_io`, whose class would
/// cut socket.io's long-polls (held up to the default ping interval).
fn engine_io_missing(route: &Route, class: &TimeoutClass) -> Option<PolicyWarning> {
    if route.engine_io.is_some()
        || !crate::engine_io::looks_like_socket_io(&route.prefix)
        || class.response >= crate::engine_io::DEFAULT_PING_INTERVAL
    {
        return None;
    }
    Some(PolicyWarning {
        id: "engine_io_missing",
        route: route.name.to_string(),
        message: format!(
            "route {} looks like Socket.IO ({}) but has no engine_io option, and its class \"{}\" ({}) is shorter than socket.io's ping interval ({}): every long-poll would be cut with 504 and clients would reconnect in a loop; add \"websocket\": true and \"engine_io\": {{}} to the route (long-polls then get ping_interval + ping_timeout), or give it a class of at least {}",
            route.name,
            route.prefix,
            class.name,
            class.response,
            crate::engine_io::DEFAULT_PING_INTERVAL,
            Millis(crate::engine_io::DEFAULT_PING_INTERVAL.as_ms() + crate::engine_io::DEFAULT_PING_TIMEOUT.as_ms()),
        ),
    })
}

fn compile_health_endpoint(
    config: &PolicyConfig,
    status: &StatusEndpoint,
    routes: &[Route],
) -> Result<HealthEndpoint, ConfigError> {
    let h = &config.health;
    let (path, allow) = compile_endpoint("health", &h.path, &h.allow_cidrs)?;
    if path == status.path || routes.iter().any(|r| r.prefix == path) {
        return Err(ConfigError::new(
            "health.path",
            format!("\"{path}\" is also the status path or a route prefix; choose a path nothing else uses"),
        ));
    }
    Ok(HealthEndpoint { path, allow })
}

fn compile_drain_period(config: &PolicyConfig) -> Result<Millis, ConfigError> {
    let period = config
        .websocket
        .as_ref()
        .and_then(|ws| ws.drain_period)
        .unwrap_or(DEFAULT_DRAIN_PERIOD);
    if period.as_ms() == 0 || period.as_ms() > 3_600_000 {
        return Err(ConfigError::new(
            "websocket.drain_period",
            "must be between 1ms and 1h (default 30s): it spreads the closes of a drain over that long",
        ));
    }
    Ok(period)
}

fn class_names(classes: &[TimeoutClass]) -> String {
    // Owned strings, as the other error lists join: one `join` in the wasm.
    classes
        .iter()
        .map(|c| c.name.clone())
        .collect::<Vec<String>>()
        .join(", ")
}

fn compile_timeouts(config: &PolicyConfig) -> Result<Vec<TimeoutClass>, ConfigError> {
    let t = &config.timeouts;
    if t.classes.is_empty() {
        return Err(ConfigError::new(
            "timeouts.classes",
            "no timeout classes; define at least one, e.g. {\"standard\": \"30s\"}",
        ));
    }
    let mut classes = Vec::with_capacity(t.classes.len());
    for (name, class) in &t.classes {
        let at = format!("timeouts.classes.{name}");
        if !valid_name(name) {
            return Err(ConfigError::new(
                at,
                format!("invalid class name; {NAME_RULE}"),
            ));
        }
        let (total, response) = match class {
            TimeoutClassConfig::Single(d) => (*d, *d),
            TimeoutClassConfig::Split(s) => (s.total, s.response),
        };
        if total == Millis::ZERO || response == Millis::ZERO {
            return Err(ConfigError::new(at, "durations must be greater than zero"));
        }
        if response > total {
            return Err(ConfigError::new(
                format!("{at}.response"),
                format!("response ({response}) is longer than total ({total}); make response at most total"),
            ));
        }
        if let Some(lb_idle) = t.load_balancer_idle_timeout {
            let limit = lb_idle.saturating_sub(t.load_balancer_margin);
            if response > limit {
                return Err(ConfigError::new(
                    at,
                    format!(
                        "class \"{name}\" waits up to {response} for a response, but load_balancer_idle_timeout {lb_idle} minus load_balancer_margin {} leaves {limit}: a load balancer in front would cut the silent connection first; raise load_balancer_idle_timeout to at least {}, or lower the class to at most {limit}",
                        t.load_balancer_margin,
                        Millis(response.as_ms().saturating_add(t.load_balancer_margin.as_ms())),
                    ),
                ));
            }
        }
        classes.push(TimeoutClass {
            name: name.clone(),
            total,
            response,
        });
    }
    Ok(classes)
}

fn compile_status(config: &PolicyConfig) -> Result<StatusEndpoint, ConfigError> {
    let s = &config.status;
    let (path, allow) = compile_endpoint("status", &s.path, &s.allow_cidrs)?;
    Ok(StatusEndpoint { path, allow })
}

/// An endpoint the filter answers itself (`<field>.path`, `<field>.allow_cidrs`).
fn compile_endpoint(
    field: &str,
    path: &str,
    cidrs: &[String],
) -> Result<(String, Vec<Cidr>), ConfigError> {
    let normalised = normalise_prefix(path).map_err(|why| {
        ConfigError::new(format!("{field}.path"), format!("path \"{path}\" {why}"))
    })?;
    let allow = cidrs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Cidr::parse(text)
                .map_err(|why| ConfigError::new(format!("{field}.allow_cidrs[{i}]"), why))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((normalised, allow))
}

fn positive<T: PartialEq + Default>(
    value: Option<T>,
    path: &str,
) -> Result<Option<T>, ConfigError> {
    if value == Some(T::default()) {
        return Err(ConfigError::new(
            path,
            "must be greater than zero; remove the field for no limit",
        ));
    }
    Ok(value)
}

fn compile_websocket(config: &PolicyConfig) -> Result<WebSocketPolicy, ConfigError> {
    let Some(ws) = &config.websocket else {
        return Ok(WebSocketPolicy {
            max_connections: None,
            max_connections_per_user: None,
            identity: None,
            require_identity: false,
            connection: ConnectionLimits::default(),
        });
    };
    let max_connections = positive(ws.max_connections, "websocket.max_connections")?;
    let per_user = positive(
        ws.max_connections_per_user,
        "websocket.max_connections_per_user",
    )?;
    if let (Some(user), Some(instance)) = (per_user, max_connections) {
        if user > instance {
            return Err(ConfigError::new(
                "websocket.max_connections_per_user",
                format!("{user} is more than websocket.max_connections ({instance}); lower it to at most {instance}"),
            ));
        }
    }
    let identity = match &ws.identity {
        None => None,
        Some(IdentityConfig::Header(name)) => {
            if name.is_empty()
                || name.starts_with(':')
                || name.bytes().any(|b| b.is_ascii_uppercase() || b == b' ')
            {
                return Err(ConfigError::new(
                    "websocket.identity.header",
                    format!("\"{name}\" is not a usable header name; use a lower-case header such as \"x-user-id\""),
                ));
            }
            Some(Identity::Header(name.clone()))
        }
        Some(IdentityConfig::Jwt(jwt)) => {
            if jwt.payload_key.is_empty() || jwt.claim.is_empty() {
                return Err(ConfigError::new(
                    "websocket.identity.jwt",
                    "payload_key and claim must not be empty; use the payload_in_metadata name of your jwt_authn provider and a claim such as \"sub\"",
                ));
            }
            Some(Identity::Jwt {
                metadata_namespace: jwt.metadata_namespace.clone(),
                payload_key: jwt.payload_key.clone(),
                claim: jwt.claim.clone(),
            })
        }
    };
    if per_user.is_some() && identity.is_none() {
        return Err(ConfigError::new(
            "websocket.identity",
            "max_connections_per_user needs an identity; add \"identity\": {\"header\": \"x-user-id\"} (or a jwt claim)",
        ));
    }
    if ws.require_identity && identity.is_none() {
        return Err(ConfigError::new(
            "websocket.require_identity",
            "require_identity needs an identity source; add \"identity\": {\"header\": \"x-user-id\"} (or a jwt claim)",
        ));
    }
    let connection = ConnectionLimits {
        max_message_bytes: positive(ws.max_message_bytes, "websocket.max_message_bytes")?,
        max_messages_per_second: positive(
            ws.max_messages_per_second,
            "websocket.max_messages_per_second",
        )?,
        idle_timeout_ms: positive(ws.idle_timeout.map(Millis::as_ms), "websocket.idle_timeout")?,
        max_duration_ms: positive(ws.max_duration.map(Millis::as_ms), "websocket.max_duration")?,
    };
    Ok(WebSocketPolicy {
        max_connections,
        max_connections_per_user: per_user,
        identity,
        require_identity: ws.require_identity,
        connection,
    })
}

fn compile_health(config: &PolicyConfig) -> Result<Option<HealthPolicy>, ConfigError> {
    let Some(h) = &config.health_checks else {
        return Ok(None);
    };
    if h.interval < Millis(100) {
        return Err(ConfigError::new(
            "health_checks.interval",
            "must be at least 100ms",
        ));
    }
    if h.timeout == Millis::ZERO || h.timeout > h.interval {
        return Err(ConfigError::new(
            "health_checks.timeout",
            format!(
                "must be greater than zero and at most the interval ({}) so probes never overlap",
                h.interval
            ),
        ));
    }
    if !h.path.starts_with('/') {
        return Err(ConfigError::new(
            "health_checks.path",
            format!("\"{}\" must start with \"/\"", h.path),
        ));
    }
    if h.unhealthy_threshold == 0 {
        return Err(ConfigError::new(
            "health_checks.unhealthy_threshold",
            "must be at least 1",
        ));
    }
    if h.healthy_threshold == 0 {
        return Err(ConfigError::new(
            "health_checks.healthy_threshold",
            "must be at least 1",
        ));
    }
    Ok(Some(HealthPolicy {
        interval: h.interval,
        timeout: h.timeout,
        unhealthy_threshold: h.unhealthy_threshold,
        healthy_threshold: h.healthy_threshold,
        fail_fast: h.fail_fast,
    }))
}

/// Which classes are used by which routes, for the offline validator.
pub fn routes_by_class(policy: &Policy) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for route in &policy.routes {
        if let Some(class) = policy.class_of(route) {
            map.entry(class.name.as_str())
                .or_default()
                .push(&*route.name);
        }
    }
    map
}

#[cfg(test)]
mod tests;
