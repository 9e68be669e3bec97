#!/usr/bin/env bash
# Runs the whole test suite with every log on (RUST_LOG=trace, TEST_LOG=1) and
# checks that the logs hold no token, no query string and no key material.
# Ciphertext: the tests send payloads whose base64 would show up as long runs;
# the check looks for the JSON/proto field names and for long base64 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== cargo test with RUST_LOG=trace (logs to $log)"
TEST_LOG=1 RUST_LOG=trace cargo test --test api --test cluster -- --nocapture --test-threads 2 >"$log" 2>&1 || {
  tail -50 "$log"; echo "the suite failed"; exit 1; }
# Backtrace lines ("   at /path/to/file.rs:1:2") are paths, not data; so are
# the standard library's source paths ("/rustc/<commit>/library/...") that a
# panic message can carry, whose commit hash and path read as a base64 run.
grep -vE '^\s+at /' "$log" | sed -E 's#/rustc/[0-9a-f]{40}/#/rustc/…/#g' > "$log.f" && mv "$log.f" "$log"
lines=$(wc -l <"$log")
echo "$lines log lines"
[ "$lines" -gt 1000 ] || { echo "suspiciously few log lines: was TEST_LOG honoured?"; exit 1; }
fail=0
check() {
  local what=$1 pattern=$2
  local n
  n=$(grep -cE -- "$pattern" "$log" || true)
  if [ "$n" -gt 0 ]; then
    echo "FOUND $what ($n lines), e.g.:"; grep -m 3 -E -- "$pattern" "$log" | cut -c1-200
    fail=1
  else
    echo "ok: no $what"
  fi
}
check "JWT (eyJ…)" 'eyJ[A-Za-z0-9_-]{10,}'
check "query strings" '(access_token=|[?&](before|after|limit)=)'
check "Authorization headers" '[Aa]uthorization:|[Bb]earer [A-Za-z0-9]'
check "ciphertext fields" '(encrypted_payload|ephemeral_pubkey|nonce)[=:]'
check "64-hex keys or secrets" '[0-9a-f]{64}'
check "long base64 runs" '[A-Za-z0-9+/]{60,}={0,2}'
exit $fail
