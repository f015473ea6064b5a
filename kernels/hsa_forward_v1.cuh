// HSA forward, version 1: bf16 operands on tensor cores (mma.sync m16n8k16), f32
// accumulation and f32 softmax. Same semantics and shapes as Backend::hsa_forward
// (core/backend.h); f32 tensors in and out, q / K / V / probabilities rounded to bf16
// (round to nearest even) inside the kernel. Kept beside version 0 (kernels/hsa.cu,
// CudaBackend::hsa_forward) as a numbered variant, validated by tests/test_cuda_hsa_v1.cpp
// and timed by `hsa bench hsa`; the faster one later moves into the backend.
//
// Supported: head dim d in {64, 128}, chunk size S = 64, GQA group G = H / Hk in 1..16;
// anything else is rejected with an error naming the supported set.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace hsa {

// q [B, T, H, d]; kmem, vmem [B, Tm, Hk, d]; indices (i32), weights [B, T, Hr, K];
// out [B, T, H, d], lse [B, T, H, K]: all CUDA, contiguous, f32 except indices.
// indices_checked: the caller has already checked every index against the chunks of kmem
// (the backend's hsa_forward has), so the device round trip of that check is skipped.
void hsa_forward_tensor_core(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                             const Tensor& weights, int64_t chunk_size, Tensor& out, Tensor& lse,
                             bool indices_checked = false);

}  // namespace hsa
