// The SWA + HSA language model of shared/design/MODEL.md, composed from core/ops.h:
//   tokens -> embedding -> Llo x SWA layer -> chunk encoder (memory, built once)
//          -> Gup x [retrieval -> HSA layer (BRP) -> U x SWA layer] -> RMSNorm -> LM head
// Every principle is switchable through ModelConfig (encoder_layers, cls, residual,
// weights, topk/train_topk, retrieval_heads, qk_norm).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/model/config.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace hsa {

// Named parameters in creation order (the order of checkpoints and optimiser state).
class ParameterStore {
public:
    struct Entry {
        std::string name;
        Tensor tensor;
        bool weight_decay;  // matrices decay; norms, embeddings of CLS and gains do not
    };
    Tensor create(const std::string& name, const Shape& shape, Device device, bool weight_decay);
    const std::vector<Entry>& entries() const { return entries_; }
    std::vector<Entry>& entries() { return entries_; }
    Tensor find(const std::string& name) const;  // throws when absent
    int64_t count() const;                       // total number of scalars
    void zero_grad();

private:
    std::vector<Entry> entries_;
};

// The memory built by the chunk encoder from the lower decoder's output.
struct ChunkMemory {
    Tensor kmem;       // [B, C*S, Hk, d]
    Tensor vmem;       // [B, C*S, Hk, d]
    Tensor landmarks;  // [B, C, Hr, dr]
    int64_t chunks = 0;
};

struct ForwardOptions {
    bool training = true;  // selects K (train_topk) for retrieval
    // Per upper group, selection indices to reuse instead of selecting (held fixed for
    // finite differences or replay); and where to record the ones used.
    const std::vector<Tensor>* fixed_selection = nullptr;
    std::vector<Tensor>* record_selection = nullptr;
};

class Model {
public:
    Model(const ModelConfig& config, uint64_t seed, Device device = Device::CPU);

    const ModelConfig& config() const { return config_; }
    ParameterStore& parameters() { return params_; }
    const ParameterStore& parameters() const { return params_; }
    Device device() const { return device_; }

    // tokens i32 [B, T] -> logits [B, T, V]. T need not be a multiple of S: only complete
    // chunks enter the memory (a partial chunk is visible to no token anyway).
    Tensor forward(const Tensor& tokens, const ForwardOptions& options = {});
    // Mean next-token cross-entropy over positions where mask (f32 [B, T], or undefined
    // for all) is non-zero and target (i32 [B, T]) is non-negative.
    Tensor loss(const Tensor& tokens, const Tensor& targets, const Tensor& mask, const ForwardOptions& options = {});

    // The pieces, exposed for tests and for the long-context evaluation.
    Tensor final_hidden(const Tensor& tokens, const ForwardOptions& options = {});  // [B*T, D], after the final norm
    Tensor lower_decoder(const Tensor& tokens);  // [B, T, D]
    ChunkMemory chunk_encoder(const Tensor& h);

private:
    struct SwaLayer {
        Tensor attn_norm, wq, wk, wv, q_norm, k_norm, wo, mlp_norm, w1, w3, w2;
    };
    struct UpperGroup {
        Tensor retrieval_norm, wr, qr_norm, landmark_norm;        // retrieval
        Tensor hsa_norm, wq, q_norm, wo, mlp_norm, w1, w3, w2;    // HSA layer
        std::vector<SwaLayer> swa;
    };

    SwaLayer make_swa_layer(const std::string& prefix);
    Tensor attention_block(const SwaLayer& layer, const Tensor& x, AttentionSpan span);
    // residual + SwiGLU MLP of x: the add rides on the MLP's last product (ops::swiglu_mlp).
    Tensor residual_mlp(const Tensor& residual, const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2);
    // The dtype of a normalised activation that only feeds products: bf16 at bf16 precision
    // on a backend that takes bf16 operands (stored rounded once: the products would round
    // it anyway, so the values are the same), else f32.
    DType operand_dtype() const;
    Tensor swa_layer(const SwaLayer& layer, const Tensor& x, AttentionSpan span);
    Tensor head_norm(const Tensor& x, const Tensor& weight);  // per-head RMSNorm when qk_norm
    Tensor upper_group(size_t index, const Tensor& x, const ChunkMemory& memory, const ForwardOptions& options);

    ModelConfig config_;
    Device device_;
    ParameterStore params_;
    Tensor embed_, lm_head_, final_norm_;
    std::vector<SwaLayer> lower_;
    Tensor cls_, encoder_norm_, wlmk_, wk_mem_, wv_mem_, kmem_norm_;
    std::vector<SwaLayer> encoder_;
    std::vector<UpperGroup> upper_;
};

}  // namespace hsa
