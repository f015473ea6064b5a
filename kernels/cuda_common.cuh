// Shared CUDA helpers for the kernel files: error checks after every runtime call and
// launch, argument checks for tensors, grid sizing. Defines: HSA_CUDA_CHECK,
// HSA_CUDA_CHECK_LAUNCH, cuda_f32, cuda_i32, blocks_for.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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

inline unsigned blocks_for(int64_t work, int threads) {
    int64_t blocks = (work + threads - 1) / threads;
    if (blocks < 1) blocks = 1;
    return static_cast<unsigned>(blocks);
}

}  // namespace hsa
