#include "data/label_sources.h"

#include <algorithm>
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
  const int n_facts = 1 + static_cast<int>(rng() % 4);
  struct fact {
    std::string person, thing, value;
    double depth;
  };
  std::vector<fact> facts;
  for (int k = 0; k < n_facts; ++k) {
    fact f;
    // Distinct (person, thing) pairs, so the question has one answer.
    do {
      f.person = k_people[rng() % std::size(k_people)];
      f.thing = k_things[rng() % std::size(k_things)];
    } while (std::any_of(facts.begin(), facts.end(),
                         [&](const fact& o) { return o.person == f.person && o.thing == f.thing; }));
    f.value = draw_value(rng);
    f.depth = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    facts.push_back(f);
  }
  static const char* const k_statements[] = {"For the record, the {1} of {0} is {2}.", "{0}'s {1} is {2}.",
                                             "Please note: {0} has {1} {2}."};
  std::string context = text;
  // Deepest first, each at the start of the line at or before its depth.
  std::vector<size_t> order(facts.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return facts[a].depth > facts[b].depth; });
  for (size_t k : order) {
    const fact& f = facts[k];
    const std::string statement =
        fmt::format(fmt::runtime(k_statements[rng() % std::size(k_statements)]), f.person, f.thing, f.value);
    size_t off = static_cast<size_t>(f.depth * context.size());
    const size_t line = off == 0 ? std::string::npos : context.rfind('\n', off - 1);
    off = line == std::string::npos ? 0 : line + 1;
    context.insert(off, statement + "\n");
    d.facts.push_back(statement);
  }
  d.context = std::move(context);
  // Every fact is asked, in a random order: a gate cannot know which fact a later question will
  // want, so a fact that is never asked must not teach it that facts are not worth keeping.
  std::vector<size_t> asked(facts.size());
  for (size_t k = 0; k < asked.size(); ++k) asked[k] = k;
  std::shuffle(asked.begin(), asked.end(), rng);
  d.question = asked.size() == 1 ? "Question:" : "Questions:";
  for (size_t n = 0; n < asked.size(); ++n) {
    const fact& f = facts[asked[n]];
    d.question += fmt::format(" {}hat is the {} of {}?", n == 0 ? "w" : "W", f.thing, f.person);
    d.answer += fmt::format("{}The {} of {} is {}.", n == 0 ? "" : " ", f.thing, f.person, f.value);
  }
  return d;
}

}  // namespace kvgate
