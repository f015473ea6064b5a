// Cross-entropy for the CUDA backend. logits [N, V], targets i32 [N] (negative = ignored),
// mask [N] or undefined (all ones).
//   lse_i = max_i + log sum_v exp(logits[i, v] - max_i)
//   loss  = sum_i mask_i (lse_i - logits[i, t_i]) / sum_i mask_i   (over t_i >= 0; 0 if that sum is 0)
//   d loss / d logits[i, v] = grad_loss * mask_i / denom * (softmax_iv - [v == t_i])
//
// One block per row (grid-stride over rows), exp and sums in double as the CPU reference.
// Row losses and mask weights go to a double scratch; one block then sums them in a fixed
// order (deterministic). Targets >= V: the kernels record the smallest bad row in a device
// flag, the launcher reads it back and throws naming the target and row.
#include <cstdint>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

constexpr unsigned long long kNoError = ~0ull;
constexpr int kRowThreads = 256;
constexpr int kReduceThreads = 1024;

__device__ float block_max(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x >> 5;
        v = lane < warps ? shared[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    const float result = shared[0];
    __syncthreads();
    return result;
}

__device__ inline double mask_of(const float* mask, int64_t i) { return mask ? static_cast<double>(mask[i]) : 1.0; }

unsigned row_grid(int64_t N) { return static_cast<unsigned>(N < (int64_t{1} << 20) ? N : (int64_t{1} << 20)); }

using Inputs = checks::CrossEntropyInputs;

Tensor make_error_flag() {
    Tensor flag = Tensor::empty({1}, DType::I64, Device::CUDA);
    HSA_CUDA_CHECK(cudaMemset(flag.raw_data(), 0xFF, sizeof(unsigned long long)));
    return flag;
}
unsigned long long* flag_ptr(const Tensor& flag) { return static_cast<unsigned long long*>(flag.raw_data()); }

void throw_if_bad_target(const Tensor& flag, const Inputs& in, const char* op) {
    unsigned long long bad = kNoError;
    HSA_CUDA_CHECK(cudaMemcpy(&bad, flag.raw_data(), sizeof(bad), cudaMemcpyDeviceToHost));
    if (bad == kNoError) return;
    int32_t target = 0;
    HSA_CUDA_CHECK(cudaMemcpy(&target, in.targets + bad, sizeof(target), cudaMemcpyDeviceToHost));
    HSA_FAIL(op << ": target " << target << " at row " << bad << " is outside [0, " << in.V << ")");
}

// Per row: lse[i]; nll[i] = mask_i (lse_i - logits[i, t_i]) and weight[i] = mask_i when
// t_i >= 0, else both 0.
__global__ void ce_rows_kernel(const float* logits, const int32_t* targets, const float* mask, int64_t N, int64_t V,
                               float* lse, double* nll, double* weight, unsigned long long* bad) {
    __shared__ double dshared[32];
    __shared__ float fshared[32];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const float* row = logits + i * V;
        float mx = -INFINITY;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
        mx = block_max(mx, fshared);
        double s = 0.0;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
            s += exp(static_cast<double>(row[v]) - static_cast<double>(mx));
        s = block_sum(s, dshared);
        if (threadIdx.x == 0) {
            const double l = static_cast<double>(mx) + log(s);
            lse[i] = static_cast<float>(l);
            const int32_t t = targets[i];
            double row_nll = 0.0, row_weight = 0.0;
            if (t >= V) {
                atomicMin(bad, static_cast<unsigned long long>(i));
            } else if (t >= 0) {
                row_weight = mask_of(mask, i);
                row_nll = (l - static_cast<double>(row[t])) * row_weight;
            }
            nll[i] = row_nll;
            weight[i] = row_weight;
        }
    }
}

// One block: loss = sum nll / sum weight (0 when the weights sum to 0), sums in fixed order.
__global__ void ce_loss_kernel(const double* nll, const double* weight, int64_t N, float* loss) {
    __shared__ double shared[32];
    double total = 0.0, denom = 0.0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        total += nll[i];
        denom += weight[i];
    }
    total = block_sum(total, shared);
    denom = block_sum(denom, shared);
    if (threadIdx.x == 0) loss[0] = denom == 0.0 ? 0.0f : static_cast<float>(total / denom);
}

// One block: denom = sum of mask_i over rows with t_i >= 0; flags targets >= V.
__global__ void ce_denominator_kernel(const int32_t* targets, const float* mask, int64_t N, int64_t V,
                                      double* denom, unsigned long long* bad) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        const int32_t t = targets[i];
        if (t >= V) atomicMin(bad, static_cast<unsigned long long>(i));
        else if (t >= 0) acc += mask_of(mask, i);
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) denom[0] = acc;
}

__global__ void ce_backward_kernel(const float* logits, const int32_t* targets, const float* mask, const float* lse,
                                   const double* denom_ptr, float grad_loss, int64_t N, int64_t V, float* grad) {
    const double denom = denom_ptr[0];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        float* g = grad + i * V;
        const int32_t t = targets[i];
        // t >= V was flagged by ce_denominator_kernel; write zeros rather than read out of bounds.
        const double w = (t < 0 || t >= V || denom == 0.0)
                             ? 0.0
                             : static_cast<double>(grad_loss) * mask_of(mask, i) / denom;
        if (w == 0.0) {
            for (int64_t v = threadIdx.x; v < V; v += blockDim.x) g[v] = 0.0f;
            continue;
        }
        const float* row = logits + i * V;
        const double l = static_cast<double>(lse[i]);
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
            const double p = exp(static_cast<double>(row[v]) - l);
            g[v] = static_cast<float>(w * (v == t ? p - 1.0 : p));
        }
    }
}

}  // namespace

void CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,
                                        Tensor& lse) {
    const Inputs in = checks::check_cross_entropy_inputs("cross_entropy", logits, targets, mask, Device::CUDA);
    checks::check_cross_entropy_outputs(in, logits, loss, lse, Device::CUDA);
    float* ploss = loss.data<float>();
    float* plse = lse.data<float>();
    Tensor flag = make_error_flag();
    Tensor scratch = Tensor::empty({2 * (in.N < 1 ? 1 : in.N)}, DType::I64, Device::CUDA);
    double* nll = static_cast<double*>(scratch.raw_data());
    double* weight = nll + in.N;
    if (in.N > 0) {
        ce_rows_kernel<<<row_grid(in.N), kRowThreads>>>(in.logits, in.targets, in.mask, in.N, in.V, plse, nll, weight,
                                                       flag_ptr(flag));
        HSA_CUDA_CHECK_LAUNCH("cross_entropy ce_rows_kernel");
    }
    ce_loss_kernel<<<1, kReduceThreads>>>(nll, weight, in.N, ploss);
    HSA_CUDA_CHECK_LAUNCH("cross_entropy ce_loss_kernel");
    throw_if_bad_target(flag, in, "cross_entropy");
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& mask,
                                         const Tensor& lse, float grad_loss, Tensor& grad_logits) {
    if (!grad_logits.defined()) return;
    const Inputs in =
        checks::check_cross_entropy_inputs("cross_entropy_backward", logits, targets, mask, Device::CUDA);
    checks::check_cross_entropy_grad(in, logits, lse, grad_logits, Device::CUDA);
    const float* plse = lse.data<float>();
    float* pgrad = grad_logits.data<float>();
    if (in.N == 0) return;
    Tensor flag = make_error_flag();
    Tensor scratch = Tensor::empty({1}, DType::I64, Device::CUDA);
    double* denom = static_cast<double*>(scratch.raw_data());
    ce_denominator_kernel<<<1, kReduceThreads>>>(in.targets, in.mask, in.N, in.V, denom, flag_ptr(flag));
    HSA_CUDA_CHECK_LAUNCH("cross_entropy_backward ce_denominator_kernel");
    if (in.V > 0) {
        ce_backward_kernel<<<row_grid(in.N), kRowThreads>>>(in.logits, in.targets, in.mask, plse, denom, grad_loss,
                                                           in.N, in.V, pgrad);
        HSA_CUDA_CHECK_LAUNCH("cross_entropy_backward ce_backward_kernel");
    }
    throw_if_bad_target(flag, in, "cross_entropy_backward");
}

}  // namespace hsa
