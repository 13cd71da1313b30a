#!/usr/bin/env bash
# The soak of docs/reliability.md: two relay nodes on one Redis, a resume population
# with churn, a steady publish rate with bursts, for an hour; every 10 s each node's
# RSS, open fds, history memory, deliveries/s, p99 and the load's silent losses go into
# OUT/samples.csv; at the end OUT/soak.png and OUT/summary.txt (slopes after warm-up).
#
#   loadtest/soak.sh                          # the full hour: 15,000 sockets, 1,000 events/s
#   SOAK_DURATION=600 SOAK_SOCKETS=3000 SOAK_RATE=300 SOAK_WARMUP=120 loadtest/soak.sh
#
# Knobs (environment): SOAK_DURATION s (3600), SOAK_SOCKETS (15000), SOAK_SESSIONS (100),
# SOAK_RATE events/s (1000), SOAK_CHURN share of sockets dropped a minute (0.05),
# SOAK_RESUME_SHARE share of those back with since= (0.5),
# SOAK_BURST_EVERY s (300) and SOAK_BURST_SECS (5): a burst of 10 x SOAK_RATE from a
# second publisher; SOAK_WARMUP s (1200) and the fit over the last SOAK_TAIL s (2400);
# OUT (soak-out/DATE); SOAK_RELAY, a relay binary to soak instead of this tree's
# build (an A/B of two builds in one sitting). Everything binds 127.0.0.1 and stops
# by itself (or on Ctrl-C).
#
# The churn: each second a share SOAK_CHURN/60 of the sockets drops (half with a reset,
# half with a close frame) and comes back after 200 ms, SOAK_RESUME_SHARE (0.5) of them
# resuming with since= and the others fresh (no since: a client that lost its place,
# owed nothing; the checker starts it over at its welcome). The bursts publish to
# sessions of their own that no socket holds: they load the nodes' publish path, Redis
# and history memory, not the sockets.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${SOAK_DURATION:-3600}
SOCKETS=${SOAK_SOCKETS:-15000}
SESSIONS=${SOAK_SESSIONS:-100}
RATE=${SOAK_RATE:-1000}
CHURN=${SOAK_CHURN:-0.05}
RESUME_SHARE=${SOAK_RESUME_SHARE:-0.5}
BURST_EVERY=${SOAK_BURST_EVERY:-300}
BURST_SECS=${SOAK_BURST_SECS:-5}
WARMUP=${SOAK_WARMUP:-1200}
TAIL=${SOAK_TAIL:-2400}
OUT=${OUT:-soak-out/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-target}
export JWT_SIGNING_SECRET=${JWT_SIGNING_SECRET:-soak-secret-0123456789abcdef0123456789}
export RELAY_API_KEY=${RELAY_API_KEY:-soak-key-0123456789abcdef}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "soak: ${DURATION}s, $SOCKETS sockets over $SESSIONS sessions, $RATE events/s -> $OUT"

nice -n 5 cargo build --release --locked -p relay -p loadtest >&2
RELAY=${SOAK_RELAY:-$TARGET/release/relay}
LOADTEST=$TARGET/release/loadtest

# matplotlib in a venv of our own (PyPI), made once.
VENV=${SOAK_VENV:-$TARGET/soak-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet matplotlib
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ulimit -n 20000

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
  >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$RPORT" PING >/dev/null 2>&1 && break; sleep 0.1; done

start_node() { # name port
  REDIS_URL=redis://127.0.0.1:$RPORT LOG_LEVEL=warn \
    "$RELAY" serve --host 127.0.0.1 --port "$2" --shards 1 --connect-rate 0 --publish-rate 0 \
    --history redis >"$OUT/$1.log" 2>&1 &
  PIDS+=($!)
  eval "$1_PID=$!"
}
P1=$(free_port); start_node node1 "$P1"
P2=$(free_port); start_node node2 "$P2"
for p in "$P1" "$P2"; do
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/readyz")" = 200 ] && break
    sleep 0.1
  done
done

PER_SESSION=$(( SOCKETS / SESSIONS ))
DROP=$(python3 -c "print($CHURN / 60)")
"$LOADTEST" run loadtest/scenarios/resume.toml \
  --url "http://127.0.0.1:$P1" --nodes "http://127.0.0.1:$P1,http://127.0.0.1:$P2" \
  --duration "${DURATION}s" --set sessions="$SESSIONS" --set sockets_per_session="$PER_SESSION" \
  --set rate="$RATE" --set drop_fraction="$DROP" --set resume_share="$RESUME_SHARE" --set drain=10s --set max_errors=1000000 \
  --set connect_timeout=30s --json "$OUT/report.json" \
  >"$OUT/loadtest.txt" 2>"$OUT/loadtest.log" &
LOAD=$!
PIDS+=($LOAD)

"$VENV/bin/python" loadtest/soak.py sample "$OUT" "$OUT/loadtest.log" \
  "node1=$node1_PID@127.0.0.1:$P1" "node2=$node2_PID@127.0.0.1:$P2" &
PIDS+=($!)

# Bursts: 10 x the rate for BURST_SECS, every BURST_EVERY, while the load runs.
(
  end=$(( $(date +%s) + DURATION ))
  while sleep "$BURST_EVERY"; [ "$(date +%s)" -lt "$end" ]; do
    "$LOADTEST" run loadtest/scenarios/publish-throughput.toml --quiet \
      --url "http://127.0.0.1:$P2" --duration "${BURST_SECS}s" \
      --set rate=$(( RATE * 10 )) --set sessions="$SESSIONS" --set max_errors=1000000 \
      >>"$OUT/bursts.txt" 2>&1 || true
  done
) &
PIDS+=($!)

status=0
wait "$LOAD" || status=$?
sleep 11  # one more sample after the drain
"$VENV/bin/python" loadtest/soak.py plot "$OUT" "$WARMUP" "$TAIL" "$DURATION"
grep -E "silent losses|errors|resume|verdict|PASS|FAIL" "$OUT/loadtest.txt" | tee -a "$OUT/summary.txt"
echo "soak: load exit $status; files in $OUT"
exit "$status"
