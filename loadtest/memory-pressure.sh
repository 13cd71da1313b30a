#!/usr/bin/env bash
# Fault 4 of docs/reliability.md: a node under a memory limit near its working set.
# Starts one node (no Redis, 1 shard) inside a memory cgroup of its own with a limit of
# LIMIT_MIB, sprays 1,000,000 events to 1,000,000 sessions nobody holds
# (loadtest/scenarios/publish-spray.toml: every event makes a stream the node must keep
# or forget), then reports whether the node is alive, what it shed
# (relay_history_evicted_streams_total), its RSS and the cgroup's peak and OOM kills.
#
#   loadtest/memory-pressure.sh 128 67108864     # limit 128 MiB, --history-memory 64 MiB
#   loadtest/memory-pressure.sh 128 268435456    # a cap set above the limit: OOM-killed
#   loadtest/memory-pressure.sh 128 default      # no cap set: the node takes half the limit
#
# Needs root and a memory cgroup (v1 or v2) it may create a child in: the child is made
# under this shell's own memory cgroup and removed at the end. Loopback only; the spray
# stops by itself after 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MIB=${1:?limit in MiB}
CAP=${2:?--history-memory in bytes, or default}
CAP_ARGS=()
[ "$CAP" = default ] || CAP_ARGS=(--history-memory "$CAP")
unset RELAY_HISTORY_MEMORY
TARGET=${CARGO_TARGET_DIR:-target}
export JWT_SIGNING_SECRET=${JWT_SIGNING_SECRET:-mem-secret-0123456789abcdef0123456789}
export RELAY_API_KEY=${RELAY_API_KEY:-mem-key-0123456789abcdef}
nice -n 5 cargo build --release --locked -p relay -p loadtest >&2

if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CG=/sys/fs/cgroup$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)/relay-mem-$$
  mkdir "$CG"
  echo $(( LIMIT_MIB * 1024 * 1024 )) >"$CG/memory.max"
  echo 0 >"$CG/memory.swap.max" 2>/dev/null || true
  peak() { cat "$CG/memory.peak" 2>/dev/null || echo "?"; }
  ooms() { awk '$1=="oom_kill"{print $2}' "$CG/memory.events"; }
else
  CG=/sys/fs/cgroup/memory$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)/relay-mem-$$
  mkdir "$CG"
  echo $(( LIMIT_MIB * 1024 * 1024 )) >"$CG/memory.limit_in_bytes"
  echo $(( LIMIT_MIB * 1024 * 1024 )) >"$CG/memory.memsw.limit_in_bytes" 2>/dev/null || true
  peak() { cat "$CG/memory.max_usage_in_bytes"; }
  ooms() { awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control"; }
fi
NODE=
cleanup() {
  [ -n "$NODE" ] && kill "$NODE" 2>/dev/null || true
  wait 2>/dev/null || true
  rmdir "$CG" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp)
# The node joins the cgroup before it execs, so every byte it allocates is counted there.
bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$CG" \
  "$TARGET/release/relay" serve --host 127.0.0.1 --port "$PORT" --shards 1 \
  --publish-rate 0 "${CAP_ARGS[@]}" >"$LOG" 2>&1 &
NODE=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/readyz" && break
  sleep 0.1
done
"$TARGET/release/loadtest" run loadtest/scenarios/publish-spray.toml --quiet \
  --url "http://127.0.0.1:$PORT" --set max_errors=1000000 >"$LOG.load" 2>&1 || true
sleep 1
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1==m{s+=$2} END{print s+0}'; }
echo "limit ${LIMIT_MIB} MiB, --history-memory $CAP"
if kill -0 "$NODE" 2>/dev/null; then
  echo "node: alive, readyz $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")"
  echo "RSS: $(awk '/VmRSS/{print $2, $3}' "/proc/$NODE/status")"
  echo "history bytes: $(metric relay_history_bytes), streams evicted early: $(metric relay_history_evicted_streams_total)"
else
  st=0; wait "$NODE" || st=$?
  echo "node: DEAD (exit status $st; 137 is SIGKILL, the OOM killer)"
fi
echo "cgroup peak: $(( $(peak) / 1024 / 1024 )) MiB, OOM kills: $(ooms)"
grep -E "accepted|errors" "$LOG.load" | head -3
grep -E "history cap|HISTORY_MEMORY" "$LOG" | head -2 || true
rm -f "$LOG" "$LOG.load"
