#!/usr/bin/env bash
# WebSocket against Server-Sent Events (and long-poll where it makes sense): the same
# fan-out scenarios and the same idle hold over each transport, alternating the
# transports within every round (ws sse poll ws sse poll …) so drift on a shared
# machine hits them alike. A fresh node per run, one shard pinned to CPU 0, the load
# generator to CPU 1, `--server-pid` for the node's CPU and RSS.
#
#   cargo build --release -p relay -p loadtest
#   loadtest/compare-transports.sh [OUTDIR]     # RELAY=… LOADTEST=… ROUNDS=3 ONLY="idle-10k"
#
# Every run is bounded (10 s of publishing, or a 20 s hold), loopback only. Writes one
# JSON and one text report per run and OUTDIR/summary.txt (every run, one line each).
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY=${RELAY:-target/release/relay}
LT=${LOADTEST:-target/release/loadtest}
OUT=${1:-target/compare-transports/$(date -u +%Y%m%dT%H%M%SZ)}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
export JWT_SIGNING_SECRET=${JWT_SIGNING_SECRET:-$(head -c 32 /dev/urandom | base64)}
export RELAY_API_KEY=${RELAY_API_KEY:-bench-key}
export RELAY_CONNECT_RATE=0 RELAY_PUBLISH_RATE=0 LOG_LEVEL=warn
S=loadtest/scenarios

# name | transports | loadtest arguments
SCENARIOS=(
  "fanout-1x1000-100|ws sse poll|$S/fanout.toml --set sessions=1 --set sockets_per_session=1000 --set rate=100"
  "fanout-1x1000-300|ws sse|$S/fanout.toml --set sessions=1 --set sockets_per_session=1000 --set rate=300"
  "fanout-100x10-1k|ws sse poll|$S/fanout.toml"
  "fanout-100x10-5k|ws sse poll|$S/fanout.toml --set rate=5000 --set publishers=32"
  "fanout-100x10-10k|ws sse|$S/fanout.toml --set rate=10000 --set publishers=32"
  "idle-10k|ws sse poll|$S/idle-hold.toml"
)
ONLY=${ONLY:-}

{
  echo "commit $(git rev-parse --short HEAD)  date $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(nproc) CPUs"
  echo "relay $RELAY  loadtest $LT  rounds $ROUNDS"
} | tee "$OUT/commands.txt"

run_one() { # name transport round args...
  local name=$1 transport=$2 round=$3
  shift 3
  local tag="$name.$transport.$round"
  taskset -c 0 "$RELAY" serve --shards 1 --host 127.0.0.1 --port 0 \
    >"$OUT/$tag.node.out" 2>"$OUT/$tag.node.log" &
  local pid=$! port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^relay listening on .*:\([0-9]*\)$/\1/p' "$OUT/$tag.node.out" 2>/dev/null | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    echo "node did not start; see $OUT/$tag.node.log" >&2
    kill "$pid" 2>/dev/null || true
    exit 2
  fi
  echo "== $tag: load $(uptime | sed 's/.*load average: //')" | tee -a "$OUT/commands.txt"
  echo "taskset -c 0 relay serve --shards 1; loadtest run --cpus 1 --server-pid PID $* --set transport=$transport" >>"$OUT/commands.txt"
  timeout 300 "$LT" run --quiet --cpus 1 --url "http://127.0.0.1:$port" --server-pid "$pid" \
    --json "$OUT/$tag.json" "$@" --set "transport=$transport" >"$OUT/$tag.txt" || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  for entry in "${SCENARIOS[@]}"; do
    name=${entry%%|*}
    rest=${entry#*|}
    transports=${rest%%|*}
    [ -z "$ONLY" ] || [[ " $ONLY " == *" $name "* ]] || continue
    read -r -a args <<<"${rest#*|}"
    for t in $transports; do
      run_one "$name" "$t" "$round" "${args[@]}"
    done
  done
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, json, os, sys
out = sys.argv[1]
print(f"{'run':<32} {'deliveries/s':>13} {'events/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'p99.9 ms':>9}"
      f" {'node CPU':>8} {'load CPU':>8} {'RSS/sub':>8} {'lost':>5}  errors")
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    r = json.load(open(f))
    lat = r.get("latency_ms", {}) if r.get("deliveries") else r.get("handshake_ms", {})
    rss = r.get("server_rss") or {}
    cpu = r.get("server_cpu_percent")
    errors = ", ".join(f"{k}×{v}" for k, v in (r.get("errors") or {}).items()) or "0"
    rss_s = f"{rss['per_conn_bytes']:.0f} B" if rss else "-"
    cpu_s = "-" if cpu is None else f"{cpu:.0f}%"
    print(f"{os.path.basename(f)[:-5]:<32} {r.get('deliveries_per_sec', 0):>13,.0f} {r.get('events_per_sec', 0):>9,.0f}"
          f" {lat.get('p50', 0):>9.3f} {lat.get('p99', 0):>9.3f} {lat.get('p99_9', 0):>9.3f}"
          f" {cpu_s:>8} {r.get('load_cpu_percent', 0):>7.0f}% {rss_s:>8} {r.get('lost', 0):>5}  {errors}")
PY
