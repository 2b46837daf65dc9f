#!/usr/bin/env bash
# The README's main job: installs what is missing, builds, and asks the default model a fixed
# question in the chat template; the answer goes to stdout, the speed summary to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
build/kvgate info | head -12
echo "== question: What are the three primary colors?"
build/kvgate generate --chat --prompt "What are the three primary colors?" -n 96 --temp 0
