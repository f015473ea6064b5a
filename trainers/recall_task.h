// A built-in synthetic associative-recall task: key-value pairs are placed early in the
// sequence, random filler follows, and at the end every key is queried again. The queries
// sit further from the pairs than the sliding window reaches, so only retrieval through
// HSA can answer. Deterministic from (seed, batch index).
//
// Token layout inside the model's vocabulary:
//   0 = BOS, 1 = KEY marker, 2 = QUERY marker, keys [3, 3+keys), values next, filler after.
// A pair is "KEY k v"; a query is "QUERY k v", where the prediction at k (of v) is the
// answer and the only kind of position the loss mask selects. Later query rounds may
// retrieve an earlier round's chunk instead of the pair's: still retrieval through HSA.
#pragma once

#include <cstdint>

#include "core/json.h"
#include "core/tensor.h"

namespace hsa {

struct RecallTaskConfig {
    int64_t pairs = 1;        // key-value pairs per sequence (all queried at the end)
    int64_t keys = 16;        // distinct keys
    int64_t values = 8;       // distinct values (chance accuracy = 1/values)
    int64_t filler = 37;      // distinct filler tokens
    int64_t rounds = 6;       // query rounds at the end; each round is window+1 tokens after
                              // the previous round's answers, so SWA cannot copy them either

    int64_t vocab_needed() const { return 3 + keys + values + filler; }
    void validate(int64_t seq_len, int64_t window, int64_t vocab_size) const;
    int64_t first_query_position(int64_t seq_len, int64_t window) const;
    static RecallTaskConfig from_json(const Json& section);
    Json to_json() const;
};

struct RecallBatch {
    Tensor tokens;   // i32 [B, T]
    Tensor targets;  // i32 [B, T]: next token
    Tensor mask;     // f32 [B, T]: 1 at answer positions
    int64_t answers = 0;
};

RecallBatch make_recall_batch(const RecallTaskConfig& task, int64_t batch, int64_t seq_len, int64_t window,
                              uint64_t seed, uint64_t batch_index);

// Fraction of answer positions whose arg-max logit equals the target; logits [B, T, V].
double recall_accuracy(const Tensor& logits, const RecallBatch& batch);

}  // namespace hsa
