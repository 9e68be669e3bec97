#!/usr/bin/env bash
# Runs the four benchmark scenarios of the first rounds
# (docs/benchmarks-history.md), each RUNS times
# (default 3), against a release build, and prints the median of each figure.
#
#   cargo build --release && scripts/bench.sh            # all four
#   scripts/bench.sh throughput latency                   # some of them
#
# Each run starts its own hub (a child process on a temporary directory), so
# runs do not share state. JSON reports are kept in target/bench/.
#
# HUB_URL runs them against a hub started elsewhere instead, for example on
# another machine so that the generator does not share the hub's cores. Start
# that hub with its per-client limits off:
#   united-hub --bind 0.0.0.0:1984 --auth-rate 0 --send-rate 0 --read-rate 0 \
#     --max-sessions-per-user 0 --max-connections-per-ip 0
#   HUB_URL=http://that-host:1984 scripts/bench.sh throughput latency
# Its database then grows from run to run, and memory per session is given
# only for a hub on this machine (found by its port).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/united-hub
RUNS=${RUNS:-3}
OUT=target/bench
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

declare -A SCENARIO=(
  [throughput]="--pairs 1000 --rate 0 --window 8 --duration 10"
  [latency]="--pairs 1000 --rate 5000 --duration 60"
  [sessions]="--pairs 1000 --idle 10000 --rate 5000 --duration 60"
  [overload]="--pairs 1000 --rate 44000 --window 64 --duration 10"
)
target=()
[ -z "${HUB_URL:-}" ] || target=(--url "$HUB_URL")
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(throughput latency sessions overload)

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for name in "${names[@]}"; do
  args=${SCENARIO[$name]:?unknown scenario $name}
  echo "== $name: united-hub load ${target[*]:+${target[*]} }$args (×$RUNS)"
  for i in $(seq 1 "$RUNS"); do
    # Hub-only figures: the generator's own crypto would take CPU from the hub.
    "$BIN" load "${target[@]}" $args --payload random --warmup 2 --quiet --json "$OUT/$name-$i.json" > "$OUT/$name-$i.txt" 2>&1 \
      || { echo "run $i FAILED"; cat "$OUT/$name-$i.txt"; exit 1; }
    jq -r '"  run '"$i"': \(.accepted_per_second|floor) accepted/s, \(.delivered_per_second|floor) pushes/s, p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, lost \(.lost), dup \(.duplicated), anomalies \(.anomalies), refused \(.refused), per-session \(.rss.per_session_kib // "n/a") KiB"' "$OUT/$name-$i.json"
  done
  for field in accepted_per_second delivered_per_second latency.p50_ms latency.p99_ms latency.p999_ms rss.per_session_kib rss.under_load; do
    value=$(for i in $(seq 1 "$RUNS"); do jq -r ".$field // empty" "$OUT/$name-$i.json"; done | median)
    printf '  median %-22s %s\n' "$field" "$value"
  done
done
