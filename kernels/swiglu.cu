// SwiGLU for the CUDA backend: out = silu(g) * u, silu(g) = g * sigmoid(g);
// d silu / dg = s (1 + g (1 - s)), s = sigmoid(g).
// Elementwise, 4-element accesses. The f32 op (swiglu_forward / backward: 16-byte aligned
// pointers, scalar tail) evaluates the formulas in double exactly as the CPU reference writes
// them. The fused MLP at bf16 precision reads and writes bf16 in its grouped layout and
// evaluates them in float with the fast exp and division (a few ulp of f32, far below the
// 2^-9 of its bf16 results): in double, those passes (90M elements each a layer at 8 x 4096)
// were bound by the FP64 units rather than by memory (docs/PERF.md version 48).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <utility>

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

// The same in float for the bf16 fused MLP (see the top of the file).
__device__ inline float swiglu_value_fast(float g, float up) {
    const float s = __fdividef(1.0f, 1.0f + __expf(-g));
    return g * s * up;
}

__device__ inline void swiglu_grad_fast(float g, float up, float grad, float* gg, float* gu) {
    const float s = __fdividef(1.0f, 1.0f + __expf(-g));
    if (gg) *gg = grad * up * s * (1.0f + g * (1.0f - s));
    if (gu) *gu = grad * g * s;
}

__global__ void swiglu_forward_kernel(const float* gate, const float* up, float* out, int64_t n, bool vec) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        for (int64_t k = tid; k < n4; k += stride) {
            const float4 g = load4(gate, k);
            const float4 u = load4(up, k);
            store4(out, k, make_float4(swiglu_value(g.x, u.x), swiglu_value(g.y, u.y), swiglu_value(g.z, u.z),
                                       swiglu_value(g.w, u.w)));
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) store1(out, k, swiglu_value(load1(gate, k), load1(up, k)));
}

__global__ void swiglu_backward_kernel(const float* gate, const float* up, const float* grad, float* grad_gate,
                                       float* grad_up, int64_t n, bool vec) {
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
            swiglu_grad(g.x, u.x, d.x, &rg.x, &ru.x);
            swiglu_grad(g.y, u.y, d.y, &rg.y, &ru.y);
            swiglu_grad(g.z, u.z, d.z, &rg.z, &ru.z);
            swiglu_grad(g.w, u.w, d.w, &rg.w, &ru.w);
            if (grad_gate) store4(grad_gate, k, rg);
            if (grad_up) store4(grad_up, k, ru);
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) {
        float rg, ru;
        swiglu_grad(load1(gate, k), load1(up, k), load1(grad, k), &rg, &ru);
        if (grad_gate) store1(grad_gate, k, rg);
        if (grad_up) store1(grad_up, k, ru);
    }
}

// The fused MLP's grouped layout: gate and up as one [rows, 2F] bf16 tensor, row r holding
// gate then up (the product x [w1 | w3]); F a multiple of 8. The work is flattened over
// (row, 8-column group) so every thread moves 16 bytes an access and none idles at a row's
// end (a block a row left F / 8 = 344 groups on 256 threads at the paper's F; docs/PERF.md
// version 55). Index: 32-bit when rows x F / 8 fits, for the division.
template <class Index>
__global__ void swiglu_forward_grouped_kernel(const __nv_bfloat16* __restrict__ gate_up,
                                              __nv_bfloat16* __restrict__ out, Index rows, Index octets) {
    const Index total = rows * octets;
    const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
    for (Index q = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; q < total; q += stride) {
        const Index r = q / octets, c = q - r * octets;
        const __nv_bfloat16* gate = gate_up + static_cast<int64_t>(r) * 16 * octets;
        const Float8 g = load8(gate, c), u = load8(gate, c + octets);
        Float8 h;
#pragma unroll
        for (int i = 0; i < 8; ++i) h.v[i] = swiglu_value_fast(g.v[i], u.v[i]);
        store8(out, q, h);  // out [rows, F]: group q
    }
}

// grad_gate_up [rows, 2F] (the grouped layout) from gate_up and the hidden gradient [rows, F],
// flattened as the forward.
template <class Index>
__global__ void swiglu_backward_grouped_kernel(const __nv_bfloat16* __restrict__ gate_up,
                                               const __nv_bfloat16* __restrict__ grad,
                                               __nv_bfloat16* __restrict__ grad_gate_up, Index rows, Index octets) {
    const Index total = rows * octets;
    const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
    for (Index q = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; q < total; q += stride) {
        const Index r = q / octets, c = q - r * octets;
        const int64_t row = static_cast<int64_t>(r) * 16 * octets;
        const Float8 g = load8(gate_up + row, c), u = load8(gate_up + row, c + octets), d = load8(grad, q);
        Float8 rg, ru;
#pragma unroll
        for (int i = 0; i < 8; ++i) swiglu_grad_fast(g.v[i], u.v[i], d.v[i], &rg.v[i], &ru.v[i]);
        store8(grad_gate_up + row, c, rg);
        store8(grad_gate_up + row, c + octets, ru);
    }
}

// Launches a grouped kernel, launch(blocks, rows, octets), over rows x F / 8 groups, with
// 32-bit indices where the group count (and a grid stride past it) fits.
template <class Launch>
void launch_grouped(int64_t rows, int64_t F, Launch launch) {
    const int64_t octets = F / 8, total = rows * octets;
    if (total == 0) return;
    const unsigned blocks = grid_for(total);
    if (total < (int64_t{1} << 31)) launch(blocks, static_cast<uint32_t>(rows), static_cast<uint32_t>(octets));
    else launch(blocks, rows, octets);
}

// Calls visit(r, c) for every 4-column group c of the rows of a [rows, 2F] grouped tensor
// (F a multiple of 4; c < F / 4 in the first half), grid-stride.
template <class Visit>
__device__ __forceinline__ void for_each_grouped_quad(int64_t rows, int F, Visit visit) {
    const int quads = F / 4;
    const int64_t total = rows * 2 * quads;
    for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < total;
         q += static_cast<int64_t>(gridDim.x) * blockDim.x)
        visit(q / (2 * quads), static_cast<int>(q % (2 * quads)));
}

// out [rows, 2F] bf16 = [a | b] rounded, a and b [rows, F] f32 (F a multiple of 4).
__global__ void group_columns_bf16_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                          __nv_bfloat16* __restrict__ out, int64_t rows, int F) {
    const int quads = F / 4;
    for_each_grouped_quad(rows, F, [&](int64_t r, int c) {
        const float4 v = c < quads ? load4(a + r * F, c) : load4(b + r * F, c - quads);
        store4(out + r * 2 * F, c, v);
    });
}

// dst1 (+)= src[:, :F], dst3 (+)= src[:, F:] for src [rows, 2F] f32; a null dst is skipped.
// The add makes the one f32 rounding cuBLASLt's beta = 1 epilogue would make on the same
// product value. dst1 / dst3 16-byte aligned (float4 accesses; the caller checks).
__global__ void split_columns_kernel(const float* __restrict__ src, float* dst1, float* dst3, bool accumulate1,
                                     bool accumulate3, int64_t rows, int F) {
    const int quads = F / 4;
    for_each_grouped_quad(rows, F, [&](int64_t r, int c) {
        const bool first = c < quads;
        float* dst = first ? dst1 : dst3;
        if (!dst) return;
        float4 v = load4(src + r * 2 * F, c);
        float* row = dst + r * F;
        const int k = first ? c : c - quads;
        if (first ? accumulate1 : accumulate3) {
            const float4 old = load4(row, k);
            v = make_float4(old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w);
        }
        store4(row, k, v);
    });
}

}  // namespace

void CudaBackend::swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
    const int64_t n = checks::check_swiglu(gate, up, out, Device::CUDA);
    const float* pg = gate.data<float>();
    const float* pu = up.data<float>();
    float* po = out.data<float>();
    if (n == 0) return;
    const bool vec = aligned16(pg) && aligned16(pu) && aligned16(po);
    swiglu_forward_kernel<<<grid_for(vec ? (n + 3) / 4 : n), kThreads>>>(pg, pu, po, n, vec);
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
    swiglu_backward_kernel<<<grid_for(vec ? (n + 3) / 4 : n), kThreads>>>(pg, pu, pgo, pgg, pgu, n, vec);
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
    const int64_t N = x.size(0), D = x.size(1), F = w1.size(1);
    HSA_CHECK(F <= (int64_t{1} << 28), "swiglu_mlp: hidden width " << F << " is too large for the fused kernels");
    // Once, for the product here and the weight gradients (x may come rounded).
    const Tensor x16 = x.dtype() == DType::BF16 ? x : rounded_bf16_copy(x);
    // gate and up as one product x [w1 | w3] (MlpSaved: gate holds [gate | up], w1_operand
    // [w1 | w3]), so the backward's input gradient is one product of depth 2F rather than two
    // of depth F, the second accumulating (docs/PERF.md version 49). They leave the product in
    // bf16 (what autocast stores): half the bytes written, read by the SwiGLU here and kept for
    // the backward (16 layers x 2 x N x F at the paper's scale: 5.8 GB less than f32).
    saved.w1_operand = Tensor::empty({D, 2 * F}, DType::BF16, Device::CUDA);
    group_columns_bf16_kernel<<<grid_for(D * F / 2), kThreads>>>(w1.data<float>(), w3.data<float>(),
                                                                  bf16_ptr(saved.w1_operand), D, static_cast<int>(F));
    HSA_CUDA_CHECK_LAUNCH("group_columns_bf16_kernel");
    saved.w2_operand = rounded_bf16_copy(w2);
    saved.gate = Tensor::empty({N, 2 * F}, DType::BF16, Device::CUDA);
    gemm_of_bf16(x16, false, saved.w1_operand, false, saved.gate, false);
    Tensor h16 = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    const auto forward = [&](unsigned blocks, auto rows, auto octets) {
        swiglu_forward_grouped_kernel<<<blocks, kThreads>>>(bf16_ptr(saved.gate), bf16_ptr(h16), rows, octets);
    };
    launch_grouped(N, F, forward);
    HSA_CUDA_CHECK_LAUNCH("swiglu_forward_grouped_kernel");
    gemm_of_bf16(h16, false, saved.w2_operand, false, out, false, residual);
    saved.x_operand = x16;
    saved.hidden_operand = h16;
}

// The separate ops' products, grouped where that is faster (the input gradient: one product
// of depth 2F). Not bit-identical to the separate ops: gate, up and the hidden gradient are
// bf16 here (f32 there), so the SwiGLU sees values rounded once more, and the input gradient
// sums the gate and up terms inside one product (tests/test_cuda_ops.cpp bounds the
// difference by the bf16 path's own error).
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
    const int64_t N = x16.size(0), D = x16.size(1), F = w1.size(1);
    checks::check_tensor("swiglu_mlp_backward", "grad_out", grad_out, {N, w2.size(1)}, DType::F32, Device::CUDA);
    // grad_out rounded once for both products; the residual stream's gradient usually comes
    // with its bf16 copy (Tensor::rounded_copy, written by rmsnorm's backward): the same bits.
    const Tensor held = grad_out.rounded_copy();
    const Tensor g16 = held.defined() ? held : rounded_bf16_copy(grad_out);
    if (grad_w2.defined()) gemm_of_bf16(h16, true, g16, false, grad_w2, accumulate_w2);  // h^T g
    // The hidden gradient only feeds the SwiGLU backward, whose outputs are bf16 product
    // operands: it leaves its product in bf16 too.
    Tensor grad_hidden16 = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    gemm_of_bf16(g16, false, saved.w2_operand, true, grad_hidden16, false);  // g w2^T
    Tensor grad_gate_up16 = Tensor::empty({N, 2 * F}, DType::BF16, Device::CUDA);  // [d gate | d up]
    const auto backward = [&](unsigned blocks, auto rows, auto octets) {
        swiglu_backward_grouped_kernel<<<blocks, kThreads>>>(bf16_ptr(saved.gate), bf16_ptr(grad_hidden16),
                                                             bf16_ptr(grad_gate_up16), rows, octets);
    };
    launch_grouped(N, F, backward);
    HSA_CUDA_CHECK_LAUNCH("swiglu_backward_grouped_kernel");
    for (const auto& [name, grad] : {std::pair{"grad_w1", &grad_w1}, std::pair{"grad_w3", &grad_w3}}) {
        if (!grad->defined()) continue;
        checks::check_tensor("swiglu_mlp_backward", name, *grad, {D, F}, DType::F32, Device::CUDA);
        // The forward took this path only for 16-byte aligned weights, whose gradients are
        // aligned alike; a gradient view at another offset is refused rather than misread.
        HSA_CHECK(all_16_byte_aligned({grad}), "swiglu_mlp_backward: " << name << " is not 16-byte aligned");
    }
    if (grad_w1.defined() || grad_w3.defined()) {
        // x^T [d gate | d up] in one product, then split: grouped or not, the weight gradients
        // cost the same (hsa bench gemm), and one product needs no strided outputs.
        Tensor grad_w13 = Tensor::empty({D, 2 * F}, DType::F32, Device::CUDA);
        gemm_of_bf16(x16, true, grad_gate_up16, false, grad_w13, false);
        split_columns_kernel<<<grid_for(D * F / 2), kThreads>>>(
            grad_w13.data<float>(), grad_w1.defined() ? grad_w1.data<float>() : nullptr,
            grad_w3.defined() ? grad_w3.data<float>() : nullptr, accumulate_w1, accumulate_w3, D, static_cast<int>(F));
        HSA_CUDA_CHECK_LAUNCH("split_columns_kernel");
    }
    // [d gate | d up] [w1 | w3]^T: one product of depth 2F.
    if (grad_x.defined()) gemm_of_bf16(grad_gate_up16, false, saved.w1_operand, true, grad_x, accumulate_x);
}

}  // namespace hsa
