#!/usr/bin/env bash
# Makes the llama.cpp reference environment that bench/compare_llamacpp.py runs in: a venv under
# $KVGATE_HOME (default ~/.cache/kvgate)/llamacpp-ref with llama-cpp-python built from its PyPI
# source distribution for this CPU, plus numpy and gguf. Idempotent: a venv that already imports
# the pinned version is left alone. Building llama.cpp takes many minutes of CPU.
#
#   scripts/setup_reference.sh            # then:
#   "$KVGATE_HOME/llamacpp-ref/bin/python" bench/compare_llamacpp.py --help
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
home="${KVGATE_HOME:-$HOME/.cache/kvgate}"
venv="$home/llamacpp-ref"
py="$venv/bin/python"

if [ -x "$py" ] && "$py" - "$LLAMA_CPP_PYTHON_VERSION" <<'PY' 2>/dev/null
import sys
import gguf, numpy, llama_cpp
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
PY
then
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
# From the sdist, compiled here: native CPU features (AVX2 / AVX-512 as the CPU has them), CPU only.
echo "setup_reference: building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (many minutes)" >&2
CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "$py" -m pip install -q --no-binary llama-cpp-python --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
"$py" -c "import llama_cpp, numpy, gguf; print('setup_reference: llama-cpp-python', llama_cpp.__version__)" >&2
echo "$py"
