//! One real Envoy per test: the builder writes a static bootstrap (admin and
//! listener on port 0, HCM with WebSocket upgrades, the edge-guard wasm filter
//! then the router, one STATIC cluster per upstream), starts Envoy, waits for
//! admin `/ready`, and learns its ports from the admin API. The process is
//! stopped by PID on drop; if the test is panicking its log tail is printed.

use crate::http::{self, Request, Response, SlowUpload};
use crate::net::ClosedPort;
use crate::paths::{self, TestDir};
use crate::process;
use crate::upstream::Upstream;
use crate::ws::{self, UpgradeRejected, WsClient};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const FAILURE_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 80;

/// The filter's configuration, as the JSON text Envoy hands it.
#[derive(Debug, Clone)]
pub struct Policy(pub String);

impl From<&str> for Policy {
    fn from(s: &str) -> Self {
        Policy(s.to_string())
    }
}
impl From<String> for Policy {
    fn from(s: String) -> Self {
        Policy(s)
    }
}
impl From<Value> for Policy {
    fn from(v: Value) -> Self {
        Policy(v.to_string())
    }
}
impl From<&Value> for Policy {
    fn from(v: &Value) -> Self {
        Policy(v.to_string())
    }
}

/// Builds and starts an Envoy; see `Envoy::builder`.
#[must_use]
pub struct EnvoyBuilder {
    policy: Policy,
    clusters: Vec<(String, u16)>,
    extra_clusters_yaml: Vec<String>,
    http_filters_yaml: Vec<String>,
    routes_yaml: Option<String>,
    concurrency: u32,
    log_level: String,
    component_log_level: Option<String>,
    with_filter: bool,
    ready_timeout: Duration,
    extra_args: Vec<String>,
    internal_cidrs: Vec<String>,
    use_remote_address: bool,
    edge_settings: bool,
    request_headers_timeout: Duration,
    closed_ports: Vec<ClosedPort>,
    top_level_yaml: Vec<String>,
    failure_policy: String,
    wasm_path: Option<PathBuf>,
    hot_restart: Option<(Option<u32>, u32)>,
    listener_port: u16,
    ecds: bool,
    ecds_file: Option<PathBuf>,
    /// A complete bootstrap to run instead of the generated one
    /// (`Envoy::from_bootstrap`), and the listener `addr()` is.
    bootstrap: Option<String>,
    listener_name: String,
}

impl EnvoyBuilder {
    /// The plugin's `failure_policy` (default `FAIL_CLOSED`), e.g. `FAIL_RELOAD`.
    pub fn failure_policy(mut self, policy: &str) -> Self {
        self.failure_policy = policy.to_string();
        self
    }
    /// Runs with hot restart enabled as epoch 0, on a base id Envoy picks
    /// (`--use-dynamic-base-id`), so concurrent Envoys never share one;
    /// `Envoy::base_id` reads it back for the next epoch.
    pub fn hot_restart_parent(mut self) -> Self {
        self.hot_restart = Some((None, 0));
        self
    }
    /// Runs as epoch `epoch` of the running Envoy whose base id is `base_id`:
    /// it takes over its listeners (give it their port with `listener_port`)
    /// and drains it.
    pub fn hot_restart_child(mut self, base_id: u32, epoch: u32) -> Self {
        self.hot_restart = Some((Some(base_id), epoch));
        self
    }
    /// The ingress listener's port (default 0: the OS picks).
    pub fn listener_port(mut self, port: u16) -> Self {
        self.listener_port = port;
        self
    }
    /// Delivers the filter's configuration through ECDS from a watched file
    /// (the policy given to `builder` is both the bootstrap default and the
    /// first file); `Envoy::push_policy` swaps it atomically.
    pub fn ecds(mut self) -> Self {
        self.ecds = true;
        self
    }
    /// Loads this wasm instead of the release build (e.g. the fault-injection
    /// build, `paths::fault_wasm()`).
    pub fn wasm(mut self, path: PathBuf) -> Self {
        self.wasm_path = Some(path);
        self
    }
    /// Adds a STATIC cluster named after the upstream, pointing at its port.
    pub fn upstream(self, up: &Upstream) -> Self {
        self.upstream_as(up, up.name())
    }
    /// Adds a STATIC cluster with another name, pointing at the upstream's port.
    pub fn upstream_as(mut self, up: &Upstream, cluster: &str) -> Self {
        self.clusters.push((cluster.to_string(), up.port()));
        self
    }
    /// Adds a STATIC loopback cluster at any port (e.g. one nobody listens on).
    pub fn cluster_at_port(mut self, cluster: &str, port: u16) -> Self {
        self.clusters.push((cluster.to_string(), port));
        self
    }
    /// Adds a STATIC loopback cluster whose endpoint refuses connections: a
    /// port kept bound (never listening) for as long as the `Envoy` lives,
    /// so no parallel test can take it and make the dead upstream answer.
    pub fn dead_cluster(mut self, cluster: &str) -> Self {
        let port = ClosedPort::reserve();
        self.clusters.push((cluster.to_string(), port.port()));
        self.closed_ports.push(port);
        self
    }
    /// Adds a top-level bootstrap section (YAML written as if at column 0,
    /// e.g. a `stats_config:` block taken from `envoy/envoy.yaml`).
    pub fn bootstrap_yaml(mut self, yaml: &str) -> Self {
        self.top_level_yaml.push(yaml.to_string());
        self
    }
    /// Adds one raw cluster (YAML mapping, written as if at column 0).
    pub fn cluster_yaml(mut self, yaml: &str) -> Self {
        self.extra_clusters_yaml.push(yaml.to_string());
        self
    }
    /// Adds one HTTP filter before the edge-guard filter (YAML mapping written
    /// as if at column 0, starting with `name:`), e.g. `jwt_authn`.
    pub fn http_filter_yaml(mut self, yaml: &str) -> Self {
        self.http_filters_yaml.push(yaml.to_string());
        self
    }
    /// Replaces the routes generated from the policy with this YAML sequence
    /// (written as if at column 0: `- name: x\n  match: {prefix: /}\n  route: {cluster: c}`).
    pub fn routes_yaml(mut self, yaml: &str) -> Self {
        self.routes_yaml = Some(yaml.to_string());
        self
    }
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }
    /// `-l LEVEL` (default `info`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }
    /// `--component-log-level`, e.g. `"wasm:debug"`.
    pub fn component_log_level(mut self, spec: &str) -> Self {
        self.component_log_level = Some(spec.to_string());
        self
    }
    /// Leaves the wasm filter out of the chain (router only): for harness
    /// self-tests and the benchmark baseline.
    pub fn without_filter(mut self) -> Self {
        self.with_filter = false;
        self
    }
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }
    /// Clients in these CIDRs (`"127.0.0.0/8"`) are internal to Envoy
    /// (HCM `internal_address_config`), as behind a trusted load balancer:
    /// Envoy then keeps the `x-envoy-*` headers they send, so only the
    /// filter stands between them and the router.
    pub fn internal_clients(mut self, cidrs: &[&str]) -> Self {
        self.internal_cidrs = cidrs.iter().map(|c| c.to_string()).collect();
        self
    }
    /// HCM `use_remote_address` (default `true`). `false` is Envoy's own
    /// default: the downstream address then comes from `x-forwarded-for`.
    pub fn use_remote_address(mut self, on: bool) -> Self {
        self.use_remote_address = on;
        self
    }
    /// The HTTP connection manager gets the edge settings shipped in
    /// `envoy/envoy.yaml` (the block between `# edge-settings:begin` and
    /// `# edge-settings:end`, copied as is: path normalisation,
    /// `use_remote_address`, header and HTTP/2 limits, `local_reply_config`)
    /// instead of Envoy's default path and address handling. Without it the
    /// harness still copies the shipped `local_reply_config`.
    pub fn shipped_edge_settings(mut self) -> Self {
        self.edge_settings = true;
        self
    }
    /// HCM `request_headers_timeout` (default 10 s).
    pub fn request_headers_timeout(mut self, d: Duration) -> Self {
        self.request_headers_timeout = d;
        self
    }
    /// Any further Envoy command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    /// The bootstrap YAML this builder would write.
    pub fn config_yaml(&self) -> String {
        if let Some(bootstrap) = &self.bootstrap {
            return bootstrap.clone();
        }
        let wasm = if self.with_filter {
            Some(self.wasm_path.clone().unwrap_or_else(paths::wasm))
        } else {
            None
        };
        render_bootstrap(self, wasm.as_ref())
    }

    /// Starts Envoy and waits until admin `/ready` answers 200; panics with the
    /// log tail if it exits or is not ready within 15 s.
    pub fn start(self) -> Envoy {
        let timeout = self.ready_timeout;
        let listener_name = self.listener_name.clone();
        let mut envoy = self.spawn();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                envoy.exited = Some(status);
                panic!("Envoy exited during startup ({status}); its log tail follows");
            }
            if envoy.poll_ready() {
                break;
            }
            if Instant::now() >= deadline {
                panic!("Envoy not ready within {timeout:?}; its log tail follows");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        envoy.listener = Some(envoy.listener_addr(&listener_name));
        envoy
    }

    /// Starts Envoy expecting it to refuse the configuration: returns once it
    /// has exited on its own (Envoy 1.40 exits with status 1 within a second
    /// when the plugin's `on_configure` returns false), or after 20 s without
    /// becoming ready (then it is killed and `exit` is `None`). Panics if it
    /// becomes ready.
    pub fn start_expect_failure(self) -> StartFailure {
        let mut envoy = self.spawn();
        let deadline = Instant::now() + FAILURE_TIMEOUT;
        let exit = loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                envoy.exited = Some(status);
                break Some(status);
            }
            if envoy.poll_ready() {
                panic!(
                    "Envoy accepted a configuration it should have refused; its log tail follows"
                );
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        envoy.stop();
        StartFailure {
            exit,
            log: envoy.log(),
        }
    }

    fn spawn(mut self) -> Envoy {
        paths::prepare_process_limits();
        let envoy_bin = paths::envoy_bin();
        let dir = TestDir::new("envoy");
        let ecds = self.ecds.then(|| {
            let ecds_dir = dir.join("ecds");
            std::fs::create_dir_all(&ecds_dir).expect("create the ECDS dir");
            let ecds = Ecds {
                file: ecds_dir.join("edge_guard.yaml"),
                wasm: self.wasm_path.clone().unwrap_or_else(paths::wasm),
                failure_policy: self.failure_policy.clone(),
            };
            ecds.push(&self.policy, "edge_guard");
            ecds
        });
        self.ecds_file = ecds.as_ref().map(|e| e.file.clone());
        let config_path = dir.join("envoy.yaml");
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin.address");
        let output_path = dir.join("envoy.out");
        std::fs::write(&config_path, self.config_yaml())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let output = File::create(&output_path).expect("create envoy.out");
        let mut cmd = Command::new(&envoy_bin);
        cmd.arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &self.concurrency.to_string()]);
        match self.hot_restart {
            Some((Some(base_id), epoch)) => cmd
                .args(["--base-id", &base_id.to_string()])
                .args(["--restart-epoch", &epoch.to_string()]),
            Some((None, _)) => cmd
                .arg("--use-dynamic-base-id")
                .arg("--base-id-path")
                .arg(dir.join("base_id")),
            None => cmd.arg("--disable-hot-restart"),
        };
        cmd.arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            // The log file is buffered; flush often so `log_contains` sees recent lines.
            .args(["--file-flush-interval-msec", "50"])
            .args(["-l", &self.log_level]);
        if let Some(spec) = &self.component_log_level {
            cmd.args(["--component-log-level", spec]);
        }
        cmd.args(&self.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone envoy.out"))
            .stderr(output);
        let child = process::spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot start Envoy {}: {e}", envoy_bin.display()));
        Envoy {
            child,
            exited: None,
            dir,
            config_path,
            log_path,
            admin_path,
            output_path,
            admin: None,
            listener: None,
            ecds,
            _closed_ports: self.closed_ports,
        }
    }
}

/// Where and how a running Envoy gets the filter's configuration by ECDS.
struct Ecds {
    file: PathBuf,
    wasm: PathBuf,
    failure_policy: String,
}

impl Ecds {
    /// Writes the resource next to the watched file, then renames it into
    /// place: Envoy sees one complete file, never a half-written one.
    fn push(&self, policy: &Policy, vm_id: &str) {
        let tmp = self.file.with_extension("yaml.tmp");
        std::fs::write(
            &tmp,
            ecds_resource(policy, &self.wasm, &self.failure_policy, vm_id),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &self.file)
            .unwrap_or_else(|e| panic!("cannot rename onto {}: {e}", self.file.display()));
    }
}

/// How a refused configuration ended.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status if Envoy exited on its own; `None` if it hung un-ready and was killed.
    pub exit: Option<ExitStatus>,
    /// Envoy's log file followed by its stdout/stderr.
    pub log: String,
}

impl StartFailure {
    /// Exited on its own with a non-zero status.
    pub fn exited_with_error(&self) -> bool {
        self.exit.is_some_and(|s| !s.success())
    }
    /// Asserts the refusal was an exit with an error and the log mentions every `needle`.
    pub fn assert_refused_with(&self, needles: &[&str]) {
        let how = match self.exit {
            Some(status) => format!("exited with {status}"),
            None => "stayed up without becoming ready and was killed".to_string(),
        };
        assert!(
            self.exited_with_error(),
            "Envoy {how}, expected an exit with an error\n{}",
            self.tail(LOG_TAIL_LINES)
        );
        for needle in needles {
            assert!(
                self.log.contains(needle),
                "Envoy log does not mention {needle:?} ({how})\n{}",
                self.tail(LOG_TAIL_LINES)
            );
        }
    }
    /// The last `n` interesting lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self
            .log
            .lines()
            .filter(|l| !is_startup_inventory(l))
            .collect();
        format!(
            "---- Envoy log tail ----\n{}\n---- end ----",
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    exited: Option<ExitStatus>,
    dir: TestDir,
    config_path: PathBuf,
    log_path: PathBuf,
    admin_path: PathBuf,
    output_path: PathBuf,
    admin: Option<SocketAddr>,
    listener: Option<SocketAddr>,
    ecds: Option<Ecds>,
    /// Ports of `dead_cluster`s, kept bound while Envoy runs.
    _closed_ports: Vec<ClosedPort>,
}

impl Envoy {
    /// Delivers a new filter configuration through ECDS (built with
    /// `EnvoyBuilder::ecds`), with the same `vm_id` as before.
    pub fn push_policy(&self, policy: impl Into<Policy>) {
        self.push_filter_config(policy, "edge_guard");
    }
    /// As `push_policy`, with another `vm_id`.
    pub fn push_filter_config(&self, policy: impl Into<Policy>, vm_id: &str) {
        let ecds = self
            .ecds
            .as_ref()
            .expect("push_policy needs an Envoy built with .ecds()");
        ecds.push(&policy.into(), vm_id);
    }

    /// Starts building an Envoy whose edge-guard filter gets `policy`.
    pub fn builder(policy: impl Into<Policy>) -> EnvoyBuilder {
        EnvoyBuilder {
            policy: policy.into(),
            clusters: Vec::new(),
            extra_clusters_yaml: Vec::new(),
            http_filters_yaml: Vec::new(),
            routes_yaml: None,
            concurrency: 2,
            log_level: "info".into(),
            component_log_level: None,
            with_filter: true,
            ready_timeout: READY_TIMEOUT,
            extra_args: Vec::new(),
            internal_cidrs: Vec::new(),
            use_remote_address: true,
            edge_settings: false,
            request_headers_timeout: Duration::from_secs(10),
            closed_ports: Vec::new(),
            top_level_yaml: Vec::new(),
            failure_policy: "FAIL_CLOSED".into(),
            wasm_path: None,
            hot_restart: None,
            listener_port: 0,
            ecds: false,
            ecds_file: None,
            bootstrap: None,
            listener_name: "ingress".into(),
        }
    }

    /// Starts building an Envoy that runs `yaml` as it is (e.g. the shipped
    /// envoy/envoy.yaml with its ports rewritten to 0 and its clusters to
    /// test upstreams); `addr()` is the listener called `listener`, the
    /// others are reached with `listener_addr`. Builder options that shape
    /// the generated bootstrap do not apply.
    pub fn from_bootstrap(yaml: String, listener: &str) -> EnvoyBuilder {
        let mut builder = Envoy::builder("");
        builder.bootstrap = Some(yaml);
        builder.listener_name = listener.to_string();
        builder
    }

    /// The address of the listener called `name` (from admin `/listeners`).
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        self.find_listener(name)
            .unwrap_or_else(|| panic!("no listener {name:?} in admin /listeners"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn listener_port(&self) -> u16 {
        self.addr().port()
    }
    pub fn admin_port(&self) -> u16 {
        self.admin_addr().port()
    }
    /// The HTTP listener.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .expect("listener address is known once started")
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("admin address is known once started")
    }
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }
    /// The hot-restart base id Envoy chose (`hot_restart_parent`).
    pub fn base_id(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.join("base_id")).unwrap_or_default();
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no base id written by Envoy (got {text:?})"))
    }

    // ---- requests through the listener -------------------------------------

    pub fn get(&self, path: &str) -> Response {
        self.request(Request::get(path))
    }
    /// Sends a request on a fresh connection; panics on transport errors.
    pub fn request(&self, req: Request) -> Response {
        self.try_request(req.clone())
            .unwrap_or_else(|e| panic!("{} {} through Envoy failed: {e}", req.method, req.path))
    }
    pub fn try_request(&self, req: Request) -> std::io::Result<Response> {
        http::send(self.addr(), &req)
    }
    /// Sends a request from another local address (e.g. `127.0.0.2`, a
    /// different client on loopback); panics on transport errors.
    pub fn request_from(&self, source: std::net::Ipv4Addr, req: Request) -> Response {
        http::send_from(source, self.addr(), &req).unwrap_or_else(|e| {
            panic!(
                "{} {} from {source} through Envoy failed: {e}",
                req.method, req.path
            )
        })
    }
    /// POSTs `total_len` bytes to `path`, `chunk` bytes every `interval`; see `http::slow_upload`.
    pub fn slow_upload(
        &self,
        path: &str,
        total_len: usize,
        chunk: usize,
        interval: Duration,
    ) -> SlowUpload {
        self.slow_upload_with(Request::post(path), total_len, chunk, interval)
    }
    pub fn slow_upload_with(
        &self,
        req: Request,
        total_len: usize,
        chunk: usize,
        interval: Duration,
    ) -> SlowUpload {
        http::slow_upload(self.addr(), &req, total_len, chunk, interval)
            .unwrap_or_else(|e| panic!("slow upload to {} got no response: {e}", req.path))
    }
    /// Upgrades `path` to a WebSocket; `Err` carries the non-101 answer.
    pub fn websocket(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, UpgradeRejected> {
        ws::connect(self.addr(), path, headers)
    }
    /// A bare TCP connection to the listener, for hand-written bytes.
    pub fn connect(&self) -> TcpStream {
        http::connect(self.addr(), http::DEFAULT_TIMEOUT).expect("connect to Envoy listener")
    }

    // ---- admin ------------------------------------------------------------

    /// `GET` on the admin API.
    pub fn admin_get(&self, path: &str) -> Response {
        http::send(self.admin_addr(), &Request::get(path))
            .unwrap_or_else(|e| panic!("admin GET {path} failed: {e}"))
    }
    /// Counters and gauges from `/stats?format=json`.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let json = self.admin_get("/stats?format=json").json();
        let mut out = BTreeMap::new();
        for s in json["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(name.to_string(), value);
            }
        }
        out
    }
    /// One counter or gauge; also tries the `wasmcustom.` prefix Envoy may put
    /// on metrics a plugin defines.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.stats();
        stats
            .get(name)
            .or_else(|| stats.get(&format!("wasmcustom.{name}")))
            .copied()
    }
    /// Polls `stat` until `pred` holds or `timeout` passes; returns the last value.
    pub fn wait_for_stat(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if v.is_some_and(&pred) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// `/stats/prometheus` text.
    pub fn prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").text()
    }

    // ---- log ----------------------------------------------------------------

    /// Envoy's log so far (flushed every 50 ms) plus its stdout/stderr.
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let out = std::fs::read_to_string(&self.output_path).unwrap_or_default();
        if !out.trim().is_empty() {
            text.push_str("\n---- envoy stdout/stderr ----\n");
            text.push_str(&out);
        }
        text
    }
    /// Whether the log mentions `needle`, allowing 0.5 s for the file flush.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.wait_for_log(needle, Duration::from_millis(500))
    }
    /// Waits up to `timeout` for `needle` to appear in the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// The last `n` lines of the log, framed for printing, without the
    /// startup inventory (extension and header-map listings).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| !is_startup_inventory(l)).collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "---- last {n} lines of {} ----\n{tail}\n---- end of Envoy log ----",
            self.log_path.display()
        )
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            _ => true,
        }
    }

    // ---- internals ----------------------------------------------------------

    fn poll_ready(&mut self) -> bool {
        if self.admin.is_none() {
            let text = std::fs::read_to_string(&self.admin_path).unwrap_or_default();
            self.admin = text.trim().parse().ok();
        }
        let Some(admin) = self.admin else {
            return false;
        };
        let req = Request::get("/ready").timeout(Duration::from_secs(2));
        matches!(http::send(admin, &req), Ok(r) if r.status == 200)
    }

    fn find_listener(&self, name: &str) -> Option<SocketAddr> {
        let json = self.admin_get("/listeners?format=json").json();
        json["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|l| {
                let sa = &l["local_address"]["socket_address"];
                let port = sa["port_value"].as_u64()?;
                let ip = sa["address"].as_str()?.parse().ok()?;
                (l["name"] == name).then(|| SocketAddr::new(ip, port as u16))
            })
    }

    /// SIGTERM (so the log is flushed), up to 3 s, then SIGKILL, each to
    /// Envoy's own process group; always waited.
    fn stop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        self.exited = process::stop(&mut self.child, Duration::from_secs(3));
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "[edge-guard-e2e] Envoy pid {} config {}",
                self.child.id(),
                self.config_path.display()
            );
            eprintln!("{}", self.log_tail(LOG_TAIL_LINES));
        }
    }
}

/// `[...][main] [source/server/server.cc:467]   envoy.filters.http: ...`: the
/// indented listing Envoy prints at startup; noise in a failure report.
fn is_startup_inventory(line: &str) -> bool {
    line.contains("[source/server/server.cc:")
        && line.split_once("] ").is_some_and(|_| {
            line.rsplit_once(".cc:")
                .is_some_and(|(_, rest)| rest.contains("]   "))
        })
}

// ---- bootstrap rendering ------------------------------------------------------

/// A block of `envoy/envoy.yaml` between its `# NAME:begin` and `# NAME:end`
/// lines: `edge-settings` (every HCM edge setting) or `local-reply` (the
/// `local_reply_config` that gives Envoy's own errors the JSON shape).
pub fn shipped_block(name: &str) -> String {
    let path = paths::repo_root().join("envoy/envoy.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (begin, end) = (format!("# {name}:begin"), format!("# {name}:end"));
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&begin))
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with(&end))
        .collect();
    assert!(
        !block.is_empty(),
        "no `{begin}` … `{end}` block in {}",
        path.display()
    );
    block.join("\n")
}

/// A YAML scalar: JSON string syntax is valid YAML and escapes everything.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Re-indents a block written at any indentation so it starts at `col`.
fn indent(block: &str, col: usize) -> String {
    let min = block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(col);
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{pad}{}\n", &l[min..]))
        .collect()
}

/// The edge-guard `Wasm` filter config (a mapping with its `@type`),
/// written at column 0.
fn wasm_filter_config(policy: &Policy, wasm: &Path, failure_policy: &str, vm_id: &str) -> String {
    format!(
        r#""@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
config:
  name: edge_guard
  root_id: edge_guard
  vm_config:
    vm_id: {}
    runtime: envoy.wasm.runtime.v8
    code: {{local: {{filename: {}}}}}
  configuration:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: {}
  failure_policy: {failure_policy}
"#,
        q(vm_id),
        q(&wasm.to_string_lossy()),
        q(&policy.0)
    )
}

/// An ECDS resource file (a DiscoveryResponse) carrying the edge-guard filter.
fn ecds_resource(policy: &Policy, wasm: &Path, failure_policy: &str, vm_id: &str) -> String {
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n  name: edge_guard\n  typed_config:\n{}",
        indent(&wasm_filter_config(policy, wasm, failure_policy, vm_id), 4)
    )
}

/// Routes the policy declares: (name, prefix, cluster, websocket).
fn policy_routes(policy: &Policy) -> Vec<(String, String, String, bool)> {
    let Ok(json) = serde_json::from_str::<Value>(&policy.0) else {
        return Vec::new();
    };
    let mut routes: Vec<_> = json["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_string(),
                r["prefix"].as_str()?.to_string(),
                r["cluster"].as_str()?.to_string(),
                r["websocket"].as_bool().unwrap_or(false),
            ))
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.1.len()));
    routes
}

/// For an egress policy (`"direction": "egress"`): one virtual host per
/// declared `host` (an exact host also matches it with any port), with a
/// route per prefix (longest first) to the route's cluster. `None` for an
/// ingress policy.
fn egress_virtual_hosts(policy: &Policy) -> Option<String> {
    let json = serde_json::from_str::<Value>(&policy.0).ok()?;
    if json["direction"] != "egress" {
        return None;
    }
    let mut hosts: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in json["routes"].as_array().into_iter().flatten() {
        let (Some(host), Some(cluster)) = (r["host"].as_str(), r["cluster"].as_str()) else {
            continue;
        };
        let prefix = r["prefix"].as_str().unwrap_or("/").to_string();
        hosts
            .entry(host.to_ascii_lowercase())
            .or_default()
            .push((prefix, cluster.to_string()));
    }
    let mut y = String::new();
    for (i, (host, mut routes)) in hosts.into_iter().enumerate() {
        let domains = if host.starts_with("*.") {
            q(&host)
        } else {
            format!("{}, {}", q(&host), q(&format!("{host}:*")))
        };
        let _ = writeln!(y, "            - name: egress_{i}");
        let _ = writeln!(y, "              domains: [{domains}]");
        let _ = writeln!(y, "              routes:");
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        for (prefix, cluster) in routes {
            let _ = writeln!(y, "              - match: {{prefix: {}}}", q(&prefix));
            let _ = writeln!(
                y,
                "                route: {{cluster: {}, timeout: 300s}}",
                q(&cluster)
            );
        }
    }
    if y.is_empty() {
        y.push_str("            []\n");
    }
    Some(y)
}

fn render_bootstrap(b: &EnvoyBuilder, wasm: Option<&PathBuf>) -> String {
    let routes = policy_routes(&b.policy);
    let mut y = String::new();
    for section in &b.top_level_yaml {
        y.push_str(&indent(section, 0));
    }
    y.push_str(
        &r#"# Generated by the edge-guard e2e harness.
node: {id: edge-guard-e2e, cluster: edge-guard}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: LISTENER_PORT}}
    # Envoy's default backlog (128) drops SYNs under connection bursts.
    tcp_backlog_size: 4096
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          # Keep the client's x-request-id: the filter echoes it in its error replies.
          preserve_external_request_id: true
          stream_idle_timeout: 3600s
          upgrade_configs: [{upgrade_type: websocket}]
"#
        .replace("LISTENER_PORT", &b.listener_port.to_string()),
    );
    let _ = writeln!(
        y,
        "          request_headers_timeout: {:.3}s",
        b.request_headers_timeout.as_secs_f64()
    );
    if b.edge_settings {
        y.push_str(&indent(&shipped_block("edge-settings"), 10));
    } else {
        // Envoy's default path and header handling; the shipped
        // local_reply_config is part of every edge-guard deployment.
        let _ = writeln!(y, "          use_remote_address: {}", b.use_remote_address);
        y.push_str(&indent(&shipped_block("local-reply"), 10));
    }
    y.push_str(
        r#"          route_config:
            name: edge_routes
            virtual_hosts:
"#,
    );
    let egress = egress_virtual_hosts(&b.policy);
    if b.routes_yaml.is_some() || egress.is_none() {
        y.push_str(
            "            - name: all\n              domains: [\"*\"]\n              routes:\n",
        );
    }
    match &b.routes_yaml {
        None if egress.is_some() => y.push_str(&egress.unwrap_or_default()),
        Some(custom) => y.push_str(&indent(custom, 14)),
        None if routes.is_empty() => y.push_str("              []\n"),
        None => {
            for (name, prefix, cluster, websocket) in &routes {
                let timeouts = if *websocket {
                    "timeout: 0s, idle_timeout: 0s"
                } else {
                    "timeout: 300s"
                };
                let _ = writeln!(y, "              - name: {}", q(name));
                let _ = writeln!(y, "                match: {{prefix: {}}}", q(prefix));
                let _ = writeln!(
                    y,
                    "                route: {{cluster: {}, {timeouts}}}",
                    q(cluster)
                );
            }
        }
    }
    if !b.internal_cidrs.is_empty() {
        y.push_str("          internal_address_config:\n            cidr_ranges:\n");
        for cidr in &b.internal_cidrs {
            let (prefix, len) = cidr.split_once('/').unwrap_or((cidr.as_str(), "32"));
            let _ = writeln!(
                y,
                "            - {{address_prefix: {}, prefix_len: {len}}}",
                q(prefix)
            );
        }
    }
    y.push_str("          http_filters:\n");
    for filter in &b.http_filters_yaml {
        let block = indent(filter, 12);
        // turn the first line into a list item
        let _ = write!(y, "          - {}", &block[12..]);
    }
    if let Some(wasm) = wasm {
        let config = wasm_filter_config(&b.policy, wasm, &b.failure_policy, "edge_guard");
        match &b.ecds_file {
            None => {
                y.push_str(
                    "          - name: envoy.filters.http.wasm\n            typed_config:\n",
                );
                y.push_str(&indent(&config, 14));
            }
            Some(file) => {
                // The filter's configuration through ECDS, file-watched; the
                // bootstrap keeps the same policy as the default.
                let _ = write!(
                    y,
                    "          - name: edge_guard\n            config_discovery:\n              config_source:\n                path_config_source: {{path: {}}}\n                resource_api_version: V3\n              apply_default_config_without_warming: true\n              type_urls: [\"type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\"]\n              default_config:\n",
                    q(&file.to_string_lossy())
                );
                y.push_str(&indent(&config, 16));
            }
        }
    }
    y.push_str(
        r#"          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
"#,
    );
    // Upstreams first; then an empty placeholder for every cluster the policy
    // names but the test did not start (Envoy rejects routes to unknown clusters,
    // and an empty cluster answers 503 "no healthy upstream").
    let mut defined = BTreeSet::new();
    for (name, port) in &b.clusters {
        if !defined.insert(name.clone()) {
            continue;
        }
        let _ = write!(
            y,
            r#"  - name: {n}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {n}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#,
            n = q(name)
        );
    }
    let extra_names: BTreeSet<String> = b
        .extra_clusters_yaml
        .iter()
        .filter_map(|c| {
            c.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("name:")
                    .map(|n| n.trim().trim_matches('"').to_string())
            })
        })
        .collect();
    let egress_clusters: Vec<String> = serde_json::from_str::<Value>(&b.policy.0)
        .ok()
        .filter(|p| p["direction"] == "egress")
        .map(|p| {
            p["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["cluster"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for cluster in routes
        .iter()
        .map(|(_, _, cluster, _)| cluster)
        .chain(&egress_clusters)
    {
        if defined.contains(cluster)
            || extra_names.contains(cluster)
            || !defined.insert(cluster.clone())
        {
            continue;
        }
        let _ = write!(
            y,
            "  - name: {n}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: {n}, endpoints: []}}\n",
            n = q(cluster)
        );
    }
    for extra in &b.extra_clusters_yaml {
        let block = indent(extra, 4);
        // turn the first line into a list item
        let block = format!("  - {}", &block[4..]);
        y.push_str(&block);
    }
    if b.clusters.is_empty() && b.extra_clusters_yaml.is_empty() && routes.is_empty() {
        y.push_str("  []\n");
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_dedents_then_pads() {
        assert_eq!(
            indent("\n    - a: 1\n      b: 2\n", 2),
            "  - a: 1\n    b: 2\n"
        );
    }

    #[test]
    fn policy_routes_are_longest_prefix_first() {
        let p = Policy::from(
            r#"{"routes":[{"name":"a","prefix":"/api","cluster":"c"},{"name":"b","prefix":"/api/x","cluster":"c","websocket":true}]}"#,
        );
        let r = policy_routes(&p);
        assert_eq!(r[0].0, "b");
        assert!(r[0].3);
        assert_eq!(r[1].0, "a");
    }
}
