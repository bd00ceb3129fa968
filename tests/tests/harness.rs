//! Self-tests of the harness and the demo upstream, with the filter left out of
//! the chain (`without_filter`): if these fail, no e2e result means anything.

use edge_guard_e2e::*;
use std::time::Duration;

fn policy() -> Value {
    json!({"routes": [
        {"name": "courses", "prefix": "/api/courses", "cluster": "course_service"},
        {"name": "events", "prefix": "/ws/events", "cluster": "event_service", "websocket": true}
    ]})
}

#[test]
fn plain_envoy_proxies_to_the_demo_upstream_on_os_chosen_ports() {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .without_filter()
        .start();
    assert_ne!(envoy.listener_port(), 0);
    assert_ne!(envoy.admin_port(), 0);
    assert!(envoy.pid() > 0);

    let resp = envoy.request(
        Request::post("/api/courses/7?x=1")
            .header("X-Thing", "a")
            .body("hello"),
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let echo = resp.json();
    assert_eq!(echo["service"], "course_service");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/courses/7?x=1");
    assert_eq!(echo["headers"]["x-thing"], "a");
    assert_eq!(echo["body_bytes"], 5);
    assert_eq!(up.requests(), 1);
}

#[test]
fn upstream_query_knobs_status_and_delay() {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .without_filter()
        .start();
    let resp = envoy.get("/api/courses?status=418&delay_ms=300");
    assert_eq!(resp.status, 418, "{resp:?}");
    assert!(resp.elapsed >= Duration::from_millis(300), "{resp:?}");
}

#[test]
fn route_to_a_cluster_without_upstream_is_503() {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .without_filter()
        .start();
    assert_eq!(envoy.get("/ws/events").status, 503);
    assert_eq!(envoy.get("/nowhere").status, 404);
}

#[test]
fn upstream_health_control_api() {
    let up = Upstream::start("course_service");
    assert_eq!(up.request(Request::get("/health")).text(), "ok");
    up.set_health("fail");
    assert_eq!(up.request(Request::get("/health")).status, 503);
    up.set_health("hang");
    let hung = edge_guard_e2e::http::send(
        up.addr(),
        &Request::get("/health").timeout(Duration::from_millis(300)),
    );
    assert!(hung.is_err(), "hang mode answered: {hung:?}");
    up.set_health("ok");
    let stats = up.stats();
    assert_eq!(stats["health_hits"], 3, "{stats}");
    assert_eq!(
        stats["health_hit_times_ms"].as_array().map(Vec::len),
        Some(3)
    );
    up.reset_stats();
    assert_eq!(up.stats()["health_hits"], 0);
}

#[test]
fn websocket_echo_big_close_and_reset_through_envoy() {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .without_filter()
        .start();

    let mut ws = envoy
        .websocket("/ws/events", &[("x-user-id", "alice")])
        .expect("upgrade");
    ws.send_text("hello");
    assert_eq!(ws.expect_text(), "hello");
    ws.send_binary(&[1, 2, 3]);
    assert_eq!(ws.expect_binary(), vec![1, 2, 3]);
    ws.send_raw(&raw_frame(0x1, true, b"raw"));
    assert_eq!(ws.expect_text(), "raw");
    ws.send_text("__big 200000");
    assert_eq!(ws.expect_binary(), edge_guard_e2e::ws::big_payload(200_000));
    assert_eq!(up.ws_open(), 1);
    assert_eq!(
        ws.recv_timeout(Duration::from_millis(100)),
        WsEvent::TimedOut
    );
    ws.send_text("__close");
    assert_eq!(
        ws.recv(),
        WsEvent::Closed {
            code: 1000,
            reason: String::new()
        }
    );

    let mut ws = envoy.websocket("/ws/events", &[]).expect("upgrade");
    ws.send_text("__reset");
    assert_eq!(ws.recv(), WsEvent::Reset);
}

#[test]
fn websocket_refused_by_upstream_comes_back_whole() {
    let up = Upstream::start("event_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .without_filter()
        .start();
    let rejected = envoy
        .websocket("/ws/events?refuse_upgrade=1", &[])
        .err()
        .expect("refused");
    assert_eq!(rejected.status, 403, "{rejected:?}");
    assert!(rejected.text().contains("refused"), "{rejected:?}");
}

#[test]
fn slow_upload_completes_and_reports_bytes() {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .without_filter()
        .start();
    let up_resp = envoy.slow_upload("/api/courses/upload", 4000, 1000, Duration::from_millis(50));
    assert_eq!(up_resp.status, 200, "{:?}", up_resp.resp);
    assert!(up_resp.body_complete);
    assert_eq!(up_resp.json()["body_bytes"], 4000);
}

#[test]
fn admin_stats_and_custom_routes() {
    let up = Upstream::start("course_service");
    let envoy = Envoy::builder(policy())
        .upstream(&up)
        .routes_yaml(
            r#"
            - name: everything
              match: {prefix: "/"}
              route: {cluster: course_service}
            "#,
        )
        .without_filter()
        .start();
    assert_eq!(envoy.get("/anything/at/all").status, 200);
    assert_eq!(
        envoy.wait_for_stat(
            "cluster.course_service.upstream_rq_200",
            Duration::from_secs(5),
            |v| v >= 1
        ),
        Some(1)
    );
    assert!(envoy.prometheus().contains("envoy_cluster_upstream_rq"));
    assert!(envoy.log_contains("starting main dispatch loop"));
}

// ---- nothing outlives a killed test binary ------------------------------------------

const ORPHAN_HELPER: &str = "EDGE_GUARD_E2E_ORPHAN_HELPER";

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Re-runs this test binary as a helper that starts an upstream and an Envoy
/// and then hangs; SIGKILLs the helper (no destructor runs) and checks that
/// the kernel took both children down with it.
#[test]
fn children_die_with_a_sigkilled_test_binary() {
    if std::env::var_os(ORPHAN_HELPER).is_some() {
        let up = Upstream::start("course_service");
        let envoy = Envoy::builder(policy())
            .upstream(&up)
            .without_filter()
            .start();
        println!("CHILDREN {} {}", up.pid(), envoy.pid());
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "children_die_with_a_sigkilled_test_binary",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ORPHAN_HELPER, "1")
    .stdout(std::process::Stdio::piped());
    let mut helper = edge_guard_e2e::Guarded::start(cmd);
    let stdout = helper.child().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest's "test name ... " precedes it on the same line.
            if let Some((_, pids)) = line.split_once("CHILDREN ") {
                let _ = tx.send(pids.to_string());
            }
        }
    });
    let pids: Vec<u32> = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the helper never reported its children")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(
        pids.iter().all(|p| !process_gone(*p)),
        "children not running"
    );
    // SIGKILL the helper alone (not its group): no Drop runs in it.
    // SAFETY: signalling our own unreaped child by its PID.
    unsafe {
        libc::kill(helper.pid() as libc::pid_t, libc::SIGKILL);
    }
    assert!(helper.wait_timeout(Duration::from_secs(5)).is_some());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|p| process_gone(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "children {pids:?} outlived the SIGKILLed test binary"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
