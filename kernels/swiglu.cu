// SwiGLU for the CUDA backend: out = silu(g) * u, silu(g) = g * sigmoid(g);
// d silu / dg = s (1 + g (1 - s)), s = sigmoid(g).
// Elementwise, 4-element accesses when every pointer is 16-byte aligned (scalar tail). Inputs
// and outputs are f32, or bf16 in the fused MLP at bf16 precision (load4 / store4 convert).
// The f32 kernels evaluate the formulas in double exactly as the CPU reference writes them;
// the bf16 ones in float with the fast exp and division (a few ulp of f32, far below the
// 2^-9 of the bf16 result): double math made those passes (90M elements each at 8 x 4096)
// limited by the FP64 units rather than by memory.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "core/precision.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 4096;

unsigned grid_for(int64_t work) {
    const unsigned blocks = blocks_for(work, kThreads);
    return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}

__device__ inline float swiglu_value(float gate, float up) {
    const double g = gate;
    const double s = 1.0 / (1.0 + exp(-g));
    return static_cast<float>(g * s * static_cast<double>(up));
}

// Element k of the backward; either output pointer may be null.
__device__ inline void swiglu_grad(float gate, float up, float grad, float* gg, float* gu) {
    const double g = gate;
    const double s = 1.0 / (1.0 + exp(-g));
    const double go = grad;
    if (gg) *gg = static_cast<float>(go * static_cast<double>(up) * s * (1.0 + g * (1.0 - s)));
    if (gu) *gu = static_cast<float>(go * g * s);
}

__device__ inline float swiglu_value_fast(float g, float up) {
    const float s = __fdividef(1.0f, 1.0f + __expf(-g));
    return g * s * up;
}

__device__ inline void swiglu_grad_fast(float g, float up, float grad, float* gg, float* gu) {
    const float s = __fdividef(1.0f, 1.0f + __expf(-g));
    if (gg) *gg = grad * up * s * (1.0f + g * (1.0f - s));
    if (gu) *gu = grad * g * s;
}

// The bf16 kernels (the fused MLP) take the float formulas, the f32 ones the double ones.
template <class In>
__device__ inline float swiglu_value_of(float g, float up) {
    if constexpr (std::is_same_v<In, __nv_bfloat16>) return swiglu_value_fast(g, up);
    else return swiglu_value(g, up);
}

template <class In>
__device__ inline void swiglu_grad_of(float g, float up, float grad, float* gg, float* gu) {
    if constexpr (std::is_same_v<In, __nv_bfloat16>) swiglu_grad_fast(g, up, grad, gg, gu);
    else swiglu_grad(g, up, grad, gg, gu);
}

template <class In, class Out>
__global__ void swiglu_forward_kernel(const In* gate, const In* up, Out* out, int64_t n, bool vec) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        for (int64_t k = tid; k < n4; k += stride) {
            const float4 g = load4(gate, k);
            const float4 u = load4(up, k);
            store4(out, k,
                   make_float4(swiglu_value_of<In>(g.x, u.x), swiglu_value_of<In>(g.y, u.y),
                               swiglu_value_of<In>(g.z, u.z), swiglu_value_of<In>(g.w, u.w)));
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride)
        store1(out, k, swiglu_value_of<In>(load1(gate, k), load1(up, k)));
}

template <class In, class Out>
__global__ void swiglu_backward_kernel(const In* gate, const In* up, const In* grad, Out* grad_gate,
                                       Out* grad_up, int64_t n, bool vec) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        for (int64_t k = tid; k < n4; k += stride) {
            const float4 g = load4(gate, k);
            const float4 u = load4(up, k);
            const float4 d = load4(grad, k);
            float4 rg, ru;
            swiglu_grad_of<In>(g.x, u.x, d.x, &rg.x, &ru.x);
            swiglu_grad_of<In>(g.y, u.y, d.y, &rg.y, &ru.y);
            swiglu_grad_of<In>(g.z, u.z, d.z, &rg.z, &ru.z);
            swiglu_grad_of<In>(g.w, u.w, d.w, &rg.w, &ru.w);
            if (grad_gate) store4(grad_gate, k, rg);
            if (grad_up) store4(grad_up, k, ru);
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) {
        float rg, ru;
        swiglu_grad_of<In>(load1(gate, k), load1(up, k), load1(grad, k), &rg, &ru);
        if (grad_gate) store1(grad_gate, k, rg);
        if (grad_up) store1(grad_up, k, ru);
    }
}

}  // namespace

void CudaBackend::swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
    const int64_t n = checks::check_swiglu(gate, up, out, Device::CUDA);
    const float* pg = gate.data<float>();
    const float* pu = up.data<float>();
    float* po = out.data<float>();
    if (n == 0) return;
    const bool vec = aligned16(pg) && aligned16(pu) && aligned16(po);
    swiglu_forward_kernel<float, float><<<grid_for(vec ? (n + 3) / 4 : n), kThreads>>>(pg, pu, po, n, vec);
    HSA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

void CudaBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, Tensor& grad_gate,
                                  Tensor& grad_up) {
    const int64_t n = checks::check_swiglu_backward(gate, up, grad_out, grad_gate, grad_up, Device::CUDA);
    const float* pg = gate.data<float>();
    const float* pu = up.data<float>();
    const float* pgo = grad_out.data<float>();
    float* pgg = grad_gate.defined() ? grad_gate.data<float>() : nullptr;
    float* pgu = grad_up.defined() ? grad_up.data<float>() : nullptr;
    if ((!pgg && !pgu) || n == 0) return;
    const bool vec = aligned16(pg) && aligned16(pu) && aligned16(pgo) && aligned16(pgg) && aligned16(pgu);
    swiglu_backward_kernel<float, float><<<grid_for(vec ? (n + 3) / 4 : n), kThreads>>>(pg, pu, pgo, pgg, pgu, n, vec);
    HSA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

// ---------------------------------------------------------------- the SwiGLU MLP

namespace {

__nv_bfloat16* bf16_ptr(Tensor& t) { return static_cast<__nv_bfloat16*>(t.raw_data()); }
const __nv_bfloat16* bf16_ptr(const Tensor& t) { return static_cast<const __nv_bfloat16*>(t.raw_data()); }

// The fused path: bf16 precision, contiguous 2-D operands, every dim a multiple of 8 (the
// GEMMs' bf16 path), 16-byte aligned data; x f32 or already bf16 (its producer rounded it).
bool mlp_in_bf16(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2) {
    if (matmul_precision() != MatmulPrecision::BF16) return false;
    for (const Tensor* t : {&x, &w1, &w3, &w2})
        if (t->ndim() != 2 || !t->is_contiguous() || t->device() != Device::CUDA ||
            !(t->dtype() == DType::F32 || (t == &x && t->dtype() == DType::BF16)))
            return false;
    const int64_t N = x.size(0), D = x.size(1), F = w1.size(1);
    return N % 8 == 0 && D % 8 == 0 && F % 8 == 0 && N > 0 && all_16_byte_aligned({&x, &w1, &w3, &w2});
}

}  // namespace

void CudaBackend::swiglu_mlp_forward(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                                     const Tensor& residual, Tensor& out, MlpSaved& saved) {
    if (!mlp_in_bf16(x, w1, w3, w2) || (residual.defined() && !all_16_byte_aligned({&residual}))) {
        Backend::swiglu_mlp_forward(x, w1, w3, w2, residual, out, saved);
        return;
    }
    const int64_t N = x.size(0), F = w1.size(1);
    // Once, for the two products here and the two weight gradients (x may come rounded).
    const Tensor x16 = x.dtype() == DType::BF16 ? x : rounded_bf16_copy(x);
    // gate and up leave the products in bf16 (what autocast stores): half the bytes written,
    // read by the SwiGLU here and kept for the backward (16 layers x 2 x N x F at the
    // paper's scale: 5.8 GB less than f32 at 8 x 4096 tokens).
    saved.gate = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    saved.up = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    saved.w1_operand = rounded_bf16_copy(w1);
    saved.w3_operand = rounded_bf16_copy(w3);
    saved.w2_operand = rounded_bf16_copy(w2);
    gemm_of_bf16(x16, false, saved.w1_operand, false, saved.gate, false);
    gemm_of_bf16(x16, false, saved.w3_operand, false, saved.up, false);
    Tensor h16 = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    const int64_t n = N * F;
    swiglu_forward_kernel<<<grid_for((n + 3) / 4), kThreads>>>(bf16_ptr(saved.gate), bf16_ptr(saved.up),
                                                               bf16_ptr(h16), n, /*vec=*/true);
    HSA_CUDA_CHECK_LAUNCH("swiglu_forward_kernel (bf16)");
    gemm_of_bf16(h16, false, saved.w2_operand, false, out, false, residual);
    saved.x_operand = x16;
    saved.hidden_operand = h16;
}

// The separate ops' products in the same arrangement (a, transposes) as gemm_backward's.
// Not bit-identical to the separate ops: gate, up and the hidden gradient are bf16 here
// (f32 there), so the SwiGLU sees values rounded once more (tests/test_cuda_ops.cpp bounds
// the difference by the bf16 path's own error).
void CudaBackend::swiglu_mlp_backward(const Tensor& w1, const Tensor& w3, const Tensor& w2, const MlpSaved& saved,
                                      const Tensor& grad_out, Tensor& grad_x, Tensor& grad_w1, Tensor& grad_w3,
                                      Tensor& grad_w2, bool accumulate_x, bool accumulate_w1, bool accumulate_w3,
                                      bool accumulate_w2) {
    if (saved.hidden_operand.dtype() != DType::BF16) {  // the forward took the composed path
        Backend::swiglu_mlp_backward(w1, w3, w2, saved, grad_out, grad_x, grad_w1, grad_w3, grad_w2, accumulate_x,
                                     accumulate_w1, accumulate_w3, accumulate_w2);
        return;
    }
    const Tensor& x16 = saved.x_operand;
    const Tensor& h16 = saved.hidden_operand;
    const int64_t N = x16.size(0), F = w1.size(1);
    checks::check_tensor("swiglu_mlp_backward", "grad_out", grad_out, {N, w2.size(1)}, DType::F32, Device::CUDA);
    const Tensor g16 = rounded_bf16_copy(grad_out);
    if (grad_w2.defined()) gemm_of_bf16(h16, true, g16, false, grad_w2, accumulate_w2);  // h^T g
    // The hidden gradient only feeds the SwiGLU backward, whose outputs are bf16 product
    // operands: it leaves its product in bf16 too.
    Tensor grad_hidden16 = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    gemm_of_bf16(g16, false, saved.w2_operand, true, grad_hidden16, false);  // g w2^T
    Tensor grad_gate16 = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    Tensor grad_up16 = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    const int64_t n = N * F;
    swiglu_backward_kernel<<<grid_for((n + 3) / 4), kThreads>>>(
        bf16_ptr(saved.gate), bf16_ptr(saved.up), bf16_ptr(grad_hidden16), bf16_ptr(grad_gate16),
        bf16_ptr(grad_up16), n, /*vec=*/true);
    HSA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel (bf16)");
    if (grad_w1.defined()) gemm_of_bf16(x16, true, grad_gate16, false, grad_w1, accumulate_w1);  // x^T d gate
    if (grad_w3.defined()) gemm_of_bf16(x16, true, grad_up16, false, grad_w3, accumulate_w3);    // x^T d up
    if (grad_x.defined()) {
        gemm_of_bf16(grad_gate16, false, saved.w1_operand, true, grad_x, accumulate_x);  // d gate w1^T
        gemm_of_bf16(grad_up16, false, saved.w3_operand, true, grad_x, true);            // + d up w3^T
    }
}

}  // namespace hsa
