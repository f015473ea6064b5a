// The CUDA backend: every Backend method as hand-written CUDA kernels (GEMMs through
// cuBLASLt), f32 storage with f32 accumulation, tested against the CPU reference
// (tests/test_cuda_ops.cpp). One kernel family per translation unit:
//   elementwise.cu (add, mul, scale, axpy, copy_rows, sum_middle, broadcast_middle, sums)
//   embedding.cu, rmsnorm.cu, rope.cu, swiglu.cu, cross_entropy.cu, adamw.cu
//   gemm.cu (cuBLASLt), attention.cu (sliding-window / in-chunk attention)
//   retrieval.cu (select_chunks, chunk_weights), hsa.cu (hierarchical sparse attention)
// All work is ordered on the default stream; launchers check every launch. Argument and
// shape checks are shared with the CPU backend (core/backend_checks.h).
#pragma once

#include <vector>

#include "core/backend.h"

namespace hsa {

class CudaBackend final : public Backend {
public:
    Device device() const override { return Device::CUDA; }
    bool takes_bf16_operands() const override { return true; }
    bool attention_takes_bf16_qk(int64_t head_dim) const override;  // attention.cu
    Tensor product_operand(const Tensor& x, int64_t M, int64_t N, int64_t K) override;  // gemm.cu
    HSA_BACKEND_OVERRIDES
    std::vector<double> sum_of_squares_many(const std::vector<Tensor>& xs) override;
    void gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& g,
                       Tensor& grad_a, Tensor& grad_b, bool accumulate_a, bool accumulate_b) override;
    Tensor head_logits(const Tensor& x, const Tensor& weight, bool transpose_weight) override;  // gemm.cu
    bool cross_entropy_forward_with_gradient(Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,
                                             Tensor& lse) override;  // cross_entropy.cu
    void scaled_gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& g,
                              float grad_scale, Tensor& grad_a, Tensor& grad_b, bool accumulate_a,
                              bool accumulate_b) override;  // gemm.cu
    void adamw_step_many(const std::vector<AdamWSlot>& slots, float lr, float beta1, float beta2, float eps,
                         int64_t step, float grad_scale) override;
    Tensor rmsnorm_backward_rounded(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                    const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                                    bool accumulate_x) override;  // rmsnorm.cu
    void add_rmsnorm_forward(const Tensor& x, const Tensor& a, const Tensor& weight, float eps, Tensor& sum,
                             Tensor& out, Tensor& inv_rms) override;
    void rmsnorm_rope_forward(const Tensor& x, const Tensor& weight, float eps, int64_t position_offset, float base,
                              Tensor& out, Tensor& inv_rms) override;
    void rmsnorm_rope_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms, int64_t position_offset,
                               float base, const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                               bool accumulate_x) override;
    Tensor rmsnorm_rope_backward_rounded(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                         int64_t position_offset, float base, const Tensor& grad_out, Tensor& grad_x,
                                         Tensor& grad_weight, bool accumulate_x) override;
    Tensor rmsnorm_rope_backward_operand(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                         int64_t position_offset, float base, const Tensor& grad_out,
                                         Tensor& grad_weight) override;
    void swiglu_mlp_forward(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                            const Tensor& residual, Tensor& out, MlpSaved& saved) override;
    void swiglu_mlp_backward(const Tensor& w1, const Tensor& w3, const Tensor& w2, const MlpSaved& saved,
                             const Tensor& grad_out, Tensor& grad_x, Tensor& grad_w1, Tensor& grad_w3, Tensor& grad_w2,
                             bool accumulate_x, bool accumulate_w1, bool accumulate_w3, bool accumulate_w2) override;

private:
    // rmsnorm_backward / rmsnorm_rope_backward, also writing grad_x rounded to bf16 into
    // grad_x16 when set (then the caller has checked that the wide / fused path applies).
    void rmsnorm_backward_into(const Tensor& x, const Tensor& weight, const Tensor& inv_rms, const Tensor& grad_out,
                               Tensor& grad_x, Tensor& grad_weight, bool accumulate_x, void* grad_x16);  // bf16
    void rmsnorm_rope_backward_into(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                    int64_t position_offset, float base, const Tensor& grad_out, Tensor& grad_x,
                                    Tensor& grad_weight, bool accumulate_x, void* grad_x16);  // bf16
};

// out (f32 [M, N]) = op(a16) . op(b16) for contiguous 2-D bf16 operands, every dim a
// multiple of 8; accumulate: out +=; addend (f32 [M, N], 16-byte aligned, or undefined):
// out = addend + product, read by the epilogue (out may not alias it partly). cuBLASLt, as
// gemm's bf16 path (kernels/gemm.cu).
void gemm_of_bf16(const Tensor& a16, bool transpose_a, const Tensor& b16, bool transpose_b, Tensor& out,
                  bool accumulate, const Tensor& addend = Tensor());

// For `hsa bench gemm`: each algorithm (up to max_algorithms) that cuBLASLt's heuristic
// offers for out = op(a16) . op(b16) (out f32 or bf16, overwritten), in the heuristic's
// order: median ms (< 0 if cuBLASLt refused it) and whether its output has the first one's
// bits (kernels/gemm.cu).
struct GemmAlgorithmTiming {
    double ms;
    bool same_bits;
};
std::vector<GemmAlgorithmTiming> time_gemm_algorithms(const Tensor& a16, bool transpose_a, const Tensor& b16,
                                                      bool transpose_b, Tensor& out, int max_algorithms, int repeats);

// GEMM autotuning (kernels/gemm.cu): on a bf16 product's first use, the fastest of the
// heuristic's algorithms whose output has the bits of its first choice. On unless the
// environment sets HSA_GEMM_AUTOTUNE=0; plans chosen either way are kept per setting.
void set_gemm_autotuning(bool on);
bool gemm_autotuning();


// Installs the CUDA backend for Device::CUDA (core/backend.h). Called once at start-up by
// the hsa binary and the test binary; harmless without a GPU (calls then fail clearly).
void register_cuda_backend();

}  // namespace hsa

