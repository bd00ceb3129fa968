#!/usr/bin/env bash
# Hand-made mutations of the host layer (src/filter/) and of the four that
# survived the first round, each checked end to end: apply it to a scratch
# copy of src/, build that wasm, run the named e2e test(s) against it, and
# expect them to FAIL. Writes tests/mutants/host-layer.md.
#   ./build.sh mutants-host            every mutation
#   ./build.sh mutants-host H3 H7      some of them
# Needs what ./build.sh test installs (Envoy in .venv, the wasm32 target).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRATCH="$ROOT/target/host-mutants"
REPORT="$ROOT/tests/mutants/host-layer.md"

# id ~ file ~ exact text ~ replacement ~ test binary ~ test name (exact) ~ what breaks
MUTATIONS=(
"H1~src/filter/http/websocket.rs~const CLOSE_GRACE_MS: u64 = 800;~const CLOSE_GRACE_MS: u64 = 5000;~claims~a_violation_tears_the_stream_down_within_1s_whatever_the_peers_do~close grace after a size/rate/protocol violation 800 ms -> 5 s"
"H2~src/filter/http/websocket.rs~const CAPACITY_RETRY_AFTER: &str = \"5\";~const CAPACITY_RETRY_AFTER: &str = \"1\";~websocket~instance_limit_is_exact_under_a_burst_of_40_upgrades~retry-after on websocket_capacity 5 -> 1"
"H3~src/headers.rs~    \"x-envoy-upstream-rq-timeout-alt-response\",~    \"x-envoy-upstream-rq-timeout-alt-responsX\",~claims~client_alt_response_header_cannot_change_the_504~the client's x-envoy-upstream-rq-timeout-alt-response is kept"
"H4~src/policy/mod.rs~lb_idle.saturating_sub(t.load_balancer_margin)~lb_idle.saturating_sub(Millis(5000))~claims~configured_load_balancer_margin_is_the_one_applied~the configured load_balancer_margin ignored (default 5 s used)"
"H5~src/filter/http/websocket.rs~        host::set_request_header(ROUTER_TIMEOUT_HEADER, None);\n~\n~claims~client_router_timeout_header_on_an_upgrade_changes_nothing~a client's router-timeout header kept on a WebSocket upgrade"
"H6~src/filter/root.rs~                metrics::increment(m.probe_failures, 1);~                let _ = m;~claims~a_refused_connection_is_a_failed_probe~edge_guard.cluster.<cluster>.probe_failures never incremented"
"H7~src/filter/http.rs~.filter(|h| h.fail_fast)~.filter(|_h| true)~claims~without_fail_fast_an_unhealthy_cluster_still_gets_traffic~fail_fast: false ignored (always fail fast)"
"H8~src/filter/worker.rs~const TIMER_CLOSE_GRACE_MS: u64 = 250;~const TIMER_CLOSE_GRACE_MS: u64 = 0;~claims~idle_timeout_closes_with_1001_on_the_next_chunk~idle/lifetime close: reset at once instead of 250 ms for the 1001 to ride the next chunk"
"H9~src/filter/http.rs~        metrics::increment(self.worker.metrics.rejected(code), 1);\n~\n~claims~rejections_are_counted_by_code~edge_guard.rejected.<code> never incremented"
"H10~src/filter/http.rs~LocalReply::error(code, message, self.request_id.as_deref())~LocalReply::error(code, message, None)~claims~websocket_rejections_carry_the_request_id~error replies lose the client's x-request-id"
"H11~src/filter/http.rs~host::set_request_header(ROUTER_TIMEOUT_HEADER, Some(&header_value(upstream_budget)));~host::set_request_header(ROUTER_TIMEOUT_HEADER, Some(&header_value(class.total)));~deadlines~upstream_sees_expected_timeout_of_exactly_min_response_total~router timeout header set to total instead of min(response, total)"
"H12~src/filter/http.rs~        if upgrade && !route.websocket {~        if false && upgrade && !route.websocket {~websocket~missing_identity_is_401_and_an_upgrade_to_a_plain_route_is_404~an upgrade to a non-websocket route passes instead of 404"
)

wanted=("$@")
want() {
  [ ${#wanted[@]} -eq 0 ] && return 0
  local w; for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1
}

export EDGE_GUARD_ENVOY="$ROOT/.venv/bin/envoy"
echo "building the e2e test binaries" >&2
(cd "$ROOT" && cargo test --quiet -p edge-guard-e2e --no-run >/dev/null 2>&1)
test_bin() { # newest executable of that e2e test binary
  ls -t "$ROOT"/target/debug/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -1
}

mkdir -p "$SCRATCH/rows"
row() { echo "$2" >"$SCRATCH/rows/$1.md"; }
for m in "${MUTATIONS[@]}"; do
  IFS='~' read -r id file from to bin name what <<<"$m"
  want "$id" || continue
  rm -rf "$SCRATCH/tree"; mkdir -p "$SCRATCH/tree"
  tar -C "$ROOT" --exclude=./target --exclude=./.git --exclude=./.venv --exclude=node_modules \
    -cf - Cargo.toml Cargo.lock src demo tests | tar -C "$SCRATCH/tree" -xmf -
  if ! python3 - "$SCRATCH/tree/$file" "$from" "$to" <<'PY'
import sys
path, old, new = sys.argv[1], sys.argv[2].replace("\\n", "\n"), sys.argv[3].replace("\\n", "\n")
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"mutation text found {text.count(old)} times in {path}: {old!r}")
open(path, "w").write(text.replace(old, new))
PY
  then row "$id" "| $id | $what | \`$file\` | \`$bin::$name\` | **could not apply** |"; continue; fi
  echo "== $id: $what" >&2
  if ! (cd "$SCRATCH/tree" && CARGO_TARGET_DIR="$SCRATCH/target" nice -n 10 \
        cargo build --quiet --release --target wasm32-wasip1 -p edge-guard) >"$SCRATCH/$id.build.log" 2>&1; then
    row "$id" "| $id | $what | \`$file\` | \`$bin::$name\` | unviable (does not build) |"; continue
  fi
  wasm="$SCRATCH/$id.wasm"
  cp "$SCRATCH/target/wasm32-wasip1/release/edge_guard.wasm" "$wasm"
  # Its dep-info: the harness then checks the wasm against the scratch sources.
  cp "$SCRATCH/target/wasm32-wasip1/release/edge_guard.d" "$SCRATCH/$id.d"
  started=$(date +%s)
  if EDGE_GUARD_WASM="$wasm" nice -n 5 "$(test_bin "$bin")" --exact "$name" >"$SCRATCH/$id.test.log" 2>&1; then
    result="**NOT CAUGHT** (test passed)"
  elif grep -q "is older than its source\|not found at" "$SCRATCH/$id.test.log"; then
    result="inconclusive: the harness refused the wasm (see $SCRATCH/$id.test.log)"
  else
    why=$(grep -m1 -A1 "panicked at" "$SCRATCH/$id.test.log" | tail -1 | cut -c1-140 | tr '|' '/')
    result="caught in $(( $(date +%s) - started )) s: ${why:-test failed}"
  fi
  echo "   $result" >&2
  row "$id" "| $id | $what | \`$file\` | \`$bin::$name\` | $result |"
done

{
  echo "# Hand-made mutations, checked end to end"
  echo
  echo "Each row was applied alone to a scratch copy of \`src/\` by \`tests/mutants/host-layer.sh\`"
  echo "(\`./build.sh mutants-host\`), built into a wasm, and the named end-to-end test was run"
  echo "against it through a real Envoy: it must fail. H1–H4 are the four first-round survivors (close grace,"
  echo "retry-after, alt-response header, configured margin); the rest guard host-layer promises."
  echo "Generated $(date -u +%Y-%m-%d); the failure message is the test's first panic line."
  echo
  echo "A refused probe connection reaches the filter as Envoy's own 503 (the async HTTP"
  echo "client's local reply), so the filter has no connection-failure path of its own to"
  echo "mutate (making a missing \`:status\` healthy is an equivalent mutant on Envoy 1.40):"
  echo "\`claims::a_refused_connection_is_a_failed_probe\` pins the behaviour, H6 its counter."
  echo
  echo "| id | mutation | file | test that must fail | result |"
  echo "|---|---|---|---|---|"
  for m in "${MUTATIONS[@]}"; do
    id="${m%%~*}"
    if [ -f "$SCRATCH/rows/$id.md" ]; then cat "$SCRATCH/rows/$id.md"; else echo "| $id | ${m##*~} | | | not run yet |"; fi
  done
} >"$REPORT"
echo "wrote $REPORT" >&2
