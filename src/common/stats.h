// Statistics shared by the trainer (gate/) and the evaluator (eval/): the one ROC AUC.
#pragma once

#include <cstdint>
#include <span>

namespace kvgate {

// Area under the ROC curve of scores against 0/1 labels: the probability that a random positive
// scores above a random negative, ties counting one half (Mann-Whitney U / (n_pos n_neg)), each
// pair weighted by the product of its weights when weights is not empty ([n], else all 1). NaN
// scores rank below every real score. NaN when either class has no weight. Throws error when the
// sizes differ.
double roc_auc(std::span<const float> scores, std::span<const uint8_t> labels,
               std::span<const float> weights = {});

}  // namespace kvgate
