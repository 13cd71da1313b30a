#!/usr/bin/env bash
# The cost of sequencing, history and receipts: the same scenarios against a relay
# built before them and one built after, alternating A B A B so drift on a shared
# machine hits both alike. One shard pinned to CPU 0, the load generator to CPU 1.
#
#   BEFORE=path/to/old/relay AFTER=target/release/relay [LOADTEST=...] \
#     loadtest/compare-history.sh [OUTDIR]
#
# Each scenario runs 10 s (bounded), loopback only. Writes one JSON per run and a
# summary table (deliveries/s, p50/p99/p99.9 latency) to OUTDIR/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${BEFORE:?path to the relay binary before the change}
AFTER=${AFTER:-target/release/relay}
LT=${LOADTEST:-target/release/loadtest}
OUT=${1:-target/compare-history/$(date -u +%Y%m%dT%H%M%SZ)}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
export JWT_SIGNING_SECRET=${JWT_SIGNING_SECRET:-$(head -c 32 /dev/urandom | base64)}
export RELAY_API_KEY=${RELAY_API_KEY:-bench-key}
export RELAY_CONNECT_RATE=0 RELAY_PUBLISH_RATE=0 LOG_LEVEL=warn
S=loadtest/scenarios

# name | loadtest arguments
SCENARIOS=(
  "fanout-1x1000-600k|$S/fanout.toml --set sessions=1 --set sockets_per_session=1000 --set rate=600"
  "fanout-100x10-100k|$S/fanout.toml --set rate=10000 --set publishers=32"
  "fanout-100x10-10k|$S/fanout.toml"
  # The publish path at a fixed rate below its ceiling: node CPU per request.
  "fanout-100x10-50k|$S/fanout.toml --set rate=5000 --set publishers=32"
  "publish-100k|$S/publish-throughput.toml"
  # Offered above the ceiling: these measure the most one shard delivers / accepts.
  "fanout-1x1000-max|$S/fanout.toml --set sessions=1 --set sockets_per_session=1000 --set rate=4000 --set batch=10"
  "publish-max|$S/publish-throughput.toml --set rate=400000 --set publishers=16"
)
ONLY=${ONLY:-}

run_one() { # label relay name args...
  local label=$1 relay=$2 name=$3
  shift 3
  taskset -c 0 "$relay" serve --shards 1 --host 127.0.0.1 --port 0 \
    >"$OUT/$name.$label.node.out" 2>"$OUT/$name.$label.node.log" &
  local pid=$! port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^relay listening on .*:\([0-9]*\)$/\1/p' "$OUT/$name.$label.node.out" 2>/dev/null | head -1 || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  "$LT" run --quiet --cpus 1 --url "http://127.0.0.1:$port" --server-pid "$pid" \
    --json "$OUT/$name.$label.json" "$@" >"$OUT/$name.$label.txt" || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  for entry in "${SCENARIOS[@]}"; do
    name=${entry%%|*}
    [ -z "$ONLY" ] || [[ " $ONLY " == *" $name "* ]] || continue
    read -r -a args <<<"${entry#*|}"
    run_one "before$round" "$BEFORE" "$name" "${args[@]}"
    run_one "after$round" "$AFTER" "$name" "${args[@]}"
  done
done

{
  echo "before: $BEFORE"
  echo "after:  $AFTER"
  printf '%-22s %-8s %13s %11s %8s %8s %9s %11s %12s %9s %5s\n' scenario run deliveries/s events/s p50_ms p99_ms p99.9_ms 202_p99_ms node_p99_ms node_cpu lost
  for entry in "${SCENARIOS[@]}"; do
    name=${entry%%|*}
    [ -e "$OUT/$name.before1.json" ] || continue
    for f in "$OUT/$name".*.json; do
      label=$(basename "$f" .json)
      label=${label#"$name".}
      python3 - "$f" "$name" "$label" <<'PY'
import json, sys
import re
r = json.load(open(sys.argv[1]))
txt = open(sys.argv[1][:-5] + ".txt").read()
m = re.search(r"node /latency\s+p50 [\d.]+\s+p90 [\d.]+\s+p99 ([\d.]+)", txt)
node_p99 = float(m.group(1)) if m else 0.0
m = re.search(r"cpu .*node (\d+)%", txt)
node_cpu = m.group(1) + "%" if m else "?"
lat = r.get("latency_ms", {})
pub = r.get("publish_latency_ms", {})
print(f"{sys.argv[2]:<22} {sys.argv[3]:<8} {r.get('deliveries_per_sec', 0):>13,.0f} {r.get('events_per_sec', 0):>11,.0f}"
      f" {lat.get('p50', 0):>8.3f} {lat.get('p99', 0):>8.3f} {lat.get('p99_9', 0):>9.3f} {pub.get('p99', 0):>11.3f}"
      f" {node_p99:>12.3f} {node_cpu:>9} {r.get('lost', 0):>5}")
PY
    done
  done
} | tee "$OUT/summary.txt"
