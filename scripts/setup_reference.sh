#!/usr/bin/env bash
# Makes the llama.cpp reference environment that bench/compare_llamacpp.py runs in: a venv under
# $KVGATE_HOME (default ~/.cache/kvgate)/llamacpp-ref with llama-cpp-python built from its PyPI
# source distribution for this CPU, plus numpy and gguf. Idempotent: a venv that already imports
# the pinned version and generates a few tokens is left alone. Building llama.cpp takes many
# minutes of CPU.
#
#   scripts/setup_reference.sh            # then:
#   "$KVGATE_HOME/llamacpp-ref/bin/python" bench/compare_llamacpp.py --help
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
home="${KVGATE_HOME:-$HOME/.cache/kvgate}"
venv="$home/llamacpp-ref"
py="$venv/bin/python"
notes="$venv/kvgate-reference.txt"  # how this build was made; compare_llamacpp.py reports it
model="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"

installed() {
  [ -x "$py" ] && "$py" - "$LLAMA_CPP_PYTHON_VERSION" <<'PY' 2>/dev/null
import sys
import gguf, numpy, llama_cpp
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
PY
}

# A few greedy tokens on the default model, in a child process (a crashing build must not pass).
runs() {
  [ -f "$model" ] || return 0  # no model fetched yet: nothing to try
  { "$py" - "$model" >/dev/null <<'PY'
import sys, llama_cpp
m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
m("Once upon a time", max_tokens=4)
PY
  } 2>/dev/null  # also the shell's own "Segmentation fault" line
}

# From the sdist, compiled here: native CPU features (AVX2 / AVX-512 as the CPU has them), CPU
# only. $1: extra compiler flags.
build() {
  echo "setup_reference: building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source ${1:+with '$1' }(many minutes)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF${1:+ -DCMAKE_C_FLAGS='$1' -DCMAKE_CXX_FLAGS='$1'}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$py" -m pip install -q --force-reinstall --no-deps --no-binary llama-cpp-python --no-cache-dir \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  "$py" -m pip install -q "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"  # its pure-Python dependencies
  echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, GGML_NATIVE=ON${1:+, compiler flags: $1}" > "$notes"
}

if installed && runs; then
  echo "setup_reference: $venv already has llama-cpp-python $LLAMA_CPP_PYTHON_VERSION" >&2
  echo "$py"
  exit 0
fi

# Build tools: a C/C++ compiler and CMake (scripts/setup.sh installs them), and venv support.
for tool in cc c++ cmake; do
  command -v "$tool" >/dev/null || { echo "setup_reference: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done
mkdir -p "$home"
if [ ! -x "$py" ]; then
  python3 -m venv "$venv" || { echo "setup_reference: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
fi
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q numpy gguf
installed || build ""
if ! runs; then
  # llama.cpp's AMX kernels (compiled in by -march=native on Sapphire Rapids and later) crashed
  # with SIGSEGV on a virtual Xeon here (ggml_backend_amx_mul_mat, Q4_1 model): build without them,
  # as a user of that machine would have to, and say so in the notes.
  if grep -qw amx_int8 /proc/cpuinfo; then
    echo "setup_reference: the native build does not run here; rebuilding without AMX" >&2
    build "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    echo "AMX off: the native build crashed on this machine" >> "$notes"
  fi
  runs || { echo "setup_reference: llama-cpp-python built but fails to generate on $model" >&2; exit 1; }
fi
"$py" -c "import llama_cpp, numpy, gguf; print('setup_reference: llama-cpp-python', llama_cpp.__version__)" >&2
echo "$py"
