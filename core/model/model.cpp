#include "core/model/model.h"

#include <cmath>
#include <tuple>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/precision.h"

namespace hsa {

// ------------------------------------------------------------------ parameters

Tensor ParameterStore::create(const std::string& name, const Shape& shape, Device device, bool weight_decay) {
    for (const auto& e : entries_) HSA_CHECK(e.name != name, "parameter '" << name << "' defined twice");
    Tensor t = Tensor::zeros(shape, DType::F32, device);
    t.set_name(name).set_requires_grad(true);
    entries_.push_back({name, t, weight_decay});
    return t;
}

Tensor ParameterStore::find(const std::string& name) const {
    for (const auto& e : entries_)
        if (e.name == name) return e.tensor;
    HSA_FAIL("no parameter named '" << name << "'");
}

int64_t ParameterStore::count() const {
    int64_t n = 0;
    for (const auto& e : entries_) n += e.tensor.numel();
    return n;
}

void ParameterStore::zero_grad() {
    for (auto& e : entries_) e.tensor.zero_grad();
}

// ------------------------------------------------------------------ construction

Model::Model(const ModelConfig& config, uint64_t seed, Device device) : config_(config), device_(device) {
    config_.validate();
    const ModelConfig& c = config_;
    const int64_t D = c.hidden, d = c.head_dim(), V = c.vocab_size;
    const int64_t dr = c.retrieval_head_dim();

    auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) { return params_.create(name, {rows, cols}, device_, true); };
    auto gain = [&](const std::string& name, int64_t size) { return params_.create(name, {size}, device_, false); };

    embed_ = matrix("embed", V, D);
    for (int64_t i = 0; i < c.lower_layers; ++i) lower_.push_back(make_swa_layer("lower." + std::to_string(i)));

    if (c.cls) cls_ = params_.create("encoder.cls", {1, D}, device_, false);
    for (int64_t i = 0; i < c.encoder_layers; ++i) encoder_.push_back(make_swa_layer("encoder." + std::to_string(i)));
    encoder_norm_ = gain("encoder.final_norm", D);
    wlmk_ = matrix("encoder.wlmk", D, c.retrieval_size());
    wk_mem_ = matrix("encoder.wk_mem", D, c.kv_heads * d);
    wv_mem_ = matrix("encoder.wv_mem", D, c.kv_heads * d);
    if (c.qk_norm) kmem_norm_ = gain("encoder.kmem_norm", d);

    for (int64_t g = 0; g < c.upper_groups; ++g) {
        const std::string p = "upper." + std::to_string(g);
        UpperGroup group;
        group.retrieval_norm = gain(p + ".retrieval.norm", D);
        group.wr = matrix(p + ".retrieval.wr", D, c.retrieval_size());
        if (c.retrieval_norm) {
            group.qr_norm = gain(p + ".retrieval.qr_norm", dr);
            group.landmark_norm = gain(p + ".retrieval.landmark_norm", dr);
        }
        group.hsa_norm = gain(p + ".hsa.norm", D);
        group.wq = matrix(p + ".hsa.wq", D, D);
        if (c.qk_norm) group.q_norm = gain(p + ".hsa.q_norm", d);
        group.wo = matrix(p + ".hsa.wo", D, D);
        group.mlp_norm = gain(p + ".hsa.mlp_norm", D);
        group.w1 = matrix(p + ".hsa.w1", D, c.mlp_size());
        group.w3 = matrix(p + ".hsa.w3", D, c.mlp_size());
        group.w2 = matrix(p + ".hsa.w2", c.mlp_size(), D);
        for (int64_t i = 0; i < c.upper_layers; ++i) group.swa.push_back(make_swa_layer(p + ".swa." + std::to_string(i)));
        upper_.push_back(std::move(group));
    }
    final_norm_ = gain("final_norm", D);
    if (!c.tie_embeddings) lm_head_ = matrix("lm_head", D, V);

    // Initialisation: gains 1; matrices N(0, init_std), with the projections that write
    // into the residual stream (wo, w2) scaled by 1/sqrt(2 depth) as in GPT-2, so the
    // stream's variance does not grow with depth. The CLS vector starts like a token.
    Rng rng(seed);
    const float residual_std = c.init_std / std::sqrt(2.0f * static_cast<float>(std::max<int64_t>(1, c.depth())));
    for (auto& e : params_.entries()) {
        const std::string& n = e.name;
        bool is_gain = e.tensor.ndim() == 1;
        bool writes_residual = n.size() >= 3 && (n.compare(n.size() - 3, 3, ".wo") == 0 || n.compare(n.size() - 3, 3, ".w2") == 0);
        if (is_gain) e.tensor.fill(1.0f);
        else rng.normal_(e.tensor, 0.0f, writes_residual ? residual_std : c.init_std);
    }
}

Model::SwaLayer Model::make_swa_layer(const std::string& p) {
    const ModelConfig& c = config_;
    const int64_t D = c.hidden, d = c.head_dim();
    SwaLayer l;
    l.attn_norm = params_.create(p + ".attn.norm", {D}, device_, false);
    l.wq = params_.create(p + ".attn.wq", {D, c.heads * d}, device_, true);
    l.wk = params_.create(p + ".attn.wk", {D, c.kv_heads * d}, device_, true);
    l.wv = params_.create(p + ".attn.wv", {D, c.kv_heads * d}, device_, true);
    if (c.qk_norm) {
        l.q_norm = params_.create(p + ".attn.q_norm", {d}, device_, false);
        l.k_norm = params_.create(p + ".attn.k_norm", {d}, device_, false);
    }
    l.wo = params_.create(p + ".attn.wo", {c.heads * d, D}, device_, true);
    l.mlp_norm = params_.create(p + ".mlp.norm", {D}, device_, false);
    l.w1 = params_.create(p + ".mlp.w1", {D, c.mlp_size()}, device_, true);
    l.w3 = params_.create(p + ".mlp.w3", {D, c.mlp_size()}, device_, true);
    l.w2 = params_.create(p + ".mlp.w2", {c.mlp_size(), D}, device_, true);
    return l;
}

// ------------------------------------------------------------------ blocks

Tensor Model::head_norm(const Tensor& x, const Tensor& weight) {
    return config_.qk_norm ? ops::rmsnorm(x, weight, config_.norm_eps) : x;
}

DType Model::operand_dtype() const {
    return matmul_precision() == MatmulPrecision::BF16 && backend_for(device_).takes_bf16_operands() ? DType::BF16
                                                                                                    : DType::F32;
}

Tensor Model::residual_mlp(const Tensor& residual, const Tensor& x, const Tensor& w1, const Tensor& w3,
                           const Tensor& w2) {
    return ops::swiglu_mlp(x, w1, w3, w2, residual);
}

// x [N, L, D] -> attention output [N, L, D] (before the residual add).
Tensor Model::attention_block(const SwaLayer& l, const Tensor& x, AttentionSpan span) {
    const ModelConfig& c = config_;
    const int64_t n = x.size(0), len = x.size(1), d = c.head_dim();
    Tensor xn = ops::rmsnorm(x, l.attn_norm, c.norm_eps, operand_dtype());  // feeds the q and k / v products only
    // RMSNorm over the head dim then RoPE, as one op when the norm is on (for q also with its
    // projection: no f32 gradient between the two in the backward); stored as the attention's
    // products take them (bf16 where its tensor-core kernels run: the same bits they would
    // round to, half the bytes written and read; f32 for the f32 kernels). q before k / v: the
    // backward then runs k / v's small product first, which writes xn's gradient, and q's
    // accumulates into it inside its larger product, where the read of the sum costs least.
    const DType qk_dtype = backend_for(device_).attention_takes_bf16_qk(d) ? DType::BF16 : DType::F32;
    Tensor q = c.qk_norm ? ops::linear_rmsnorm_rope(xn, l.wq, c.heads, l.q_norm, c.norm_eps, 0, c.rope_base, qk_dtype)
                         : ops::rope(ops::reshape(ops::linear(xn, l.wq), {n, len, c.heads, d}), 0, c.rope_base);
    // K and V in one product ([D, 2 Hk d]: with the model's single KV head two N = 64
    // products, each rounding xn again and badly shaped for the tensor cores, become one of
    // N = 128), then split.
    const int64_t kv_width = c.kv_heads * d;
    Tensor kv = ops::linear(xn, ops::concat({l.wk, l.wv}, 1));
    Tensor k = ops::reshape(ops::slice(kv, 2, 0, kv_width), {n, len, c.kv_heads, d});
    Tensor v = ops::reshape(ops::slice(kv, 2, kv_width, kv_width), {n, len, c.kv_heads, d});
    k = c.qk_norm ? ops::rmsnorm_rope(k, l.k_norm, c.norm_eps, 0, c.rope_base, qk_dtype) : ops::rope(k, 0, c.rope_base);
    // Stored as the wo product takes it (bf16 on the GPU at bf16 precision): no f32 output
    // and no rounding pass before the product.
    Tensor o = ops::local_attention(q, k, v, span, operand_dtype());
    return ops::linear(ops::reshape(o, {n, len, c.heads * d}), l.wo);
}

Tensor Model::swa_layer(const SwaLayer& l, const Tensor& x, AttentionSpan span) {
    // The residual add and the MLP's norm as one op (one pass over the stream on CUDA).
    const auto [h, hn] = ops::add_rmsnorm(x, attention_block(l, x, span), l.mlp_norm, config_.norm_eps, operand_dtype());
    return residual_mlp(h, hn, l.w1, l.w3, l.w2);
}

Tensor Model::lower_decoder(const Tensor& tokens) {
    HSA_CHECK(tokens.dtype() == DType::I32 && tokens.ndim() == 2,
              "model input must be i32 tokens [B, T], got " << dtype_name(tokens.dtype()) << " " << shape_string(tokens.shape()));
    Tensor ids = tokens.device() == device_ ? tokens : tokens.to(device_);
    Tensor x = ops::embedding(embed_, ids);
    const AttentionSpan sliding{true, config_.window};
    for (const SwaLayer& l : lower_) x = swa_layer(l, x, sliding);
    return x;
}

ChunkMemory Model::chunk_encoder(const Tensor& h) {
    const ModelConfig& c = config_;
    const int64_t B = h.size(0), T = h.size(1), D = c.hidden, S = c.chunk_size, d = c.head_dim();
    ChunkMemory memory;
    memory.chunks = T / S;
    const int64_t C = memory.chunks;
    if (C == 0) return memory;
    // [B, C*S, D] -> one sequence of S tokens (+ CLS) per chunk: [B*C, S(+1), D].
    Tensor tokens = ops::reshape(ops::slice(h, 1, 0, C * S), {B * C, S, D});
    Tensor z = tokens;
    if (c.cls) z = ops::concat({tokens, ops::repeat_leading(cls_, B * C)}, 1);
    const AttentionSpan bidirectional{false, 0};
    for (const SwaLayer& l : encoder_) z = swa_layer(l, z, bidirectional);
    z = ops::rmsnorm(z, encoder_norm_, c.norm_eps);

    Tensor z_tokens = c.cls ? ops::slice(z, 1, 0, S) : z;  // [B*C, S, D]
    Tensor pooled = c.cls ? ops::reshape(ops::slice(z, 1, S, 1), {B * C, D}) : ops::mean(z_tokens, 1);
    memory.landmarks = ops::reshape(ops::linear(pooled, wlmk_), {B, C, c.retrieval_heads, c.retrieval_head_dim()});
    Tensor k = ops::reshape(ops::linear(z_tokens, wk_mem_), {B, C * S, c.kv_heads, d});
    memory.kmem = head_norm(k, kmem_norm_);
    memory.vmem = ops::reshape(ops::linear(z_tokens, wv_mem_), {B, C * S, c.kv_heads, d});
    return memory;
}

Tensor Model::upper_group(size_t index, const Tensor& x, const ChunkMemory& memory, const ForwardOptions& options) {
    const ModelConfig& c = config_;
    const UpperGroup& g = upper_[index];
    const int64_t B = x.size(0), T = x.size(1), D = c.hidden, d = c.head_dim();

    Tensor a;  // retrieved contribution [B, T, D]; absent when there is no complete chunk
    if (memory.chunks > 0) {
        // Retrieval: qr = RMSNorm(x) Wr, optional RMSNorm on qr and on the landmarks.
        Tensor qr = ops::reshape(ops::linear(ops::rmsnorm(x, g.retrieval_norm, c.norm_eps, operand_dtype()), g.wr),
                                 {B, T, c.retrieval_heads, c.retrieval_head_dim()});
        Tensor landmarks = memory.landmarks;
        if (c.retrieval_norm) {
            qr = ops::rmsnorm(qr, g.qr_norm, c.norm_eps);
            landmarks = ops::rmsnorm(landmarks, g.landmark_norm, c.norm_eps);
        }
        Tensor indices;
        if (options.fixed_selection) {
            HSA_CHECK(index < options.fixed_selection->size(), "fixed selection has no entry for upper group " << index);
            indices = (*options.fixed_selection)[index];
            if (indices.device() != device_) indices = indices.to(device_);
        } else {
            const int64_t k = c.selection_k(options.training, memory.chunks);
            NoGradGuard no_grad;  // the top-K choice itself is not differentiated
            indices = ops::select_chunks(qr, landmarks, c.chunk_size, k);
        }
        if (options.record_selection) options.record_selection->push_back(indices);
        Tensor weights = ops::chunk_weights(qr, landmarks, indices, c.stickbreak ? WeightKind::StickBreak : WeightKind::Softmax);

        // HSA: q = per-head RMSNorm(RMSNorm(x) Wq), no positional encoding on q or Kmem.
        Tensor q = ops::reshape(ops::linear(ops::rmsnorm(x, g.hsa_norm, c.norm_eps, operand_dtype()), g.wq),
                                {B, T, c.heads, d});
        q = head_norm(q, g.q_norm);
        Tensor u = ops::hsa_attention(q, memory.kmem, memory.vmem, indices, weights, c.chunk_size);
        a = ops::linear(ops::reshape(u, {B, T, D}), g.wo);
    }

    // Bypassing Residual Path: the retrieved a enters only the MLP's input.
    Tensor mixed = x, mixed_norm;
    if (a.defined()) std::tie(mixed, mixed_norm) = ops::add_rmsnorm(x, a, g.mlp_norm, c.norm_eps, operand_dtype());
    else mixed_norm = ops::rmsnorm(x, g.mlp_norm, c.norm_eps, operand_dtype());
    Tensor y = residual_mlp(c.residual == ResidualMode::Brp ? x : mixed, mixed_norm, g.w1, g.w3, g.w2);
    const AttentionSpan sliding{true, c.window};
    for (const SwaLayer& l : g.swa) y = swa_layer(l, y, sliding);
    return y;
}

Tensor Model::final_hidden(const Tensor& tokens, const ForwardOptions& options) {
    Tensor h = lower_decoder(tokens);
    ChunkMemory memory = chunk_encoder(h);  // built once, shared by every upper group
    Tensor x = h;
    for (size_t g = 0; g < upper_.size(); ++g) x = upper_group(g, x, memory, options);
    x = ops::rmsnorm(x, final_norm_, config_.norm_eps);
    const int64_t B = x.size(0), T = x.size(1), D = config_.hidden;
    return ops::reshape(x, {B * T, D});
}

Tensor Model::forward(const Tensor& tokens, const ForwardOptions& options) {
    Tensor flat = final_hidden(tokens, options);
    Tensor logits = config_.tie_embeddings ? ops::matmul(flat, embed_, false, true) : ops::matmul(flat, lm_head_);
    return ops::reshape(logits, {tokens.size(0), tokens.size(1), config_.vocab_size});
}

// The head and the loss as one op (ops::linear_cross_entropy): the same values as forward()
// then cross_entropy, without an f32 logits gradient on the GPU.
Tensor Model::loss(const Tensor& tokens, const Tensor& targets, const Tensor& mask, const ForwardOptions& options) {
    HSA_CHECK(targets.shape() == tokens.shape(), "targets " << shape_string(targets.shape()) << " must match tokens "
                                                            << shape_string(tokens.shape()));
    Tensor flat = final_hidden(tokens, options);
    const int64_t n = tokens.numel();
    Tensor t = targets.device() == device_ ? targets : targets.to(device_);
    Tensor m = !mask.defined() || mask.device() == device_ ? mask : mask.to(device_);
    const Tensor& head = config_.tie_embeddings ? embed_ : lm_head_;
    return ops::linear_cross_entropy(flat, head, config_.tie_embeddings, t.view({n}), m.defined() ? m.view({n}) : m);
}

}  // namespace hsa
