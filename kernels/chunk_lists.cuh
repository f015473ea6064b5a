// Chunk-index helpers shared by the retrieval and HSA kernel families: host functions
// defined in kernels/retrieval.cu (used there and by kernels/hsa.cu, hsa_forward_v1.cu and
// hsa_backward_v1.cu), the chunk-centric kernels' work items (ChunkWorkItems), and
// SelectedChunks, the token-centric HSA kernels' walk over a row's selected chunks.
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

// Work items over the segments of build_chunk_pair_lists, for the chunk-centric kernels
// (HSA backward pass 3, the landmark gradient): how often a chunk is selected varies widely
// (with random top-K, chunk 0 is seen by every token and selected ~3x the mean at 8 x 4K),
// and one block per segment leaves a grid waiting on its busiest segments. Segment u's
// selections are cut into items of at most per_item selections, at least one item a
// segment (an unselected chunk still writes its zero rows): items item_start[u] ..
// item_start[u + 1]. A segment of several items writes one partial per item, to slots
// partial_start[u] .. + items, which a second kernel adds in item order: deterministic.
struct ChunkWorkItems {
    Tensor item_start;     // [segments + 1] int32, exclusive prefix sums of the item counts
    Tensor partial_start;  // [segments + 1] int32, the same over segments of several items
    int64_t max_items = 0;  // a bound on the items (the grid): segments + pairs / per_item
    int64_t max_slots = 0;  // a bound on the partial slots: 2 pairs / per_item + 1
    int64_t per_item = 0;
};

// max_pairs: a bound on the selections (e.g. B * T * Hr * K, padding included).
ChunkWorkItems plan_chunk_work_items(const char* op, const int32_t* segment_start, int64_t segments,
                                     int64_t max_pairs, int64_t per_item);

// Selections an item should hold for `blocks_per_sm` resident blocks an SM and `work` total
// selections (times any per-selection multiplicity of the blocks): about 2 items per block
// slot of the current GPU, at least min_per_item.
int64_t chunk_work_per_item(int64_t work, int blocks_per_sm, int64_t min_per_item);

// The batch, retrieval head and chunk of segment u = (b * Hr + r) * C + c.
struct ChunkSegment {
    int64_t b, r, c;
    __device__ __forceinline__ ChunkSegment(int64_t segment, int64_t C, int64_t Hr)
        : b(segment / C / Hr), r((segment / C) % Hr), c(segment % C) {}
};

// Block `item`'s segment, its part (0-based) and the segment's item count; false past the
// last item (the grid is an upper bound). Binary search: every segment has >= 1 item.
struct ChunkWorkItem {
    int segment, part, items;
};
__device__ __forceinline__ bool find_chunk_work_item(const int32_t* item_start, int segments, int item,
                                                     ChunkWorkItem& w) {
    if (item >= __ldg(item_start + segments)) return false;
    int lo = 0;
    for (int hi = segments - 1; lo < hi;) {
        const int mid = (lo + hi + 1) / 2;
        if (__ldg(item_start + mid) <= item) lo = mid;
        else hi = mid - 1;
    }
    w.segment = lo;
    w.part = item - __ldg(item_start + lo);
    w.items = __ldg(item_start + lo + 1) - __ldg(item_start + lo);
    return true;
}

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
