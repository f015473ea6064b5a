// HSA backward, version 1: the two heavy passes of CudaBackend::hsa_backward
// (kernels/hsa.cu) on tensor cores (mma.sync m16n8k16, bf16 operands, f32 accumulation),
// used at bf16 matrix-product precision together with the version-1 forward
// (kernels/hsa_forward_v1.cu), whose per-chunk lse they consume. The backend keeps its
// light passes (grad_weights from od, zero rows past the last whole chunk) and the chunk
// pair lists. Deterministic: no atomics.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace hsa {

// Where the backend runs HSA on tensor cores (the v1 forward and this backward together:
// the backward recomputes against the forward's lse): head dim 64 (the forward alone also
// takes 128), chunk size 64, GQA group G = H / Hk in 1..16, 16-byte aligned data.
bool hsa_tensor_core_eligible(int64_t head_dim, int64_t chunk_size, int64_t group,
                              std::initializer_list<const Tensor*> tensors);

struct HsaTensorCoreShape {
    int64_t B, T, H, Hk, Hr, Tm, K, C;  // C = Tm / S whole chunks
};

// Pass 1, one warp per (b, t, KV head): od[b,t,h,k] = dO[t,h] . o[t,h,k] (0 at padding) and,
// when grad_q is not null, grad_q.
void hsa_backward_queries_tensor_core(const HsaTensorCoreShape& shape, const float* q, const float* kmem,
                                      const float* vmem, const int32_t* indices, const float* weights,
                                      const float* lse, const float* grad_out, float* od, float* grad_q);

// Pass 3, one block per (b, chunk, KV head) over the chunk's selections (pair lists of
// cuda_detail::build_chunk_pair_lists): grad_kmem / grad_vmem rows of every whole chunk
// (either may be null).
void hsa_backward_memory_tensor_core(const HsaTensorCoreShape& shape, const float* q, const float* kmem,
                                     const float* vmem, const float* weights, const float* lse,
                                     const float* grad_out, const float* od, const int32_t* pair_ids,
                                     const int32_t* segment_start, float* grad_kmem, float* grad_vmem);

}  // namespace hsa
