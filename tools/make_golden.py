#!/usr/bin/env python3
"""Record golden logits for a GGUF model, from llama.cpp or from an exact numpy forward pass.

Run by hand, not in CI (use the interpreter that has llama-cpp-python, numpy and gguf):

    /opt/kvref/bin/python tools/make_golden.py MODEL.gguf OUT.json [--cases prose,code,chat,unicode]
        [--n-greedy 32] [--top-k 20] [--reference llama|numpy] [--crosscheck]

For each prompt case it records the token ids (llama.cpp's tokenizer, no BOS added), the top-k
(id, logit) pairs of every prompt position, and a greedy (argmax) continuation evaluated token by
token, with the top-k pairs of the distribution that produced each greedy token: greedy_top[k] is
the distribution whose argmax is greedy[k], so greedy_top[0] equals prompt_top[-1].

--reference llama (default): logits from llama.cpp through llama-cpp-python (CPU, 2 threads,
    flash attention off, F32 KV cache, whole prompt in one batch).
--reference numpy: logits from an independent float64 numpy forward pass (llama / qwen2 / qwen3)
    over weights dequantized by the `gguf` package. llama.cpp quantizes the activations to 8 bits
    before quantized matrix products, so on a quantized model its logits sit measurably off the
    exact ones; the numpy reference is the exact math of the dequantized weights.
--crosscheck: also run the other forward pass teacher-forced on the recorded sequence and store
    how far apart the two are (max / rms absolute difference, argmax agreement).

Output (keys "settings", "stats", "crosscheck" are informative extras):
{"generator", "model_file", "model_sha256", "settings", "cases": [{"name", "prompt", "special",
 "tokens", "prompt_top", "greedy", "greedy_top", "stats", ["crosscheck"]}]}
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import time

import numpy as np

CASES = {
    "prose": (
        "The old lighthouse stood at the edge of the cliff, and every night its keeper climbed "
        "the narrow stairs to light the lamp. Ships passing in the dark trusted that light, "
        "though few of the sailors had ever seen the man who kept it burning.",
        False,
    ),
    "code": (
        "def fibonacci(n):\n"
        "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
        "    a, b = 0, 1\n"
        "    for _ in range(n):\n"
        "        a, b = b, a + b\n"
        "    return a\n"
        "\n"
        "\n"
        "def main():\n",
        False,
    ),
    "chat": (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        True,
    ),
    "unicode": (
        "Order #40213 shipped on 2024-03-17: 3 x café crème at €4.50, 12 naïve résumés, "
        "数学 and 東京, Ελληνικά, привет мир 🙂 — total 1,234.56 (approx. 99.9%).",
        False,
    ),
    "mixed": (
        "In 1969, 3 astronauts flew 384,400 km to the Moon; naïve café owners in Zürich cheered "
        "and Tokyo (東京) watched too.",
        False,
    ),
}
DEFAULT_CASES = "prose,code,chat,unicode"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def top_pairs(logits: np.ndarray, k: int) -> list:
    """Top-k (id, logit) sorted by logit descending, ties by smaller id first."""
    logits = np.asarray(logits, dtype=np.float32)
    order = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), float(logits[i])] for i in order]


def gap12(logits: np.ndarray) -> float:
    two = np.partition(np.asarray(logits, dtype=np.float64), -2)[-2:]
    return float(two[1] - two[0])


# ----------------------------------------------------------------------------------------------
# llama.cpp side


def llama_settings(n_ctx: int, n_threads: int) -> dict:
    import llama_cpp

    return dict(
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        logits_all=True,
        flash_attn=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        n_gpu_layers=0,
        seed=0,
        verbose=False,
    )


class LlamaEngine:
    """llama.cpp through llama-cpp-python: tokenizer and reference forward."""

    def __init__(self, model_path: str, n_ctx: int, n_threads: int, vocab_only: bool = False):
        import llama_cpp

        self.settings = llama_settings(n_ctx, n_threads)
        kw = dict(self.settings)
        if vocab_only:
            kw["vocab_only"] = True
        self.llm = llama_cpp.Llama(model_path=model_path, **kw)

    def tokenize(self, text: str, special: bool) -> list:
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)]

    def detokenize(self, toks: list) -> str:
        return self.llm.detokenize(toks).decode("utf-8", errors="replace")

    def reset(self):
        self.llm.reset()

    def forward(self, tokens: list) -> np.ndarray:
        n0 = self.llm.n_tokens
        self.llm.eval(tokens)  # a prompt is one batch: n_batch == n_ctx
        return np.array(self.llm.scores[n0 : n0 + len(tokens)], dtype=np.float32)


def run_cases(tok: LlamaEngine, eng, cases: list, n_greedy: int, top_k: int, n_ctx: int) -> list:
    out = []
    for name in cases:
        prompt, special = CASES[name]
        tokens = tok.tokenize(prompt, special)
        if len(tokens) + n_greedy > n_ctx:
            raise SystemExit(f"case {name}: {len(tokens)} tokens + {n_greedy} exceed n_ctx {n_ctx}")
        eng.reset()
        all_logits = list(eng.forward(tokens))
        prompt_top = [top_pairs(l, top_k) for l in all_logits]
        greedy, greedy_top = [], []
        last = all_logits[-1]
        for step in range(n_greedy):
            t = int(np.argmax(last))  # first index on ties, like std::max_element
            greedy.append(t)
            greedy_top.append(top_pairs(last, top_k))
            if step + 1 < n_greedy:
                last = eng.forward([t])[0]
                all_logits.append(last)
        # all_logits: one row per evaluated position (prompt + greedy[:-1]).
        seq = tokens + greedy[:-1]
        assert len(all_logits) == len(seq)
        spreads = [p[0][1] - p[-1][1] for p in prompt_top + greedy_top]
        gaps_prompt = [gap12(l) for l in all_logits[: len(tokens)]]
        gaps_greedy = [gap12(l) for l in all_logits[len(tokens) - 1 :]]
        stats = {
            "max_abs_logit": float(max(np.abs(l).max() for l in all_logits)),
            "top1_logit_range": [float(min(p[0][1] for p in prompt_top + greedy_top)),
                                 float(max(p[0][1] for p in prompt_top + greedy_top))],
            "spread_top1_minus_top20": {"min": float(min(spreads)), "mean": float(np.mean(spreads)),
                                        "max": float(max(spreads))},
            "min_top2_gap_prompt": float(min(gaps_prompt)),
            "min_top2_gap_greedy": float(min(gaps_greedy)),
            "greedy_top2_gaps": [round(g, 5) for g in gaps_greedy],
            "greedy_text": tok.detokenize(greedy),
        }
        out.append({
            "name": name,
            "prompt": prompt,
            "special": special,
            "tokens": tokens,
            "prompt_top": prompt_top,
            "greedy": greedy,
            "greedy_top": greedy_top,
            "stats": stats,
            "_seq": seq,
            "_logits": all_logits,
        })
    return out


# ----------------------------------------------------------------------------------------------
# independent numpy reference (float64)


class NumpyModel:
    def __init__(self, path: str):
        import gguf

        self.gguf = gguf
        self.r = gguf.GGUFReader(path)
        self.t = {t.name: t for t in self.r.tensors}
        f = self.r.fields
        self.arch = self._s("general.architecture")
        a = self.arch
        self.n_layer = self._i(f"{a}.block_count")
        self.n_embd = self._i(f"{a}.embedding_length")
        self.n_head = self._i(f"{a}.attention.head_count")
        self.n_kv = self._i(f"{a}.attention.head_count_kv")
        self.d_head = self._i(f"{a}.attention.key_length", self.n_embd // self.n_head)
        self.eps = self._f(f"{a}.attention.layer_norm_rms_epsilon")
        self.base = self._f(f"{a}.rope.freq_base", 10000.0)
        self.n_rot = self._i(f"{a}.rope.dimension_count", self.d_head)
        self.neox = a in ("qwen2", "qwen3")
        self._cache = {}
        self.reset()
        if a not in ("llama", "qwen2", "qwen3"):
            raise SystemExit(f"crosscheck: unsupported architecture {a}")

    def _field(self, key):
        return self.r.fields.get(key)

    def _s(self, key):
        return self._field(key).contents()

    def _i(self, key, default=None):
        fld = self._field(key)
        return default if fld is None else int(fld.contents())

    def _f(self, key, default=None):
        fld = self._field(key)
        return default if fld is None else float(fld.contents())

    def w(self, name: str) -> np.ndarray | None:
        if name in self._cache:
            return self._cache[name]
        t = self.t.get(name)
        arr = None
        if t is not None:
            from gguf import quants

            arr = quants.dequantize(t.data, t.tensor_type)
            arr = np.asarray(arr, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
        self._cache[name] = arr
        return arr

    def rms(self, x, wt):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * wt

    def rope(self, x, pos):
        # x: [T, H, D]; pos: [T]
        d = self.n_rot
        inv = self.base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [d/2]
        ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, d/2]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        y = x.copy()
        if self.neox:  # pair i with i + d/2
            a, b = x[..., : d // 2], x[..., d // 2 : d]
            y[..., : d // 2] = a * c - b * s
            y[..., d // 2 : d] = a * s + b * c
        else:  # pair 2i with 2i+1
            a, b = x[..., 0:d:2], x[..., 1:d:2]
            y[..., 0:d:2] = a * c - b * s
            y[..., 1:d:2] = a * s + b * c
        return y

    def reset(self):
        self.kv = [None] * self.n_layer  # per layer (K [T, n_kv, D], V [T, n_kv, D])
        self.n_past = 0

    def forward(self, tokens: list) -> np.ndarray:
        """Evaluate new tokens after the cached ones; returns logits [len(tokens), vocab]."""
        T, P = len(tokens), self.n_past
        emb = self.w("token_embd.weight")
        x = emb[np.asarray(tokens)]
        pos = np.arange(P, P + T)
        mask = np.triu(np.full((T, P + T), -np.inf), P + 1)
        D, H, K = self.d_head, self.n_head, self.n_kv
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rms(x, self.w(p + "attn_norm.weight"))
            q = h @ self.w(p + "attn_q.weight").T
            k = h @ self.w(p + "attn_k.weight").T
            v = h @ self.w(p + "attn_v.weight").T
            for name, arr in (("q", q), ("k", k), ("v", v)):
                b = self.w(p + f"attn_{name}.bias")
                if b is not None:
                    arr += b
            q, k, v = q.reshape(T, H, D), k.reshape(T, K, D), v.reshape(T, K, D)
            qn, kn = self.w(p + "attn_q_norm.weight"), self.w(p + "attn_k_norm.weight")
            if qn is not None:
                q = self.rms(q, qn)
            if kn is not None:
                k = self.rms(k, kn)
            q, k = self.rope(q, pos), self.rope(k, pos)
            if self.kv[l] is not None:
                k = np.concatenate([self.kv[l][0], k])
                v = np.concatenate([self.kv[l][1], v])
            self.kv[l] = (k, v)
            att = np.empty((T, H, D))
            for g in range(H):
                kh = g // (H // K)
                sc = q[:, g, :] @ k[:, kh, :].T / np.sqrt(D) + mask
                sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                sc /= sc.sum(axis=1, keepdims=True)
                att[:, g, :] = sc @ v[:, kh, :]
            x = x + att.reshape(T, H * D) @ self.w(p + "attn_output.weight").T
            h = self.rms(x, self.w(p + "ffn_norm.weight"))
            gt = h @ self.w(p + "ffn_gate.weight").T
            up = h @ self.w(p + "ffn_up.weight").T
            x = x + (gt / (1.0 + np.exp(-gt)) * up) @ self.w(p + "ffn_down.weight").T
        self.n_past += T
        h = self.rms(x, self.w("output_norm.weight"))
        out = self.w("output.weight")
        return h @ (emb if out is None else out).T


def crosscheck(other, other_name: str, cases: list) -> None:
    """Teacher-forced comparison of the recorded sequence against another engine."""
    for c in cases:
        other.reset()
        ref = np.asarray(other.forward(c["_seq"]), dtype=np.float64)
        got = np.stack(c["_logits"]).astype(np.float64)
        diff = np.abs(ref - got)
        top_agree = int(np.sum(ref.argmax(axis=1) == got.argmax(axis=1)))
        rel = diff.max(axis=1) / np.maximum(np.abs(ref).max(axis=1), 1e-9)
        top = np.argsort(-got, axis=1, kind="stable")[:, :20]
        d20 = np.take_along_axis(diff, top, axis=1)
        c["crosscheck"] = {
            "other": other_name,
            "positions": len(c["_seq"]),
            "max_abs_diff": float(diff.max()),
            "rms_diff": float(np.sqrt(np.mean(diff ** 2))),
            "max_rel_diff_per_row": float(rel.max()),
            "max_abs_diff_top20": float(d20.max()),
            "rms_diff_top20": float(np.sqrt(np.mean(d20 ** 2))),
            "argmax_agree": top_agree,
        }
        print(f"  crosscheck {c['name']}: max|d|={diff.max():.4g} rms={np.sqrt(np.mean(diff**2)):.3g} "
              f"top20: max|d|={d20.max():.4g} rms={np.sqrt(np.mean(d20**2)):.3g} "
              f"argmax agree {top_agree}/{len(c['_seq'])}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# output


def dump(doc: dict, path: str) -> None:
    """JSON with one line per position list, so diffs stay readable."""

    def enc(v):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))

    lines = ["{"]
    head = [k for k in doc if k != "cases"]
    for k in head:
        lines.append(f"  {enc(k)}: {enc(doc[k])},")
    lines.append('  "cases": [')
    for ci, c in enumerate(doc["cases"]):
        lines.append("    {")
        keys = list(c.keys())
        for ki, k in enumerate(keys):
            comma = "," if ki + 1 < len(keys) else ""
            v = c[k]
            if k in ("prompt_top", "greedy_top"):
                rows = [f"        {enc(r)}" for r in v]
                lines.append(f"      {enc(k)}: [\n" + ",\n".join(rows) + f"\n      ]{comma}")
            else:
                lines.append(f"      {enc(k)}: {enc(v)}{comma}")
        lines.append("    }" + ("," if ci + 1 < len(doc["cases"]) else ""))
    lines.append("  ]")
    lines.append("}")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--cases", "--prompts", default=DEFAULT_CASES,
                    help=f"comma-separated case names from {sorted(CASES)}")
    ap.add_argument("--n-greedy", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", choices=["llama", "numpy"], default="llama",
                    help="which forward pass produces the logits (tokens always come from llama.cpp)")
    ap.add_argument("--crosscheck", action="store_true",
                    help="also run the other forward pass teacher-forced on the recorded sequence "
                         "and record how far apart the two are")
    args = ap.parse_args(argv)

    import llama_cpp

    names = [c for c in args.cases.split(",") if c]
    for n in names:
        if n not in CASES:
            raise SystemExit(f"unknown case {n}; known: {sorted(CASES)}")
    t0 = time.time()
    numpy_name = (f"numpy {np.__version__} float64 forward (tools/make_golden.py), weights dequantized "
                  f"by gguf-py {importlib.metadata.version('gguf')}")
    llama_name = f"llama-cpp-python {llama_cpp.__version__} (llama.cpp CPU, tools/make_golden.py)"
    if args.reference == "llama":
        main_eng = LlamaEngine(args.model, args.n_ctx, args.threads)
        tok, main_name = main_eng, llama_name
    else:
        tok = LlamaEngine(args.model, args.n_ctx, args.threads, vocab_only=not args.crosscheck)
        main_eng, main_name = NumpyModel(args.model), numpy_name
    cases = run_cases(tok, main_eng, names, args.n_greedy, args.top_k, args.n_ctx)
    for c in cases:
        s = c["stats"]
        print(f"  {c['name']}: {len(c['tokens'])} tokens, max|logit| {s['max_abs_logit']:.2f}, "
              f"spread(top1-top20) mean {s['spread_top1_minus_top20']['mean']:.2f}, "
              f"min top2 gap greedy {s['min_top2_gap_greedy']:.4f}; greedy: {s['greedy_text']!r}",
              file=sys.stderr)
    if args.crosscheck:
        if args.reference == "llama":
            crosscheck(NumpyModel(args.model), numpy_name, cases)
        else:
            crosscheck(tok, llama_name, cases)
    for c in cases:
        del c["_seq"], c["_logits"]
    settings = {k: v for k, v in tok.settings.items() if k != "verbose"}
    settings["type_k"] = settings["type_v"] = "f32"
    settings["add_bos"] = False
    settings.update(reference=args.reference, n_greedy=args.n_greedy, top_k=args.top_k,
                    tokenizer=llama_name,
                    system_info=llama_cpp.llama_print_system_info().decode().strip())
    doc = {
        "generator": main_name,
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "settings": settings,
        "cases": cases,
    }
    dump(doc, args.out)
    print(f"wrote {args.out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
