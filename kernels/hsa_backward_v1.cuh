// HSA backward, version 1: the two heavy passes of CudaBackend::hsa_backward
// (kernels/hsa.cu) on tensor cores (mma.sync m16n8k16, bf16 operands, f32 accumulation),
// used at bf16 matrix-product precision together with the version-1 forward
// (kernels/hsa_forward_v1.cu), whose per-chunk lse they consume. The backend keeps its
// light passes (grad_weights from od, zero rows past the last whole chunk) and the chunk
// pair lists. Deterministic: no atomics.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/tensor.h"

namespace hsa {

// Where the backend runs HSA on tensor cores (the v1 forward and this backward together:
// the backward recomputes against the forward's lse): head dim 64 or 128, chunk size 64,
// GQA group G = H / Hk in 1..16, 16-byte aligned data.
bool hsa_tensor_core_eligible(int64_t head_dim, int64_t chunk_size, int64_t group,
                              std::initializer_list<const Tensor*> tensors);

struct HsaTensorCoreShape {
    int64_t B, T, H, Hk, Hr, Tm, K, C;  // C = Tm / S whole chunks
    int64_t d;                           // head dim: 64 or 128
};

// The operands both passes read: f32 q / dO rows (pass 1's A operands, read once), bf16
// copies of kmem / vmem (the chunk tiles; rounded by the caller, one pass each), the
// weights and the forward's per-chunk lse.
struct HsaTensorCoreOperands {
    const float* q;
    const float* grad_out;
    const __nv_bfloat16* kmem16;
    const __nv_bfloat16* vmem16;
    const float* weights;
    const float* lse;
};

// Pass 1, one warp per (b, t, KV head): od[b,t,h,k] = dO[t,h] . o[t,h,k] (0 at padding) and,
// when grad_q is not null, grad_q. When q16_out is not null, also bf16 copies of q and dO
// (for pass 3) into q16_out / grad_out16_out, [B, T, H, d] each.
void hsa_backward_queries_tensor_core(const HsaTensorCoreShape& shape, const HsaTensorCoreOperands& in,
                                      const int32_t* indices, float* od, float* grad_q, __nv_bfloat16* q16_out,
                                      __nv_bfloat16* grad_out16_out);

// Pass 3 over each chunk's selections (pair lists of cuda_detail::build_chunk_pair_lists),
// one block per (work item of a chunk's selections, cuda_detail::ChunkWorkItems; KV head):
// grad_kmem / grad_vmem rows of every whole chunk (either may be null). q16 / grad_out16:
// pass 1's bf16 copies.
void hsa_backward_memory_tensor_core(const HsaTensorCoreShape& shape, const HsaTensorCoreOperands& in,
                                     const __nv_bfloat16* q16, const __nv_bfloat16* grad_out16, const float* od,
                                     const int32_t* pair_ids, const int32_t* segment_start, float* grad_kmem,
                                     float* grad_vmem);

}  // namespace hsa
