// The label sources of `kvgate collect --labels` (DESIGN.md, "Other label sources"): which
// attention a token's score is the max of, and the runs that produce it.
//   future       the seed's label: attention from the queries W+1 .. W+horizon tokens later
//   reconstruct  KVzip: after the document, a repeat instruction and the document again,
//                teacher-forced; attention from the copy's queries (one chunk: a document is at
//                most --ctx tokens, KVzip's chunk size is 2048)
//   answer       synthetic retrieval documents: facts inserted at random depths of the training
//                text, a question after it and the answer teacher-forced; attention from the
//                answer's tokens, with no horizon
// Sources merge by max of their scores; the label is score >= tau. The wordings of the answer
// documents differ from the retrieval suite's (eval/retrieval.h), which measures generalisation.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvgate {

// The known sources, in canonical order.
const std::vector<std::string>& label_source_names();

// "future,answer" -> {"future", "answer"} in canonical order, each once. Throws error naming an
// unknown source, or for an empty list.
std::vector<std::string> parse_label_sources(std::string_view list);

// The instruction between a document and its copy (KVzip's first-chunk prompt).
inline constexpr const char* k_repeat_instruction = "\n\nRepeat the previous context exactly.\n";

// One synthetic retrieval document over a training text.
struct answer_document {
  std::string context;   // the text with 1-18 facts inserted at line starts (1-6 keys, 1-3 values each)
  std::string question;  // asks for every key, in a random order (all of a key's values at once)
  std::string answer;    // states each key's values, in the question's order (teacher-forced)
  std::vector<std::string> facts;  // the inserted statements
  bool operator==(const answer_document&) const = default;
};

// Deterministic in (text, seed).
answer_document make_answer_document(const std::string& text, uint64_t seed);

}  // namespace kvgate
