// HSA backward, version 1, on tensor cores. Semantics: core/backend.h (Backend::hsa_backward);
// math: shared/design/MODEL.md "HSA layer"; version 0 (f32, CUDA cores) and the pass
// structure: kernels/hsa.cu; fragment layouts: kernels/mma_bf16.cuh.
//
// Per (token t, head h, selected chunk k) with probabilities p_j = exp(q.k_j * scale - lse)
// over the chunk's S = 64 keys, dov_j = dO . v_j and weight w:
//   od      = sum_j p_j dov_j           (= dO . o_k; grad_weights sums it over heads)
//   dS_j    = w p_j (dov_j - od)
//   grad_q  = scale * sum_k sum_j dS_j k_j
//   grad_kj = scale * sum over (t, h, k) selecting the chunk of dS_j q
//   grad_vj = sum over (t, h, k) selecting the chunk of w p_j dO
// Because a chunk's softmax covers exactly its 64 keys, od comes out of one tile: no extra
// pass over o.
//
// Pass 1 (queries): one warp per (b, t, KV head g), the G <= 16 query heads as the MMA's 16
//   rows (rows >= G are zero: q = dO = 0 gives dS = 0 there), as in the forward v1: per chunk,
//   dP = dO V^T, S = Q K^T, od by a quad reduction, dQ += dS K. The chunk tiles come from
//   bf16 copies of kmem / vmem by cp.async one chunk ahead; the warp also leaves bf16
//   copies of its q and dO rows for pass 3.
// Pass 3 (memory): one block of 4 warps per (b, chunk c, g); the chunk's 64 keys are the rows
//   (16 a warp; K and V as A fragments: in registers at d 64, read from shared copies of the
//   chunk at d 128, where dK and dV alone take 128 registers), and its selections times the
//   G heads ("entries", in (t, k, h) order) stream through shared memory in tiles of 64
//   (32 at d 128): bf16 q / dO rows and their lse, od, w by cp.async, the next tile while
//   the current one is used:
//   P^T = exp(K Q^T - lse), PW^T = w P^T, dV += PW^T dO, dP^T = V dO^T,
//   dS^T = PW^T (dP^T - od), dK += dS^T Q. Rows of never-selected chunks get 0.
//   Balance: how often a chunk is selected varies widely (with random top-K at 8 x 4K,
//   chunk 0 holds ~3x the mean and the last chunks a few selections), and one block per
//   chunk left the kernel waiting on its longest blocks (ncu: 15% achieved occupancy).
//   So a chunk's selections are cut into work items of at most pairs_per_item selections
//   (chosen so that there are ~2 items per block slot of the GPU); a chunk of one item
//   writes its rows, a chunk of several writes one f32 partial per item, and a reduction
//   sums them in item order (deterministic, no atomics).
#include "kernels/hsa_backward_v1.cuh"

#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/chunk_lists.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/mma_bf16.cuh"

namespace hsa {

namespace {

using mma::accumulate_product_with_tile;
using mma::b_from_kn_lane_offset;
using mma::exp2_ftz;
using mma::b_from_nk_lane_offset;
using mma::key_side_backward_step;
using mma::load_a_rows;
using mma::pack_bf16;
using mma::pack_c_as_a;
using mma::product_with_tile_transpose;
using mma::quad_sum;
using mma::shared_address;
using mma::store_a_rows_bf16;
using mma::store_rows;

constexpr int kChunk = 64;      // S
constexpr int kWarpSize = 32;
constexpr int kWarps = 4;       // pass 3: 16 of the chunk's 64 keys a warp
constexpr int kThreads = kWarps * kWarpSize;
constexpr float kLog2e = 1.4426950408889634f;

// Per head dim (64 or 128), from ptxas (sm_90). Pass 1 at d 128 sits at 255 registers with
// 44 bytes of spills (q, dO and dQ fragments take 128); pass 3 at d 64 spills 8 bytes
// outside its loop; the others do not spill.
template <int D>
struct BackwardConfig {
    static constexpr int kLd = D + 8;  // shared row stride in bf16: + 16 bytes against bank conflicts
    // Pass 1: (t, KV head) warps a block, each with its own K / V chunk tiles (72 KB a block at
    // d 64, 68 KB at d 128); 3 blocks an SM either way.
    static constexpr int kQueryWarps = D == 64 ? 4 : 2;
    static constexpr int kQueryThreads = kQueryWarps * kWarpSize;
    static constexpr size_t kQuerySharedBytes = static_cast<size_t>(kQueryWarps) * 2 * kChunk * kLd * 2;
    // Pass 3: K / V as register A fragments at d 64 (168 registers, 3 blocks an SM); at d 128
    // dK and dV take 128 registers, so K / V are read from shared copies of the chunk.
    static constexpr bool kKvShared = D > 64;
    static constexpr int kMemoryMinBlocks = D == 64 ? 3 : 2;
    // Entries (selection x head) a shared tile of pass 3: 32 at d 128 (the P / dP tiles of 64
    // took the kernel to 255 registers and spills).
    static constexpr int kEntries = D == 64 ? 64 : 32;
    static constexpr size_t kKvBytes = kKvShared ? 2 * static_cast<size_t>(kChunk) * kLd * 2 : 0;  // dynamic
    // The static entry tiles next to them: Q / dO rows and lse / od / w, two stages each.
    static constexpr size_t kEntryBytes = 2 * 2 * static_cast<size_t>(kEntries) * kLd * 2 + 3 * 2 * kEntries * 4;
};

struct Params {
    HsaTensorCoreShape shape;
    const float* q;                    // f32: the A rows of pass 1
    const float* grad_out;
    const __nv_bfloat16* kmem16;       // bf16 copies of kmem / vmem (tiles of pass 1, rows of pass 3)
    const __nv_bfloat16* vmem16;
    const __nv_bfloat16* q16;          // bf16 q / dO (tiles of pass 3), left by pass 1
    const __nv_bfloat16* grad_out16;
    __nv_bfloat16* q16_out;            // pass 1 writes them here when not null
    __nv_bfloat16* grad_out16_out;
    const int32_t* indices;
    const float* weights;
    const float* lse;
    const float* od_in;
    const int32_t* pair_ids;
    const int32_t* segment_start;
    float* od_out;
    float* grad_q;
    float* grad_kmem;
    float* grad_vmem;
    // Pass 3's work items (cuda_detail::plan_chunk_work_items): segment u's items are item_start[u] ..
    // item_start[u + 1] (at least one, so that unselected chunks write their zero rows);
    // a segment of several items writes one partial per item, to slots partial_start[u] on.
    float* partials;                   // [slots, kv_per_r, 2 (dK, dV), kChunk, d] f32
    const int32_t* item_start;         // [segments + 1]
    const int32_t* partial_start;      // [segments + 1]
    int segments;                      // B * Hr * C
    int pairs_per_item;
    int G;
    int kv_per_r;  // Hk / Hr
    float scale, scale_log2;
};

// ---------------------------------------------------------------- pass 1: od, grad_q

template <int D>
__global__ void __launch_bounds__(BackwardConfig<D>::kQueryThreads) hsa_backward_query_tc_kernel(Params P) {
    constexpr int kLd = D + 8;
    constexpr int kTileElems = kChunk * kLd;
    extern __shared__ __align__(16) unsigned char query_shared[];  // kQueryWarps x (Ks, Vs)
    __nv_bfloat16* tiles = reinterpret_cast<__nv_bfloat16*>(query_shared);
    const HsaTensorCoreShape& Sh = P.shape;

    const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int gid = lane >> 2, tig = lane & 3;
    const int64_t unit = static_cast<int64_t>(blockIdx.x) * BackwardConfig<D>::kQueryWarps + warp;
    if (unit >= Sh.B * Sh.T * Sh.Hk) return;  // whole warps; no block-wide barrier follows
    __nv_bfloat16* Ks = tiles + warp * 2 * kTileElems;
    __nv_bfloat16* Vs = Ks + kTileElems;

    const int64_t g = unit % Sh.Hk, bt = unit / Sh.Hk, b = bt / Sh.T;
    const int64_t r = g / P.kv_per_r;
    const int64_t sel = (bt * Sh.Hr + r) * Sh.K;
    const int64_t row0 = bt * Sh.H + g * P.G;  // q / dO row of the tile's first head
    const bool has_a = gid < P.G, has_b = gid + 8 < P.G;

    uint32_t qf[D / 16][4], dof[D / 16][4];
    load_a_rows<D>(P.q + row0 * D, D, gid, P.G, tig, qf);
    load_a_rows<D>(P.grad_out + row0 * D, D, gid, P.G, tig, dof);
    if (P.q16_out) {  // pass 3's bf16 rows, from the values already in registers
        store_a_rows_bf16<D>(P.q16_out + row0 * D, D, gid, P.G, tig, qf);
        store_a_rows_bf16<D>(P.grad_out16_out + row0 * D, D, gid, P.G, tig, dof);
    }
    float dq[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    const uint32_t k_nk = shared_address(Ks) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const uint32_t k_kn = shared_address(Ks) + 2u * static_cast<uint32_t>(b_from_kn_lane_offset(lane, kLd));
    const uint32_t v_nk = shared_address(Vs) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const int64_t kv_stride = Sh.Hk * D;
    const int64_t row_a = row0 + gid, row_b = row0 + gid + 8;

    // Padding entries (index -1): od 0, no work.
    const cuda_detail::SelectedChunks chunks{P.indices + sel, Sh.K};
    chunks.zero_padding(P.od_out + row_a * Sh.K, P.od_out + row_b * Sh.K, has_a, has_b, tig);
    // Copies run one step ahead, V first (dP = dO V^T is the first product and frees Vs),
    // then K (needed until dQ += dS K): commit groups complete in order V, K, V, K, ...
    auto chunk_rows = [&](int64_t k) { return ((b * Sh.Tm + chunks.chunk(k) * kChunk) * Sh.Hk + g) * D; };
    int64_t k = chunks.next(0);
    if (k < Sh.K) {
        const int64_t first = chunk_rows(k);
        mma::start_tile_copy_warp<D, kChunk>(P.vmem16 + first, kv_stride, Vs, lane);
        mma::cp_async_commit();
        mma::start_tile_copy_warp<D, kChunk>(P.kmem16 + first, kv_stride, Ks, lane);
        mma::cp_async_commit();
    }
#pragma unroll 1
    while (k < Sh.K) {
        const int64_t next = chunks.next(k + 1);
        const int64_t next_first = next < Sh.K ? chunk_rows(next) : 0;
        const float w = __ldg(P.weights + sel + k);
        const float lse_a = has_a ? __ldg(P.lse + row_a * Sh.K + k) * kLog2e : 0.0f;
        const float lse_b = has_b ? __ldg(P.lse + row_b * Sh.K + k) * kLog2e : 0.0f;

        mma::cp_async_wait<1>();  // V of chunk k has landed
        __syncwarp();
        float p[kChunk / 8][4], dp[kChunk / 8][4];
        product_with_tile_transpose<D, kChunk>(dof, v_nk, dp);  // dO V^T
        __syncwarp();  // every lane's reads of Vs are done
        if (next < Sh.K) mma::start_tile_copy_warp<D, kChunk>(P.vmem16 + next_first, kv_stride, Vs, lane);
        mma::cp_async_commit();

        mma::cp_async_wait<1>();  // K of chunk k has landed
        __syncwarp();
        product_with_tile_transpose<D, kChunk>(qf, k_nk, p);  // scores
        float od_a = 0.0f, od_b = 0.0f;
#pragma unroll
        for (int j = 0; j < kChunk / 8; ++j) {
            p[j][0] = exp2_ftz(fmaf(p[j][0], P.scale_log2, -lse_a));
            p[j][1] = exp2_ftz(fmaf(p[j][1], P.scale_log2, -lse_a));
            p[j][2] = exp2_ftz(fmaf(p[j][2], P.scale_log2, -lse_b));
            p[j][3] = exp2_ftz(fmaf(p[j][3], P.scale_log2, -lse_b));
            od_a += p[j][0] * dp[j][0] + p[j][1] * dp[j][1];
            od_b += p[j][2] * dp[j][2] + p[j][3] * dp[j][3];
        }
        od_a = quad_sum(od_a);
        od_b = quad_sum(od_b);
        if (tig == 0) {
            if (has_a) P.od_out[row_a * Sh.K + k] = od_a;
            if (has_b) P.od_out[row_b * Sh.K + k] = od_b;
        }
        if (P.grad_q != nullptr) {
#pragma unroll
            for (int j = 0; j < kChunk / 8; ++j) {  // dS = w p (dov - od)
                p[j][0] *= w * (dp[j][0] - od_a);
                p[j][1] *= w * (dp[j][1] - od_a);
                p[j][2] *= w * (dp[j][2] - od_b);
                p[j][3] *= w * (dp[j][3] - od_b);
            }
            uint32_t dsf[kChunk / 16][4];
#pragma unroll
            for (int ks = 0; ks < kChunk / 16; ++ks) pack_c_as_a(dsf[ks], p[2 * ks], p[2 * ks + 1]);
            accumulate_product_with_tile<D, kChunk>(dsf, k_kn, dq);
        }
        __syncwarp();  // every lane's reads of Ks are done
        if (next < Sh.K) mma::start_tile_copy_warp<D, kChunk>(P.kmem16 + next_first, kv_stride, Ks, lane);
        mma::cp_async_commit();
        k = next;
    }
    if (P.grad_q) store_rows<D>(P.grad_q + row0 * D, D, gid, P.G, tig, dq, P.scale, P.scale);
}

// ---------------------------------------------------------------- pass 3: grad_kmem, grad_vmem

// d 64: 3 blocks an SM, ptxas fits 168 registers (an 8-byte spill outside the loop).
template <int D>
__global__ void __launch_bounds__(kThreads, BackwardConfig<D>::kMemoryMinBlocks) hsa_backward_memory_tc_kernel(Params P) {
    using Cfg = BackwardConfig<D>;
    constexpr int kLd = D + 8;
    constexpr int kEntries = Cfg::kEntries;
    constexpr uint32_t kStageBytes = 2u * kEntries * kLd;
    constexpr int kChunksPerRow = D / 8;  // 16-byte chunks of a bf16 row
    constexpr int kCopiesPerThread = kEntries * kChunksPerRow / kThreads;
    static_assert(kEntries * kChunksPerRow % kThreads == 0 && kEntries <= kThreads, "whole copies a thread");
    // Two stages: the entries of tile i + 1 are copied while tile i is used (static, under
    // 48 KB at either d; typed arrays: through a cast byte buffer the d-64 loop spilled 20
    // bytes instead of 8). At d 128 the chunk's K and V rows follow in dynamic shared memory.
    __shared__ __align__(16) __nv_bfloat16 Qs[2][kEntries * kLd];
    __shared__ __align__(16) __nv_bfloat16 dOs[2][kEntries * kLd];
    __shared__ __align__(16) float entry_lse[2][kEntries];  // 0 past the last entry
    __shared__ __align__(16) float entry_od[2][kEntries];
    __shared__ __align__(16) float entry_w[2][kEntries];    // 0 past the last entry: no contribution
    __shared__ int64_t entry_row[kEntries];                  // q / dO row of each entry being copied (0 past the end)
    extern __shared__ __align__(16) unsigned char chunk_rows_shared[];  // [2][kChunk][kLd] bf16 (Cfg::kKvBytes)
    __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(chunk_rows_shared);
    __nv_bfloat16* Vs = Ks + kChunk * kLd;

    const HsaTensorCoreShape& Sh = P.shape;
    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid % kWarpSize, warp = tid / kWarpSize;
    const int gid = lane >> 2, tig = lane & 3;
    // This block's work item (blockIdx.x; the grid's upper bound may exceed the items) and
    // its segment u (the last with item_start[u] <= item: items are >= 1 a segment).
    cuda_detail::ChunkWorkItem work;
    if (!cuda_detail::find_chunk_work_item(P.item_start, P.segments, static_cast<int>(blockIdx.x), work)) return;
    const int segment = work.segment, part = work.part;
    const bool whole_segment = work.items == 1;
    const cuda_detail::ChunkSegment seg(segment, Sh.C, Sh.Hr);
    const int64_t b = seg.b, r = seg.r, c = seg.c;
    const int64_t g = r * P.kv_per_r + blockIdx.y;
    const int64_t segment_begin = __ldg(P.segment_start + segment);
    const int64_t first_pair = static_cast<int64_t>(part) * P.pairs_per_item;
    const int64_t begin = segment_begin + first_pair;
    const int64_t pairs_here = min(static_cast<int64_t>(P.pairs_per_item),
                                   __ldg(P.segment_start + segment + 1) - segment_begin - first_pair);
    const int64_t entries = pairs_here * P.G;
    const int64_t kv_stride = Sh.Hk * D;
    const int64_t kv_offset = ((b * Sh.Tm + c * kChunk) * Sh.Hk + g) * D;  // the chunk's row 0

    // Entry e (< entries): selection pair_ids[begin + e / G] = ((b * T + t) * Hr + r) * K + k
    // times head e % G of the group; its q / dO row and the pair id. 32-bit index math (a
    // segment holds at most T selections x G heads, and pair ids are int32): with 64-bit
    // divisions the kernel spilled at 255 registers; now it fits 168 (3 blocks an SM).
    const int K32 = static_cast<int>(Sh.K), Hr32 = static_cast<int>(Sh.Hr), T32 = static_cast<int>(Sh.T);
    const int64_t first_row = b * Sh.T * Sh.H + g * P.G;  // row of (t 0, the group's head 0)
    auto entry_source = [&](int entry, int64_t& row, int& pair_id) {
        const int pair = entry / P.G, head = entry - pair * P.G;
        pair_id = __ldg(P.pair_ids + begin + pair);
        const int t = (pair_id / K32 / Hr32) % T32;
        row = first_row + static_cast<int64_t>(t) * Sh.H + head;
    };
    // Starts the copies of the tile of entries [first, first + kEntries) into buffer `stage`;
    // entries past the end are zero-filled. Thread e < kEntries locates entry e once (its
    // divisions by G, K Hr and T) and leaves its row in entry_row for the row copies, which
    // each take a 16-byte column of an entry: locating the entry in every copy cost ~4
    // integer divisions a copy, several times the tile's MMA instructions.
    auto start_tile = [&](int64_t first, int stage) {
        const int left = static_cast<int>(entries - first < kEntries ? entries - first : kEntries);
        if (tid < kEntries) {
            const bool valid = tid < left;
            int64_t row = 0;
            int pair_id = 0;
            if (valid) entry_source(static_cast<int>(first) + tid, row, pair_id);
            entry_row[tid] = row;
            const int k = pair_id % K32;
            mma::cp_async_4(shared_address(&entry_lse[stage][tid]), P.lse + row * Sh.K + k, valid);
            mma::cp_async_4(shared_address(&entry_od[stage][tid]), P.od_in + row * Sh.K + k, valid);
            mma::cp_async_4(shared_address(&entry_w[stage][tid]), P.weights + pair_id, valid);
        }
        __syncthreads();  // entry_row is written (all threads call start_tile together)
        static_assert(kThreads % kChunksPerRow == 0, "a thread's column is the same in every copy");
        const int col = (tid % kChunksPerRow) * 8;
#pragma unroll 1
        for (int i = 0; i < kCopiesPerThread; ++i) {
            const int n = i * (kThreads / kChunksPerRow) + tid / kChunksPerRow;
            const bool valid = n < left;
            const int64_t row = entry_row[n];
            mma::cp_async_16(shared_address(&Qs[stage][n * kLd + col]), P.q16 + row * D + col, valid);
            mma::cp_async_16(shared_address(&dOs[stage][n * kLd + col]), P.grad_out16 + row * D + col, valid);
        }
    };
    if (Cfg::kKvShared && entries > 0) {  // the chunk's K and V rows, in the first tile's group
        for (int e = tid; e < kChunk * kChunksPerRow; e += kThreads) {
            const int n = e / kChunksPerRow, col = (e % kChunksPerRow) * 8;
            mma::cp_async_16(shared_address(Ks + n * kLd + col), P.kmem16 + kv_offset + n * kv_stride + col, true);
            mma::cp_async_16(shared_address(Vs + n * kLd + col), P.vmem16 + kv_offset + n * kv_stride + col, true);
        }
    }
    if (entries > 0) start_tile(0, 0);
    mma::cp_async_commit();

    const int ja = 16 * warp + gid;  // this lane's key rows ja, ja + 8 within the chunk
    uint32_t kf[D / 16][4], vf[D / 16][4];  // K / V as register A fragments (d 64)
    if constexpr (!Cfg::kKvShared) {
        mma::load_a_rows_bf16<D>(P.kmem16 + kv_offset, kv_stride, ja, kChunk, tig, kf);
        mma::load_a_rows_bf16<D>(P.vmem16 + kv_offset, kv_stride, ja, kChunk, tig, vf);
    }
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
        dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
    }

    const uint32_t q_nk = shared_address(Qs[0]) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const uint32_t q_kn = shared_address(Qs[0]) + 2u * static_cast<uint32_t>(b_from_kn_lane_offset(lane, kLd));
    const uint32_t do_nk = shared_address(dOs[0]) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const uint32_t do_kn = shared_address(dOs[0]) + 2u * static_cast<uint32_t>(b_from_kn_lane_offset(lane, kLd));
    // The entry loop over K / V as A operands: k_rows, v_rows are mma::RegisterRows or SharedRows.
    auto stream_entries = [&](const auto& k_rows, const auto& v_rows) {
        int stage = 0;
        for (int64_t base = 0; base < entries; base += kEntries, stage ^= 1) {
            mma::cp_async_wait<0>();  // this thread's copies of the tile have landed ...
            __syncthreads();          // ... everyone's, and the other buffer is no longer read
            if (base + kEntries < entries) start_tile(base + kEntries, stage ^ 1);
            mma::cp_async_commit();
            const uint32_t offset = stage * kStageBytes;
            const float* lse_s = entry_lse[stage];
            const float* od_s = entry_od[stage];
            const float* w_s = entry_w[stage];

            float pw[kEntries / 8][4];  // [key][entry]
            k_rows.template times_transpose_of<kEntries>(q_nk + offset, pw);  // K Q^T
#pragma unroll
            for (int j = 0; j < kEntries / 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int n = 8 * j + 2 * tig + e;
                    const float l = lse_s[n] * kLog2e, w = w_s[n];
                    pw[j][e] = w * exp2_ftz(fmaf(pw[j][e], P.scale_log2, -l));
                    pw[j][2 + e] = w * exp2_ftz(fmaf(pw[j][2 + e], P.scale_log2, -l));
                }
            key_side_backward_step<D, kEntries>(pw, v_rows, do_kn + offset, do_nk + offset, q_kn + offset, od_s, tig,
                                                dk, dv);
        }
    };
    if constexpr (Cfg::kKvShared) {
        const uint32_t row_offset = 2u * static_cast<uint32_t>(mma::a_from_rows_lane_offset(lane, kLd) + 16 * warp * kLd);
        stream_entries(mma::SharedRows<D>{shared_address(Ks) + row_offset},
                       mma::SharedRows<D>{shared_address(Vs) + row_offset});
    } else {
        stream_entries(mma::RegisterRows<D>{kf}, mma::RegisterRows<D>{vf});
    }
    mma::cp_async_wait<0>();  // no copy outlives the block (an empty chunk's first tile)
    if (whole_segment) {
        if (P.grad_kmem) store_rows<D>(P.grad_kmem + kv_offset, kv_stride, ja, kChunk, tig, dk, P.scale, P.scale);
        if (P.grad_vmem) store_rows<D>(P.grad_vmem + kv_offset, kv_stride, ja, kChunk, tig, dv, 1.0f, 1.0f);
    } else {  // unscaled partials; sum_memory_partials_kernel adds them in item order
        const int64_t slot = (static_cast<int64_t>(__ldg(P.partial_start + segment)) + part) * P.kv_per_r + blockIdx.y;
        float* partial = P.partials + slot * 2 * kChunk * D;
        store_rows<D>(partial, D, ja, kChunk, tig, dk, 1.0f, 1.0f);
        store_rows<D>(partial + kChunk * D, D, ja, kChunk, tig, dv, 1.0f, 1.0f);
    }
}

// The rows of segments cut into several items: dK = scale * (sum of the partials in item
// order), dV = the sum. One block per (segment, KV head of its retrieval head); float4s.
template <int D>
__global__ void sum_memory_partials_kernel(Params P) {
    const int segment = static_cast<int>(blockIdx.x);
    const int items = __ldg(P.item_start + segment + 1) - __ldg(P.item_start + segment);
    if (items == 1) return;
    const HsaTensorCoreShape& Sh = P.shape;
    const cuda_detail::ChunkSegment seg(segment, Sh.C, Sh.Hr);
    const int64_t b = seg.b, r = seg.r, c = seg.c;
    const int64_t g = r * P.kv_per_r + blockIdx.y;
    const int64_t kv_stride = Sh.Hk * D;
    const int64_t kv_offset = ((b * Sh.Tm + c * kChunk) * Sh.Hk + g) * D;
    const int64_t first_slot = static_cast<int64_t>(__ldg(P.partial_start + segment)) * P.kv_per_r + blockIdx.y;
    constexpr int kQuads = 2 * kChunk * D / 4;  // dK then dV, float4s
    for (int e = static_cast<int>(threadIdx.x); e < kQuads; e += static_cast<int>(blockDim.x)) {
        const bool is_k = e < kQuads / 2;
        float* out = is_k ? P.grad_kmem : P.grad_vmem;
        if (!out) continue;
        const float4* src = reinterpret_cast<const float4*>(P.partials + first_slot * 2 * kChunk * D) + e;
        float4 sum = __ldg(src);
        for (int i = 1; i < items; ++i) {
            const float4 v = __ldg(src + static_cast<int64_t>(i) * P.kv_per_r * kQuads);
            sum.x += v.x;
            sum.y += v.y;
            sum.z += v.z;
            sum.w += v.w;
        }
        const float factor = is_k ? P.scale : 1.0f;
        const int element = 4 * (is_k ? e : e - kQuads / 2);
        const int row = element / D, col = element % D;
        *reinterpret_cast<float4*>(out + kv_offset + row * kv_stride + col) =
            make_float4(sum.x * factor, sum.y * factor, sum.z * factor, sum.w * factor);
    }
}

Params make_params(const HsaTensorCoreShape& shape) {
    Params P{};
    P.shape = shape;
    P.G = static_cast<int>(shape.H / shape.Hk);
    P.kv_per_r = static_cast<int>(shape.Hk / shape.Hr);
    P.scale = 1.0f / std::sqrt(static_cast<float>(shape.d));
    P.scale_log2 = P.scale * kLog2e;
    return P;
}

template <int D>
void launch_queries(const Params& P, int64_t units) {
    using Cfg = BackwardConfig<D>;
    const int64_t blocks = (units + Cfg::kQueryWarps - 1) / Cfg::kQueryWarps;
    HSA_CHECK(blocks < INT_MAX, "hsa_backward: " << blocks << " query blocks, expected fewer than " << INT_MAX);
    allow_shared_bytes("hsa_backward", hsa_backward_query_tc_kernel<D>, Cfg::kQuerySharedBytes);
    hsa_backward_query_tc_kernel<D><<<static_cast<unsigned>(blocks), Cfg::kQueryThreads, Cfg::kQuerySharedBytes>>>(P);
    HSA_CUDA_CHECK_LAUNCH("hsa_backward_query_tc_kernel");
}

template <int D>
void launch_memory(const Params& P, int64_t blocks) {
    using Cfg = BackwardConfig<D>;
    if (Cfg::kKvBytes > 0) {  // static entry tiles + dynamic K / V pass the default 48 KB a block: opt in
        HSA_CHECK(static_cast<int64_t>(Cfg::kEntryBytes + Cfg::kKvBytes) <= max_shared_bytes(),
                  "hsa_backward: needs " << Cfg::kEntryBytes + Cfg::kKvBytes
                                         << " bytes of shared memory per block, more than the device allows");
        HSA_CUDA_CHECK(cudaFuncSetAttribute(hsa_backward_memory_tc_kernel<D>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(Cfg::kKvBytes)));
    }
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(P.kv_per_r));
    hsa_backward_memory_tc_kernel<D><<<grid, kThreads, Cfg::kKvBytes>>>(P);
    HSA_CUDA_CHECK_LAUNCH("hsa_backward_memory_tc_kernel");
    sum_memory_partials_kernel<D><<<dim3(static_cast<unsigned>(P.segments), grid.y), 256>>>(P);
    HSA_CUDA_CHECK_LAUNCH("sum_memory_partials_kernel");
}

}  // namespace

bool hsa_tensor_core_eligible(int64_t head_dim, int64_t chunk_size, int64_t group,
                              std::initializer_list<const Tensor*> tensors) {
    return (head_dim == 64 || head_dim == 128) && chunk_size == kChunk && group >= 1 && group <= 16 && all_16_byte_aligned(tensors);
}

void hsa_backward_queries_tensor_core(const HsaTensorCoreShape& shape, const HsaTensorCoreOperands& in,
                                      const int32_t* indices, float* od, float* grad_q, __nv_bfloat16* q16_out,
                                      __nv_bfloat16* grad_out16_out) {
    Params P = make_params(shape);
    P.q = in.q;
    P.grad_out = in.grad_out;
    P.kmem16 = in.kmem16;
    P.vmem16 = in.vmem16;
    P.indices = indices;
    P.weights = in.weights;
    P.lse = in.lse;
    P.od_out = od;
    P.grad_q = grad_q;
    P.q16_out = q16_out;
    P.grad_out16_out = grad_out16_out;
    const int64_t units = shape.B * shape.T * shape.Hk;
    if (units == 0) return;
    if (shape.d == 64) launch_queries<64>(P, units);
    else launch_queries<128>(P, units);
}

void hsa_backward_memory_tensor_core(const HsaTensorCoreShape& shape, const HsaTensorCoreOperands& in,
                                     const __nv_bfloat16* q16, const __nv_bfloat16* grad_out16, const float* od,
                                     const int32_t* pair_ids, const int32_t* segment_start, float* grad_kmem,
                                     float* grad_vmem) {
    Params P = make_params(shape);
    P.q16 = q16;
    P.grad_out16 = grad_out16;
    P.kmem16 = in.kmem16;
    P.vmem16 = in.vmem16;
    P.weights = in.weights;
    P.lse = in.lse;
    P.od_in = od;
    P.pair_ids = pair_ids;
    P.segment_start = segment_start;
    P.grad_kmem = grad_kmem;
    P.grad_vmem = grad_vmem;
    const int64_t segments = shape.B * shape.Hr * shape.C;
    if (segments == 0 || shape.Hk == 0) return;
    HSA_CHECK(shape.Hk / shape.Hr <= 65535, "hsa_backward: " << shape.Hk / shape.Hr
                                                             << " KV heads a retrieval head, expected at most 65535");
    const int64_t max_pairs = shape.B * shape.T * shape.Hr * shape.K;  // padding included: a bound
    // Blocks' work: every selection once per KV head of its retrieval head.
    const int min_blocks = shape.d == 64 ? BackwardConfig<64>::kMemoryMinBlocks : BackwardConfig<128>::kMemoryMinBlocks;
    const cuda_detail::ChunkWorkItems items = cuda_detail::plan_chunk_work_items(
        "hsa_backward", segment_start, segments, max_pairs,
        cuda_detail::chunk_work_per_item(max_pairs * (shape.Hk / shape.Hr), min_blocks, 16));
    Tensor partials = Tensor::empty({items.max_slots * P.kv_per_r * 2 * kChunk * shape.d}, DType::F32, Device::CUDA);
    P.partials = partials.data<float>();
    P.item_start = items.item_start.data<int32_t>();
    P.partial_start = items.partial_start.data<int32_t>();
    P.segments = static_cast<int>(segments);
    P.pairs_per_item = static_cast<int>(items.per_item);
    if (shape.d == 64) launch_memory<64>(P, items.max_items);
    else launch_memory<128>(P, items.max_items);
}

}  // namespace hsa
