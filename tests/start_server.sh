# Sourced by the test scripts that talk to `kvgate serve`: start_server KVGATE_BINARY [serve flags]
# starts it on a free loopback port, waits until the model is loaded, and sets $pid, $port and
# $log; an EXIT trap stops the server and removes the log. Exits 1 when the server does not start.
start_server() {
  local kvgate=$1
  shift
  log=$(mktemp)
  "$kvgate" serve --port 0 "$@" >"$log" 2>&1 &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
  port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$log")
    if [ -n "$port" ] && grep -q "model loaded" "$log"; then return 0; fi
    if ! kill -0 $pid 2>/dev/null; then cat "$log"; exit 1; fi
    sleep 0.1
  done
  echo "server did not start"
  cat "$log"
  exit 1
}
