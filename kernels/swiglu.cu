// SwiGLU for the CUDA backend: out = silu(g) * u, silu(g) = g * sigmoid(g);
// d silu / dg = s (1 + g (1 - s)), s = sigmoid(g).
// Elementwise, float4 accesses when every pointer is 16-byte aligned (scalar tail); the
// formulas are evaluated in double exactly as the CPU reference writes them.
#include <cstdint>

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

__global__ void swiglu_forward_kernel(const float* gate, const float* up, float* out, int64_t n, bool vec) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        const float4* g4 = reinterpret_cast<const float4*>(gate);
        const float4* u4 = reinterpret_cast<const float4*>(up);
        float4* o4 = reinterpret_cast<float4*>(out);
        for (int64_t k = tid; k < n4; k += stride) {
            const float4 g = g4[k];
            const float4 u = u4[k];
            o4[k] = make_float4(swiglu_value(g.x, u.x), swiglu_value(g.y, u.y), swiglu_value(g.z, u.z),
                                swiglu_value(g.w, u.w));
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) out[k] = swiglu_value(gate[k], up[k]);
}

__global__ void swiglu_backward_kernel(const float* gate, const float* up, const float* grad, float* grad_gate,
                                       float* grad_up, int64_t n, bool vec) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        const float4* g4 = reinterpret_cast<const float4*>(gate);
        const float4* u4 = reinterpret_cast<const float4*>(up);
        const float4* d4 = reinterpret_cast<const float4*>(grad);
        float4* gg4 = reinterpret_cast<float4*>(grad_gate);
        float4* gu4 = reinterpret_cast<float4*>(grad_up);
        for (int64_t k = tid; k < n4; k += stride) {
            const float4 g = g4[k];
            const float4 u = u4[k];
            const float4 d = d4[k];
            float4 rg, ru;
            swiglu_grad(g.x, u.x, d.x, &rg.x, &ru.x);
            swiglu_grad(g.y, u.y, d.y, &rg.y, &ru.y);
            swiglu_grad(g.z, u.z, d.z, &rg.z, &ru.z);
            swiglu_grad(g.w, u.w, d.w, &rg.w, &ru.w);
            if (gg4) gg4[k] = rg;
            if (gu4) gu4[k] = ru;
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride)
        swiglu_grad(gate[k], up[k], grad[k], grad_gate ? grad_gate + k : nullptr, grad_up ? grad_up + k : nullptr);
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

}  // namespace hsa
