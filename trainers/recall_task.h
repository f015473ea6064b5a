// A built-in synthetic associative-recall task: key-value pairs are placed early in the
// sequence, random filler follows, and at the end every key is queried again. The queries
// sit further from the pairs than the sliding window reaches, so only retrieval through
// HSA can answer. Deterministic from (seed, batch index).
//
// Token layout inside the model's vocabulary:
//   0 = BOS, 1 = KEY marker, 2 = QUERY marker, keys [3, 3+keys), values next, filler after.
// A pair is "KEY k v"; a query is "QUERY k v", where the prediction at k (of v) is the
// answer and the only kind of position the loss mask selects.
//
// Fed-back answers (answers_in_queries, the default): the v after each query is an input,
// so the answer also sits 3P + W + 1 tokens before the next round's key. A later round can
// then retrieve the previous round's chunk (near) instead of the pair's (far), and a model
// with two or more SWA layers can carry it through stacked windows with no retrieval at
// all (seen once: a tiny model answering 53% with retrieval off). Only the earliest round
// (the first query) must reach the pair. With answers_in_queries false a query is "QUERY
// k f" (f filler, the target at k is still v): values appear only in the pairs, and every
// answer needs retrieval of the far chunk. Harder: the tiny default trained 300 steps at
// 128 tokens stays at chance on it.
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
    int64_t rounds = 6;       // query rounds at the end, 3 * pairs + window tokens apart
    bool answers_in_queries = true;  // "QUERY k v" (true) or "QUERY k filler" (see above);
                                     // written to JSON only when false

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
