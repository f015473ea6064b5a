// Shared CUDA helpers for the kernel files: error checks after every runtime call and
// launch, argument checks for tensors, grid sizing, dynamic shared memory limits and a
// fixed-order block sum. Defines: HSA_CUDA_CHECK, HSA_CUDA_CHECK_LAUNCH, cuda_f32,
// cuda_i32, rounded_bf16_copy, widened_f32_copy, blocks_for, aligned16, all_16_byte_aligned, max_shared_bytes, allow_shared_bytes, block_sum,
// store4 / store1 and load4 / load1 (f32 or bf16 elements), load8 / store8 (bf16), task_of_block (multi-tensor launches).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "core/backend_checks.h"
#include "core/tensor.h"

namespace hsa {

#define HSA_CUDA_CHECK(call)                                                                              \
    do {                                                                                                  \
        cudaError_t hsa_cuda_status_ = (call);                                                            \
        HSA_CHECK(hsa_cuda_status_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(hsa_cuda_status_)); \
    } while (0)

// After a <<<...>>> launch: reports bad configurations at once; asynchronous faults
// surface at the next synchronising call with their own message.
#define HSA_CUDA_CHECK_LAUNCH(kernel_name)                                                                \
    do {                                                                                                  \
        cudaError_t hsa_cuda_status_ = cudaGetLastError();                                                \
        HSA_CHECK(hsa_cuda_status_ == cudaSuccess, "launch of " << kernel_name << " failed: "             \
                                                                << cudaGetErrorString(hsa_cuda_status_)); \
    } while (0)

// Checked typed device pointers: defined, on CUDA, the right dtype, contiguous (the
// shared checks of core/backend_checks.h, which also hold each op's shape checks).
inline float* cuda_f32(const Tensor& t, const char* op, const char* what) {
    return checks::f32_data(t, op, what, Device::CUDA);
}

inline int32_t* cuda_i32(const Tensor& t, const char* op, const char* what) {
    return checks::i32_data(t, op, what, Device::CUDA);
}

// A bf16 copy (round to nearest even) of a contiguous f32 CUDA tensor, same shape, from the
// caching allocator; one vectorised pass (kernels/gemm.cu).
Tensor rounded_bf16_copy(const Tensor& t);
void round_into_bf16(const Tensor& t, Tensor& dst);  // dst: contiguous bf16, t's element count
// An f32 copy (exact) of a contiguous bf16 CUDA tensor, same shape (kernels/gemm.cu).
Tensor widened_f32_copy(const Tensor& t);

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// True when every defined, non-empty tensor of the list (null entries: not wanted) starts
// on a 16-byte boundary: what the vectorised and tensor-core kernels need; a view at an odd
// offset goes to the scalar kernels instead.
inline bool all_16_byte_aligned(std::initializer_list<const Tensor*> tensors) {
    for (const Tensor* t : tensors)
        if (t && t->defined() && t->numel() > 0 && !aligned16(t->raw_data())) return false;
    return true;
}

inline unsigned blocks_for(int64_t work, int threads) {
    int64_t blocks = (work + threads - 1) / threads;
    if (blocks < 1) blocks = 1;
    return static_cast<unsigned>(blocks);
}

// Largest dynamic shared memory one block may opt in to on the current device.
inline int max_shared_bytes() {
    int device = 0, bytes = 0;
    HSA_CUDA_CHECK(cudaGetDevice(&device));
    HSA_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return bytes;
}

// Streaming multiprocessors of the current device (grid sizing against waves of blocks).
inline int multiprocessor_count() {
    int device = 0, sms = 0;
    HSA_CUDA_CHECK(cudaGetDevice(&device));
    HSA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
}

// Opts `kernel` in to `bytes` of dynamic shared memory when that exceeds the default 48 KB
// (the caller has checked `bytes` against max_shared_bytes()).
template <class Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        HSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// As above, after checking `bytes` against the device's limit (an hsa::Error naming op).
template <class Kernel>
void allow_shared_bytes(const char* op, Kernel kernel, size_t bytes) {
    HSA_CHECK(static_cast<int64_t>(bytes) <= max_shared_bytes(),
              op << ": needs " << bytes << " bytes of shared memory per block, more than the device allows");
    allow_shared_bytes(kernel, bytes);
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024) in a fixed order, in double;
// every thread gets the result. `shared` holds at least 32 values (a __shared__ array of
// the caller). Ends with a barrier, so the caller may overwrite what it has read.
__device__ inline double block_sum(double v, double* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x >> 5;
        v = lane < warps ? shared[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    const double result = shared[0];
    __syncthreads();
    return result;
}

// Element stores of an f32 result as f32, or as bf16 rounded to nearest even (the same
// rounding as rounded_bf16_copy): kernels that write a GEMM operand directly in bf16.
__device__ __forceinline__ void store4(float* p, int64_t k, float4 v) { reinterpret_cast<float4*>(p)[k] = v; }
__device__ __forceinline__ void store4(__nv_bfloat16* p, int64_t k, float4 v) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    reinterpret_cast<uint2*>(p)[k] =
        make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}
__device__ __forceinline__ void store1(float* p, int64_t k, float v) { p[k] = v; }
__device__ __forceinline__ void store1(__nv_bfloat16* p, int64_t k, float v) { p[k] = __float2bfloat16_rn(v); }
// The matching loads: element 4k..4k+3 (16 bytes of f32, 8 of bf16) or element k, as f32.
__device__ __forceinline__ float4 load4(const float* p, int64_t k) { return reinterpret_cast<const float4*>(p)[k]; }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p, int64_t k) {
    const uint2 raw = reinterpret_cast<const uint2*>(p)[k];
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ float load1(const float* p, int64_t k) { return p[k]; }
__device__ __forceinline__ float load1(const __nv_bfloat16* p, int64_t k) { return __bfloat162float(p[k]); }
// Eight bf16 elements 8k..8k+7 as one 16-byte access, widened to / rounded from f32 (to
// nearest even): the bf16 elementwise passes, whose 8-byte accesses left DRAM bandwidth unused.
struct Float8 {
    float v[8];
};
__device__ __forceinline__ Float8 load8(const __nv_bfloat16* p, int64_t k) {
    const uint4 raw = reinterpret_cast<const uint4*>(p)[k];
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    Float8 f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 pair = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[i]));
        f.v[2 * i] = pair.x;
        f.v[2 * i + 1] = pair.y;
    }
    return f;
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, int64_t k, const Float8& f) {
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const __nv_bfloat162 pair = __floats2bfloat162_rn(f.v[2 * i], f.v[2 * i + 1]);
        words[i] = *reinterpret_cast<const uint32_t*>(&pair);
    }
    reinterpret_cast<uint4*>(p)[k] = make_uint4(words[0], words[1], words[2], words[3]);
}

// Multi-tensor launches: block b belongs to task t with block_start[t] <= b <
// block_start[t + 1] (block_start: prefix sums of the tasks' block counts, count + 1 entries).
__device__ __forceinline__ int task_of_block(const int64_t* block_start, int count, int64_t b) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (block_start[mid] <= b) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

}  // namespace hsa
