// The CUDA backend: every Backend method as hand-written CUDA kernels (GEMMs through
// cuBLASLt), f32 storage with f32 accumulation, tested against the CPU reference
// (tests/test_cuda_ops.cpp). One kernel family per translation unit:
//   elementwise.cu (add, mul, scale, axpy, copy_rows, sum_middle, broadcast_middle, sums)
//   embedding.cu, rmsnorm.cu, rope.cu, swiglu.cu, cross_entropy.cu, adamw.cu
//   gemm.cu (cuBLASLt), attention.cu (sliding-window / in-chunk attention)
//   retrieval.cu (select_chunks, chunk_weights), hsa.cu (hierarchical sparse attention)
// All work is ordered on the default stream; launchers check every launch.
#pragma once

#include "core/backend.h"

namespace hsa {

class CudaBackend final : public Backend {
public:
    Device device() const override { return Device::CUDA; }

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

// Installs the CUDA backend for Device::CUDA (core/backend.h). Called once at start-up by
// the hsa binary and the test binary; harmless without a GPU (calls then fail clearly).
void register_cuda_backend();

}  // namespace hsa

