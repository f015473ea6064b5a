// Where training batches come from. The trainer pulls [B, T] batches from a BatchSource and
// stores its state() in every checkpoint, so a resumed run sees exactly the batches the
// uninterrupted run would have seen. Implementations: the built-in recall task, text shards,
// task data, and a mixture of those (trainers/data_mixture.h).
#pragma once

#include <cstdint>

#include "core/json.h"
#include "core/tensor.h"

namespace hsa {

struct TrainBatch {
    Tensor tokens;         // i32 [B, T] (CPU)
    Tensor targets;        // i32 [B, T]: the next token at every position
    Tensor mask;           // f32 [B, T]: 1 where the loss counts (all real text, or a task's answer)
    int64_t answers = 0;   // number of task-answer positions in the batch (0 for plain text)
};

class BatchSource {
public:
    virtual ~BatchSource() = default;
    // The next batch; deterministic given the source's construction and its state.
    virtual TrainBatch next() = 0;
    // Everything needed to continue exactly from here (data position, RNG counters), as JSON
    // so that it can be stored as a checkpoint attribute.
    virtual Json state() const = 0;
    // Continues from a state() of a source built with the same configuration; throws
    // ConfigError (one line) when the state does not belong to this configuration.
    virtual void restore(const Json& state) = 0;
};

}  // namespace hsa
