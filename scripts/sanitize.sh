#!/usr/bin/env bash
# Builds the whole test suite (and the kvgate executable the CLI tests run) under AddressSanitizer
# and UndefinedBehaviorSanitizer into build-asan/, then runs ctest there. Any sanitizer report fails
# the test that triggered it (UBSan does not recover; ASan aborts). Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."

flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
# -O1 -g: readable stacks at a speed the suite can afford (the model tests run real forward passes).
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVGATE_BENCH=OFF \
  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
ninja -C build-asan -j "$(nproc)" >&2

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan.supp:print_suppressions=0}"
ctest --test-dir build-asan --output-on-failure -j "$(nproc)" "$@"
