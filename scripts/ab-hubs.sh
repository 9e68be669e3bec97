#!/usr/bin/env bash
# Alternated runs of two hub builds against one load generator, each hub its
# own process on a fresh data directory with the rate limits off.
#
#   BASE=/path/to/old/united-hub NEW=target/release/united-hub \
#     scripts/ab-hubs.sh latency|throughput|tail20k|sessions RUNS
#
# latency:    load --payload random --pairs 1000 --rate 5000 --duration 60 --warmup 2
# throughput: load --payload random --pairs 1000 --rate 0 --window 8 --duration 12 --warmup 2
# tail20k:    load --payload random --pairs 1000 --rate 20000 --duration 60 --warmup 2
# sessions:   load --payload random --pairs 1000 --idle 10000 --rate 5000 --duration 60 --warmup 2
# The generator is NEW's binary (GEN= overrides). Prints each run's summary,
# then each side's medians; JSON reports go to OUT (default target/ab).
set -euo pipefail
mode=${1:?usage: BASE=… NEW=… $0 latency|throughput|tail20k|sessions RUNS}
runs=${2:-3}
: "${BASE:?BASE=path of the baseline united-hub}"
NEW=${NEW:-target/release/united-hub}
GEN=${GEN:-$NEW}
case $mode in
  latency) args="--payload random --pairs 1000 --rate 5000 --duration 60 --warmup 2" ;;
  throughput) args="--payload random --pairs 1000 --rate 0 --window 8 --duration 12 --warmup 2" ;;
  tail20k) args="--payload random --pairs 1000 --rate 20000 --duration 60 --warmup 2" ;;
  sessions) args="--payload random --pairs 1000 --idle 10000 --rate 5000 --duration 60 --warmup 2" ;;
  *) echo "mode is latency, throughput, tail20k or sessions" >&2; exit 2 ;;
esac
OUT=${OUT:-target/ab}
mkdir -p "$OUT"
command -v jq >/dev/null || { echo "ab-hubs.sh needs jq" >&2; exit 2; }
for i in $(seq 1 "$runs"); do
  for name in base new; do
    if [ "$name" = base ]; then hub=$BASE; else hub=$NEW; fi
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$hub" serve --bind "127.0.0.1:$port" --data-dir "$dir" \
      --auth-rate 0 --send-rate 0 --read-rate 0 --conversation-rate 0 --key-rate 0 \
      --max-sessions-per-user 0 --max-connections-per-ip 0 >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      curl -sf "127.0.0.1:$port/healthz" >/dev/null && break
      sleep 0.1
    done
    echo "== $name, run $i ($mode)"
    # shellcheck disable=SC2086
    "$GEN" load --url "http://127.0.0.1:$port" --hub-pid "$pid" $args \
      --json "$OUT/$mode-$name-$i.json" 2>/dev/null \
      | grep -E "throughput|latency|send lag|hub memory|verdict" || true
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for field in accepted_per_second latency.p50_ms latency.p99_ms latency.p999_ms latency.max_ms rss.per_session_kib cpu.hub_percent cpu.generator_percent; do
  for name in base new; do
    runs_of=$(for i in $(seq 1 "$runs"); do jq -r ".$field // empty" "$OUT/$mode-$name-$i.json" 2>/dev/null; done)
    [ -n "$runs_of" ] || continue
    printf '%-4s %-22s median %-10s runs %s\n' "$name" "$field" "$(echo "$runs_of" | median)" "$(echo "$runs_of" | tr '\n' ' ')"
  done
done
