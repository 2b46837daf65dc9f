#!/usr/bin/env bash
# The chat page in headless Chromium (test_chat_page.py): starts `kvgate serve` on a free
# loopback port, runs the page test, stops the server. Needs Debian's chromium and
# python3-websocket under Debian's /usr/bin/python3 (scripts/setup.sh --test installs them);
# fails when they are missing.
# Usage: run_page_test.sh KVGATE_BINARY BUILD_DIR
set -euo pipefail
kvgate=$1
build=$2
here=$(cd "$(dirname "$0")" && pwd)
chromium=$(command -v chromium || true)
if [ -z "$chromium" ] || ! /usr/bin/python3 -c "import websocket" 2>/dev/null; then
  echo "FAIL: needs chromium and python3-websocket (run scripts/setup.sh --test)"
  exit 1
fi
log=$(mktemp)
"$kvgate" serve --port 0 --threads 2 --parallel 1 --ctx 512 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$log")
  if [ -n "$port" ] && grep -q "model loaded" "$log"; then break; fi
  if ! kill -0 $pid 2>/dev/null; then cat "$log"; exit 1; fi
  sleep 0.1
done
[ -n "$port" ] || { echo "server did not start"; cat "$log"; exit 1; }
timeout 300 /usr/bin/python3 "$here/test_chat_page.py" "$chromium" "http://127.0.0.1:$port" "$build/chat_page.png"
