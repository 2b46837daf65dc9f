#!/usr/bin/env bash
# The README's main job, on the default model and corpora: collect attention labels on the
# training corpus (Python docs) and the held-out corpus (git docs), train every head's gate (binary
# objective, and the older lifetime objective for comparison), evaluate both on the held-out data
# and write the report; then a chat answer from the model. Steps are resumable: rerunning continues
# collections where they stopped. Outputs go to $KVGATE_OUT (default: out/ in the repository).
# Sizes can be changed with KVGATE_TRAIN_TOKENS / KVGATE_HELDOUT_TOKENS.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh

out="${KVGATE_OUT:-out}"
train_tokens="${KVGATE_TRAIN_TOKENS:-80000}"
heldout_tokens="${KVGATE_HELDOUT_TOKENS:-24000}"
mkdir -p "$out"
kvgate=build/kvgate
start=$(date +%s)

echo "== model" >&2
$kvgate info > "$out/model.json"
cat "$out/model.json" >&2

echo "== collect: training corpus (Python docs), up to $train_tokens tokens" >&2
$kvgate collect --out "$out/train" --max-tokens "$train_tokens" > "$out/collect_train.json"
echo "== collect: held-out corpus (git docs), up to $heldout_tokens tokens" >&2
$kvgate collect --held-out --out "$out/heldout" --max-tokens "$heldout_tokens" > "$out/collect_heldout.json"

echo "== train: binary gates" >&2
$kvgate train --data "$out/train" --out "$out/gates.gguf" > "$out/train.json"
echo "== train: lifetime gates (older formulation, for comparison)" >&2
$kvgate train --data "$out/train" --out "$out/gates_lifetime.gguf" --objective lifetime > "$out/train_lifetime.json"

echo "== eval on the held-out corpus" >&2
$kvgate eval --gates "$out/gates.gguf" --compare "$out/gates_lifetime.gguf" --data "$out/heldout" \
  --out "$out/report" > "$out/eval_summary.txt"

echo "== chat" >&2
$kvgate generate --chat --prompt "What are the three primary colors?" -n 64 --temp 0

echo
echo "== summary (main job done in $(( $(date +%s) - start )) s)"
cat "$out/eval_summary.txt"
