#!/usr/bin/env bash
# `./build.sh run` stops everything it started, however it ends.
#
# Each case runs the real `./build.sh run` (after `./build.sh test` has built
# everything, so its builds are no-ops) in a session of its own (setsid, as a
# terminal would): "everything it started" is exactly that session's
# processes. A case waits until Envoy is ready, ends the run one way, and
# passes when the session is empty within 10 s. Leftovers are killed by PID
# and the case fails.
#
# As root (CI) each run also gets a network namespace of its own, so the
# demo's fixed ports (9901, 10000, 10001, 18081-18088) never meet another
# test's or a developer's stack. Not root (GitHub's runners, a dedicated
# machine) it runs on the machine's loopback and first checks those ports are
# free. Run by `./build.sh test`; alone: tests/shell/run_cleanup.sh [case...]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

PORTS="9901 10000 10001 18081 18082 18083 18084 18085 18086 18087 18088"
if [ "$(id -u)" = 0 ] && [ "${RUN_CLEANUP_NETNS:-1}" = 1 ]; then
  NETNS=1
else
  NETNS=0
  for port in $PORTS; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "run_cleanup: port $port is in use and this is not root (no private network namespace): stop what uses it, or run as root" >&2
      exit 1
    fi
  done
fi

WORK="$(mktemp -d /tmp/edge-guard-run-cleanup.XXXXXX)"
passed=0
failed=0
failures=()
STARTED=""   # the setsid'd session leader of the current case

# The PIDs of every process in session $1.
pids_in_session() {
  ps -eo pid=,sid= | awk -v s="$1" '$2 == s { print $1 }'
}

cleanup_all() {
  # Only what this script started: the current case's session, by PID.
  if [ -n "$STARTED" ]; then
    for pid in $(pids_in_session "$STARTED"); do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  rm -rf "$WORK"
}
trap cleanup_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The PID of the first process in session $1 whose command line matches $2.
find_in_session() {
  local sid="$1" pattern="$2" pid
  for pid in $(pids_in_session "$sid"); do
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
#   ENDING   a function that ends the run; $SID, $PGID, $OUT are set for it
run_case() {
  local name="$1" command="$2" ending="$3"
  OUT="$WORK/$name.out"
  export EDGE_GUARD_RUN_DIR="$WORK/$name.run"
  if [ "$NETNS" = 1 ]; then
    setsid unshare --net --fork -- bash -c "ip link set lo up && $command" >"$OUT" 2>&1 </dev/null &
  else
    setsid bash -c "$command" >"$OUT" 2>&1 </dev/null &
  fi
  STARTED=$!
  PGID=$STARTED
  SID=$STARTED
  # Ready: Envoy's admin answers (inside the namespace as root; up to 120 s:
  # the run may still be compiling).
  local ready=0 i envoy
  for i in $(seq 1 1200); do
    envoy="$(find_in_session "$SID" '^[^ ]*/bin/envoy ' || true)"
    if [ -n "$envoy" ]; then
      if [ "$NETNS" = 1 ]; then
        nsenter --net="/proc/$envoy/ns/net" curl -fsS -m 1 http://127.0.0.1:9901/ready >/dev/null 2>&1 && ready=1
      else
        curl -fsS -m 1 http://127.0.0.1:9901/ready >/dev/null 2>&1 && ready=1
      fi
      # A case that kills one process of the stack waits for the run's own
      # "is up" banner: until then the run is still configuring the services
      # (a service killed then fails that step instead of being reported).
      if [ "$ready" = 1 ] && [ -n "${EXPECT_OUTPUT:-}" ] && ! grep -qF "demo stack is up" "$OUT"; then
        ready=0
      fi
      [ "$ready" = 1 ] && break
    fi
    kill -0 "$STARTED" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$ready" != 1 ]; then
    for pid in $(pids_in_session "$SID"); do kill -KILL "$pid" 2>/dev/null || true; done
    record "$name" "the stack never became ready: $(tail -n 20 "$OUT")"
    return
  fi
  local procs
  procs="$(pids_in_session "$SID" | wc -l)"
  "$ending"
  # Everything in the session must be gone within 10 s.
  local left=""
  for i in $(seq 1 100); do
    left="$(pids_in_session "$SID")"
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
sigterm_script() { kill -TERM "$(find_in_session "$SID" '^bash \./build\.sh run')"; }
# The terminal closes: SIGHUP to the process group.
sighup() { kill -HUP -- "-$PGID"; }
# One demo service dies (crash, OOM kill).
service_dies() { kill -KILL "$(find_in_session "$SID" '^[^ ]*/demo-upstream .*--name payment_service')"; }
# Envoy dies.
envoy_dies() { kill -KILL "$(find_in_session "$SID" '^[^ ]*/bin/envoy ')"; }

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
