#!/usr/bin/env bash
# The first seconds of a load run, when a thousand conversation actors
# start at once (as after a restart under load): a fresh hub (release
# build) on a temporary directory, a 20,000 msg/s run of 5 s after a 2 s
# warmup, and, sampled every 0.5 s, the hub's most threads and most
# RssAnon; then how many sends spent over 100 ms inside the hub
# (united_send_stage_seconds{stage="total"}, the warmup included) and the
# run's p99 and max.
#
#   [BIN=target/release/united-hub] scripts/startup-storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/united-hub}
. scripts/fresh-hub.sh
start_hub
"$BIN" load --url "http://127.0.0.1:$port" --hub-pid $hub --payload random --pairs 1000 \
    --rate 20000 --duration 5 --warmup 2 --quiet --json "$dir/run.json" > "$dir/out" 2>&1 &
gen=$!
threads=0 rss=0
while kill -0 $gen 2>/dev/null; do
  sleep 0.5
  t=$(ls /proc/$hub/task | wc -l)
  r=$(awk '/RssAnon/ {print int($2 / 1024)}' /proc/$hub/status)
  [ "$t" -gt "$threads" ] && threads=$t
  [ "$r" -gt "$rss" ] && rss=$r
done
wait $gen
read -r under all < <(curl -s "http://127.0.0.1:$port/metrics" \
  | grep -E '^united_send_stage_seconds_(bucket\{stage="total",le="0.1"\}|count\{stage="total"\})' \
  | awk '{print $2}' | tr '\n' ' '; echo)
echo "most threads $threads, most RssAnon $rss MiB, sends over 100 ms $(( ${all%.*} - ${under%.*} )) of ${all%.*}," \
  "$(jq -c '{p99: .latency.p99_ms, max: .latency.max_ms}' "$dir/run.json")"
