# Sourced by the measuring scripts: start_hub starts $BIN (a release
# build) as a fresh hub on a temporary data directory, its rate and
# session limits off, and sets `dir`, `port` (PORT, or a free one) and
# `hub` (its pid); the hub is stopped and the directory removed on exit.
# Arguments are VAR=value pairs for the hub's environment.
start_hub() {
  dir=$(mktemp -d)
  port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  env "$@" "$BIN" --data-dir "$dir" --bind "127.0.0.1:$port" --auth-rate 0 --send-rate 0 \
      --read-rate 0 --max-sessions-per-user 0 --max-connections-per-ip 0 > "$dir/log" 2>&1 &
  hub=$!
  trap 'kill $hub 2>/dev/null || true; rm -rf "$dir"' EXIT
  sleep 1
}
