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
//   S = Q K^T, dP = dO V^T, od by a quad reduction, dQ += dS K.
// Pass 3 (memory): one block of 4 warps per (b, chunk c, g); the chunk's 64 keys are the rows
//   (16 a warp; K and V as A fragments in registers), and its selections times the G heads
//   ("entries", in (t, k, h) order) stream through shared memory 64 at a time:
//   P^T = exp(K Q^T - lse), PW^T = w P^T, dV += PW^T dO, dP^T = V dO^T,
//   dS^T = PW^T (dP^T - od), dK += dS^T Q. Rows of never-selected chunks get 0.
#include "kernels/hsa_backward_v1.cuh"

#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/mma_bf16.cuh"

namespace hsa {

namespace {

using mma::accumulate_product_with_tile;
using mma::b_from_kn_lane_offset;
using mma::b_from_nk_lane_offset;
using mma::load_a_rows;
using mma::pack_bf16;
using mma::pack_c_as_a;
using mma::product_with_tile_transpose;
using mma::quad_sum;
using mma::shared_address;
using mma::store_rows;

constexpr int kChunk = 64;      // S
constexpr int kHeadDim = 64;    // D of the backward kernels
constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kEntries = 64;    // entries per shared tile of pass 3
constexpr float kLog2e = 1.4426950408889634f;

struct Params {
    HsaTensorCoreShape shape;
    const float* q;
    const float* kmem;
    const float* vmem;
    const int32_t* indices;
    const float* weights;
    const float* lse;
    const float* grad_out;
    const float* od_in;
    const int32_t* pair_ids;
    const int32_t* segment_start;
    float* od_out;
    float* grad_q;
    float* grad_kmem;
    float* grad_vmem;
    int G;
    int kv_per_r;  // Hk / Hr
    float scale, scale_log2;
};

// ---------------------------------------------------------------- pass 1: od, grad_q

template <int D>
__global__ void __launch_bounds__(kThreads) hsa_backward_query_tc_kernel(Params P) {
    constexpr int kLd = D + 8;
    constexpr int kTileElems = kChunk * kLd;
    extern __shared__ __align__(16) unsigned char query_shared[];  // kWarps x (Ks, Vs)
    __nv_bfloat16* tiles = reinterpret_cast<__nv_bfloat16*>(query_shared);
    const HsaTensorCoreShape& Sh = P.shape;

    const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int gid = lane >> 2, tig = lane & 3;
    const int64_t unit = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
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
    float dq[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    const uint32_t k_nk = shared_address(Ks) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const uint32_t k_kn = shared_address(Ks) + 2u * static_cast<uint32_t>(b_from_kn_lane_offset(lane, kLd));
    const uint32_t v_nk = shared_address(Vs) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const int64_t kv_stride = Sh.Hk * D;
    const int64_t row_a = row0 + gid, row_b = row0 + gid + 8;

#pragma unroll 1
    for (int64_t k = 0; k < Sh.K; ++k) {
        const int32_t c = __ldg(P.indices + sel + k);  // the same for the whole warp
        if (c < 0) {
            if (tig == 0) {
                if (has_a) P.od_out[row_a * Sh.K + k] = 0.0f;
                if (has_b) P.od_out[row_b * Sh.K + k] = 0.0f;
            }
            continue;
        }
        const float w = __ldg(P.weights + sel + k);
        const float lse_a = has_a ? __ldg(P.lse + row_a * Sh.K + k) * kLog2e : 0.0f;
        const float lse_b = has_b ? __ldg(P.lse + row_b * Sh.K + k) * kLog2e : 0.0f;
        const int64_t first = ((b * Sh.Tm + static_cast<int64_t>(c) * kChunk) * Sh.Hk + g) * D;
        __syncwarp();  // the previous chunk's ldmatrix reads are done
        mma::load_two_tiles_bf16_warp<D, kChunk>(P.kmem + first, P.vmem + first, kv_stride, Ks, Vs, lane);
        __syncwarp();

        float p[kChunk / 8][4], dp[kChunk / 8][4];
        product_with_tile_transpose<D, kChunk>(qf, k_nk, p);   // scores
        product_with_tile_transpose<D, kChunk>(dof, v_nk, dp);  // dO V^T
        float od_a = 0.0f, od_b = 0.0f;
#pragma unroll
        for (int j = 0; j < kChunk / 8; ++j) {
            p[j][0] = exp2f(fmaf(p[j][0], P.scale_log2, -lse_a));
            p[j][1] = exp2f(fmaf(p[j][1], P.scale_log2, -lse_a));
            p[j][2] = exp2f(fmaf(p[j][2], P.scale_log2, -lse_b));
            p[j][3] = exp2f(fmaf(p[j][3], P.scale_log2, -lse_b));
            od_a += p[j][0] * dp[j][0] + p[j][1] * dp[j][1];
            od_b += p[j][2] * dp[j][2] + p[j][3] * dp[j][3];
        }
        od_a = quad_sum(od_a);
        od_b = quad_sum(od_b);
        if (tig == 0) {
            if (has_a) P.od_out[row_a * Sh.K + k] = od_a;
            if (has_b) P.od_out[row_b * Sh.K + k] = od_b;
        }
        if (P.grad_q == nullptr) continue;
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
    if (P.grad_q) store_rows<D>(P.grad_q + row0 * D, D, gid, P.G, tig, dq, P.scale, P.scale);
}

// ---------------------------------------------------------------- pass 3: grad_kmem, grad_vmem

template <int D>
__global__ void __launch_bounds__(kThreads) hsa_backward_memory_tc_kernel(Params P) {
    constexpr int kLd = D + 8;
    __shared__ __align__(16) __nv_bfloat16 Qs[kEntries * kLd];
    __shared__ __align__(16) __nv_bfloat16 dOs[kEntries * kLd];
    __shared__ long long entry_row[kEntries];  // q / dO row, -1 past the last entry
    __shared__ float entry_lse[kEntries];      // lse * log2(e)
    __shared__ float entry_od[kEntries];
    __shared__ float entry_w[kEntries];        // 0 past the last entry: no contribution
    const HsaTensorCoreShape& Sh = P.shape;

    const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int gid = lane >> 2, tig = lane & 3;
    int64_t unit = blockIdx.x;
    const int64_t g = unit % Sh.Hk;
    unit /= Sh.Hk;
    const int64_t c = unit % Sh.C, b = unit / Sh.C;
    const int64_t r = g / P.kv_per_r;
    const int64_t segment = (b * Sh.Hr + r) * Sh.C + c;
    const int64_t begin = P.segment_start[segment];
    const int64_t entries = (P.segment_start[segment + 1] - begin) * P.G;
    const int64_t kv_stride = Sh.Hk * D;
    const int64_t kv_offset = ((b * Sh.Tm + c * kChunk) * Sh.Hk + g) * D;  // the chunk's row 0
    const int ja = 16 * warp + gid;  // this lane's key rows ja, ja + 8 within the chunk

    uint32_t kf[D / 16][4], vf[D / 16][4];
    load_a_rows<D>(P.kmem + kv_offset, kv_stride, ja, kChunk, tig, kf);
    load_a_rows<D>(P.vmem + kv_offset, kv_stride, ja, kChunk, tig, vf);
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
        dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
    }
    const uint32_t q_nk = shared_address(Qs) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const uint32_t q_kn = shared_address(Qs) + 2u * static_cast<uint32_t>(b_from_kn_lane_offset(lane, kLd));
    const uint32_t do_nk = shared_address(dOs) + 2u * static_cast<uint32_t>(b_from_nk_lane_offset(lane, kLd));
    const uint32_t do_kn = shared_address(dOs) + 2u * static_cast<uint32_t>(b_from_kn_lane_offset(lane, kLd));

    for (int64_t base = 0; base < entries; base += kEntries) {
        __syncthreads();  // the previous tile is no longer read
        for (int n = static_cast<int>(threadIdx.x); n < kEntries; n += kThreads) {
            const int64_t entry = base + n;
            if (entry < entries) {
                const int64_t pair = entry / P.G, head = entry - pair * P.G;
                const int64_t p = P.pair_ids[begin + pair];  // ((b * T + t) * Hr + r) * K + k
                const int64_t s = p / Sh.K, k = p - s * Sh.K;
                const int64_t t = (s / Sh.Hr) % Sh.T;
                const int64_t row = (b * Sh.T + t) * Sh.H + g * P.G + head;
                entry_row[n] = row;
                entry_lse[n] = __ldg(P.lse + row * Sh.K + k) * kLog2e;
                entry_od[n] = __ldg(P.od_in + row * Sh.K + k);
                entry_w[n] = __ldg(P.weights + p);
            } else {
                entry_row[n] = -1;
                entry_lse[n] = 0.0f;
                entry_od[n] = 0.0f;
                entry_w[n] = 0.0f;
            }
        }
        __syncthreads();
        constexpr int kVecPerRow = D / 4;
        for (int e = static_cast<int>(threadIdx.x); e < kEntries * kVecPerRow; e += kThreads) {
            const int n = e / kVecPerRow, col = (e % kVecPerRow) * 4;
            const long long row = entry_row[n];
            float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f), y = x;
            if (row >= 0) {
                x = __ldg(reinterpret_cast<const float4*>(P.q + row * D + col));
                y = __ldg(reinterpret_cast<const float4*>(P.grad_out + row * D + col));
            }
            *reinterpret_cast<uint2*>(Qs + n * kLd + col) = make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
            *reinterpret_cast<uint2*>(dOs + n * kLd + col) = make_uint2(pack_bf16(y.x, y.y), pack_bf16(y.z, y.w));
        }
        __syncthreads();

        float pw[kEntries / 8][4], dpt[kEntries / 8][4];  // [key][entry]
        product_with_tile_transpose<D, kEntries>(kf, q_nk, pw);  // K Q^T
#pragma unroll
        for (int j = 0; j < kEntries / 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int n = 8 * j + 2 * tig + e;
                const float l = entry_lse[n], w = entry_w[n];
                pw[j][e] = w * exp2f(fmaf(pw[j][e], P.scale_log2, -l));
                pw[j][2 + e] = w * exp2f(fmaf(pw[j][2 + e], P.scale_log2, -l));
            }
        {
            uint32_t pf[kEntries / 16][4];
#pragma unroll
            for (int ks = 0; ks < kEntries / 16; ++ks) pack_c_as_a(pf[ks], pw[2 * ks], pw[2 * ks + 1]);
            accumulate_product_with_tile<D, kEntries>(pf, do_kn, dv);  // dV += PW^T dO
        }
        product_with_tile_transpose<D, kEntries>(vf, do_nk, dpt);  // V dO^T
#pragma unroll
        for (int j = 0; j < kEntries / 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float od = entry_od[8 * j + 2 * tig + e];
                pw[j][e] *= dpt[j][e] - od;  // dS^T
                pw[j][2 + e] *= dpt[j][2 + e] - od;
            }
        uint32_t dsf[kEntries / 16][4];
#pragma unroll
        for (int ks = 0; ks < kEntries / 16; ++ks) pack_c_as_a(dsf[ks], pw[2 * ks], pw[2 * ks + 1]);
        accumulate_product_with_tile<D, kEntries>(dsf, q_kn, dk);  // dK += dS^T Q
    }
    if (P.grad_kmem) store_rows<D>(P.grad_kmem + kv_offset, kv_stride, ja, kChunk, tig, dk, P.scale, P.scale);
    if (P.grad_vmem) store_rows<D>(P.grad_vmem + kv_offset, kv_stride, ja, kChunk, tig, dv, 1.0f, 1.0f);
}

Params make_params(const HsaTensorCoreShape& shape) {
    Params P{};
    P.shape = shape;
    P.G = static_cast<int>(shape.H / shape.Hk);
    P.kv_per_r = static_cast<int>(shape.Hk / shape.Hr);
    P.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    P.scale_log2 = P.scale * kLog2e;
    return P;
}

}  // namespace

bool hsa_tensor_core_eligible(int64_t head_dim, int64_t chunk_size, int64_t group,
                              std::initializer_list<const Tensor*> tensors) {
    return head_dim == kHeadDim && chunk_size == kChunk && group >= 1 && group <= 16 && all_16_byte_aligned(tensors);
}

void hsa_backward_queries_tensor_core(const HsaTensorCoreShape& shape, const float* q, const float* kmem,
                                      const float* vmem, const int32_t* indices, const float* weights,
                                      const float* lse, const float* grad_out, float* od, float* grad_q) {
    Params P = make_params(shape);
    P.q = q;
    P.kmem = kmem;
    P.vmem = vmem;
    P.indices = indices;
    P.weights = weights;
    P.lse = lse;
    P.grad_out = grad_out;
    P.od_out = od;
    P.grad_q = grad_q;
    const int64_t units = shape.B * shape.T * shape.Hk;
    if (units == 0) return;
    const int64_t blocks = (units + kWarps - 1) / kWarps;
    HSA_CHECK(blocks < INT_MAX, "hsa_backward: " << blocks << " query blocks, expected fewer than " << INT_MAX);
    constexpr size_t kSharedBytes = static_cast<size_t>(kWarps) * 2 * kChunk * (kHeadDim + 8) * 2;  // 72 KB
    allow_shared_bytes("hsa_backward", hsa_backward_query_tc_kernel<kHeadDim>, kSharedBytes);
    hsa_backward_query_tc_kernel<kHeadDim><<<static_cast<unsigned>(blocks), kThreads, kSharedBytes>>>(P);
    HSA_CUDA_CHECK_LAUNCH("hsa_backward_query_tc_kernel");
}

void hsa_backward_memory_tensor_core(const HsaTensorCoreShape& shape, const float* q, const float* kmem,
                                     const float* vmem, const float* weights, const float* lse,
                                     const float* grad_out, const float* od, const int32_t* pair_ids,
                                     const int32_t* segment_start, float* grad_kmem, float* grad_vmem) {
    Params P = make_params(shape);
    P.q = q;
    P.kmem = kmem;
    P.vmem = vmem;
    P.weights = weights;
    P.lse = lse;
    P.grad_out = grad_out;
    P.od_in = od;
    P.pair_ids = pair_ids;
    P.segment_start = segment_start;
    P.grad_kmem = grad_kmem;
    P.grad_vmem = grad_vmem;
    const int64_t blocks = shape.B * shape.C * shape.Hk;
    if (blocks == 0) return;
    HSA_CHECK(blocks < INT_MAX, "hsa_backward: " << blocks << " (batch, chunk, KV head) blocks, expected fewer than "
                                                 << INT_MAX);
    hsa_backward_memory_tc_kernel<kHeadDim><<<static_cast<unsigned>(blocks), kThreads>>>(P);
    HSA_CUDA_CHECK_LAUNCH("hsa_backward_memory_tc_kernel");
}

}  // namespace hsa
