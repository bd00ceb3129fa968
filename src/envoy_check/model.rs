//! Envoy's configuration, reduced to the typed pieces the checks read.
//!
//! Owns reading a bootstrap (`static_resources`) or an admin `/config_dump`
//! (`configs[]`) into [`EnvoyConfig`], Envoy's defaults for absent fields, and
//! protobuf `Duration` strings. Never judges anything: a field it cannot read
//! becomes an `envoy_unreadable` note, and the checks decide what matters.

use serde_json::Value;

use super::{Finding, Severity};
use crate::policy::Millis;

/// Envoy's default `stream_idle_timeout` when the HCM does not set one.
pub const DEFAULT_STREAM_IDLE: Millis = Millis(300_000);
/// Envoy's default route `timeout` when the route does not set one.
pub const DEFAULT_ROUTE_TIMEOUT: Millis = Millis(15_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Bootstrap,
    ConfigDump,
}

/// Everything the checks look at.
#[derive(Debug)]
pub struct EnvoyConfig {
    pub source: Source,
    pub hcms: Vec<Hcm>,
    /// Route configurations that HCMs can name through RDS.
    pub route_configs: Vec<RouteConfiguration>,
    /// Cluster names; `None` when they are not in this document (CDS).
    pub clusters: Option<Vec<String>>,
    /// What could not be read or checked, as warnings.
    pub notes: Vec<Finding>,
    /// Connection limits and the overload manager.
    pub process: super::edge::ProcessLimits,
}

/// One `envoy.filters.network.http_connection_manager`.
#[derive(Debug)]
pub struct Hcm {
    /// How messages name it: `listener "main"` (plus `filter_chains[i]` when
    /// the listener has several HCMs).
    pub label: String,
    pub http_filters: Vec<HttpFilter>,
    pub routes: RouteSource,
    /// As written; `None` means Envoy's default (5 minutes).
    pub stream_idle_timeout: Option<Millis>,
    /// As written; `None` (the default) and `0s` disable it.
    pub request_timeout: Option<Millis>,
    pub request_headers_timeout: Option<Millis>,
    /// `common_http_protocol_options.max_stream_duration`.
    pub max_stream_duration: Option<Millis>,
    /// The HCM's `upgrade_configs` entry for `websocket`, if any.
    pub websocket: Option<Upgrade>,
    /// Path, address, header and HTTP/2 settings and local_reply_config.
    pub edge: super::edge::EdgeSettings,
    /// `internal_address_config.cidr_ranges` is set: Envoy keeps the
    /// `x-envoy-*` headers of callers in those ranges (egress mode needs the
    /// forwarded `x-envoy-expected-rq-timeout-ms`).
    pub internal_callers: bool,
}

impl Hcm {
    /// The stream idle timeout Envoy applies; zero means disabled.
    pub fn effective_stream_idle(&self) -> Millis {
        self.stream_idle_timeout.unwrap_or(DEFAULT_STREAM_IDLE)
    }
}

#[derive(Debug)]
pub struct Upgrade {
    pub enabled: bool,
    /// A custom filter chain for this upgrade type replaces `http_filters`.
    pub filters: Option<Vec<HttpFilter>>,
}

#[derive(Debug)]
pub enum RouteSource {
    Inline(RouteConfiguration),
    Rds(String),
    /// Scoped routes, or nothing readable.
    Unsupported(String),
}

#[derive(Debug)]
pub struct HttpFilter {
    pub name: String,
    pub kind: FilterKind,
    /// `disabled: true`: the filter only runs where a route enables it.
    pub disabled: bool,
    /// Configured through ECDS and read from a bootstrap: `kind` is only the
    /// `default_config`, which serves until the ECDS resource arrives.
    pub ecds_default: bool,
}

#[derive(Debug)]
pub enum FilterKind {
    Router,
    Wasm(WasmFilter),
    Other,
}

#[derive(Debug, Default)]
pub struct WasmFilter {
    pub config_name: String,
    pub root_id: String,
    pub vm_id: String,
    /// `vm_config.code.local.filename`, or the remote URI.
    pub code: String,
    pub fail_open: bool,
    pub failure_policy: Option<String>,
    /// The `configuration` StringValue: the policy, for edge-guard.
    pub configuration: Option<String>,
}

impl WasmFilter {
    pub fn is_edge_guard(&self) -> bool {
        self.config_name == "edge_guard"
            || self.root_id == "edge_guard"
            || self.code.ends_with("edge_guard.wasm")
    }
}

#[derive(Debug)]
pub struct RouteConfiguration {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<EnvoyRoute>,
}

#[derive(Debug)]
pub struct EnvoyRoute {
    /// Position in the virtual host's `routes`.
    pub index: usize,
    pub name: Option<String>,
    pub matcher: RouteMatch,
    pub action: Action,
    /// `route.timeout`; `None` means Envoy's default (15 s), zero disables.
    pub timeout: Option<Millis>,
    /// `route.idle_timeout`: overrides the HCM's `stream_idle_timeout`.
    pub idle_timeout: Option<Millis>,
    /// `route.max_stream_duration.max_stream_duration`.
    pub max_stream_duration: Option<Millis>,
    /// The route's `upgrade_configs` entry for `websocket`: `Some(enabled)`.
    pub websocket: Option<bool>,
    /// `stat_prefix`: Envoy keeps per-route stats (`vhost.<vh>.route.<prefix>.*`).
    pub stat_prefix: Option<String>,
}

impl EnvoyRoute {
    pub fn effective_timeout(&self) -> Millis {
        self.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT)
    }

    /// The clusters this route forwards to, if it names them.
    pub fn clusters(&self) -> Option<&[String]> {
        match &self.action {
            Action::Cluster(c) => Some(std::slice::from_ref(c)),
            Action::Weighted(cs) => Some(cs),
            _ => None,
        }
    }

    pub fn forwards(&self) -> bool {
        matches!(
            self.action,
            Action::Cluster(_)
                | Action::Weighted(_)
                | Action::ClusterHeader(_)
                | Action::ClusterPlugin
        )
    }
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    /// A condition a plain request never meets (query parameters, gRPC, CONNECT…).
    pub other_condition: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    Regex(String),
    SeparatedPrefix(String),
    /// `path_match_policy` (URI templates) and anything newer.
    Unsupported(String),
}

#[derive(Debug)]
pub struct HeaderMatcher {
    pub name: String,
    pub test: HeaderTest,
    pub invert: bool,
}

#[derive(Debug)]
pub enum HeaderTest {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(String),
    Present(bool),
    /// Range matches and anything newer.
    Unsupported,
}

#[derive(Debug)]
pub enum Action {
    Cluster(String),
    Weighted(Vec<String>),
    ClusterHeader(String),
    ClusterPlugin,
    Redirect,
    DirectResponse(u64),
    NonForwarding,
    Unknown,
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Cluster(c) => format!("cluster \"{c}\""),
            Action::Weighted(cs) => format!("weighted_clusters [{}]", quoted_list(cs)),
            Action::ClusterHeader(h) => format!("the cluster named in header \"{h}\""),
            Action::ClusterPlugin => "a cluster_specifier_plugin".to_string(),
            Action::Redirect => "a redirect".to_string(),
            Action::DirectResponse(status) => format!("a direct_response with status {status}"),
            Action::NonForwarding => "a non_forwarding_action".to_string(),
            Action::Unknown => "no action edge-guard-validate understands".to_string(),
        }
    }
}

pub fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Reading JSON

/// A field by its proto name, or its lowerCamelCase JSON name.
pub(super) fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(name).or_else(|| {
        if !name.contains('_') {
            return None;
        }
        let mut camel = String::with_capacity(name.len());
        let mut upper = false;
        for c in name.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                camel.extend(c.to_uppercase());
                upper = false;
            } else {
                camel.push(c);
            }
        }
        obj.get(&camel)
    })
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    field(v, name).and_then(Value::as_str)
}

fn string_field(v: &Value, name: &str) -> String {
    str_field(v, name).unwrap_or_default().to_string()
}

fn array<'a>(v: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    field(v, name)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

pub(super) fn bool_field(v: &Value, name: &str) -> Option<bool> {
    field(v, name).and_then(|b| {
        b.as_bool()
            .or_else(|| field(b, "value").and_then(Value::as_bool))
    })
}

/// `typed_config` with `TypedStruct` wrappers removed: (type URL, fields).
fn typed_config(filter: &Value) -> Option<(&str, &Value)> {
    let typed = field(filter, "typed_config")?;
    let type_url = str_field(typed, "@type").unwrap_or_default();
    if type_url.ends_with("TypedStruct") {
        let inner_type = str_field(typed, "type_url").unwrap_or_default();
        return Some((inner_type, field(typed, "value")?));
    }
    Some((type_url, typed))
}

/// Parses a protobuf `Duration` as JSON writes it (`"15s"`, `"0.5s"`,
/// `"1.250s"`), or the `{seconds, nanos}` object form. Sub-millisecond
/// remainders round up so that a tiny timeout never reads as "disabled".
pub fn parse_envoy_duration(v: &Value) -> Result<Millis, String> {
    if let Some(text) = v.as_str() {
        let bad = || format!("\"{text}\" is not a protobuf Duration such as \"15s\" or \"0.250s\"");
        let number = text.trim().strip_suffix('s').ok_or_else(bad)?;
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 9
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let seconds: u64 = whole.parse().map_err(|_| bad())?;
        let nanos: u64 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
        return to_millis(seconds, nanos).ok_or_else(bad);
    }
    if v.is_object() {
        let number = |name: &str| -> Option<u64> {
            match field(v, name) {
                None => Some(0),
                Some(n) => n
                    .as_u64()
                    .or_else(|| n.as_str().and_then(|s| s.parse().ok())),
            }
        };
        if let (Some(seconds), Some(nanos)) = (number("seconds"), number("nanos")) {
            if let Some(ms) = to_millis(seconds, nanos) {
                return Ok(ms);
            }
        }
    }
    Err(format!("{v} is not a protobuf Duration such as \"15s\""))
}

fn to_millis(seconds: u64, nanos: u64) -> Option<Millis> {
    let ms = seconds
        .checked_mul(1_000)?
        .checked_add(nanos.div_ceil(1_000_000))?;
    Some(Millis(ms))
}

/// Collects notes while reading.
struct Reader {
    notes: Vec<Finding>,
}

impl Reader {
    fn note(&mut self, object: &str, message: String) {
        self.notes.push(Finding {
            id: "envoy_unreadable",
            severity: Severity::Warning,
            policy_route: None,
            envoy_object: Some(object.to_string()),
            message,
        });
    }

    fn duration(&mut self, v: &Value, name: &str, object: &str) -> Option<Millis> {
        let raw = field(v, name)?;
        match parse_envoy_duration(raw) {
            Ok(ms) => Some(ms),
            Err(why) => {
                self.note(object, format!("{name}: {why}; treated as absent"));
                None
            }
        }
    }
}

impl EnvoyConfig {
    /// Reads a bootstrap or a `/config_dump`. Refuses a document that is
    /// neither, since every check would then pass vacuously.
    pub fn from_value(doc: &Value) -> Result<EnvoyConfig, String> {
        let mut reader = Reader { notes: Vec::new() };
        if let Some(configs) = field(doc, "configs").and_then(Value::as_array) {
            return Ok(read_config_dump(configs, &mut reader));
        }
        if field(doc, "static_resources").is_some() || field(doc, "dynamic_resources").is_some() {
            return Ok(read_bootstrap(doc, &mut reader));
        }
        Err("the Envoy document has neither \"static_resources\"/\"dynamic_resources\" (a bootstrap) nor \"configs\" (an admin /config_dump)".to_string())
    }
}

fn read_bootstrap(doc: &Value, reader: &mut Reader) -> EnvoyConfig {
    let statics = field(doc, "static_resources")
        .cloned()
        .unwrap_or(Value::Null);
    let dynamics = field(doc, "dynamic_resources");
    let mut hcms = Vec::new();
    for listener in array(&statics, "listeners") {
        read_listener(listener, &mut hcms, reader);
    }
    if dynamics
        .and_then(|d| field(d, "lds_config").or_else(|| field(d, "lds_resources_locator")))
        .is_some()
    {
        reader.notes.push(dynamic_note(
            "listeners",
            "listeners come from LDS and are not in this file; run the validator on the admin /config_dump to check them",
        ));
    }
    let cds = dynamics
        .and_then(|d| field(d, "cds_config").or_else(|| field(d, "cds_resources_locator")))
        .is_some();
    let static_clusters: Vec<String> = array(&statics, "clusters")
        .map(|c| string_field(c, "name"))
        .collect();
    let clusters = if cds {
        reader.notes.push(dynamic_note(
            "clusters",
            "clusters come from CDS and are not in this file, so cluster_missing was not checked; run the validator on the admin /config_dump",
        ));
        None
    } else {
        Some(static_clusters)
    };
    EnvoyConfig {
        source: Source::Bootstrap,
        hcms,
        route_configs: Vec::new(),
        clusters,
        notes: std::mem::take(&mut reader.notes),
        process: super::edge::read_process(Some(doc), array(&statics, "listeners")),
    }
}

fn dynamic_note(object: &str, message: &str) -> Finding {
    Finding {
        id: "envoy_dynamic",
        severity: Severity::Warning,
        policy_route: None,
        envoy_object: Some(object.to_string()),
        message: message.to_string(),
    }
}

fn read_config_dump(configs: &[Value], reader: &mut Reader) -> EnvoyConfig {
    let mut hcms = Vec::new();
    let mut ecds: Vec<(String, Value)> = Vec::new();
    let mut route_configs = Vec::new();
    let mut clusters: Option<Vec<String>> = None;
    let mut bootstrap = None;
    let mut listeners = Vec::new();
    for config in configs {
        let type_url = str_field(config, "@type").unwrap_or_default();
        if type_url.ends_with(".BootstrapConfigDump") {
            bootstrap = field(config, "bootstrap");
        } else if type_url.ends_with(".ListenersConfigDump") {
            for entry in array(config, "static_listeners") {
                if let Some(listener) = field(entry, "listener") {
                    read_listener(listener, &mut hcms, reader);
                    listeners.push(listener);
                }
            }
            for entry in array(config, "dynamic_listeners") {
                if let Some(listener) =
                    field(entry, "active_state").and_then(|s| field(s, "listener"))
                {
                    read_listener(listener, &mut hcms, reader);
                    listeners.push(listener);
                }
            }
        } else if type_url.ends_with(".ClustersConfigDump") {
            let names = clusters.get_or_insert_with(Vec::new);
            for entry in
                array(config, "static_clusters").chain(array(config, "dynamic_active_clusters"))
            {
                if let Some(cluster) = field(entry, "cluster") {
                    names.push(string_field(cluster, "name"));
                }
            }
        } else if type_url.ends_with(".EcdsConfigDump") {
            for entry in array(config, "ecds_filters") {
                if let Some(ext) = field(entry, "ecds_filter") {
                    if let Some(typed) = field(ext, "typed_config") {
                        ecds.push((string_field(ext, "name"), typed.clone()));
                    }
                }
            }
        } else if type_url.ends_with(".RoutesConfigDump") {
            for entry in
                array(config, "static_route_configs").chain(array(config, "dynamic_route_configs"))
            {
                if let Some(rc) = field(entry, "route_config") {
                    route_configs.push(read_route_configuration(rc, reader));
                }
            }
        }
    }
    apply_ecds(&mut hcms, &ecds);
    if clusters.is_none() {
        reader.notes.push(dynamic_note(
            "clusters",
            "the config_dump has no ClustersConfigDump, so cluster_missing was not checked; dump without a resource filter",
        ));
    }
    EnvoyConfig {
        source: Source::ConfigDump,
        hcms,
        route_configs,
        clusters,
        notes: std::mem::take(&mut reader.notes),
        process: super::edge::read_process(bootstrap, listeners),
    }
}

fn is_hcm(filter: &Value) -> bool {
    let name = str_field(filter, "name").unwrap_or_default();
    let type_url = typed_config(filter).map_or("", |(t, _)| t);
    type_url.ends_with(".HttpConnectionManager")
        || name == "envoy.filters.network.http_connection_manager"
        || name == "envoy.http_connection_manager"
}

fn read_listener(listener: &Value, hcms: &mut Vec<Hcm>, reader: &mut Reader) {
    let name = str_field(listener, "name").unwrap_or("(unnamed)");
    let mut found: Vec<(String, &Value)> = Vec::new();
    for (i, chain) in array(listener, "filter_chains").enumerate() {
        for filter in array(chain, "filters").filter(|f| is_hcm(f)) {
            found.push((format!("filter_chains[{i}]"), filter));
        }
    }
    if let Some(chain) = field(listener, "default_filter_chain") {
        for filter in array(chain, "filters").filter(|f| is_hcm(f)) {
            found.push(("default_filter_chain".to_string(), filter));
        }
    }
    let several = found.len() > 1;
    for (chain, filter) in found {
        let label = if several {
            format!("listener \"{name}\" {chain}")
        } else {
            format!("listener \"{name}\"")
        };
        let config = typed_config(filter).map_or(&Value::Null, |(_, c)| c);
        hcms.push(read_hcm(config, label, reader));
    }
}

fn read_hcm(config: &Value, label: String, reader: &mut Reader) -> Hcm {
    let http_filters = read_http_filters(config);
    let routes = if let Some(rc) = field(config, "route_config") {
        RouteSource::Inline(read_route_configuration(rc, reader))
    } else if let Some(rds) = field(config, "rds") {
        RouteSource::Rds(string_field(rds, "route_config_name"))
    } else if field(config, "scoped_routes").is_some() {
        RouteSource::Unsupported("scoped_routes".to_string())
    } else {
        RouteSource::Unsupported("no route_config or rds".to_string())
    };
    let websocket = array(config, "upgrade_configs")
        .find(|u| str_field(u, "upgrade_type").is_some_and(|t| t.eq_ignore_ascii_case("websocket")))
        .map(|u| Upgrade {
            enabled: bool_field(u, "enabled").unwrap_or(true),
            filters: field(u, "filters")
                .and_then(Value::as_array)
                .map(|list| list.iter().map(read_http_filter).collect()),
        });
    let protocol = field(config, "common_http_protocol_options")
        .cloned()
        .unwrap_or(Value::Null);
    Hcm {
        edge: super::edge::read_hcm(config),
        stream_idle_timeout: reader.duration(config, "stream_idle_timeout", &label),
        request_timeout: reader.duration(config, "request_timeout", &label),
        request_headers_timeout: reader.duration(config, "request_headers_timeout", &label),
        max_stream_duration: reader.duration(&protocol, "max_stream_duration", &label),
        internal_callers: field(config, "internal_address_config")
            .is_some_and(|c| array(c, "cidr_ranges").next().is_some()),
        label,
        http_filters,
        routes,
        websocket,
    }
}

fn read_http_filters(config: &Value) -> Vec<HttpFilter> {
    array(config, "http_filters")
        .map(read_http_filter)
        .collect()
}

fn read_http_filter(filter: &Value) -> HttpFilter {
    let name = string_field(filter, "name");
    // A filter configured through ECDS (`config_discovery`): what the
    // bootstrap gives is its default config (a config_dump then has the
    // delivered one in its EcdsConfigDump, see `apply_ecds`).
    let default = field(filter, "config_discovery").and_then(|d| field(d, "default_config"));
    let (type_url, typed) = match default {
        Some(default) => (str_field(default, "@type").unwrap_or_default(), default),
        None => typed_config(filter).unwrap_or(("", &Value::Null)),
    };
    HttpFilter {
        kind: filter_kind(&name, type_url, typed),
        name,
        disabled: bool_field(filter, "disabled").unwrap_or(false),
        ecds_default: default.is_some(),
    }
}

fn filter_kind(name: &str, type_url: &str, typed: &Value) -> FilterKind {
    if type_url.ends_with(".router.v3.Router")
        || name == "envoy.filters.http.router"
        || name == "envoy.router"
    {
        FilterKind::Router
    } else if type_url.ends_with(".wasm.v3.Wasm") || name == "envoy.filters.http.wasm" {
        FilterKind::Wasm(read_wasm(field(typed, "config").unwrap_or(&Value::Null)))
    } else {
        FilterKind::Other
    }
}

/// Filters delivered by ECDS (a config_dump's `EcdsConfigDump`): the
/// delivered config replaces the default read from the listener.
fn apply_ecds(hcms: &mut [Hcm], ecds: &[(String, Value)]) {
    for filter in hcms.iter_mut().flat_map(|h| h.http_filters.iter_mut()) {
        if let Some((_, typed)) = ecds.iter().find(|(name, _)| *name == filter.name) {
            let type_url = str_field(typed, "@type").unwrap_or_default();
            filter.kind = filter_kind(&filter.name, type_url, typed);
            filter.ecds_default = false;
        }
    }
}

fn read_wasm(plugin: &Value) -> WasmFilter {
    let vm = field(plugin, "vm_config").cloned().unwrap_or(Value::Null);
    let code = field(&vm, "code").cloned().unwrap_or(Value::Null);
    let code = field(&code, "local")
        .and_then(|l| str_field(l, "filename"))
        .or_else(|| {
            field(&code, "remote")
                .and_then(|r| field(r, "http_uri"))
                .and_then(|u| str_field(u, "uri"))
        })
        .unwrap_or_default();
    let configuration = field(plugin, "configuration").and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        other => str_field(other, "value").map(str::to_string),
    });
    WasmFilter {
        config_name: string_field(plugin, "name"),
        root_id: string_field(plugin, "root_id"),
        vm_id: string_field(&vm, "vm_id"),
        code: code.to_string(),
        fail_open: bool_field(plugin, "fail_open").unwrap_or(false),
        failure_policy: str_field(plugin, "failure_policy").map(str::to_string),
        configuration,
    }
}

fn read_route_configuration(rc: &Value, reader: &mut Reader) -> RouteConfiguration {
    let name = string_field(rc, "name");
    let virtual_hosts = array(rc, "virtual_hosts")
        .map(|vh| {
            let vh_name = string_field(vh, "name");
            let label = format!("route_config \"{name}\" virtual_host \"{vh_name}\"");
            VirtualHost {
                domains: array(vh, "domains")
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                routes: array(vh, "routes")
                    .enumerate()
                    .map(|(i, r)| read_route(i, r, &label, reader))
                    .collect(),
                name: vh_name,
            }
        })
        .collect();
    RouteConfiguration {
        name,
        virtual_hosts,
    }
}

fn read_route(index: usize, r: &Value, vh_label: &str, reader: &mut Reader) -> EnvoyRoute {
    let label = format!("{vh_label} routes[{index}]");
    let m = field(r, "match").cloned().unwrap_or(Value::Null);
    let path = if let Some(p) = str_field(&m, "prefix") {
        PathMatch::Prefix(p.to_string())
    } else if let Some(p) = str_field(&m, "path") {
        PathMatch::Path(p.to_string())
    } else if let Some(p) = str_field(&m, "path_separated_prefix") {
        PathMatch::SeparatedPrefix(p.to_string())
    } else if let Some(re) = field(&m, "safe_regex").and_then(|s| str_field(s, "regex")) {
        PathMatch::Regex(re.to_string())
    } else if field(&m, "connect_matcher").is_some() {
        PathMatch::Unsupported("connect_matcher".to_string())
    } else if field(&m, "path_match_policy").is_some() {
        PathMatch::Unsupported("path_match_policy".to_string())
    } else {
        PathMatch::Unsupported("no path matcher".to_string())
    };
    let other_condition = if field(&m, "connect_matcher").is_some() {
        Some("matches only CONNECT requests (connect_matcher)".to_string())
    } else if array(&m, "query_parameters").next().is_some() {
        Some("requires query parameters".to_string())
    } else if field(&m, "grpc").is_some() {
        Some("matches only gRPC requests".to_string())
    } else {
        None
    };
    let matcher = RouteMatch {
        path,
        case_sensitive: bool_field(&m, "case_sensitive").unwrap_or(true),
        headers: array(&m, "headers").map(read_header_matcher).collect(),
        other_condition,
    };
    let (action, timeout, idle_timeout, max_stream_duration, websocket) = if let Some(ra) =
        field(r, "route")
    {
        let action = if let Some(c) = str_field(ra, "cluster") {
            Action::Cluster(c.to_string())
        } else if let Some(w) = field(ra, "weighted_clusters") {
            Action::Weighted(
                array(w, "clusters")
                    .map(|c| string_field(c, "name"))
                    .collect(),
            )
        } else if let Some(h) = str_field(ra, "cluster_header") {
            Action::ClusterHeader(h.to_string())
        } else if field(ra, "cluster_specifier_plugin").is_some()
            || field(ra, "inline_cluster_specifier_plugin").is_some()
        {
            Action::ClusterPlugin
        } else {
            Action::Unknown
        };
        let websocket = array(ra, "upgrade_configs")
            .find(|u| {
                str_field(u, "upgrade_type").is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
            })
            .map(|u| bool_field(u, "enabled").unwrap_or(true));
        let msd = field(ra, "max_stream_duration")
            .cloned()
            .unwrap_or(Value::Null);
        (
            action,
            reader.duration(ra, "timeout", &label),
            reader.duration(ra, "idle_timeout", &label),
            reader.duration(&msd, "max_stream_duration", &label),
            websocket,
        )
    } else {
        let action = if field(r, "redirect").is_some() {
            Action::Redirect
        } else if let Some(d) = field(r, "direct_response") {
            Action::DirectResponse(field(d, "status").and_then(Value::as_u64).unwrap_or(0))
        } else if field(r, "non_forwarding_action").is_some() || field(r, "filter_action").is_some()
        {
            Action::NonForwarding
        } else {
            Action::Unknown
        };
        (action, None, None, None, None)
    };
    EnvoyRoute {
        index,
        name: str_field(r, "name").map(str::to_string),
        matcher,
        action,
        timeout,
        idle_timeout,
        max_stream_duration,
        websocket,
        stat_prefix: str_field(r, "stat_prefix")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
    }
}

fn read_header_matcher(h: &Value) -> HeaderMatcher {
    let string_test = |sm: &Value| -> HeaderTest {
        let ignore = bool_field(sm, "ignore_case").unwrap_or(false);
        if let Some(s) = str_field(sm, "exact") {
            HeaderTest::Exact(s.to_string(), ignore)
        } else if let Some(s) = str_field(sm, "prefix") {
            HeaderTest::Prefix(s.to_string(), ignore)
        } else if let Some(s) = str_field(sm, "suffix") {
            HeaderTest::Suffix(s.to_string(), ignore)
        } else if let Some(s) = str_field(sm, "contains") {
            HeaderTest::Contains(s.to_string(), ignore)
        } else if let Some(re) = field(sm, "safe_regex").and_then(|r| str_field(r, "regex")) {
            HeaderTest::Regex(re.to_string())
        } else {
            HeaderTest::Unsupported
        }
    };
    let test = if let Some(sm) = field(h, "string_match") {
        string_test(sm)
    } else if let Some(s) = str_field(h, "exact_match") {
        HeaderTest::Exact(s.to_string(), false)
    } else if let Some(s) = str_field(h, "prefix_match") {
        HeaderTest::Prefix(s.to_string(), false)
    } else if let Some(s) = str_field(h, "suffix_match") {
        HeaderTest::Suffix(s.to_string(), false)
    } else if let Some(s) = str_field(h, "contains_match") {
        HeaderTest::Contains(s.to_string(), false)
    } else if let Some(re) = field(h, "safe_regex_match").and_then(|r| str_field(r, "regex")) {
        HeaderTest::Regex(re.to_string())
    } else if let Some(p) = bool_field(h, "present_match") {
        HeaderTest::Present(p)
    } else if field(h, "range_match").is_some() {
        HeaderTest::Unsupported
    } else {
        // No match specifier: Envoy checks presence only.
        HeaderTest::Present(true)
    };
    HeaderMatcher {
        name: string_field(h, "name").to_ascii_lowercase(),
        test,
        invert: bool_field(h, "invert_match").unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_protobuf_durations() {
        assert_eq!(parse_envoy_duration(&json!("15s")), Ok(Millis(15_000)));
        assert_eq!(parse_envoy_duration(&json!("0.5s")), Ok(Millis(500)));
        assert_eq!(parse_envoy_duration(&json!("1.250s")), Ok(Millis(1_250)));
        assert_eq!(parse_envoy_duration(&json!("0s")), Ok(Millis(0)));
        assert_eq!(parse_envoy_duration(&json!("0.000001s")), Ok(Millis(1)));
        assert_eq!(
            parse_envoy_duration(&json!({"seconds": "2", "nanos": 500000000})),
            Ok(Millis(2_500))
        );
        assert!(parse_envoy_duration(&json!("15")).is_err());
        assert!(parse_envoy_duration(&json!("-1s")).is_err());
        assert!(parse_envoy_duration(&json!("1.5m")).is_err());
        assert!(parse_envoy_duration(&json!(".5s")).is_err());
    }

    #[test]
    fn duration_signs_and_nanosecond_digits() {
        // A sign is not part of a protobuf Duration's JSON form, although
        // u64's parser would take it, in either the seconds or the fraction.
        assert!(parse_envoy_duration(&json!("+5s")).is_err());
        assert!(parse_envoy_duration(&json!("1.+5s")).is_err());
        assert!(parse_envoy_duration(&json!("1.-5s")).is_err());
        // Nine fractional digits (nanoseconds) at most; a tenth is refused.
        assert_eq!(
            parse_envoy_duration(&json!("0.123456789s")),
            Ok(Millis(124))
        );
        assert_eq!(
            parse_envoy_duration(&json!("2.000000001s")),
            Ok(Millis(2_001))
        );
        assert!(parse_envoy_duration(&json!("0.1234567891s")).is_err());
        assert!(parse_envoy_duration(&json!("1.0000000000s")).is_err());
    }

    fn wasm(config_name: &str, root_id: &str, code: &str) -> WasmFilter {
        WasmFilter {
            config_name: config_name.to_string(),
            root_id: root_id.to_string(),
            code: code.to_string(),
            ..WasmFilter::default()
        }
    }

    #[test]
    fn edge_guard_is_recognised_by_any_one_of_name_root_id_or_code() {
        assert!(wasm("edge_guard", "", "").is_edge_guard());
        assert!(wasm("", "edge_guard", "").is_edge_guard());
        assert!(wasm("", "", "/etc/envoy/edge_guard.wasm").is_edge_guard());
        assert!(wasm("edge_guard", "other", "/etc/envoy/authz.wasm").is_edge_guard());
        assert!(wasm("other", "edge_guard", "/etc/envoy/authz.wasm").is_edge_guard());
        // Another wasm filter is not edge-guard.
        assert!(!wasm("authz", "authz", "/etc/envoy/authz.wasm").is_edge_guard());
        assert!(!wasm("", "", "").is_edge_guard());
    }

    /// A bootstrap with one listener whose filter chains hold `filters`.
    fn bootstrap(chains: Value) -> EnvoyConfig {
        EnvoyConfig::from_value(&json!({"static_resources": {"listeners": [
            {"name": "main", "filter_chains": chains}
        ]}}))
        .unwrap()
    }

    const HCM_TYPE: &str =
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

    fn hcm_filter(name: &str, hcm: Value) -> Value {
        json!({"name": name, "typed_config": hcm})
    }

    fn hcm_config(extra: Value) -> Value {
        let mut hcm = json!({"@type": HCM_TYPE, "route_config": {"name": "r"}});
        for (k, v) in extra.as_object().unwrap() {
            hcm[k] = v.clone();
        }
        hcm
    }

    #[test]
    fn an_hcm_is_recognised_by_its_type_or_by_either_of_its_names() {
        // By type, whatever the filter is called.
        let by_type =
            bootstrap(json!([{"filters": [hcm_filter("my_hcm", hcm_config(json!({})))]}]));
        assert_eq!(by_type.hcms.len(), 1);
        // By name alone (no @type Envoy would read), current and legacy.
        for name in [
            "envoy.filters.network.http_connection_manager",
            "envoy.http_connection_manager",
        ] {
            let by_name = bootstrap(json!([{"filters": [
                {"name": name, "typed_config": {"route_config": {"name": "r"}}}
            ]}]));
            assert_eq!(by_name.hcms.len(), 1, "{name}");
        }
        // Neither: a TCP proxy is not an HCM.
        let tcp = bootstrap(
            json!([{"filters": [{"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"}}]}]),
        );
        assert_eq!(tcp.hcms.len(), 0);
    }

    #[test]
    fn hcm_labels_name_the_chain_only_when_a_listener_has_several() {
        let one = bootstrap(json!([{"filters": [hcm_filter("hcm", hcm_config(json!({})))]}]));
        let labels: Vec<&str> = one.hcms.iter().map(|h| h.label.as_str()).collect();
        assert_eq!(labels, ["listener \"main\""]);
        let two = bootstrap(json!([
            {"filters": [hcm_filter("hcm", hcm_config(json!({})))]},
            {"filters": [hcm_filter("hcm", hcm_config(json!({})))]}
        ]));
        let labels: Vec<&str> = two.hcms.iter().map(|h| h.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "listener \"main\" filter_chains[0]",
                "listener \"main\" filter_chains[1]"
            ]
        );
    }

    #[test]
    fn an_empty_stat_prefix_is_no_stat_prefix() {
        let routes = routes(json!([
            {"match": {"prefix": "/a"}, "route": {"cluster": "a"}, "stat_prefix": "courses"},
            {"match": {"prefix": "/b"}, "route": {"cluster": "b"}, "stat_prefix": ""},
            {"match": {"prefix": "/c"}, "route": {"cluster": "c"}}
        ]));
        let prefixes: Vec<Option<&str>> = routes.iter().map(|r| r.stat_prefix.as_deref()).collect();
        assert_eq!(prefixes, [Some("courses"), None, None]);
    }

    /// The kinds of the http_filters of a one-HCM bootstrap.
    fn filter_kinds(http_filters: Value) -> Vec<FilterKind> {
        let config = bootstrap(json!([{"filters": [hcm_filter(
            "hcm",
            hcm_config(json!({"http_filters": http_filters}))
        )]}]));
        config
            .hcms
            .into_iter()
            .next()
            .unwrap()
            .http_filters
            .into_iter()
            .map(|f| f.kind)
            .collect()
    }

    #[test]
    fn router_and_wasm_filters_are_recognised_by_type_or_by_name() {
        let kinds = filter_kinds(json!([
            // By type, under custom names.
            {"name": "my_router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
            {"name": "my_wasm", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"name": "edge_guard"}}},
            // By name alone, current and legacy router names.
            {"name": "envoy.filters.http.router"},
            {"name": "envoy.router"},
            {"name": "envoy.filters.http.wasm", "typed_config": {"config": {"root_id": "edge_guard"}}},
            // Neither.
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
        ]));
        assert!(matches!(kinds[0], FilterKind::Router), "{kinds:?}");
        assert!(
            matches!(&kinds[1], FilterKind::Wasm(w) if w.config_name == "edge_guard"),
            "{kinds:?}"
        );
        assert!(matches!(kinds[2], FilterKind::Router), "{kinds:?}");
        assert!(matches!(kinds[3], FilterKind::Router), "{kinds:?}");
        assert!(
            matches!(&kinds[4], FilterKind::Wasm(w) if w.root_id == "edge_guard"),
            "{kinds:?}"
        );
        assert!(matches!(kinds[5], FilterKind::Other), "{kinds:?}");
        assert_eq!(kinds.len(), 6);
    }

    /// The routes of a one-HCM bootstrap with these inline routes.
    fn routes(routes: Value) -> Vec<EnvoyRoute> {
        let config = bootstrap(json!([{"filters": [hcm_filter("hcm", hcm_config(json!({
            "route_config": {"name": "r", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes}]}
        })))]}]));
        let hcm = config.hcms.into_iter().next().unwrap();
        let RouteSource::Inline(rc) = hcm.routes else {
            panic!("inline routes expected");
        };
        rc.virtual_hosts.into_iter().next().unwrap().routes
    }

    #[test]
    fn route_actions_clusters_and_forwarding() {
        let routes = routes(json!([
            {"match": {"prefix": "/a"}, "route": {"cluster": "a"}},
            {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "blue", "weight": 90}, {"name": "green", "weight": 10}]}}},
            {"match": {"prefix": "/h"}, "route": {"cluster_header": "x-cluster"}},
            {"match": {"prefix": "/p"}, "route": {"cluster_specifier_plugin": {"extension": {"name": "p"}}}},
            {"match": {"prefix": "/i"}, "route": {"inline_cluster_specifier_plugin": {"extension": {"name": "p"}}}},
            {"match": {"prefix": "/r"}, "redirect": {"https_redirect": true}},
            {"match": {"prefix": "/d"}, "direct_response": {"status": 503}},
            {"match": {"prefix": "/n"}, "non_forwarding_action": {}},
            {"match": {"prefix": "/f"}, "filter_action": {"action": {"name": "x"}}},
            {"match": {"prefix": "/u"}, "route": {}}
        ]));
        let described: Vec<String> = routes.iter().map(|r| r.action.describe()).collect();
        assert_eq!(
            described,
            [
                "cluster \"a\"",
                "weighted_clusters [\"blue\", \"green\"]",
                "the cluster named in header \"x-cluster\"",
                "a cluster_specifier_plugin",
                "a cluster_specifier_plugin",
                "a redirect",
                "a direct_response with status 503",
                "a non_forwarding_action",
                "a non_forwarding_action",
                "no action edge-guard-validate understands",
            ]
        );
        let clusters: Vec<Option<Vec<&str>>> = routes
            .iter()
            .map(|r| {
                r.clusters()
                    .map(|cs| cs.iter().map(String::as_str).collect())
            })
            .collect();
        assert_eq!(
            clusters,
            [
                Some(vec!["a"]),
                Some(vec!["blue", "green"]),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        let forwards: Vec<bool> = routes.iter().map(EnvoyRoute::forwards).collect();
        assert_eq!(
            forwards,
            [true, true, true, true, true, false, false, false, false, false]
        );
    }

    #[test]
    fn reads_camel_case_field_names() {
        let v = json!({"routeConfigName": "local"});
        assert_eq!(str_field(&v, "route_config_name"), Some("local"));
    }

    #[test]
    fn refuses_documents_that_are_not_envoy_configs() {
        let e = EnvoyConfig::from_value(&json!({"routes": []})).unwrap_err();
        assert!(e.contains("config_dump"), "{e}");
    }

    #[test]
    fn bad_duration_becomes_a_note() {
        let doc = json!({"static_resources": {"listeners": [{"name": "l", "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stream_idle_timeout": "5 minutes", "route_config": {"name": "r"}}
        }]}]}]}});
        let config = EnvoyConfig::from_value(&doc).unwrap();
        assert_eq!(config.hcms.len(), 1);
        assert_eq!(config.hcms[0].stream_idle_timeout, None);
        assert_eq!(config.notes[0].id, "envoy_unreadable");
        assert!(config.notes[0].message.contains("stream_idle_timeout"));
    }
}
