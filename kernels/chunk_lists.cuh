// Chunk-index helpers shared by the retrieval and HSA kernel families: host functions
// defined in kernels/retrieval.cu (used there and by kernels/hsa.cu, hsa_forward_v1.cu and
// hsa_backward_v1.cu), and SelectedChunks, the token-centric HSA kernels' walk over a row's
// selected chunks.
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

// One (b, t, r) row's K selection entries as the token-centric HSA kernels walk them (the
// same values on every lane of a warp): padding entries (-1) are skipped. (Where a chunk's
// rows start stays with the kernels: computed from their parameters there, it costs no
// registers across the loop.)
struct SelectedChunks {
    const int32_t* entries;  // indices + the row's first entry
    int64_t K;

    // The next real entry at or after `from` (K when none).
    __device__ __forceinline__ int64_t next(int64_t from) const {
        while (from < K && __ldg(entries + from) < 0) ++from;
        return from;
    }
    __device__ __forceinline__ int64_t chunk(int64_t k) const { return __ldg(entries + k); }
    // The padding entries' per-(row, entry) outputs (lse, od) of tile rows a / b are 0.
    __device__ __forceinline__ void zero_padding(float* row_a, float* row_b, bool has_a, bool has_b, int tig) const {
        for (int64_t k = 0; k < K; ++k)
            if (__ldg(entries + k) < 0 && tig == 0) {
                if (has_a) row_a[k] = 0.0f;
                if (has_b) row_b[k] = 0.0f;
            }
    }
};

}  // namespace hsa::cuda_detail
