#!/usr/bin/env python3
"""The chat page of `kvgate serve` in headless Chromium, driven over the DevTools protocol.

Loads GET /, sets an evicting kv_policy, sends a message through the form, and checks, while the
reply arrives and after it, what a user sees: the reply text growing in several steps (streamed),
the figures line ("KV kept ..."), and the KV strip: one shaded span per conversation token whose
title says how many heads hold it, some held by fewer than all (the policy evicted). Saves a
screenshot of the page.

  test_chat_page.py CHROMIUM SERVER_URL SCREENSHOT.png
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # Debian's python3-websocket


class devtools:
    """One page target of a Chromium started with --remote-debugging-port."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")


def fail(message):
    print("FAIL:", message)
    sys.exit(1)


def main():
    chromium, server, shot = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    profile = tempfile.mkdtemp(prefix="kvgate-chromium-")
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                             "--window-size=1000,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        for _ in range(600):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            if proc.poll() is not None:
                fail(f"chromium exited with {proc.returncode}")
            time.sleep(0.1)
        else:
            fail("chromium did not open its DevTools port")
        port = open(port_file).read().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        dt = devtools(page["webSocketDebuggerUrl"])
        dt.call("Page.enable")
        dt.call("Page.navigate", url=server + "/")
        for _ in range(300):
            if dt.eval("document.readyState") == "complete" and dt.eval("!!document.getElementById('f')"):
                break
            time.sleep(0.1)
        else:
            fail("the page did not load")
        if dt.eval("document.title") != "kvgate chat":
            fail(f"unexpected title {dt.eval('document.title')!r}")

        # An evicting policy small enough that the reply outgrows sinks + window + budget.
        dt.eval("""(() => {
          document.getElementById('policy').value = '{"name":"h2o","sinks":4,"window":8,"budget":8}';
          document.getElementById('max').value = '32';
          document.getElementById('text').value = 'Write two sentences about the sea.';
          document.getElementById('f').requestSubmit();
        })()""")

        lengths = []
        deadline = time.time() + 240
        while time.time() < deadline:
            state = dt.eval("""(() => {
              const a = document.querySelector('#log .assistant');
              if (!a) return null;
              const strip = a.querySelector('.strip'), figs = a.querySelector('.figs');
              return {text: a.firstChild && a.firstChild.nodeType === 3 ? a.firstChild.textContent : a.textContent,
                      figs: figs ? figs.textContent : null,
                      spans: strip ? [...strip.querySelectorAll('span')].map(s => s.title) : null};
            })()""")
            if state and state["text"] and (not lengths or lengths[-1] != len(state["text"])):
                lengths.append(len(state["text"]))
            if state and state["spans"] is not None:
                break
            time.sleep(0.02)
        else:
            fail(f"no finished reply within 240 s (reply lengths seen: {lengths})")

        print("reply:", repr(state["text"]))
        print("figures:", state["figs"])
        print("reply lengths seen while streaming:", lengths)
        if len(lengths) < 3:
            fail(f"the reply did not arrive in steps (lengths seen {lengths})")
        if "h2o: KV kept" not in (state["figs"] or ""):
            fail(f"figures line missing or wrong: {state['figs']!r}")
        spans = state["spans"]
        held = []
        for title in spans:
            # "position i: k of n heads"
            k, n = title.split(": ")[1].split(" heads")[0].split(" of ")
            held.append((int(k), int(n)))
        print(f"strip: {len(spans)} tokens, held by fewer than all heads: {sum(k < n for k, n in held)}, "
              f"by none: {sum(k == 0 for k, _ in held)}")
        if len(spans) < 20:
            fail(f"the KV strip shows {len(spans)} tokens, fewer than the conversation holds")
        if not any(k < n for k, n in held) or not all(k == n for k, n in held[:4]):
            fail("the strip does not show eviction (or the sinks were evicted)")

        png = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
        with open(shot, "wb") as f:
            f.write(png)
        print(f"screenshot: {shot} ({len(png)} bytes)")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
