//! The edge settings edge-guard relies on: read from an HCM and the
//! bootstrap, and judged.
//!
//! Owns which connection-manager and process settings an edge running
//! edge-guard needs (path normalisation, the client address, header names,
//! HTTP/2 limits, connection limits, the overload manager, the
//! `local_reply_config` that gives Envoy's own errors the JSON shape), how
//! each is read with Envoy's defaults, and the findings when one is missing.
//! A missing setting is an error where edge-guard's own behaviour would be
//! wrong without it, a warning otherwise. Never reads routes or the policy's
//! routing table.

use serde_json::Value;

use super::model::{bool_field, field};
use super::{Finding, Severity};
use crate::policy::{Direction, Policy};

/// What an HCM says about the edge settings (Envoy's defaults when absent).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u64,
    /// `original_ip_detection_extensions` configured.
    pub original_ip_detection: bool,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action` as written ("" = Envoy's default,
    /// which keeps them).
    pub escaped_slashes_action: String,
    /// `common_http_protocol_options.headers_with_underscores_action`.
    pub headers_with_underscores_action: String,
    pub h2_max_concurrent_streams: Option<u64>,
    pub h2_initial_stream_window_size: Option<u64>,
    pub h2_initial_connection_window_size: Option<u64>,
    /// `local_reply_config` present.
    pub local_reply_config: bool,
    /// It formats bodies as JSON (a `json_format`, or `content_type:
    /// application/json`, somewhere in it).
    pub local_reply_json: bool,
    /// `upgrade_configs` types other than `websocket` that are enabled.
    pub other_upgrade_types: Vec<String>,
}

/// Process-wide protections, from the bootstrap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Whether the document says anything about them (a config_dump without
    /// its bootstrap does not).
    pub known: bool,
    /// `overload_manager` with at least one action.
    pub overload_actions: bool,
    /// A global downstream connection limit (the overload manager's
    /// `global_downstream_max_connections` monitor).
    pub global_connection_limit: bool,
    /// Some listener has the `connection_limit` network filter.
    pub listener_connection_limit: bool,
}

/// A bool or a `BoolValue` wrapper; Envoy's default `false` when absent.
fn flag(v: &Value, name: &str) -> bool {
    bool_field(v, name).unwrap_or(false)
}

/// A number, a numeric string (JSON mapping of 64-bit ints) or a wrapper.
fn number(v: &Value, name: &str) -> Option<u64> {
    let value = field(v, name)?;
    let value = field(value, "value").unwrap_or(value);
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

fn text(v: &Value, name: &str) -> String {
    field(v, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn mentions(v: &Value, needle: &dyn Fn(&str, &Value) -> bool) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, child)| needle(k, child) || mentions(child, needle)),
        Value::Array(items) => items.iter().any(|child| mentions(child, needle)),
        _ => false,
    }
}

/// Reads the edge settings of one HCM's typed config.
pub fn read_hcm(config: &Value) -> EdgeSettings {
    let protocol = field(config, "common_http_protocol_options").unwrap_or(&Value::Null);
    let h2 = field(config, "http2_protocol_options").unwrap_or(&Value::Null);
    let local_reply = field(config, "local_reply_config");
    EdgeSettings {
        use_remote_address: flag(config, "use_remote_address"),
        xff_num_trusted_hops: number(config, "xff_num_trusted_hops").unwrap_or(0),
        original_ip_detection: field(config, "original_ip_detection_extensions")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty()),
        normalize_path: flag(config, "normalize_path"),
        merge_slashes: flag(config, "merge_slashes"),
        escaped_slashes_action: text(config, "path_with_escaped_slashes_action"),
        headers_with_underscores_action: text(protocol, "headers_with_underscores_action"),
        h2_max_concurrent_streams: number(h2, "max_concurrent_streams"),
        h2_initial_stream_window_size: number(h2, "initial_stream_window_size"),
        h2_initial_connection_window_size: number(h2, "initial_connection_window_size"),
        local_reply_config: local_reply.is_some(),
        local_reply_json: local_reply.is_some_and(|lr| {
            mentions(lr, &|k, v| {
                k == "json_format"
                    || k == "jsonFormat"
                    || ((k == "content_type" || k == "contentType")
                        && v.as_str()
                            .is_some_and(|t| t.starts_with("application/json")))
            })
        }),
        other_upgrade_types: field(config, "upgrade_configs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|u| {
                field(u, "enabled")
                    .and_then(|e| e.as_bool().or_else(|| field(e, "value")?.as_bool()))
                    != Some(false)
            })
            .map(|u| text(u, "upgrade_type"))
            .filter(|t| !t.eq_ignore_ascii_case("websocket"))
            .collect(),
    }
}

/// Reads the process-wide protections from a bootstrap (or the bootstrap
/// of a config_dump) and the listeners.
pub fn read_process<'a>(
    bootstrap: Option<&Value>,
    listeners: impl IntoIterator<Item = &'a Value>,
) -> ProcessLimits {
    let Some(bootstrap) = bootstrap else {
        return ProcessLimits::default();
    };
    let overload = field(bootstrap, "overload_manager").unwrap_or(&Value::Null);
    let has_actions = field(overload, "actions")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let global = field(overload, "resource_monitors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|m| {
            text(m, "name").ends_with("global_downstream_max_connections")
                || mentions(m, &|k, v| {
                    k == "@type"
                        && v.as_str()
                            .is_some_and(|t| t.ends_with("DownstreamConnectionsConfig"))
                })
        });
    let listener_limit = listeners.into_iter().any(|l| {
        mentions(l, &|k, v| {
            (k == "name" && v.as_str() == Some("envoy.filters.network.connection_limit"))
                || (k == "@type" && v.as_str().is_some_and(|t| t.ends_with(".ConnectionLimit")))
        })
    });
    ProcessLimits {
        known: true,
        overload_actions: has_actions,
        global_connection_limit: global,
        listener_connection_limit: listener_limit,
    }
}

fn finding(id: &'static str, severity: Severity, at: &str, message: String) -> Finding {
    Finding {
        id,
        severity,
        policy_route: None,
        envoy_object: Some(at.to_string()),
        message,
    }
}

/// The findings for one HCM that runs edge-guard with `policy`. An egress
/// listener (our own services calling out) is checked for the JSON error
/// shape only: the other settings guard the internet-facing edge.
pub fn check_hcm(at: &str, s: &EdgeSettings, policy: Option<&Policy>) -> Vec<Finding> {
    let mut out = Vec::new();
    let egress = policy.is_some_and(|p| p.direction == Direction::Egress);
    if !s.local_reply_config || !s.local_reply_json {
        out.push(finding(
            "local_reply_config_missing",
            Severity::Error,
            at,
            format!("{at} has no local_reply_config giving Envoy's own replies the JSON shape: the router's 504 at edge-guard's deadline, 503 no healthy upstream, 408, 413, 431 and 400 reach clients as plain text, outside the {{\"error\": {{code, message, request_id}}}} contract; copy the local_reply_config block of envoy/envoy.yaml (between \"# local-reply:begin\" and \"# local-reply:end\")"),
        ));
    }
    if egress {
        return out;
    }
    if !s.normalize_path || !s.merge_slashes {
        let missing: Vec<&str> = [
            (!s.normalize_path).then_some("normalize_path: true"),
            (!s.merge_slashes).then_some("merge_slashes: true"),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.push(finding(
            "path_normalization_missing",
            Severity::Warning,
            at,
            format!("{at} routes raw paths: edge-guard refuses every non-canonical path (\"//\", \"..\", %2e…) with 400 invalid_path, so clients that send them get errors where a normalising edge would serve them; set {}", missing.join(" and ")),
        ));
    }
    let action = s.escaped_slashes_action.as_str();
    if action.is_empty()
        || action == "KEEP_UNCHANGED"
        || action == "IMPLEMENTATION_SPECIFIC_DEFAULT"
    {
        out.push(finding(
            "escaped_slashes_kept",
            Severity::Warning,
            at,
            format!("{at} keeps %2F and %5C in paths (path_with_escaped_slashes_action {}): edge-guard refuses them with 400 invalid_path, as an upstream could decode them into separators; set path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT (or REJECT_REQUEST)", if action.is_empty() { "unset" } else { action }),
        ));
    }
    if !s.use_remote_address {
        out.push(finding(
            "remote_address_untrusted",
            Severity::Warning,
            at,
            format!("{at} has use_remote_address false: Envoy takes the client address from the client's own x-forwarded-for. edge-guard never trusts such an address (the status endpoint refuses it), so status.allow_cidrs only ever matches direct peers; set use_remote_address: true, and behind a load balancer that appends to x-forwarded-for also xff_num_trusted_hops: 1 (one per trusted proxy)"),
        ));
    } else if s.xff_num_trusted_hops > 0 || s.original_ip_detection {
        out.push(finding(
            "remote_address_untrusted",
            Severity::Warning,
            at,
            format!("{at} takes the client address from x-forwarded-for (xff_num_trusted_hops {} or an original_ip_detection extension): edge-guard serves its status endpoint only to the connection's own peer, so reach it from inside, not through the load balancer", s.xff_num_trusted_hops),
        ));
    }
    let identity_header = policy.and_then(|p| match p.websocket.identity.as_ref()? {
        crate::policy::Identity::Header(name) => Some(name.clone()),
        crate::policy::Identity::Jwt { .. } => None,
    });
    if s.headers_with_underscores_action != "REJECT_REQUEST"
        && s.headers_with_underscores_action != "DROP_HEADER"
    {
        let (severity, why) = match &identity_header {
            Some(name) => (
                Severity::Error,
                format!("the policy trusts the identity header {name}; a client's {} is another header to Envoy and edge-guard, but the same one to upstreams that fold '_' into '-' (CGI, Django, PHP)", name.replace('-', "_")),
            ),
            None => (
                Severity::Warning,
                "a client's x_user_id is another header to Envoy, but the same as x-user-id to upstreams that fold '_' into '-' (CGI, Django, PHP)".to_string(),
            ),
        };
        out.push(finding(
            "headers_with_underscores_allowed",
            severity,
            at,
            format!("{at} accepts header names with underscores: {why}; set common_http_protocol_options.headers_with_underscores_action: REJECT_REQUEST"),
        ));
    }
    if s.h2_max_concurrent_streams.is_none()
        || s.h2_initial_stream_window_size.is_none()
        || s.h2_initial_connection_window_size.is_none()
    {
        out.push(finding(
            "http2_limits_missing",
            Severity::Warning,
            at,
            format!("{at} keeps Envoy's HTTP/2 defaults (2^31 concurrent streams, 256 MiB windows): one connection can hold unbounded streams and buffers; set http2_protocol_options max_concurrent_streams: 100, initial_stream_window_size: 65536, initial_connection_window_size: 1048576"),
        ));
    }
    if !s.other_upgrade_types.is_empty() {
        out.push(finding(
            "upgrade_type_refused",
            Severity::Warning,
            at,
            format!("{at} enables upgrade types edge-guard refuses on every route with 400 invalid_upgrade ({}); remove them from upgrade_configs, or put them on a listener without edge-guard", s.other_upgrade_types.join(", ")),
        ));
    }
    out
}

/// The process-wide findings (once per document).
pub fn check_process(limits: &ProcessLimits) -> Vec<Finding> {
    let mut out = Vec::new();
    if !limits.known {
        return out;
    }
    if !limits.global_connection_limit && !limits.listener_connection_limit {
        out.push(finding(
            "connection_limit_missing",
            Severity::Warning,
            "bootstrap",
            "nothing bounds downstream connections: edge-guard bounds WebSockets, but plain connections are limited only by file descriptors; add the overload manager's envoy.resource_monitors.global_downstream_max_connections monitor (max_active_downstream_connections), or the envoy.filters.network.connection_limit filter on each listener".to_string(),
        ));
    }
    if !limits.overload_actions {
        out.push(finding(
            "overload_manager_missing",
            Severity::Warning,
            "bootstrap",
            "no overload_manager actions: under memory pressure Envoy keeps accepting until it is killed; add a fixed_heap resource monitor with the envoy.overload_actions.stop_accepting_requests and envoy.overload_actions.shrink_heap actions, as in envoy/envoy.yaml".to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shipped_hcm() -> Value {
        json!({
            "use_remote_address": true,
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
            "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
            "http2_protocol_options": {"max_concurrent_streams": 100, "initial_stream_window_size": 65536, "initial_connection_window_size": 1048576},
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            "local_reply_config": {"mappers": [{"body_format_override": {"json_format": {"error": {}}}}]}
        })
    }

    fn ids(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.id).collect()
    }

    #[test]
    fn the_shipped_settings_are_clean() {
        let s = read_hcm(&shipped_hcm());
        assert!(check_hcm("hcm", &s, None).is_empty(), "{s:?}");
    }

    #[test]
    fn envoys_defaults_report_every_missing_setting() {
        let s = read_hcm(&json!({}));
        assert_eq!(
            ids(&check_hcm("hcm", &s, None)),
            vec![
                "local_reply_config_missing",
                "path_normalization_missing",
                "escaped_slashes_kept",
                "remote_address_untrusted",
                "headers_with_underscores_allowed",
                "http2_limits_missing"
            ]
        );
    }

    #[test]
    fn wrappers_and_camel_case_from_a_config_dump_are_read() {
        let s = read_hcm(&json!({
            "useRemoteAddress": {"value": true},
            "normalizePath": true,
            "mergeSlashes": true,
            "pathWithEscapedSlashesAction": "REJECT_REQUEST",
            "commonHttpProtocolOptions": {"headersWithUnderscoresAction": "REJECT_REQUEST"},
            "http2ProtocolOptions": {"maxConcurrentStreams": 100, "initialStreamWindowSize": "65536", "initialConnectionWindowSize": {"value": 1048576}},
            "localReplyConfig": {"bodyFormat": {"jsonFormat": {}}}
        }));
        assert!(check_hcm("hcm", &s, None).is_empty(), "{s:?}");
    }

    #[test]
    fn a_plain_text_local_reply_config_is_not_enough() {
        let mut hcm = shipped_hcm();
        hcm["local_reply_config"] = json!({"body_format": {"text_format": "%LOCAL_REPLY_BODY%"}});
        let s = read_hcm(&hcm);
        assert_eq!(
            ids(&check_hcm("hcm", &s, None)),
            vec!["local_reply_config_missing"]
        );
    }

    #[test]
    fn underscores_are_an_error_when_the_identity_is_a_header() {
        let mut hcm = shipped_hcm();
        hcm["common_http_protocol_options"] = json!({});
        let s = read_hcm(&hcm);
        let policy = Policy::from_json(
            br#"{"routes":[{"name":"ws","prefix":"/ws","cluster":"c","websocket":true}],"websocket":{"identity":{"header":"x-user-id"}}}"#,
        )
        .unwrap();
        let found = check_hcm("hcm", &s, Some(&policy));
        assert_eq!(ids(&found), vec!["headers_with_underscores_allowed"]);
        assert_eq!(found[0].severity, Severity::Error);
        assert!(
            found[0].message.contains("x_user_id"),
            "{}",
            found[0].message
        );
        assert_eq!(check_hcm("hcm", &s, None)[0].severity, Severity::Warning);
    }

    #[test]
    fn trusted_hops_and_other_upgrades_are_warnings() {
        let mut hcm = shipped_hcm();
        hcm["xff_num_trusted_hops"] = json!(1);
        hcm["upgrade_configs"] = json!([{"upgrade_type": "websocket"}, {"upgrade_type": "CONNECT"}, {"upgrade_type": "h2c", "enabled": false}]);
        let found = check_hcm("hcm", &read_hcm(&hcm), None);
        assert_eq!(
            ids(&found),
            vec!["remote_address_untrusted", "upgrade_type_refused"]
        );
        assert!(found.iter().all(|f| f.severity == Severity::Warning));
        assert!(found[1].message.contains("CONNECT") && !found[1].message.contains("h2c"));
    }

    #[test]
    fn an_original_ip_detection_extension_is_trusting_forwarded_for() {
        let mut hcm = shipped_hcm();
        hcm["original_ip_detection_extensions"] = json!([{"name": "envoy.extensions.http.original_ip_detection.xff",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig", "xff_num_trusted_hops": 1}}]);
        let found = check_hcm("hcm", &read_hcm(&hcm), None);
        assert_eq!(ids(&found), vec!["remote_address_untrusted"]);
        assert_eq!(found[0].severity, Severity::Warning);
        // An empty list configures nothing.
        hcm["original_ip_detection_extensions"] = json!([]);
        assert!(check_hcm("hcm", &read_hcm(&hcm), None).is_empty());
    }

    #[test]
    fn a_local_reply_config_with_a_json_content_type_is_json() {
        let mut hcm = shipped_hcm();
        for body_format in [
            json!({"text_format": "{\"error\": \"%LOCAL_REPLY_BODY%\"}", "content_type": "application/json"}),
            json!({"textFormat": "{\"error\": \"%LOCAL_REPLY_BODY%\"}", "contentType": "application/json; charset=utf-8"}),
        ] {
            hcm["local_reply_config"] = json!({"body_format": body_format});
            let s = read_hcm(&hcm);
            assert!(s.local_reply_json, "{body_format}");
            assert!(check_hcm("hcm", &s, None).is_empty(), "{body_format}");
        }
        // Another content type is not JSON, whatever the key.
        hcm["local_reply_config"] = json!({"body_format": {"text_format": "%LOCAL_REPLY_BODY%", "content_type": "text/plain"}});
        let s = read_hcm(&hcm);
        assert!(!s.local_reply_json);
        assert_eq!(
            ids(&check_hcm("hcm", &s, None)),
            vec!["local_reply_config_missing"]
        );
    }

    #[test]
    fn path_normalization_names_exactly_the_missing_setting() {
        for (missing, other) in [
            ("normalize_path", "merge_slashes"),
            ("merge_slashes", "normalize_path"),
        ] {
            let mut hcm = shipped_hcm();
            hcm[missing] = json!(false);
            let found = check_hcm("hcm", &read_hcm(&hcm), None);
            assert_eq!(ids(&found), vec!["path_normalization_missing"], "{missing}");
            let message = &found[0].message;
            assert!(
                message.contains(&format!("set {missing}: true")),
                "{message}"
            );
            assert!(!message.contains(other), "{message}");
        }
    }

    #[test]
    fn each_missing_http2_limit_is_reported() {
        for limit in [
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
        ] {
            let mut hcm = shipped_hcm();
            hcm["http2_protocol_options"]
                .as_object_mut()
                .unwrap()
                .remove(limit);
            assert_eq!(
                ids(&check_hcm("hcm", &read_hcm(&hcm), None)),
                vec!["http2_limits_missing"],
                "{limit}"
            );
        }
    }

    #[test]
    fn connection_limits_are_recognised_by_type_under_any_name() {
        let bootstrap = json!({"overload_manager": {
            "resource_monitors": [{"name": "connections",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                                 "max_active_downstream_connections": 10000}}],
            "actions": [{"name": "envoy.overload_actions.stop_accepting_requests"}]
        }});
        let limits = read_process(Some(&bootstrap), []);
        assert!(limits.global_connection_limit);
        assert!(check_process(&limits).is_empty());

        let listener = json!({"filter_chains": [{"filters": [{"name": "limit",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
                             "stat_prefix": "limit", "max_connections": 1000}}]}]});
        let limits = read_process(Some(&json!({})), [&listener]);
        assert!(limits.listener_connection_limit);
        assert!(!limits.global_connection_limit);
        assert_eq!(
            ids(&check_process(&limits)),
            vec!["overload_manager_missing"]
        );
    }

    #[test]
    fn process_limits_from_the_overload_manager_or_listeners() {
        let listener = json!({"filter_chains": [{"filters": [{"name": "envoy.filters.network.connection_limit"}]}]});
        let bootstrap = json!({"overload_manager": {
            "resource_monitors": [{"name": "envoy.resource_monitors.global_downstream_max_connections"}],
            "actions": [{"name": "envoy.overload_actions.stop_accepting_requests"}]
        }});
        assert!(check_process(&read_process(Some(&bootstrap), [])).is_empty());
        let none = read_process(Some(&json!({})), []);
        assert_eq!(
            ids(&check_process(&none)),
            vec!["connection_limit_missing", "overload_manager_missing"]
        );
        let by_listener = read_process(Some(&json!({})), [&listener]);
        assert_eq!(
            ids(&check_process(&by_listener)),
            vec!["overload_manager_missing"]
        );
        assert!(check_process(&read_process(None, [])).is_empty());
    }
}
