#!/usr/bin/env bash
# Installs what kvgate needs to build and run on Debian (idempotent: apt runs only when a package
# is missing), then fetches the default model. Used by both README commands and by CI.
# --test adds what only the test suite needs: Chromium and python3-websocket (the chat page test).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ cmake ninja-build pkg-config python3 python3-pip
  libopenblas-dev libpcre2-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev python3-venv gnuplot-nox python3.11-doc git-doc)
[ "${1:-}" = "--test" ] && packages+=(chromium python3-websocket)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts/fetch_model.sh
