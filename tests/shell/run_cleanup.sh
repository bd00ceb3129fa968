#!/usr/bin/env bash
# `./build.sh run` stops everything it started, however it ends.
#
# Each case runs the real `./build.sh run` (after `./build.sh test` has built
# everything, so its builds are no-ops) in a network namespace of its own:
# the demo's fixed ports (10000, 9901, 18081-18086) never meet another
# test's or a developer's stack, and "everything it started" is exactly the
# set of processes in that namespace. A case waits until Envoy is ready, ends
# the run one way, and passes when the namespace is empty within 10 s.
# Leftovers are killed by PID and the case fails.
#
# Needs root for `unshare --net` (CI runs as root). Run by `./build.sh test`;
# alone: tests/shell/run_cleanup.sh [case...]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if [ "$(id -u)" != 0 ]; then
  echo "run_cleanup: needs root for a private network namespace (unshare --net); CI runs as root" >&2
  exit 1
fi

WORK="$(mktemp -d /tmp/edge-guard-run-cleanup.XXXXXX)"
passed=0
failed=0
failures=()
STARTED=""   # the setsid'd session leader of the current case

# The PIDs of every process whose network namespace is $1 (a /proc/*/ns/net link).
pids_in_ns() {
  local ns="$1" p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
  done
  return 0
}

cleanup_all() {
  # Only what this script started: the namespaces' processes, by PID.
  if [ -n "${CASE_NS:-}" ]; then
    for pid in $(pids_in_ns "$CASE_NS"); do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  [ -n "$STARTED" ] && kill -KILL "$STARTED" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The PID of the first process in namespace $1 whose command line matches $2.
find_in_ns() {
  local ns="$1" pattern="$2" pid
  for pid in $(pids_in_ns "$ns"); do
    if cat "/proc/$pid/cmdline" 2>/dev/null | tr "\0" " " | grep -qE -- "$pattern"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# run_case NAME COMMAND ENDING
#   COMMAND  how the user runs it (a bash -c string, run in a new session, as
#            from a terminal: the session's process group is what Ctrl-C hits)
#   ENDING   a function that ends the run; $NS, $PGID, $OUT are set for it
run_case() {
  local name="$1" command="$2" ending="$3"
  OUT="$WORK/$name.out"
  export EDGE_GUARD_RUN_DIR="$WORK/$name.run"
  setsid unshare --net --fork -- bash -c "ip link set lo up && $command" >"$OUT" 2>&1 </dev/null &
  STARTED=$!
  PGID=$STARTED
  # unshare --fork's child is in the new namespace: wait for it to appear.
  NS=""
  local i
  for i in $(seq 1 100); do
    local child
    child="$(pgrep -P "$STARTED" 2>/dev/null | head -n1 || true)"
    if [ -n "$child" ]; then
      NS="$(readlink "/proc/$child/ns/net" 2>/dev/null || true)"
      [ -n "$NS" ] && [ "$NS" != "$(readlink /proc/self/ns/net)" ] && break
    fi
    NS=""
    sleep 0.05
  done
  CASE_NS="$NS"
  if [ -z "$NS" ]; then
    record "$name" "the run did not start in its namespace: $(tail -n 20 "$OUT")"
    return
  fi
  # Ready: Envoy's admin answers inside the namespace (up to 120 s: the
  # run may still be compiling).
  local ready=0
  for i in $(seq 1 1200); do
    if nsenter --net="/proc/$child/ns/net" curl -fsS -m 1 http://127.0.0.1:9901/ready >/dev/null 2>&1; then
      ready=1
      break
    fi
    kill -0 "$STARTED" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$ready" != 1 ]; then
    record "$name" "the stack never became ready: $(tail -n 20 "$OUT")"
    return
  fi
  local procs
  procs="$(pids_in_ns "$NS" | wc -l)"
  "$ending"
  # Everything in the namespace must be gone within 10 s.
  local left=""
  for i in $(seq 1 100); do
    left="$(pids_in_ns "$NS")"
    [ -z "$left" ] && break
    sleep 0.1
  done
  if [ -n "$left" ]; then
    local what=""
    for pid in $left; do
      what+="  $pid $(cat "/proc/$pid/cmdline" 2>/dev/null | tr "\0" " ")"$'\n'
      kill -KILL "$pid" 2>/dev/null || true
    done
    record "$name" "still running 10 s after the run ended (of $procs processes):"$'\n'"$what"
    return
  fi
  wait "$STARTED" 2>/dev/null || true
  STARTED=""
  if [ -n "${EXPECT_OUTPUT:-}" ] && ! grep -qF -- "$EXPECT_OUTPUT" "$OUT"; then
    record "$name" "its output does not say \"$EXPECT_OUTPUT\": $(tail -n 20 "$OUT")"
    return
  fi
  record "$name" ""
}

record() {
  if [ -z "$2" ]; then
    echo "run_cleanup $1 ... ok"
    passed=$((passed + 1))
  else
    echo "run_cleanup $1 ... FAILED"
    printf '%s\n' "$2" | sed 's/^/    /'
    failed=$((failed + 1))
    failures+=("$1")
  fi
}

# ---- the ways a run ends -------------------------------------------------------

# Ctrl-C in a terminal: SIGINT to the whole foreground process group (the
# script, `tail`/`tee` on the other end of the pipe, and the children).
ctrl_c() { kill -INT -- "-$PGID"; }
# A supervisor or `kill`: SIGTERM to the script alone.
sigterm_script() { kill -TERM "$(find_in_ns "$NS" '^bash \./build\.sh run')"; }
# The terminal closes: SIGHUP to the process group.
sighup() { kill -HUP -- "-$PGID"; }
# One demo service dies (crash, OOM kill).
service_dies() { kill -KILL "$(find_in_ns "$NS" '^[^ ]*/demo-upstream .*--name payment_service')"; }
# Envoy dies.
envoy_dies() { kill -KILL "$(find_in_ns "$NS" '^[^ ]*/bin/envoy ')"; }

CASES=(ctrl_c pipe_tail_ctrl_c pipe_tee_ctrl_c sigterm sighup pipe_sighup service_dies envoy_dies)
[ $# -gt 0 ] && CASES=("$@")

for c in "${CASES[@]}"; do
  EXPECT_OUTPUT=""
  case "$c" in
    ctrl_c) run_case "$c" "./build.sh run" ctrl_c ;;
    pipe_tail_ctrl_c) run_case "$c" "./build.sh run | tail -n 20" ctrl_c ;;
    pipe_tee_ctrl_c) run_case "$c" "./build.sh run | tee $WORK/tee.log" ctrl_c ;;
    sigterm) run_case "$c" "./build.sh run" sigterm_script ;;
    sighup) run_case "$c" "./build.sh run" sighup ;;
    pipe_sighup) run_case "$c" "./build.sh run | tee $WORK/tee2.log" sighup ;;
    service_dies)
      EXPECT_OUTPUT="payment_service exited"
      run_case "$c" "./build.sh run" service_dies ;;
    envoy_dies)
      EXPECT_OUTPUT="envoy exited"
      run_case "$c" "./build.sh run" envoy_dies ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done

echo
[ "$failed" -gt 0 ] && echo "run_cleanup failures: ${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
