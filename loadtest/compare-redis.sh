#!/usr/bin/env bash
# One node without Redis, one node through Redis, three nodes through Redis, at the
# same offered load (100 sessions × 10 sockets, 1,000 events/s = 10k deliveries/s),
# then redis-benchmark's PUBLISH rate on the same private redis-server.
# Run from the repository root after `cargo build --release -p relay -p loadtest`;
# needs redis-server, redis-cli and redis-benchmark (Debian's redis-server/redis-tools).
# Loopback only; every run is bounded (10 s each).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
R=${RELAY:-$ROOT/target/release/relay}; L=${LOADTEST:-$ROOT/target/release/loadtest}; S=$ROOT/loadtest/scenarios
WORK=$(mktemp -d); cd "$WORK" || exit 1
export JWT_SIGNING_SECRET=bench-secret-0123456789abcdef0123456789 RELAY_API_KEY=bench-key-0123456789
rport=6391
redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no > redis.log 2>&1 &
rpid=$!
sleep 0.5
start_node() { # $1 name, $2 redis(yes/no)
  if [ "$2" = yes ]; then REDIS_URL=redis://127.0.0.1:$rport $R serve --shards 1 --host 127.0.0.1 --port 0 --connect-rate 0 > $1.out 2> $1.log &
  else $R serve --shards 1 --host 127.0.0.1 --port 0 --connect-rate 0 > $1.out 2> $1.log & fi
  for i in $(seq 50); do grep -q listening $1.out 2>/dev/null && break; sleep 0.1; done
  sed -n 's/^relay listening on .*:\([0-9]*\)$/\1/p' $1.out | head -1
}
stop_all() { pkill -f "$R serve --shards 1 --host 127.0.0.1 --port 0 --connect-rate 0"; sleep 0.5; }
echo "== A: one node, no Redis"; p=$(start_node a no)
$L run $S/fanout.toml --url http://127.0.0.1:$p --set duration=10s --set rate=1000 --quiet --json A.json | grep -E "deliveries  |latency ms|result"
stop_all
echo "== B: one node through Redis"; p=$(start_node b yes); sleep 0.5
$L run $S/fanout.toml --url http://127.0.0.1:$p --set duration=10s --set rate=1000 --quiet --json B.json | grep -E "deliveries  |latency ms|result"
stop_all
echo "== C: three nodes through Redis (publish on a, sockets on b and c)"; pa=$(start_node c1 yes); pb=$(start_node c2 yes); pc=$(start_node c3 yes); sleep 0.5
$L run $S/cross-node.toml --url http://127.0.0.1:$pa --nodes http://127.0.0.1:$pb,http://127.0.0.1:$pc --set duration=10s --quiet --json C.json | grep -E "deliveries  |latency ms|result"
stop_all
echo "== D: redis-benchmark PUBLISH, 100-byte payload, no subscriber"
redis-benchmark -p $rport -n 200000 -c 10 -d 100 -q PUBLISH relay:v1:s:bench __data__ 2>&1 | tail -1
echo "== E: redis-benchmark PUBLISH with 2 subscribers on the channel"
redis-cli -p $rport SUBSCRIBE relay:v1:s:bench > /dev/null & s1=$!
redis-cli -p $rport SUBSCRIBE relay:v1:s:bench > /dev/null & s2=$!
sleep 0.3
redis-benchmark -p $rport -n 200000 -c 10 -d 100 -q PUBLISH relay:v1:s:bench __data__ 2>&1 | tail -1
kill $s1 $s2; kill $rpid
