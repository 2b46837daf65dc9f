#!/usr/bin/env python3
"""Prefill and decode speed of kvgate against llama.cpp (llama-cpp-python) on the same GGUF.

    /opt/kvref/bin/python bench/compare_llamacpp.py [--kvgate build/kvgate] [--model M.gguf]
        [--threads 2] [--repeat 3] [--prompt-tokens 512] [--n-predict 128]

Both engines get the same prompt text: a corpus file (Python's tutorial "classes" page if the
system has it, else a built-in text) cut so that llama.cpp's tokenizer makes exactly 512 tokens of
it, no BOS. Each engine then prefills the prompt and greedily decodes 128 tokens, ignoring EOS, with
the same thread count. Timing follows kvgate's `generate` summary: prefill = the whole prompt
forward; decode = from the first sampled token to the last (n_predict tokens, n_predict - 1
single-token forwards). kvgate runs as `KVGATE generate --model M --prompt-file F -n 128 --temp 0
--threads N --ignore-eos` and its stderr line `kvgate: {json}` is parsed; llama.cpp runs in a
child process of this script so its peak RSS can be read with getrusage (that figure includes the
Python interpreter, about 30-40 MB; the RSS before the model is loaded is reported too).

Run it on an otherwise idle machine: llama.cpp's OpenMP threads spin at barriers, and with more
runnable threads than cores its speed collapses (seen: 2 threads on a busy 2-core box decoding
30x slower than 1 thread); --omp-passive makes them sleep instead.

Runs alternate (kvgate, llama.cpp, kvgate, ...); the best run of each is reported, with the
median beside it. A human summary goes to stderr, one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.expanduser("~/.cache/kvgate/models/SmolLM2-135M-Instruct.Q4_1.gguf")
CORPUS_CANDIDATES = [
    "/usr/share/doc/python3.11/html/_sources/tutorial/classes.rst.txt",
    "/usr/share/doc/python3/html/_sources/tutorial/classes.rst.txt",
]
BUILTIN_TEXT = """\
The river rises in the hills to the north, where a dozen small streams gather in a wide marsh
before finding a single channel. For the first twenty miles it runs fast and shallow over stones,
turning the wheels of old mills that once ground grain for the villages along its banks. Below the
falls at the market town it slows, widens and grows brown with silt, and barges replace the mills.
Merchants built warehouses on both sides, then bridges, then the long stone quay where fishermen
still mend their nets in the mornings. Every spring the water comes up over the lower meadows and
every autumn it leaves behind a layer of dark soil that the farmers prize above any fertilizer.
Historians disagree about the origin of the town's name: some read it as "ford of the alders",
others as the name of a forgotten chieftain whose grave mound stands on the ridge above the mill.
The records of the abbey, which survive from the eleventh century, mention a toll paid at the
bridge in eels and salt, and a dispute between the abbot and the town over the right to fish the
pools below the weir. The dispute lasted, on and off, for three hundred years.
"""


def mb(kb: float) -> float:
    return kb / 1024.0  # ru_maxrss is in kilobytes on Linux


# ----------------------------------------------------------------------------------------------
# prompt


def corpus_text() -> tuple[str, str]:
    for path in CORPUS_CANDIDATES:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.read(), path
    return BUILTIN_TEXT * 8, "built-in text"


def make_prompt(model: str, n_tokens: int) -> tuple[str, int, str]:
    """Text whose llama.cpp tokenization (no BOS) is exactly n_tokens tokens, if possible."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    text, source = corpus_text()

    def count(s: str) -> int:
        return len(llm.tokenize(s.encode("utf-8"), add_bos=False, special=False))

    def cut_from(start: int):
        """Cut text[start:] a few tokens past the target, then drop characters from the end until
        it tokenizes to exactly n_tokens (merges across a cut can make a count unreachable)."""
        toks = llm.tokenize(text[start:].encode("utf-8"), add_bos=False, special=False)
        if len(toks) < n_tokens + 8:
            return None
        s = llm.detokenize(toks[: n_tokens + 3]).decode("utf-8", errors="ignore")
        while s:
            n = count(s)
            if n == n_tokens:
                return s
            if n < n_tokens:
                return None
            s = s[:-1]
        return None

    # Start at the beginning, else at a later line, until an exact cut exists.
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"][:200]
    for start in starts:
        s = cut_from(start)
        if s is not None:
            where = source if start == 0 else f"{source} (from character {start})"
            return s, n_tokens, where
    raise SystemExit(f"could not cut the corpus at exactly {n_tokens} tokens")


# ----------------------------------------------------------------------------------------------
# llama.cpp worker (runs in a child process)


def llama_worker(args) -> None:
    import numpy as np

    rss_before = mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    import llama_cpp

    with open(args.prompt_file, encoding="utf-8") as f:
        text = f.read()
    kv = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[args.kv_type]
    t_load = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=args.prompt_tokens + args.n_predict + 64,
        n_batch=args.batch,
        n_ubatch=args.batch,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=False,
        flash_attn=args.flash_attn,
        type_k=kv,
        type_v=kv,
        n_gpu_layers=0,
        verbose=False,
    )
    load_s = time.perf_counter() - t_load
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    t0 = time.perf_counter()
    llm.eval(tokens)
    prefill_s = time.perf_counter() - t0
    logits = last_logits()
    out = []
    t1 = time.perf_counter()
    for i in range(args.n_predict):
        tok = int(np.argmax(logits))  # EOS ignored
        out.append(tok)
        if i + 1 == args.n_predict:
            break
        llm.eval([tok])
        logits = last_logits()
    decode_s = time.perf_counter() - t1
    res = {
        "prompt_tokens": len(tokens),
        "prefill_s": prefill_s,
        "prefill_tok_s": len(tokens) / max(prefill_s, 1e-9),
        "decode_tokens": len(out),
        "decode_s": decode_s,
        "decode_tok_s": len(out) / max(decode_s, 1e-9),
        "load_s": load_s,
        "peak_rss_mb": mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "rss_before_load_mb": rss_before,
        "first_tokens": out[:16],
    }
    print(json.dumps(res))


def run_llama(args, prompt_file: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "--model", args.model,
           "--threads", str(args.threads), "--batch", str(args.batch), "--kv-type", args.kv_type,
           "--prompt-tokens", str(args.prompt_tokens), "--n-predict", str(args.n_predict),
           "--_prompt-file", prompt_file]
    if args.flash_attn:
        cmd.append("--flash-attn")
    env = dict(os.environ)
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"llama.cpp worker failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# kvgate


def run_kvgate(args, prompt_file: str, workdir: str) -> dict:
    cmd = [args.kvgate, "generate", "--model", args.model, "--prompt-file", prompt_file,
           "-n", str(args.n_predict), "--temp", "0", "--threads", str(args.threads), "--ignore-eos"]
    out_path, err_path = os.path.join(workdir, "kvgate.out"), os.path.join(workdir, "kvgate.err")
    t0 = time.perf_counter()
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    with open(err_path, encoding="utf-8", errors="replace") as f:
        err = f.read()
    if p.returncode != 0:
        raise SystemExit(f"kvgate failed ({p.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    summary = None
    for line in err.splitlines():
        if line.startswith("kvgate:"):
            summary = json.loads(line[len("kvgate:"):].strip())
    if summary is None:
        raise SystemExit(f"no 'kvgate: {{json}}' line in kvgate's stderr:\n{err[-2000:]}")
    summary["process_peak_rss_mb"] = mb(usage.ru_maxrss)
    summary["process_wall_s"] = wall
    return summary


# ----------------------------------------------------------------------------------------------


def summarize(runs: list, key: str) -> dict:
    vals = [r[key] for r in runs]
    return {"best": max(vals), "median": statistics.median(vals), "all": vals}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvgate", default=os.path.join(ROOT, "build", "kvgate"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--batch", type=int, default=512, help="llama.cpp n_batch = n_ubatch")
    ap.add_argument("--kv-type", choices=["f16", "f32"], default="f16",
                    help="llama.cpp KV cache type (its default is f16)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention on")
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for llama.cpp: its OpenMP threads otherwise spin at "
                         "barriers and collapse when the machine is oversubscribed")
    ap.add_argument("--prompt-out", help="also save the prompt text here")
    ap.add_argument("--skip-kvgate", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_prompt-file", dest="prompt_file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        llama_worker(args)
        return 0

    import llama_cpp

    if not os.path.exists(args.model):
        raise SystemExit(f"model not found: {args.model}")
    if not args.skip_kvgate and not os.access(args.kvgate, os.X_OK):
        raise SystemExit(f"kvgate executable not found: {args.kvgate} (build it, or pass --kvgate)")
    text, n_tok, source = make_prompt(args.model, args.prompt_tokens)
    with tempfile.TemporaryDirectory(prefix="kvgate-bench-") as work:
        prompt_file = os.path.join(work, "prompt.txt")
        with open(prompt_file, "w", encoding="utf-8") as f:
            f.write(text)
        if args.prompt_out:
            with open(args.prompt_out, "w", encoding="utf-8") as f:
                f.write(text)
        kv_runs, ll_runs = [], []
        for r in range(args.repeat):
            if not args.skip_kvgate:
                kv_runs.append(run_kvgate(args, prompt_file, work))
                k = kv_runs[-1]
                print(f"[{r + 1}/{args.repeat}] kvgate    prefill {k['prefill_tok_s']:8.1f} tok/s  "
                      f"decode {k['decode_tok_s']:7.2f} tok/s  ({k['prompt_tokens']} prompt tokens)",
                      file=sys.stderr)
            if not args.skip_llama:
                ll_runs.append(run_llama(args, prompt_file))
                k = ll_runs[-1]
                print(f"[{r + 1}/{args.repeat}] llama.cpp prefill {k['prefill_tok_s']:8.1f} tok/s  "
                      f"decode {k['decode_tok_s']:7.2f} tok/s  ({k['prompt_tokens']} prompt tokens)",
                      file=sys.stderr)

    result = {
        "model": os.path.basename(args.model),
        "threads": args.threads,
        "prompt_source": source,
        "prompt_tokens_llama_tokenizer": n_tok,
        "n_predict": args.n_predict,
        "llama_cpp_python": llama_cpp.__version__,
        "llama_settings": {"n_batch": args.batch, "n_ubatch": args.batch, "kv_type": args.kv_type,
                           "flash_attn": args.flash_attn,
                           "omp_wait_policy": "PASSIVE" if args.omp_passive else os.environ.get("OMP_WAIT_POLICY", "default")},
    }
    if kv_runs:
        result["kvgate"] = {
            "prefill_tok_s": summarize(kv_runs, "prefill_tok_s"),
            "decode_tok_s": summarize(kv_runs, "decode_tok_s"),
            "prompt_tokens": kv_runs[0].get("prompt_tokens"),
            "decode_tokens": kv_runs[0].get("decode_tokens"),
            "kv_bytes": kv_runs[0].get("kv_bytes"),
            "peak_rss_mb": max(r.get("peak_rss_mb") or 0 for r in kv_runs),
            "process_peak_rss_mb": max(r["process_peak_rss_mb"] for r in kv_runs),
        }
        if kv_runs[0].get("prompt_tokens") != n_tok:
            result["kvgate"]["warning"] = (f"kvgate tokenized the prompt into {kv_runs[0].get('prompt_tokens')} "
                                           f"tokens, llama.cpp into {n_tok}")
    if ll_runs:
        result["llama_cpp"] = {
            "prefill_tok_s": summarize(ll_runs, "prefill_tok_s"),
            "decode_tok_s": summarize(ll_runs, "decode_tok_s"),
            "prompt_tokens": ll_runs[0]["prompt_tokens"],
            "decode_tokens": ll_runs[0]["decode_tokens"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ll_runs),
            "rss_before_load_mb": ll_runs[0]["rss_before_load_mb"],
            "first_tokens": ll_runs[0]["first_tokens"],
        }
    if kv_runs and ll_runs:
        kb, lb = result["kvgate"], result["llama_cpp"]
        result["ratio_kvgate_over_llama"] = {
            "prefill": kb["prefill_tok_s"]["best"] / lb["prefill_tok_s"]["best"],
            "decode": kb["decode_tok_s"]["best"] / lb["decode_tok_s"]["best"],
        }
        rt = result["ratio_kvgate_over_llama"]
        print(f"best of {args.repeat}, {args.threads} threads, {n_tok}-token prompt, "
              f"{args.n_predict} decoded:", file=sys.stderr)
        print(f"  prefill  kvgate {kb['prefill_tok_s']['best']:8.1f}  llama.cpp {lb['prefill_tok_s']['best']:8.1f}"
              f"  tok/s  ratio {rt['prefill']:.2f}", file=sys.stderr)
        print(f"  decode   kvgate {kb['decode_tok_s']['best']:8.2f}  llama.cpp {lb['decode_tok_s']['best']:8.2f}"
              f"  tok/s  ratio {rt['decode']:.2f}", file=sys.stderr)
        print(f"  peak RSS kvgate {kb['process_peak_rss_mb']:.0f} MB  llama.cpp {lb['peak_rss_mb']:.0f} MB "
              f"(python alone {lb['rss_before_load_mb']:.0f} MB)", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
