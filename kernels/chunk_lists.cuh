// Chunk-index helpers shared by the retrieval and HSA kernel families, defined in
// kernels/retrieval.cu and used there and by kernels/hsa.cu and kernels/hsa_forward_v1.cu.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace hsa::cuda_detail {

// Throws an hsa::Error naming the first element of indices that is neither -1 nor a chunk
// in [0, num_chunks). Synchronises with the device (reads the error flag back).
void check_chunk_indices_cuda(const char* op, const Tensor& indices, int64_t num_chunks);

// indices [B, T, Hr, K] (already checked). Writes pair_ids [max(N, 1)]: the flat positions
// p = ((b * T + t) * Hr + r) * K + k of all non-padding entries, grouped by segment
// u = (b * Hr + r) * C + c in ascending u and, within a segment, ascending p (the radix
// sort is stable), and segment_start [B * Hr * C + 1]: segment u is
// pair_ids[segment_start[u] .. segment_start[u + 1]). Deterministic, linear in N.
void build_chunk_pair_lists(const char* op, const Tensor& indices, int64_t num_chunks, Tensor& pair_ids,
                            Tensor& segment_start);

}  // namespace hsa::cuda_detail
