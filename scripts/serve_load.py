#!/usr/bin/env python3
"""Bounded load on a running `kvgate serve` (loopback only, standard library only).

For each concurrency level, that many clients stream chat completions at once (each sends
--requests requests in turn); reports total decode tokens/s (completion tokens over the wall
time of the level), time to first token p50/p99, and the time per output token after the first
(TPOT p50); decode_tok_s_steady = clients / mean TPOT is the total decode rate while every client
streams, prompts' prefill left out. One JSON line per level.

  scripts/serve_load.py --port 8080 --clients 1 4 8 --requests 2 --max-tokens 64
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def one_request(url, body, timeout):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    ttft, t_last, n_tokens = None, None, 0
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if event.get("usage"):
                n_tokens = event["usage"]["completion_tokens"]
            for c in event.get("choices", []):
                if c.get("delta", {}).get("content"):
                    t_last = time.monotonic() - t0
                    if ttft is None:
                        ttft = t_last
    # time per output token after the first (None with fewer than 2 tokens)
    tpot = (t_last - ttft) / (n_tokens - 1) if ttft is not None and n_tokens > 1 else None
    return ttft, tpot, n_tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=2, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--policy", default=None, help='kv_policy JSON, e.g. \'{"name":"h2o","budget":64}\'')
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--distinct-prompts", action="store_true",
                    help="start every request with its own system message, so that prompts share "
                         "no more than the template's first tokens (the server's prefix sharing "
                         "then has next to nothing to reuse)")
    a = ap.parse_args()
    url = f"http://127.0.0.1:{a.port}/v1/chat/completions"
    for n in a.clients:
        ttfts, tpots, tokens, errors = [], [], [], []
        lock = threading.Lock()

        def client(i):
            for j in range(a.requests):
                messages = [{"role": "user", "content": f"Write a short story about robot number {i * 100 + j}."}]
                if a.distinct_prompts:
                    messages.insert(0, {"role": "system", "content": f"{(i * 7919 + j * 104729 + n * 31) % 100000:05d} is your "
                                                                       "call sign. You are a helpful assistant."})
                body = {"messages": messages,
                        "max_tokens": a.max_tokens, "temperature": 0.7, "seed": i * 100 + j, "stream": True,
                        "stream_options": {"include_usage": True}}
                if a.policy:
                    body["kv_policy"] = json.loads(a.policy)
                try:
                    ttft, tpot, k = one_request(url, body, a.timeout)
                    with lock:
                        if ttft is not None:
                            ttfts.append(ttft)
                        if tpot is not None:
                            tpots.append(tpot)
                        tokens.append(k)
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    with lock:
                        errors.append(str(e))

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        print(json.dumps({"clients": n, "requests": len(tokens), "errors": len(errors),
                          "completion_tokens": sum(tokens), "wall_s": round(wall, 2),
                          "decode_tok_s_total": round(sum(tokens) / wall, 1),
                          "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
                          "ttft_mean_s": statistics.mean(ttfts) if ttfts else None,
                          "tpot_p50_ms": round(1000 * percentile(tpots, 50), 2) if tpots else None,
                          "decode_tok_s_steady": round(n / statistics.mean(tpots), 1) if tpots else None}),
              flush=True)
        if errors:
            print("errors:", errors[:3], flush=True)


if __name__ == "__main__":
    main()
