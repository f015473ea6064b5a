// Greedy decoding from a trained model (`hsa generate`). Every new token recomputes the
// whole sequence (no key/value cache yet), so producing N tokens after a prompt of P costs
// about N full forward passes over up to P + N tokens: fine for checks and short answers,
// slow for long continuations.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/model/model.h"
#include "trainers/checkpoint.h"

namespace hsa {

struct GenerateOptions {
    int64_t max_new = 64;     // tokens to produce at most
    int32_t stop_id = -1;     // generation ends after producing this id (not returned); -1 = none
    int64_t vocab_limit = 0;  // pick only ids below this (a tokenizer smaller than the model's
                              // vocabulary has no text for the rest); 0 = the whole vocabulary
};

// The continuation of `prompt` (ids, all inside the model's vocabulary): at each step the
// arg-max of the last position's logits (the lowest id on ties). Throws hsa::Error for an
// empty prompt or an id outside the vocabulary, naming it and its position.
std::vector<int32_t> greedy_generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& options);

// A model with the parameters of a checkpoint (trainers/checkpoint.h; the optimizer state
// is not read) on `device`; the checkpoint's step, config, ... go to `state` when given.
// Throws hsa::Error naming the file when it is unreadable.
std::unique_ptr<Model> load_model_from_checkpoint(const std::string& path, Device device = Device::CPU,
                                                  CheckpointState* state = nullptr);

}  // namespace hsa
