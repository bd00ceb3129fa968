//! The observability assets, tested:
//! - deploy/prometheus/edge-guard.rules.yml passes `promtool check rules` and
//!   its unit tests (`promtool test rules`);
//! - a real Prometheus (Debian's package), configured from
//!   deploy/prometheus/prometheus.yml with the rules loaded, scrapes a real
//!   Envoy running envoy/envoy.yaml (the `./build.sh run` config, ports and
//!   upstreams rewritten) while traffic flows; every metric and label that
//!   the rules and the Grafana dashboard name must be among what it stored,
//!   every rule must evaluate without error, and every dashboard query must
//!   run and return series.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_guard_e2e::tools::*;
use edge_guard_e2e::*;

const RULES: &str = "deploy/prometheus/edge-guard.rules.yml";
const RULES_TEST: &str = "deploy/prometheus/edge-guard.rules.test.yml";
const PROM_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/edge-guard.json";

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = on_path("promtool");
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(repo_file(RULES)),
    );
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(repo_file(RULES_TEST))
            .current_dir(repo_file("deploy/prometheus")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---- PromQL: which metrics and labels an expression names -------------------------------

/// Clauses whose parenthesised list names labels.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "Inf",
    "NaN",
    "inf",
    "nan",
    "atan2",
    // aggregations, which may have `by (...)` before their `(`
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
];

/// (metric names, label names) an expression uses. Functions and aggregations
/// are identifiers followed by `(`; label names come from matchers and from
/// by/without/on/ignoring/group_* lists.
fn names_in(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == '{' {
            let start = i + 1;
            while i < chars.len() && chars[i] != '}' {
                if chars[i] == '"' {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        i += 1;
                    }
                }
                i += 1;
            }
            let inner: String = chars[start..i.min(chars.len())].iter().collect();
            for part in split_matchers(&inner) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "__name__" {
                    labels.insert(name);
                }
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let followed_by_paren = j < chars.len() && chars[j] == '(';
            let grouping = GROUPING.contains(&word.as_str());
            if grouping && followed_by_paren {
                let close = chars[j..]
                    .iter()
                    .position(|&c| c == ')')
                    .map_or(chars.len(), |p| j + p);
                let inner: String = chars[j + 1..close].iter().collect();
                for l in inner.split(',') {
                    let l = l.trim();
                    if !l.is_empty() {
                        labels.insert(l.to_string());
                    }
                }
                i = close + 1;
            } else if !followed_by_paren
                && !KEYWORDS.contains(&word.as_str())
                && !GROUPING.contains(&word.as_str())
                && !last_word.ends_with('$')
            {
                metrics.insert(word.clone());
            }
            last_word = word;
            continue;
        }
        last_word = c.to_string();
        i += 1;
    }
    (metrics, labels)
}

fn split_matchers(inner: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_str = false;
    for c in inner.chars() {
        match c {
            '"' => {
                in_str = !in_str;
                cur.push(c);
            }
            ',' if !in_str => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

#[test]
fn promql_name_extraction() {
    let (m, l) = names_in(
        r#"histogram_quantile(0.99, sum by (envoy_route, le) (rate(envoy_vhost_route_upstream_rq_time_bucket{instance=~"$instance", x="a,b"}[$__rate_interval]))) > on (instance) 0.9 * edge_guard:ratio and up"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        [
            "edge_guard:ratio",
            "envoy_vhost_route_upstream_rq_time_bucket",
            "up"
        ]
    );
    assert_eq!(
        l.into_iter().collect::<Vec<_>>(),
        ["envoy_route", "instance", "le", "x"]
    );
}

/// Every expression of the rules (alerts and recordings) and the dashboard
/// (panel targets and variable queries), with where it comes from.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules: serde_norway::Value =
        serde_norway::from_str(&read_repo_file(RULES)).expect("rules yaml");
    let rules = serde_json::to_value(rules).expect("rules json");
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            out.push((
                format!("{RULES} {name}"),
                rule["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    let dash: Value = serde_json::from_str(&read_repo_file(DASHBOARD)).expect("dashboard json");
    for panel in dash["panels"].as_array().into_iter().flatten() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!(
                    "{DASHBOARD} panel {:?} {}",
                    panel["title"].as_str().unwrap_or(""),
                    t["refId"].as_str().unwrap_or("")
                ),
                t["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let q = var["query"].as_str().unwrap_or("");
            // label_values(metric, label)
            if let Some(args) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            {
                let mut it = args.split(',').map(str::trim);
                let metric = it.next().unwrap_or("");
                let label = it.next().unwrap_or("");
                out.push((
                    format!("{DASHBOARD} variable {}", var["name"]),
                    format!("sum by ({label}) ({metric})"),
                ));
            }
        }
    }
    out
}

/// Grafana's variables, as Prometheus takes them.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
}

#[test]
fn dashboard_is_well_formed_and_every_panel_has_queries() {
    let dash: Value = serde_json::from_str(&read_repo_file(DASHBOARD)).expect("dashboard json");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{}", panels.len());
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {p}"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let (metrics, _) = names_in(t["expr"].as_str().unwrap_or(""));
            assert!(
                !metrics.is_empty(),
                "panel {} query names no metric: {t}",
                p["title"]
            );
        }
    }
    // What the issue asks the dashboard to show.
    let text = dash.to_string();
    for needle in [
        "envoy_vhost_route_upstream_rq_time_bucket", // p50/p95/p99 by route (Envoy's per-route stats)
        "edge_guard_route_request_duration_ms_bucket", // by class
        "edge_guard_route_deadline_upstream_timeout",
        "edge_guard_websocket_max_connections",
        "edge_guard_rejected",
        "edge_guard_cluster_healthy",
    ] {
        assert!(
            text.contains(needle),
            "the dashboard does not show {needle}"
        );
    }
}

// ---- real Prometheus, real Envoy ------------------------------------------------------------

struct Proc {
    child: Child,
    what: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // By PID: SIGTERM, then SIGKILL after 3 s; always reaped.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own, not yet reaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("[deploy_prometheus] {} needed SIGKILL", self.what);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let resp = http::send(addr, &Request::get(path).timeout(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    assert_eq!(resp.status, 200, "GET {path}: {resp:?}");
    resp.json()
}

fn query(prom: SocketAddr, promql: &str) -> Value {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    get_json(prom, &format!("/api/v1/query?query={q}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// envoy/envoy.yaml with OS-assigned listener/admin ports, this test's
/// upstreams and the built wasm (also in a copy of the ingress filter's ECDS
/// resource, written to `dir`): otherwise unchanged.
fn run_config(ports: &BTreeMap<u16, u16>, dir: &std::path::Path) -> String {
    let wasm = paths::wasm();
    let ecds = dir.join("edge_guard.json");
    std::fs::write(
        &ecds,
        read_repo_file("envoy/ecds/edge_guard.json").replace(
            "target/wasm32-wasip1/release/edge_guard.wasm",
            &wasm.display().to_string(),
        ),
    )
    .expect("write the ECDS resource");
    let mut cfg = read_repo_file("envoy/envoy.yaml")
        .replace(
            "path_config_source: {path: envoy/ecds/edge_guard.json}",
            &format!("path_config_source: {{path: {}}}", ecds.display()),
        )
        .replace(
            "address: 127.0.0.1, port_value: 9901",
            "address: 127.0.0.1, port_value: 0",
        )
        .replace(
            "address: 127.0.0.1, port_value: 10000",
            "address: 127.0.0.1, port_value: 0",
        )
        .replace(
            "filename: target/wasm32-wasip1/release/edge_guard.wasm",
            &format!("filename: {}", wasm.display()),
        );
    for (from, to) in ports {
        cfg = cfg.replace(
            &format!("port_value: {from}}}"),
            &format!("port_value: {to}}}"),
        );
    }
    cfg
}

#[test]
fn real_prometheus_sees_every_metric_and_label_the_rules_and_dashboard_use() {
    let prometheus_bin = on_path("prometheus");
    let dir = paths::TestDir::new("prometheus");

    // The demo services at OS-assigned ports, in place of 18081-18086.
    let names = [
        "course_service",
        "booking_service",
        "payment_service",
        "notification_service",
        "upload_service",
        "event_service",
    ];
    let ups: Vec<Upstream> = names.iter().map(|n| Upstream::start(n)).collect();
    let ports: BTreeMap<u16, u16> = ups
        .iter()
        .enumerate()
        .map(|(i, u)| (18081 + i as u16, u.port()))
        .collect();
    let cfg_path = dir.join("envoy.yaml");
    std::fs::write(&cfg_path, run_config(&ports, dir.path())).expect("write envoy.yaml");
    let admin_path = dir.join("admin.address");
    let envoy = Proc {
        child: Command::new(paths::envoy_bin())
            .arg("-c")
            .arg(&cfg_path)
            .args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("envoy.log")).expect("log"))
            .spawn()
            .expect("start envoy"),
        what: "envoy",
    };
    let mut admin: Option<SocketAddr> = None;
    wait_until("Envoy ready", Duration::from_secs(30), || {
        admin = admin.or_else(|| {
            std::fs::read_to_string(&admin_path)
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        admin.is_some_and(|a| http::send(a, &Request::get("/ready")).is_ok_and(|r| r.status == 200))
    });
    let admin = admin.expect("admin address");
    let listeners = get_json(admin, "/listeners?format=json");
    let listener: SocketAddr = listeners["listener_statuses"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "edge"))
        .and_then(|l| {
            let sa = &l["local_address"]["socket_address"];
            Some(SocketAddr::new(
                sa["address"].as_str()?.parse().ok()?,
                sa["port_value"].as_u64()? as u16,
            ))
        })
        .unwrap_or_else(|| panic!("no edge listener: {listeners}"));

    // Prometheus from deploy/prometheus/prometheus.yml: this Envoy as the
    // target, 1 s intervals, the repository's rules.
    let prom_cfg = read_repo_file(PROM_CONFIG)
        .replace("envoy:9901", &admin.to_string())
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("evaluation_interval: 5s", "evaluation_interval: 1s")
        .replace(
            "/etc/prometheus/edge-guard.rules.yml",
            &repo_file(RULES).display().to_string(),
        );
    assert!(
        prom_cfg.contains(&admin.to_string()),
        "{PROM_CONFIG} no longer scrapes envoy:9901"
    );
    std::fs::write(dir.join("prometheus.yml"), &prom_cfg).expect("write prometheus.yml");
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let _prometheus = Proc {
        child: Command::new(&prometheus_bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
        what: "prometheus",
    };
    wait_until("Prometheus ready", Duration::from_secs(30), || {
        http::send(prom_addr, &Request::get("/-/ready")).is_ok_and(|r| r.status == 200)
    });

    // Traffic: answered, refused, failing, timing out, and a WebSocket held open.
    let slow = std::thread::spawn(move || {
        http::send(
            listener,
            &Request::get("/api/notifications/x?delay_ms=6000").timeout(Duration::from_secs(15)),
        )
        .map(|r| r.status)
    });
    for _ in 0..5 {
        assert_eq!(
            http::send(listener, &Request::get("/api/courses/7"))
                .map(|r| r.status)
                .ok(),
            Some(200)
        );
        let _ = http::send(listener, &Request::get("/api/nope"));
        let _ = http::send(listener, &Request::delete("/api/courses/7"));
        let _ = http::send(listener, &Request::get("/api/bookings/1?status=503"));
    }
    let ws = ws::connect(listener, "/ws/events", &[("x-user-id", "alice")])
        .unwrap_or_else(|r| panic!("WebSocket refused: {r:?}"));
    assert_eq!(
        slow.join().ok().and_then(|r| r.ok()),
        Some(504),
        "the notification deadline (5 s) answers 504"
    );

    let value = |promql: &str| -> Option<f64> {
        query(prom_addr, promql)["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    };
    wait_until(
        "Prometheus to scrape the open WebSocket and the deadline hit",
        Duration::from_secs(30),
        || {
            value("edge_guard_websocket_active") == Some(1.0)
                && value(
                    r#"edge_guard_route_deadline_upstream_timeout{edge_guard_route="notifications"}"#,
                ) == Some(1.0)
        },
    );
    // Let the rules evaluate over a few scrapes.
    std::thread::sleep(Duration::from_secs(3));

    let mut problems = Vec::new();
    // Every rule evaluates cleanly.
    let rules = get_json(prom_addr, "/api/v1/rules");
    let mut rule_count = 0;
    for group in rules["data"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            rule_count += 1;
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {} is {}: {}",
                    rule["name"], rule["health"], rule["lastError"]
                ));
            }
        }
    }
    if rule_count < 10 {
        problems.push(format!("Prometheus loaded {rule_count} rules from {RULES}"));
    }

    // Every metric named exists, with every label named.
    let mut labels_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, expr) in expressions() {
        let (metrics, _) = names_in(&expr);
        for m in metrics {
            if labels_of.contains_key(&m) {
                continue;
            }
            let series = get_json(prom_addr, &format!("/api/v1/series?match[]={m}"));
            let labels: BTreeSet<String> = series["data"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| {
                    s.as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .collect();
            labels_of.insert(m, labels);
        }
    }
    for (origin, expr) in expressions() {
        let (metrics, labels) = names_in(&expr);
        for m in &metrics {
            let seen = &labels_of[m];
            if seen.is_empty() {
                problems.push(format!(
                    "{origin}: Prometheus never saw `{m}` (expr: {expr})"
                ));
                continue;
            }
            for l in &labels {
                let needed = match l.as_str() {
                    "le" => m.ends_with("_bucket"),
                    _ => true,
                };
                // A label may come from another metric of a binary expression.
                let from_any = metrics.iter().any(|o| labels_of[o].contains(l));
                if needed && !seen.contains(l) && !from_any {
                    problems.push(format!(
                        "{origin}: `{m}` has no label `{l}` (it has {seen:?})"
                    ));
                }
            }
        }
    }
    // Every dashboard query runs and returns series.
    for (origin, expr) in expressions()
        .into_iter()
        .filter(|(o, _)| o.starts_with(DASHBOARD))
    {
        let r = query(prom_addr, &as_promql(&expr));
        let has_series = matches!(r["data"]["result"].as_array(), Some(a) if !a.is_empty());
        if r["status"] != "success" || !has_series {
            problems.push(format!("{origin}: `{expr}` returned {r}"));
        }
    }
    drop(ws);
    drop(envoy);
    assert!(
        problems.is_empty(),
        "the rules and the dashboard must use only what a real Envoy with edge-guard exports:\n{}\n(Prometheus log: {})",
        problems.join("\n"),
        dir.join("prometheus.log").display()
    );
}
