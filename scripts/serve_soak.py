#!/usr/bin/env python3
"""Bounded soak test of a running `kvgate serve` (loopback only, standard library only).

N clients for D seconds, mixed kv_policies; some disconnect mid-stream, some send malformed
bodies. Fails (exit 1) on any 5xx other than 503, on a connection error while the server should
be up, or when the server's RSS after the run exceeds its RSS after warm-up by more than 10%.

  scripts/serve_soak.py --port 8080 --pid $(pidof kvgate) --clients 16 --seconds 60
"""
import argparse
import http.client
import json
import random
import threading
import time

POLICIES = [None, {"name": "full"}, {"name": "h2o", "budget": 32, "window": 16},
            {"name": "streaming", "window": 32}, {"name": "tova", "budget": 16},
            {"name": "knorm", "threshold": 0.5}, {"name": "random", "budget": 16, "seed": 3},
            {"name": "snapkv", "budget": 32, "window": 16}, {"name": "keydiff", "budget": 16}]
MALFORMED = [b'{"messages": [', b'[]', b'{"messages": "x"}', b'{"prompt": [-1]}', b'{"prompt": "x", "top_p": 7}',
             b'{"prompt": "x", "kv_policy": {"name": "nope"}}', b'\xff\xfe', b'{"prompt": "x", "max_tokens": -9}']


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=24)
    a = ap.parse_args()
    counts, bad, lock = {}, [], threading.Lock()

    def note(key):
        with lock:
            counts[key] = counts.get(key, 0) + 1

    def request(rng, deadline):
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=120)
        kind = rng.random()
        try:
            if kind < 0.2:
                conn.request("POST", "/v1/completions", body=rng.choice(MALFORMED), headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                note(r.status)
                if r.status != 400:
                    bad.append(f"malformed body got {r.status}")
                return
            body = {"messages": [{"role": "user", "content": f"Tell me about the number {rng.randint(0, 999)}."}],
                    "max_tokens": a.max_tokens, "temperature": 0.8, "stream": kind < 0.7}
            p = rng.choice(POLICIES)
            if p:
                body["kv_policy"] = p
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            note(r.status)
            if r.status >= 500 and r.status != 503:
                bad.append(f"status {r.status}: {r.read()[:200]}")
                return
            if body["stream"] and kind < 0.4:
                r.read(300)  # a client that leaves mid-stream
                conn.close()
                note("disconnected")
                return
            data = r.read()
            if r.status == 200 and body["stream"] and not data.rstrip().endswith(b"data: [DONE]"):
                bad.append("stream without [DONE]")
        except Exception as e:  # noqa: BLE001
            if time.monotonic() < deadline:
                bad.append(f"connection error: {e}")
        finally:
            conn.close()

    def client(i, deadline):
        rng = random.Random(i)
        while time.monotonic() < deadline:
            request(rng, deadline)

    def run(seconds, n):
        deadline = time.monotonic() + seconds
        ts = [threading.Thread(target=client, args=(i, deadline)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    run(min(20.0, a.seconds / 4), a.clients)  # warm-up: every slot and policy once
    time.sleep(1)
    rss_warm = rss_kb(a.pid)
    counts.clear()
    run(a.seconds, a.clients)
    time.sleep(1)
    rss_end = rss_kb(a.pid)
    growth = (rss_end - rss_warm) / max(1, rss_warm)
    print(json.dumps({"clients": a.clients, "seconds": a.seconds, "statuses": {str(k): v for k, v in counts.items()},
                      "rss_warm_mb": round(rss_warm / 1024, 1), "rss_end_mb": round(rss_end / 1024, 1),
                      "rss_growth": round(growth, 4), "problems": bad[:5], "n_problems": len(bad)}))
    if bad or growth > 0.10:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
