// HSA forward, version 1: tensor cores (mma.sync.m16n8k16 bf16 x bf16 -> f32), f32 softmax.
// Semantics: core/backend.h (Backend::hsa_forward); math: shared/design/MODEL.md "HSA
// layer"; version 0 (f32, CUDA cores): kernels/hsa.cu. Plain sm_90 (no wgmma).
//
// Work unit: one warp per (b, t, KV head g). Its G = H / Hk query heads form the 16-row
// M tile of every MMA (rows >= G are zero and never stored). For each selected chunk k:
//   1. the chunk's S = 64 keys and values (bf16 copies of kmem / vmem, rounded once per
//      call) are copied by cp.async to the warp's own shared tiles Ks, Vs [64][d + 8]
//      (row-major; the 16-byte pad makes every 8-row ldmatrix phase hit 32 distinct banks),
//      one step ahead: the next chunk's K as soon as step 2 is done, its V after step 4;
//   2. scores S = Q K^T (16 x 64): 8 n-tiles of 8 keys, d / 16 k-steps; B fragments by
//      ldmatrix.x4 from Ks (K row-major [key][dim] is B = K^T in "col" layout);
//   3. softmax per row over the chunk's 64 keys in f32 (each chunk its own softmax; lse
//      per (t, h, k) = max * scale + log(sum)); each lane holds 16 of a row's 64 scores
//      and the 4 lanes of a quad (same groupID) hold the rest, so 2 shuffles finish a row;
//   4. the probabilities, scaled by weights[t, r, k] / sum, are re-packed in registers as
//      the bf16 A fragments of O += P V (the m16n8k16 C layout of two adjacent n-tiles is
//      exactly the A layout of one k-step), with V B fragments by ldmatrix.x4.trans.
//      The f32 accumulators carry sum_k w_k o_k across chunks; they are stored once.
// Padding index -1: skipped, lse 0; a token with no chunk stores zeros.
//
// Fragment layouts and ldmatrix addressing: kernels/mma_bf16.cuh.
//
// Resources (ptxas, sm_90, no spills): d 64: 4 warps a block, 72 KB shared, 166 registers;
// d 128: 2 warps a block, 68 KB shared, 218 registers; 3 blocks per SM either way.
// Limits (checked): d in {64, 128}, S = 64, G in 1..16.
#include "kernels/hsa_forward_v1.cuh"

#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/chunk_lists.cuh"
#include "kernels/cuda_common.cuh"
#include "kernels/mma_bf16.cuh"

namespace hsa {

namespace {

constexpr int kChunk = 64;     // S: keys per chunk (the only chunk size supported)
constexpr int kTileRows = 16;  // M of the MMA: the G <= 16 query heads of a (token, KV head)
constexpr int kWarpSize = 32;

template <int D>
struct V1Config {
    static constexpr int kWarps = D == 64 ? 4 : 2;  // (token, KV head) units per block
    static constexpr int kThreads = kWarps * kWarpSize;
    static constexpr int kLd = D + 8;  // shared row stride in bf16: + 16 bytes against bank conflicts
    static constexpr int kTileElems = kChunk * kLd;  // one of Ks, Vs
    static constexpr size_t kSharedBytes = static_cast<size_t>(kWarps) * 2 * kTileElems * 2;
    // 3 blocks per SM: d 64: 3 x 72 KB (12 warps); d 128: 3 x 68 KB (6 warps).
    static constexpr int kMinBlocks = 3;
    static_assert(D % 32 == 0, "head dim must allow paired k-steps and paired n-tiles");
    static_assert((kLd * 2) % 16 == 0, "ldmatrix rows must be 16-byte aligned");
};

struct V1Params {
    const float* q;          // [B, T, H, d]
    const __nv_bfloat16* kmem16;  // [B, Tm, Hk, d], bf16 copies of kmem / vmem
    const __nv_bfloat16* vmem16;
    const int32_t* indices;  // [B, T, Hr, K]
    const float* weights;    // [B, T, Hr, K]
    float* out;              // [B, T, H, d]
    float* lse;              // [B, T, H, K]
    int64_t T, H, Hk, Hr, Tm, K;
    int64_t units;  // B * T * Hk
    int G;          // H / Hk, 1..16
    int kv_per_r;   // Hk / Hr
    float scale;       // 1 / sqrt(d)
    float scale_log2;  // scale * log2(e): softmax by exp2
};

// ---------------------------------------------------------------- device helpers

using mma::exp2_ftz;
using mma::ldmatrix_x4;
using mma::ldmatrix_x4_trans;
using mma::mma_bf16_16816;
using mma::pack_bf16;
using mma::quad_max;
using mma::quad_sum;
using mma::shared_address;

// ---------------------------------------------------------------- kernel

template <int D>
__global__ void __launch_bounds__(V1Config<D>::kThreads, V1Config<D>::kMinBlocks) hsa_forward_v1_kernel(V1Params P) {
    using Cfg = V1Config<D>;
    constexpr int kSteps = D / 16;    // k-steps of S = Q K^T
    constexpr int kOutTiles = D / 8;  // n-tiles of O = P V
    constexpr int kKeyTiles = kChunk / 8;   // n-tiles of S
    constexpr int kKeySteps = kChunk / 16;  // k-steps of O = P V
    extern __shared__ __align__(16) unsigned char v1_shared[];

    const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
    const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
    const int64_t unit = static_cast<int64_t>(blockIdx.x) * Cfg::kWarps + warp;
    if (unit >= P.units) return;  // whole warps only; no block-wide barrier follows

    __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(v1_shared) + warp * 2 * Cfg::kTileElems;
    __nv_bfloat16* Vs = Ks + Cfg::kTileElems;

    const int64_t g = unit % P.Hk;
    const int64_t bt = unit / P.Hk;  // b * T + t
    const int64_t b = bt / P.T;
    const int64_t r = g / P.kv_per_r;
    const int64_t sel = (bt * P.Hr + r) * P.K;  // first of this (t, r)'s K entries of indices / weights
    const int64_t row0 = bt * P.H + g * P.G;   // q / out / lse row of the tile's first query head
    const int gid = lane >> 2, tig = lane & 3;
    const bool has_a = gid < P.G;      // tile row gid is a real head
    const bool has_b = gid + 8 < P.G;  // tile row gid + 8 is a real head

    // Q as A fragments for the whole kernel: rows gid and gid + 8, zero past G.
    uint32_t qf[kSteps][4];
    {
        const float* qa = P.q + (row0 + gid) * D + 2 * tig;
        const float* qb = P.q + (row0 + gid + 8) * D + 2 * tig;
        const float2 zero = make_float2(0.0f, 0.0f);
#pragma unroll
        for (int kk = 0; kk < kSteps; ++kk) {
            const float2 a_lo = has_a ? __ldg(reinterpret_cast<const float2*>(qa + 16 * kk)) : zero;
            const float2 a_hi = has_a ? __ldg(reinterpret_cast<const float2*>(qa + 16 * kk + 8)) : zero;
            const float2 b_lo = has_b ? __ldg(reinterpret_cast<const float2*>(qb + 16 * kk)) : zero;
            const float2 b_hi = has_b ? __ldg(reinterpret_cast<const float2*>(qb + 16 * kk + 8)) : zero;
            qf[kk][0] = pack_bf16(a_lo.x, a_lo.y);
            qf[kk][1] = pack_bf16(b_lo.x, b_lo.y);
            qf[kk][2] = pack_bf16(a_hi.x, a_hi.y);
            qf[kk][3] = pack_bf16(b_hi.x, b_hi.y);
        }
    }

    float acc[kOutTiles][4];
#pragma unroll
    for (int n = 0; n < kOutTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    // ldmatrix lane addresses. K (x4): matrix i = lane >> 3 is keys 8j + (lane & 7) at dims
    // 16 kk + 8 i, i.e. registers {b0b1, b2b3} of k-step kk, then of kk + 1.
    // V (x4.trans): lanes 0-15 keys 16 ks + (lane & 15) at dims 8 n, lanes 16-31 the same keys
    // at dims 8 n + 8, i.e. registers {b0b1, b2b3} of n-tile n, then of n + 1.
    const uint32_t k_lane = shared_address(Ks) + 2u * static_cast<uint32_t>((lane & 7) * Cfg::kLd + (lane >> 3) * 8);
    const uint32_t v_lane = shared_address(Vs) + 2u * static_cast<uint32_t>((lane & 15) * Cfg::kLd + (lane >> 4) * 8);
    const int64_t kv_row_stride = P.Hk * D;
    float* lse_a = P.lse + (row0 + gid) * P.K;
    float* lse_b = P.lse + (row0 + gid + 8) * P.K;

    // Padding entries (index -1) get lse 0 and no work.
    const cuda_detail::SelectedChunks chunks{P.indices + sel, P.K};
    chunks.zero_padding(lse_a, lse_b, has_a, has_b, tig);
    // Copies run one step ahead: K of the next chunk as soon as S = Q K^T is done, V of the
    // next chunk as soon as O += P V is done (commit groups complete in order: K, V, K, ...).
    auto chunk_rows = [&](int64_t k) { return ((b * P.Tm + chunks.chunk(k) * kChunk) * P.Hk + g) * D; };
    int64_t k = chunks.next(0);
    if (k < P.K) {
        const int64_t first = chunk_rows(k);
        mma::start_tile_copy_warp<D, kChunk>(P.kmem16 + first, kv_row_stride, Ks, lane);
        mma::cp_async_commit();
        mma::start_tile_copy_warp<D, kChunk>(P.vmem16 + first, kv_row_stride, Vs, lane);
        mma::cp_async_commit();
    }
#pragma unroll 1
    while (k < P.K) {
        const int64_t next = chunks.next(k + 1);
        const int64_t next_first = next < P.K ? chunk_rows(next) : 0;
        const float w = __ldg(P.weights + sel + k);
        mma::cp_async_wait<1>();  // K of chunk k has landed (its V may still be in flight)
        __syncwarp();
        // S = Q K^T, 16 x 64.
        float s[kKeyTiles][4];
#pragma unroll
        for (int j = 0; j < kKeyTiles; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < kSteps; kk += 2) {
                uint32_t kb[4];
                ldmatrix_x4(kb, k_lane + 2u * static_cast<uint32_t>(8 * j * Cfg::kLd + 16 * kk));
                mma_bf16_16816(s[j], qf[kk], kb[0], kb[1]);
                mma_bf16_16816(s[j], qf[kk + 1], kb[2], kb[3]);
            }
        }

        __syncwarp();  // every lane's reads of Ks are done
        if (next < P.K) mma::start_tile_copy_warp<D, kChunk>(P.kmem16 + next_first, kv_row_stride, Ks, lane);
        mma::cp_async_commit();

        // Softmax over the chunk: row gid from s[.][0..1], row gid + 8 from s[.][2..3].
        float max_a = -INFINITY, max_b = -INFINITY;
#pragma unroll
        for (int j = 0; j < kKeyTiles; ++j) {
            max_a = fmaxf(max_a, fmaxf(s[j][0], s[j][1]));
            max_b = fmaxf(max_b, fmaxf(s[j][2], s[j][3]));
        }
        max_a = quad_max(max_a);
        max_b = quad_max(max_b);
        const float off_a = max_a * P.scale_log2, off_b = max_b * P.scale_log2;
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int j = 0; j < kKeyTiles; ++j) {
            s[j][0] = exp2_ftz(fmaf(s[j][0], P.scale_log2, -off_a));
            s[j][1] = exp2_ftz(fmaf(s[j][1], P.scale_log2, -off_a));
            s[j][2] = exp2_ftz(fmaf(s[j][2], P.scale_log2, -off_b));
            s[j][3] = exp2_ftz(fmaf(s[j][3], P.scale_log2, -off_b));
            sum_a += s[j][0] + s[j][1];
            sum_b += s[j][2] + s[j][3];
        }
        sum_a = quad_sum(sum_a);
        sum_b = quad_sum(sum_b);
        if (tig == 0) {
            if (has_a) lse_a[k] = max_a * P.scale + logf(sum_a);
            if (has_b) lse_b[k] = max_b * P.scale + logf(sum_b);
        }

        // P w / sum as A fragments: k-step ks covers key tiles 2 ks (cols 0-7) and 2 ks + 1.
        const float f_a = w / sum_a, f_b = w / sum_b;
        uint32_t pf[kKeySteps][4];
#pragma unroll
        for (int ks = 0; ks < kKeySteps; ++ks) {
            pf[ks][0] = pack_bf16(s[2 * ks][0] * f_a, s[2 * ks][1] * f_a);
            pf[ks][1] = pack_bf16(s[2 * ks][2] * f_b, s[2 * ks][3] * f_b);
            pf[ks][2] = pack_bf16(s[2 * ks + 1][0] * f_a, s[2 * ks + 1][1] * f_a);
            pf[ks][3] = pack_bf16(s[2 * ks + 1][2] * f_b, s[2 * ks + 1][3] * f_b);
        }

        mma::cp_async_wait<1>();  // V of chunk k has landed (K of the next may be in flight)
        __syncwarp();
        // out += (P w / sum) V, 16 x d.
#pragma unroll
        for (int n = 0; n < kOutTiles; n += 2) {
#pragma unroll
            for (int ks = 0; ks < kKeySteps; ++ks) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, v_lane + 2u * static_cast<uint32_t>(16 * ks * Cfg::kLd + 8 * n));
                mma_bf16_16816(acc[n], pf[ks], vb[0], vb[1]);
                mma_bf16_16816(acc[n + 1], pf[ks], vb[2], vb[3]);
            }
        }
        __syncwarp();  // every lane's reads of Vs are done
        if (next < P.K) mma::start_tile_copy_warp<D, kChunk>(P.vmem16 + next_first, kv_row_stride, Vs, lane);
        mma::cp_async_commit();
        k = next;
    }

    // Rows gid and gid + 8, columns 8 n + 2 tig, + 1.
    float* out_a = P.out + (row0 + gid) * D + 2 * tig;
    float* out_b = P.out + (row0 + gid + 8) * D + 2 * tig;
#pragma unroll
    for (int n = 0; n < kOutTiles; ++n) {
        if (has_a) *reinterpret_cast<float2*>(out_a + 8 * n) = make_float2(acc[n][0], acc[n][1]);
        if (has_b) *reinterpret_cast<float2*>(out_b + 8 * n) = make_float2(acc[n][2], acc[n][3]);
    }
}

// ---------------------------------------------------------------- host side

void check_aligned(const char* op, const char* name, const void* p) {
    HSA_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0,
              op << ": " << name << " data is not 16-byte aligned (a view at an odd offset?), expected aligned");
}

template <int D>
void launch_v1(const char* op, const V1Params& P) {
    using Cfg = V1Config<D>;
    const int64_t blocks = (P.units + Cfg::kWarps - 1) / Cfg::kWarps;
    HSA_CHECK(blocks < INT_MAX, op << ": " << blocks << " blocks, expected fewer than " << INT_MAX);
    const int limit = max_shared_bytes();
    HSA_CHECK(static_cast<int64_t>(Cfg::kSharedBytes) <= limit,
              op << ": needs " << Cfg::kSharedBytes << " bytes of shared memory per block, the device allows " << limit);
    HSA_CUDA_CHECK(cudaFuncSetAttribute(hsa_forward_v1_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(Cfg::kSharedBytes)));
    HSA_CUDA_CHECK(cudaFuncSetAttribute(hsa_forward_v1_kernel<D>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        static_cast<int>(cudaSharedmemCarveoutMaxShared)));
    hsa_forward_v1_kernel<D><<<static_cast<unsigned>(blocks), Cfg::kThreads, Cfg::kSharedBytes>>>(P);
    HSA_CUDA_CHECK_LAUNCH("hsa_forward_v1_kernel");
}

}  // namespace

void hsa_forward_tensor_core(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                             const Tensor& weights, int64_t chunk_size, Tensor& out, Tensor& lse,
                             bool indices_checked) {
    const char* op = "hsa_forward_tensor_core";
    checks::check_rank(op, "q", q, 4, "[B, T, H, d]");
    checks::check_rank(op, "kmem", kmem, 4, "[B, Tm, Hk, d]");
    checks::check_rank(op, "indices", indices, 4, "[B, T, Hr, K]");
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3);
    const int64_t Tm = kmem.size(1), Hk = kmem.size(2), Hr = indices.size(2), K = indices.size(3);
    HSA_CHECK(d == 64 || d == 128, op << ": head dim d = " << d << " is not supported, expected one of {64, 128}");
    HSA_CHECK(chunk_size == kChunk, op << ": chunk_size " << chunk_size << " is not supported, expected one of {"
                                       << kChunk << "}");
    HSA_CHECK(H > 0, op << ": q has shape " << shape_string(q.shape()) << ", expected [B, T, H, d] with H > 0");
    HSA_CHECK(Hk > 0 && H % Hk == 0, op << ": kmem has shape " << shape_string(kmem.shape())
                                        << ", expected [B, Tm, Hk, d] with Hk dividing H = " << H);
    const int64_t G = H / Hk;
    HSA_CHECK(G >= 1 && G <= kTileRows, op << ": GQA group G = H / Hk = " << H << " / " << Hk << " = " << G
                                           << " is not supported, expected G in 1.." << kTileRows);
    HSA_CHECK(Hr > 0 && Hk % Hr == 0, op << ": indices has shape " << shape_string(indices.shape())
                                         << ", expected [B, T, Hr, K] with Hr dividing Hk = " << Hk);
    HSA_CHECK(K > 0, op << ": indices has shape " << shape_string(indices.shape())
                        << ", expected [B, T, Hr, K] with K > 0");
    checks::check_tensor(op, "q", q, {B, T, H, d}, DType::F32, Device::CUDA);
    checks::check_tensor(op, "kmem", kmem, {B, Tm, Hk, d}, DType::F32, Device::CUDA);
    checks::check_tensor(op, "vmem", vmem, {B, Tm, Hk, d}, DType::F32, Device::CUDA);
    checks::check_tensor(op, "indices", indices, {B, T, Hr, K}, DType::I32, Device::CUDA);
    checks::check_tensor(op, "weights", weights, {B, T, Hr, K}, DType::F32, Device::CUDA);
    checks::check_tensor(op, "out", out, {B, T, H, d}, DType::F32, Device::CUDA);
    checks::check_tensor(op, "lse", lse, {B, T, H, K}, DType::F32, Device::CUDA);
    // 16-byte vectors of K / V rows, 8-byte vectors of q / out rows.
    check_aligned(op, "q", q.data<float>());
    check_aligned(op, "kmem", kmem.data<float>());
    check_aligned(op, "vmem", vmem.data<float>());
    check_aligned(op, "out", out.data<float>());
    // A chunk's rows must lie within kmem: every index is -1 or < Tm / S.
    // (The check reads a flag back from the device: callers that validated already skip it.)
    if (!indices_checked) cuda_detail::check_chunk_indices_cuda(op, indices, Tm / chunk_size);

    V1Params P{};
    P.q = q.data<float>();
    // bf16 copies of the memory (one rounding pass each, small next to the T x K gathers):
    // the chunk tiles then stream by cp.async at half the bytes, without converting.
    const Tensor kmem16 = rounded_bf16_copy(kmem), vmem16 = rounded_bf16_copy(vmem);
    P.kmem16 = static_cast<const __nv_bfloat16*>(kmem16.raw_data());
    P.vmem16 = static_cast<const __nv_bfloat16*>(vmem16.raw_data());
    P.indices = indices.data<int32_t>();
    P.weights = weights.data<float>();
    P.out = out.data<float>();
    P.lse = lse.data<float>();
    P.T = T;
    P.H = H;
    P.Hk = Hk;
    P.Hr = Hr;
    P.Tm = Tm;
    P.K = K;
    P.units = B * T * Hk;
    P.G = static_cast<int>(G);
    P.kv_per_r = static_cast<int>(Hk / Hr);
    P.scale = 1.0f / std::sqrt(static_cast<float>(d));
    P.scale_log2 = P.scale * 1.4426950408889634f;
    if (P.units == 0) return;
    if (d == 64)
        launch_v1<64>(op, P);
    else
        launch_v1<128>(op, P);
}

}  // namespace hsa
