// AdamW for the CUDA backend (decoupled weight decay, bias-corrected, steps count from 1):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  mhat = m / (1 - b1^step), vhat = v / (1 - b2^step)
//   p -= lr (mhat / (sqrt(vhat) + eps) + wd p)
// The bias corrections are computed on the host in double; the update is evaluated in
// double per element exactly as the CPU reference writes it. float4 accesses when all four
// tensors are 16-byte aligned, scalar tail otherwise.
#include <cmath>
#include <cstdint>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 4096;

struct AdamWParams {
    double lr, b1, b2, eps, wd, c1, c2;
};

__device__ inline void adamw_update(float& p, float g_in, float& m, float& v, const AdamWParams& a) {
    const double g = g_in;
    const double mi = a.b1 * static_cast<double>(m) + (1.0 - a.b1) * g;
    const double vi = a.b2 * static_cast<double>(v) + (1.0 - a.b2) * g * g;
    m = static_cast<float>(mi);
    v = static_cast<float>(vi);
    const double mhat = mi / a.c1, vhat = vi / a.c2;
    const double pd = p;
    p = static_cast<float>(pd - a.lr * (mhat / (sqrt(vhat) + a.eps) + a.wd * pd));
}

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, bool vec,
                             AdamWParams a) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        float4* p4 = reinterpret_cast<float4*>(param);
        const float4* g4 = reinterpret_cast<const float4*>(grad);
        float4* m4 = reinterpret_cast<float4*>(m);
        float4* v4 = reinterpret_cast<float4*>(v);
        for (int64_t k = tid; k < n4; k += stride) {
            float4 p = p4[k];
            const float4 g = g4[k];
            float4 mk = m4[k];
            float4 vk = v4[k];
            adamw_update(p.x, g.x, mk.x, vk.x, a);
            adamw_update(p.y, g.y, mk.y, vk.y, a);
            adamw_update(p.z, g.z, mk.z, vk.z, a);
            adamw_update(p.w, g.w, mk.w, vk.w, a);
            p4[k] = p;
            m4[k] = mk;
            v4[k] = vk;
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) {
        float p = param[k], mk = m[k], vk = v[k];
        adamw_update(p, grad[k], mk, vk, a);
        param[k] = p;
        m[k] = mk;
        v[k] = vk;
    }
}

}  // namespace

void CudaBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1,
                             float beta2, float eps, float weight_decay, int64_t step) {
    const int64_t n = checks::check_adamw(param, grad, m, v, step, Device::CUDA);
    float* pp = param.data<float>();
    const float* pg = grad.data<float>();
    float* pm = m.data<float>();
    float* pv = v.data<float>();
    if (n == 0) return;
    AdamWParams a{};
    a.b1 = beta1;
    a.b2 = beta2;
    a.c1 = 1.0 - std::pow(a.b1, static_cast<double>(step));
    a.c2 = 1.0 - std::pow(a.b2, static_cast<double>(step));
    a.lr = lr;
    a.eps = eps;
    a.wd = weight_decay;
    const bool vec = aligned16(pp) && aligned16(pg) && aligned16(pm) && aligned16(pv);
    unsigned grid = blocks_for(vec ? (n + 3) / 4 : n, kThreads);
    if (grid > kMaxBlocks) grid = kMaxBlocks;
    adamw_kernel<<<grid, kThreads>>>(pp, pg, pm, pv, n, vec, a);
    HSA_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace hsa
