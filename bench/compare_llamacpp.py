#!/usr/bin/env python3
"""Prefill and decode speed of kvgate against llama.cpp (llama-cpp-python) on the same GGUF.

    scripts/setup_reference.sh     # the reference venv: $KVGATE_HOME/llamacpp-ref
    "${KVGATE_HOME:-$HOME/.cache/kvgate}/llamacpp-ref/bin/python" bench/compare_llamacpp.py \
        [--kvgate build/kvgate] [--model M.gguf] [--gates out/gates.gguf] [--threads 2] \
        [--repeat 2] [--prompt-tokens 512,2048,4096,7600] [--n-predict 128] [--out DIR]

For each prompt length, both engines get the same prompt text: a corpus file (git's user manual
if the system has it, else Python's tutorial, else a built-in text) cut so that llama.cpp's
tokenizer makes exactly that many tokens of it, no BOS. Each engine then prefills the prompt and
greedily decodes 128 tokens, ignoring EOS, with the same thread count. kvgate runs twice per round:
the full cache, and (with --gates) the learned policy in budget mode holding about --kv-share
(default 25%) of the prompt's KV (`--policy learned --budget B`, B = share x prompt - sinks -
window, at least 1), evicting between prefill chunks. Timing follows kvgate's `generate` summary:
prefill = the whole prompt forward; decode = from the first sampled token to the last (n_predict
tokens, n_predict - 1 single-token forwards). kvgate runs as `KVGATE generate --model M
--prompt-file F -n 128 --temp 0 --threads N --ignore-eos [policy flags]` and its stderr line
`kvgate: {json}` is parsed; llama.cpp runs in a child process of this script so its peak RSS can be
read with getrusage (that figure includes the Python interpreter, about 30-40 MB).

Run it on an otherwise idle machine: llama.cpp's OpenMP threads spin at barriers, and with more
runnable threads than cores its speed collapses (seen: 2 threads on a busy 2-core box decoding
30x slower than 1 thread); --omp-passive makes them sleep instead.

Runs alternate (kvgate full, kvgate learned, llama.cpp, ...); the best run of each is reported,
with the median beside it. A table of ratios goes to stderr, one JSON document to stdout and, with
--out, compare.json plus compare.png (gnuplot) in that directory.
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
    "/usr/share/doc/git/html/user-manual.txt",  # ~45k tokens: room for 7,600
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
    return BUILTIN_TEXT * 200, "built-in text"


def make_prompt(model: str, n_tokens: int) -> tuple[str, int, str]:
    """Text whose llama.cpp tokenization (no BOS) is exactly n_tokens tokens, if possible."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    text, source = corpus_text()

    def count(s: str) -> int:
        return len(llm.tokenize(s.encode("utf-8"), add_bos=False, special=False))

    def cut_from(start: int):
        """The shortest prefix of text[start:] that tokenizes to at least n_tokens, if it has
        exactly n_tokens (merges across a cut can make a count unreachable). Found by bisection
        on characters: the detokenized first n tokens do not re-tokenize to n tokens (the
        tokenizer splits a prefix of a long text differently), so the cut is searched on text."""
        hi = min(len(text) - start, max(64, n_tokens * 16))
        if count(text[start:start + hi]) < n_tokens:
            return None
        lo = 0  # count(prefix of lo chars) < n_tokens <= count(prefix of hi chars)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if count(text[start:start + mid]) < n_tokens:
                lo = mid
            else:
                hi = mid
        s = text[start:start + hi]
        return s if count(s) == n_tokens else None

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


def run_llama(args, prompt_file: str, n_prompt: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "--model", args.model,
           "--threads", str(args.threads), "--batch", str(args.batch), "--kv-type", args.kv_type,
           "--prompt-tokens", str(n_prompt), "--n-predict", str(args.n_predict),
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


def run_kvgate(args, prompt_file: str, workdir: str, extra: list | None = None, isa: str | None = None) -> dict:
    cmd = [args.kvgate, "generate", "--model", args.model, "--prompt-file", prompt_file,
           "-n", str(args.n_predict), "--temp", "0", "--threads", str(args.threads), "--ignore-eos",
           "--kv-type", args.kvgate_kv_type] + (extra or [])
    out_path, err_path = os.path.join(workdir, "kvgate.out"), os.path.join(workdir, "kvgate.err")
    t0 = time.perf_counter()
    env = dict(os.environ, KVGATE_ISA=isa) if isa else None
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env)
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


def learned_flags(args, n_prompt: int) -> list:
    sinks, window = 4, 128
    budget = max(1, int(round(args.kv_share * n_prompt)) - sinks - window)
    return ["--policy", "learned", "--gates", args.gates, "--budget", str(budget),
            "--sinks", str(sinks), "--window", str(window)]


def engine_summary(runs: list) -> dict:
    out = {
        "prefill_tok_s": summarize(runs, "prefill_tok_s"),
        "decode_tok_s": summarize(runs, "decode_tok_s"),
        "prompt_tokens": runs[0].get("prompt_tokens"),
        "decode_tokens": runs[0].get("decode_tokens"),
    }
    for key in ("kv_bytes", "kv_share_mean", "kv_bytes_peak", "first_tokens", "rss_before_load_mb"):
        if key in runs[0]:
            out[key] = runs[0][key]
    out["peak_rss_mb"] = max(r.get("process_peak_rss_mb") or r.get("peak_rss_mb") or 0 for r in runs)
    return out


def one_length(args, n_tokens: int, work: str) -> dict:
    text, n_tok, source = make_prompt(args.model, n_tokens)
    prompt_file = os.path.join(work, f"prompt_{n_tokens}.txt")
    with open(prompt_file, "w", encoding="utf-8") as f:
        f.write(text)
    if args.prompt_out:
        with open(f"{args.prompt_out}.{n_tokens}", "w", encoding="utf-8") as f:
            f.write(text)
    engines = {"kvgate_full": [], "kvgate_learned": [], "kvgate_full_avx2": [], "llama_cpp": []}
    for r in range(args.repeat):
        if not args.skip_kvgate:
            engines["kvgate_full"].append(run_kvgate(args, prompt_file, work))
            if args.gates:
                engines["kvgate_learned"].append(run_kvgate(args, prompt_file, work, learned_flags(args, n_tok)))
            if args.also_avx2:
                engines["kvgate_full_avx2"].append(run_kvgate(args, prompt_file, work, isa="avx2"))
        if not args.skip_llama:
            engines["llama_cpp"].append(run_llama(args, prompt_file, n_tok))
        for name, runs in engines.items():
            if len(runs) == r + 1:
                k = runs[-1]
                print(f"[{n_tok} tokens {r + 1}/{args.repeat}] {name:15s} prefill {k['prefill_tok_s']:8.1f} tok/s  "
                      f"decode {k['decode_tok_s']:7.2f} tok/s", file=sys.stderr)
    res = {"prompt_tokens_llama_tokenizer": n_tok, "prompt_source": source}
    for name, runs in engines.items():
        if runs:
            res[name] = engine_summary(runs)
    if "llama_cpp" in res:
        lb = res["llama_cpp"]
        for name in ("kvgate_full", "kvgate_learned", "kvgate_full_avx2"):
            if name in res:
                kb = res[name]
                res[f"ratio_{name}_over_llama"] = {
                    "prefill": kb["prefill_tok_s"]["best"] / lb["prefill_tok_s"]["best"],
                    "decode": kb["decode_tok_s"]["best"] / lb["decode_tok_s"]["best"],
                }
    return res


def plot(result: dict, out_dir: str) -> None:
    """compare.png: decode and prefill tok/s against prompt length, one line per engine (gnuplot)."""
    import shutil

    if not shutil.which("gnuplot"):
        print("gnuplot not found: no plot", file=sys.stderr)
        return
    names = ["kvgate_full", "kvgate_learned", "llama_cpp"]
    if any("kvgate_full_avx2" in row for row in result["lengths"]):
        names.insert(2, "kvgate_full_avx2")
    data = os.path.join(out_dir, "compare.dat")
    with open(data, "w") as f:
        f.write("# prompt " + " ".join(f"{n}_decode {n}_prefill" for n in names) + "\n")
        for row in result["lengths"]:
            vals = []
            for n in names:
                e = row.get(n)
                vals += [f"{e['decode_tok_s']['best']:.3f}", f"{e['prefill_tok_s']['best']:.3f}"] if e else ["NaN", "NaN"]
            f.write(f"{row['prompt_tokens_llama_tokenizer']} " + " ".join(vals) + "\n")
    titles = {"kvgate_full": "kvgate, full cache", "kvgate_learned": f"kvgate, learned at {result['kv_share']:.0%} KV",
              "llama_cpp": "llama.cpp (f16 KV)", "kvgate_full_avx2": "kvgate, full cache, AVX2 kernels"}
    lines = []
    for col, what in ((0, "decode"), (1, "prefill")):
        plots = ", ".join(f"'{data}' using 1:{2 + 2 * i + col} with linespoints lw 2 title '{titles[n]}'"
                          for i, n in enumerate(names))
        lines.append(f"set title '{what} ({result['threads']} threads)'; set xlabel 'prompt tokens'; "
                     f"set ylabel 'tok/s'; set logscale x 2; set yrange [0:*]; plot {plots}")
    script = (f"set terminal pngcairo size 1200,500 noenhanced; set output '{os.path.join(out_dir, 'compare.png')}'; "
              "set multiplot layout 1,2; set key bottom left; " + "; ".join(lines) + "; unset multiplot")
    subprocess.run(["gnuplot", "-e", script], check=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvgate", default=os.path.join(ROOT, "build", "kvgate"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--gates", help="gate bank for the learned run (skipped without it)")
    ap.add_argument("--kv-share", type=float, default=0.25, help="KV share the learned run keeps")
    ap.add_argument("--kvgate-kv-type", default="f16", choices=["f32", "f16", "q8_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--prompt-tokens", default="512,2048,4096,7600",
                    help="comma-separated prompt lengths (llama.cpp tokens)")
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--batch", type=int, default=512, help="llama.cpp n_batch = n_ubatch")
    ap.add_argument("--kv-type", choices=["f16", "f32"], default="f16",
                    help="llama.cpp KV cache type (its default is f16)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention on")
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for llama.cpp: its OpenMP threads otherwise spin at "
                         "barriers and collapse when the machine is oversubscribed")
    ap.add_argument("--out", help="directory for compare.json and compare.png")
    ap.add_argument("--prompt-out", help="also save each prompt text as PREFIX.<tokens>")
    ap.add_argument("--also-avx2", action="store_true",
                    help="also run kvgate's full cache on its AVX2 kernels (KVGATE_ISA=avx2), for AVX-512 CPUs")
    ap.add_argument("--skip-kvgate", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_prompt-file", dest="prompt_file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        args.prompt_tokens = int(args.prompt_tokens)
        llama_worker(args)
        return 0

    import llama_cpp

    lengths = [int(x) for x in str(args.prompt_tokens).split(",") if x.strip()]
    if not lengths or min(lengths) < 1:
        raise SystemExit(f"--prompt-tokens: expected positive lengths, got {args.prompt_tokens!r}")
    if not os.path.exists(args.model):
        raise SystemExit(f"model not found: {args.model}")
    if args.gates and not os.path.exists(args.gates):
        raise SystemExit(f"gate file not found: {args.gates}")
    if not args.skip_kvgate and not os.access(args.kvgate, os.X_OK):
        raise SystemExit(f"kvgate executable not found: {args.kvgate} (build it, or pass --kvgate)")

    result = {
        "model": os.path.basename(args.model),
        "threads": args.threads,
        "n_predict": args.n_predict,
        "repeat": args.repeat,
        "kv_share": args.kv_share,
        "kvgate_kv_type": args.kvgate_kv_type,
        "llama_cpp_python": llama_cpp.__version__,
        "llama_build": reference_notes(),
        "llama_settings": {"n_batch": args.batch, "n_ubatch": args.batch, "kv_type": args.kv_type,
                           "flash_attn": args.flash_attn,
                           "omp_wait_policy": "PASSIVE" if args.omp_passive else os.environ.get("OMP_WAIT_POLICY", "default")},
        "cpu": cpu_name(),
        "cpu_avx512": cpu_has_avx512(),
        "lengths": [],
    }
    with tempfile.TemporaryDirectory(prefix="kvgate-bench-") as work:
        for n in lengths:
            result["lengths"].append(one_length(args, n, work))

    print(f"best of {args.repeat}, {args.threads} threads, {args.n_predict} decoded; ratios kvgate / llama.cpp:",
          file=sys.stderr)
    print(f"{'prompt':>7} {'decode full':>12} {'decode learned':>15} {'prefill full':>13} {'prefill learned':>16}",
          file=sys.stderr)
    for row in result["lengths"]:
        full = row.get("ratio_kvgate_full_over_llama", {})
        learned = row.get("ratio_kvgate_learned_over_llama", {})
        avx2 = row.get("ratio_kvgate_full_avx2_over_llama", {})
        fmt = lambda d, k: f"{d[k]:.2f}x" if k in d else "-"
        extra = f"  (AVX2 kernels: decode {fmt(avx2, 'decode')}, prefill {fmt(avx2, 'prefill')})" if avx2 else ""
        print(f"{row['prompt_tokens_llama_tokenizer']:>7} {fmt(full, 'decode'):>12} {fmt(learned, 'decode'):>15} "
              f"{fmt(full, 'prefill'):>13} {fmt(learned, 'prefill'):>16}{extra}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        tmp = os.path.join(args.out, "compare.json.tmp")
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, os.path.join(args.out, "compare.json"))
        plot(result, args.out)
    return 0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def reference_notes() -> str:
    """How scripts/setup_reference.sh built this venv's llama.cpp (e.g. AMX left out), if it said."""
    try:
        with open(os.path.join(sys.prefix, "kvgate-reference.txt")) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


if __name__ == "__main__":
    sys.exit(main())
