#!/usr/bin/env bash
# The README's main job, on the default model and corpora: collect attention labels on the
# training corpus (Python docs) and the held-out corpus (git docs), train every head's gate (binary
# objective, and the older lifetime objective for comparison), evaluate both on the held-out data
# and write the report; then the quality bench of every KV policy against the learned gates on the
# held-out corpus, and the demonstration (a long document and a question about a detail far back,
# answered with the learned policy; the page dims what it evicted). Ends with the one-screen
# summary at a matched KV budget. Collections resume where they stopped. Outputs go to $KVGATE_OUT
# (default: out/ in the repository). Sizes: KVGATE_TRAIN_TOKENS, KVGATE_HELDOUT_TOKENS,
# KVGATE_BENCH_WINDOWS, KVGATE_NEEDLE_CASES, KVGATE_RETRIEVAL_CASES (retrieval suite cases per task
# and policy), KVGATE_BENCH_CTX. KVGATE_LABELS: the label sources of the gates (collect --labels;
# future,answer: the mix measured best on retrieval at no cost in perplexity, see the README).
# KVGATE_BENCH_PREFILL: the bench's prompt math (int8, the engine's serving arithmetic and ~1.45x
# faster than f32, or f32 as the README's tables).
# The default sizes fit the job in 30 minutes on 2 cores (issue 10): each bench run is a 2048-token
# prompt (~6 s here), so the bench's 2 windows x 47 configurations and 1 retrieval case per task
# and curve (156 runs) are a demonstration, not a measurement; the README gives the larger commands
# behind its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh

out="${KVGATE_OUT:-out}"
train_tokens="${KVGATE_TRAIN_TOKENS:-80000}"
heldout_tokens="${KVGATE_HELDOUT_TOKENS:-24000}"
bench_windows="${KVGATE_BENCH_WINDOWS:-2}"
needle_cases="${KVGATE_NEEDLE_CASES:-0}"
retrieval_cases="${KVGATE_RETRIEVAL_CASES:-1}"
bench_prefill="${KVGATE_BENCH_PREFILL:-int8}"
bench_ctx="${KVGATE_BENCH_CTX:-2048}"
labels="${KVGATE_LABELS:-future,answer}"
mkdir -p "$out"
kvgate=build/kvgate
start=$(date +%s)

echo "== model" >&2
$kvgate info > "$out/model.json"
cat "$out/model.json" >&2

echo "== collect: training corpus (Python docs), up to $train_tokens tokens, labels $labels" >&2
$kvgate collect --out "$out/train" --max-tokens "$train_tokens" --labels "$labels" > "$out/collect_train.json"
echo "== collect: held-out corpus (git docs), up to $heldout_tokens tokens, labels $labels" >&2
$kvgate collect --held-out --out "$out/heldout" --max-tokens "$heldout_tokens" --labels "$labels" \
  > "$out/collect_heldout.json"

echo "== train: binary gates" >&2
$kvgate train --data "$out/train" --out "$out/gates.gguf" > "$out/train.json"
echo "== train: lifetime gates (older formulation, for comparison)" >&2
$kvgate train --data "$out/train" --out "$out/gates_lifetime.gguf" --objective lifetime > "$out/train_lifetime.json"

echo "== eval on the held-out corpus" >&2
$kvgate eval --gates "$out/gates.gguf" --compare "$out/gates_lifetime.gguf" --data "$out/heldout" \
  --out "$out/report" > "$out/eval_summary.txt"

echo "== bench: every policy against KV kept, $bench_windows windows of $bench_ctx tokens, $needle_cases needle cases," \
  "$retrieval_cases retrieval cases per task, $bench_prefill prefill" >&2
$kvgate bench --gates "$out/gates.gguf" --out "$out/bench" --ctx "$bench_ctx" --windows "$bench_windows" \
  --needle-cases "$needle_cases" --retrieval-cases "$retrieval_cases" --budget-pools head,model --prefill "$bench_prefill" \
  > "$out/bench_summary.txt"

echo "== demonstration: a long held-out document to summarize, with the learned policy (and the full cache)" >&2
demo_doc=/usr/share/doc/git-doc/git-bisect-lk2009.txt
demo_question="Summarize the text above in two sentences."
$kvgate demo --gates "$out/gates.gguf" --doc "$demo_doc" --max-doc-tokens 1500 --question "$demo_question" -n 80 \
  --out "$out/demo" > "$out/demo_summary.txt"
$kvgate demo --policy full --doc "$demo_doc" --max-doc-tokens 1500 --question "$demo_question" -n 80 \
  --out "$out/demo_full" > "$out/demo_full_summary.txt"

echo
echo "== summary (main job done in $(( $(date +%s) - start )) s)"
echo "-- gates on the held-out corpus ($out/report/index.html)"
cat "$out/eval_summary.txt"
echo
echo "-- policies at a matched KV budget: perplexity, needle and the retrieval suite ($out/bench/index.html)"
cat "$out/bench_summary.txt"
echo
echo "-- demonstration: \"$demo_question\" after $(basename "$demo_doc") ($out/demo/demo.html)"
echo "learned policy:"
cat "$out/demo_summary.txt"
echo "full cache, for comparison:"
cat "$out/demo_full_summary.txt"
