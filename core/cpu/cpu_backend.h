// The CPU reference backend: the truth that CUDA kernels are tested against.
// Clarity beats speed, but loops are parallelised with OpenMP over independent outputs,
// and every output element is computed by one thread in a fixed order, so results are
// bit-identical whatever the thread count. Reductions accumulate in double where the
// sum is long (norms, softmax denominators, attention and GEMM inner products).
// Split across files by family: cpu_basic.cpp (elementwise, embedding, gemm, norms,
// RoPE, SwiGLU, cross-entropy, AdamW) and cpu_attention.cpp (attention, retrieval, HSA).
#pragma once

#include "core/backend.h"

namespace hsa {

class CpuBackend final : public Backend {
public:
    Device device() const override { return Device::CPU; }

    void add(const Tensor& a, const Tensor& b, Tensor& out) override;
    void mul(const Tensor& a, const Tensor& b, Tensor& out) override;
    void scale(const Tensor& a, float alpha, Tensor& out) override;
    void axpy(float alpha, const Tensor& x, Tensor& target) override;
    void copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, Tensor& dst, int64_t dst_len,
                   int64_t dst_start, int64_t length, int64_t inner, bool accumulate) override;
    void sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha, Tensor& out) override;
    void broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha,
                          Tensor& out) override;
    double sum_of_squares(const Tensor& x) override;
    double sum(const Tensor& x) override;

    void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) override;
    void embedding_backward(const Tensor& ids, const Tensor& grad_out, Tensor& grad_table) override;

    void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& out,
              bool accumulate) override;

    void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& out, Tensor& inv_rms) override;
    void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms, const Tensor& grad_out,
                          Tensor& grad_x, Tensor& grad_weight) override;

    void rope_forward(const Tensor& x, int64_t position_offset, float base, Tensor& out) override;
    void rope_backward(const Tensor& grad_out, int64_t position_offset, float base, Tensor& grad_x) override;

    void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override;
    void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, Tensor& grad_gate,
                         Tensor& grad_up) override;

    void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span, Tensor& out,
                           Tensor& lse) override;
    void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                            const Tensor& grad_out, AttentionSpan span, Tensor& grad_q, Tensor& grad_k,
                            Tensor& grad_v) override;

    void select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size, Tensor& indices) override;
    void chunk_weights_forward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices, WeightKind kind,
                               Tensor& weights) override;
    void chunk_weights_backward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices, WeightKind kind,
                                const Tensor& weights, const Tensor& grad_weights, Tensor& grad_qr,
                                Tensor& grad_landmarks) override;

    void hsa_forward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                     const Tensor& weights, int64_t chunk_size, Tensor& out, Tensor& lse) override;
    void hsa_backward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                      const Tensor& weights, int64_t chunk_size, const Tensor& lse, const Tensor& grad_out,
                      Tensor& grad_q, Tensor& grad_kmem, Tensor& grad_vmem, Tensor& grad_weights) override;

    void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,
                               Tensor& lse) override;
    void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& mask, const Tensor& lse,
                                float grad_loss, Tensor& grad_logits) override;

    void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1, float beta2,
                    float eps, float weight_decay, int64_t step) override;
};

}  // namespace hsa
