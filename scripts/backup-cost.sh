#!/usr/bin/env bash
# What `united-hub backup` costs the sends of a running hub.
#
#   scripts/backup-cost.sh [PAIRS_OF_RUNS] [FILL_SECONDS]
#
# Starts one release hub (limits off) on a fresh data directory on the
# disk, fills its database with FILL_SECONDS (default 5) of
# `--rate 0 --window 8` traffic of 2 KiB payloads, runs 30 s at 5,000
# msg/s without reporting them, then takes
# PAIRS_OF_RUNS (default 2) pairs of 60 s latency runs at 5,000 msg/s,
# alternated: one with `united-hub backup` started 25 s into the run, one
# without. Prints, for each run, p99, p99.9 and max push latency, the
# worst second, and the backup's start and end in seconds of the
# measurement with the slowest push of each second around them.
#
# HUB (default target/release/united-hub) is the hub's binary, GEN (default
# HUB) the load generator's, so that two hubs can be compared with one
# generator; DIR (default a new directory under /var/tmp) is the data
# directory's parent. PREGROW=N (seconds) holds a snapshot that long during
# the warm-up run, so that the WAL file has grown before the first backup
# (an experiment: does the WAL's growth into new blocks cause the stall?).
# Needs jq.
set -euo pipefail

pairs=${1:-2}
fill=${2:-5}
hub=${HUB:-target/release/united-hub}
gen=${GEN:-$hub}
[[ -x $hub && -x $gen ]] || { echo "no binary at $hub or $gen: cargo build --release" >&2; exit 2; }
command -v jq >/dev/null || { echo "backup-cost.sh needs jq" >&2; exit 2; }
dir=${DIR:-$(mktemp -d /var/tmp/backup-cost.XXXXXX)}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"

"$hub" serve --data-dir "$dir/data" --bind "127.0.0.1:$port" \
    --auth-rate 0 --send-rate 0 --read-rate 0 --conversation-rate 0 --key-rate 0 \
    >"$dir/hub.log" 2>&1 &
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null; wait $hub_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

echo "filling the database ($fill s at --window 8, 2 KiB payloads)…" >&2
"$gen" load --url "$url" --hub-pid $hub_pid --payload random --payload-bytes 2048 \
    --pairs 1000 --rate 0 --window 8 --duration "$fill" >/dev/null 2>&1
echo "database: $(du -h "$dir/data/united.db" | cut -f1)" >&2
# Not reported: the first run after the fill had a stall of 78-162 ms
# seconds before its backup began, with either build.
echo "a 30 s run, not reported, after the fill…" >&2
"$gen" load --url "$url" --hub-pid $hub_pid --payload random --pairs 1000 \
    --rate 5000 --duration 30 --warmup 2 >/dev/null 2>&1 &
warm=$!
if [[ ${PREGROW:-0} -gt 0 ]]; then
    # An experiment: a reader holds one snapshot for PREGROW seconds, so
    # that the WAL grows as it does during a backup, into blocks the file
    # keeps afterwards (SQLite reuses the WAL and does not shrink it).
    sleep 10
    python3 - "$dir/data/united.db" "$PREGROW" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN")
db.execute("SELECT count(*) FROM users").fetchone()
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
PY
fi
wait $warm
echo "WAL after the warm-up run: $(du -h "$dir/data/united.db-wal" | cut -f1)" >&2

run() { # run NAME WITH_BACKUP
    local json="$dir/$1.json" start end
    "$gen" load --url "$url" --hub-pid $hub_pid --payload random --pairs 1000 \
        --rate 5000 --duration 60 --warmup 2 --json "$json" >/dev/null 2>&1 &
    local load=$!
    if [[ $2 == yes ]]; then
        sleep 25
        start=$(date +%s%3N)
        "$hub" backup --data-dir "$dir/data" --to "$dir/copy.db" >/dev/null 2>&1
        end=$(date +%s%3N)
    fi
    wait $load
    # Only now: deleting a GiB file is a disk event of its own (a discard
    # on mounts with `discard`), and would be counted as the backup's.
    rm -f "$dir/copy.db"
    jq -r --arg name "$1" '"\($name): p99 \(.latency.p99_ms) ms, p99.9 \(.latency.p999_ms) ms, max \(.latency.max_ms) ms, worst second \(.worst_second.second) (p99 \(.worst_second.latency.p99_ms) ms), lost \(.lost), duplicated \(.duplicated)"' "$json"
    if [[ $2 == yes ]]; then
        local t0 from to
        t0=$(jq .measured_from_unix_ms "$json")
        from=$(( (start - t0) / 1000 ))
        to=$(( (end - t0) / 1000 ))
        echo "  backup in seconds $from to $to of the measurement ($(( end - start )) ms)"
        jq -r --argjson a $((from - 3)) --argjson b $((to + 6)) \
            '"  slowest push of seconds \($a)..\($b), ms: " + ([.max_ms_by_second[$a:$b+1][] | tostring] | join(" "))' "$json"
    fi
}

for i in $(seq "$pairs"); do
    run "backup-$i" yes
    run "none-$i" no
done
