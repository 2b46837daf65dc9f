#!/usr/bin/env python3
"""How many long conversations one --kv-memory budget admits at once, per kv_policy (loopback only).

Sends --conversations streaming requests with a --tokens-token prompt at once, samples /metrics
for --seconds (peak requests_processing and kv_cache_bytes), then disconnects every client (the
server cancels them). Run against `kvgate serve --parallel P --kv-memory MB`.

  scripts/serve_capacity.py --port 8080 --policy '{"name":"h2o","budget":256}'
"""
import argparse
import http.client
import json
import threading
import time


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith("kvgate:") and "{" not in line:
            k, v = line.split()
            out[k[len("kvgate:"):]] = float(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--policy", default='{"name":"full"}')
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    prompt = " ".join(["the"] * a.tokens)  # one token per word for SmolLM2's tokenizer
    stop = threading.Event()
    statuses = []

    def client():
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=300)
        body = {"prompt": prompt, "max_tokens": 16, "stream": True, "kv_policy": json.loads(a.policy)}
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        statuses.append(r.status)
        while r.status == 200 and not stop.is_set() and r.read(1):
            pass
        c.close()

    ts = [threading.Thread(target=client) for _ in range(a.conversations)]
    for t in ts:
        t.start()
    peak_proc, peak_bytes, cap = 0, 0, 0
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        m = metrics(a.port)
        peak_proc = max(peak_proc, int(m["requests_processing"]))
        peak_bytes = max(peak_bytes, int(m["kv_cache_bytes"]))
        cap = int(m["kv_cache_capacity_bytes"])
        time.sleep(0.2)
    stop.set()
    for t in ts:
        t.join()
    print(json.dumps({"policy": json.loads(a.policy), "prompt_tokens": a.tokens, "sent": a.conversations,
                      "peak_running": peak_proc, "peak_kv_bytes": peak_bytes, "kv_capacity_bytes": cap,
                      "statuses": {str(s): statuses.count(s) for s in set(statuses)}}))


if __name__ == "__main__":
    main()
