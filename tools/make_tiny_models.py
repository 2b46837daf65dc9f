#!/usr/bin/env python3
"""Write small random-weight GGUF models (llama, qwen2, qwen3) for kvgate's tests.

Run by hand, not in CI (needs numpy and the `gguf` package; llama-cpp-python for the goldens):

    /opt/kvref/bin/python tools/make_tiny_models.py [--base-model SmolLM2-135M-Instruct.Q4_1.gguf]
        [--out-dir tests/data/tiny] [--golden-dir tests/data/golden] [--no-golden]

The weights are random (numpy default_rng with a fixed seed per architecture), so the files are
byte-for-byte reproducible with the same numpy and gguf versions. Each model borrows the full
SmolLM2 tokenizer (every tokenizer.* key, vocabulary 49152) with tokenizer.ggml.pre set to
"smollm" (llama) or "qwen2" (qwen2, qwen3), so the token embedding is 49152 rows: it dominates the
file size, and n_embd is kept at 64-128 with 4-8 bit embeddings to keep each file under ~6 MB.

Tensor types are spread over the layers so a forward pass runs every dequantizer kvgate has:
F32 (norms, biases, some matrices), F16, BF16, Q8_0, Q4_0, Q4_1, and the K-types Q4_K, Q5_K,
Q6_K. K-types need ne[0] (the input dimension) to be a multiple of 256, so they sit on
ffn_down (input = n_ff = 256) and on qwen3's attn_output (input = n_head * d_head = 256). gguf-py
cannot quantize K-types, so this script has its own simple K-type encoders (per-sub-block min/max
or abs-max scales, scales quantized to 6/8 bits); they are checked against gguf-py's dequantizers.

After writing the models it runs tools/make_golden.py on each (cases "mixed" and "chat", 16 greedy
tokens) into tests/data/golden/tiny_{arch}.json (llama.cpp logits) and tiny_{arch}.numpy.json
(exact numpy float64 logits), each with a crosscheck between the two.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import quants

DEFAULT_BASE = "/root/.cache/kvgate/models/SmolLM2-135M-Instruct.Q4_1.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ----------------------------------------------------------------------------------------------
# model specifications

SPECS = {
    "llama": dict(
        seed=1001, n_embd=128, n_layer=3, n_head=4, n_kv=2, d_head=32, n_ff=256,
        rope_base=10000.0, eps=1e-6, tied=True, pre="smollm",
        emb_std=0.35, gain=2.0,
        token_embd=QT.Q4_0, output=None,
        layers=[
            dict(q=QT.Q4_0, k=QT.Q4_1, v=QT.Q8_0, o=QT.F16, gate=QT.Q4_1, up=QT.Q4_0, down=QT.Q4_K),
            dict(q=QT.BF16, k=QT.F16, v=QT.Q4_0, o=QT.Q4_1, gate=QT.Q8_0, up=QT.F32, down=QT.Q5_K),
            dict(q=QT.Q8_0, k=QT.Q8_0, v=QT.F32, o=QT.BF16, gate=QT.BF16, up=QT.F16, down=QT.Q6_K),
        ],
    ),
    "qwen2": dict(
        seed=1002, n_embd=64, n_layer=2, n_head=4, n_kv=2, d_head=16, n_ff=256,
        rope_base=1000000.0, eps=1e-6, tied=False, pre="qwen2",
        emb_std=0.35, gain=2.0, out_std=0.7,
        token_embd=QT.Q8_0, output=QT.Q4_1,
        layers=[
            dict(q=QT.Q8_0, k=QT.Q4_0, v=QT.Q4_1, o=QT.BF16, gate=QT.Q4_0, up=QT.Q4_1, down=QT.Q6_K),
            dict(q=QT.F16, k=QT.BF16, v=QT.F32, o=QT.Q8_0, gate=QT.F16, up=QT.Q8_0, down=QT.Q4_K),
        ],
    ),
    "qwen3": dict(
        seed=1003, n_embd=128, n_layer=2, n_head=4, n_kv=2, d_head=64, n_ff=256,
        rope_base=10000.0, eps=1e-6, tied=True, pre="qwen2",
        emb_std=0.35, gain=2.0,
        token_embd=QT.Q4_1, output=None,
        layers=[
            dict(q=QT.Q4_0, k=QT.Q8_0, v=QT.BF16, o=QT.Q5_K, gate=QT.F16, up=QT.Q4_1, down=QT.Q4_K),
            dict(q=QT.Q4_1, k=QT.F16, v=QT.Q4_0, o=QT.Q6_K, gate=QT.Q8_0, up=QT.BF16, down=QT.Q5_K),
        ],
    ),
}

# ----------------------------------------------------------------------------------------------
# K-type encoders (own code; layouts as in FACTS.md / ggml-common.h)

QK_K = 256


def _f16(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _pack_scales_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins per block -> 12 bytes (Q4_K / Q5_K layout)."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    for j in range(4):
        out[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        out[:, j + 4] = (mn[:, j] & 63) | ((mn[:, j + 4] >> 4) << 6)
        out[:, j + 8] = (sc[:, j + 4] & 15) | ((mn[:, j + 4] & 15) << 4)
    return out


def _affine_k(x: np.ndarray, nmax: int):
    """x: [nb, 8, 32] -> (d f16 [nb], dmin f16 [nb], sc [nb,8], mn [nb,8], q [nb,8,32] in 0..nmax)."""
    lo = np.minimum(x.min(axis=2), 0.0)  # representable minimum is -dmin*m <= 0
    hi = np.maximum(x.max(axis=2), lo + 1e-8)
    scale = (hi - lo) / nmax
    mval = -lo
    d = _f16(scale.max(axis=1) / 63.0)
    dmin = _f16(mval.max(axis=1) / 63.0)
    df, dmf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(scale / np.where(df > 0, df, 1.0)), 1, 63)
    mn = np.clip(np.rint(mval / np.where(dmf > 0, dmf, 1.0)), 0, 63)
    step = (df * sc)[:, :, None]
    off = (dmf * mn)[:, :, None]
    q = np.clip(np.rint((x + off) / step), 0, nmax).astype(np.uint8)
    return d, dmin, sc, mn, q


def encode_q4_k(w: np.ndarray) -> np.ndarray:
    rows, cols = w.shape
    x = w.reshape(-1, 8, 32).astype(np.float32)
    d, dmin, sc, mn, q = _affine_k(x, 15)
    nb = x.shape[0]
    qs = np.zeros((nb, 4, 32), dtype=np.uint8)
    for c in range(4):
        qs[:, c, :] = q[:, 2 * c, :] | (q[:, 2 * c + 1, :] << 4)
    blk = np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8),
                          _pack_scales_k4(sc, mn), qs.reshape(nb, 128)], axis=1)
    assert blk.shape[1] == 144
    return blk.reshape(rows, -1)


def encode_q5_k(w: np.ndarray) -> np.ndarray:
    rows, cols = w.shape
    x = w.reshape(-1, 8, 32).astype(np.float32)
    d, dmin, sc, mn, q = _affine_k(x, 31)
    nb = x.shape[0]
    lo = q & 15
    qs = np.zeros((nb, 4, 32), dtype=np.uint8)
    for c in range(4):
        qs[:, c, :] = lo[:, 2 * c, :] | (lo[:, 2 * c + 1, :] << 4)
    qh = np.zeros((nb, 32), dtype=np.uint8)
    for i in range(8):  # bit i of qh[l] is the fifth bit of element 32*i + l
        qh |= ((q[:, i, :] >> 4) & 1) << i
    blk = np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8),
                          _pack_scales_k4(sc, mn), qh, qs.reshape(nb, 128)], axis=1)
    assert blk.shape[1] == 176
    return blk.reshape(rows, -1)


def encode_q6_k(w: np.ndarray) -> np.ndarray:
    rows, cols = w.shape
    x = w.reshape(-1, 16, 16).astype(np.float32)
    nb = x.shape[0]
    s = np.abs(x).max(axis=2) / 31.0  # per 16-element sub-block, q in -32..31
    d = _f16(np.maximum(s.max(axis=1), 1e-8) / 127.0)
    df = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(s / df), 1, 127).astype(np.int8)
    q = np.clip(np.rint(x / (df * sc)[:, :, None]), -32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(nb, 2, 128)  # two halves of 128 elements
    ql = np.zeros((nb, 2, 64), dtype=np.uint8)
    qh = np.zeros((nb, 2, 32), dtype=np.uint8)
    for l in range(32):
        a, b, c, e = q[:, :, l], q[:, :, l + 32], q[:, :, l + 64], q[:, :, l + 96]
        ql[:, :, l] = (a & 15) | ((c & 15) << 4)
        ql[:, :, l + 32] = (b & 15) | ((e & 15) << 4)
        qh[:, :, l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    blk = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8),
                          d.reshape(nb, 1).view(np.uint8)], axis=1)
    assert blk.shape[1] == 210
    return blk.reshape(rows, -1)


K_ENCODERS = {QT.Q4_K: encode_q4_k, QT.Q5_K: encode_q5_k, QT.Q6_K: encode_q6_k}


def encode(w: np.ndarray, qtype: QT) -> np.ndarray:
    """w: [rows, cols] float32 (cols = ggml ne[0]) -> array for GGUFWriter.add_tensor."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if qtype == QT.F32:
        return w
    if qtype == QT.F16:
        return w.astype(np.float16)
    if qtype in K_ENCODERS:
        if w.shape[-1] % QK_K:
            raise ValueError(f"{qtype.name} needs ne[0] % 256 == 0, got {w.shape}")
        data = K_ENCODERS[qtype](w)
    else:
        data = quants.quantize(w, qtype)
    # Check the encoding with gguf-py's independent decoder.
    back = quants.dequantize(data, qtype).reshape(w.shape)
    err = np.sqrt(np.mean((back - w) ** 2)) / max(np.sqrt(np.mean(w ** 2)), 1e-12)
    limit = {QT.BF16: 0.01, QT.Q8_0: 0.02, QT.Q6_K: 0.05, QT.Q5_K: 0.08}.get(qtype, 0.2)
    if not np.isfinite(back).all() or err > limit:
        raise AssertionError(f"{qtype.name} round trip: relative rms error {err:.4f} > {limit}")
    return data


# ----------------------------------------------------------------------------------------------
# model writer


def copy_tokenizer(writer: gguf.GGUFWriter, base: gguf.GGUFReader, pre: str) -> None:
    for key, field in base.fields.items():
        if not key.startswith("tokenizer."):
            continue
        val = pre if key == "tokenizer.ggml.pre" else field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, val, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, val, vtype)


def build(arch: str, spec: dict, base: gguf.GGUFReader, path: str) -> None:
    rng = np.random.default_rng(spec["seed"])
    E, L, H, K, D, F = (spec[k] for k in ("n_embd", "n_layer", "n_head", "n_kv", "d_head", "n_ff"))
    V = len(base.fields["tokenizer.ggml.tokens"].data)

    def normal(rows, cols, std):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def norm_w(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"kvgate-tiny-{arch}")
    w.add_description("random weights for kvgate tests (tools/make_tiny_models.py)")
    w.add_quantization_version(2)
    w.add_context_length(512)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_freq_base(spec["rope_base"])
    w.add_layer_norm_rms_eps(spec["eps"])
    w.add_rope_dimension_count(D)
    if D != E // H:
        w.add_key_length(D)
        w.add_value_length(D)
    copy_tokenizer(w, base, spec["pre"])

    # Matrices ~N(0, 1/n_in) keep activations O(1); attn_output and ffn_down get gain 2 so the
    # layers, not the input embedding, dominate the residual stream (with tied embeddings a
    # dominant residual makes the model just repeat its input token). Embedding rows ~N(0, 0.35^2)
    # give logits with a spread of a few units.
    tensors = [("token_embd.weight", normal(V, E, spec["emb_std"]), spec["token_embd"])]
    for l in range(L):
        t = spec["layers"][l]
        p = f"blk.{l}."
        tensors += [
            (p + "attn_norm.weight", norm_w(E), QT.F32),
            (p + "attn_q.weight", normal(H * D, E, E ** -0.5), t["q"]),
            (p + "attn_k.weight", normal(K * D, E, E ** -0.5), t["k"]),
            (p + "attn_v.weight", normal(K * D, E, E ** -0.5), t["v"]),
        ]
        if arch == "qwen2":
            tensors += [
                (p + "attn_q.bias", (0.3 * rng.standard_normal(H * D)).astype(np.float32), QT.F32),
                (p + "attn_k.bias", (0.3 * rng.standard_normal(K * D)).astype(np.float32), QT.F32),
                (p + "attn_v.bias", (0.3 * rng.standard_normal(K * D)).astype(np.float32), QT.F32),
            ]
        if arch == "qwen3":
            tensors += [
                (p + "attn_q_norm.weight", norm_w(D), QT.F32),
                (p + "attn_k_norm.weight", norm_w(D), QT.F32),
            ]
        tensors += [
            (p + "attn_output.weight", normal(E, H * D, spec["gain"] * (H * D) ** -0.5), t["o"]),
            (p + "ffn_norm.weight", norm_w(E), QT.F32),
            (p + "ffn_gate.weight", normal(F, E, E ** -0.5), t["gate"]),
            (p + "ffn_up.weight", normal(F, E, E ** -0.5), t["up"]),
            (p + "ffn_down.weight", normal(E, F, spec["gain"] * F ** -0.5), t["down"]),
        ]
    tensors.append(("output_norm.weight", norm_w(E), QT.F32))
    if not spec["tied"]:
        tensors.append(("output.weight", normal(V, E, spec["out_std"]), spec["output"]))

    for name, arr, qtype in tensors:
        data = encode(arr if arr.ndim == 2 else arr.reshape(1, -1), qtype)
        if arr.ndim == 1:
            data = data.reshape(-1)
        if qtype in (QT.F32, QT.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-model", default=DEFAULT_BASE, help="GGUF whose tokenizer metadata is borrowed")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "tests", "data", "tiny"))
    ap.add_argument("--golden-dir", default=os.path.join(ROOT, "tests", "data", "golden"))
    ap.add_argument("--arch", default="llama,qwen2,qwen3")
    ap.add_argument("--no-golden", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    base = gguf.GGUFReader(args.base_model)
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(args.golden_dir, exist_ok=True)
    for arch in args.arch.split(","):
        path = os.path.join(args.out_dir, f"{arch}.gguf")
        build(arch, SPECS[arch], base, path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"{path}: {os.path.getsize(path)} bytes, sha256 {sha256_file(path)}", file=sys.stderr)
        if args.no_golden:
            continue
        for ref, suffix in (("llama", ""), ("numpy", ".numpy")):
            out = os.path.join(args.golden_dir, f"tiny_{arch}{suffix}.json")
            subprocess.run([sys.executable, os.path.join(HERE, "make_golden.py"), path, out,
                            "--cases", "mixed,chat", "--n-greedy", "16", "--reference", ref,
                            "--crosscheck", "--threads", str(args.threads)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
