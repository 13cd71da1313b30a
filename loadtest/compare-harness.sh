#!/usr/bin/env bash
# The relay against the Node `ws` harness (loadtest/harness/node-ws), driven the same way:
# the relay through its contract, the harness with `--target-kind harness`
# (GET /ws?session=S, POST /publish/S). One server at a time, pinned to CPU 0, the load
# generator pinned to CPU 1, alternating relay / harness for ROUNDS rounds (best of them
# in the summary), each with --server-pid for its CPU.
#
#   [RELAY=target/release/relay] [LOADTEST=target/release/loadtest] [ROUNDS=3] \
#     [ONLY="1x1000-50 …"] [SERVERS="relay node-ws"] loadtest/compare-harness.sh [OUTDIR]
#
# Any other server of the harness shape joins with HARNESS_CMD (a command that takes
# `--port N` and prints `listening on HOST:PORT` on stdout) and HARNESS_NAME (its name
# in the tables, default `harness`), e.g. a uWebSockets harness you built yourself:
#
#   HARNESS_NAME=uws HARNESS_CMD=/path/to/your/harness SERVERS="relay uws" \
#     loadtest/compare-harness.sh
#
# node-ws needs Node.js and `npm ci` in loadtest/harness/node-ws (the `ws` package from
# the npm registry). Each run is 10 s of publishing (bounded), loopback only. Writes one JSON and
# one table per run, the load average before each, and OUTDIR/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY=${RELAY:-target/release/relay}
LT=${LOADTEST:-target/release/loadtest}
OUT=${1:-target/compare-harness/$(date -u +%Y%m%dT%H%M%SZ)}
ROUNDS=${ROUNDS:-3}
NODE_DIR=loadtest/harness/node-ws
HARNESS_NAME=${HARNESS_NAME:-harness}
HARNESS_CMD=${HARNESS_CMD:-}
if [ -n "$HARNESS_CMD" ]; then
  SERVERS=${SERVERS:-relay node-ws $HARNESS_NAME}
else
  SERVERS=${SERVERS:-relay node-ws}
fi
if [[ " $SERVERS " == *" node-ws "* ]] && [ ! -e "$NODE_DIR/node_modules/ws/package.json" ]; then
  echo "run \`npm ci\` in $NODE_DIR first (or leave node-ws out of SERVERS)" >&2
  exit 2
fi
mkdir -p "$OUT"
export JWT_SIGNING_SECRET=${JWT_SIGNING_SECRET:-$(head -c 32 /dev/urandom | base64)}
export RELAY_API_KEY=${RELAY_API_KEY:-bench-key}
export RELAY_CONNECT_RATE=0 RELAY_PUBLISH_RATE=0 LOG_LEVEL=warn
S=loadtest/scenarios/fanout.toml

# name | loadtest arguments (fanout.toml: one 100-byte event per request, 16 publishers).
# 1x1000-4pub offers far more than either server carries to 4 keep-alive publishers, so
# each waits for its answer before the next: the closed-loop figure is deliveries/s.
SCENARIOS=(
  "1x1000-50|--set sessions=1 --set sockets_per_session=1000 --set rate=50"
  "1x1000-300|--set sessions=1 --set sockets_per_session=1000 --set rate=300"
  "100x10-1k|--set rate=1000"
  "100x10-3k|--set rate=3000"
  "1x1000-600|--set sessions=1 --set sockets_per_session=1000 --set rate=600"
  "100x10-6k|--set rate=6000"
  "100x10-9k|--set rate=9000"
  "1x1000-4pub|--set sessions=1 --set sockets_per_session=1000 --set rate=5000 --set publishers=4"
)
ONLY=${ONLY:-}

# Starts a server on CPU 0 on a free port; sets PID and PORT.
start() { # server name
  local server=$1 name=$2 log="$OUT/$2.$1.$3.server"
  case $server in
  relay)
    taskset -c 0 "$RELAY" serve --shards 1 --host 127.0.0.1 --port 0 >"$log.out" 2>"$log.err" &
    PID=$!
    local pattern='s/^relay listening on .*:\([0-9]*\)$/\1/p'
    ;;
  node-ws)
    (cd "$NODE_DIR" && exec taskset -c 0 node server.mjs --port 0) >"$log.out" 2>"$log.err" &
    PID=$!
    local pattern='s/^listening on .*:\([0-9]*\)$/\1/p'
    ;;
  *)
    [ "$server" = "$HARNESS_NAME" ] && [ -n "$HARNESS_CMD" ] || {
      echo "unknown server $server: set HARNESS_CMD and HARNESS_NAME=$server" >&2
      exit 2
    }
    # shellcheck disable=SC2086 # HARNESS_CMD is a command line
    taskset -c 0 $HARNESS_CMD --port 0 >"$log.out" 2>"$log.err" &
    PID=$!
    local pattern='s/^listening on .*:\([0-9]*\)$/\1/p'
    ;;
  esac
  PORT=
  for _ in $(seq 100); do
    PORT=$(sed -n "$pattern" "$log.out" 2>/dev/null | head -1 || true)
    [ -n "$PORT" ] && return
    sleep 0.1
  done
  echo "$server did not start (see $log.err)" >&2
  exit 1
}

run_one() { # server round name args...
  local server=$1 round=$2 name=$3
  shift 3
  local kind=()
  [ "$server" = relay ] || kind=(--target-kind harness)
  start "$server" "$name" "$round"
  cut -d' ' -f1-3 /proc/loadavg >"$OUT/$name.$server.$round.loadavg"
  "$LT" run --quiet --cpus 1 --url "http://127.0.0.1:$PORT" --server-pid "$PID" "${kind[@]}" \
    --json "$OUT/$name.$server.$round.json" "$S" "$@" >"$OUT/$name.$server.$round.txt" || true
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  for entry in "${SCENARIOS[@]}"; do
    name=${entry%%|*}
    [ -z "$ONLY" ] || [[ " $ONLY " == *" $name "* ]] || continue
    read -r -a args <<<"${entry#*|}"
    for server in $SERVERS; do
      run_one "$server" "$round" "$name" "${args[@]}"
    done
  done
done

python3 - "$OUT" >"$OUT/summary.md" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
runs = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    name, server, rnd = os.path.basename(f)[:-5].rsplit(".", 2)
    r = json.load(open(f))
    load = open(f[:-5] + ".loadavg").read().split()[0]
    runs.setdefault((name, server), []).append((r, load))
print("| scenario | server | deliveries/s | p50 ms | p99 ms | p99.9 ms | server CPU % (all rounds) | CPU µs / request | lost | load avg |")
print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
for (name, server), rs in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1] != "relay")):
    best, _ = min(rs, key=lambda x: x[0]["latency_ms"]["p99"])
    cpus = [x[0].get("server_cpu_percent") or 0.0 for x in rs]
    cpu = best.get("server_cpu_percent") or 0.0
    rate = best["events_per_sec"] or 1.0
    lat = best["latency_ms"]
    print(f"| {name} | {server} | {best['deliveries_per_sec']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
          f"{lat['p99_9']:.2f} | {cpu:.1f} ({', '.join(f'{c:.1f}' for c in cpus)}) | "
          f"{cpu / 100 / rate * 1e6:.0f} | {sum(x[0]['lost'] for x in rs)} | "
          f"{', '.join(x[1] for x in rs)} |")
PY
cat "$OUT/summary.md"
