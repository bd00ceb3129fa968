//! deploy/docker-compose.yaml without Docker (none on these machines):
//! - valid against the compose-spec schema (the one check-jsonschema ships);
//! - every path it mounts or builds from, every file its Dockerfiles copy and
//!   every file its Envoy config names exists; every image is built here or
//!   pinned to an exact version; Envoy is the version the tests run;
//! - its Envoy config (deploy/compose/envoy.yaml) is envoy/envoy.yaml but
//!   for addresses (the drift test names what to copy);
//! - that config runs in real Envoy the way compose runs it: services found
//!   by name (a private /etc/hosts in a private mount and network namespace),
//!   each route reaching its service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use edge_guard_e2e::tools::*;
use serde_json::{json, Value};

const COMPOSE: &str = "deploy/docker-compose.yaml";
const COMPOSE_ENVOY: &str = "deploy/compose/envoy.yaml";
const RUN_ENVOY: &str = "envoy/envoy.yaml";

fn yaml(relative: &str) -> Value {
    let mut doc: serde_norway::Value = serde_norway::from_str(&read_repo_file(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{relative}: merge keys: {e}"));
    serde_json::to_value(doc).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn compose() -> Value {
    yaml(COMPOSE)
}

fn services() -> BTreeMap<String, Value> {
    compose()["services"]
        .as_object()
        .unwrap_or_else(|| panic!("{COMPOSE} has no services"))
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A path in the compose file, relative to the compose file's directory.
fn from_compose_dir(p: &str) -> PathBuf {
    repo_file("deploy").join(p)
}

// ---- schema -------------------------------------------------------------------------

#[test]
fn compose_file_matches_the_compose_spec_schema() {
    run_ok(
        Command::new(check_jsonschema())
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(repo_file(COMPOSE)),
    );
    // The check can fail: the same file with a misspelt service key is refused.
    let dir = std::env::temp_dir().join(format!("edge-guard-compose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let broken = dir.join("docker-compose.yaml");
    let text =
        read_repo_file(COMPOSE).replacen("    networks: [edge]\n", "    netwrks: [edge]\n", 1);
    std::fs::write(&broken, text).expect("write");
    let out = run(Command::new(check_jsonschema())
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(&broken));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "the compose schema accepted `netwrks`:\n{}",
        output_text(&out)
    );
}

// ---- paths, images, networks ------------------------------------------------------------

/// `.dockerignore` patterns (no wildcards are used there): whether the
/// repository path is sent to the Docker build.
fn in_build_context(path: &str) -> bool {
    let mut included = true;
    for line in read_repo_file(".dockerignore").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negate, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pattern = pattern.trim_end_matches('/');
        if path == pattern || path.starts_with(&format!("{pattern}/")) {
            included = negate;
        }
    }
    included
}

/// The `COPY <src> <dst>` lines of a Dockerfile (without `--from`).
fn dockerfile_copies(dockerfile: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dockerfile)
        .unwrap_or_else(|e| panic!("{}: {e}", dockerfile.display()))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--from"))
        .filter_map(|rest| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            (parts.len() == 2).then(|| (parts[0].to_string(), parts[1].to_string()))
        })
        .collect()
}

fn dockerfile_froms(dockerfile: &Path) -> Vec<String> {
    std::fs::read_to_string(dockerfile)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
        .collect()
}

/// An image reference pinned to an exact release (`name:v1.2.3`, `name:1.2.3`,
/// `name:1.95-bookworm` for toolchains, or a digest).
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let Some((_, tag)) = image.rsplit_once(':') else {
        return false;
    };
    let version = tag.trim_start_matches('v');
    let core = version.split('-').next().unwrap_or("");
    let numbers: Vec<&str> = core.split('.').collect();
    !tag.contains("latest")
        && numbers.len() >= 2
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn every_path_image_and_network_the_compose_file_names_exists_and_is_pinned() {
    let services = services();
    let mut problems = Vec::new();
    let built: BTreeSet<String> = services
        .values()
        .filter(|s| s.get("build").is_some())
        .filter_map(|s| s["image"].as_str().map(str::to_string))
        .collect();
    let envoy_version = read_repo_file("build.sh")
        .lines()
        .find_map(|l| {
            l.strip_prefix("ENVOY_VERSION=\"")
                .map(|v| v.trim_end_matches('"').to_string())
        })
        .expect("ENVOY_VERSION in build.sh");

    for (name, svc) in &services {
        if svc.get("network_mode").is_some() {
            problems.push(format!(
                "{name}: network_mode works on Linux only; use the `edge` bridge network"
            ));
        }
        // `networks: [edge]` or `networks: {edge: {...}}`
        let on_edge = match &svc["networks"] {
            Value::Array(list) => list.iter().any(|n| n == "edge"),
            Value::Object(map) => map.contains_key("edge"),
            _ => false,
        };
        if !on_edge {
            problems.push(format!("{name}: not on the `edge` network"));
        }
        // build context and Dockerfile, and what the Dockerfile copies
        if let Some(build) = svc.get("build") {
            let context = from_compose_dir(build["context"].as_str().unwrap_or("."));
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            if !context.is_dir() {
                problems.push(format!(
                    "{name}: build context {} is missing",
                    context.display()
                ));
            }
            if !dockerfile.is_file() {
                problems.push(format!(
                    "{name}: Dockerfile {} is missing",
                    dockerfile.display()
                ));
            }
            for (src, _) in dockerfile_copies(&dockerfile) {
                if src == "." {
                    continue;
                }
                if !context.join(&src).exists() {
                    problems.push(format!(
                        "{name}: {} copies {src}, which does not exist",
                        dockerfile.display()
                    ));
                } else if !in_build_context(&src) {
                    problems.push(format!(
                        "{name}: {} copies {src}, which .dockerignore leaves out",
                        dockerfile.display()
                    ));
                }
            }
            for from in dockerfile_froms(&dockerfile) {
                if !pinned(&from) {
                    problems.push(format!(
                        "{name}: {} uses an unpinned base image {from}",
                        dockerfile.display()
                    ));
                }
                if from.starts_with("envoyproxy/envoy:")
                    && from != format!("envoyproxy/envoy:v{envoy_version}")
                {
                    problems.push(format!(
                        "{name}: {} uses {from}, but the tests run Envoy {envoy_version} (build.sh ENVOY_VERSION): use envoyproxy/envoy:v{envoy_version}",
                        dockerfile.display()
                    ));
                }
            }
        }
        // images: built here, or pinned
        match svc["image"].as_str() {
            Some(image) if built.contains(image) => {}
            Some(image) if pinned(image) => {}
            Some(image) => problems.push(format!(
                "{name}: image {image} is neither built here nor pinned to an exact version"
            )),
            None if svc.get("build").is_some() => {}
            None => problems.push(format!("{name}: no image")),
        }
        // bind mounts
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let Some(spec) = v.as_str() else { continue };
            let host = spec.split(':').next().unwrap_or("");
            if host.starts_with('.') && !from_compose_dir(host).exists() {
                problems.push(format!(
                    "{name}: mounts {host}, which does not exist (relative to deploy/)"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{COMPOSE}:\n{}", problems.join("\n"));
}

/// (host path relative to the repository, container path) of every bind mount.
fn mounts(service: &str) -> Vec<(String, String)> {
    services()[service]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let mut parts = v.as_str()?.split(':');
            let host = parts.next()?;
            let target = parts.next()?;
            Some((
                format!("deploy/{}", host.trim_start_matches("./")),
                target.to_string(),
            ))
        })
        .collect()
}

/// Every string under a key named `filename` or `path` of a config source.
fn named_files(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "filename" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                }
                if k == "path_config_source" {
                    if let Some(s) = v["path"].as_str() {
                        out.push(s.to_string());
                    }
                }
                named_files(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| named_files(i, out)),
        _ => {}
    }
}

#[test]
fn the_compose_wiring_agrees_envoy_services_prometheus_grafana() {
    let services = services();
    let envoy_cfg = yaml(COMPOSE_ENVOY);
    let mut problems = Vec::new();

    // Envoy runs the mounted config, and every file that config names is in
    // the container (copied by its Dockerfile or mounted).
    let envoy_mounts = mounts("envoy");
    let cfg_target = envoy_mounts
        .iter()
        .find(|(host, _)| host == COMPOSE_ENVOY)
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| panic!("the envoy service does not mount {COMPOSE_ENVOY}"));
    let command: Vec<String> = services["envoy"]["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    if !command
        .windows(2)
        .any(|w| w[0] == "-c" && w[1] == cfg_target)
    {
        problems.push(format!(
            "the envoy service's command does not run -c {cfg_target}: {command:?}"
        ));
    }
    let dockerfile = repo_file(
        services["envoy"]["build"]["dockerfile"]
            .as_str()
            .expect("envoy builds"),
    );
    let in_image: BTreeSet<String> = dockerfile_copies(&dockerfile)
        .into_iter()
        .map(|(_, dst)| dst)
        .collect();
    let copied_wasm = std::fs::read_to_string(&dockerfile)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY --from="))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect::<BTreeSet<_>>();
    let mut files = Vec::new();
    named_files(&envoy_cfg, &mut files);
    assert!(!files.is_empty(), "{COMPOSE_ENVOY} names no wasm file");
    // The services reach the egress listener at Envoy's fixed address.
    let envoy_ip = services["envoy"]["networks"]["edge"]["ipv4_address"]
        .as_str()
        .unwrap_or("");
    let egress_port = envoy_cfg["static_resources"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == "egress")
        .and_then(|l| l["address"]["socket_address"]["port_value"].as_u64());
    if let Some(port) = egress_port {
        let egress = format!("{envoy_ip}:{port}");
        for (name, svc) in &services {
            let cmd = svc["command"].to_string();
            if cmd.contains("--egress") && !cmd.contains(&egress) {
                problems.push(format!("{name} sends its outbound calls elsewhere than Envoy's egress listener {egress}: {cmd}"));
            }
        }
    }
    for f in files {
        // A file, or a file in a mounted directory (ECDS watches a directory).
        let mounted = envoy_mounts
            .iter()
            .any(|(_, t)| *t == f || f.starts_with(&format!("{t}/")));
        if !(mounted || in_image.contains(&f) || copied_wasm.contains(&f)) {
            problems.push(format!(
                "{COMPOSE_ENVOY} names {f}, which neither the envoy image nor a mount provides"
            ));
        }
    }

    // Every cluster endpoint is a compose service listening on that port.
    for cluster in envoy_cfg["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let cname = cluster["name"].as_str().unwrap_or("?");
        for ep in cluster["load_assignment"]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for lb in ep["lb_endpoints"].as_array().into_iter().flatten() {
                let sa = &lb["endpoint"]["address"]["socket_address"];
                let host = sa["address"].as_str().unwrap_or("");
                let port = sa["port_value"].as_u64().unwrap_or(0);
                match services.get(host) {
                    None => problems.push(format!(
                        "cluster {cname} points at {host}, which is no compose service"
                    )),
                    Some(svc) => {
                        // `--listen 0.0.0.0:PORT`, or HOST/PORT in the environment
                        let listen = format!("0.0.0.0:{port}");
                        let cmd = svc["command"].to_string();
                        let env = &svc["environment"];
                        let by_env = env["HOST"] == "0.0.0.0"
                            && env["PORT"].as_str() == Some(port.to_string().as_str());
                        if !cmd.contains(&listen) && !by_env {
                            problems.push(format!("cluster {cname} sends to {host}:{port}, but that service does not listen on {listen}: {cmd}"));
                        }
                    }
                }
            }
        }
    }

    // Published ports are Envoy's ingress listener (`edge`) and admin ports;
    // the egress listener is for the services only.
    let ports: Vec<String> = services["envoy"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let admin_port = envoy_cfg["admin"]["address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap_or(0);
    let listener_ports: Vec<u64> = envoy_cfg["static_resources"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["name"] == "edge")
        .filter_map(|l| l["address"]["socket_address"]["port_value"].as_u64())
        .collect();
    for port in listener_ports.iter().chain([admin_port].iter()) {
        if !ports.iter().any(|p| p.ends_with(&format!(":{port}"))) {
            problems.push(format!(
                "the envoy service does not publish port {port}: {ports:?}"
            ));
        }
    }

    // Prometheus scrapes the envoy service's admin port and loads the mounted rules.
    let prom_mounts = mounts("prometheus");
    let prom_cfg_host = prom_mounts
        .iter()
        .find(|(_, t)| t == "/etc/prometheus/prometheus.yml")
        .map(|(h, _)| h.clone())
        .expect("prometheus.yml mounted at /etc/prometheus/prometheus.yml");
    let prom = yaml(&prom_cfg_host);
    let target = format!("envoy:{admin_port}");
    if !prom.to_string().contains(&format!("\"{target}\"")) {
        problems.push(format!("{prom_cfg_host} does not scrape {target}"));
    }
    for rule_file in prom["rule_files"].as_array().into_iter().flatten() {
        let rf = rule_file.as_str().unwrap_or("");
        if !prom_mounts.iter().any(|(_, t)| t == rf) {
            problems.push(format!("{prom_cfg_host} loads {rf}, which is not mounted"));
        }
    }

    // Grafana's dashboard provider reads the directory the dashboard is mounted in.
    let graf = mounts("grafana");
    let provisioning = graf
        .iter()
        .find(|(_, t)| t == "/etc/grafana/provisioning")
        .map(|(h, _)| h.clone())
        .expect("grafana provisioning mounted");
    let provider = yaml(&format!("{provisioning}/dashboards/edge-guard.yml"));
    let dash_dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap_or("");
    if !graf.iter().any(|(h, t)| {
        h == "deploy/grafana/edge-guard.json" && t.starts_with(&format!("{dash_dir}/"))
    }) {
        problems.push(format!(
            "grafana's dashboard provider reads {dash_dir}, where edge-guard.json is not mounted"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- the compose Envoy config is the run config but for addresses ---------------------------

/// Where the two configs may differ: addresses, how clusters find their
/// endpoints, file paths, and the status endpoint's allowed networks.
fn address_like(path: &str) -> bool {
    path == "admin.address"
        || (path.starts_with("static_resources.listeners[") && path.ends_with("].address"))
        || (path.starts_with("static_resources.clusters[")
            && [
                "].type",
                "].load_assignment",
                "].dns_lookup_family",
                "].dns_refresh_rate",
                "].respect_dns_ttl",
            ]
            .iter()
            .any(|s| path.ends_with(s)))
        || path.ends_with(".filename")
        || path.ends_with("path_config_source.path")
        || path.ends_with("policy.status.allow_cidrs")
        || path.ends_with(".internal_address_config")
}

/// A compact rendering of a value for the failure message.
fn show(v: Option<&Value>) -> String {
    match v {
        None => "nothing".to_string(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 300 {
                format!("{}…", &s[..300])
            } else {
                s
            }
        }
    }
}

/// Lists keyed by `name` are compared by name; the embedded policy (a JSON
/// string under `configuration.value`) as JSON.
fn diff(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
    if address_like(path) {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k == "value" && path.ends_with("configuration") {
                    let pa = x
                        .get(k)
                        .and_then(Value::as_str)
                        .and_then(|s| serde_json::from_str::<Value>(s).ok());
                    let pb = y
                        .get(k)
                        .and_then(Value::as_str)
                        .and_then(|s| serde_json::from_str::<Value>(s).ok());
                    if pa.is_some() && pb.is_some() {
                        diff(&format!("{path}.policy"), pa.as_ref(), pb.as_ref(), out);
                        continue;
                    }
                }
                diff(&p, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            let named = |v: &Vec<Value>| v.iter().all(|i| i["name"].is_string());
            if named(x) && named(y) && !x.is_empty() {
                let by_name = |v: &Vec<Value>| -> BTreeMap<String, Value> {
                    v.iter()
                        .map(|i| (i["name"].as_str().unwrap_or("").to_string(), i.clone()))
                        .collect()
                };
                let (mx, my) = (by_name(x), by_name(y));
                let names: BTreeSet<&String> = mx.keys().chain(my.keys()).collect();
                for n in names {
                    diff(&format!("{path}[{n}]"), mx.get(n), my.get(n), out);
                }
                let order =
                    |m: &Vec<Value>| m.iter().map(|i| i["name"].clone()).collect::<Vec<_>>();
                if mx.len() == my.len() && mx.keys().eq(my.keys()) && order(x) != order(y) {
                    out.push(format!("{path}: the order differs (Envoy matches routes in order): {RUN_ENVOY} has {}", json!(order(x))));
                }
            } else if x.len() != y.len() {
                out.push(format!(
                    "{path}: {RUN_ENVOY} has {}, {COMPOSE_ENVOY} has {}",
                    show(a),
                    show(b)
                ));
            } else {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    diff(&format!("{path}[{i}]"), Some(p), Some(q), out);
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!(
            "{path}: {RUN_ENVOY} has {}, {COMPOSE_ENVOY} has {}",
            show(a),
            show(b)
        )),
    }
}

#[test]
fn compose_envoy_config_is_the_run_config_but_for_addresses() {
    let run_cfg = yaml(RUN_ENVOY);
    let compose_cfg = yaml(COMPOSE_ENVOY);
    let mut out = Vec::new();
    diff("", Some(&run_cfg), Some(&compose_cfg), &mut out);
    assert!(
        out.is_empty(),
        "{COMPOSE_ENVOY} (docker compose) has drifted from {RUN_ENVOY} (./build.sh run).\n\
         Copy each value below from {RUN_ENVOY} into {COMPOSE_ENVOY} at the same place \
         (listeners, routes and clusters are matched by name). Only addresses, cluster \
         type/DNS settings and endpoints (compose service names, port 8080), file paths \
         (/etc/envoy/...) and the policy's status.allow_cidrs may differ. A new cluster \
         needs a demo service in {COMPOSE}; a new file needs a mount or a COPY.\n{}",
        out.join("\n")
    );
}

#[test]
fn the_drift_check_names_what_to_copy() {
    let run_cfg = yaml(RUN_ENVOY);
    let mut changed = yaml(COMPOSE_ENVOY);
    changed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["request_headers_timeout"] = json!("99s");
    let mut out = Vec::new();
    diff("", Some(&run_cfg), Some(&changed), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].contains("request_headers_timeout")
            && out[0].contains("\"10s\"")
            && out[0].contains("\"99s\""),
        "{out:?}"
    );
}

// ---- the compose Envoy config through real Envoy ---------------------------------------------

#[test]
fn compose_envoy_config_routes_by_service_name_in_real_envoy() {
    // A private mount and network namespace: root, or sudo on a runner that is not.
    let compose_cfg = read_repo_file(COMPOSE_ENVOY);
    let wasm = edge_guard_e2e::paths::wasm();
    let envoy = edge_guard_e2e::paths::envoy_bin();
    let demo = repo_file("target/release/demo-upstream");
    let demo = if demo.is_file() {
        demo
    } else {
        edge_guard_e2e::paths::upstream_bin()
    };
    let dir = std::env::temp_dir().join(format!("edge-guard-compose-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Only the wasm's path differs from the container (the image has it at
    // /etc/envoy), and the ECDS resource's (the compose file mounts
    // deploy/compose/ecds at /etc/envoy/ecds; it names the wasm too).
    let wasm_path = wasm.to_string_lossy();
    let ecds = dir.join("edge_guard.json");
    std::fs::write(
        &ecds,
        read_repo_file("deploy/compose/ecds/edge_guard.json")
            .replace("/etc/envoy/edge_guard.wasm", &wasm_path),
    )
    .expect("write the ECDS resource");
    std::fs::write(
        dir.join("envoy.yaml"),
        compose_cfg
            .replace("/etc/envoy/edge_guard.wasm", &wasm_path)
            .replace("/etc/envoy/ecds/edge_guard.json", &ecds.to_string_lossy()),
    )
    .expect("write config");
    // Docker's embedded DNS, as a hosts file; each service at its own address
    // of the compose subnet, Envoy at its fixed one; the services' commands
    // as the compose file gives them.
    let envoy_ip = services()["envoy"]["networks"]["edge"]["ipv4_address"]
        .as_str()
        .expect("envoy has a fixed address")
        .to_string();
    let prefix = envoy_ip
        .rsplit_once('.')
        .map(|(p, _)| p.to_string())
        .expect("ipv4");
    let demos: Vec<(String, Vec<String>)> = services()
        .iter()
        .filter_map(|(name, svc)| {
            let cmd: Vec<String> = svc["command"]
                .as_array()?
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            (cmd.first()? == "demo-upstream").then(|| (name.clone(), cmd[1..].to_vec()))
        })
        .collect();
    assert!(demos.len() >= 7, "{demos:?}");
    let mut hosts = String::from("127.0.0.1 localhost\n");
    let mut starts = format!("ip addr add {envoy_ip}/32 dev lo\n");
    // The socket.io service runs from demo/socketio with the compose file's
    // environment (its host address in place of 0.0.0.0); the others
    // (Prometheus, Grafana) resolve too, with nothing listening.
    let node_dir = repo_file("demo/socketio");
    // By its path: under sudo (a runner that is not root) PATH is sudo's.
    let node = on_path("node");
    for (i, (name, svc)) in services()
        .iter()
        .filter(|(n, _)| *n != "envoy" && !demos.iter().any(|(d, _)| d == *n))
        .enumerate()
    {
        let ip = format!("{prefix}.{}", i + 100);
        hosts.push_str(&format!("{ip} {name}\n"));
        if svc["build"]["dockerfile"] == "deploy/socketio.Dockerfile" {
            let env: Vec<String> = svc["environment"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let v = v.as_str().unwrap_or("");
                    let v = if k == "HOST" { ip.as_str() } else { v };
                    format!("'{k}={v}'")
                })
                .collect();
            starts.push_str(&format!(
                "ip addr add {ip}/32 dev lo\nenv {} '{}' '{}/server.js' >>'{d}/socketio.log' 2>&1 & pids=\"$pids $!\"\n",
                env.join(" "),
                node.display(),
                node_dir.display(),
                d = dir.display()
            ));
        }
    }
    for (i, (host, args)) in demos.iter().enumerate() {
        let ip = format!("{prefix}.{}", i + 20);
        hosts.push_str(&format!("{ip} {host}\n"));
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a == "0.0.0.0:8080" {
                    format!("{ip}:8080")
                } else {
                    a.clone()
                }
            })
            .map(|a| format!("'{a}'"))
            .collect();
        starts.push_str(&format!(
            "ip addr add {ip}/32 dev lo\n'{}' {} >>'{d}/demo.log' 2>&1 & pids=\"$pids $!\"\n",
            demo.display(),
            args.join(" "),
            d = dir.display()
        ));
    }
    std::fs::write(dir.join("hosts"), hosts).expect("hosts");
    let script = format!(
        r#"set -u
pids=""
trap 'for p in $pids; do kill -KILL $p 2>/dev/null; done; wait' EXIT
mount --bind '{d}/hosts' /etc/hosts
ip link set lo up
{starts}
'{envoy}' -c '{d}/envoy.yaml' --concurrency 1 --disable-hot-restart -l warning >'{d}/envoy.log' 2>&1 & pids="$pids $!"
for i in $(seq 1 150); do curl -fs -m 1 http://127.0.0.1:9901/ready >/dev/null && break; sleep 0.1; done
# STRICT_DNS resolves asynchronously: wait until every cluster has a healthy host.
for i in $(seq 1 100); do
  n=$(curl -fs -m 1 'http://127.0.0.1:9901/clusters' | grep -c '::health_flags::healthy')
  [ "$n" -ge {clusters} ] && break; sleep 0.1
done
for p in /api/courses/7 /api/bookings/1 /api/payments/1 /api/notifications/1 /api/uploads/1; do
  m=GET; [ "$p" = /api/uploads/1 ] && m=POST
  printf '%s %s\n' "$p" "$(curl -s -m 5 -X $m http://127.0.0.1:10000$p)"
done
printf 'STATUS %s\n' "$(curl -s -m 5 http://127.0.0.1:10000/.edge-guard/status)"
printf 'EGRESS %s\n' "$(curl -s -m 10 http://127.0.0.1:10000/api/bookings/1/__call/sms.example.com/v1/send)"
for i in $(seq 1 50); do
  sio=$(curl -s -m 5 -H 'x-user-id: alice' 'http://127.0.0.1:10000/ws/events/socket.io/?EIO=4&transport=polling')
  case "$sio" in 0*) break ;; esac; sleep 0.1
done
printf 'SOCKETIO %s\n' "$sio"
"#,
        d = dir.display(),
        envoy = envoy.display(),
        clusters = yaml(COMPOSE_ENVOY)["static_resources"]["clusters"]
            .as_array()
            .map_or(0, Vec::len),
    );
    let out = run(privileged("timeout").args([
        "60",
        "unshare",
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "--",
        "bash",
        "-c",
        &script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    let expect = [
        ("/api/courses/7", "course_service"),
        ("/api/bookings/1", "booking_service"),
        ("/api/payments/1", "payment_service"),
        ("/api/notifications/1", "notification_service"),
        ("/api/uploads/1", "upload_service"),
    ];
    let mut problems = Vec::new();
    for (path, svc) in expect {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{path} ")))
            .unwrap_or("");
        if !line.contains(&format!("\"service\":\"{svc}\"")) {
            problems.push(format!("{path} did not reach {svc}: {line}"));
        }
    }
    // The status endpoint answers from loopback and shows every cluster healthy.
    let status = text
        .lines()
        .find_map(|l| l.strip_prefix("STATUS "))
        .unwrap_or("");
    if !status.contains("\"routes\"") {
        problems.push(format!("no status document: {status}"));
    }
    // The socket.io service answers an Engine.IO handshake through Envoy and edge-guard.
    let sio = text
        .lines()
        .find_map(|l| l.strip_prefix("SOCKETIO "))
        .unwrap_or("");
    if !(sio.starts_with("0{") && sio.contains("\"sid\"")) {
        problems.push(format!(
            "no Engine.IO open packet from event-live-service: {sio}"
        ));
    }
    // A service's own outbound call goes through the egress listener, by
    // Envoy's fixed address, to the external API's service.
    let egress = text
        .lines()
        .find_map(|l| l.strip_prefix("EGRESS "))
        .unwrap_or("");
    let call: Value = serde_json::from_str(egress).unwrap_or(Value::Null);
    if call["service"] != "booking_service" || call["response"]["service"] != "sms_api" {
        problems.push(format!("booking_service's call to sms.example.com did not reach sms_api through the egress listener: {egress}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        problems.is_empty(),
        "{COMPOSE_ENVOY} in real Envoy with compose's service names:\n{}\n---- output ----\n{text}\n{}\n---- envoy log ----\n{log}",
        problems.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}
