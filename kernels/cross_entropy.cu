// Cross-entropy for the CUDA backend. logits [N, V] f32 or bf16 (the head's logits as
// ops::linear_cross_entropy stores them at bf16 precision), targets i32 [N] (negative =
// ignored), mask [N] or undefined (all ones).
//   lse_i = max_i + log sum_v exp(logits[i, v] - max_i)
//   loss  = sum_i mask_i (lse_i - logits[i, t_i]) / sum_i mask_i   (over t_i >= 0; 0 if that sum is 0)
//   d loss / d logits[i, v] = grad_loss * mask_i / denom * (softmax_iv - [v == t_i])
//
// One block per row (grid-stride over rows): one pass with an online max in the forward;
// exp in f32 (the CPU reference uses double: the difference is ~1e-7 relative), row sums
// in double.
// Row losses and mask weights go to a double scratch; one block then sums them in a fixed
// order (deterministic). Targets >= V: the kernels record the smallest bad row in a device
// flag, the launcher reads it back and throws naming the target and row.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"
#include "kernels/mma_bf16.cuh"  // cp_async_16

namespace hsa {

namespace {

constexpr unsigned long long kNoError = ~0ull;
constexpr int kRowThreads = 256;
constexpr int kReduceThreads = 1024;

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

// Online log-sum-exp state of a part of a row: max m and sum s of exp(x - m).
struct LseState {
    float m;
    double s;
};

__device__ inline LseState lse_combine(LseState a, LseState b) {
    if (a.m < b.m) {
        const LseState t = a;
        a = b;
        b = t;
    }
    if (b.m == -INFINITY) return a;  // also covers both empty
    return {a.m, a.s + b.s * static_cast<double>(expf(b.m - a.m))};
}

// exp(x - m) as 2^(x log2 e - m log2 e): one FMA and the SFU's ex2.approx (relative error
// ~2^-22, plus the FMA's rounding of the exponent: ~1e-7 relative at |x| ~ 10), for
// x - m <= 0. The accurate expf cost ~3x the instructions, and the bf16 rows, half the
// bytes of f32 ones, made the passes instruction-bound (docs/PERF.md version 50).
constexpr float kLog2e = 1.4426950408889634f;
__device__ __forceinline__ float exp_shifted(float x, float m_log2e) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(fmaf(x, kLog2e, -m_log2e)));
    return r;
}

// Adds a group of N values to a thread's state: at most one rescale a group (the row is
// read once).
template <int N>
__device__ inline void lse_add(LseState& st, const float (&v)[N], float& part) {
    float local = v[0];
#pragma unroll
    for (int i = 1; i < N; ++i) local = fmaxf(local, v[i]);
    if (local > st.m) {
        st.s = (st.s + part) * (st.m == -INFINITY ? 0.0 : static_cast<double>(expf(st.m - local)));
        part = 0.0f;
        st.m = local;
    }
    if (st.m == -INFINITY) return;
    const float m_log2e = st.m * kLog2e;
#pragma unroll
    for (int i = 0; i < N; ++i) part += exp_shifted(v[i], m_log2e);
}

// lse_add, counting the terms: each thread's terms are added in f32 in groups of 64 and the
// groups in double.
template <int N>
__device__ inline void lse_add_grouped(LseState& st, const float (&v)[N], float& part, int& pending) {
    lse_add(st, v, part);
    pending += N;
    if (pending >= 64) {
        st.s += part;
        part = 0.0f;
        pending = 0;
    }
}

// The row's lse from every thread's state: warp shuffles, then thread 0 adds the warps'
// states in warp order (deterministic). The value is thread 0's (0 elsewhere); shared_m /
// shared_s may be rewritten only after the block's next barrier.
__device__ inline double block_row_lse(LseState st, float* shared_m, double* shared_s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        LseState other{__shfl_down_sync(0xffffffffu, st.m, o), __shfl_down_sync(0xffffffffu, st.s, o)};
        st = lse_combine(st, other);
    }
    if (lane == 0) {
        shared_m[warp] = st.m;
        shared_s[warp] = st.s;
    }
    __syncthreads();
    if (threadIdx.x != 0) return 0.0;
    LseState total{shared_m[0], shared_s[0]};
    for (int w = 1; w < warps; ++w) total = lse_combine(total, LseState{shared_m[w], shared_s[w]});
    return static_cast<double>(total.m) + log(total.s);
}

// Thread 0's record of row i with log-sum-exp l: lse[i], nll[i] = mask_i (l - x_t) and
// weight[i] = mask_i for a target t in [0, V) (target_logit() reads x_t, only then); both 0
// for an ignored target (t < 0); a target >= V is flagged in `bad`.
template <class TargetLogit>
__device__ inline void record_row(int64_t i, double l, int32_t t, int64_t V, const float* mask,
                                  TargetLogit target_logit, float* lse, double* nll, double* weight,
                                  unsigned long long* bad) {
    lse[i] = static_cast<float>(l);
    double row_nll = 0.0, row_weight = 0.0;
    if (t >= V) {
        atomicMin(bad, static_cast<unsigned long long>(i));
    } else if (t >= 0) {
        row_weight = mask_of(mask, i);
        row_nll = (l - static_cast<double>(target_logit())) * row_weight;
    }
    nll[i] = row_nll;
    weight[i] = row_weight;
}

// Logits are f32, or bf16 (the CUDA head's stored logits, ops::linear_cross_entropy at bf16
// precision): a thread reads 16 bytes at a time, 4 or 8 elements, as float4 groups.
template <class L>
constexpr int kElementsPer16Bytes = 16 / static_cast<int>(sizeof(L));
__device__ inline void load16(const float* row, int64_t k, float4* out) { out[0] = load4(row, k); }
__device__ inline void load16(const __nv_bfloat16* row, int64_t k, float4* out) {
    const uint4 raw = reinterpret_cast<const uint4*>(row)[k];
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[2 * h]));
        const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[2 * h + 1]));
        out[h] = make_float4(lo.x, lo.y, hi.x, hi.y);
    }
}
__device__ inline float load1(const float* row, int64_t v) { return row[v]; }
__device__ inline float load1(const __nv_bfloat16* row, int64_t v) { return __bfloat162float(row[v]); }

// Per row: lse[i]; nll[i] = mask_i (lse_i - logits[i, t_i]) and weight[i] = mask_i when
// t_i >= 0, else both 0. One pass over the row with an online max (16-byte loads when the
// rows are 16-byte aligned); exp in f32 (exp_shifted: relative error ~1e-7 per term, far
// inside the tests' 2e-5), each thread's terms added in f32 in groups of 64 and the groups in
// double, and the threads' states combined in a fixed tree: deterministic.
template <class L>
__global__ void ce_rows_kernel(const L* logits, const int32_t* targets, const float* mask, int64_t N, int64_t V,
                               bool vectorised, float* lse, double* nll, double* weight, unsigned long long* bad) {
    constexpr int E = kElementsPer16Bytes<L>;
    __shared__ float shared_m[32];
    __shared__ double shared_s[32];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const L* row = logits + i * V;
        LseState st{-INFINITY, 0.0};
        float part = 0.0f;
        int pending = 0;
        const int64_t vec_end = vectorised ? V / E * E : 0;
        for (int64_t k = threadIdx.x; k < vec_end / E; k += blockDim.x) {
            float4 groups[E / 4];
            load16(row, k, groups);
            float v[E];
#pragma unroll
            for (int h = 0; h < E / 4; ++h) {
                v[4 * h] = groups[h].x;
                v[4 * h + 1] = groups[h].y;
                v[4 * h + 2] = groups[h].z;
                v[4 * h + 3] = groups[h].w;
            }
            lse_add_grouped(st, v, part, pending);
        }
        for (int64_t v = vec_end + threadIdx.x; v < V; v += blockDim.x) {
            const float one[1] = {load1(row, v)};
            lse_add(st, one, part);
        }
        st.s += part;
        const double l = block_row_lse(st, shared_m, shared_s);
        if (threadIdx.x == 0) {
            const int32_t t = targets[i];
            record_row(i, l, t, V, mask, [&] { return load1(row, t); }, lse, nll, weight, bad);
        }
        __syncthreads();  // shared_m/shared_s are rewritten by the next row
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

// One element of d logits: w (p - [target]), p = exp(x - lse).
__device__ __forceinline__ float softmax_gradient(float x, float lse_log2e, float w, bool target) {
    const float p = exp_shifted(x, lse_log2e);
    return target ? w * (p - 1.0f) : w * p;
}

// d logits = w (softmax - onehot), w = grad_loss mask_i / denom; p = exp(x - lse) in f32
// (16-byte loads and 4-element stores when the rows are aligned; exp as exp_shifted). Logits L
// and gradient T each f32 or bf16.
template <class L, class T>
__global__ void ce_backward_kernel(const L* logits, const int32_t* targets, const float* mask, const float* lse,
                                   const double* denom_ptr, float grad_loss, int64_t N, int64_t V, bool vectorised,
                                   T* grad) {
    constexpr int E = kElementsPer16Bytes<L>;
    const double denom = denom_ptr[0];
    const int64_t vec_end = vectorised ? V / E * E : 0;
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        T* g = grad + i * V;
        const int32_t t = targets[i];
        // t >= V was flagged by ce_denominator_kernel; write zeros rather than read out of bounds.
        const float w = (t < 0 || t >= V || denom == 0.0)
                            ? 0.0f
                            : static_cast<float>(static_cast<double>(grad_loss) * mask_of(mask, i) / denom);
        const L* row = logits + i * V;
        const float l_log2e = lse[i] * kLog2e;
        if (w == 0.0f) {
            for (int64_t k = threadIdx.x; k < vec_end / 4; k += blockDim.x) store4(g, k, make_float4(0.f, 0.f, 0.f, 0.f));
            for (int64_t v = vec_end + threadIdx.x; v < V; v += blockDim.x) store1(g, v, 0.0f);
            continue;
        }
        // Each element is read and written by one thread, the target's too, so grad may be
        // logits itself (cross_entropy_forward_with_gradient's in-place gradient).
        for (int64_t k = threadIdx.x; k < vec_end / E; k += blockDim.x) {
            float4 groups[E / 4];
            load16(row, k, groups);
#pragma unroll
            for (int h = 0; h < E / 4; ++h) {
                const float4 x = groups[h];
                const int64_t v = (k * (E / 4) + h) * 4;
                store4(g, k * (E / 4) + h,
                       make_float4(softmax_gradient(x.x, l_log2e, w, v == t), softmax_gradient(x.y, l_log2e, w, v + 1 == t),
                                   softmax_gradient(x.z, l_log2e, w, v + 2 == t),
                                   softmax_gradient(x.w, l_log2e, w, v + 3 == t)));
            }
        }
        for (int64_t v = vec_end + threadIdx.x; v < V; v += blockDim.x)
            store1(g, v, softmax_gradient(load1(row, v), l_log2e, w, v == t));
    }
}

// The loss and its gradient at grad_loss 1 in one pass over bf16 logits, the gradient
// written over them (cross_entropy_forward_with_gradient): each block stages its row in
// shared memory (cp.async, the whole row in flight), computes its lse as ce_rows_kernel does,
// then writes w (p - [target]) from the staged copy, as ce_backward_kernel computes it. The
// logits are read from memory once, where the separate kernels read them twice. V % 8 == 0,
// 16-byte aligned rows, 2 V bytes of shared memory (two 512-thread blocks an SM at V 50304).
constexpr int kFusedRowThreads = 512;

__device__ __forceinline__ void unpack_bf16x8(const uint4& raw, float (&v)[8]) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int h = 0; h < 4; ++h) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[h]));
        v[2 * h] = f.x;
        v[2 * h + 1] = f.y;
    }
}

__global__ void __launch_bounds__(kFusedRowThreads)
    ce_forward_gradient_bf16_kernel(__nv_bfloat16* logits, const int32_t* targets, const float* mask,
                                    const double* denom_ptr, int64_t N, int64_t V, float* lse, double* nll,
                                    double* weight, unsigned long long* bad) {
    extern __shared__ uint4 staged[];  // the row: V / 8 chunks of 8 bf16
    __shared__ float shared_m[32];
    __shared__ double shared_s[32];
    __shared__ float row_lse;
    const int64_t chunks = V / 8;
    const uint32_t staged_address = mma::shared_address(staged);
    const double denom = denom_ptr[0];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        __nv_bfloat16* row = logits + i * V;
        for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x)
            mma::cp_async_16(staged_address + static_cast<uint32_t>(16 * k), row + 8 * k, true);
        mma::cp_async_commit();
        mma::cp_async_wait<0>();
        __syncthreads();
        LseState st{-INFINITY, 0.0};
        float part = 0.0f;
        int pending = 0;
        for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) {
            float v[8];
            unpack_bf16x8(staged[k], v);
            lse_add_grouped(st, v, part, pending);
        }
        st.s += part;
        const double l = block_row_lse(st, shared_m, shared_s);
        const int32_t t = targets[i];
        if (threadIdx.x == 0) {
            row_lse = static_cast<float>(l);
            record_row(i, l, t, V, mask,
                       [&] { return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(staged)[t]); }, lse, nll,
                       weight, bad);
        }
        __syncthreads();
        // As ce_backward_kernel at grad_loss 1 (its w, its zero rows).
        const float w = (t < 0 || t >= V || denom == 0.0) ? 0.0f : static_cast<float>(1.0 * mask_of(mask, i) / denom);
        const float l_log2e = row_lse * kLog2e;
        for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) {
            float v[8];
            unpack_bf16x8(staged[k], v);
            uint32_t packed[4];
#pragma unroll
            for (int h = 0; h < 4; ++h) {
                const int64_t e = 8 * k + 2 * h;
                const float g0 = w == 0.0f ? 0.0f : softmax_gradient(v[2 * h], l_log2e, w, e == t);
                const float g1 = w == 0.0f ? 0.0f : softmax_gradient(v[2 * h + 1], l_log2e, w, e + 1 == t);
                const __nv_bfloat162 pair = __floats2bfloat162_rn(g0, g1);
                packed[h] = *reinterpret_cast<const uint32_t*>(&pair);
            }
            reinterpret_cast<uint4*>(row)[k] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
        }
        __syncthreads();  // the next row is staged over this one
    }
}

const __nv_bfloat16* bf16_logits(const Inputs& in) { return static_cast<const __nv_bfloat16*>(in.logits_bf16); }

// Whole rows of 16-byte loads: V a multiple of a load's elements, the logits 16-byte aligned.
bool logits_vectorisable(const Inputs& in) {
    return in.logits_bf16 ? in.V % 8 == 0 && aligned16(in.logits_bf16) : in.V % 4 == 0 && aligned16(in.logits);
}

// The denominator, then the gradient rows into grad (f32 or bf16) from f32 or bf16 logits.
template <class T>
void launch_ce_backward(const Inputs& in, const float* plse, float grad_loss, T* pgrad, bool vectorised) {
    Tensor flag = make_error_flag();
    Tensor scratch = Tensor::empty({1}, DType::I64, Device::CUDA);
    double* denom = static_cast<double*>(scratch.raw_data());
    ce_denominator_kernel<<<1, kReduceThreads>>>(in.targets, in.mask, in.N, in.V, denom, flag_ptr(flag));
    HSA_CUDA_CHECK_LAUNCH("cross_entropy_backward ce_denominator_kernel");
    if (in.V > 0) {
        if (in.logits_bf16)
            ce_backward_kernel<<<row_grid(in.N), kRowThreads>>>(bf16_logits(in), in.targets, in.mask, plse, denom,
                                                                grad_loss, in.N, in.V, vectorised, pgrad);
        else
            ce_backward_kernel<<<row_grid(in.N), kRowThreads>>>(in.logits, in.targets, in.mask, plse, denom, grad_loss,
                                                                in.N, in.V, vectorised, pgrad);
        HSA_CUDA_CHECK_LAUNCH("cross_entropy_backward ce_backward_kernel");
    }
    throw_if_bad_target(flag, in, "cross_entropy_backward");
}

}  // namespace

void CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,
                                        Tensor& lse) {
    const Inputs in = checks::check_cross_entropy_inputs("cross_entropy", logits, targets, mask, Device::CUDA,
                                                         /*allow_bf16_logits=*/true);
    checks::check_cross_entropy_outputs(in, logits, loss, lse, Device::CUDA);
    float* ploss = loss.data<float>();
    float* plse = lse.data<float>();
    Tensor flag = make_error_flag();
    Tensor scratch = Tensor::empty({2 * (in.N < 1 ? 1 : in.N)}, DType::I64, Device::CUDA);
    double* nll = static_cast<double*>(scratch.raw_data());
    double* weight = nll + in.N;
    if (in.N > 0) {
        const bool vectorised = logits_vectorisable(in);
        if (in.logits_bf16)
            ce_rows_kernel<<<row_grid(in.N), kRowThreads>>>(bf16_logits(in), in.targets, in.mask, in.N, in.V,
                                                            vectorised, plse, nll, weight, flag_ptr(flag));
        else
            ce_rows_kernel<<<row_grid(in.N), kRowThreads>>>(in.logits, in.targets, in.mask, in.N, in.V, vectorised,
                                                            plse, nll, weight, flag_ptr(flag));
        HSA_CUDA_CHECK_LAUNCH("cross_entropy ce_rows_kernel");
    }
    ce_loss_kernel<<<1, kReduceThreads>>>(nll, weight, in.N, ploss);
    HSA_CUDA_CHECK_LAUNCH("cross_entropy ce_loss_kernel");
    throw_if_bad_target(flag, in, "cross_entropy");
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& mask,
                                         const Tensor& lse, float grad_loss, Tensor& grad_logits) {
    if (!grad_logits.defined()) return;
    const Inputs in = checks::check_cross_entropy_inputs("cross_entropy_backward", logits, targets, mask,
                                                         Device::CUDA, /*allow_bf16_logits=*/true);
    checks::check_cross_entropy_grad(in, logits, lse, grad_logits, Device::CUDA);
    float* pgrad = grad_logits.data<float>();
    if (in.N == 0) return;
    const bool vectorised = logits_vectorisable(in) && aligned16(pgrad);
    launch_ce_backward(in, lse.data<float>(), grad_loss, pgrad, vectorised);
}

bool CudaBackend::cross_entropy_forward_with_gradient(Tensor& logits, const Tensor& targets, const Tensor& mask,
                                                      Tensor& loss, Tensor& lse) {
    const char* op = "cross_entropy";
    if (logits.dtype() != DType::BF16 || !logits.is_contiguous()) {  // f32: as the unfused ops
        cross_entropy_forward(logits, targets, mask, loss, lse);
        return false;
    }
    const Inputs in = checks::check_cross_entropy_inputs(op, logits, targets, mask, Device::CUDA,
                                                         /*allow_bf16_logits=*/true);
    checks::check_cross_entropy_outputs(in, logits, loss, lse, Device::CUDA);
    const size_t row_bytes = static_cast<size_t>(in.V) * 2;
    const bool fused = in.N > 0 && in.V % 8 == 0 && aligned16(in.logits_bf16) &&
                       row_bytes <= static_cast<size_t>(max_shared_bytes()) - 1024;
    if (!fused) {  // the two kernels, the gradient written over the logits they read
        cross_entropy_forward(logits, targets, mask, loss, lse);
        if (in.N > 0)
            launch_ce_backward(in, lse.data<float>(), 1.0f, static_cast<__nv_bfloat16*>(logits.raw_data()),
                               logits_vectorisable(in));
        return true;
    }
    Tensor flag = make_error_flag();
    Tensor scratch = Tensor::empty({2 * in.N + 1}, DType::I64, Device::CUDA);
    double* nll = static_cast<double*>(scratch.raw_data());
    double* weight = nll + in.N;
    double* denom = weight + in.N;
    ce_denominator_kernel<<<1, kReduceThreads>>>(in.targets, in.mask, in.N, in.V, denom, flag_ptr(flag));
    HSA_CUDA_CHECK_LAUNCH("cross_entropy ce_denominator_kernel");
    allow_shared_bytes(op, ce_forward_gradient_bf16_kernel, row_bytes);
    ce_forward_gradient_bf16_kernel<<<row_grid(in.N), kFusedRowThreads, row_bytes>>>(
        static_cast<__nv_bfloat16*>(logits.raw_data()), in.targets, in.mask, denom, in.N, in.V, lse.data<float>(), nll,
        weight, flag_ptr(flag));
    HSA_CUDA_CHECK_LAUNCH("cross_entropy ce_forward_gradient_bf16_kernel");
    ce_loss_kernel<<<1, kReduceThreads>>>(nll, weight, in.N, loss.data<float>());
    HSA_CUDA_CHECK_LAUNCH("cross_entropy ce_loss_kernel");
    throw_if_bad_target(flag, in, op);
    return true;
}

}  // namespace hsa
