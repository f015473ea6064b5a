// Local attention on Hopper tensor cores (FlashAttention-3 style, sm_90a): bf16 operands on
// wgmma.mma_async (kernels/wgmma.cuh) with f32 accumulation, f32 online softmax, f32
// tensors in and out (or bf16 q, k and out, as the model stores them at bf16 precision). The
// streamed tiles come from bf16 sources (K and V as stored or rounded by one pass each; q
// and dO as stored or rounded by the dQ kernel, which reads them anyway) through cp.async
// into 128-byte swizzled shared memory, so the copy of the next tile overlaps the products
// of the current one; the register-held rows (q, dO in forward and dQ) are rounded as they
// are loaded. The backward's delta = dO . O is summed by the dQ kernel as it loads dO (or,
// when dQ is not wanted, by a rows kernel doing only that part). Semantics and layouts: core/backend.h (Backend::attention_forward /
// attention_backward); the f32 CUDA-core version, used at f32 precision and for other head
// dims: kernels/attention.cu.
//
// Layouts: q, out, dO, dQ [B, T, H, D]; k, v, dK, dV [B, T, Hk, D]; lse [B, T, H]; lse and
// delta by head for dK/dV [B, H, Tp] (Tp = T rounded up to 64).
// Head h reads KV head g = h / G, G = H / Hk.
//
// Blocks are one warpgroup (4 warps) owning 64 rows, 16 a warp, the M of every product, and
// stream 64-row tiles of the other operand:
//   forward   rows = queries of (b, h); tiles = keys. S = Q K^T, online softmax (one
//             rescale per tile), O += P V with P re-packed from the S registers.
//   dQ        rows = queries of (b, h); tiles = keys. P = exp(S - lse), dP = dO V^T,
//             dS = P (dP - delta), dQ += dS K.
//   dK/dV     rows = keys of (b, g); tiles = queries of each of the G heads of g in turn
//             (ascending), so no two blocks write the same row: deterministic, no atomics.
//             P^T = exp(K Q^T - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T -
//             delta), dK += dS^T Q.
// In each, the accumulating product of one step (O, dQ, or dK and dV) runs asynchronously
// while the next step's elementwise work (softmax, dS) is done. Only the tiles a block's rows
// can see are visited (the window's band for causal, all for bidirectional); elements are
// masked only in tiles that are not wholly visible.
#include "kernels/attention_tc.cuh"

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "kernels/cuda_common.cuh"
#include "kernels/mma_bf16.cuh"
#include "kernels/wgmma.cuh"

namespace hsa {

namespace {

using mma::cp_async_16;
using mma::cp_async_commit;
using mma::cp_async_wait;
using mma::exp2_ftz;
using mma::load_a_rows;
using mma::load_a_rows_bf16;
using mma::pack_c_as_a;
using mma::quad_max;
using mma::quad_sum;
using mma::shared_address;
using mma::store_a_rows_bf16;
using mma::store_rows;

constexpr int kWarpSize = 32;
constexpr int kRows = 64;  // rows a block owns: one warpgroup, the M of wgmma
constexpr int kTile = 64;  // rows of a streamed shared tile
constexpr float kLog2e = 1.4426950408889634f;

struct TcParams {
    const float* q;                 // [B, T, H, D] f32: the A rows of forward and dQ, or null
                                    //   when q is bf16 (then q16 holds it)
    const float* grad_out;          // [B, T, H, D] f32 (dQ)
    const __nv_bfloat16* k16;       // [B, T, Hk, D] bf16 (copies, or k itself when bf16): the
    const __nv_bfloat16* v16;       //   streamed tiles and the A rows of dK/dV
    const __nv_bfloat16* q16;       // [B, T, H, D] bf16 (dK/dV tiles; forward / dQ rows when q is null)
    const __nv_bfloat16* grad_out16;
    __nv_bfloat16* q16_out;         // written by the dQ / rows kernel when not null (for dK/dV)
    __nv_bfloat16* grad_out16_out;
    const float* o;                 // the forward's out [B, T, H, D], f32 or (o16) bf16: the
    const __nv_bfloat16* o16;       //   backward's delta = dO . O
    const float* lse;               // [B, T, H] (dQ)
    const float* lse_by_head;       // [B, H, Tp] lse * log2(e), +inf past T (dK/dV)
    const float* delta_by_head;     // [B, H, Tp], 0 past T (dK/dV)
    float* lse_by_head_out;         // those two, written by the dQ / rows kernel when not null
    float* delta_by_head_out;
    float* out;                     // [B, T, H, D] (forward), or null when out16 is set
    __nv_bfloat16* out16;           // [B, T, H, D] bf16 (forward): out rounded, when the caller wants it so
    float* lse_out;                 // [B, T, H] (forward)
    float* grad_q;                  // [B, T, H, D] or null
    float* grad_k;                  // [B, T, Hk, D] or null
    float* grad_v;                  // [B, T, Hk, D] or null
    int T, Tp, H, Hk, G;
    int head_splits;  // dK/dV: blocks a key tile's G heads are split over (grad_k / grad_v then
                      // hold head_splits partial [B, T, Hk, D] arrays, summed after)
    bool causal;
    int window;  // causal only; 0 = unlimited
    float scale;       // 1 / sqrt(D)
    float scale_log2;  // scale * log2(e): softmax by exp2
};

// Query t sees key s iff s lies in an interval: the keys [lo, hi] that query t sees
// (of_query), equally the queries [lo, hi] that see key s (empty, lo > hi, past T). A
// tile's masking then compares each element's column with two per-row bounds (no
// branches): with a per-element visibility test the partial tiles' masking took a third of
// the forward's ALU instructions (ncu instruction counts, SASS: one branch an element).
__device__ __forceinline__ void visible_interval(const TcParams& P, int i, bool of_query, int& lo, int& hi) {
    if (i >= P.T) {
        lo = 1;
        hi = 0;
        return;
    }
    if (!P.causal) {
        lo = 0;
        hi = P.T - 1;
        return;
    }
    const int reach = P.window > 0 ? P.window - 1 : P.T;  // how far the causal window reaches back
    lo = of_query ? max(0, i - reach) : i;
    hi = of_query ? i : min(P.T - 1, i + reach);
}

// The bounds of one lane's tile columns: column 8 j + 2 tig + e (e = 0, 1) of the tile
// starting at `first` is visible to the row iff lo_rel <= 8 j + e <= hi_rel.
struct ColumnWindow {
    int lo_rel, hi_rel;
    __device__ __forceinline__ ColumnWindow(int lo, int hi, int first, int tig)
        : lo_rel(lo - first - 2 * tig), hi_rel(hi - first - 2 * tig) {}
    __device__ __forceinline__ bool sees(int column) const { return column >= lo_rel && column <= hi_rel; }
};

// Sets the elements of a 16 x N tile (C layout: s[j][0..1] row a, s[j][2..3] row b) that
// rows a / b do not see to `hidden` (-inf for scores, 0 for probabilities).
template <int N>
__device__ __forceinline__ void hide_unseen(float (&s)[N / 8][4], const ColumnWindow& wa, const ColumnWindow& wb,
                                            float hidden) {
#pragma unroll
    for (int j = 0; j < N / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            if (!wa.sees(8 * j + e)) s[j][e] = hidden;
            if (!wb.sees(8 * j + e)) s[j][2 + e] = hidden;
        }
}

// Does every query of [t0, t0 + 64) see every key of [s0, s0 + 64)?
__device__ __forceinline__ bool tile_wholly_visible(const TcParams& P, int t0, int s0) {
    if (t0 + 63 >= P.T || s0 + 63 >= P.T) return false;
    if (!P.causal) return true;
    return s0 + 63 <= t0 && (P.window == 0 || s0 > t0 + 63 - P.window);
}

// Keys [lo, hi] seen by some query of [t0, t0 + kRows).
__device__ __forceinline__ void keys_of_queries(const TcParams& P, int t0, int& lo, int& hi) {
    if (!P.causal) {
        lo = 0;
        hi = P.T - 1;
        return;
    }
    hi = min(P.T - 1, t0 + kRows - 1);
    lo = P.window > 0 ? max(0, t0 - P.window + 1) : 0;
}

// Queries [lo, hi] that see some key of [s0, s0 + kRows).
__device__ __forceinline__ void queries_of_keys(const TcParams& P, int s0, int& lo, int& hi) {
    if (!P.causal) {
        lo = 0;
        hi = P.T - 1;
        return;
    }
    lo = s0;
    hi = P.window > 0 ? min(P.T - 1, s0 + kRows - 1 + P.window - 1) : P.T - 1;
}

// Where a forward / dQ block (one warpgroup, the kRows queries from t0 of head h of batch b)
// stands: this lane's rows ta and ta + 8, the q / out and K / V rows it reads, and the keys
// [lo, lo + 64 tiles) its queries see.
template <int D>
struct QueryBlock {
    int warp, gid, tig, b, h, t0, ta, tb, lo, tiles;
    int64_t q_stride, kv_stride, q_offset;  // q / out rows of (b, h) start at q_offset
    const __nv_bfloat16* k_base;
    const __nv_bfloat16* v_base;

    __device__ __forceinline__ explicit QueryBlock(const TcParams& P) {
        const int x = static_cast<int>(threadIdx.x), lane = x % kWarpSize;
        warp = x / kWarpSize;
        gid = lane >> 2;
        tig = lane & 3;
        b = static_cast<int>(blockIdx.x) / P.H;
        h = static_cast<int>(blockIdx.x) % P.H;
        const int g = h / P.G;
        t0 = static_cast<int>(blockIdx.y) * kRows;
        ta = t0 + 16 * warp + gid;
        tb = ta + 8;
        q_stride = static_cast<int64_t>(P.H) * D;
        kv_stride = static_cast<int64_t>(P.Hk) * D;
        q_offset = (static_cast<int64_t>(b) * P.T * P.H + h) * D;
        k_base = P.k16 + (static_cast<int64_t>(b) * P.T * P.Hk + g) * D;
        v_base = P.v16 + (static_cast<int64_t>(b) * P.T * P.Hk + g) * D;
        int hi;
        keys_of_queries(P, t0, lo, hi);
        tiles = (hi - lo) / kTile + 1;
    }
};

// The q rows' A fragments: rounded from f32 as they are loaded, or bf16 as stored.
template <int D>
__device__ __forceinline__ void load_q_rows(const TcParams& P, int64_t q_offset, int64_t q_stride, int ta, int tig,
                                            uint32_t (&qf)[D / 16][4]) {
    if (P.q) load_a_rows<D>(P.q + q_offset, q_stride, ta, P.T, tig, qf);
    else load_a_rows_bf16<D>(P.q16 + q_offset, q_stride, ta, P.T, tig, qf);
}

__device__ __forceinline__ float2 load_pair(const float* p) { return __ldg(reinterpret_cast<const float2*>(p)); }
__device__ __forceinline__ float2 load_pair(const __nv_bfloat16* p) {
    return __bfloat1622float2(__ldg(reinterpret_cast<const __nv_bfloat162*>(p)));
}

// The dO rows' A fragments (rounded to bf16 as load_a_rows does) and, from the same f32
// values, delta = dO . O of rows ra and ra + 8 (0 past T): each lane sums its 16 columns of
// a row in f32, then the 4 lanes of the row add (quad_sum). This replaces a pass of its own
// that read dO again (134 MB f32 a layer at the paper's shape; docs/PERF.md version 58).
template <int D, typename OT>
__device__ __forceinline__ void load_do_rows_with_delta(const float* __restrict__ dO, const OT* __restrict__ o,
                                                        int64_t stride, int ra, int T, int tig,
                                                        uint32_t (&f)[D / 16][4], float& delta_a, float& delta_b) {
    const int rb = ra + 8;
    const bool va = ra < T, vb = rb < T;
    const int64_t ea = static_cast<int64_t>(va ? ra : 0) * stride + 2 * tig;
    const int64_t eb = static_cast<int64_t>(vb ? rb : 0) * stride + 2 * tig;
    const float2 zero = make_float2(0.0f, 0.0f);
    float da = 0.0f, db = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const float2 a_lo = va ? load_pair(dO + ea + 16 * kk) : zero, a_hi = va ? load_pair(dO + ea + 16 * kk + 8) : zero;
        const float2 b_lo = vb ? load_pair(dO + eb + 16 * kk) : zero, b_hi = vb ? load_pair(dO + eb + 16 * kk + 8) : zero;
        const float2 oa_lo = va ? load_pair(o + ea + 16 * kk) : zero, oa_hi = va ? load_pair(o + ea + 16 * kk + 8) : zero;
        const float2 ob_lo = vb ? load_pair(o + eb + 16 * kk) : zero, ob_hi = vb ? load_pair(o + eb + 16 * kk + 8) : zero;
        da = fmaf(a_lo.x, oa_lo.x, fmaf(a_lo.y, oa_lo.y, fmaf(a_hi.x, oa_hi.x, fmaf(a_hi.y, oa_hi.y, da))));
        db = fmaf(b_lo.x, ob_lo.x, fmaf(b_lo.y, ob_lo.y, fmaf(b_hi.x, ob_hi.x, fmaf(b_hi.y, ob_hi.y, db))));
        f[kk][0] = mma::pack_bf16(a_lo.x, a_lo.y);
        f[kk][1] = mma::pack_bf16(b_lo.x, b_lo.y);
        f[kk][2] = mma::pack_bf16(a_hi.x, a_hi.y);
        f[kk][3] = mma::pack_bf16(b_hi.x, b_hi.y);
    }
    delta_a = quad_sum(da);
    delta_b = quad_sum(db);
}

// What a backward block needs of its 64 query rows before the key tiles, shared by the dQ
// kernel and (when dQ is not wanted) the rows kernel: the q and dO A fragments, lse
// (times log2 e) and delta of this lane's rows ta / tb, and the per-row side outputs the
// dK/dV kernel reads: bf16 q and dO (q16_out / grad_out16_out) and lse / delta by head.
struct RowValues {
    float lse_a, lse_b, delta_a, delta_b;
};

template <int D>
__device__ __forceinline__ RowValues backward_rows(const TcParams& P, const QueryBlock<D>& Q, uint32_t (&qf)[D / 16][4],
                                                   uint32_t (&dof)[D / 16][4]) {
    const int ta = Q.ta, tb = Q.tb, tig = Q.tig;
    load_q_rows<D>(P, Q.q_offset, Q.q_stride, ta, tig, qf);
    RowValues r;
    if (P.o16)
        load_do_rows_with_delta<D>(P.grad_out + Q.q_offset, P.o16 + Q.q_offset, Q.q_stride, ta, P.T, tig, dof,
                                   r.delta_a, r.delta_b);
    else
        load_do_rows_with_delta<D>(P.grad_out + Q.q_offset, P.o + Q.q_offset, Q.q_stride, ta, P.T, tig, dof,
                                   r.delta_a, r.delta_b);
    if (P.q16_out) store_a_rows_bf16<D>(P.q16_out + Q.q_offset, Q.q_stride, ta, P.T, tig, qf);
    if (P.grad_out16_out) store_a_rows_bf16<D>(P.grad_out16_out + Q.q_offset, Q.q_stride, ta, P.T, tig, dof);
    const float* lse = P.lse + static_cast<int64_t>(Q.b) * P.T * P.H + Q.h;
    r.lse_a = ta < P.T ? lse[static_cast<int64_t>(ta) * P.H] * kLog2e : 0.0f;
    r.lse_b = tb < P.T ? lse[static_cast<int64_t>(tb) * P.H] * kLog2e : 0.0f;
    // By head [B, H, Tp]: the blocks of (b, h) cover [0, Tp), rows past T get the padding
    // (+inf: probability 0; delta 0), so the dK/dV tiles never read past.
    if (P.lse_by_head_out && tig == 0) {
        const int64_t row0 = (static_cast<int64_t>(Q.b) * P.H + Q.h) * P.Tp;
        P.lse_by_head_out[row0 + ta] = ta < P.T ? r.lse_a : INFINITY;
        P.lse_by_head_out[row0 + tb] = tb < P.T ? r.lse_b : INFINITY;
        P.delta_by_head_out[row0 + ta] = ta < P.T ? r.delta_a : 0.0f;
        P.delta_by_head_out[row0 + tb] = tb < P.T ? r.delta_b : 0.0f;
    }
    return r;
}

// When dQ is not wanted: backward_rows alone, for the dK/dV kernel's inputs.
template <int D>
__global__ void __launch_bounds__(wgmma::kWarpgroupThreads) attention_backward_rows_kernel(TcParams P) {
    const QueryBlock<D> Q(P);
    uint32_t qf[D / 16][4], dof[D / 16][4];
    backward_rows<D>(P, Q, qf, dof);
}

// ---------------------------------------------------------------- forward (wgmma)

// Blocks of one warpgroup own 64 query rows and stream 64-key K / V tiles through 128-byte
// swizzled shared memory (kernels/wgmma.cuh). The products are wgmma.m64n64k16 with A from
// registers: S = Q K^T (q rounded to bf16 as it is loaded, K K-major) and O += P V (P
// re-packed from the S accumulators, V MN-major). The warpgroup overlaps its products with its softmax: step j issues S_j and then O += P_{j-1}
// V_{j-1}, waits only for S_j, runs the softmax of tile j while the P V product runs, then
// waits for it and rescales O. V therefore lags K by a tile: step j needs K_j and V_{j-1}
// and copies K_{j+1} and V_j (cp.async, one group) behind them; tile 0 (S only) and a last
// step (P V only) are peeled, so no wgmma sits in a branch: ptxas serialises wgmmas issued
// under conditions it cannot prove uniform across the warpgroup. (Blocks of 2 warpgroups
// sharing the tiles, each masking the one tile of the block's range it does not see, measured
// slower: docs/PERF.md version 41.)

// The running softmax of a lane's two rows (a, b) over the key tiles.
struct OnlineSoftmax {
    float max_a = -INFINITY, max_b = -INFINITY;  // running row maxima of the raw scores
    float sum_a = 0.0f, sum_b = 0.0f;            // this lane's part of the running row sums

    // Turns the scores s of the next tile into probabilities at the new running maxima and
    // returns the factors that rescale what was accumulated at the old ones.
    __device__ __forceinline__ void step(float (&s)[kTile / 8][4], float scale_log2, float& rescale_a,
                                         float& rescale_b) {
        float new_a = max_a, new_b = max_b;
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j) {
            new_a = fmaxf(new_a, fmaxf(s[j][0], s[j][1]));
            new_b = fmaxf(new_b, fmaxf(s[j][2], s[j][3]));
        }
        new_a = quad_max(new_a);
        new_b = quad_max(new_b);
        // A row that has seen no key yet keeps max -inf; offset 0 keeps exp2 away from NaN.
        const float off_a = new_a == -INFINITY ? 0.0f : new_a * scale_log2;
        const float off_b = new_b == -INFINITY ? 0.0f : new_b * scale_log2;
        rescale_a = exp2_ftz(max_a * scale_log2 - off_a);
        rescale_b = exp2_ftz(max_b * scale_log2 - off_b);
        max_a = new_a;
        max_b = new_b;
        sum_a *= rescale_a;
        sum_b *= rescale_b;
#pragma unroll
        for (int j = 0; j < kTile / 8; ++j) {
            s[j][0] = exp2_ftz(fmaf(s[j][0], scale_log2, -off_a));
            s[j][1] = exp2_ftz(fmaf(s[j][1], scale_log2, -off_a));
            s[j][2] = exp2_ftz(fmaf(s[j][2], scale_log2, -off_b));
            s[j][3] = exp2_ftz(fmaf(s[j][3], scale_log2, -off_b));
            sum_a += s[j][0] + s[j][1];
            sum_b += s[j][2] + s[j][3];
        }
    }
};

template <int D>
__global__ void __launch_bounds__(wgmma::kWarpgroupThreads, 4) attention_forward_wgmma_kernel(TcParams P) {
    static_assert(D == 64, "one 64-dim bf16 row is one 128-byte swizzled line");
    constexpr int kThreadsHere = wgmma::kWarpgroupThreads;
    constexpr uint32_t kTileBytes = kTile * D * 2;
    __shared__ __align__(1024) __nv_bfloat16 Ks[2][kTile * D];
    __shared__ __align__(1024) __nv_bfloat16 Vs[2][kTile * D];
    const QueryBlock<D> Q(P);
    const int tig = Q.tig, b = Q.b, h = Q.h, t0 = Q.t0, ta = Q.ta, tb = Q.tb;
    const int lo = Q.lo, tiles = Q.tiles;
    const int64_t q_stride = Q.q_stride, kv_stride = Q.kv_stride, q_offset = Q.q_offset;
    const __nv_bfloat16 *k_base = Q.k_base, *v_base = Q.v_base;
    const uint32_t k_tiles = shared_address(Ks[0]), v_tiles = shared_address(Vs[0]);
    const auto k_tile = [&](int j) { return k_tiles + (j & 1) * kTileBytes; };
    const auto v_tile = [&](int j) { return v_tiles + (j & 1) * kTileBytes; };
    const wgmma::SwizzledTileCopier<kTile, kThreadsHere> copier(kv_stride, P.T);
    copier.start(k_base, lo, k_tile(0));
    cp_async_commit();
    // Waits for K_j and V_{j-1}, then starts the copies of K_{j+1} and V_j.
    const auto next_tiles = [&](int j) {
        cp_async_wait<0>();
        wgmma::fence_shared_for_async_proxy();
        __syncthreads();  // everyone's copies have landed; all are done with K_{j-1}, V_{j-2}
        if (j + 1 < tiles)
            copier.start(k_base, lo + (j + 1) * kTile, k_tile(j + 1));
        if (j < tiles)
            copier.start(v_base, lo + j * kTile, v_tile(j));
        cp_async_commit();
    };

    uint32_t qf[D / 16][4];
    load_q_rows<D>(P, q_offset, q_stride, ta, tig, qf);
    int key_lo_a, key_hi_a, key_lo_b, key_hi_b;
    visible_interval(P, ta, /*of_query=*/true, key_lo_a, key_hi_a);
    visible_interval(P, tb, /*of_query=*/true, key_lo_b, key_hi_b);
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float s[kTile / 8][4];
    uint32_t pf[kTile / 16][4];  // P of the previous tile, bf16, the A operand of its P V
    OnlineSoftmax softmax;
    const auto issue_scores = [&](int j) {
        const uint64_t desc = wgmma::swizzled_descriptor(k_tile(j));
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) wgmma::mma_m64n64k16<0>(s, qf[kk], wgmma::advanced(desc, 32u * kk), kk > 0);
        wgmma::commit_group();
    };
    const auto issue_pv = [&](int j) {
        const uint64_t desc = wgmma::swizzled_descriptor(v_tile(j));
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks)
            wgmma::mma_m64n64k16<1>(acc, pf[ks], wgmma::advanced(desc, 2u * wgmma::kSwizzleAtomBytes * ks), true);
        wgmma::commit_group();
    };
    // Masks tile j's scores (only tiles not wholly visible to the block's rows: the window's
    // edges) and runs the softmax on them.
    const auto softmax_step = [&](int j, float& rescale_a, float& rescale_b) {
        const int s0 = lo + j * kTile;
        if (!tile_wholly_visible(P, t0, s0)) {
            const ColumnWindow wa(key_lo_a, key_hi_a, s0, tig), wb(key_lo_b, key_hi_b, s0, tig);
            hide_unseen<kTile>(s, wa, wb, -INFINITY);
        }
        softmax.step(s, P.scale_log2, rescale_a, rescale_b);
    };
    const auto pack_p = [&] {
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks) pack_c_as_a(pf[ks], s[2 * ks], s[2 * ks + 1]);
    };

    float rescale_a, rescale_b;
    next_tiles(0);
    wgmma::fence();
    issue_scores(0);
    wgmma::wait_group<0>();
    wgmma::pin(s);
    softmax_step(0, rescale_a, rescale_b);  // O is still 0: nothing to rescale
    pack_p();
    for (int j = 1; j < tiles; ++j) {
        next_tiles(j);
        wgmma::fence();
        issue_scores(j);
        issue_pv(j - 1);
        wgmma::wait_group<1>();  // S_j is done; P_{j-1} V_{j-1} may still run
        wgmma::pin(s);
        softmax_step(j, rescale_a, rescale_b);
        wgmma::wait_group<0>();  // now O and pf are free
        wgmma::pin(acc);
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            acc[n][0] *= rescale_a;
            acc[n][1] *= rescale_a;
            acc[n][2] *= rescale_b;
            acc[n][3] *= rescale_b;
        }
        pack_p();
    }
    next_tiles(tiles);  // V of the last tile
    wgmma::fence();
    issue_pv(tiles - 1);
    wgmma::wait_group<0>();
    wgmma::pin(acc);

    const float sum_a = quad_sum(softmax.sum_a), sum_b = quad_sum(softmax.sum_b);
    // Every real query sees at least one key (itself, or all keys), so its sum is > 0.
    const float inv_a = ta < P.T ? 1.0f / sum_a : 0.0f, inv_b = tb < P.T ? 1.0f / sum_b : 0.0f;
    if (P.out16) store_rows<D>(P.out16 + q_offset, q_stride, ta, P.T, tig, acc, inv_a, inv_b);
    else store_rows<D>(P.out + q_offset, q_stride, ta, P.T, tig, acc, inv_a, inv_b);
    if (tig == 0) {
        float* lse = P.lse_out + static_cast<int64_t>(b) * P.T * P.H + h;
        if (ta < P.T) lse[static_cast<int64_t>(ta) * P.H] = softmax.max_a * P.scale + logf(sum_a);
        if (tb < P.T) lse[static_cast<int64_t>(tb) * P.H] = softmax.max_b * P.scale + logf(sum_b);
    }
}

// ---------------------------------------------------------------- backward: dQ (wgmma)

// Blocks of one warpgroup own 64 query rows, as in the forward, and stream 64-key K / V
// tiles through swizzled shared memory, each in two steps of 32 keys: S = Q K^T and dP =
// dO V^T (wgmma.m64n32k16, A = the q rows in registers and the dO rows in shared memory, B =
// K and V K-major), dS = P (dP - delta) with P = exp(S - lse), then dQ += dS K
// (wgmma.m64n64k16, A = dS re-packed, B = K MN-major). As in the forward the dQ product of step u - 1 runs while step u's dS is
// computed; it reads the previous tile's K at a tile's first step, so K has three buffers
// (tiles j - 1, j, and j + 1 being copied) and V two. The dO rows are rounded into a swizzled
// shared tile, the A operand of dP from there: 16 registers fewer, so 4 blocks an SM fit
// (48 KB of shared memory each). For the dK/dV kernel the block also leaves, through
// backward_rows, bf16 copies of its dO rows and (when q is f32) of its q rows, and its
// rows' lse and delta by head (no extra read pass).
template <int D>
__global__ void __launch_bounds__(wgmma::kWarpgroupThreads, 4) attention_backward_dq_wgmma_kernel(TcParams P) {
    static_assert(D == 64, "one 64-dim bf16 row is one 128-byte swizzled line");
    constexpr int kThreadsHere = wgmma::kWarpgroupThreads;
    constexpr int kHalf = kTile / 2;
    constexpr uint32_t kTileBytes = kTile * D * 2, kHalfBytes = kHalf * D * 2;
    __shared__ __align__(1024) __nv_bfloat16 Ks[3][kTile * D];
    __shared__ __align__(1024) __nv_bfloat16 Vs[2][kTile * D];
    __shared__ __align__(1024) __nv_bfloat16 dOs[kRows * D];
    const QueryBlock<D> Q(P);
    const int warp = Q.warp, gid = Q.gid, tig = Q.tig, t0 = Q.t0, ta = Q.ta, tb = Q.tb;
    const int lo = Q.lo, tiles = Q.tiles;
    const int64_t q_stride = Q.q_stride, kv_stride = Q.kv_stride, q_offset = Q.q_offset;
    const __nv_bfloat16 *k_base = Q.k_base, *v_base = Q.v_base;
    const uint32_t k_tiles = shared_address(Ks[0]), v_tiles = shared_address(Vs[0]), do_rows = shared_address(dOs);
    const auto k_tile = [&](int j) { return k_tiles + static_cast<uint32_t>(j % 3) * kTileBytes; };
    const auto v_tile = [&](int j) { return v_tiles + static_cast<uint32_t>(j & 1) * kTileBytes; };
    const wgmma::SwizzledTileCopier<kTile, kThreadsHere> copier(kv_stride, P.T);
    const auto start_copies = [&](int j) {
        copier.start(k_base, lo + j * kTile, k_tile(j));
        copier.start(v_base, lo + j * kTile, v_tile(j));
    };
    start_copies(0);
    cp_async_commit();
    // Waits for K_j and V_j, then starts the copies of tile j + 1.
    const auto next_tiles = [&](int j) {
        cp_async_wait<0>();
        wgmma::fence_shared_for_async_proxy();
        __syncthreads();  // everyone's copies have landed; all are done with K_{j-2}, V_{j-1}
        if (j + 1 < tiles) start_copies(j + 1);
        cp_async_commit();
    };

    uint32_t qf[D / 16][4];
    float lse_a, lse_b, delta_a, delta_b;
    {
        uint32_t dof[D / 16][4];
        const RowValues r = backward_rows<D>(P, Q, qf, dof);
        lse_a = r.lse_a;
        lse_b = r.lse_b;
        delta_a = r.delta_a;
        delta_b = r.delta_b;
        wgmma::store_a_fragments_swizzled<D>(dof, 16 * warp + gid, tig, do_rows);  // published by next_tiles(0)
    }
    int key_lo_a, key_hi_a, key_lo_b, key_hi_b;
    visible_interval(P, ta, /*of_query=*/true, key_lo_a, key_hi_a);
    visible_interval(P, tb, /*of_query=*/true, key_lo_b, key_hi_b);

    float dq[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    float p[kHalf / 8][4], dp[kHalf / 8][4];
    uint32_t dsf[kHalf / 16][4];  // dS of the previous step, bf16, the A operand of its dQ product
    // S and dP of step (tile j, half).
    const auto issue_scores = [&](int j, int half) {
        const uint64_t kd = wgmma::swizzled_descriptor(k_tile(j) + half * kHalfBytes);
        const uint64_t vd = wgmma::swizzled_descriptor(v_tile(j) + half * kHalfBytes);
        const uint64_t dod = wgmma::swizzled_descriptor(do_rows);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) wgmma::mma_m64n32k16<0>(p, qf[kk], wgmma::advanced(kd, 32u * kk), kk > 0);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            wgmma::mma_m64n32k16_ss<0>(dp, wgmma::advanced(dod, 32u * kk), wgmma::advanced(vd, 32u * kk), kk > 0);
        wgmma::commit_group();
    };
    // dQ += dS K_half of step (tile j, half), dS from dsf.
    const auto issue_dq = [&](int j, int half) {
        const uint64_t kd = wgmma::swizzled_descriptor(k_tile(j) + half * kHalfBytes);
#pragma unroll
        for (int ks = 0; ks < kHalf / 16; ++ks)
            wgmma::mma_m64n64k16<1>(dq, dsf[ks], wgmma::advanced(kd, 2u * wgmma::kSwizzleAtomBytes * ks), true);
        wgmma::commit_group();
    };
    // dS of step (tile j, half) into p (masked only in tiles not wholly visible).
    const auto ds_step = [&](int j, int half) {
        wgmma::pin(p);
        wgmma::pin(dp);
#pragma unroll
        for (int jj = 0; jj < kHalf / 8; ++jj)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float pa = exp2_ftz(fmaf(p[jj][e], P.scale_log2, -lse_a));
                const float pb = exp2_ftz(fmaf(p[jj][2 + e], P.scale_log2, -lse_b));
                p[jj][e] = pa * (dp[jj][e] - delta_a);
                p[jj][2 + e] = pb * (dp[jj][2 + e] - delta_b);
            }
        const int s0 = lo + j * kTile;
        if (!tile_wholly_visible(P, t0, s0)) {
            const ColumnWindow wa(key_lo_a, key_hi_a, s0 + half * kHalf, tig);
            const ColumnWindow wb(key_lo_b, key_hi_b, s0 + half * kHalf, tig);
            hide_unseen<kHalf>(p, wa, wb, 0.0f);
        }
    };
    const auto pack_ds = [&] {
#pragma unroll
        for (int ks = 0; ks < kHalf / 16; ++ks) pack_c_as_a(dsf[ks], p[2 * ks], p[2 * ks + 1]);
    };
    // One step with the previous step's dQ product in flight behind its own products.
    const auto overlapped_step = [&](int j, int half, int prev_j, int prev_half) {
        wgmma::fence();
        issue_scores(j, half);
        issue_dq(prev_j, prev_half);
        wgmma::wait_group<1>();  // S and dP are done; the dQ product may still run
        ds_step(j, half);
        wgmma::wait_group<0>();  // now dQ and dsf are free
        wgmma::pin(dq);
        pack_ds();
    };

    next_tiles(0);
    wgmma::fence();
    issue_scores(0, 0);
    wgmma::wait_group<0>();
    ds_step(0, 0);
    pack_ds();
    overlapped_step(0, 1, 0, 0);
    for (int j = 1; j < tiles; ++j) {
        next_tiles(j);
        overlapped_step(j, 0, j - 1, 1);
        overlapped_step(j, 1, j, 0);
    }
    wgmma::fence();
    issue_dq(tiles - 1, 1);
    wgmma::wait_group<0>();
    wgmma::pin(dq);
    store_rows<D>(P.grad_q + q_offset, q_stride, ta, P.T, tig, dq, P.scale, P.scale);
}

// ---------------------------------------------------------------- backward: dK, dV (wgmma)

// Blocks of one warpgroup own 64 key rows of (b, g) and walk the (head, query tile) pairs
// that see them, heads ascending, so no two blocks write the same row: deterministic, no
// atomics. The block's K and V rows sit in swizzled shared memory (the A operands); each
// pair's bf16 q and dO tiles and its lse / delta values (by head, contiguous) are copied
// behind the previous pair. A pair is two steps of 32 queries: P^T = exp(K Q^T - lse) and
// dP^T = V dO^T (wgmma.m64n32k16, A and B from shared memory), dS^T = P^T (dP^T - delta),
// then dV += P^T dO and dK += dS^T Q (wgmma.m64n64k16, A = P^T / dS^T re-packed, B = the
// dO / q tile MN-major). Those two products of step u - 1 run while step u's elementwise
// work is done, so the tiles have three buffers (pairs i - 1, i, and i + 1 being copied).
// With head_splits > 1 the G heads are split over that many blocks of one key tile, each
// writing a partial dK / dV (grid balance: at Hk 1 there are only B T / 64 key tiles).
constexpr int kDkdvStages = 3;
constexpr int kDkdvBlocksPerSm = 3;  // its __launch_bounds__: ~155 registers, 66.5 KB of shared memory

template <int D>
__global__ void __launch_bounds__(wgmma::kWarpgroupThreads, kDkdvBlocksPerSm) attention_backward_dkdv_wgmma_kernel(TcParams P) {
    static_assert(D == 64, "one 64-dim bf16 row is one 128-byte swizzled line");
    constexpr int kThreadsHere = wgmma::kWarpgroupThreads;
    constexpr int kHalf = kTile / 2;
    constexpr uint32_t kTileBytes = kTile * D * 2, kHalfBytes = kHalf * D * 2;
    // Dynamic shared memory, 1024-byte aligned by hand: K, V, then the q / dO tiles and the
    // lse / delta values of each stage (layout in attention_dkdv_shared_bytes).
    extern __shared__ unsigned char dkdv_shared[];
    const uint32_t base = (shared_address(dkdv_shared) + 1023u) & ~1023u;
    const uint32_t k_rows = base, v_rows = base + kTileBytes;
    const auto q_tile = [&](int stage) { return base + (2 + stage) * kTileBytes; };
    const auto do_tile = [&](int stage) { return base + (2 + kDkdvStages + stage) * kTileBytes; };
    const uint32_t values = base + (2 + 2 * kDkdvStages) * kTileBytes;  // [stage][lse 64, delta 64] f32
    unsigned char* const values_generic = dkdv_shared + (values - shared_address(dkdv_shared));
    const auto lse_of = [&](int stage) {
        return reinterpret_cast<const float*>(values_generic) + stage * 2 * kTile;
    };

    const int x = static_cast<int>(threadIdx.x);
    const int warp = x / kWarpSize, lane = x % kWarpSize, gid = lane >> 2, tig = lane & 3;
    const int split = static_cast<int>(blockIdx.x) % P.head_splits;
    const int bg = static_cast<int>(blockIdx.x) / P.head_splits;
    const int b = bg / P.Hk, g = bg % P.Hk;
    const int heads = P.G / P.head_splits, first_head = g * P.G + split * heads;
    const int s0 = static_cast<int>(blockIdx.y) * kRows;
    const int sa = s0 + 16 * warp + gid, sb = sa + 8;  // this lane's two key rows
    const int64_t q_stride = static_cast<int64_t>(P.H) * D, kv_stride = static_cast<int64_t>(P.Hk) * D;
    const int64_t kv_offset = (static_cast<int64_t>(b) * P.T * P.Hk + g) * D;

    int lo, hi;
    queries_of_keys(P, s0, lo, hi);  // lo is a multiple of 64 (s0, or 0)
    const int tiles_per_head = (hi - lo) / kTile + 1;
    const int pairs = heads * tiles_per_head;
    // Starts the copies of pair (head, t0) into `stage`.
    const wgmma::SwizzledTileCopier<kTile, kThreadsHere> q_copier(q_stride, P.T), kv_copier(kv_stride, P.T);
    const auto start_pair = [&](int head, int t0, int stage) {
        const int64_t q_offset = (static_cast<int64_t>(b) * P.T * P.H + head) * D;
        q_copier.start(P.q16 + q_offset, t0, q_tile(stage));
        q_copier.start(P.grad_out16 + q_offset, t0, do_tile(stage));
        // lse and delta of the tile: 16 chunks of 4 floats each, always inside the padded
        // [B, H, Tp] arrays (t0 + 64 <= Tp).
        if (x < 2 * kTile / 4) {
            const int64_t row = (static_cast<int64_t>(b) * P.H + head) * P.Tp + t0;
            const bool is_lse = x < kTile / 4;
            const int c = (is_lse ? x : x - kTile / 4) * 4;
            const float* src = (is_lse ? P.lse_by_head : P.delta_by_head) + row + c;
            cp_async_16(values + static_cast<uint32_t>((stage * 2 * kTile + (is_lse ? 0 : kTile) + c) * 4), src, true);
        }
    };
    kv_copier.start(P.k16 + kv_offset, s0, k_rows);
    kv_copier.start(P.v16 + kv_offset, s0, v_rows);
    start_pair(first_head, lo, 0);
    cp_async_commit();

    int query_lo_a, query_hi_a, query_lo_b, query_hi_b;  // the queries that see keys sa, sb
    visible_interval(P, sa, /*of_query=*/false, query_lo_a, query_hi_a);
    visible_interval(P, sb, /*of_query=*/false, query_lo_b, query_hi_b);
    // dK and dV are not zeroed: the first accumulate (peeled, below) overwrites them. Zeroed
    // registers between the fence and the wgmma that reads them made ptxas inject a warpgroup
    // arrive (C7519).
    float dk[D / 8][4], dv[D / 8][4];
    float pt[kHalf / 8][4], dpt[kHalf / 8][4];   // [key][query]
    uint32_t ptf[kHalf / 16][4], dsf[kHalf / 16][4];  // P^T and dS^T of the previous step, bf16

    const uint64_t k_desc = wgmma::swizzled_descriptor(k_rows), v_desc = wgmma::swizzled_descriptor(v_rows);
    const auto issue_scores = [&](int stage, int half) {
        const uint64_t qd = wgmma::swizzled_descriptor(q_tile(stage) + half * kHalfBytes);
        const uint64_t dod = wgmma::swizzled_descriptor(do_tile(stage) + half * kHalfBytes);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            wgmma::mma_m64n32k16_ss<0>(pt, wgmma::advanced(k_desc, 32u * kk), wgmma::advanced(qd, 32u * kk), kk > 0);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
            wgmma::mma_m64n32k16_ss<0>(dpt, wgmma::advanced(v_desc, 32u * kk), wgmma::advanced(dod, 32u * kk), kk > 0);
        wgmma::commit_group();
    };
    // first: the block's first accumulate, which writes dK / dV instead of adding (a
    // compile-time constant at each call, so no wgmma is predicated at run time).
    const auto issue_accumulate = [&](int stage, int half, bool first) {
        const uint64_t qd = wgmma::swizzled_descriptor(q_tile(stage) + half * kHalfBytes);
        const uint64_t dod = wgmma::swizzled_descriptor(do_tile(stage) + half * kHalfBytes);
#pragma unroll
        for (int ks = 0; ks < kHalf / 16; ++ks)
            wgmma::mma_m64n64k16<1>(dv, ptf[ks], wgmma::advanced(dod, 2u * wgmma::kSwizzleAtomBytes * ks),
                                    !first || ks > 0);
#pragma unroll
        for (int ks = 0; ks < kHalf / 16; ++ks)
            wgmma::mma_m64n64k16<1>(dk, dsf[ks], wgmma::advanced(qd, 2u * wgmma::kSwizzleAtomBytes * ks),
                                    !first || ks > 0);
        wgmma::commit_group();
    };
    // P^T and dS^T of step (pair at t0 in `stage`, half): P^T stays in pt, dS^T goes to dpt.
    const auto elementwise = [&](int stage, int t0, bool whole, int half) {
        wgmma::pin(pt);
        wgmma::pin(dpt);
        const float* lse_s = lse_of(stage) + half * kHalf;
        const float* delta_s = lse_s + kTile;
#pragma unroll
        for (int jj = 0; jj < kHalf / 8; ++jj)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float l = lse_s[8 * jj + 2 * tig + e], dl = delta_s[8 * jj + 2 * tig + e];
                pt[jj][e] = exp2_ftz(fmaf(pt[jj][e], P.scale_log2, -l));
                pt[jj][2 + e] = exp2_ftz(fmaf(pt[jj][2 + e], P.scale_log2, -l));
                dpt[jj][e] = pt[jj][e] * (dpt[jj][e] - dl);
                dpt[jj][2 + e] = pt[jj][2 + e] * (dpt[jj][2 + e] - dl);
            }
        if (!whole) {  // block-uniform: free on whole tiles
            const ColumnWindow wa(query_lo_a, query_hi_a, t0 + half * kHalf, tig);
            const ColumnWindow wb(query_lo_b, query_hi_b, t0 + half * kHalf, tig);
            hide_unseen<kHalf>(pt, wa, wb, 0.0f);
            hide_unseen<kHalf>(dpt, wa, wb, 0.0f);
        }
    };
    const auto pack = [&] {
#pragma unroll
        for (int ks = 0; ks < kHalf / 16; ++ks) {
            pack_c_as_a(ptf[ks], pt[2 * ks], pt[2 * ks + 1]);
            pack_c_as_a(dsf[ks], dpt[2 * ks], dpt[2 * ks + 1]);
        }
    };
    const auto overlapped_step = [&](int stage, int t0, bool whole, int half, int prev_stage, int prev_half,
                                     bool first = false) {
        wgmma::fence();
        issue_scores(stage, half);
        issue_accumulate(prev_stage, prev_half, first);
        wgmma::wait_group<1>();  // P^T and dP^T are done; dK / dV may still accumulate
        elementwise(stage, t0, whole, half);
        wgmma::wait_group<0>();
        wgmma::pin(dk);
        wgmma::pin(dv);
        pack();
    };
    // Waits for pair i's copies, then starts those of pair i + 1 (head, t0 after it).
    int head = first_head, t0 = lo;
    const auto next_pair = [&](int i) {
        cp_async_wait<0>();
        wgmma::fence_shared_for_async_proxy();
        __syncthreads();  // everyone's copies have landed; all are done with pair i - 2
        const bool head_done = t0 + kTile > hi;
        const int next_head = head_done ? head + 1 : head, next_t0 = head_done ? lo : t0 + kTile;
        if (i + 1 < pairs) start_pair(next_head, next_t0, (i + 1) % kDkdvStages);
        cp_async_commit();
    };
    const auto advance = [&] {
        const bool head_done = t0 + kTile > hi;
        head = head_done ? head + 1 : head;
        t0 = head_done ? lo : t0 + kTile;
    };

    next_pair(0);
    {
        const bool whole = tile_wholly_visible(P, t0, s0);
        wgmma::fence();
        issue_scores(0, 0);
        wgmma::wait_group<0>();
        elementwise(0, t0, whole, 0);
        pack();
        overlapped_step(0, t0, whole, 1, 0, 0, /*first=*/true);
        advance();
    }
    for (int i = 1; i < pairs; ++i) {
        next_pair(i);
        const int stage = i % kDkdvStages, prev_stage = (i - 1) % kDkdvStages;
        const bool whole = tile_wholly_visible(P, t0, s0);
        overlapped_step(stage, t0, whole, 0, prev_stage, 1);
        overlapped_step(stage, t0, whole, 1, stage, 0);
        advance();
    }
    wgmma::fence();
    issue_accumulate((pairs - 1) % kDkdvStages, 1, false);
    wgmma::wait_group<0>();
    wgmma::pin(dk);
    wgmma::pin(dv);
    const int64_t part = split * static_cast<int64_t>(gridDim.x / P.head_splits) * P.T * D;  // B Hk T D a part
    if (P.grad_k) store_rows<D>(P.grad_k + part + kv_offset, kv_stride, sa, P.T, tig, dk, P.scale, P.scale);
    if (P.grad_v) store_rows<D>(P.grad_v + part + kv_offset, kv_stride, sa, P.T, tig, dv, 1.0f, 1.0f);
}

// out = the sum of `parts` arrays of n floats each (n a multiple of 4), in part order.
__global__ void sum_parts_kernel(const float* __restrict__ parts, float* __restrict__ out, int64_t n, int count) {
    const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    float4 sum = __ldg(reinterpret_cast<const float4*>(parts + i));
    for (int p = 1; p < count; ++p) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(parts + p * n + i));
        sum.x += v.x;
        sum.y += v.y;
        sum.z += v.z;
        sum.w += v.w;
    }
    *reinterpret_cast<float4*>(out + i) = sum;
}

// Dynamic shared memory of the dK/dV kernel: K, V and the staged q / dO tiles (8 KB each),
// the staged lse / delta values, and 1 KB to align the start to 1024 bytes.
constexpr int attention_dkdv_shared_bytes(int D) {
    return (2 + 2 * kDkdvStages) * kTile * D * 2 + kDkdvStages * 2 * kTile * 4 + 1024;
}

// ---------------------------------------------------------------- host side

// The supported D: the model's, and one 64-dim bf16 row is one 128-byte swizzled line.
// Occupancy (ptxas of nvcc 13.0, no spills): forward 127 registers and dQ 122 (dO from shared
// memory; with it in registers, 140 at 3 blocks, or wgmmas serialised at 4), 4 blocks an SM;
// dK/dV 158 registers, 3 blocks an SM.
constexpr int kHeadDim = 64;

// How many blocks the dK/dV kernel splits a key tile's G heads over (1, 2 or 4, dividing
// G): the grid is B Hk T / 64 blocks, 512 at the model's Hk 1 and 8 x 4096, 1.3 waves of
// 3 blocks on 132 SMs (the second 29% full). A split is taken when it fills the waves at
// least 10% better; its partials cost a write and a read of dK / dV each (8 MB at that shape).
int dkdv_head_splits(int64_t key_tiles, int G) {
    const int64_t slots = static_cast<int64_t>(multiprocessor_count()) * kDkdvBlocksPerSm;
    const auto wave_fill = [slots](int64_t blocks) {
        return static_cast<double>(blocks) / static_cast<double>((blocks + slots - 1) / slots * slots);
    };
    int best = 1;
    double best_fill = wave_fill(key_tiles);
    for (int s = 2; s <= 4 && G % s == 0; s *= 2) {
        const double fill = wave_fill(key_tiles * s);
        if (fill > 1.1 * best_fill) {
            best = s;
            best_fill = fill;
        }
    }
    return best;
}

TcParams make_params(const Tensor& q, const Tensor& k, bool causal, int window) {
    TcParams P{};
    P.T = static_cast<int>(q.size(1));
    P.Tp = (P.T + kTile - 1) / kTile * kTile;
    P.H = static_cast<int>(q.size(2));
    P.Hk = static_cast<int>(k.size(2));
    P.G = P.H / P.Hk;
    P.causal = causal;
    P.window = window;
    P.scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
    P.scale_log2 = P.scale * kLog2e;
    P.head_splits = 1;
    return P;
}

dim3 grid_for(int64_t heads_times_batch, int64_t T, const char* op) {
    const int64_t tiles = (T + kRows - 1) / kRows;
    HSA_CHECK(tiles <= 65535, op << ": T = " << T << " needs " << tiles << " row blocks, over the grid limit 65535");
    HSA_CHECK(heads_times_batch < (int64_t{1} << 31), op << ": " << heads_times_batch << " (batch x heads) blocks, over the grid limit");
    return dim3(static_cast<unsigned>(heads_times_batch), static_cast<unsigned>(tiles));
}

const __nv_bfloat16* bf16_data(const Tensor& t) { return static_cast<const __nv_bfloat16*>(t.raw_data()); }
__nv_bfloat16* bf16_data(Tensor& t) { return static_cast<__nv_bfloat16*>(t.raw_data()); }

// K and V are small next to q (Hk of H heads), so one rounding pass each gives the tiles
// a bf16 source that cp.async can stream without converting on the load path (none for a
// K that rmsnorm_rope already wrote in bf16).
Tensor bf16_operand(const Tensor& t) { return t.dtype() == DType::BF16 ? t : rounded_bf16_copy(t); }

// q: f32 rows rounded as the kernels load them, or bf16 as stored.
void set_q(TcParams& P, const Tensor& q) {
    if (q.dtype() == DType::BF16) P.q16 = bf16_data(q);
    else P.q = q.data<float>();
}

}  // namespace

bool attention_tensor_core_eligible(int64_t head_dim, std::initializer_list<const Tensor*> tensors) {
    return head_dim == kHeadDim && all_16_byte_aligned(tensors);
}

void attention_forward_tensor_core(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, int window,
                                   Tensor& out, Tensor& lse) {
    TcParams P = make_params(q, k, causal, window);
    const Tensor k16 = bf16_operand(k), v16 = bf16_operand(v);
    set_q(P, q);
    P.k16 = bf16_data(k16);
    P.v16 = bf16_data(v16);
    if (out.dtype() == DType::BF16) P.out16 = bf16_data(out);
    else P.out = out.data<float>();
    P.lse_out = lse.data<float>();
    const dim3 grid = grid_for(q.size(0) * q.size(2), q.size(1), "attention_forward");
    attention_forward_wgmma_kernel<kHeadDim><<<grid, wgmma::kWarpgroupThreads>>>(P);
    HSA_CUDA_CHECK_LAUNCH("attention_forward_wgmma_kernel");
    // k16 / v16 return to the caching allocator here; later work on the stream is ordered
    // after the kernel, so reuse of their memory is safe.
}

void attention_backward_tensor_core(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& grad_out, const Tensor& lse, bool causal, int window, Tensor* grad_q,
                                    Tensor* grad_k, Tensor* grad_v) {
    TcParams P = make_params(q, k, causal, window);
    const Tensor k16 = bf16_operand(k), v16 = bf16_operand(v);
    set_q(P, q);
    P.grad_out = grad_out.data<float>();
    if (out.dtype() == DType::BF16) P.o16 = bf16_data(out);
    else P.o = out.data<float>();
    P.k16 = bf16_data(k16);
    P.v16 = bf16_data(v16);
    P.lse = lse.data<float>();
    P.grad_q = grad_q ? grad_q->data<float>() : nullptr;
    P.grad_k = grad_k ? grad_k->data<float>() : nullptr;
    P.grad_v = grad_v ? grad_v->data<float>() : nullptr;
    const bool want_kv = P.grad_k || P.grad_v;
    // What the dK/dV kernel reads besides K and V: bf16 q (q itself when bf16) and dO, and
    // lse / delta by head, all written by the dQ kernel as it reads its rows (or, when dQ is
    // not wanted, by the rows kernel doing only that part), so delta = dO . O costs no pass
    // of its own and has the same bits either way.
    Tensor q16, grad_out16, lse_by_head, delta_by_head;
    if (want_kv) {
        if (q.dtype() == DType::BF16) {
            q16 = q;
        } else {
            q16 = Tensor::empty(q.shape(), DType::BF16, Device::CUDA);
            P.q16_out = bf16_data(q16);
        }
        grad_out16 = Tensor::empty(grad_out.shape(), DType::BF16, Device::CUDA);
        P.grad_out16_out = bf16_data(grad_out16);
        const int64_t by_head = q.size(0) * q.size(2) * P.Tp;
        lse_by_head = Tensor::empty({by_head}, DType::F32, Device::CUDA);
        delta_by_head = Tensor::empty({by_head}, DType::F32, Device::CUDA);
        P.lse_by_head_out = lse_by_head.data<float>();
        P.delta_by_head_out = delta_by_head.data<float>();
    }
    const dim3 row_grid = grid_for(q.size(0) * q.size(2), q.size(1), "attention_backward");
    if (P.grad_q) {
        attention_backward_dq_wgmma_kernel<kHeadDim><<<row_grid, wgmma::kWarpgroupThreads>>>(P);
        HSA_CUDA_CHECK_LAUNCH("attention_backward_dq_wgmma_kernel");
    } else if (want_kv) {
        attention_backward_rows_kernel<kHeadDim><<<row_grid, wgmma::kWarpgroupThreads>>>(P);
        HSA_CUDA_CHECK_LAUNCH("attention_backward_rows_kernel");
    }
    if (want_kv) {
        P.q16 = bf16_data(q16);
        P.grad_out16 = bf16_data(grad_out16);
        P.lse_by_head = lse_by_head.data<float>();
        P.delta_by_head = delta_by_head.data<float>();
        const int64_t key_tiles = q.size(0) * k.size(2) * ((P.T + kRows - 1) / kRows);
        P.head_splits = dkdv_head_splits(key_tiles, P.G);
        const dim3 grid = grid_for(q.size(0) * k.size(2) * P.head_splits, q.size(1), "attention_backward");
        Tensor k_parts, v_parts;  // the partial dK / dV when the heads are split
        if (P.head_splits > 1) {
            const int64_t part_numel = k.numel() * P.head_splits;
            if (P.grad_k) {
                k_parts = Tensor::empty({part_numel}, DType::F32, Device::CUDA);
                P.grad_k = k_parts.data<float>();
            }
            if (P.grad_v) {
                v_parts = Tensor::empty({part_numel}, DType::F32, Device::CUDA);
                P.grad_v = v_parts.data<float>();
            }
        }
        constexpr int kShared = attention_dkdv_shared_bytes(kHeadDim);
        allow_shared_bytes("attention_backward", attention_backward_dkdv_wgmma_kernel<kHeadDim>, kShared);
        attention_backward_dkdv_wgmma_kernel<kHeadDim><<<grid, wgmma::kWarpgroupThreads, kShared>>>(P);
        HSA_CUDA_CHECK_LAUNCH("attention_backward_dkdv_wgmma_kernel");
        if (P.head_splits > 1) {
            const int64_t n = k.numel();
            for (auto [parts, out] : {std::pair{&k_parts, grad_k}, std::pair{&v_parts, grad_v}}) {
                if (!out) continue;
                sum_parts_kernel<<<blocks_for(n / 4, 256), 256>>>(parts->data<float>(), out->data<float>(), n,
                                                                  P.head_splits);
                HSA_CUDA_CHECK_LAUNCH("sum_parts_kernel");
            }
        }
    }
}

}  // namespace hsa
