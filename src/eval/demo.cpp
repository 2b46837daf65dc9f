#include "eval/demo.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/error.h"
#include "eval/plot_util.h"  // html_escape

namespace kvgate::eval {

namespace {

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the sequence a lead byte starts; 0 for a byte that cannot start one.
int sequence_length(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

// Continuation bytes still missing when s ends inside a character that is valid so far; 0 when
// s ends on a character boundary (or in bytes that no continuation could make valid).
int missing_continuations(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if (is_continuation(c)) continue;
    const int len = sequence_length(c);
    return len > static_cast<int>(back) ? len - static_cast<int>(back) : 0;
  }
  return 0;
}

// Shade classes: k0 = no head holds the token, k10 = every head, k1..k9 = some, darker with the
// share. Classes instead of inline styles keep a 2000-token page small.
int shade_class(long sum, long n_full) {
  if (sum == 0) return 0;
  if (sum == n_full) return 10;
  const double share = static_cast<double>(sum) / n_full;
  return std::clamp(1 + static_cast<int>(share * 9), 1, 9);
}

std::string format_bytes(size_t b) {
  if (b >= (size_t(1) << 20)) return fmt::format("{:.2f} MiB", b / double(1 << 20));
  return fmt::format("{:.1f} KiB", b / 1024.0);
}

std::string css() {
  std::string s = R"(body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a;line-height:1.45}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
.qa{white-space:pre-wrap;background:#f5f7fa;border-left:4px solid #1565c0;padding:.6rem .9rem}
table.fig{border-collapse:collapse}table.fig td{padding:.15rem .9rem .15rem 0}table.fig td.v{font-weight:600;font-variant-numeric:tabular-nums}
.legend span.sw{display:inline-block;margin-right:1.2rem;padding:0 .3rem}
.text{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:.82rem;white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.75;border:1px solid #ddd;border-radius:4px;padding:1rem}
.sink{border-bottom:2px solid #1565c0}.win{border-bottom:2px solid #2e7d32}
.k0{color:#c4c4c4}.k10{color:#1a1a1a}
)";
  // k1..k9: grey from light to dark on a pale amber ground, so "some heads" stays apart from
  // both ends.
  for (int i = 1; i <= 9; ++i) {
    const double share = (i - 0.5) / 9.0;
    const int g = static_cast<int>(196 - share * (196 - 26));
    s += fmt::format(".k{}{{color:rgb({},{},{});background:#fff1cc}}\n", i, g, g, g);
  }
  return s;
}

}  // namespace

std::string sanitize_utf8(const std::string& s) {
  static const char replacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int len = sequence_length(c);
    // Second-byte ranges that rule out overlong forms, surrogates and code points past U+10FFFF.
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    int ok = len == 0 ? 0 : 1;  // bytes of a valid prefix
    while (ok > 0 && ok < len && i + ok < s.size()) {
      const auto d = static_cast<unsigned char>(s[i + ok]);
      const bool fits = ok == 1 ? (d >= lo && d <= hi) : is_continuation(d);
      if (!fits) break;
      ++ok;
    }
    if (len > 0 && ok == len) {
      out.append(s, i, len);
      i += len;
    } else {
      out += replacement;  // one U+FFFD per maximal invalid prefix (Unicode's recommended practice)
      i += std::max(ok, 1);
    }
  }
  return out;
}

std::vector<token_group> group_utf8_tokens(std::span<const std::string> tokens) {
  std::vector<token_group> groups;
  size_t i = 0;
  while (i < tokens.size()) {
    token_group g{i, i + 1};
    std::string bytes = tokens[i];
    // Merge while the bytes end inside a character and the next token carries on with
    // continuation bytes; a character that is never completed ends the group (and is drawn as
    // U+FFFD) rather than swallowing the tokens after it.
    for (int need = missing_continuations(bytes); need > 0 && g.end < tokens.size();
         need = missing_continuations(bytes)) {
      const std::string& next = tokens[g.end];
      const size_t n_check = std::min<size_t>(need, next.size());
      bool carries_on = true;
      for (size_t j = 0; j < n_check; ++j) carries_on &= is_continuation(static_cast<unsigned char>(next[j]));
      if (!carries_on) break;
      bytes += next;
      ++g.end;
    }
    groups.push_back(g);
    i = g.end;
  }
  return groups;
}

std::string render_demo_html(const demo_page& page) {
  const size_t n_tok = page.token_bytes.size();
  if (page.n_heads < 1) fail("demo page: n_heads is {}, must be >= 1", page.n_heads);
  if (page.kept_heads.size() < n_tok) {
    fail("demo page: {} head counts for {} tokens (one count per prompt position is needed)",
         page.kept_heads.size(), n_tok);
  }
  for (size_t p = 0; p < n_tok; ++p) {
    if (page.kept_heads[p] < 0 || page.kept_heads[p] > page.n_heads) {
      fail("demo page: position {} is held by {} heads, outside 0..{}", p, page.kept_heads[p], page.n_heads);
    }
  }
  const demo_figures& f = page.figures;

  std::string h;
  h.reserve(4096 + n_tok * 80);
  h += "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n";
  h += "<title>kvgate demo: " + html_escape(f.policy) + "</title>\n<style>\n" + css() + "</style>\n</head>\n<body>\n";
  h += "<h1>What the model still remembers</h1>\n";
  h += "<h2>Question</h2>\n<div class='qa'>" + html_escape(sanitize_utf8(page.question)) + "</div>\n";
  h += "<h2>Answer</h2>\n<div class='qa'>" + html_escape(sanitize_utf8(page.answer)) + "</div>\n";

  h += "<h2>KV cache</h2>\n<table class='fig'>\n";
  auto row = [&](const std::string& label, const std::string& value) {
    h += "<tr><td>" + html_escape(label) + "</td><td class='v'>" + html_escape(value) + "</td></tr>\n";
  };
  row("policy", f.policy);
  row("prompt / answer tokens", fmt::format("{} / {}", f.prompt_tokens, f.answer_tokens));
  row("KV kept, mean over tokens", fmt::format("{:.1f}%", 100 * f.kv_share_mean));
  row("KV kept at the peak", fmt::format("{:.1f}%", 100 * f.kv_share_peak));
  row("KV kept at the end", fmt::format("{:.1f}%", 100 * f.kept_share_final));
  row("peak KV memory", fmt::format("{} (a full cache holds {} at the end)", format_bytes(f.kv_bytes_peak),
                                    format_bytes(f.kv_bytes_full)));
  row("document tokens evicted by every head", fmt::format("{:.1f}%", 100 * f.doc_evicted_share));
  h += "</table>\n";

  h += fmt::format(
      "<h2>The prompt as the cache holds it at the end</h2>\n<p class='legend'>"
      "<span class='sw k10'>kept by all {0} heads</span>"
      "<span class='sw k5'>kept by some (darker: more)</span>"
      "<span class='sw k0'>evicted by every head</span>"
      "<span class='sw sink'>sink</span><span class='sw win'>final window</span>"
      "<br><small>A head is one KV head of one layer; hover a token for its position and count.</small></p>\n",
      page.n_heads);

  h += "<div class='text'>";
  for (const token_group& g : group_utf8_tokens(page.token_bytes)) {
    std::string bytes;
    long sum = 0;
    std::string counts;
    bool sink = false, win = false;
    for (size_t p = g.begin; p < g.end; ++p) {
      bytes += page.token_bytes[p];
      sum += page.kept_heads[p];
      counts += fmt::format("{}{}/{}", p == g.begin ? "" : ", ", page.kept_heads[p], page.n_heads);
      sink |= static_cast<int64_t>(p) < page.sinks;
      win |= static_cast<int64_t>(p) >= page.window_begin;
    }
    const std::string where = g.end - g.begin == 1 ? fmt::format("pos {}", g.begin)
                                                   : fmt::format("pos {}-{}", g.begin, g.end - 1);
    std::string cls = fmt::format("k{}", shade_class(sum, static_cast<long>(page.n_heads) * (g.end - g.begin)));
    if (sink) cls += " sink";
    if (win) cls += " win";
    h += fmt::format("<span class='{}' title='{}: kept by {} heads'>{}</span>", cls, where, counts,
                     html_escape(sanitize_utf8(bytes)));
  }
  h += "</div>\n</body>\n</html>\n";
  return h;
}

}  // namespace kvgate::eval
