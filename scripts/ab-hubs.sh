#!/usr/bin/env bash
# Alternated runs of two hub builds against one load generator, each hub its
# own process on a fresh data directory with the rate limits off.
#
#   BASE=/path/to/old/united-hub NEW=target/release/united-hub \
#     scripts/ab-hubs.sh latency|throughput RUNS
#
# latency:    load --payload random --pairs 1000 --rate 5000 --duration 60 --warmup 2
# throughput: load --payload random --pairs 1000 --rate 0 --window 8 --duration 12 --warmup 2
# The generator is NEW's binary (GEN= overrides). Prints each run's summary.
set -euo pipefail
mode=${1:?usage: BASE=… NEW=… $0 latency|throughput RUNS}
runs=${2:-3}
: "${BASE:?BASE=path of the baseline united-hub}"
NEW=${NEW:-target/release/united-hub}
GEN=${GEN:-$NEW}
case $mode in
  latency) args="--payload random --pairs 1000 --rate 5000 --duration 60 --warmup 2" ;;
  throughput) args="--payload random --pairs 1000 --rate 0 --window 8 --duration 12 --warmup 2" ;;
  *) echo "mode is latency or throughput" >&2; exit 2 ;;
esac
for i in $(seq 1 "$runs"); do
  for name in base new; do
    if [ "$name" = base ]; then hub=$BASE; else hub=$NEW; fi
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$hub" serve --bind "127.0.0.1:$port" --data-dir "$dir" \
      --auth-rate 0 --send-rate 0 --read-rate 0 >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      curl -sf "127.0.0.1:$port/healthz" >/dev/null && break
      sleep 0.1
    done
    echo "== $name, run $i ($mode)"
    # shellcheck disable=SC2086
    "$GEN" load --url "http://127.0.0.1:$port" --hub-pid "$pid" $args 2>/dev/null \
      | grep -E "throughput|latency|send lag|hub memory|verdict" || true
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
