#!/usr/bin/env bash
# Where a send waits: a fresh hub (release build), one load run at 5,000
# msg/s against it, then the hub's united_send_stage_seconds and
# united_commit_seconds, as shares of sends over each threshold.
#
#   scripts/stage-latency.sh [DURATION] [VAR=value ...]   # variables go to the hub
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/united-hub}
duration=${1:-20}
shift || true
dir=$(mktemp -d)
port=${PORT:-19850}
trap 'kill $hub 2>/dev/null; rm -rf "$dir"' EXIT
env "$@" "$BIN" --data-dir "$dir" --bind 127.0.0.1:$port --auth-rate 0 --send-rate 0 \
    --read-rate 0 --max-sessions-per-user 0 --max-connections-per-ip 0 > "$dir/log" 2>&1 &
hub=$!
sleep 1
"$BIN" load --url http://127.0.0.1:$port --hub-pid $hub --payload random --pairs 1000 \
    --rate 5000 --duration "$duration" --warmup 2 --quiet --json "$dir/run.json" > "$dir/out" 2>&1
curl -s http://127.0.0.1:$port/metrics > "$dir/metrics"
jq -c '{p50: .latency.p50_ms, p99: .latency.p99_ms, p999: .latency.p999_ms, max: .latency.max_ms, accepted_per_second}' "$dir/run.json"
python3 - "$dir/metrics" <<'PY'
import collections, re, sys
buckets, count, total = collections.defaultdict(dict), {}, {}
for line in open(sys.argv[1]):
    m = re.match(r'united_(?:send_stage|commit)_seconds_bucket\{(?:stage="(\w+)",)?le="([^"]+)"\} (\S+)', line)
    if m:
        buckets[m.group(1) or "commit"][m.group(2)] = float(m.group(3))
        continue
    m = re.match(r'united_(?:send_stage|commit)_seconds_(sum|count)(?:\{stage="(\w+)"\})? (\S+)', line)
    if m:
        (total if m.group(1) == "sum" else count)[m.group(2) or "commit"] = float(m.group(3))
for stage in ["to_actor", "batch_wait", "writer_wait", "commit", "back_to_actor", "total"]:
    b = buckets.get(stage)
    if not b or not b["+Inf"]:
        continue
    n = b["+Inf"]
    over = lambda le: 100 * (1 - b[le] / n)
    print(f"  {stage:<13} n={int(n):<7} mean={1000 * total[stage] / count[stage]:7.3f} ms  "
          f">5ms {over('0.005'):5.2f}%  >20ms {over('0.02'):5.2f}%  >50ms {over('0.05'):5.2f}%")
PY
