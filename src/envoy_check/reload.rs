//! Policy changes for a running Envoy: what one would do to the counters,
//! and the ECDS resource that delivers it.
//!
//! Owns two rules. edge-guard's counters live in the shared data of the
//! filter's `vm_id`, so a new configuration whose edge-guard filter has
//! another `vm_id` than the running one starts from empty counters while the
//! old connections live on (limits are exceeded until they end). And a
//! policy reaches a filter configured through ECDS (`config_discovery`) as a
//! copy of the bootstrap's `default_config` with only the policy replaced,
//! so nothing but the policy can change that way. Never reads or writes
//! files: the CLI does.

use serde_json::Value;

use super::model::{EnvoyConfig, FilterKind};
use super::{Finding, Severity};

/// The `vm_id`s of the edge-guard filters in an Envoy document, in order,
/// without repeats.
pub fn edge_guard_vm_ids(envoy: &EnvoyConfig) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for hcm in &envoy.hcms {
        for filter in &hcm.http_filters {
            if let FilterKind::Wasm(w) = &filter.kind {
                if w.is_edge_guard() && !ids.contains(&w.vm_id) {
                    ids.push(w.vm_id.clone());
                }
            }
        }
    }
    ids
}

/// A warning if applying `new_doc` to the Envoy whose `/config_dump` is
/// `running_doc` would give edge-guard another `vm_id`.
pub fn vm_id_change(new_doc: &Value, running_doc: &Value) -> Result<Option<Finding>, String> {
    let new = edge_guard_vm_ids(&EnvoyConfig::from_value(new_doc)?);
    let running = edge_guard_vm_ids(&EnvoyConfig::from_value(running_doc)?);
    let changed: Vec<&String> = new.iter().filter(|id| !running.contains(id)).collect();
    if changed.is_empty() || running.is_empty() {
        return Ok(None);
    }
    let show = |ids: &[&String]| {
        ids.iter()
            .map(|id| format!("\"{id}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(Some(Finding {
        id: "vm_id_changed",
        severity: Severity::Warning,
        policy_route: None,
        envoy_object: Some("edge_guard filter vm_config.vm_id".to_string()),
        message: format!(
            "the running Envoy counts WebSockets under vm_id {}, this configuration uses {}: a new vm_id starts from empty counters while the open connections stay, so every WebSocket limit can be exceeded until they end; keep vm_id {}",
            show(&running.iter().collect::<Vec<_>>()),
            show(&changed),
            show(&running.iter().take(1).collect::<Vec<_>>())
        ),
    }))
}

/// The ECDS resource file (a DiscoveryResponse, JSON) that delivers
/// `policy` to the edge-guard filter configured through `config_discovery`
/// in `envoy_doc`: that filter's `default_config`, with its
/// `configuration` replaced by the policy.
pub fn ecds_resource(envoy_doc: &Value, policy: &str) -> Result<Value, String> {
    let (name, default) = find_discovered_edge_guard(envoy_doc).ok_or(
        "no edge-guard wasm filter with config_discovery and a default_config in the Envoy config: ECDS delivery needs one",
    )?;
    let mut typed = default.clone();
    let config = typed
        .get_mut("config")
        .and_then(Value::as_object_mut)
        .ok_or("the edge-guard default_config has no `config`")?;
    config.insert(
        "configuration".to_string(),
        serde_json::json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": policy,
        }),
    );
    Ok(serde_json::json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": typed,
        }]
    }))
}

/// The policy in the `default_config` of the edge-guard filter configured
/// through ECDS in `envoy_doc` (what serves until the ECDS resource arrives).
pub fn ecds_default_policy(envoy_doc: &Value) -> Option<String> {
    let (_, default) = find_discovered_edge_guard(envoy_doc)?;
    let configuration = default.get("config")?.get("configuration")?;
    match configuration {
        Value::String(text) => Some(text.clone()),
        other => other.get("value")?.as_str().map(str::to_string),
    }
}

/// (filter name, default_config) of the first HTTP filter anywhere in the
/// document whose `config_discovery.default_config` is edge-guard's Wasm.
fn find_discovered_edge_guard(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Object(map) => {
            if let Some(default) = map
                .get("config_discovery")
                .and_then(|d| d.get("default_config"))
            {
                let is_wasm = default
                    .get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with(".wasm.v3.Wasm"));
                let config = default.get("config");
                let named = |k: &str| {
                    config
                        .and_then(|c| c.get(k))
                        .and_then(Value::as_str)
                        .is_some_and(|s| s == "edge_guard")
                };
                if is_wasm && (named("name") || named("root_id")) {
                    let name = map
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("edge_guard");
                    return Some((name.to_string(), default));
                }
            }
            map.values().find_map(find_discovered_edge_guard)
        }
        Value::Array(items) => items.iter().find_map(find_discovered_edge_guard),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bootstrap(vm_id: &str) -> Value {
        json!({"static_resources": {"listeners": [{"name": "l", "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "x",
            "route_config": {"name": "r", "virtual_hosts": []},
            "http_filters": [
                {"name": "envoy.filters.http.wasm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {"name": "edge_guard", "root_id": "edge_guard",
                               "vm_config": {"vm_id": vm_id, "code": {"local": {"filename": "edge_guard.wasm"}}}}}},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
            ]}}]}]}]}})
    }

    #[test]
    fn the_same_vm_id_is_fine() {
        assert_eq!(
            vm_id_change(&bootstrap("edge_guard"), &bootstrap("edge_guard")),
            Ok(None)
        );
    }

    #[test]
    fn another_vm_id_warns_that_counters_reset() {
        let finding = vm_id_change(&bootstrap("edge_guard_v2"), &bootstrap("edge_guard"))
            .unwrap()
            .expect("a warning");
        assert_eq!(finding.id, "vm_id_changed");
        assert_eq!(finding.severity, Severity::Warning);
        assert!(
            finding.message.contains("\"edge_guard\""),
            "{}",
            finding.message
        );
        assert!(
            finding.message.contains("\"edge_guard_v2\""),
            "{}",
            finding.message
        );
        assert!(
            finding.message.contains("empty counters"),
            "{}",
            finding.message
        );
    }

    #[test]
    fn the_ecds_resource_is_the_default_config_with_the_new_policy() {
        let envoy = json!({"static_resources": {"listeners": [{"filter_chains": [{"filters": [{
            "typed_config": {"http_filters": [
                {"name": "edge_guard", "config_discovery": {
                    "config_source": {"path_config_source": {"path": "x.json"}},
                    "default_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "config": {"name": "edge_guard", "root_id": "edge_guard",
                                   "vm_config": {"vm_id": "edge_guard"},
                                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{\"old\": 1}"}}}}},
                {"name": "envoy.filters.http.router"}]}}]}]}]}});
        let resource = ecds_resource(&envoy, "{\"new\": 2}").unwrap();
        let ext = &resource["resources"][0];
        assert_eq!(ext["name"], "edge_guard");
        assert_eq!(
            ext["typed_config"]["config"]["configuration"]["value"],
            "{\"new\": 2}"
        );
        assert_eq!(
            ext["typed_config"]["config"]["vm_config"]["vm_id"],
            "edge_guard"
        );
        assert!(
            ecds_resource(&bootstrap("edge_guard"), "{}").is_err(),
            "no config_discovery"
        );
    }

    #[test]
    fn a_running_config_dump_is_read_with_its_ecds_filters() {
        // As Envoy dumps a filter delivered by ECDS: the listener has the
        // config_discovery reference, the EcdsConfigDump the config.
        let running = json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "static_listeners": [{"listener": {"name": "l", "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "http_filters": [
                        {"name": "edge_guard", "config_discovery": {"type_urls": []}},
                        {"name": "envoy.filters.http.router"}]}}]}]}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.EcdsConfigDump",
             "ecds_filters": [{"ecds_filter": {
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": "edge_guard",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {"name": "edge_guard", "root_id": "edge_guard",
                               "vm_config": {"vm_id": "edge_guard_live"}}}}}]}
        ]});
        let ids = edge_guard_vm_ids(&EnvoyConfig::from_value(&running).unwrap());
        assert_eq!(ids, vec!["edge_guard_live".to_string()]);
        let finding = vm_id_change(&bootstrap("edge_guard"), &running).unwrap();
        assert!(finding.is_some_and(|f| f.message.contains("edge_guard_live")));
    }

    #[test]
    fn only_edge_guard_wasm_filters_count_for_the_vm_id() {
        let mut envoy = bootstrap("edge_guard");
        let filters = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"]
            .as_array_mut()
            .unwrap();
        // Another team's Wasm filter before edge-guard, and edge-guard twice.
        let other = json!({"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "authz", "root_id": "authz",
                       "vm_config": {"vm_id": "authz", "code": {"local": {"filename": "authz.wasm"}}}}}});
        let twice = filters[0].clone();
        filters.insert(0, other);
        filters.insert(1, twice);
        let ids = edge_guard_vm_ids(&EnvoyConfig::from_value(&envoy).unwrap());
        assert_eq!(ids, vec!["edge_guard".to_string()]);
    }

    /// An HTTP filter delivered through ECDS, its default_config as given.
    fn discovered(name: &str, default_config: Value) -> Value {
        json!({"name": name, "config_discovery": {
            "config_source": {"path_config_source": {"path": "x.json"}},
            "default_config": default_config}})
    }

    fn wasm(config: Value) -> Value {
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
               "config": config})
    }

    #[test]
    fn the_ecds_filter_is_edge_guards_wasm_named_by_name_or_root_id() {
        let policy = json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{\"p\": 1}"});
        let doc = |filters: Vec<Value>| json!({"http_filters": filters});
        // Another team's Wasm filter and a non-Wasm filter named edge_guard
        // come first; neither is taken.
        let other_wasm = discovered(
            "authz",
            wasm(json!({"name": "authz", "root_id": "authz", "configuration": "{\"no\": 1}"})),
        );
        let not_wasm = discovered(
            "lua",
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                   "config": {"name": "edge_guard", "root_id": "edge_guard", "configuration": "{\"no\": 2}"}}),
        );
        let by_root_id = discovered(
            "eg",
            wasm(json!({"root_id": "edge_guard", "configuration": policy})),
        );
        let envoy = doc(vec![other_wasm.clone(), not_wasm.clone(), by_root_id]);
        assert_eq!(ecds_default_policy(&envoy).as_deref(), Some("{\"p\": 1}"));
        assert_eq!(
            ecds_resource(&envoy, "{}").unwrap()["resources"][0]["name"],
            "eg"
        );
        let by_name = discovered(
            "eg2",
            wasm(json!({"name": "edge_guard", "configuration": "{\"q\": 2}"})),
        );
        let envoy = doc(vec![other_wasm.clone(), not_wasm.clone(), by_name]);
        assert_eq!(ecds_default_policy(&envoy).as_deref(), Some("{\"q\": 2}"));
        assert_eq!(ecds_default_policy(&doc(vec![other_wasm, not_wasm])), None);
    }

    /// envoy/ecds/edge_guard.json is what `./build.sh reload` writes from
    /// envoy/policy.json for envoy/envoy.yaml: the shipped one is current.
    #[test]
    fn the_shipped_ecds_file_carries_the_shipped_policy() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("envoy/ecds/edge_guard.json")).unwrap();
        let shipped: Value = serde_json::from_str(&text).unwrap();
        let policy = std::fs::read_to_string(root.join("envoy/policy.json")).unwrap();
        let value = shipped["resources"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap();
        let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        assert_eq!(parse(value), parse(&policy), "run ./build.sh reload");
    }
}
