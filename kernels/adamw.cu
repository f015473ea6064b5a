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
    const double g = g_in;  // the caller applies any gradient scale in f32 first
    const double mi = a.b1 * static_cast<double>(m) + (1.0 - a.b1) * g;
    const double vi = a.b2 * static_cast<double>(v) + (1.0 - a.b2) * g * g;
    m = static_cast<float>(mi);
    v = static_cast<float>(vi);
    const double mhat = mi / a.c1, vhat = vi / a.c2;
    const double pd = p;
    p = static_cast<float>(pd - a.lr * (mhat / (sqrt(vhat) + a.eps) + a.wd * pd));
}

// Elements 4k .. 4k + 3 (16-byte aligned pointers) and element k of one tensor, on the
// gradient float(grad_scale * g) (__fmul_rn, as the scale kernel; exact for a scale of 1).
__device__ __forceinline__ void adamw_update4(float* param, const float* grad, float* m, float* v, int64_t k,
                                              float grad_scale, const AdamWParams& a) {
    float4 p = reinterpret_cast<float4*>(param)[k], mk = reinterpret_cast<float4*>(m)[k],
           vk = reinterpret_cast<float4*>(v)[k];
    const float4 g = reinterpret_cast<const float4*>(grad)[k];
    adamw_update(p.x, __fmul_rn(grad_scale, g.x), mk.x, vk.x, a);
    adamw_update(p.y, __fmul_rn(grad_scale, g.y), mk.y, vk.y, a);
    adamw_update(p.z, __fmul_rn(grad_scale, g.z), mk.z, vk.z, a);
    adamw_update(p.w, __fmul_rn(grad_scale, g.w), mk.w, vk.w, a);
    reinterpret_cast<float4*>(param)[k] = p;
    reinterpret_cast<float4*>(m)[k] = mk;
    reinterpret_cast<float4*>(v)[k] = vk;
}

__device__ __forceinline__ void adamw_update1(float* param, const float* grad, float* m, float* v, int64_t k,
                                              float grad_scale, const AdamWParams& a) {
    float p = param[k], mk = m[k], vk = v[k];
    adamw_update(p, __fmul_rn(grad_scale, grad[k]), mk, vk, a);
    param[k] = p;
    m[k] = mk;
    v[k] = vk;
}

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, bool vec,
                             AdamWParams a) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        for (int64_t k = tid; k < n4; k += stride) adamw_update4(param, grad, m, v, k, 1.0f, a);
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) adamw_update1(param, grad, m, v, k, 1.0f, a);
}

// All parameters in one launch: block b updates chunk b - block_start[t] (kChunk elements)
// of parameter t. The per-element arithmetic is adamw_kernel's, on float(grad_scale * g)
// (__fmul_rn, as the scale kernel): bit-identical to scale then adamw_step per tensor.
struct AdamWTask {
    float* p;
    const float* g;
    float* m;
    float* v;
    int64_t n;
    double wd;
};

constexpr int64_t kChunk = int64_t{kThreads} * 16;  // elements a block: 4 float4 a thread

__global__ void adamw_many_kernel(const AdamWTask* tasks, const int64_t* block_start, int count, AdamWParams a,
                                  float grad_scale) {
    const int64_t b = blockIdx.x;
    const int lo = task_of_block(block_start, count, b);
    const AdamWTask task = tasks[lo];
    a.wd = task.wd;
    const int64_t first = (b - block_start[lo]) * kChunk;
    const int64_t last = first + kChunk < task.n ? first + kChunk : task.n;
    const uintptr_t any = reinterpret_cast<uintptr_t>(task.p) | reinterpret_cast<uintptr_t>(task.g) |
                          reinterpret_cast<uintptr_t>(task.m) | reinterpret_cast<uintptr_t>(task.v);
    if ((any & 15u) == 0 && last - first == kChunk) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
            adamw_update4(task.p, task.g, task.m, task.v, first / 4 + i * kThreads + static_cast<int>(threadIdx.x),
                          grad_scale, a);
        return;
    }
    for (int64_t k = first + threadIdx.x; k < last; k += kThreads)
        adamw_update1(task.p, task.g, task.m, task.v, k, grad_scale, a);
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

void CudaBackend::adamw_step_many(const std::vector<AdamWSlot>& slots, float lr, float beta1, float beta2, float eps,
                                  int64_t step, float grad_scale) {
    std::vector<AdamWTask> tasks;
    std::vector<int64_t> block_start{0};
    for (const AdamWSlot& slot : slots) {
        const int64_t n = checks::check_adamw(slot.param, slot.grad, slot.m, slot.v, step, Device::CUDA);
        if (n == 0) continue;
        tasks.push_back({slot.param.data<float>(), slot.grad.data<float>(), slot.m.data<float>(), slot.v.data<float>(),
                         n, static_cast<double>(slot.weight_decay)});
        block_start.push_back(block_start.back() + (n + kChunk - 1) / kChunk);
    }
    if (tasks.empty()) return;
    const int count = static_cast<int>(tasks.size());
    const int64_t blocks = block_start.back();
    HSA_CHECK(blocks < (int64_t{1} << 31), "adamw_step: " << blocks << " blocks, over the grid limit");
    AdamWParams a{};
    a.b1 = beta1;
    a.b2 = beta2;
    a.c1 = 1.0 - std::pow(a.b1, static_cast<double>(step));
    a.c2 = 1.0 - std::pow(a.b2, static_cast<double>(step));
    a.lr = lr;
    a.eps = eps;
    const int64_t table_words = (static_cast<int64_t>(sizeof(AdamWTask)) * count + 7) / 8;
    Tensor scratch = Tensor::empty({table_words + count + 1}, DType::I64, Device::CUDA);
    char* base = static_cast<char*>(scratch.raw_data());
    auto* d_tasks = reinterpret_cast<AdamWTask*>(base);
    auto* d_start = reinterpret_cast<int64_t*>(base + 8 * table_words);
    // Pageable host memory: the copies are staged before the calls return.
    HSA_CUDA_CHECK(cudaMemcpyAsync(d_tasks, tasks.data(), sizeof(AdamWTask) * count, cudaMemcpyHostToDevice));
    HSA_CUDA_CHECK(cudaMemcpyAsync(d_start, block_start.data(), sizeof(int64_t) * (count + 1), cudaMemcpyHostToDevice));
    adamw_many_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(d_tasks, d_start, count, a, grad_scale);
    HSA_CUDA_CHECK_LAUNCH("adamw_many_kernel");
}

}  // namespace hsa
