#!/usr/bin/env bash
# The openai Python client (pinned in requirements.txt) against `kvgate serve`: creates a venv
# under the build directory once, starts the server on a free loopback port, runs
# test_openai_client.py, stops the server. Skips (exit 77) only when the venv cannot be made.
# Usage: run_openai_test.sh KVGATE_BINARY BUILD_DIR
set -euo pipefail
kvgate=$1
build=$2
here=$(cd "$(dirname "$0")" && pwd)
venv=$build/openai-venv
stamp=$venv/.installed-$(sha1sum "$here/requirements.txt" | cut -c1-12)
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1 || ! "$venv/bin/pip" install -q -r "$here/requirements.txt" >"$build/openai-venv.log" 2>&1; then
    echo "SKIP: cannot create the venv with the pinned openai package (see $build/openai-venv.log)"
    rm -rf "$venv"
    exit 77
  fi
  touch "$stamp"
fi

source "$here/../start_server.sh"
start_server "$kvgate" --threads 1 --parallel 2 --ctx 512 --api-key test-key
timeout 300 "$venv/bin/python" "$here/test_openai_client.py" "http://127.0.0.1:$port/v1" test-key
# SIGTERM: the server stops by itself and exits 0.
kill -TERM $pid
status=0
wait $pid || status=$?
trap 'rm -f "$log"' EXIT
if [ $status -ne 0 ]; then echo "kvgate serve exited with $status after SIGTERM"; cat "$log"; exit 1; fi
