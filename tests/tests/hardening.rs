//! Edge hardening through a real Envoy (issue 9): hostile paths, sneaky
//! upgrades, spoofable addresses and Envoy's own errors in the JSON contract.
//! Path and upgrade tests run twice: with Envoy's default HCM path and address
//! handling, and with the edge settings shipped in envoy/envoy.yaml.

use edge_guard_e2e::*;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[derive(Clone, Copy, Debug)]
enum Settings {
    /// Envoy's defaults: no normalize_path, no merge_slashes, escaped
    /// slashes kept, use_remote_address false.
    EnvoyDefaults,
    /// The block between `# edge-settings:begin/end` in envoy/envoy.yaml.
    Shipped,
}

const BOTH: [Settings; 2] = [Settings::EnvoyDefaults, Settings::Shipped];

fn builder(policy: &Value, settings: Settings) -> EnvoyBuilder {
    let b = Envoy::builder(policy);
    match settings {
        Settings::EnvoyDefaults => b.use_remote_address(false),
        Settings::Shipped => b.shipped_edge_settings(),
    }
}

fn mismatch_total(envoy: &Envoy) -> u64 {
    envoy
        .stats()
        .iter()
        .filter(|(k, _)| k.ends_with(".mismatch"))
        .map(|(_, v)| *v)
        .sum()
}

// ---- one path, one meaning ---------------------------------------------------------

/// The paths and their variants: dot segments raw and encoded in
/// every case, empty segments, encoded and raw separators, path parameters,
/// double encoding.
const HOSTILE_PATHS: [&str; 22] = [
    "//api/courses/7",
    "/api//courses/7",
    "/api/courses//7",
    "/api/courses/../payments/1",
    "/api/courses/7/../../payments/1",
    "/api/courses/./7",
    "/api/courses/%2e%2e/payments/1",
    "/api/courses/%2E%2E/payments/1",
    "/api/courses/.%2e/payments/1",
    "/api/courses/%2e./payments/1",
    "/api/courses/7/%2e%2e/%2e%2e/payments/1",
    "/api/courses/%2e/7",
    "/api/courses%2f..%2fpayments%2f1",
    "/api/courses%2F..%2Fpayments%2F1",
    "/api/courses/7%2F..%2F..%2Fpayments%2F1",
    "/api/courses%5c..%5cpayments%5c1",
    "/api/courses/..;/payments/1",
    "/api/courses;x=1/../payments/1",
    "/api/courses/7;/../../payments/1",
    "/api/courses/%252e%252e/payments/1",
    "/api/courses/%2e%2e%2fpayments/1",
    "/api/courses/..%00/payments/1",
];

fn path_policy() -> Value {
    json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service", "methods": ["GET", "HEAD"]},
            {"name": "payments", "prefix": "/api/payments", "cluster": "payment_service", "methods": ["POST"]}
        ],
        "routing": {"on_mismatch": "reject"}
    })
}

/// A path as the upstream served it, checked against what edge-guard
/// promised: no dot segment, nothing that decodes to one, no empty segment.
fn assert_served_path_is_canonical(served: &str, sent: &str) {
    let path = served.split('?').next().unwrap_or_default();
    let lower = path.to_ascii_lowercase();
    for bad in ["/../", "/./", "//", "%2e", "%2f", "%5c", "\\", ";", "%25"] {
        assert!(
            !lower.contains(bad),
            "{sent:?} reached the upstream as {served:?} (contains {bad:?})"
        );
    }
    assert!(
        !lower.ends_with("/..") && !lower.ends_with("/."),
        "{sent:?} reached the upstream as {served:?}"
    );
}

fn hostile_paths_are_never_a_mismatch_nor_a_bypass(settings: Settings) {
    let courses = Upstream::start("course_service");
    let payments = Upstream::start("payment_service");
    let envoy = builder(&path_policy(), settings)
        .upstream(&courses)
        .upstream(&payments)
        .start();
    let ok = envoy.get("/api/courses/7");
    assert_eq!(ok.status, 200, "{settings:?}: {ok:?}");
    assert_eq!(ok.json()["service"], "course_service");
    let mut refused = 0;
    for (i, path) in HOSTILE_PATHS.iter().enumerate() {
        let id = format!("hostile-{i}");
        let resp = envoy.request(Request::get(path).header("x-request-id", &id));
        assert!(
            resp.status < 500,
            "{settings:?}: GET {path} got a 5xx: {resp:?}"
        );
        match resp.status {
            200 => {
                let served = resp.json();
                let served_path = served["path"].as_str().unwrap_or_default().to_string();
                assert_served_path_is_canonical(&served_path, path);
                // Only the courses route admits GET: whatever reached an
                // upstream did so under the rules of the route that serves it.
                assert_eq!(
                    served["service"], "course_service",
                    "{settings:?}: GET {path} was served as {served_path}: {resp:?}"
                );
                assert!(
                    served_path.starts_with("/api/courses"),
                    "{settings:?}: GET {path} served by course_service as {served_path}"
                );
            }
            400 => {
                let code = resp.error_code().unwrap_or_default();
                assert!(
                    code == "invalid_path" || code == "bad_request",
                    "{settings:?}: GET {path}: {resp:?}"
                );
                resp.assert_error(400, &code);
                refused += 1;
            }
            // Envoy normalised it onto payments (POST only), or onto no
            // declared route; a redirect to the unescaped path.
            405 | 404 | 307 => {
                if resp.status != 307 {
                    let code = resp.error_code().unwrap_or_default();
                    resp.assert_error(resp.status, &code);
                }
            }
            other => panic!("{settings:?}: GET {path}: unexpected {other}: {resp:?}"),
        }
    }
    // No request reached payments at all (GET is not its method), and no
    // mismatch was counted, logged or shown.
    assert_eq!(payments.requests(), 0, "{settings:?}");
    assert_eq!(mismatch_total(&envoy), 0, "{settings:?}");
    assert!(!envoy.log_contains("Envoy routes it to"), "{settings:?}");
    let status = envoy.get("/.edge-guard/status").json();
    assert!(
        !status.to_string().contains("envoy_cluster"),
        "{settings:?}: {status}"
    );
    if let Settings::EnvoyDefaults = settings {
        // Envoy changed nothing: every hostile path is edge-guard's to refuse.
        assert_eq!(refused, HOSTILE_PATHS.len(), "{settings:?}");
        assert_eq!(
            envoy.stat("edge_guard.rejected.invalid_path"),
            Some(HOSTILE_PATHS.len() as u64)
        );
    }
    assert_eq!(envoy.get("/api/courses/7").status, 200);
}

#[test]
fn hostile_paths_with_envoys_default_path_settings() {
    hostile_paths_are_never_a_mismatch_nor_a_bypass(Settings::EnvoyDefaults);
}

#[test]
fn hostile_paths_with_the_shipped_edge_settings() {
    hostile_paths_are_never_a_mismatch_nor_a_bypass(Settings::Shipped);
}

#[test]
fn invalid_path_is_json_with_the_request_id_and_refused_before_any_route() {
    let courses = Upstream::start("course_service");
    let envoy = builder(&path_policy(), Settings::EnvoyDefaults)
        .upstream(&courses)
        .start();
    let resp = envoy.request(Request::get("//api/courses/7").header("x-request-id", "bad-path-1"));
    let error = resp.assert_error(400, "invalid_path");
    assert_eq!(error["request_id"], "bad-path-1");
    // Unknown and refused paths alike are never resolved: not even 404.
    let resp = envoy.get("/nope/../api/courses/7");
    resp.assert_error(400, "invalid_path");
    assert_eq!(courses.requests(), 0);
}

// ---- every upgrade Envoy would perform ---------------------------------------------

fn upgrade_policy() -> Value {
    json!({
        "routes": [
            {"name": "events", "prefix": "/ws/events", "cluster": "event_service", "websocket": true},
            {"name": "uploads", "prefix": "/api/uploads", "cluster": "event_service", "methods": ["POST", "PUT", "GET"]}
        ],
        "websocket": {
            "max_connections": 2,
            "identity": {"header": "x-user-id"},
            "require_identity": true
        }
    })
}

/// Sends a handshake on a fresh connection; returns the status and, for a
/// 101, the open connection (kept so the upgrade stays active).
fn handshake(
    envoy: &Envoy,
    method: &str,
    path: &str,
    upgrade: &str,
    user: Option<&str>,
) -> (u16, Option<TcpStream>, Response) {
    let mut req = Request::new(method, path)
        .header("upgrade", upgrade)
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13");
    if let Some(user) = user {
        req = req.header("x-user-id", user);
    }
    let mut stream = envoy.connect();
    stream
        .write_all(&req.head_bytes(None))
        .expect("send handshake");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let resp = http::read_response(&mut reader, method, Instant::now())
        .unwrap_or_else(|e| panic!("{method} {path} upgrade {upgrade:?}: {e}"));
    let open = (resp.status == 101).then_some(stream);
    (resp.status, open, resp)
}

fn upgrades_never_walk_around_the_limits(settings: Settings) {
    let events = Upstream::start("event_service");
    let envoy = builder(&upgrade_policy(), settings)
        .upstream(&events)
        .start();
    let mut open = Vec::new();
    // Two GET handshakes fill the instance.
    for user in ["alice", "bob"] {
        let (status, stream, resp) =
            handshake(&envoy, "GET", "/ws/events", "websocket", Some(user));
        assert_eq!(status, 101, "{settings:?}: {resp:?}");
        open.extend(stream);
    }
    let upgrades = [
        "websocket",
        "WebSocket",
        "WEBSOCKET",
        "websocket, foo",
        "foo, websocket",
        "WebSocket,h2c",
        "h2c",
        "foo",
    ];
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        for upgrade in upgrades {
            for path in ["/ws/events", "/api/uploads/x", "/not-declared"] {
                for user in [None, Some("carol")] {
                    let (status, stream, resp) = handshake(&envoy, method, path, upgrade, user);
                    assert_ne!(
                        status, 101,
                        "{settings:?}: {method} {path} upgrade {upgrade:?} user {user:?} was upgraded beyond the limit"
                    );
                    drop(stream);
                    assert!(status < 500 || status == 503, "{resp:?}");
                    // Envoy's codec drops a lone `h2c` upgrade: a plain request.
                    if upgrade == "h2c" {
                        continue;
                    }
                    let code = resp.error_code().unwrap_or_default();
                    resp.assert_error(status, &code);
                    if method != "GET" || !upgrade.eq_ignore_ascii_case("websocket") {
                        assert_eq!(
                            (status, code.as_str()),
                            (400, "invalid_upgrade"),
                            "{settings:?}: {method} {path} upgrade {upgrade:?}: {resp:?}"
                        );
                    }
                }
            }
        }
    }
    let active = envoy
        .stat("http.ingress.downstream_cx_upgrades_active")
        .unwrap_or_default();
    assert_eq!(active, 2, "{settings:?}: Envoy holds {active} upgrades");
    assert_eq!(events.ws_open(), 2, "{settings:?}");
    // The same refusals below the limit: only a GET with identity is a 101.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(5);
    while envoy.stat("http.ingress.downstream_cx_upgrades_active") != Some(0) {
        assert!(Instant::now() < deadline, "upgrades never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (method, path, upgrade, user, expected) in [
        ("POST", "/ws/events", "websocket", Some("dave"), 400),
        ("PUT", "/ws/events", "WebSocket", Some("dave"), 400),
        ("POST", "/api/uploads/x", "websocket", Some("dave"), 400),
        ("GET", "/ws/events", "websocket, foo", Some("dave"), 400),
        ("GET", "/api/uploads/x", "websocket", Some("dave"), 404),
        ("GET", "/not-declared", "websocket", Some("dave"), 404),
        ("GET", "/ws/events", "WEBSOCKET", None, 401),
        ("GET", "/ws/events", "WeBsOcKeT", Some("dave"), 101),
    ] {
        let (status, _stream, resp) = handshake(&envoy, method, path, upgrade, user);
        assert_eq!(
            status, expected,
            "{settings:?}: {method} {path} {upgrade:?} {user:?}: {resp:?}"
        );
    }
    assert!(
        envoy
            .stat("edge_guard.rejected.invalid_upgrade")
            .unwrap_or_default()
            > 0
    );
}

#[test]
fn upgrades_with_envoys_default_settings() {
    upgrades_never_walk_around_the_limits(Settings::EnvoyDefaults);
}

#[test]
fn upgrades_with_the_shipped_edge_settings() {
    upgrades_never_walk_around_the_limits(Settings::Shipped);
}

#[test]
fn unknown_route_allow_never_lets_an_upgrade_through() {
    let events = Upstream::start("event_service");
    let mut policy = upgrade_policy();
    policy["unknown_route"] = json!("allow");
    let envoy = Envoy::builder(&policy)
        .upstream(&events)
        .routes_yaml(
            "- name: all\n  match: {prefix: /}\n  route: {cluster: event_service, timeout: 0s}",
        )
        .start();
    let (status, _s, resp) = handshake(&envoy, "GET", "/elsewhere", "websocket", Some("u"));
    resp.assert_error(404, "route_not_found");
    assert_eq!(status, 404);
    assert_eq!(events.ws_open(), 0);
}

// ---- status exposure that no header opens -------------------------------------------

fn status_policy() -> Value {
    json!({
        "routes": [{"name": "courses", "prefix": "/api/courses", "cluster": "course_service"}],
        "status": {"allow_cidrs": ["127.0.0.1/32"]}
    })
}

#[test]
fn forwarded_headers_never_open_the_status_endpoint() {
    let spoofs: [&[(&str, &str)]; 10] = [
        &[],
        &[("x-forwarded-for", "127.0.0.1")],
        &[("x-forwarded-for", "127.0.0.1:8080")],
        &[("x-forwarded-for", "[::1]:8080")],
        &[("x-forwarded-for", "10.9.9.9, 127.0.0.1:443")],
        &[("x-forwarded-for", "10.9.9.9, 127.0.0.1")],
        &[("x-envoy-external-address", "127.0.0.1")],
        &[("forwarded", "for=127.0.0.1")],
        &[("x-real-ip", "127.0.0.1")],
        &[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-envoy-external-address", "127.0.0.1"),
            ("forwarded", "for=127.0.0.1;proto=http"),
        ],
    ];
    for use_remote_address in [false, true] {
        for edge in [false, true] {
            let mut b = Envoy::builder(status_policy()).use_remote_address(use_remote_address);
            if edge && use_remote_address {
                b = b.shipped_edge_settings();
            }
            let envoy = b.start();
            let label = format!("use_remote_address={use_remote_address} shipped={edge}");
            for headers in spoofs {
                let mut req = Request::get("/.edge-guard/status");
                for (n, v) in headers {
                    req = req.header(n, v);
                }
                let resp = envoy.request_from(OUTSIDER, req);
                assert_ne!(
                    resp.status, 200,
                    "{label}: {headers:?} opened status: {resp:?}"
                );
                resp.assert_error(404, "route_not_found");
            }
            // The allowed address itself still sees it.
            let resp = envoy.request(Request::get("/.edge-guard/status"));
            assert_eq!(resp.status, 200, "{label}: {resp:?}");
            assert_eq!(resp.json()["name"], "edge-guard");
        }
    }
}

#[test]
fn an_address_taken_from_a_header_is_never_trusted_even_when_allowed() {
    // Without use_remote_address Envoy takes the client address from
    // x-forwarded-for; edge-guard then cannot know who connected and refuses,
    // even for an address inside allow_cidrs.
    let policy = json!({
        "routes": [{"name": "courses", "prefix": "/api/courses", "cluster": "course_service"}],
        "status": {"allow_cidrs": ["127.0.0.0/8", "10.0.0.0/8"]}
    });
    let envoy = Envoy::builder(policy).use_remote_address(false).start();
    let resp =
        envoy.request(Request::get("/.edge-guard/status").header("x-forwarded-for", "10.1.1.1"));
    resp.assert_error(404, "route_not_found");
    let resp = envoy.request(Request::get("/.edge-guard/status"));
    assert_eq!(resp.status, 200, "{resp:?}");
}

// ---- every error in the JSON contract -----------------------------------------------

fn raw_exchange(envoy: &Envoy, bytes: &[u8]) -> Response {
    let mut stream = envoy.connect();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    stream.write_all(bytes).expect("write");
    let mut reader = BufReader::new(stream);
    http::read_response(&mut reader, "GET", Instant::now()).expect("a response")
}

fn assert_envoy_error(resp: &Response, status: u16, code: &str, request_id: Option<&str>) {
    let error = resp.assert_error(status, code);
    match request_id {
        Some(id) => assert_eq!(error["request_id"], id, "{resp:?}"),
        None => assert!(error["request_id"].is_null() || error["request_id"].is_string()),
    }
    assert_ne!(error["request_id"], "", "{resp:?}");
}

#[test]
fn envoys_own_errors_have_the_json_shape() {
    let courses = Upstream::start("course_service");
    let policy = json!({
        "routes": [
            {"name": "courses", "prefix": "/api/courses", "cluster": "course_service", "timeout": "quick"},
            {"name": "empty", "prefix": "/api/empty", "cluster": "empty_service"},
            {"name": "closed", "prefix": "/api/closed", "cluster": "closed_service"},
            {"name": "events", "prefix": "/ws", "cluster": "course_service", "websocket": true}
        ],
        "timeouts": {"classes": {"standard": "30s", "quick": "1s"}},
        "unknown_route": "allow"
    });
    // An upstream that answers garbage: Envoy's 502.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let garbage_port = garbage.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in garbage.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = conn.write_all(b"NOT HTTP AT ALL\r\n\r\n");
        }
    });
    for settings in BOTH {
        let envoy = builder(&policy, settings)
            .upstream(&courses)
            .cluster_at_port("closed_service", 1)
            .cluster_at_port("garbage_service", garbage_port)
            .http_filter_yaml(
                "name: envoy.filters.http.rbac\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n  rules:\n    action: DENY\n    policies:\n      forbidden:\n        permissions: [{url_path: {path: {prefix: /forbidden}}}]\n        principals: [{any: true}]",
            )
            .request_headers_timeout(Duration::from_millis(500))
            .http_filter_yaml(
                "name: envoy.filters.http.buffer\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer\n  max_request_bytes: 1024",
            )
            .routes_yaml(
                "- name: courses\n  match: {prefix: /api/courses}\n  route: {cluster: course_service, timeout: 300s}\n\
                 - name: empty\n  match: {prefix: /api/empty}\n  route: {cluster: empty_service}\n\
                 - name: closed\n  match: {prefix: /api/closed}\n  route: {cluster: closed_service}\n\
                 - name: events\n  match: {prefix: /ws}\n  route: {cluster: course_service, timeout: 0s}\n\
                 - name: garbage\n  match: {prefix: /garbage}\n  route: {cluster: garbage_service}\n\
                 - name: teapot\n  match: {prefix: /teapot}\n  direct_response: {status: 418, body: {inline_string: short and stout}}\n\
                 - name: healthz\n  match: {prefix: /healthz}\n  direct_response: {status: 200, body: {inline_string: ok}}",
            )
            .start();
        let id = |s: &str| format!("{s}-{settings:?}");
        let get =
            |path: &str, rid: &str| envoy.request(Request::get(path).header("x-request-id", rid));
        // 504: the router's timeout at the class's budget.
        let rid = id("ut");
        let resp = get("/api/courses/x?delay_ms=3000", &rid);
        assert_envoy_error(&resp, 504, "upstream_timeout", Some(&rid));
        // 503: no healthy upstream; upstream connection refused.
        let rid = id("uh");
        assert_envoy_error(
            &get("/api/empty/x", &rid),
            503,
            "no_healthy_upstream",
            Some(&rid),
        );
        let rid = id("uf");
        assert_envoy_error(
            &get("/api/closed/x", &rid),
            503,
            "upstream_unavailable",
            Some(&rid),
        );
        // 502: the upstream answered something that is not HTTP.
        let rid = id("upe");
        assert_envoy_error(&get("/garbage/x", &rid), 502, "upstream_error", Some(&rid));
        // 403: an authorization filter (rbac) said no.
        let rid = id("rbac");
        assert_envoy_error(&get("/forbidden/x", &rid), 403, "forbidden", Some(&rid));
        // Any other status Envoy answers itself.
        let rid = id("teapot");
        let resp = get("/teapot", &rid);
        assert_envoy_error(&resp, 418, "proxy_error", Some(&rid));
        assert!(resp.text().contains("short and stout"), "{resp:?}");
        // A successful direct response is left alone.
        let resp = get("/healthz", &rid);
        assert_eq!((resp.status, resp.text().as_str()), (200, "ok"), "{resp:?}");
        // 404: no Envoy route (edge-guard lets unknown routes through here).
        let rid = id("nr");
        assert_envoy_error(&get("/elsewhere", &rid), 404, "route_not_found", Some(&rid));
        // 413: a buffering filter's limit.
        let rid = id("big");
        let resp = envoy.request(
            Request::post("/api/courses/x")
                .header("x-request-id", &rid)
                .body(vec![b'x'; 4096]),
        );
        assert_envoy_error(&resp, 413, "payload_too_large", Some(&rid));
        // 431: request headers over Envoy's 60 KiB.
        let resp =
            envoy.request(Request::get("/api/courses/1").header("x-big", &"a".repeat(70_000)));
        assert_envoy_error(&resp, 431, "headers_too_large", None);
        // 400: malformed HTTP; nothing was parsed, so no request id at all.
        let resp = raw_exchange(&envoy, b"GET /x HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n");
        assert_envoy_error(&resp, 400, "bad_request", None);
        assert!(resp.json()["error"]["request_id"].is_null(), "{resp:?}");
        // 408: the request headers did not arrive in time.
        let resp = raw_exchange(&envoy, b"GET /x HTTP/1.1\r\nhost: a\r\n");
        assert_envoy_error(&resp, 408, "request_timeout", None);
        assert!(resp.json()["error"]["request_id"].is_null(), "{resp:?}");
        // An upgrade type Envoy has no upgrade_configs for: Envoy's 403
        // becomes edge-guard's own answer.
        let rid = id("upg");
        let resp = envoy.request(
            Request::get("/ws")
                .header("upgrade", "foo")
                .header("connection", "upgrade")
                .header("x-request-id", &rid),
        );
        assert_envoy_error(&resp, 400, "invalid_upgrade", Some(&rid));
        if let Settings::Shipped = settings {
            // 400: an underscore in a header name (headers_with_underscores_action).
            let resp = envoy.request(Request::get("/api/courses/1").header("x_user_id", "mallory"));
            assert_envoy_error(&resp, 400, "bad_request", None);
        }
    }
}

#[test]
fn a_missing_request_id_is_null_never_empty() {
    // Without preserve_external_request_id Envoy still generates one; an
    // empty client header is replaced. edge-guard's own bodies never say "".
    let envoy = Envoy::builder(status_policy()).start();
    let resp = envoy.request(Request::get("/nope").header("x-request-id", ""));
    let error = resp.assert_error(404, "route_not_found");
    assert_ne!(error["request_id"], "");
}

#[test]
fn shipped_settings_block_is_what_the_harness_uses() {
    // The "shipped" runs above are only worth something if the harness
    // copies the real block; a change to envoy/envoy.yaml shows up here.
    let block = envoy::shipped_block("edge-settings");
    for setting in [
        "normalize_path: true",
        "merge_slashes: true",
        "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
        "headers_with_underscores_action: REJECT_REQUEST",
        "use_remote_address: true",
        "local_reply_config:",
    ] {
        assert!(
            block.contains(setting),
            "{setting} missing from the shipped block"
        );
    }
    let yaml = Envoy::builder(status_policy())
        .shipped_edge_settings()
        .config_yaml();
    assert!(yaml.contains("normalize_path: true"));
    let default = Envoy::builder(status_policy()).config_yaml();
    assert!(!default.contains("normalize_path"));
    assert!(default.contains("local_reply_config:"));
}

// ---- header values that are not UTF-8 -----------------------------------------------

/// Envoy's codec passes bytes 0x80-0xff in header values (obs-text). The filter
/// reads the head in place and falls back to a lossy copy for such a value:
/// the reply stays valid JSON, and such a value decides nothing it should not.
fn header_values_that_are_not_utf8_are_read_lossily(settings: Settings) {
    let events = Upstream::start("event_service");
    let envoy = builder(&upgrade_policy(), settings)
        .upstream(&events)
        .start();
    // An unknown route: the JSON error carries the request id, read lossily.
    let resp = raw_exchange(
        &envoy,
        b"GET /nope HTTP/1.1\r\nhost: a\r\nx-request-id: ab\xffcd\r\n\r\n",
    );
    let error = resp.assert_error(404, "route_not_found");
    let id = error["request_id"].as_str().unwrap_or_default().to_string();
    // (Envoy keeps a loopback client's request id, shipped settings or not.)
    assert_eq!(id, "ab\u{fffd}cd", "{settings:?}: {resp:?}");
    // An upgrade value that is not UTF-8 is no WebSocket upgrade.
    let refused = raw_exchange(
        &envoy,
        b"GET /ws/events HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\xff\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
          x-user-id: ann\r\n\r\n",
    );
    assert_ne!(refused.status, 101, "{settings:?}: {refused:?}");
    assert_eq!(events.ws_open(), 0, "{settings:?}");
    // An identity that is not UTF-8 is still an identity: the upgrade is let
    // through to the upstream (this harness's upstream reads heads as UTF-8
    // and drops it: Envoy's JSON 503), not refused as anonymous.
    let resp = raw_exchange(
        &envoy,
        b"GET /ws/events HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
          x-user-id: \xff\xfe\r\n\r\n",
    );
    if resp.status != 101 {
        resp.assert_error(503, "upstream_unavailable");
    }
    // Its slot came back, and the VM is whole: the instance's two slots
    // still admit two users.
    let active = "edge_guard.websocket.active";
    let left = envoy.wait_for_stat(active, Duration::from_secs(5), |n| n == 0);
    assert_eq!(left, Some(0), "{settings:?}: the slot was released");
    let mut open = Vec::new();
    for user in ["ann", "bob"] {
        let (status, stream, resp) =
            handshake(&envoy, "GET", "/ws/events", "websocket", Some(user));
        assert_eq!(status, 101, "{settings:?}: {resp:?}");
        open.extend(stream);
    }
    assert_eq!(envoy.stat(active), Some(2), "{settings:?}");
}

#[test]
fn header_values_that_are_not_utf8_are_read_lossily_with_envoy_defaults() {
    header_values_that_are_not_utf8_are_read_lossily(Settings::EnvoyDefaults);
}

#[test]
fn header_values_that_are_not_utf8_are_read_lossily_with_the_shipped_settings() {
    header_values_that_are_not_utf8_are_read_lossily(Settings::Shipped);
}
