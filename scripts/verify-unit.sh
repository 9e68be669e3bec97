#!/usr/bin/env bash
# Checks deploy/united-hub.service with `systemd-analyze verify`, against the
# binary this tree built (target/debug/united-hub, or $1). Skipped, and said
# so, where systemd-analyze is not installed (docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:-target/debug/united-hub}")
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd-analyze is not installed: the unit is not checked"
    exit 0
fi
[ -x "$binary" ] || { echo "no binary at $binary (cargo build first)"; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s|^ExecStart=/usr/local/bin/united-hub|ExecStart=$binary|" deploy/united-hub.service > "$dir/united-hub.service"
out=$(systemd-analyze verify "$dir/united-hub.service" 2>&1) || { echo "$out"; exit 1; }
# verify exits 0 on some warnings; a warning about this unit is a failure.
if echo "$out" | grep -i "united-hub.service" | grep -v "^$"; then
    exit 1
fi
echo "deploy/united-hub.service: systemd-analyze verify found nothing"
