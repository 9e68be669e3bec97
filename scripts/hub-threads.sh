#!/usr/bin/env bash
# CPU per accepted message of each part of one hub (its workers, the SQLite
# writer, the checkpointer), in µs: a fresh hub (release build) on a
# temporary directory, a load run against it, and `perf stat --per-thread`
# over 8 s of the middle of the run. Needs perf.
#
#   [BIN=target/release/united-hub] scripts/hub-threads.sh [RATE]   # default 20,000 msg/s
#
# `united-hub` is the writer thread (the DbExecutor), `united-checkpoi` the
# checkpointer, `workers` actix's arbiters (sockets, sessions, conversation
# actors). Alternate two builds' runs and compare medians.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/united-hub}
rate=${1:-20000}
. scripts/fresh-hub.sh
start_hub
"$BIN" load --url "http://127.0.0.1:$port" --hub-pid $hub --payload random --pairs 1000 \
    --rate "$rate" --duration 20 --warmup 2 --quiet --json "$dir/run.json" > "$dir/out" 2>&1 &
gen=$!
sleep 9
accepted() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^united_messages_accepted_total/ {print $2}'; }
before=$(accepted)
perf stat --per-thread -x, -e task-clock -p $hub -- sleep 8 2> "$dir/perf"
after=$(accepted)
wait $gen
python3 - "$dir/perf" "$before" "$after" <<'PY'
import collections, sys
messages = float(sys.argv[3]) - float(sys.argv[2])
ms = collections.Counter()
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[1].replace(".", "").isdigit():
        name = f[0].rsplit("-", 1)[0]
        ms["workers" if "actix-rt" in name else name] += float(f[1])
parts = " ".join(f"{k}={v * 1000 / messages:.1f}" for k, v in sorted(ms.items())
                 if v * 1000 / messages > 0.3)
print(f"messages={int(messages)} {parts} total={sum(ms.values()) * 1000 / messages:.1f} (µs a message)")
PY
