// CUDA retrieval: top-K chunk selection (select_chunks) and the weights over the selected
// chunks (chunk_weights_forward / chunk_weights_backward). Semantics: core/backend.h;
// math: shared/design/MODEL.md "Retrieval"; reference: core/cpu/cpu_attention.cpp.
//
// Also defines the helpers of kernels/chunk_lists.cuh (namespace cuda_detail), used by
// hsa.cu, hsa_forward_v1.cu and hsa_backward_v1.cu as well: check_chunk_indices_cuda,
// build_chunk_pair_lists, plan_chunk_work_items, chunk_work_per_item.
//
// select_chunks never forms the (tokens x chunks) score matrix in memory: for short contexts
// (<= 256 visible chunks) a block scores 64 tokens against their chunks as a small product
// kept in shared memory (select_chunks_tiled_kernel); otherwise one block per query row
// (b, t, r) streams over its visible chunks in rounds of kSelectBatch, keeps a sorted top
// list in shared memory, and appends to a candidate buffer only the chunks that reach the
// current K-th best score; the buffer is merged into the list (rank by a strict total
// order) when it could overflow. Chunks arrive in increasing index order, so a candidate
// that ties the K-th best has the larger index and wins the tie, as the reference wants.
//
// The weights (chunk_weights_forward / backward) take one warp per query row, which dots
// qr with its K selected landmarks; with one retrieval head and at most 256 chunks (short
// contexts: training at 4K has 64) they take the dense path instead: the (tokens x chunks)
// scores as one f32 product per batch, and the gradients as two more (dense_weights below).
//
// Precision: scores are f32 dot products with a fixed accumulation order (the CPU
// reference accumulates in double). Exact ties (equal scores, e.g. equal landmarks) go to
// the larger chunk index exactly as on the CPU, but two chunks whose scores differ by less
// than float rounding may rank differently from the reference. Weights are f32 too.
//
// Determinism: no float atomics. grad_landmarks is computed per landmark (b, c, r) by
// looping, in (t, k) order, over the selections that hold c (build_chunk_pair_lists, a
// stable radix sort), so results are bit-identical run to run.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "core/precision.h"
#include "kernels/chunk_lists.cuh"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

// ================================================================ shared with hsa.cu (kernels/chunk_lists.cuh)

namespace cuda_detail {

__global__ void find_bad_chunk_index_kernel(const int32_t* indices, int64_t n, int64_t num_chunks, int* first_bad) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int32_t c = indices[i];
        if (c != -1 && (c < 0 || c >= num_chunks)) atomicMin(first_bad, static_cast<int>(i));
    }
}

// Throws an hsa::Error naming the first element of indices that is neither -1 nor a chunk
// in [0, num_chunks). Synchronises with the device (reads the error flag back).
void check_chunk_indices_cuda(const char* op, const Tensor& indices, int64_t num_chunks) {
    const int32_t* idx = cuda_i32(indices, op, "indices");
    const int64_t n = indices.numel();
    if (n == 0) return;
    HSA_CHECK(n <= INT_MAX, op << ": indices has " << n << " elements, expected at most " << INT_MAX);
    Tensor flag = Tensor::empty({1}, DType::I32, Device::CUDA);
    int* d_flag = flag.data<int32_t>();
    const int none = INT_MAX;
    HSA_CUDA_CHECK(cudaMemcpy(d_flag, &none, sizeof(int), cudaMemcpyHostToDevice));
    const unsigned blocks = std::min<unsigned>(blocks_for(n, 256), 4096u);
    find_bad_chunk_index_kernel<<<blocks, 256>>>(idx, n, num_chunks, d_flag);
    HSA_CUDA_CHECK_LAUNCH("find_bad_chunk_index_kernel");
    int first_bad = INT_MAX;
    HSA_CUDA_CHECK(cudaMemcpy(&first_bad, d_flag, sizeof(int), cudaMemcpyDeviceToHost));
    if (first_bad != INT_MAX) {
        int32_t value = 0;
        HSA_CUDA_CHECK(cudaMemcpy(&value, idx + first_bad, sizeof(int32_t), cudaMemcpyDeviceToHost));
        HSA_FAIL(op << ": indices element " << first_bad << " is " << value << ", expected -1 or a chunk in [0, "
                    << num_chunks << ")");
    }
}

// Key of a selection: its segment (b * Hr + r) * C + c, or num_segments for padding
// (sorted last, outside every segment). Value: its flat position in indices.
__global__ void chunk_pair_keys_kernel(const int32_t* indices, int64_t n, int64_t T, int64_t Hr, int64_t K,
                                       int64_t num_chunks, int64_t num_segments, uint32_t* keys,
                                       int32_t* positions) {
    for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n;
         p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t sel = p / K;  // (b * T + t) * Hr + r
        const int64_t r = sel % Hr;
        const int64_t b = sel / (Hr * T);
        const int32_t c = indices[p];
        const bool valid = c >= 0 && c < num_chunks;
        keys[p] = static_cast<uint32_t>(valid ? (b * Hr + r) * num_chunks + c : num_segments);
        positions[p] = static_cast<int32_t>(p);
    }
}

// segment_start[u] = first position of the sorted keys that is >= u, for u in [0, num_segments].
__global__ void segment_starts_kernel(const uint32_t* sorted_keys, int64_t n, int64_t num_segments,
                                      int32_t* segment_start) {
    const int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (u > num_segments) return;
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (static_cast<int64_t>(sorted_keys[mid]) < u) lo = mid + 1;
        else hi = mid;
    }
    segment_start[u] = static_cast<int32_t>(lo);
}

// indices [B, T, Hr, K] (already checked). Writes pair_ids [max(N, 1)]: the flat positions
// p = ((b * T + t) * Hr + r) * K + k of all non-padding entries, grouped by segment
// u = (b * Hr + r) * C + c in ascending u and, within a segment, ascending p (the radix
// sort is stable), and segment_start [B * Hr * C + 1]: segment u is
// pair_ids[segment_start[u] .. segment_start[u + 1]). Deterministic, linear in N.
void build_chunk_pair_lists(const char* op, const Tensor& indices, int64_t num_chunks, Tensor& pair_ids,
                            Tensor& segment_start) {
    const int32_t* idx = cuda_i32(indices, op, "indices");
    HSA_CHECK(indices.ndim() == 4, op << ": indices has shape " << shape_string(indices.shape())
                                      << ", expected [B, T, Hr, K]");
    const int64_t B = indices.size(0), T = indices.size(1), Hr = indices.size(2), K = indices.size(3);
    const int64_t n = indices.numel();
    const int64_t num_segments = B * Hr * num_chunks;
    HSA_CHECK(n < INT_MAX, op << ": indices has " << n << " elements, expected fewer than " << INT_MAX);
    HSA_CHECK(num_segments < INT_MAX, op << ": " << num_segments << " (batch, retrieval head, chunk) triples, expected fewer than "
                                         << INT_MAX);
    pair_ids = Tensor::empty({std::max<int64_t>(n, 1)}, DType::I32, Device::CUDA);
    segment_start = Tensor::empty({num_segments + 1}, DType::I32, Device::CUDA);
    if (n == 0 || T * Hr * K == 0) {
        HSA_CUDA_CHECK(cudaMemsetAsync(segment_start.raw_data(), 0, segment_start.nbytes(), 0));
        return;
    }
    Tensor keys_in = Tensor::empty({n}, DType::I32, Device::CUDA);
    Tensor keys_out = Tensor::empty({n}, DType::I32, Device::CUDA);
    Tensor positions = Tensor::empty({n}, DType::I32, Device::CUDA);
    uint32_t* keys_in_p = reinterpret_cast<uint32_t*>(keys_in.data<int32_t>());
    uint32_t* keys_out_p = reinterpret_cast<uint32_t*>(keys_out.data<int32_t>());
    int32_t* positions_p = positions.data<int32_t>();
    int32_t* pair_ids_p = pair_ids.data<int32_t>();

    const unsigned blocks = std::min<unsigned>(blocks_for(n, 256), 8192u);
    chunk_pair_keys_kernel<<<blocks, 256>>>(idx, n, T, Hr, K, num_chunks, num_segments, keys_in_p, positions_p);
    HSA_CUDA_CHECK_LAUNCH("chunk_pair_keys_kernel");

    int end_bit = 1;  // keys lie in [0, num_segments]: sort only the bits they use
    while (end_bit < 32 && (int64_t{1} << end_bit) <= num_segments) ++end_bit;
    const int num_items = static_cast<int>(n);
    size_t temp_bytes = 0;
    HSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in_p, keys_out_p, positions_p, pair_ids_p,
                                                   num_items, 0, end_bit, cudaStream_t{0}));
    Tensor temp = Tensor::empty({static_cast<int64_t>(temp_bytes / 8 + 1)}, DType::I64, Device::CUDA);
    HSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, keys_in_p, keys_out_p, positions_p,
                                                   pair_ids_p, num_items, 0, end_bit, cudaStream_t{0}));
    HSA_CUDA_CHECK_LAUNCH("cub::DeviceRadixSort::SortPairs");

    segment_starts_kernel<<<blocks_for(num_segments + 1, 256), 256>>>(keys_out_p, n, num_segments,
                                                                       segment_start.data<int32_t>());
    HSA_CUDA_CHECK_LAUNCH("segment_starts_kernel");
}

// Items of segment u: max(1, ceil(pairs / per_item)); partial slots: the items of segments
// with more than one, 0 otherwise. Entry `segments` is 0: the scans turn it into the totals.
__global__ void chunk_item_counts_kernel(const int32_t* segment_start, int segments, int per_item, int32_t* items,
                                         int32_t* slots) {
    const int u = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (u > segments) return;
    if (u == segments) {
        items[u] = 0;
        slots[u] = 0;
        return;
    }
    const int pairs = segment_start[u + 1] - segment_start[u];
    const int n = pairs <= per_item ? 1 : (pairs + per_item - 1) / per_item;
    items[u] = n;
    slots[u] = n > 1 ? n : 0;
}

void exclusive_sum_in_place(int32_t* values, int n) {
    size_t temp_bytes = 0;
    HSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, values, values, n));
    Tensor temp = Tensor::empty({static_cast<int64_t>(temp_bytes / 8 + 1)}, DType::I64, Device::CUDA);
    HSA_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.raw_data(), temp_bytes, values, values, n));
    HSA_CUDA_CHECK_LAUNCH("cub::DeviceScan::ExclusiveSum");
}

ChunkWorkItems plan_chunk_work_items(const char* op, const int32_t* segment_start, int64_t segments,
                                     int64_t max_pairs, int64_t per_item) {
    HSA_CHECK(per_item >= 1 && per_item < INT_MAX, op << ": work items of " << per_item << " selections");
    ChunkWorkItems w;
    w.per_item = per_item;
    // A segment of n selections has <= 1 + n / per_item items; one of several items has
    // n > per_item, so ceil(n / per_item) < 2 n / per_item partial slots.
    w.max_items = segments + max_pairs / per_item;
    w.max_slots = 2 * max_pairs / per_item + 1;
    HSA_CHECK(w.max_items < INT_MAX && segments < INT_MAX,
              op << ": " << w.max_items << " work items over " << segments << " chunk segments, expected fewer than "
                 << INT_MAX);
    w.item_start = Tensor::empty({segments + 1}, DType::I32, Device::CUDA);
    w.partial_start = Tensor::empty({segments + 1}, DType::I32, Device::CUDA);
    chunk_item_counts_kernel<<<blocks_for(segments + 1, 256), 256>>>(
        segment_start, static_cast<int>(segments), static_cast<int>(per_item),
        w.item_start.data<int32_t>(), w.partial_start.data<int32_t>());
    HSA_CUDA_CHECK_LAUNCH("chunk_item_counts_kernel");
    exclusive_sum_in_place(w.item_start.data<int32_t>(), static_cast<int>(segments + 1));
    exclusive_sum_in_place(w.partial_start.data<int32_t>(), static_cast<int>(segments + 1));
    return w;
}

int64_t chunk_work_per_item(int64_t work, int blocks_per_sm, int64_t min_per_item) {
    const int64_t slots = static_cast<int64_t>(multiprocessor_count()) * blocks_per_sm;
    return std::max(min_per_item, (work + 2 * slots - 1) / (2 * slots));
}

}  // namespace cuda_detail

namespace {

using checks::RetrievalDims;

// The CUDA kernels' limit on the number of chunks, after the shared checks (core/backend_checks.h).
void check_retrieval_limits(const char* op, const RetrievalDims& D) {
    HSA_CHECK(D.C < INT_MAX, op << ": landmarks has " << D.C << " chunks, expected fewer than " << INT_MAX);
}

// Sum over a group of `width` lanes (a power of two dividing 32), all lanes of the warp
// taking part. The xor butterfly adds the same pairs in the same order on every lane, so
// every lane of the group ends with the same, run-to-run identical value.
__device__ __forceinline__ float group_sum(float v, int width) {
    for (int offset = width / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Dot product of n floats by one whole warp: lane l takes elements l, l + 32, ... in order.
__device__ __forceinline__ float warp_dot(const float* a, const float* b, int64_t n, int lane) {
    float acc = 0.0f;
    for (int64_t i = lane; i < n; i += 32) acc = fmaf(a[i], b[i], acc);
    return group_sum(acc, 32);
}

// ---------------------------------------------------------------- select_chunks

constexpr int kSelectThreads = 128;
constexpr int kSelectBatch = kSelectThreads;      // chunks scored per round
constexpr int kSelectBuffer = 2 * kSelectBatch;   // candidate buffer capacity
constexpr int64_t kSelectMaxK = 1024;             // shared memory: (K + buffer) candidates
constexpr int64_t kSelectMaxDr = 8192;            // qr row kept in shared memory

struct SelectParams {
    const float* qr;
    const float* landmarks;
    int32_t* indices;
    int64_t T, Hr, dr, C, S, K;
    int group_width;  // lanes per dot product: a power of two <= 32
    float scale;      // 1 / sqrt(dr)
};

// a ranks before b: higher score, ties to the larger chunk index (a strict total order).
__device__ __forceinline__ bool ranks_before(float score_a, int chunk_a, float score_b, int chunk_b) {
    return score_a > score_b || (score_a == score_b && chunk_a > chunk_b);
}

// One block per query row (b, t, r). Shared memory: q [dr], pool_score / pool_chunk
// [K + kSelectBuffer] (the sorted top list at [0, n_top), candidates at [K, K + n_buf)),
// next_score / next_chunk [K], batch_score [kSelectBatch].
__global__ void __launch_bounds__(kSelectThreads) select_chunks_kernel(SelectParams P) {
    extern __shared__ float select_shared[];
    const int K = static_cast<int>(P.K);
    float* q = select_shared;
    float* pool_score = q + P.dr;
    int* pool_chunk = reinterpret_cast<int*>(pool_score + K + kSelectBuffer);
    float* next_score = reinterpret_cast<float*>(pool_chunk + K + kSelectBuffer);
    int* next_chunk = reinterpret_cast<int*>(next_score + K);
    float* batch_score = reinterpret_cast<float*>(next_chunk + K);
    __shared__ int n_top, n_buf;
    __shared__ float threshold;  // a chunk enters the candidates iff its score >= threshold

    const int tid = threadIdx.x;
    const int64_t row = blockIdx.x;  // (b * T + t) * Hr + r
    const int64_t r = row % P.Hr;
    const int64_t t = (row / P.Hr) % P.T;
    const int64_t b = row / (P.Hr * P.T);
    const int64_t visible = min(t / P.S, P.C);  // chunks c < floor(t / S) and c < C

    for (int64_t i = tid; i < P.dr; i += kSelectThreads) q[i] = P.qr[row * P.dr + i];
    if (tid == 0) {
        n_top = 0;
        n_buf = 0;
        threshold = -INFINITY;
    }
    __syncthreads();

    const int width = P.group_width;
    const int groups = kSelectThreads / width;
    const int group = tid / width;
    const int group_lane = tid % width;
    const float* landmarks_br = P.landmarks + (b * P.C * P.Hr + r) * P.dr;  // chunk c at + c * Hr * dr

    for (int64_t base = 0; base < visible; base += kSelectBatch) {
        // Score the round's chunks: each group of `width` lanes one chunk at a time. Every
        // group runs the same number of iterations so that whole warps reach the shuffles.
        for (int slot = group; slot < kSelectBatch; slot += groups) {
            const int64_t c = base + slot;
            float acc = 0.0f;
            if (c < visible) {
                const float* l = landmarks_br + c * P.Hr * P.dr;
                for (int64_t i = group_lane; i < P.dr; i += width) acc = fmaf(q[i], l[i], acc);
            }
            acc = group_sum(acc, width);
            if (group_lane == 0 && c < visible) {
                const float s = acc * P.scale;
                batch_score[slot] = isnan(s) ? -INFINITY : s;  // NaN ranks last, as on the CPU
            }
        }
        __syncthreads();
        if (tid < kSelectBatch && base + tid < visible) {
            const float s = batch_score[tid];
            if (s >= threshold) {  // ties the K-th best with a larger index: a candidate
                const int at = atomicAdd(&n_buf, 1);
                pool_score[K + at] = s;
                pool_chunk[K + at] = static_cast<int>(base + tid);
            }
        }
        __syncthreads();
        const bool last_round = base + kSelectBatch >= visible;
        if (n_buf > kSelectBuffer - kSelectBatch || (last_round && n_buf > 0)) {
            // Merge: each entry's rank among list + candidates; the best K form the new list.
            const int total = n_top + n_buf;
            for (int e = tid; e < total; e += kSelectThreads) {
                const int pe = e < n_top ? e : K + (e - n_top);
                const float se = pool_score[pe];
                const int ce = pool_chunk[pe];
                int rank = 0;
                for (int f = 0; f < total; ++f) {
                    const int pf = f < n_top ? f : K + (f - n_top);
                    rank += ranks_before(pool_score[pf], pool_chunk[pf], se, ce) ? 1 : 0;
                }
                if (rank < K) {
                    next_score[rank] = se;
                    next_chunk[rank] = ce;
                }
            }
            __syncthreads();
            const int kept = min(K, total);
            for (int e = tid; e < kept; e += kSelectThreads) {
                pool_score[e] = next_score[e];
                pool_chunk[e] = next_chunk[e];
            }
            if (tid == 0) {
                n_top = kept;
                n_buf = 0;
                threshold = kept == K ? next_score[K - 1] : -INFINITY;
            }
            __syncthreads();
        }
    }

    // The kept chunks, most recent first, then -1 padding.
    const int kept = n_top;  // = min(K, visible)
    int32_t* out = P.indices + row * P.K;
    for (int e = tid; e < K; e += kSelectThreads) {
        if (e < kept) {
            const int ce = pool_chunk[e];
            int rank = 0;
            for (int f = 0; f < kept; ++f) rank += pool_chunk[f] > ce ? 1 : 0;
            out[rank] = ce;
        } else {
            out[e] = -1;
        }
    }
}

// ---------------------------------------------------------------- select_chunks, short contexts

// When every token sees few chunks (most_visible <= kTiledMaxChunks: T <= 16K at S = 64),
// a block takes 64 consecutive tokens of one (b, r), which see nearly the same chunks:
// their scores against those chunks are one small f32 product (64 tokens x 64 chunks a
// tile, k-steps of 32 dims through shared memory, a 4 x 4 register tile a thread), so a
// landmark row is read once per 64 tokens instead of once per token (the per-row kernel
// above read 4 GB of landmarks from L2 at 8 x 4K and took ~1.1 ms a call). The scores
// stay in shared memory ([64][visible], never written out); then a warp a token ranks its
// visible chunks (ranks_before: the same total order as above) and writes the best K, most
// recent first. Each score is one sequential f32 sum over the dims: a different order from
// the per-row kernel, so chunks within float rounding of each other may rank differently
// between the two (as either may against the CPU's double sums).
constexpr int kTiledTokens = 64;
constexpr int kTiledChunks = 64;   // chunk columns of one product tile
constexpr int kTiledDims = 32;     // dims of a k-step
constexpr int kTiledThreads = 256;  // 16 x 16 threads, 4 x 4 scores each
constexpr int64_t kTiledMaxChunks = 256;

__global__ void __launch_bounds__(kTiledThreads) select_chunks_tiled_kernel(SelectParams P, int score_ld) {
    extern __shared__ float tiled_shared[];
    float* scores = tiled_shared;                               // [kTiledTokens][score_ld]
    float* q_tile = scores + kTiledTokens * score_ld;           // [kTiledDims][kTiledTokens + 4]
    float* l_tile = q_tile + kTiledDims * (kTiledTokens + 4);   // [kTiledDims][kTiledChunks + 4]
    constexpr int kQLd = kTiledTokens + 4, kLLd = kTiledChunks + 4;
    const int tid = static_cast<int>(threadIdx.x);
    const int64_t tiles = (P.T + kTiledTokens - 1) / kTiledTokens;
    const int64_t tile = blockIdx.x % tiles, br = blockIdx.x / tiles;  // br = b * Hr + r
    const int64_t r = br % P.Hr, b = br / P.Hr;
    const int64_t t0 = tile * kTiledTokens;
    const int64_t last_t = min(t0 + kTiledTokens, P.T) - 1;
    const int64_t visible_max = min(last_t / P.S, P.C);  // the tile's last token sees the most
    const int ty = tid / 16, tx = tid % 16;

    for (int64_t c0 = 0; c0 < visible_max; c0 += kTiledChunks) {
        float acc[4][4] = {};
        for (int64_t k0 = 0; k0 < P.dr; k0 += kTiledDims) {
            __syncthreads();  // the previous k-step's tiles are no longer read
            // 64 rows x 32 dims of q and of the landmarks: 512 float4 each, 2 a thread each.
            for (int e = tid; e < kTiledTokens * kTiledDims / 4; e += kTiledThreads) {
                const int row = e / (kTiledDims / 4), col = (e % (kTiledDims / 4)) * 4;
                const int64_t t = t0 + row, c = c0 + row, dim = k0 + col;
                float4 qv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), lv = qv;
                if (t < P.T && dim < P.dr)
                    qv = __ldg(reinterpret_cast<const float4*>(P.qr + ((b * P.T + t) * P.Hr + r) * P.dr + dim));
                if (c < visible_max && dim < P.dr)
                    lv = __ldg(reinterpret_cast<const float4*>(P.landmarks + ((b * P.C + c) * P.Hr + r) * P.dr + dim));
                q_tile[(col + 0) * kQLd + row] = qv.x;
                q_tile[(col + 1) * kQLd + row] = qv.y;
                q_tile[(col + 2) * kQLd + row] = qv.z;
                q_tile[(col + 3) * kQLd + row] = qv.w;
                l_tile[(col + 0) * kLLd + row] = lv.x;
                l_tile[(col + 1) * kLLd + row] = lv.y;
                l_tile[(col + 2) * kLLd + row] = lv.z;
                l_tile[(col + 3) * kLLd + row] = lv.w;
            }
            __syncthreads();
#pragma unroll 8
            for (int k = 0; k < kTiledDims; ++k) {
                const float4 qv = *reinterpret_cast<const float4*>(q_tile + k * kQLd + 4 * ty);
                const float4 lv = *reinterpret_cast<const float4*>(l_tile + k * kLLd + 4 * tx);
                const float qa[4] = {qv.x, qv.y, qv.z, qv.w}, la[4] = {lv.x, lv.y, lv.z, lv.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(qa[i], la[j], acc[i][j]);
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int64_t c = c0 + 4 * tx + j;
                if (c < visible_max) {
                    const float sc = acc[i][j] * P.scale;
                    scores[(4 * ty + i) * score_ld + c] = isnan(sc) ? -INFINITY : sc;  // NaN ranks last
                }
            }
    }
    __syncthreads();

    // A warp a token: rank each visible chunk against the others, keep ranks < K, write them
    // most recent first (position = kept chunks with a larger index), then -1.
    const int warp = tid / 32, lane = tid % 32;
    for (int row = warp; row < kTiledTokens; row += kTiledThreads / 32) {
        const int64_t t = t0 + row;
        if (t >= P.T) break;
        const int visible = static_cast<int>(min(t / P.S, P.C));
        const float* sr = scores + row * score_ld;
        int32_t* out = P.indices + ((b * P.T + t) * P.Hr + r) * P.K;
        int written = 0;
        // Chunks from the most recent down, 32 at a time: lane i takes chunk top - i.
        for (int top = visible - 1; top >= 0; top -= 32) {
            const int c = top - lane;
            bool kept = false;
            if (c >= 0) {
                const float sc = sr[c];
                int rank = 0;
                for (int f = 0; f < visible; ++f) rank += ranks_before(sr[f], f, sc, c) ? 1 : 0;
                kept = rank < P.K;
            }
            const unsigned ballot = __ballot_sync(0xffffffffu, kept);
            if (kept) out[written + __popc(ballot & ((1u << lane) - 1u))] = c;
            written += __popc(ballot);
        }
        for (int64_t e = written + lane; e < P.K; e += 32) out[e] = -1;
    }
}

// When K covers every visible chunk of every token, the selection is all of them, most
// recent first, whatever the scores (the `train_topk=all` case).
__global__ void select_all_visible_kernel(int32_t* indices, int64_t n, int64_t T, int64_t Hr, int64_t C, int64_t S,
                                          int64_t K) {
    const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (e >= n) return;
    const int64_t k = e % K;
    const int64_t t = (e / (K * Hr)) % T;
    const int64_t visible = min(t / S, C);
    indices[e] = k < visible ? static_cast<int32_t>(visible - 1 - k) : -1;
}

// ---------------------------------------------------------------- chunk weights

constexpr int kWeightKindSoftmax = 0;
constexpr int kWeightKindStickBreak = 1;

struct WeightParams {
    const float* qr;
    const float* landmarks;
    const int32_t* indices;
    int64_t rows;  // B * T * Hr
    int64_t T, Hr, dr, C, K;
    int kind;
    float scale;
};

// The weights of one query row from its K scores (scale applied), into weight and sigm
// (the stick-breaking sigmoids). Padding entries (idx < 0) get weight 0 and take no part.
// Serial, in list order: lane 0 of the row's warp.
__device__ void weights_from_scores(const WeightParams& P, const int32_t* idx, const float* score, float* weight,
                                    float* sigm) {
    if (P.kind == kWeightKindSoftmax) {
        float m = -INFINITY;
        for (int64_t k = 0; k < P.K; ++k)
            if (idx[k] >= 0) m = fmaxf(m, score[k]);
        float total = 0.0f;
        if (m != -INFINITY)
            for (int64_t k = 0; k < P.K; ++k)
                if (idx[k] >= 0) total += expf(score[k] - m);
        for (int64_t k = 0; k < P.K; ++k) {
            weight[k] = (idx[k] >= 0 && m != -INFINITY) ? expf(score[k] - m) / total : 0.0f;
            sigm[k] = 0.0f;
        }
    } else {
        float remaining = 1.0f;  // prod over earlier valid entries of (1 - sigmoid)
        for (int64_t k = 0; k < P.K; ++k) {
            if (idx[k] < 0) {
                weight[k] = 0.0f;
                sigm[k] = 0.0f;
                continue;
            }
            sigm[k] = 1.0f / (1.0f + expf(-score[k]));
            weight[k] = sigm[k] * remaining;
            remaining *= 1.0f / (1.0f + expf(score[k]));  // 1 - sigmoid(s), without cancellation
        }
    }
}

// One warp computes the scores and weights of query row `row`, into this warp's shared
// arrays score, weight, sigm [K]. The scores are the warp's dot products of qr with the
// selected landmarks, or, on the dense path, read from dense_scores [B * T, C] (Hr = 1:
// the products qr L^T of every chunk, one f32 GEMM per batch; see chunk_weights_forward).
__device__ void chunk_weights_row(const WeightParams& P, const float* dense_scores, int64_t row, int lane,
                                  float* score, float* weight, float* sigm) {
    const int32_t* idx = P.indices + row * P.K;
    if (dense_scores) {
        for (int64_t k = lane; k < P.K; k += 32) {
            const int32_t c = idx[k];
            score[k] = c >= 0 ? dense_scores[row * P.C + c] * P.scale : 0.0f;
        }
    } else {
        const int64_t r = row % P.Hr;
        const int64_t b = row / (P.Hr * P.T);
        const float* q = P.qr + row * P.dr;
        for (int64_t k = 0; k < P.K; ++k) {
            const int32_t c = idx[k];  // the same on every lane
            float s = 0.0f;
            if (c >= 0) s = warp_dot(q, P.landmarks + ((b * P.C + c) * P.Hr + r) * P.dr, P.dr, lane) * P.scale;
            if (lane == 0) score[k] = s;
        }
    }
    __syncwarp();
    if (lane == 0) weights_from_scores(P, idx, score, weight, sigm);
    __syncwarp();
}

// One warp per query row; dynamic shared memory 3 * K floats per warp. dense_scores: as
// chunk_weights_row's (null: the warp's own dot products).
__global__ void chunk_weights_forward_kernel(WeightParams P, const float* dense_scores, float* weights) {
    extern __shared__ float weight_shared[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + warp;
    if (row >= P.rows) return;  // whole warps only; no block barriers below
    float* score = weight_shared + warp * 3 * P.K;
    float* weight = score + P.K;
    float* sigm = weight + P.K;
    chunk_weights_row(P, dense_scores, row, lane, score, weight, sigm);
    for (int64_t k = lane; k < P.K; k += 32) weights[row * P.K + k] = weight[k];
}

// Backward, per query row: d loss / d score_k (scores include 1/sqrt(dr)) into
// grad_scores [rows, K] (0 at padding) when wanted, and grad_qr when wanted. On the dense
// path (dense_scores set) it writes neither: it adds scale * d loss / d score_k into
// grad_dense [B * T, C] (zeroed by the caller) at the row's chunks, in list order, for the
// two products that give grad_qr and grad_landmarks.
__global__ void chunk_weights_backward_rows_kernel(WeightParams P, const float* dense_scores, const float* grad_weights,
                                                   float* grad_scores, float* grad_qr, float* grad_dense) {
    extern __shared__ float weight_shared[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + warp;
    if (row >= P.rows) return;
    float* score = weight_shared + warp * 3 * P.K;
    float* weight = score + P.K;
    float* sigm = weight + P.K;
    chunk_weights_row(P, dense_scores, row, lane, score, weight, sigm);
    const int32_t* idx = P.indices + row * P.K;
    const float* gw = grad_weights + row * P.K;
    float* gs = score;  // the scores are no longer needed
    if (lane == 0) {
        if (P.kind == kWeightKindSoftmax) {
            // ds_k = w_k (g_k - sum_j w_j g_j)
            float mean = 0.0f;
            for (int64_t k = 0; k < P.K; ++k)
                if (idx[k] >= 0) mean += weight[k] * gw[k];
            for (int64_t k = 0; k < P.K; ++k) gs[k] = idx[k] >= 0 ? weight[k] * (gw[k] - mean) : 0.0f;
        } else {
            // ds_m = g_m w_m (1 - sig_m) - sig_m sum_{k>m} g_k w_k
            float later = 0.0f;
            for (int64_t m = P.K - 1; m >= 0; --m) {
                if (idx[m] < 0) {
                    gs[m] = 0.0f;
                    continue;
                }
                gs[m] = gw[m] * weight[m] * (1.0f - sigm[m]) - sigm[m] * later;
                later += gw[m] * weight[m];
            }
        }
    }
    __syncwarp();
    if (grad_dense) {
        if (lane == 0)  // serial: a chunk listed twice adds both, as the reference's sums do
            for (int64_t k = 0; k < P.K; ++k)
                if (idx[k] >= 0) grad_dense[row * P.C + idx[k]] += gs[k] * P.scale;
        return;
    }
    if (grad_scores)
        for (int64_t k = lane; k < P.K; k += 32) grad_scores[row * P.K + k] = gs[k];
    if (grad_qr) {
        const int64_t r = row % P.Hr;
        const int64_t b = row / (P.Hr * P.T);
        for (int64_t i = lane; i < P.dr; i += 32) {
            float acc = 0.0f;
            for (int64_t k = 0; k < P.K; ++k) {
                const int32_t c = idx[k];
                if (c < 0) continue;
                acc = fmaf(gs[k], P.landmarks[((b * P.C + c) * P.Hr + r) * P.dr + i], acc);
            }
            grad_qr[row * P.dr + i] = acc * P.scale;
        }
    }
}

// grad_landmarks per landmark row (b, c, r): the sum over the selections that hold c of
// grad_score * qr[b, t, r]. A chunk can be selected by thousands of tokens and another by
// none, so blocks take work items (cuda_detail::ChunkWorkItems: a segment's selections cut
// into pieces of at most per_item); within an item the selections are split among the
// block's warps in a fixed interleaving (warp w takes selections w, w + 8, ..., two at a
// time so that two rows' loads are in flight; each lane owns dims lane + 32 m), and the 8
// warp sums are added in warp order. A segment of one item writes its row (times the
// scale); a segment of several writes unscaled partial rows, added in item order by
// landmark_partials_sum_kernel. Fixed orders everywhere: no atomics, bit-identical run to
// run.
constexpr int kLandmarkWarps = 8;
constexpr int kLandmarkThreads = kLandmarkWarps * 32;
constexpr int kLandmarkBlocksPerSm = 2;  // for the item size: 256 threads at ~100 registers (dr 1024)

struct LandmarkItems {
    const int32_t* pair_ids;
    const int32_t* segment_start;
    const int32_t* item_start;
    const int32_t* partial_start;
    float* partials;  // [slots, dr]
    int segments;
    int per_item;
};

template <int M>  // dims per lane: dr <= 32 M
__global__ void __launch_bounds__(kLandmarkThreads)
    chunk_weights_landmarks_kernel(WeightParams P, const float* grad_scores, LandmarkItems W, float* grad_landmarks) {
    extern __shared__ float landmark_partials[];  // [kLandmarkWarps][dr]
    cuda_detail::ChunkWorkItem work;
    if (!cuda_detail::find_chunk_work_item(W.item_start, W.segments, static_cast<int>(blockIdx.x), work)) return;
    const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
    const int64_t segment = work.segment;  // (b * Hr + r) * C + c
    const cuda_detail::ChunkSegment seg(segment, P.C, P.Hr);
    const int64_t lrow = (seg.b * P.C + seg.c) * P.Hr + seg.r;
    const int32_t segment_end = W.segment_start[segment + 1];
    const int32_t begin = W.segment_start[segment] + work.part * W.per_item;
    const int32_t end = begin + W.per_item < segment_end ? begin + W.per_item : segment_end;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.0f;
    for (int32_t at = begin + warp; at < end; at += 2 * kLandmarkWarps) {
        const bool second = at + kLandmarkWarps < end;
        const int64_t p0 = W.pair_ids[at];  // ((b * T + t) * Hr + r) * K + k
        const int64_t p1 = second ? W.pair_ids[at + kLandmarkWarps] : p0;
        const float g0 = grad_scores[p0], g1 = second ? grad_scores[p1] : 0.0f;
        const float* q0 = P.qr + (p0 / P.K) * P.dr;
        const float* q1 = P.qr + (p1 / P.K) * P.dr;
        float x0[M], x1[M];
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const bool in = lane + 32 * m < P.dr;
            x0[m] = in ? __ldg(q0 + lane + 32 * m) : 0.0f;
            x1[m] = in && second ? __ldg(q1 + lane + 32 * m) : 0.0f;
        }
        // The same order as one selection at a time: selection at, then at + 8.
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m] = fmaf(g0, x0[m], acc[m]);
        if (second) {
#pragma unroll
            for (int m = 0; m < M; ++m) acc[m] = fmaf(g1, x1[m], acc[m]);
        }
    }
#pragma unroll
    for (int m = 0; m < M; ++m)
        if (lane + 32 * m < P.dr) landmark_partials[warp * P.dr + lane + 32 * m] = acc[m];
    __syncthreads();
    const bool whole = work.items == 1;
    float* out = whole ? grad_landmarks + lrow * P.dr
                       : W.partials + (static_cast<int64_t>(W.partial_start[segment]) + work.part) * P.dr;
    for (int64_t i = threadIdx.x; i < P.dr; i += kLandmarkThreads) {
        float sum = 0.0f;
        for (int w = 0; w < kLandmarkWarps; ++w) sum += landmark_partials[w * P.dr + i];
        out[i] = whole ? sum * P.scale : sum;
    }
}

// The rows of landmarks whose selections took several items: scale times the sum of the
// partial rows in item order. One block per segment (most return at once).
__global__ void landmark_partials_sum_kernel(WeightParams P, LandmarkItems W, float* grad_landmarks) {
    const int64_t segment = blockIdx.x;
    const int items = W.item_start[segment + 1] - W.item_start[segment];
    if (items == 1) return;
    const cuda_detail::ChunkSegment seg(segment, P.C, P.Hr);
    const int64_t lrow = (seg.b * P.C + seg.c) * P.Hr + seg.r;
    const float* first = W.partials + static_cast<int64_t>(W.partial_start[segment]) * P.dr;
    for (int64_t i = threadIdx.x; i < P.dr; i += blockDim.x) {
        float sum = first[i];
        for (int j = 1; j < items; ++j) sum += first[j * P.dr + i];
        grad_landmarks[lrow * P.dr + i] = sum * P.scale;
    }
}

template <int M>
void launch_landmarks_kernel(const char* op, const WeightParams& P, const cuda_detail::ChunkWorkItems& items,
                             const float* grad_scores, const LandmarkItems& W, float* grad_landmarks) {
    const size_t shared_bytes = sizeof(float) * kLandmarkWarps * static_cast<size_t>(P.dr);
    allow_shared_bytes(op, chunk_weights_landmarks_kernel<M>, shared_bytes);
    chunk_weights_landmarks_kernel<M><<<static_cast<unsigned>(items.max_items), kLandmarkThreads, shared_bytes>>>(
        P, grad_scores, W, grad_landmarks);
    HSA_CUDA_CHECK_LAUNCH("chunk_weights_landmarks_kernel");
    landmark_partials_sum_kernel<<<static_cast<unsigned>(W.segments), 256>>>(P, W, grad_landmarks);
    HSA_CUDA_CHECK_LAUNCH("landmark_partials_sum_kernel");
}

WeightParams weight_params(const RetrievalDims& D, const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                           WeightKind kind) {
    WeightParams P{};
    P.qr = qr.data<float>();
    P.landmarks = landmarks.data<float>();
    P.indices = indices.data<int32_t>();
    P.rows = D.B * D.T * D.Hr;
    P.T = D.T;
    P.Hr = D.Hr;
    P.dr = D.dr;
    P.C = D.C;
    P.K = D.K;
    P.kind = kind == WeightKind::Softmax ? kWeightKindSoftmax : kWeightKindStickBreak;
    P.scale = 1.0f / std::sqrt(static_cast<float>(D.dr));
    return P;
}

// The dense path of the weights: with one retrieval head and at most kDenseMaxChunks
// chunks, the scores of every (token, chunk) pair are one f32 product per batch, qr L^T
// ([T, dr] x [dr, C], cuBLASLt at f32: FMA, no TF32), and the backward's gradients two more,
// G L and G^T qr, with G [T, C] the score gradients (times the scale) at the selected
// chunks and 0 elsewhere. The per-row path reads K landmark rows of dr floats from L2 per
// token for the scores and again for grad_qr (64 KB a token at dr 1024, K 8): measured
// 1.1 ms per backward at 8 x 4K (docs/PERF.md version 38); the products read each landmark
// once per 64-128 tokens. The C - K zero entries add nothing (0 x finite is 0); the sums
// run in a different order than the per-row path's, within f32 rounding of each other.
constexpr int64_t kDenseMaxChunks = 256;

bool dense_weights(const RetrievalDims& D) { return D.Hr == 1 && D.C > 0 && D.C <= kDenseMaxChunks; }

// S [B, T, C] = qr L^T per batch, f32.
Tensor dense_scores(CudaBackend& backend, const RetrievalDims& D, const Tensor& qr, const Tensor& landmarks) {
    MatmulPrecisionScope exact(MatmulPrecision::F32);
    Tensor scores = Tensor::empty({D.B, D.T, D.C}, DType::F32, Device::CUDA);
    backend.gemm(qr.view({D.B, D.T, D.dr}), false, landmarks.view({D.B, D.C, D.dr}), true, scores, false);
    return scores;
}

// Warps (query rows) per block and dynamic shared memory for the per-row kernels.
void weight_launch_shape(const char* op, int64_t K, int& warps, size_t& shared_bytes) {
    const size_t per_warp = static_cast<size_t>(3 * K) * sizeof(float);
    warps = 4;
    while (warps > 1 && warps * per_warp > 48 * 1024) warps /= 2;
    shared_bytes = warps * per_warp;
    HSA_CHECK(static_cast<int64_t>(shared_bytes) <= max_shared_bytes(),
              op << ": K = " << K << " selected chunks need " << shared_bytes
                 << " bytes of shared memory per query row, more than the device allows");
}

}  // namespace

// ================================================================ backend methods

void CudaBackend::select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size, Tensor& indices) {
    const char* op = "select_chunks";
    const RetrievalDims D = checks::check_select_chunks(qr, landmarks, chunk_size, indices, Device::CUDA);
    check_retrieval_limits(op, D);
    const int64_t rows = D.B * D.T * D.Hr;
    if (rows == 0) return;
    HSA_CHECK(rows < INT_MAX, op << ": " << rows << " query rows (B * T * Hr), expected fewer than " << INT_MAX);
    int32_t* out = cuda_i32(indices, op, "indices");

    // The most chunks any token sees: min(floor((T - 1) / S), C).
    const int64_t most_visible = std::min((D.T - 1) / chunk_size, D.C);
    if (D.K >= most_visible) {
        const int64_t n = indices.numel();
        select_all_visible_kernel<<<blocks_for(n, 256), 256>>>(out, n, D.T, D.Hr, D.C, chunk_size, D.K);
        HSA_CUDA_CHECK_LAUNCH("select_all_visible_kernel");
        return;
    }
    HSA_CHECK(D.K <= kSelectMaxK, op << ": K = " << D.K << " selected chunks, expected at most " << kSelectMaxK
                                     << " (or at least every visible chunk)");
    HSA_CHECK(D.dr <= kSelectMaxDr, op << ": retrieval head dim " << D.dr << ", expected at most " << kSelectMaxDr);

    SelectParams P{};
    P.qr = cuda_f32(qr, op, "qr");
    P.landmarks = cuda_f32(landmarks, op, "landmarks");
    P.indices = out;
    P.T = D.T;
    P.Hr = D.Hr;
    P.dr = D.dr;
    P.C = D.C;
    P.S = chunk_size;
    P.K = D.K;
    P.scale = 1.0f / std::sqrt(static_cast<float>(D.dr));
    if (most_visible <= kTiledMaxChunks && D.dr % 4 == 0 && all_16_byte_aligned({&qr, &landmarks})) {
        // Short contexts: 64 tokens a block, their scores one small product (above).
        const int score_ld = static_cast<int>((most_visible + 3) / 4 * 4 + 1);  // odd: rows apart in banks
        const size_t shared_bytes = sizeof(float) * (static_cast<size_t>(kTiledTokens) * score_ld +
                                                     kTiledDims * (kTiledTokens + 4 + kTiledChunks + 4));
        const int64_t blocks = (D.T + kTiledTokens - 1) / kTiledTokens * D.B * D.Hr;
        HSA_CHECK(blocks < INT_MAX, op << ": " << blocks << " token tiles, expected fewer than " << INT_MAX);
        allow_shared_bytes(op, select_chunks_tiled_kernel, shared_bytes);
        select_chunks_tiled_kernel<<<static_cast<unsigned>(blocks), kTiledThreads, shared_bytes>>>(P, score_ld);
        HSA_CUDA_CHECK_LAUNCH("select_chunks_tiled_kernel");
        return;
    }
    // About four or more elements per lane of a dot product: 32 lanes from dr = 128 up.
    P.group_width = 32;
    while (P.group_width > 1 && P.group_width * 4 > D.dr) P.group_width /= 2;
    const size_t shared_bytes = sizeof(float) * static_cast<size_t>(D.dr + 2 * (D.K + kSelectBuffer) + 2 * D.K +
                                                                    kSelectBatch);
    allow_shared_bytes(op, select_chunks_kernel, shared_bytes);
    select_chunks_kernel<<<static_cast<unsigned>(rows), kSelectThreads, shared_bytes>>>(P);
    HSA_CUDA_CHECK_LAUNCH("select_chunks_kernel");
}

void CudaBackend::chunk_weights_forward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                        WeightKind kind, Tensor& weights) {
    const char* op = "chunk_weights_forward";
    const RetrievalDims D = checks::check_chunk_weights_forward(qr, landmarks, indices, weights, Device::CUDA);
    check_retrieval_limits(op, D);
    cuda_detail::check_chunk_indices_cuda(op, indices, D.C);
    const WeightParams P = weight_params(D, qr, landmarks, indices, kind);
    if (P.rows == 0) return;
    const Tensor scores = dense_weights(D) ? dense_scores(*this, D, qr, landmarks) : Tensor();
    int warps = 0;
    size_t shared_bytes = 0;
    weight_launch_shape(op, D.K, warps, shared_bytes);
    allow_shared_bytes(chunk_weights_forward_kernel, shared_bytes);
    chunk_weights_forward_kernel<<<blocks_for(P.rows, warps), warps * 32, shared_bytes>>>(
        P, scores.defined() ? scores.data<float>() : nullptr, weights.data<float>());
    HSA_CUDA_CHECK_LAUNCH("chunk_weights_forward_kernel");
}

void CudaBackend::chunk_weights_backward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                         WeightKind kind, const Tensor& weights, const Tensor& grad_weights,
                                         Tensor& grad_qr, Tensor& grad_landmarks) {
    const char* op = "chunk_weights_backward";
    const checks::ChunkWeightsBackwardDims D = checks::check_chunk_weights_backward(
        qr, landmarks, indices, weights, grad_weights, grad_qr, grad_landmarks, Device::CUDA);
    check_retrieval_limits(op, D);
    const bool want_qr = D.want_qr, want_l = D.want_landmarks;
    if (!want_qr && !want_l) return;
    cuda_detail::check_chunk_indices_cuda(op, indices, D.C);
    const WeightParams P = weight_params(D, qr, landmarks, indices, kind);

    if (dense_weights(D) && P.rows > 0) {
        // The scores recomputed as in the forward (same product, same weights), the score
        // gradients scattered into G, then grad_qr = G L and grad_landmarks = G^T qr.
        const Tensor scores = dense_scores(*this, D, qr, landmarks);
        Tensor grad_dense = Tensor::empty({D.B, D.T, D.C}, DType::F32, Device::CUDA);
        HSA_CUDA_CHECK(cudaMemsetAsync(grad_dense.raw_data(), 0, grad_dense.nbytes(), 0));
        int warps = 0;
        size_t shared_bytes = 0;
        weight_launch_shape(op, D.K, warps, shared_bytes);
        allow_shared_bytes(chunk_weights_backward_rows_kernel, shared_bytes);
        chunk_weights_backward_rows_kernel<<<blocks_for(P.rows, warps), warps * 32, shared_bytes>>>(
            P, scores.data<float>(), grad_weights.data<float>(), nullptr, nullptr, grad_dense.data<float>());
        HSA_CUDA_CHECK_LAUNCH("chunk_weights_backward_rows_kernel (dense)");
        MatmulPrecisionScope exact(MatmulPrecision::F32);
        if (want_qr) {
            Tensor grad_qr3 = grad_qr.view({D.B, D.T, D.dr});
            gemm(grad_dense, false, landmarks.view({D.B, D.C, D.dr}), false, grad_qr3, false);
        }
        if (want_l) {
            Tensor grad_landmarks3 = grad_landmarks.view({D.B, D.C, D.dr});
            gemm(grad_dense, true, qr.view({D.B, D.T, D.dr}), false, grad_landmarks3, false);
        }
        return;
    }

    // Pass 1, per query row: grad_scores (kept for the landmarks) and grad_qr. As on the
    // CPU, the weights are recomputed from qr and landmarks rather than read back.
    Tensor grad_scores;
    if (want_l) grad_scores = Tensor::empty({std::max<int64_t>(P.rows * D.K, 1)}, DType::F32, Device::CUDA);
    if (P.rows > 0) {
        int warps = 0;
        size_t shared_bytes = 0;
        weight_launch_shape(op, D.K, warps, shared_bytes);
        allow_shared_bytes(chunk_weights_backward_rows_kernel, shared_bytes);
        chunk_weights_backward_rows_kernel<<<blocks_for(P.rows, warps), warps * 32, shared_bytes>>>(
            P, nullptr, grad_weights.data<float>(), want_l ? grad_scores.data<float>() : nullptr,
            want_qr ? grad_qr.data<float>() : nullptr, nullptr);
        HSA_CUDA_CHECK_LAUNCH("chunk_weights_backward_rows_kernel");
    }

    // Pass 2, per landmark (b, c, r): over the selections holding c, in (t, k) order, cut
    // into work items. Cost: linear in the number of selections (stable radix sort + one pass).
    if (want_l) {
        const int64_t lrows = D.B * D.C * D.Hr;
        if (lrows == 0) return;
        HSA_CHECK(lrows < INT_MAX, op << ": " << lrows << " landmark rows, expected fewer than " << INT_MAX);
        HSA_CHECK(D.dr <= 2048, op << ": retrieval dim " << D.dr << " exceeds the CUDA kernels' limit of 2048");
        Tensor pair_ids, segment_start;
        cuda_detail::build_chunk_pair_lists(op, indices, D.C, pair_ids, segment_start);
        const int64_t max_pairs = P.rows * D.K;  // padding included: a bound
        const cuda_detail::ChunkWorkItems items = cuda_detail::plan_chunk_work_items(
            op, segment_start.data<int32_t>(), lrows, max_pairs,
            cuda_detail::chunk_work_per_item(max_pairs, kLandmarkBlocksPerSm, 2 * kLandmarkWarps));
        Tensor partials = Tensor::empty({items.max_slots * D.dr}, DType::F32, Device::CUDA);
        const LandmarkItems W{pair_ids.data<int32_t>(), segment_start.data<int32_t>(), items.item_start.data<int32_t>(),
                              items.partial_start.data<int32_t>(), partials.data<float>(), static_cast<int>(lrows),
                              static_cast<int>(items.per_item)};
        // Dims per lane, rounded up to a power of two (retrieval dims up to 2048 here).
        const float* gs = grad_scores.data<float>();
        float* gl = grad_landmarks.data<float>();
        if (D.dr <= 32) launch_landmarks_kernel<1>(op, P, items, gs, W, gl);
        else if (D.dr <= 128) launch_landmarks_kernel<4>(op, P, items, gs, W, gl);
        else if (D.dr <= 512) launch_landmarks_kernel<16>(op, P, items, gs, W, gl);
        else if (D.dr <= 1024) launch_landmarks_kernel<32>(op, P, items, gs, W, gl);
        else launch_landmarks_kernel<64>(op, P, items, gs, W, gl);
    }
}

}  // namespace hsa
