#!/usr/bin/env bash
# Where a send waits: a fresh hub (release build), one load run at 5,000
# msg/s against it, then the hub's united_send_stage_seconds,
# united_commit_seconds and united_checkpoint_seconds, as shares over each
# threshold, and how many went over 20, 50 and 100 ms (one 60 ms stall a
# minute is invisible as a share, but it is the p99.9). The first line is
# the run's JSON summary. The histograms count from SKIP seconds after the
# hub started (default 6: setup and the load's warmup are over by then;
# conversation actors start then, not in the measured part).
#
#   [RATE=20000] scripts/stage-latency.sh [DURATION] [VAR=value ...]   # variables go to the hub
# RATE is the load's msg/s (default 5,000).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/united-hub}
duration=${1:-20}
shift || true
. scripts/fresh-hub.sh
PORT=${PORT:-19850} start_hub "$@"
${GEN_PREFIX:-} "$BIN" load --url http://127.0.0.1:$port --hub-pid $hub --payload random --pairs 1000 \
    --rate "${RATE:-5000}" --duration "$duration" --warmup 2 --quiet --json "$dir/run.json" > "$dir/out" 2>&1 &
gen=$!
sleep $(( ${SKIP:-6} - 1 ))
curl -s http://127.0.0.1:$port/metrics > "$dir/metrics.start"
wait $gen
curl -s http://127.0.0.1:$port/metrics > "$dir/metrics"
jq -c "{p50: .latency.p50_ms, p99: .latency.p99_ms, p999: .latency.p999_ms, max: .latency.max_ms, accepted_per_second, answer_p99: .answer_latency.p99_ms, lag_p99: .send_lag.p99_ms, worst: .worst_second}" "$dir/run.json"
python3 - "$dir/metrics" "$dir/metrics.start" <<'PY'
import collections, re, sys
buckets, count, total = collections.defaultdict(dict), {}, {}
for path, sign in ((sys.argv[1], 1), (sys.argv[2], -1)):
    for line in open(path):
        m = re.match(r'united_(send_stage|commit|checkpoint)_seconds_bucket\{(?:(?:stage|mode)="(\w+)",)?le="([^"]+)"\} (\S+)', line)
        if m:
            name = m.group(2) or m.group(1)
            name = "checkpoint_" + name if m.group(1) == "checkpoint" else name
            buckets[name][m.group(3)] = buckets[name].get(m.group(3), 0) + sign * float(m.group(4))
            continue
        m = re.match(r'united_(send_stage|commit|checkpoint)_seconds_(sum|count)(?:\{(?:stage|mode)="(\w+)"\})? (\S+)', line)
        if m:
            name = m.group(3) or m.group(1)
            name = "checkpoint_" + name if m.group(1) == "checkpoint" else name
            d = total if m.group(2) == "sum" else count
            d[name] = d.get(name, 0) + sign * float(m.group(4))
for stage in ["to_actor", "batch_wait", "writer_wait", "commit", "in_commit", "back_to_actor", "total",
              "to_session", "ws_request",
              "checkpoint_passive", "checkpoint_sync", "checkpoint_restart"]:
    b = buckets.get(stage)
    if not b or not b["+Inf"]:
        continue
    n = b["+Inf"]
    over = lambda le: 100 * (1 - b[le] / n)
    print(f"  {stage:<18} n={int(n):<7} mean={1000 * total[stage] / count[stage]:7.3f} ms  "
          f">5ms {over('0.005'):5.2f}%  >10ms {over('0.01'):5.2f}%  >20ms {over('0.02'):5.2f}%  >50ms {over('0.05'):5.2f}%  "
          f"(n >20ms {int(n - b['0.02'])}, >50ms {int(n - b['0.05'])}, >100ms {int(n - b['0.1'])})")
PY
