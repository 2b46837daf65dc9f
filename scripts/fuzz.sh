#!/usr/bin/env bash
# Fuzzes kvgate's parsers with libFuzzer, one harness after the other:
#   scripts/fuzz.sh [seconds per harness] [harness...]     each harness for a time (default 60 s)
#   scripts/fuzz.sh --runs N [harness...]                  each harness to N executions (no time cap;
#                                                          also KVGATE_FUZZ_RUNS=N)
# KVGATE_FUZZ_TIMEOUT (default 20 s) is libFuzzer's per-input timeout; raise it on a loaded machine,
# where a stalled process is reported as a timeout.
# and prints a table of executions, seconds, exec/s, coverage (cov / ft) and crashes per harness.
# Harnesses (tests/fuzz/fuzz_targets.h): gguf tokenizer chat dataset serve. Builds them with clang under
# ASan + UBSan into build-fuzz/, seeds each corpus from the project's own files (tests/data, a
# tiny model, a gate bank, a dataset written by the test suite's helpers, the default model's chat
# template) plus every committed regression input, and runs each harness for the given time
# (default 60 s); tests/fuzz/<harness>.dict, where present, is the harness's dictionary. Crashes land in build-fuzz/crashes/<harness>/; copy each one, once fixed, to
# tests/fuzz/regressions/<harness>/ so the normal suite replays it (tests/fuzz_test.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${KVGATE_FUZZ_RUNS:-}"
seconds=60
if [ "${1:-}" = --runs ]; then
  runs="${2:?--runs needs a number of executions}"
  shift 2
elif [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
fi
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(gguf tokenizer chat dataset serve)

if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 ||
   ! dpkg-query -W -f='${Status}' libomp-dev 2>/dev/null | grep -q "install ok installed"; then
  echo "fuzz: installing clang, libfuzzer-14-dev, libomp-dev" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq clang libfuzzer-14-dev libomp-dev >/dev/null
fi

flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DKVGATE_TESTS=OFF -DKVGATE_BENCH=OFF -DKVGATE_FUZZ=ON >/dev/null
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
ninja -C build-fuzz -j "$(nproc)" "${targets[@]}" kvgate_fuzz_seeds >&2

build-fuzz/tests/fuzz/kvgate_fuzz_seeds build-fuzz/seeds
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
touch build-fuzz/.fuzz_start  # crashes of this run are the artifacts newer than this
for h in "${harnesses[@]}"; do
  corpus="build-fuzz/corpus/$h"
  mkdir -p "$corpus" "build-fuzz/crashes/$h"
  cp -n build-fuzz/seeds/"$h"/* "$corpus"/ 2>/dev/null || true
  [ -d "tests/fuzz/regressions/$h" ] && cp -n tests/fuzz/regressions/"$h"/* "$corpus"/ 2>/dev/null || true
  max_len=65536
  [ "$h" = gguf ] && max_len=300000  # the seed models and gate bank are up to ~270 KB
  limit=(-max_total_time="$seconds")
  [ -n "$runs" ] && limit=(-runs="$runs")
  dict=()
  [ -f "tests/fuzz/$h.dict" ] && dict=(-dict="tests/fuzz/$h.dict")
  if [ -n "$runs" ]; then echo "fuzz: $h for $runs executions" >&2; else echo "fuzz: $h for $seconds s" >&2; fi
  # -rss_limit_mb: an input that makes kvgate allocate past it is a bug (sizes not bounded).
  build-fuzz/tests/fuzz/fuzz_"$h" "$corpus" "${limit[@]}" "${dict[@]}" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len="$max_len" -timeout="${KVGATE_FUZZ_TIMEOUT:-20}" -print_final_stats=1 -artifact_prefix="build-fuzz/crashes/$h/" \
    2>&1 | tee "build-fuzz/fuzz_$h.log" | grep -E '^#[0-9]+ *(DONE|pulse)|stat::|ERROR|SUMMARY|Test unit' >&2 || true
done

# The table, from each harness's log: executions and exec/s from libFuzzer's final stats, seconds
# from its "Done N runs in S second(s)" line, coverage from its last status line, crashes = the
# inputs this run saved under build-fuzz/crashes/<harness>/ (crash-, leak-, timeout-, oom- files).
printf '\n%-10s %12s %9s %9s %16s %8s\n' harness executions seconds exec/s "cov / ft" crashes
for h in "${harnesses[@]}"; do
  log="build-fuzz/fuzz_$h.log"
  field() { { grep -oP "$1" "$log" || true; } | tail -1; }
  execs=$(field 'stat::number_of_executed_units:\s*\K[0-9]+')
  rate=$(field 'stat::average_exec_per_sec:\s*\K[0-9]+')
  secs=$(field '^Done [0-9]+ runs in \K[0-9]+')
  cov=$(field '^#[0-9]+.*\bcov: \K[0-9]+')
  ft=$(field '^#[0-9]+.*\bft: \K[0-9]+')
  crashes=$({ find "build-fuzz/crashes/$h" -type f -newer build-fuzz/.fuzz_start \( -name 'crash-*' -o -name 'leak-*' \
    -o -name 'timeout-*' -o -name 'oom-*' \) 2>/dev/null || true; } | wc -l)
  printf '%-10s %12s %9s %9s %16s %8s\n' "$h" "${execs:-?}" "${secs:-?}" "${rate:-?}" "${cov:-?} / ${ft:-?}" "$crashes"
done
