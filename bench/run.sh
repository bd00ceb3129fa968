#!/usr/bin/env bash
# edge-guard's benchmark (BENCHMARKS.md). Started by `./build.sh bench [--smoke]`,
# which has installed the wasm target and Envoy. This script installs the load
# tools it needs, builds every artefact, then hands over to bench/bench.py.
#   --smoke   tiny durations, one round: checks that everything runs (CI)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/bench/work"
ENVOY="$ROOT/.venv/bin/envoy"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

for arg in "$@"; do
  case "$arg" in
    --smoke) ;;
    *) echo "usage: ./build.sh bench [--smoke]" >&2; exit 2 ;;
  esac
done

[ -x "$ENVOY" ] || { echo "no Envoy at $ENVOY: run ./build.sh setup (or ./build.sh bench)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }

# wrk: the closed-loop HTTP load (Debian package). The open-loop generator and
# the WebSocket client are built from bench/tools below.
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  if ! apt-get install -y -qq wrk >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq wrk >/dev/null
  fi
fi

# edge-guard exactly as shipped (build.sh's build, post-processing included).
"$ROOT/build.sh" build
log "building the pass-through filter, the demo upstream and the load clients"
# Standalone crates (own [workspace]): the pass-through filter (edge-guard's
# release profile but opt-level "s", its cheapest), and the load clients.
PASSTHROUGH="$WORK/target-passthrough/wasm32-wasip1/release/passthrough.wasm"
cargo build --quiet --release --target wasm32-wasip1 \
  --manifest-path benches/passthrough/Cargo.toml --target-dir "$WORK/target-passthrough"
# The same post-processing as edge_guard.wasm (build.sh's optimise_wasm), so
# that both filters are built the same way.
"$ROOT/build.sh" optimise-wasm "$PASSTHROUGH" "$WORK/passthrough.wasm"
POST="wasm-opt -Oz --converge"
cargo build --quiet --release -p edge-guard-demo
cargo build --quiet --release \
  --manifest-path bench/tools/Cargo.toml --target-dir "$WORK/target-tools"

# 10,000 held WebSockets are 20,000 sockets in Envoy: take the whole hard limit.
ulimit -n "$(ulimit -Hn)"

exec python3 "$ROOT/bench/bench.py" "$@" \
  --envoy "$ENVOY" \
  --edge-guard-wasm "$ROOT/target/wasm32-wasip1/release/edge_guard.wasm" \
  --passthrough-wasm "$WORK/passthrough.wasm" \
  --wasm-post "$POST" \
  --demo-upstream "$ROOT/target/release/demo-upstream" \
  --tools-dir "$WORK/target-tools/release" \
  --results-dir "$ROOT/bench/results"
