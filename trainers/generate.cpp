#include "trainers/generate.h"

#include <algorithm>

#include "core/autograd.h"
#include "core/model/config.h"
#include "trainers/checkpoint.h"

namespace hsa {

std::vector<int32_t> greedy_generate(Model& model, const std::vector<int32_t>& prompt, const GenerateOptions& options) {
    const int64_t V = model.config().vocab_size;
    HSA_CHECK(!prompt.empty(), "generate: the prompt is empty (it needs at least one token)");
    HSA_CHECK(options.max_new >= 0, "generate: max_new must be >= 0, got " << options.max_new);
    for (size_t i = 0; i < prompt.size(); ++i)
        HSA_CHECK(prompt[i] >= 0 && prompt[i] < V, "generate: prompt token " << prompt[i] << " at position " << i
                                                       << " is outside the model's vocabulary of " << V
                                                       << " ids (was the model trained with another tokenizer?)");
    const int64_t choices = options.vocab_limit > 0 ? std::min(options.vocab_limit, V) : V;
    NoGradGuard no_grad;
    ForwardOptions forward;
    forward.training = false;
    std::vector<int32_t> sequence = prompt, produced;
    for (int64_t n = 0; n < options.max_new; ++n) {
        const int64_t T = static_cast<int64_t>(sequence.size());
        Tensor logits = model.forward(Tensor::from_vector_i32(sequence, {1, T}), forward);
        Tensor host = logits.to(Device::CPU).to(DType::F32).contiguous();
        const float* last = host.data<float>() + (T - 1) * V;
        const int32_t next = static_cast<int32_t>(std::max_element(last, last + choices) - last);
        if (next == options.stop_id) break;
        produced.push_back(next);
        sequence.push_back(next);
    }
    return produced;
}

std::unique_ptr<Model> load_model_from_checkpoint(const std::string& path, Device device, CheckpointState* state) {
    Checkpoint checkpoint = read_checkpoint(path, false);
    HSA_CHECK(checkpoint.state.config.is_object() && checkpoint.state.config.contains("model"),
              path << ": the checkpoint's configuration has no \"model\" section");
    const ModelConfig config = ModelConfig::from_json(checkpoint.state.config.at("model"));
    auto model = std::make_unique<Model>(config, 0, device);  // initial weights are all replaced
    apply_checkpoint(checkpoint, model->parameters(), nullptr);
    if (state) *state = checkpoint.state;
    return model;
}

}  // namespace hsa
