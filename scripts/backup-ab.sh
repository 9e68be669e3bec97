#!/usr/bin/env bash
# What `united-hub backup` costs the sends of a running hub, for two builds
# side by side.
#
#   A=/path/to/base/united-hub B=target/release/united-hub \
#     scripts/backup-ab.sh [RUNS] [FILL_SECONDS]
#
# Starts two hubs (limits off), A and B, each on a fresh data directory on
# the disk, and fills each database with FILL_SECONDS (default 5) of
# `--rate 0 --window 8` traffic of 2 KiB payloads (about 0.6-0.8 GiB),
# then a 30 s run at 5,000 msg/s that is not reported. Then RUNS (default
# 5) rounds: a run of DURATION seconds (default 60) at 5,000 msg/s on A
# with a backup (A's own `backup` command) started AT seconds (default 25)
# into its measurement, then the same on B. For each run it
# prints the slowest push from the second the backup began to three
# seconds after it ended ("around"), the slowest push of the rest of the
# run ("outside"), the run's p99 and p99.9, and the backup's duration.
# One generator (GEN, default B) drives both. Needs python3.
set -euo pipefail
: "${A:?A=path of the first united-hub}"
B=${B:-target/release/united-hub}
runs=${1:-5}; fill=${2:-5}
duration=${DURATION:-60}; at=${AT:-25}
gen=${GEN:-$B}
root=$(mktemp -d /var/tmp/bab.XXXXXX)
declare -A url pid
start_hub() { # name binary
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$root/$1"
  "$2" serve --data-dir "$root/$1/data" --bind "127.0.0.1:$port" --auth-rate 0 --send-rate 0 --read-rate 0 --conversation-rate 0 --key-rate 0 >/dev/null 2>"$root/$1/hub.log" &
  pid[$1]=$!; url[$1]="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -sf "${url[$1]}/healthz" >/dev/null && break; sleep 0.1; done
}
start_hub A "$A"; start_hub B "$B"
trap 'kill ${pid[A]} ${pid[B]} 2>/dev/null; wait 2>/dev/null || true; rm -rf "$root"' EXIT
for h in A B; do
  "$gen" load --url "${url[$h]}" --hub-pid ${pid[$h]} --payload random --payload-bytes 2048 --pairs 1000 --rate 0 --window 8 --duration "$fill" >/dev/null 2>&1
  echo "$h database: $(du -h "$root/$h/data/united.db" | cut -f1)"
  "$gen" load --url "${url[$h]}" --hub-pid ${pid[$h]} --payload random --pairs 1000 --rate 5000 --duration 30 --warmup 2 >/dev/null 2>&1
done
for i in $(seq "$runs"); do
 for h in A B; do
  if [ $h = A ]; then bin=$A; else bin=$B; fi
  json="$root/$h-$i.json"
  "$gen" load --url "${url[$h]}" --hub-pid ${pid[$h]} --payload random --pairs 1000 --rate 5000 --duration "$duration" --warmup 2 --json "$json" >/dev/null 2>&1 &
  load=$!
  sleep $((at + 2))
  start=$(date +%s%3N)
  "$bin" backup --data-dir "$root/$h/data" --to "$root/$h/copy.db" >/dev/null 2>&1
  end=$(date +%s%3N)
  wait $load
  rm -f "$root/$h/copy.db"
  python3 - "$json" "$start" "$end" "$h" "$i" "$root/results" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1])); start, end = int(sys.argv[2]), int(sys.argv[3])
t0 = rep["measured_from_unix_ms"]; secs = rep["max_ms_by_second"]
a = max((start - t0)//1000, 0); b = min((end - t0)//1000 + 3, len(secs) - 1)
around = max(secs[a:b+1]); outside = max([secs[s] for s in range(len(secs)) if s < a or s > b] or [0])
line = (f"{sys.argv[4]} run {sys.argv[5]}: around {around:.1f} ms  outside {outside:.1f} ms  p99 {rep['latency']['p99_ms']:.2f}  p99.9 {rep['latency']['p999_ms']:.2f}  backup {(end-start)/1000:.1f} s  lost {rep['lost']} dup {rep['duplicated']}")
print(line, flush=True)
open(sys.argv[6], "a").write(f"{sys.argv[4]} {around} {outside} {rep['latency']['p99_ms']} {rep['latency']['p999_ms']} {(end-start)/1000}\n")
PY
 done
done
python3 - "$root/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for h in "AB":
    mine = [[float(x) for x in r[1:]] for r in rows if r[0] == h]
    med = [statistics.median(c) for c in zip(*mine)]
    print(f"{h} medians of {len(mine)}: around {med[0]:.1f} ms, outside {med[1]:.1f} ms, p99 {med[2]:.2f} ms, p99.9 {med[3]:.2f} ms, backup {med[4]:.1f} s")
PY
