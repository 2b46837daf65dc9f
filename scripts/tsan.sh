#!/usr/bin/env bash
# ThreadSanitizer run of the threaded code: scripts/tsan.sh [gtest args, e.g. --gtest_filter=...]
# Builds with clang -fsanitize=thread into build-tsan/ (OpenMP from LLVM's libomp) and runs the
# tests of the server (httplib threads, the scheduler, cancellation) and of the OpenMP code (the
# forward pass, attention, the policies). OpenMP under TSan: libomp's own synchronization is not
# instrumented, so its barriers and reductions look like races unless Archer (libarcher.so, shipped
# with Debian's libomp-14-dev) tells TSan about them through OMPT; OMP_TOOL_LIBRARIES loads it.
# OpenBLAS runs single-threaded (its pthreads pool is not instrumented either). Not part of
# .ci/run: it takes long on 2 cores. Any report fails the test that triggered it (halt_on_error).
set -euo pipefail
cd "$(dirname "$0")/.."
archer=$(ls /usr/lib/llvm-*/lib/libarcher.so 2>/dev/null | tail -1 || true)
[ -n "$archer" ] || { echo "tsan: libarcher.so not found (apt-get install libomp-dev)" >&2; exit 1; }

flags="-fsanitize=thread -fno-omit-frame-pointer -g -O1"
CC=clang CXX=clang++ cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVGATE_BENCH=OFF \
  -DCMAKE_CXX_FLAGS_DEBUG="" -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" >/dev/null
ninja -C build-tsan -j "$(nproc)" kvgate serve_test model_test attention_test policy_test >&2

export OMP_TOOL_LIBRARIES="$archer"
# ARCHER_OPTIONS=verbose=1 confirms Archer is loaded ("Archer detected OpenMP application with
# TSan"), but prints it on stdout, which breaks the tests comparing `kvgate generate` output.
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1}"
export OPENBLAS_NUM_THREADS=1
export OMP_WAIT_POLICY=passive  # as ctest sets it (tests/CMakeLists.txt)
status=0
for t in serve_test model_test attention_test policy_test; do
  echo "tsan: $t" >&2
  build-tsan/tests/$t "$@" || status=1
done
exit $status
