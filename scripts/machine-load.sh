#!/usr/bin/env bash
# What the whole machine does over SECONDS: where its CPU time goes (user,
# system, idle, I/O wait, softirq, and steal: time the hypervisor took), and
# what one block device writes. Run it beside a load run to see whether the
# machine, not the hub, is the limit.
#
#   scripts/machine-load.sh SECONDS [DEVICE]
#
# DEVICE is a name from /proc/diskstats (vda, nvme0n1, sda1, ...); by default,
# the device that holds the current directory. CPU figures are percentages of
# all cores together (200% on two cores). Linux only: it reads /proc/stat and
# /proc/diskstats (the flush columns need Linux 5.5 or later).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || ! $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
seconds=$1
device=${2:-$(basename "$(df --output=source . | tail -1)")}
if ! awk -v d="$device" '$3 == d { found = 1 } END { exit !found }' /proc/diskstats; then
    echo "machine-load: no device '$device' in /proc/diskstats" >&2
    exit 1
fi

snapshot() {
    head -1 /proc/stat
    awk -v d="$device" '$3 == d' /proc/diskstats
}

before=$(snapshot)
start=$(date +%s.%N)
sleep "$seconds"
after=$(snapshot)
end=$(date +%s.%N)

awk -v cores="$(nproc)" -v elapsed="$(echo "$end - $start" | bc)" -v device="$device" '
    # Line 1 and 3: /proc/stat "cpu" lines; 2 and 4: the device in /proc/diskstats.
    NR == 1 { for (i = 2; i <= 9; i++) c0[i] = $i }
    NR == 2 { for (i = 1; i <= NF; i++) d0[i] = $i }
    NR == 3 { for (i = 2; i <= 9; i++) c1[i] = $i }
    NR == 4 { for (i = 1; i <= NF; i++) d1[i] = $i }
    END {
        total = 0
        for (i = 2; i <= 9; i++) { delta[i] = c1[i] - c0[i]; total += delta[i] }
        share = 100 * cores / total
        printf "cpu of %d%%: user %.1f  system %.1f  idle %.1f  iowait %.1f  irq %.1f  softirq %.1f  steal %.1f\n",
            100 * cores, (delta[2] + delta[3]) * share, delta[4] * share, delta[5] * share,
            delta[6] * share, delta[7] * share, delta[8] * share, delta[9] * share
        # diskstats: 8 writes, 10 sectors written, 11 ms writing, 13 ms busy, 19 flushes, 20 ms flushing.
        writes = d1[8] - d0[8]; flushes = d1[19] - d0[19]
        printf "%s: write %.1f MB/s, %.0f writes/s, %.0f flushes/s, busy %.0f%%, mean write %.2f ms, mean flush %.2f ms\n",
            device, (d1[10] - d0[10]) * 512 / 1e6 / elapsed, writes / elapsed, flushes / elapsed,
            (d1[13] - d0[13]) / 10 / elapsed,
            writes ? (d1[11] - d0[11]) / writes : 0, flushes ? (d1[20] - d0[20]) / flushes : 0
    }' <(printf '%s\n%s\n' "$before" "$after")
