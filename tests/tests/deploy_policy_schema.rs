//! `policy.schema.json` (for editors and CI linting of policies) against the
//! filter's own reader, so the two cannot drift:
//! - every valid fixture (tests/fixtures/policy/valid, the demo policy, the
//!   Istio and Envoy Gateway manifests' policies) passes both;
//! - every invalid fixture (tests/fixtures/policy/invalid) fails both;
//! - every object the reader reads lists, in the schema, exactly the fields
//!   the reader accepts: a field added to the reader (or the schema) alone
//!   fails here, naming the field and where to add it.
//!
//! The schema is checked by Python's `jsonschema` (draft 2020-12) from the
//! pinned tools in `.tools/venv`; the reader is `edge_guard::policy`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use edge_guard_e2e::tools::*;
use serde_json::{json, Value};

const SCHEMA: &str = "policy.schema.json";
const PROBE: &str = "__edge_guard_schema_probe__";

fn schema() -> Value {
    serde_json::from_str(&read_repo_file(SCHEMA)).unwrap_or_else(|e| panic!("{SCHEMA}: {e}"))
}

fn fixtures(dir: &str) -> Vec<(String, Value)> {
    let path = repo_file(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {dir}");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            let doc = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (
                format!(
                    "{dir}/{}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                doc,
            )
        })
        .collect()
}

fn yaml_file(relative: &str) -> Value {
    let doc: serde_norway::Value = serde_norway::from_str(&read_repo_file(relative))
        .unwrap_or_else(|e| panic!("{relative}: {e}"));
    serde_json::to_value(doc).expect("yaml as json")
}

/// The valid policies: fixtures plus every policy the repository ships.
fn valid_policies() -> Vec<(String, Value)> {
    let mut all = fixtures("tests/fixtures/policy/valid");
    all.push((
        "envoy/policy.json".into(),
        serde_json::from_str(&read_repo_file("envoy/policy.json")).expect("envoy/policy.json"),
    ));
    if let Ok(text) = std::fs::read_to_string(repo_file("envoy/egress-policy.json")) {
        all.push((
            "envoy/egress-policy.json".into(),
            serde_json::from_str(&text).expect("envoy/egress-policy.json"),
        ));
    }
    // Every policy embedded in the shipped Envoy configs.
    for cfg in ["envoy/envoy.yaml", "deploy/compose/envoy.yaml"] {
        let mut found = Vec::new();
        embedded_policies(&yaml_file(cfg), &mut found);
        assert!(!found.is_empty(), "no policy found in {cfg}");
        for (i, p) in found.into_iter().enumerate() {
            all.push((format!("{cfg} policy {i}"), p));
        }
    }
    all.push((
        "deploy/istio/wasmplugin.yaml spec.pluginConfig".into(),
        yaml_file("deploy/istio/wasmplugin.yaml")["spec"]["pluginConfig"].clone(),
    ));
    all.push((
        "deploy/envoy-gateway/extension-policy.yaml spec.wasm[0].config".into(),
        yaml_file("deploy/envoy-gateway/extension-policy.yaml")["spec"]["wasm"][0]["config"]
            .clone(),
    ));
    all
}

/// The JSON policies in `configuration: {value: ...}` of wasm filters.
fn embedded_policies(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            if let Some(text) = map.get("configuration").and_then(|c| c["value"].as_str()) {
                if let Ok(policy) = serde_json::from_str::<Value>(text) {
                    out.push(policy);
                }
            }
            map.values().for_each(|v| embedded_policies(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| embedded_policies(v, out)),
        _ => {}
    }
}

/// The reader's verdict: parse and compile, as the filter does.
fn reader(doc: &Value) -> Result<(), String> {
    edge_guard::policy::Policy::from_json(doc.to_string().as_bytes())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The schema's verdict for each document: `None` = valid, else the errors.
fn schema_verdicts(docs: &[&Value]) -> Vec<Option<String>> {
    const SCRIPT: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema)
out = []
for doc in json.load(sys.stdin):
    errs = ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(root)", e.message) for e in v.iter_errors(doc)]
    out.append("; ".join(errs) if errs else None)
print(json.dumps(out))
"#;
    let mut child = Command::new(tools_python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(repo_file(SCHEMA))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the schema validator");
    let input = serde_json::to_vec(docs).expect("docs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write docs");
    let out = child.wait_with_output().expect("schema validator");
    assert!(
        out.status.success(),
        "the schema validator failed (is {SCHEMA} a valid draft 2020-12 schema?):\n{}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("validator output")
}

#[test]
fn every_valid_policy_passes_the_reader_and_the_schema() {
    let valid = valid_policies();
    let docs: Vec<&Value> = valid.iter().map(|(_, d)| d).collect();
    let verdicts = schema_verdicts(&docs);
    let mut problems = Vec::new();
    for ((name, doc), verdict) in valid.iter().zip(verdicts) {
        if let Err(e) = reader(doc) {
            problems.push(format!("{name}: the filter refuses it: {e}"));
        }
        if let Some(e) = verdict {
            problems.push(format!("{name}: {SCHEMA} refuses it: {e}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_invalid_policy_fails_the_reader_and_the_schema() {
    let invalid = fixtures("tests/fixtures/policy/invalid");
    let docs: Vec<&Value> = invalid.iter().map(|(_, d)| d).collect();
    let verdicts = schema_verdicts(&docs);
    let mut problems = Vec::new();
    for ((name, doc), verdict) in invalid.iter().zip(verdicts) {
        if reader(doc).is_ok() {
            problems.push(format!("{name}: the filter accepts it"));
        }
        if verdict.is_none() {
            problems.push(format!("{name}: {SCHEMA} accepts it"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- the fields of every object, reader vs schema ------------------------------------

/// `#/$defs/x` → the node.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap_or(r);
            root.pointer(pointer)
                .unwrap_or_else(|| panic!("{SCHEMA}: dangling $ref {r}"))
        }
        None => node,
    }
}

/// One object the reader reads: where it is in a document, the schema node
/// that describes it (and that node's pointer), and the document.
struct Site {
    fixture: String,
    doc: Value,
    path: Vec<Value>, // keys (strings) and indices (numbers)
    schema_pointer: String,
    schema_fields: BTreeSet<String>,
}

/// Walks documents alongside the schema, collecting every closed object.
struct Walk<'a> {
    root: &'a Value,
    fixture: String,
    doc: Value,
    sites: Vec<Site>,
    problems: Vec<String>,
}

impl<'a> Walk<'a> {
    fn new(root: &'a Value) -> Walk<'a> {
        Walk {
            root,
            fixture: String::new(),
            doc: Value::Null,
            sites: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn document(&mut self, fixture: &str, doc: &Value) {
        self.fixture = fixture.to_string();
        self.doc = doc.clone();
        let root = self.root;
        self.visit(root, "#".to_string(), doc, Vec::new());
    }

    fn visit(&mut self, node: &'a Value, pointer: String, value: &Value, path: Vec<Value>) {
        let root = self.root;
        let (node, pointer) = match node.get("$ref").and_then(Value::as_str) {
            Some(r) => (resolve(root, node), r.to_string()),
            None => (node, pointer),
        };
        if let Some(branches) = node.get("oneOf").and_then(Value::as_array) {
            if value.is_object() {
                if let Some((i, b)) = branches.iter().enumerate().find(|(_, b)| {
                    resolve(root, b).get("type").and_then(Value::as_str) == Some("object")
                }) {
                    self.visit(b, format!("{pointer}/oneOf/{i}"), value, path);
                }
            }
            return;
        }
        match value {
            Value::Object(map) => match node.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    let props = node.get("properties").and_then(Value::as_object);
                    self.sites.push(Site {
                        fixture: self.fixture.clone(),
                        doc: self.doc.clone(),
                        path: path.clone(),
                        schema_pointer: pointer.clone(),
                        schema_fields: props.map(|p| p.keys().cloned().collect()).unwrap_or_default(),
                    });
                    for (k, v) in map {
                        if let Some(child) = props.and_then(|p| p.get(k)) {
                            let mut p = path.clone();
                            p.push(json!(k));
                            self.visit(child, format!("{pointer}/properties/{k}"), v, p);
                        }
                    }
                }
                Some(map_schema @ Value::Object(_)) => {
                    for (k, v) in map {
                        let mut p = path.clone();
                        p.push(json!(k));
                        self.visit(map_schema, format!("{pointer}/additionalProperties"), v, p);
                    }
                }
                _ => self.problems.push(format!(
                    "{SCHEMA} {pointer}: an object schema must be closed (\"additionalProperties\": false, with its \"properties\") or a map (\"additionalProperties\": {{schema}}), so that it matches the reader field for field"
                )),
            },
            Value::Array(items) => {
                if let Some(item) = node.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        let mut p = path.clone();
                        p.push(json!(i));
                        self.visit(item, format!("{pointer}/items"), v, p);
                    }
                }
            }
            _ => {}
        }
    }
}

fn path_text(path: &[Value]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Value::Number(n) => out.push_str(&format!("[{n}]")),
            Value::String(s) if out.is_empty() => out.push_str(s),
            Value::String(s) => out.push_str(&format!(".{s}")),
            _ => {}
        }
    }
    out
}

fn at_mut<'a>(doc: &'a mut Value, path: &[Value]) -> &'a mut Value {
    let mut cur = doc;
    for seg in path {
        cur = match seg {
            Value::Number(n) => &mut cur[n.as_u64().unwrap_or(0) as usize],
            Value::String(s) => &mut cur[s.as_str()],
            _ => cur,
        };
    }
    cur
}

/// The fields the reader accepts at `path`: a probe field there makes it
/// answer "unknown field `…`, expected one of `a`, `b`, …".
fn reader_fields(site: &Site) -> Result<BTreeSet<String>, String> {
    let mut doc = site.doc.clone();
    match at_mut(&mut doc, &site.path) {
        Value::Object(map) => {
            map.insert(PROBE.to_string(), json!(0));
        }
        other => return Err(format!("not an object: {other}")),
    }
    let err = match edge_guard::policy::parse(doc.to_string().as_bytes()) {
        Ok(_) => return Err("the reader accepted an unknown field".to_string()),
        Err(e) => e.to_string(),
    };
    let where_ = path_text(&site.path);
    let expected_at = if where_.is_empty() {
        PROBE.to_string()
    } else {
        format!("{where_}.{PROBE}")
    };
    if !err.contains(&expected_at) {
        return Err(format!("the reader's error is about another field: {err}"));
    }
    let list = err
        .split_once("expected one of ")
        .map(|(_, l)| l)
        .ok_or_else(|| format!("the reader's error does not list the fields: {err}"))?;
    Ok(list
        .split(", ")
        .map(|f| f.trim().trim_matches('`').to_string())
        .filter(|f| !f.is_empty())
        .collect())
}

#[test]
fn the_schema_lists_exactly_the_fields_the_reader_accepts_in_every_object() {
    let root = schema();
    let mut walk = Walk::new(&root);
    for (name, doc) in valid_policies() {
        walk.document(&name, &doc);
    }
    let Walk {
        sites,
        mut problems,
        ..
    } = walk;
    // Every closed object of the schema is reached by some valid policy.
    let mut closed = BTreeSet::new();
    collect_closed(&root, &root, "#".to_string(), &mut closed);
    let reached: BTreeSet<String> = sites.iter().map(|s| s.schema_pointer.clone()).collect();
    for pointer in closed.difference(&reached) {
        problems.push(format!(
            "no valid policy uses the object at {SCHEMA} {pointer}: add a fixture to tests/fixtures/policy/valid/ that does, so its fields are checked against the reader"
        ));
    }
    let mut checked = BTreeSet::new();
    for site in &sites {
        if !checked.insert(site.schema_pointer.clone()) {
            continue; // one probe per schema object is enough
        }
        let place = if site.path.is_empty() {
            "the top level".to_string()
        } else {
            format!("`{}`", path_text(&site.path))
        };
        match reader_fields(site) {
            Err(e) => problems.push(format!("{} at {place}: {e}", site.fixture)),
            Ok(fields) => {
                for f in fields.difference(&site.schema_fields) {
                    problems.push(format!(
                        "the filter accepts `{f}` at {place} but {SCHEMA} does not: add \"{f}\" to the \"properties\" at {SCHEMA} {} (with its type and a description), and a valid fixture that uses it",
                        site.schema_pointer
                    ));
                }
                for f in site.schema_fields.difference(&fields) {
                    problems.push(format!(
                        "{SCHEMA} {} lists `{f}`, which the filter refuses at {place}: remove it from the schema, or teach the reader (src/policy/config.rs)",
                        site.schema_pointer
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "policy.schema.json and the filter's reader disagree:\n{}",
        problems.join("\n")
    );
}

/// Pointers of every closed object schema.
fn collect_closed(root: &Value, node: &Value, pointer: String, out: &mut BTreeSet<String>) {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        if !out.contains(r) {
            let target = resolve(root, node);
            if target.get("additionalProperties") == Some(&Value::Bool(false)) {
                out.insert(r.to_string());
            }
            collect_children(root, target, r.to_string(), out);
        }
        return;
    }
    if node.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.insert(pointer.clone());
    }
    collect_children(root, node, pointer, out);
}

fn collect_children(root: &Value, node: &Value, pointer: String, out: &mut BTreeSet<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            collect_closed(root, v, format!("{pointer}/properties/{k}"), out);
        }
    }
    if let Some(v @ Value::Object(_)) = node.get("additionalProperties") {
        collect_closed(root, v, format!("{pointer}/additionalProperties"), out);
    }
    if let Some(v) = node.get("items") {
        collect_closed(root, v, format!("{pointer}/items"), out);
    }
    if let Some(bs) = node.get("oneOf").and_then(Value::as_array) {
        for (i, b) in bs.iter().enumerate() {
            collect_closed(root, b, format!("{pointer}/oneOf/{i}"), out);
        }
    }
}

#[test]
fn the_schema_test_notices_a_field_the_schema_lacks() {
    // The drift check itself must be able to fail: drop a field from a copy
    // of the schema and the probe must report it.
    let mut root = schema();
    if let Some(props) = root["properties"]["websocket"]["properties"].as_object_mut() {
        props.remove("max_duration");
    }
    let doc = json!({"routes": [{"name": "a", "prefix": "/a", "cluster": "c"}], "websocket": {"max_connections": 1}});
    let mut walk = Walk::new(&root);
    walk.document("inline", &doc);
    let ws = walk
        .sites
        .iter()
        .find(|s| path_text(&s.path) == "websocket")
        .expect("the websocket object is a site");
    let fields = reader_fields(ws).expect("probe");
    assert!(fields.contains("max_duration") && !ws.schema_fields.contains("max_duration"));
}
