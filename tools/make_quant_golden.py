#!/usr/bin/env python3
"""Writes tests/data/gguf/quant_golden.gguf: dequantization goldens from an independent tool.

Run by hand (the file is committed):
    /opt/kvref/bin/python tools/make_quant_golden.py [--model PATH] [--out PATH]

It needs numpy and the `gguf` PyPI package (gguf-py, llama.cpp's Python GGUF library), whose
gguf.quants module has its own numpy (de)quantizers, written apart from ggml's C. For each type the
file holds, all written by gguf-py's GGUFWriter (so the C++ reader is also checked on a file it did
not write):
  "<name>"      the quantized tensor (shape [4 rows, n] in numpy order, ne = [n, 4])
  "<name>.ref"  F32: gguf-py's dequantization of "<name>"
  "<name>.src"  F32: the input gguf-py quantized, for the types it can quantize (F16, BF16, Q8_0,
                Q4_0, Q4_1, Q5_0, Q5_1); our quantizer must reproduce "<name>" from it byte for byte
The K types have no gguf-py quantizer: their blocks are deterministic random bytes with sane f16
scales; "<type>.random" does the same for the 32-element types. "real.*" are the first 4 rows of real tensors of the default model (SmolLM2-135M Q4_1).
"""

import argparse
import os
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path(os.environ.get("KVGATE_HOME", Path.home() / ".cache/kvgate")) / \
    "models/SmolLM2-135M-Instruct.Q4_1.gguf"
ROWS = 4


def source_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """[ROWS, n] f32 with per-block scales spanning decades, plus hard cases."""
    x = rng.standard_normal((ROWS, n)).astype(np.float32)
    scale = np.exp(rng.uniform(-8, 4, size=(ROWS, n // 32, 1))).astype(np.float32)
    x = (x.reshape(ROWS, n // 32, 32) * scale).reshape(ROWS, n)
    x[0, :32] = 0.0                     # all-zero block: d = 0
    x[0, 32:64] = 1.25                  # constant block: max == min
    x[0, 64:96] = -x[0, 64:96] ** 2     # all negative
    x[1, :32] = rng.integers(-8, 8, 32).astype(np.float32)  # exact ties at x / d + 0.5
    return x


def f16_source(rng: np.random.Generator, n: int) -> np.ndarray:
    """Values that exercise f16/bf16 rounding: normals, subnormals, overflow, signed zero, inf."""
    x = (rng.standard_normal((ROWS, n)) * np.exp(rng.uniform(-20, 12, (ROWS, n)))).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.0, 65520.0, 1e6,
                        2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14, 1.0 + 2.0 ** -11,
                        1.0 + 3 * 2.0 ** -11, 3.0e38, 1e-40], dtype=np.float32)
    x[0, :special.size] = special
    return x


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    """[n_blocks, type_size] random bytes with the f16 scales overwritten by sane values (some
    small enough to be f16 subnormals)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)

    def f16(lo: float, hi: float, signed: bool) -> np.ndarray:
        v = np.exp(rng.uniform(np.log(lo), np.log(hi), n_blocks))
        if signed:
            v *= rng.choice([-1.0, 1.0], n_blocks)
        return v.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)

    if qtype in (T.Q8_0, T.Q4_0, T.Q5_0):
        b[:, 0:2] = f16(1e-7, 1e-1, signed=True)  # d
    elif qtype in (T.Q4_1, T.Q5_1):
        b[:, 0:2] = f16(1e-7, 1e-1, signed=False)  # d
        b[:, 2:4] = f16(1e-7, 1e0, signed=True)  # m
    elif qtype in (T.Q4_K, T.Q5_K):
        b[:, 0:2] = f16(1e-7, 1e-1, signed=False)  # d
        b[:, 2:4] = f16(1e-7, 1e-1, signed=False)  # dmin
    elif qtype == T.Q6_K:
        b[:, 208:210] = f16(1e-7, 1e-2, signed=True)  # d (last)
    return b


def add(writer: gguf.GGUFWriter, name: str, qtype: T, data: np.ndarray, n: int) -> None:
    """Adds "<name>" (raw bytes [ROWS, bytes per row] of qtype) and its "<name>.ref"."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(ROWS, n // block_size * type_size)
    writer.add_tensor(name, raw, raw_dtype=qtype)  # byte shape; gguf-py derives ne
    ref = dequantize(raw, qtype).astype(np.float32).reshape(ROWS, n)
    writer.add_tensor(name + ".ref", ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=ROOT / "tests/data/gguf/quant_golden.gguf")
    args = ap.parse_args()

    rng = np.random.default_rng(20240611)
    w = gguf.GGUFWriter(str(args.out), arch="golden")
    w.add_string("golden.generator", "tools/make_quant_golden.py")
    w.add_string("golden.gguf_py_version", getattr(gguf, "__version__", "unknown"))

    n = 256
    src = rng.standard_normal((ROWS, n)).astype(np.float32)
    w.add_tensor("f32", src)
    w.add_tensor("f32.ref", src.copy())

    # F16 / BF16: gguf-py quantizes these too
    for name, qtype in (("f16", T.F16), ("bf16", T.BF16)):
        x = f16_source(rng, n)
        with np.errstate(over="ignore"):
            q = quantize(x, qtype)
        add(w, name, qtype, q, n)
        w.add_tensor(name + ".src", x)

    # 32-element types with gguf-py quantizers
    for name, qtype in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)):
        x = source_values(rng, n)
        add(w, name, qtype, quantize(x, qtype), n)
        w.add_tensor(name + ".src", x)

    # every bit pattern the quantizer would not produce: random blocks, 32 per row
    for name, qtype in (("q8_0.random", T.Q8_0), ("q4_0.random", T.Q4_0), ("q4_1.random", T.Q4_1)):
        add(w, name, qtype, random_blocks(rng, qtype, ROWS * 32), 32 * 32)

    # K types (no gguf-py quantizer): random blocks, 8 super-blocks per row
    n_k = 8 * 256
    for name, qtype in (("q4_k", T.Q4_K), ("q5_k", T.Q5_K), ("q6_k", T.Q6_K)):
        add(w, name, qtype, random_blocks(rng, qtype, ROWS * n_k // 256), n_k)

    # Q5_0 / Q5_1 (added later; drawn after the others so the earlier tensors keep their bytes)
    for name, qtype in (("q5_0", T.Q5_0), ("q5_1", T.Q5_1)):
        x = source_values(rng, n)
        add(w, name, qtype, quantize(x, qtype), n)
        w.add_tensor(name + ".src", x)
    for name, qtype in (("q5_0.random", T.Q5_0), ("q5_1.random", T.Q5_1)):
        add(w, name, qtype, random_blocks(rng, qtype, ROWS * 32), 32 * 32)

    # Real tensors: the first ROWS rows as stored in the model
    model = gguf.GGUFReader(str(args.model))
    for t in model.tensors:
        if t.name not in ("token_embd.weight", "blk.0.attn_q.weight"):
            continue
        qtype = T(t.tensor_type)
        ne0 = int(t.shape[0])
        add(w, "real." + t.name, qtype, np.array(t.data[:ROWS]), ne0)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
