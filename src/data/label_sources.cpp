#include "data/label_sources.h"

#include <algorithm>
#include <cctype>
#include <random>

#include <fmt/format.h>

#include "common/error.h"

namespace kvgate {

namespace {

// Training wordings: people and things that own values, never the suite's "special magic
// numbers" of hyphenated keys or its variable chains.
const char* const k_people[] = {"Alice", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Julia",
                                "Kofi", "Lena", "Marco", "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"};
const char* const k_things[] = {"locker code", "room number", "badge id", "parcel number", "seat number",
                                "account pin", "order number", "table number"};
const char* const k_cities[] = {"Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Perth", "Bergen", "Cusco",
                                "Dakar", "Hanoi", "Lyon", "Tbilisi"};

std::string draw_value(std::mt19937_64& rng) {
  if (rng() % 4 == 0) return k_cities[rng() % std::size(k_cities)];
  const int n_digits = 3 + static_cast<int>(rng() % 6);  // 3-8 digits
  std::string s(1, static_cast<char>('1' + rng() % 9));
  for (int i = 1; i < n_digits; ++i) s += static_cast<char>('0' + rng() % 10);
  return s;
}

// A made-up name of 2-3 syllables ("Toravik"): no list to memorise.
std::string invented_name(std::mt19937_64& rng) {
  static const char* const k_onsets[] = {"b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br",
                                         "dr", "kr", "st", "th", "sh"};
  static const char* const k_vowels[] = {"a", "e", "i", "o", "u", "ai", "ou"};
  static const char* const k_codas[] = {"", "", "", "n", "r", "k", "s", "l"};
  std::string s;
  const int n_syllables = 2 + static_cast<int>(rng() % 2);
  for (int i = 0; i < n_syllables; ++i) {
    s += k_onsets[rng() % std::size(k_onsets)];
    s += k_vowels[rng() % std::size(k_vowels)];
    if (i + 1 == n_syllables) s += k_codas[rng() % std::size(k_codas)];
  }
  s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

}  // namespace

const std::vector<std::string>& label_source_names() {
  static const std::vector<std::string> names = {"future", "reconstruct", "answer"};
  return names;
}

std::vector<std::string> parse_label_sources(std::string_view list) {
  std::vector<bool> on(label_source_names().size(), false);
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    const std::string name(list.substr(start, comma - start));
    const auto& known = label_source_names();
    const auto it = std::find(known.begin(), known.end(), name);
    if (it == known.end()) {
      fail("unknown label source '{}' (known: {}; a comma list merges them)", name, fmt::join(known, ", "));
    }
    on[it - known.begin()] = true;
    start = comma + 1;
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < on.size(); ++i)
    if (on[i]) out.push_back(label_source_names()[i]);
  return out;
}

answer_document make_answer_document(const std::string& text, uint64_t seed) {
  std::mt19937_64 rng(seed);
  answer_document d;
  // Keys: (owner, thing) pairs, 1-6 of them. An owner is a listed person or an invented name, so
  // the gates meet identifiers they have never seen (the suite's keys are unseen words too) and
  // cannot learn a fixed list of names. A quarter of the keys hold 2-3 values, stated apart and
  // asked for together, as several facts about one subject are.
  const int n_keys = 1 + static_cast<int>(rng() % 6);
  struct key {
    std::string owner, thing;
    std::vector<std::string> values;
  };
  std::vector<key> keys;
  for (int k = 0; k < n_keys; ++k) {
    key f;
    // Distinct pairs, so each question has one answer.
    do {
      f.owner = rng() % 2 ? k_people[rng() % std::size(k_people)] : invented_name(rng);
      f.thing = k_things[rng() % std::size(k_things)];
    } while (std::any_of(keys.begin(), keys.end(),
                         [&](const key& o) { return o.owner == f.owner && o.thing == f.thing; }));
    const int n_values = rng() % 4 == 0 ? 2 + static_cast<int>(rng() % 2) : 1;
    while (static_cast<int>(f.values.size()) < n_values) {
      std::string v = draw_value(rng);
      if (std::find(f.values.begin(), f.values.end(), v) == f.values.end()) f.values.push_back(std::move(v));
    }
    keys.push_back(std::move(f));
  }
  static const char* const k_statements[] = {"For the record, the {1} of {0} is {2}.", "{0}'s {1} is {2}.",
                                             "Please note: {0} has {1} {2}."};
  static const char* const k_more[] = {"Another {1} of {0} is {2}.", "{0} also has {1} {2}.",
                                       "One more {1} belongs to {0}: {2}."};
  struct fact {
    std::string statement;
    double depth;
  };
  std::vector<fact> facts;
  for (const key& f : keys) {
    for (size_t n = 0; n < f.values.size(); ++n) {
      const char* form = n == 0 ? k_statements[rng() % std::size(k_statements)] : k_more[rng() % std::size(k_more)];
      facts.push_back({fmt::format(fmt::runtime(form), f.owner, f.thing, f.values[n]),
                       std::uniform_real_distribution<double>(0.0, 1.0)(rng)});
    }
  }
  // A key's values in the order they were stated: its statements' depths sorted.
  for (size_t i = 0, k = 0; k < keys.size(); i += keys[k].values.size(), ++k) {
    std::vector<double> depths;
    for (size_t n = 0; n < keys[k].values.size(); ++n) depths.push_back(facts[i + n].depth);
    std::sort(depths.begin(), depths.end());
    for (size_t n = 0; n < depths.size(); ++n) facts[i + n].depth = depths[n];
  }
  std::string context = text;
  // Deepest first, each at the start of the line at or before its depth.
  std::vector<size_t> order(facts.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return facts[a].depth > facts[b].depth; });
  for (size_t k : order) {
    size_t off = static_cast<size_t>(facts[k].depth * context.size());
    const size_t line = off == 0 ? std::string::npos : context.rfind('\n', off - 1);
    off = line == std::string::npos ? 0 : line + 1;
    context.insert(off, facts[k].statement + "\n");
    d.facts.push_back(facts[k].statement);
  }
  d.context = std::move(context);
  // Every key is asked, in a random order: a gate cannot know which fact a later question will
  // want, so a fact that is never asked must not teach it that facts are not worth keeping.
  std::vector<size_t> asked(keys.size());
  for (size_t k = 0; k < asked.size(); ++k) asked[k] = k;
  std::shuffle(asked.begin(), asked.end(), rng);
  d.question = asked.size() == 1 ? "Question:" : "Questions:";
  for (size_t n = 0; n < asked.size(); ++n) {
    const key& f = keys[asked[n]];
    const char* space = n == 0 ? "" : " ";
    if (f.values.size() == 1) {
      d.question += fmt::format(" {}hat is the {} of {}?", n == 0 ? "w" : "W", f.thing, f.owner);
      d.answer += fmt::format("{}The {} of {} is {}.", space, f.thing, f.owner, f.values[0]);
    } else {
      const std::string last = f.values.back();
      const std::vector<std::string> rest(f.values.begin(), f.values.end() - 1);
      d.question += fmt::format(" {}hat are all the {}s of {}?", n == 0 ? "w" : "W", f.thing, f.owner);
      d.answer += fmt::format("{}The {}s of {} are {} and {}.", space, f.thing, f.owner, fmt::join(rest, ", "), last);
    }
  }
  return d;
}

}  // namespace kvgate
