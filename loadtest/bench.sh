#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md.
#
# Every single-node scenario runs against a *fresh* relay node (so "RSS at rest" and
# allocator state are not inherited from the previous run) with 1 shard pinned to CPU 0;
# the load generator is pinned to CPU 1. Then an indicative 1-vs-2-shard comparison.
# Each run writes NAME.json, NAME.hgrm, NAME.txt and the node's log into OUTDIR, the
# exact commands into OUTDIR/commands.txt, and a Markdown summary into OUTDIR/summary.md.
#
#   cargo build --release -p relay -p loadtest
#   loadtest/bench.sh [OUTDIR]          # RELAY=path LOADTEST=path to use other binaries
#   ONLY="fanout-100x10-10k churn" loadtest/bench.sh   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY=${RELAY:-target/release/relay}
LT=${LOADTEST:-target/release/loadtest}
OUT=${1:-target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
# base64 of 32 random bytes: 44 characters, above the contract's 32-byte minimum.
export JWT_SIGNING_SECRET=${JWT_SIGNING_SECRET:-$(head -c 32 /dev/urandom | base64)}
export RELAY_API_KEY=${RELAY_API_KEY:-bench-key}
# The node's abuse limits (connects per address, events per API key) are not what these
# runs measure; switch them off. LOG_LEVEL=warn keeps per-socket logging off the hot path.
export RELAY_CONNECT_RATE=${RELAY_CONNECT_RATE:-0} RELAY_PUBLISH_RATE=${RELAY_PUBLISH_RATE:-0}
export LOG_LEVEL=${LOG_LEVEL:-warn}
S=loadtest/scenarios

{
  echo "commit $(git rev-parse --short HEAD)  date $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(nproc) CPUs"
  echo "relay $RELAY ($(stat -c %y "$RELAY" 2>/dev/null || echo '?'))"
} | tee "$OUT/commands.txt"

node_pid=
port=
start_node() { # shards cpus name
  taskset -c "$2" "$RELAY" serve --shards "$1" --host 127.0.0.1 --port 0 \
    >"$OUT/$3.node.out" 2>"$OUT/$3.node.log" &
  node_pid=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$OUT/$3.node.out" 2>/dev/null && break
    sleep 0.1
  done
  port=$(sed -n 's/^relay listening on .*:\([0-9]*\)$/\1/p' "$OUT/$3.node.out" | head -1)
  if [ -z "$port" ]; then
    echo "node did not start; see $OUT/$3.node.log" >&2
    kill "$node_pid" 2>/dev/null || true
    exit 2
  fi
}
stop_node() {
  kill -TERM "$node_pid" 2>/dev/null || true
  wait "$node_pid" 2>/dev/null || true
}
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
run() { # name shards node_cpus load_cpus loadtest-args...
  local name=$1 shards=$2 ncpu=$3 lcpu=$4
  shift 4
  wanted "$name" || return 0
  start_node "$shards" "$ncpu" "$name"
  local pin=()
  [ "$lcpu" = "-" ] || pin=(--cpus "$lcpu")
  echo "== $name: load $(uptime | sed 's/.*load average: //')" | tee -a "$OUT/commands.txt"
  echo "taskset -c $ncpu relay serve --shards $shards; loadtest run ${pin[*]} $*" >>"$OUT/commands.txt"
  "$LT" run --quiet "${pin[@]}" --url "http://127.0.0.1:$port" --server-pid "$node_pid" \
    --json "$OUT/$name.json" --hgrm "$OUT/$name.hgrm" "$@" | tee "$OUT/$name.txt" || true
  stop_node
}

run idle-hold 1 0 1 $S/idle-hold.toml
run connect-storm 1 0 1 $S/connect-storm.toml
# Goal: 1 session × 1,000 sockets, 100-byte events, ≥ 400k deliveries/s on one shard.
run fanout-1x1000-400k 1 0 1 $S/fanout.toml --set sessions=1 --set sockets_per_session=1000 --set rate=400
run fanout-1x1000-600k 1 0 1 $S/fanout.toml --set sessions=1 --set sockets_per_session=1000 --set rate=600
run fanout-1x1000-batch10 1 0 1 $S/fanout.toml --set sessions=1 --set sockets_per_session=1000 --set rate=3000 --set batch=10
# Goal: 100 sessions × 10 sockets, one event per request, ≥ 100k deliveries/s.
run fanout-100x10-100k 1 0 1 $S/fanout.toml --set rate=10000 --set publishers=32
run fanout-100x10-200k 1 0 1 $S/fanout.toml --set rate=20000 --set publishers=32
# Goal: p99 ≤ 1 ms, p99.9 ≤ 3 ms at 10k deliveries/s over 100 × 10.
run fanout-100x10-10k 1 0 1 $S/fanout.toml --duration 30s
run publish-throughput 1 0 1 $S/publish-throughput.toml
run publish-throughput-400k 1 0 1 $S/publish-throughput.toml --set rate=400000 --set publishers=16
run slow-consumers 1 0 1 $S/slow-consumers.toml
run churn 1 0 1 $S/churn.toml
# Scaling, indicative only on a 2-CPU machine: the load generator shares the node's CPUs.
# Offered load is above one shard's ceiling; compare deliveries/s.
run scale-1-shard 1 0 - $S/fanout.toml --set rate=40000 --set batch=10 --set publishers=16 --procs 2
run scale-2-shards 2 0,1 - $S/fanout.toml --set rate=40000 --set batch=10 --set publishers=16 --procs 2

# cross-node: a private redis-server and three nodes on it (unpinned: 2 CPUs for all of
# them); publish on node a, sockets on b and c. Skipped without redis-server.
if wanted cross-node && command -v redis-server >/dev/null; then
  rport=${REDIS_BENCH_PORT:-6421}
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  redis_pid=$!
  sleep 0.5
  pids=()
  ports=()
  for n in a b c; do
    REDIS_URL="redis://127.0.0.1:$rport" "$RELAY" serve --shards 1 --host 127.0.0.1 --port 0 \
      >"$OUT/cross-node-$n.node.out" 2>"$OUT/cross-node-$n.node.log" &
    pids+=($!)
  done
  for n in a b c; do
    for _ in $(seq 100); do
      grep -q "listening on" "$OUT/cross-node-$n.node.out" 2>/dev/null && break
      sleep 0.1
    done
    ports+=("$(sed -n 's/^relay listening on .*:\([0-9]*\)$/\1/p' "$OUT/cross-node-$n.node.out" | head -1)")
  done
  echo "== cross-node: load $(uptime | sed 's/.*load average: //')" | tee -a "$OUT/commands.txt"
  echo "3 nodes on redis :$rport; loadtest run $S/cross-node.toml --url :${ports[0]} --nodes :${ports[1]},:${ports[2]}" >>"$OUT/commands.txt"
  "$LT" run --quiet --url "http://127.0.0.1:${ports[0]}" \
    --nodes "http://127.0.0.1:${ports[1]},http://127.0.0.1:${ports[2]}" \
    --json "$OUT/cross-node.json" --hgrm "$OUT/cross-node.hgrm" $S/cross-node.toml | tee "$OUT/cross-node.txt" || true
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  kill -TERM "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
fi

"$LT" summary "$OUT"/*.json | tee "$OUT/summary.md"
