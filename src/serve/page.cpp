#include "serve/page.h"

namespace kvgate::serve {

const char* chat_page_html() {
  return R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvgate chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:860px;margin:1em auto;padding:0 1em;color:#222}
#log .msg{margin:.6em 0;padding:.5em .7em;border-radius:6px;white-space:pre-wrap}
.user{background:#eef3ff}.assistant{background:#f4f4f4}
.figs{font-size:.8em;color:#555;margin-top:.3em}
.strip{font-family:monospace;font-size:.75em;line-height:1.6;margin-top:.3em;white-space:pre-wrap;word-break:break-all}
.strip span{border-radius:2px}
form{display:flex;gap:.5em;margin-top:1em}#text{flex:1;padding:.5em}
#opts{font-size:.85em;margin:.5em 0;display:flex;gap:.6em;flex-wrap:wrap;align-items:center}
#opts input{width:18em}
</style></head><body>
<h2>kvgate chat</h2>
<div id="opts">
<label>kv_policy <input id="policy" value='{"name":"full"}'></label>
<label>max_tokens <input id="max" value="256" style="width:4em"></label>
<label>API key <input id="key" type="password" style="width:8em"></label>
<button id="reset" type="button">new conversation</button>
</div>
<div id="log"></div>
<form id="f"><input id="text" autocomplete="off" placeholder="Say something"><button>Send</button></form>
<script>
const log = document.getElementById('log');
let messages = [];
function add(role, text) {
  const d = document.createElement('div'); d.className = 'msg ' + role; d.textContent = text;
  log.appendChild(d); return d;
}
function strip(kv) {
  const s = document.createElement('div'); s.className = 'strip';
  kv.tokens.forEach((t, i) => {
    const sp = document.createElement('span');
    const share = kv.kept_heads[i] / kv.n_heads;
    sp.style.background = `rgba(30,110,230,${(0.08 + 0.62 * share).toFixed(3)})`;
    sp.title = `position ${i}: ${kv.kept_heads[i]} of ${kv.n_heads} heads`;
    sp.textContent = t; s.appendChild(sp);
  });
  return s;
}
document.getElementById('reset').onclick = () => { messages = []; log.innerHTML = ''; };
document.getElementById('f').onsubmit = async (e) => {
  e.preventDefault();
  const input = document.getElementById('text');
  const text = input.value.trim(); if (!text) return; input.value = '';
  messages.push({role: 'user', content: text}); add('user', text);
  const out = add('assistant', '');
  let policy;
  try { policy = JSON.parse(document.getElementById('policy').value); } catch { out.textContent = 'kv_policy is not JSON'; return; }
  const headers = {'Content-Type': 'application/json'};
  const key = document.getElementById('key').value; if (key) headers.Authorization = 'Bearer ' + key;
  const body = {messages, stream: true, kv_strip: true, kv_policy: policy,
                max_tokens: parseInt(document.getElementById('max').value) || 256};
  const res = await fetch('/v1/chat/completions', {method: 'POST', headers, body: JSON.stringify(body)});
  if (!res.ok) { out.textContent = (await res.json()).error.message; messages.pop(); return; }
  const reader = res.body.getReader(); const dec = new TextDecoder(); let buf = '', reply = '', last = null;
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true});
    let p;
    while ((p = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, p); buf = buf.slice(p + 2);
      if (!ev.startsWith('data: ')) continue;
      const data = ev.slice(6); if (data === '[DONE]') continue;
      const j = JSON.parse(data);
      if (j.error) { out.textContent += '\n[error: ' + j.error.message + ']'; continue; }
      for (const c of j.choices || []) { if (c.delta && c.delta.content) { reply += c.delta.content; out.textContent = reply; } }
      if (j.kv) last = j;
    }
  }
  messages.push({role: 'assistant', content: reply});
  if (last) {
    const f = document.createElement('div'); f.className = 'figs'; const kv = last.kv, tm = last.timings;
    f.textContent = `${last.kv_policy.name}: KV kept ${(100 * kv.share_kept).toFixed(1)}% ` +
      `(${(kv.bytes / 1024).toFixed(0)} of ${(kv.bytes_full / 1024).toFixed(0)} KiB), ` +
      `${tm.predicted_n} tokens at ${tm.predicted_per_second.toFixed(1)} tok/s, reused ${tm.cache_n} cached tokens`;
    out.appendChild(f); out.appendChild(strip(kv));
  }
};
</script></body></html>
)HTML";
}

}  // namespace kvgate::serve
