#!/usr/bin/env python3
"""Makes a Q4_K_M GGUF with llama.cpp's own quantizer (llama_model_quantize through
llama-cpp-python), then prints the type of every tensor and a count per type.

    python tools/make_q4_k_m.py IN.gguf OUT.gguf [--threads 2]

IN may itself be quantized (e.g. SmolLM2-135M-Instruct.Q4_1.gguf): requantizing is allowed, so
the result carries Q4_1's rounding on top of Q4_K_M's (good enough to exercise the K-quant
kernels and to time them; not a file to measure quality with). Tensors whose row length is not a
multiple of 256 cannot be K-quants; llama.cpp picks a fallback type for them, listed below.
The output is written to OUT.tmp and renamed, so an interrupted run leaves no partial OUT.
"""
import argparse
import collections
import os
import sys

import gguf
import llama_cpp


def quantize(src: str, dst: str, threads: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.allow_requantize = True
    params.nthread = threads
    tmp = dst + ".tmp"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), params)
    if rc != 0:
        if os.path.exists(tmp):
            os.remove(tmp)
        sys.exit(f"make_q4_k_m: error: llama_model_quantize returned {rc}")
    os.replace(tmp, dst)


def report(path: str) -> None:
    reader = gguf.GGUFReader(path)
    counts = collections.Counter()
    for t in reader.tensors:
        name = t.tensor_type.name
        counts[name] += 1
        print(f"{t.name:32s} {name:6s} {list(int(n) for n in t.shape)}")
    print("types:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("file bytes:", os.path.getsize(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not os.path.isfile(args.src):
        sys.exit(f"make_q4_k_m: error: no such file: {args.src}")
    quantize(args.src, args.dst, args.threads)
    report(args.dst)


if __name__ == "__main__":
    main()
