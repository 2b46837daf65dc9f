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
source "$here/../start_server.sh"
start_server "$kvgate" --threads 2 --parallel 1 --ctx 512
timeout 300 /usr/bin/python3 "$here/test_chat_page.py" "$chromium" "http://127.0.0.1:$port" "$build/chat_page.png"
