// CUDA hierarchical sparse attention: hsa_forward / hsa_backward. Semantics:
// core/backend.h; math: shared/design/MODEL.md "HSA layer"; reference:
// core/cpu/cpu_attention.cpp. f32 storage and f32 math throughout (the CPU reference
// accumulates in double).
//
// Forward, one block per (b, t, KV head g, group of at most kMaxHeadsPerBlock of g's query
// heads): for each selected chunk k, the chunk's S keys and values of head g go to shared
// memory once and serve every query head of the block; each head gets its own softmax
// over the S keys (lse kept per (t, h, k)) and the chunk outputs are fused with weights[k].
//
// Backward, three passes, no float atomics (bit-identical run to run):
// 1. query-centric, blocks as in the forward: od[t,h,k] = dO[t,h] . o[t,h,k] (kept in a
//    scratch tensor) and grad_q, from probabilities recomputed from the forward's lse;
// 2. grad_weights[t,r,k] = sum over the query heads h of retrieval head r, in head order,
//    of od[t,h,k] (several KV heads may share r);
// 3. chunk-centric, one block per (b, chunk c, KV head g): the (t, k) selections that
//    hold c (stable radix sort of the indices, build_chunk_pair_lists in retrieval.cu)
//    are visited in (t, k) order and then head order, accumulating dK, dV of the chunk's
//    S rows in registers. Linear in T; rows of never-selected chunks and rows past C * S
//    get 0.
//
// At bf16 matrix-product precision (core/precision.h, training's default) and d = 64,
// S = 64, G <= 16, the forward and passes 1 and 3 run on tensor cores instead
// (kernels/hsa_forward_v1.cu, kernels/hsa_backward_v1.cu); passes 2 and the zero tail, and
// the pair lists, are shared.
//
// Limits (checked): head dim d <= 128, chunk size S <= 128, any GQA group G.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "core/precision.h"
#include "kernels/chunk_lists.cuh"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"
#include "kernels/hsa_backward_v1.cuh"
#include "kernels/hsa_forward_v1.cuh"

namespace hsa {

namespace {

constexpr int64_t kMaxHeadDim = 128;
constexpr int64_t kMaxChunkSize = 128;
constexpr int kHsaThreads = 256;        // forward and backward pass 1
constexpr int kMaxHeadsPerBlock = 16;   // query heads sharing one block's K/V tile
constexpr int kWarpSize = 32;

// ---------------------------------------------------------------- shapes and parameters

struct HsaParams {
    const float* q;        // [B, T, H, d]
    const float* kmem;     // [B, Tm, Hk, d]
    const float* vmem;     // [B, Tm, Hk, d]
    const int32_t* indices;  // [B, T, Hr, K]
    const float* weights;    // [B, T, Hr, K]
    int64_t B, T, H, Hk, Hr, d, Tm, S, K, C;
    int64_t heads_per_kv;     // G = H / Hk
    int64_t kv_per_r;         // Hk / Hr
    int64_t heads_per_r;      // H / Hr
    int64_t heads_per_block;  // query heads of one KV head handled by one block
    int64_t head_blocks;      // ceil(G / heads_per_block)
    int ld;                   // shared-memory row stride of K/V tiles: odd, so lanes reading
                              // different rows of one column hit different banks
    float scale;              // 1 / sqrt(d)
};

// From the shapes checked by core/backend_checks.h: checks the CUDA kernels' limits and
// the chunk indices (on the device), and gathers the kernel parameters.
HsaParams hsa_params(const char* op, const checks::HsaDims& D, const Tensor& q, const Tensor& kmem,
                     const Tensor& vmem, const Tensor& indices, const Tensor& weights) {
    HSA_CHECK(D.d <= kMaxHeadDim, op << ": head dim " << D.d << ", expected at most " << kMaxHeadDim
                                     << " on the CUDA backend");
    HSA_CHECK(D.S <= kMaxChunkSize, op << ": chunk_size " << D.S << ", expected at most " << kMaxChunkSize
                                       << " on the CUDA backend");
    HsaParams P{};
    P.B = D.B;
    P.T = D.T;
    P.H = D.H;
    P.d = D.d;
    P.Tm = D.Tm;
    P.Hk = D.Hk;
    P.Hr = D.Hr;
    P.K = D.K;
    P.S = D.S;
    P.C = D.C;  // whole chunks in the memory: chunk c is rows [c*S, c*S + S)
    // A chunk's rows must lie within kmem: every index is -1 or < Tm / S.
    cuda_detail::check_chunk_indices_cuda(op, indices, P.C);
    P.q = q.data<float>();
    P.kmem = kmem.data<float>();
    P.vmem = vmem.data<float>();
    P.indices = indices.data<int32_t>();
    P.weights = weights.data<float>();
    P.heads_per_kv = P.H / P.Hk;
    P.kv_per_r = P.Hk / P.Hr;
    P.heads_per_r = P.H / P.Hr;
    P.heads_per_block = std::min<int64_t>(P.heads_per_kv, kMaxHeadsPerBlock);
    P.head_blocks = (P.heads_per_kv + P.heads_per_block - 1) / P.heads_per_block;
    P.ld = static_cast<int>(P.d % 2 == 0 ? P.d + 1 : P.d);
    P.scale = 1.0f / std::sqrt(static_cast<float>(P.d));
    return P;
}

// Blocks of the forward / backward pass 1: one per (b, t, g, head group).
int64_t query_blocks(const HsaParams& P) { return P.B * P.T * P.Hk * P.head_blocks; }

// ---------------------------------------------------------------- device helpers

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

__device__ __forceinline__ float dot_shared(const float* a, const float* b, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc = fmaf(a[i], b[i], acc);
    return acc;
}

// The block of a query-centric kernel: which (b, t, g) and which of g's query heads.
struct QueryBlock {
    int64_t b, t, g, r;
    int64_t sel;    // row of indices / weights: (b * T + t) * Hr + r
    int64_t row0;   // row of q / out / grad_out of the block's first head: (b * T + t) * H + h0
    int heads;      // query heads in this block
};

__device__ __forceinline__ QueryBlock query_block(const HsaParams& P) {
    QueryBlock Q;
    int64_t unit = blockIdx.x;
    const int64_t head_block = unit % P.head_blocks;
    unit /= P.head_blocks;
    Q.g = unit % P.Hk;
    unit /= P.Hk;
    Q.t = unit % P.T;
    Q.b = unit / P.T;
    Q.r = Q.g / P.kv_per_r;
    Q.sel = (Q.b * P.T + Q.t) * P.Hr + Q.r;
    const int64_t first = head_block * P.heads_per_block;  // within g's heads
    Q.row0 = (Q.b * P.T + Q.t) * P.H + Q.g * P.heads_per_kv + first;
    Q.heads = static_cast<int>(min(P.heads_per_block, P.heads_per_kv - first));
    return Q;
}

// Copies the S keys and values of chunk c, KV head g, batch b into Ks, Vs [S][ld].
__device__ __forceinline__ void load_chunk(const HsaParams& P, int64_t b, int64_t g, int64_t c, float* Ks, float* Vs) {
    const int d = static_cast<int>(P.d), S = static_cast<int>(P.S);
    const int64_t first = ((b * P.Tm + c * P.S) * P.Hk + g) * P.d;  // row j at first + j * Hk * d
    const int64_t row_stride = P.Hk * P.d;
    for (int e = threadIdx.x; e < S * d; e += blockDim.x) {
        const int j = e / d, i = e - j * d;
        Ks[j * P.ld + i] = P.kmem[first + j * row_stride + i];
        Vs[j * P.ld + i] = P.vmem[first + j * row_stride + i];
    }
}

// ---------------------------------------------------------------- forward

// Shared memory: Ks, Vs [S][ld]; Qs [HB][d]; Ps [HB][S]; Os [HB][d] (HB = heads_per_block).
__global__ void __launch_bounds__(kHsaThreads) hsa_forward_kernel(HsaParams P, float* out, float* lse) {
    extern __shared__ float hsa_shared[];
    const int d = static_cast<int>(P.d), S = static_cast<int>(P.S), HB = static_cast<int>(P.heads_per_block);
    float* Ks = hsa_shared;
    float* Vs = Ks + S * P.ld;
    float* Qs = Vs + S * P.ld;
    float* Ps = Qs + HB * d;
    float* Os = Ps + HB * S;
    const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
    const int warps = blockDim.x / kWarpSize;
    const QueryBlock Q = query_block(P);
    const int nh = Q.heads;

    for (int e = tid; e < nh * d; e += blockDim.x) {  // the block's heads are consecutive rows
        Qs[e] = P.q[Q.row0 * d + e];
        Os[e] = 0.0f;
    }
    for (int64_t k = 0; k < P.K; ++k) {
        const int32_t c = P.indices[Q.sel * P.K + k];  // the same for the whole block
        if (c < 0) {
            for (int hh = tid; hh < nh; hh += blockDim.x) lse[(Q.row0 + hh) * P.K + k] = 0.0f;
            continue;
        }
        __syncthreads();  // the previous chunk's Ks, Vs, Ps are no longer read
        load_chunk(P, Q.b, Q.g, c, Ks, Vs);
        __syncthreads();
        for (int e = tid; e < nh * S; e += blockDim.x) {
            const int hh = e / S, j = e - hh * S;
            Ps[e] = dot_shared(Qs + hh * d, Ks + j * P.ld, d) * P.scale;
        }
        __syncthreads();
        for (int hh = warp; hh < nh; hh += warps) {  // softmax over the chunk, one warp per head
            float* p = Ps + hh * S;
            float m = -INFINITY;
            for (int j = lane; j < S; j += kWarpSize) m = fmaxf(m, p[j]);
            m = warp_max(m);
            float total = 0.0f;
            for (int j = lane; j < S; j += kWarpSize) {
                const float e = expf(p[j] - m);
                p[j] = e;
                total += e;
            }
            total = warp_sum(total);
            for (int j = lane; j < S; j += kWarpSize) p[j] = p[j] / total;
            if (lane == 0) lse[(Q.row0 + hh) * P.K + k] = m + logf(total);
        }
        __syncthreads();
        const float w = P.weights[Q.sel * P.K + k];
        for (int e = tid; e < nh * d; e += blockDim.x) {  // each thread owns the same Os entries throughout
            const int hh = e / d, i = e - hh * d;
            const float* p = Ps + hh * S;
            float acc = 0.0f;
            for (int j = 0; j < S; ++j) acc = fmaf(p[j], Vs[j * P.ld + i], acc);
            Os[e] = fmaf(w, acc, Os[e]);
        }
    }
    for (int e = tid; e < nh * d; e += blockDim.x) out[Q.row0 * d + e] = Os[e];
}

// ---------------------------------------------------------------- backward pass 1 (queries)

// od [B, T, H, K] (0 at padding) and, when grad_q is not null, grad_q.
// Shared memory: Ks, Vs [S][ld]; Qs, DOs, GQ [HB][d]; Ps, DOVs [HB][S]; ODs [HB].
__global__ void __launch_bounds__(kHsaThreads)
    hsa_backward_query_kernel(HsaParams P, const float* lse, const float* grad_out, float* od, float* grad_q) {
    extern __shared__ float hsa_shared[];
    const int d = static_cast<int>(P.d), S = static_cast<int>(P.S), HB = static_cast<int>(P.heads_per_block);
    float* Ks = hsa_shared;
    float* Vs = Ks + S * P.ld;
    float* Qs = Vs + S * P.ld;
    float* DOs = Qs + HB * d;
    float* GQ = DOs + HB * d;
    float* Ps = GQ + HB * d;
    float* DOVs = Ps + HB * S;
    float* ODs = DOVs + HB * S;
    const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
    const int warps = blockDim.x / kWarpSize;
    const QueryBlock Q = query_block(P);
    const int nh = Q.heads;

    for (int e = tid; e < nh * d; e += blockDim.x) {
        Qs[e] = P.q[Q.row0 * d + e];
        DOs[e] = grad_out[Q.row0 * d + e];
        GQ[e] = 0.0f;
    }
    for (int64_t k = 0; k < P.K; ++k) {
        const int32_t c = P.indices[Q.sel * P.K + k];
        if (c < 0) {
            for (int hh = tid; hh < nh; hh += blockDim.x) od[(Q.row0 + hh) * P.K + k] = 0.0f;
            continue;
        }
        __syncthreads();
        load_chunk(P, Q.b, Q.g, c, Ks, Vs);
        __syncthreads();
        // p_j = exp(q.k_j / sqrt(d) - lse), dov_j = dO . v_j
        for (int e = tid; e < nh * S; e += blockDim.x) {
            const int hh = e / S, j = e - hh * S;
            const float s = dot_shared(Qs + hh * d, Ks + j * P.ld, d) * P.scale;
            Ps[e] = expf(s - lse[(Q.row0 + hh) * P.K + k]);
            DOVs[e] = dot_shared(DOs + hh * d, Vs + j * P.ld, d);
        }
        __syncthreads();
        for (int hh = warp; hh < nh; hh += warps) {  // od = dO . o_k = sum_j p_j dov_j
            float acc = 0.0f;
            for (int j = lane; j < S; j += kWarpSize) acc = fmaf(Ps[hh * S + j], DOVs[hh * S + j], acc);
            acc = warp_sum(acc);
            if (lane == 0) {
                ODs[hh] = acc;
                od[(Q.row0 + hh) * P.K + k] = acc;
            }
        }
        if (grad_q == nullptr) continue;  // uniform: the next chunk starts with a barrier
        __syncthreads();
        const float w = P.weights[Q.sel * P.K + k];
        for (int e = tid; e < nh * S; e += blockDim.x) {  // dS_j = p_j w (dov_j - od)
            const int hh = e / S;
            Ps[e] = Ps[e] * w * (DOVs[e] - ODs[hh]);
        }
        __syncthreads();
        for (int e = tid; e < nh * d; e += blockDim.x) {  // grad_q += sum_j dS_j k_j
            const int hh = e / d, i = e - hh * d;
            const float* ds = Ps + hh * S;
            float acc = 0.0f;
            for (int j = 0; j < S; ++j) acc = fmaf(ds[j], Ks[j * P.ld + i], acc);
            GQ[e] += acc;
        }
    }
    if (grad_q != nullptr)
        for (int e = tid; e < nh * d; e += blockDim.x) grad_q[Q.row0 * d + e] = GQ[e] * P.scale;
}

// ---------------------------------------------------------------- backward pass 2 (weights)

// grad_weights[b,t,r,k] = sum over the query heads of r, in order, of od[b,t,h,k]; 0 at padding.
__global__ void hsa_grad_weights_kernel(HsaParams P, const float* od, float* grad_weights) {
    const int64_t n = P.B * P.T * P.Hr * P.K;
    const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (e >= n) return;
    const int64_t k = e % P.K;
    const int64_t sel = e / P.K;  // (b * T + t) * Hr + r
    const int64_t r = sel % P.Hr;
    const int64_t bt = sel / P.Hr;
    float acc = 0.0f;
    if (P.indices[e] >= 0)
        for (int64_t h = r * P.heads_per_r; h < (r + 1) * P.heads_per_r; ++h) acc += od[(bt * P.H + h) * P.K + k];
    grad_weights[e] = acc;
}

// ---------------------------------------------------------------- backward pass 3 (memory)

// One block per (b, c, g). The chunk's (t, k) selections (pair_ids[segment_start[u] ..
// segment_start[u+1]), u = (b * Hr + r) * C + c) times g's query heads form the entries,
// visited in batches of `batch` in (t, k, h) order. Thread tid owns column i = tid % d of
// rows j = tid / d + m * (NT / d), m < M, of dK and dV, accumulated in registers.
// Shared memory: entry_row [batch] (int64), entry_lse, entry_od, entry_w [batch];
// Ks, Vs [S][ld]; Qb, DOb [batch][d]; DSb, PWb [batch][S].
template <int NT, int M>
__global__ void __launch_bounds__(NT)
    hsa_backward_memory_kernel(HsaParams P, const float* lse, const float* grad_out, const float* od,
                               const int32_t* pair_ids, const int32_t* segment_start, int batch, float* grad_kmem,
                               float* grad_vmem) {
    extern __shared__ float hsa_shared[];
    const int d = static_cast<int>(P.d), S = static_cast<int>(P.S);
    long long* entry_row = reinterpret_cast<long long*>(hsa_shared);
    float* entry_lse = reinterpret_cast<float*>(entry_row + batch);
    float* entry_od = entry_lse + batch;
    float* entry_w = entry_od + batch;
    float* Ks = entry_w + batch;
    float* Vs = Ks + S * P.ld;
    float* Qb = Vs + S * P.ld;
    float* DOb = Qb + batch * d;
    float* DSb = DOb + batch * d;
    float* PWb = DSb + batch * S;

    const int tid = threadIdx.x;
    int64_t unit = blockIdx.x;
    const int64_t g = unit % P.Hk;
    unit /= P.Hk;
    const int64_t c = unit % P.C;
    const int64_t b = unit / P.C;
    const int64_t r = g / P.kv_per_r;
    const int64_t segment = (b * P.Hr + r) * P.C + c;
    const int64_t begin = segment_start[segment], pairs = segment_start[segment + 1] - begin;
    const int64_t G = P.heads_per_kv;

    const int rows_per_pass = NT / d;
    const int col = tid % d, row0 = tid / d;
    const bool active = row0 < rows_per_pass;
    float acc_k[M], acc_v[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc_k[m] = acc_v[m] = 0.0f;

    if (pairs > 0) {
        load_chunk(P, b, g, c, Ks, Vs);
        const int64_t entries = pairs * G;
        for (int64_t base = 0; base < entries; base += batch) {
            const int nb = static_cast<int>(min(static_cast<int64_t>(batch), entries - base));
            __syncthreads();  // K/V loaded; the previous batch is no longer read
            for (int n = tid; n < nb; n += NT) {
                const int64_t entry = base + n;
                const int64_t pair = entry / G, hh = entry - pair * G;
                const int64_t p = pair_ids[begin + pair];  // ((b * T + t) * Hr + r) * K + k
                const int64_t sel = p / P.K, k = p - sel * P.K;
                const int64_t t = (sel / P.Hr) % P.T;
                const int64_t row = (b * P.T + t) * P.H + g * G + hh;
                entry_row[n] = row;
                entry_lse[n] = lse[row * P.K + k];
                entry_od[n] = od[row * P.K + k];
                entry_w[n] = P.weights[p];
            }
            __syncthreads();
            for (int e = tid; e < nb * d; e += NT) {
                const int n = e / d, i = e - n * d;
                Qb[e] = P.q[entry_row[n] * d + i];
                DOb[e] = grad_out[entry_row[n] * d + i];
            }
            __syncthreads();
            for (int e = tid; e < nb * S; e += NT) {  // pw_j = p_j w, dS_j = p_j w (dov_j - od)
                const int n = e / S, j = e - n * S;
                const float s = dot_shared(Qb + n * d, Ks + j * P.ld, d) * P.scale;
                const float pw = expf(s - entry_lse[n]) * entry_w[n];
                const float dov = dot_shared(DOb + n * d, Vs + j * P.ld, d);
                DSb[e] = pw * (dov - entry_od[n]);
                PWb[e] = pw;
            }
            __syncthreads();
            if (active) {
                for (int n = 0; n < nb; ++n) {  // dK_j += dS_j q, dV_j += p_j w dO, in entry order
                    const float qi = Qb[n * d + col], doi = DOb[n * d + col];
                    const float* ds = DSb + n * S;
                    const float* pw = PWb + n * S;
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        const int j = row0 + m * rows_per_pass;
                        if (j < S) {
                            acc_k[m] = fmaf(ds[j], qi, acc_k[m]);
                            acc_v[m] = fmaf(pw[j], doi, acc_v[m]);
                        }
                    }
                }
            }
        }
    }
    if (!active) return;
    const int64_t first = ((b * P.Tm + c * P.S) * P.Hk + g) * P.d + col;  // row j at first + j * Hk * d
#pragma unroll
    for (int m = 0; m < M; ++m) {
        const int j = row0 + m * rows_per_pass;
        if (j < S) {
            const int64_t at = first + j * P.Hk * P.d;
            if (grad_kmem) grad_kmem[at] = acc_k[m] * P.scale;
            if (grad_vmem) grad_vmem[at] = acc_v[m];
        }
    }
}

// Rows m in [C * S, Tm) of every batch are never attended: zero gradient.
__global__ void hsa_zero_tail_kernel(HsaParams P, float* grad_kmem, float* grad_vmem) {
    const int64_t tail = (P.Tm - P.C * P.S) * P.Hk * P.d;  // elements per batch
    const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (e >= P.B * tail) return;
    const int64_t b = e / tail, x = e - b * tail;
    const int64_t at = (b * P.Tm + P.C * P.S) * P.Hk * P.d + x;
    if (grad_kmem) grad_kmem[at] = 0.0f;
    if (grad_vmem) grad_vmem[at] = 0.0f;
}

size_t memory_kernel_shared_bytes(const HsaParams& P, int batch) {
    return static_cast<size_t>(batch) * (sizeof(long long) + 3 * sizeof(float)) +
           sizeof(float) * static_cast<size_t>(2 * P.S * P.ld + batch * (2 * P.d + 2 * P.S));
}

template <int NT, int M>
void launch_memory_kernel(const char* op, const HsaParams& P, const float* lse, const float* grad_out,
                          const float* od, const Tensor& pair_ids, const Tensor& segment_start, float* grad_kmem,
                          float* grad_vmem) {
    // Entries per batch: 32, fewer if shared memory is short (S = d = 128 needs ~196 KB).
    int batch = 32;
    while (batch > 4 && static_cast<int64_t>(memory_kernel_shared_bytes(P, batch)) > max_shared_bytes()) batch /= 2;
    const size_t shared_bytes = memory_kernel_shared_bytes(P, batch);
    allow_shared_bytes(op, hsa_backward_memory_kernel<NT, M>, shared_bytes);
    const int64_t blocks = P.B * P.C * P.Hk;
    HSA_CHECK(blocks < INT_MAX, op << ": " << blocks << " (batch, chunk, KV head) blocks, expected fewer than "
                                   << INT_MAX);
    hsa_backward_memory_kernel<NT, M><<<static_cast<unsigned>(blocks), NT, shared_bytes>>>(
        P, lse, grad_out, od, pair_ids.data<int32_t>(), segment_start.data<int32_t>(), batch, grad_kmem, grad_vmem);
    HSA_CUDA_CHECK_LAUNCH("hsa_backward_memory_kernel");
}

size_t query_kernel_shared_bytes(const HsaParams& P, bool backward) {
    const int64_t HB = P.heads_per_block;
    const int64_t floats = backward ? 2 * P.S * P.ld + 3 * HB * P.d + 2 * HB * P.S + HB
                                    : 2 * P.S * P.ld + 2 * HB * P.d + HB * P.S;
    return sizeof(float) * static_cast<size_t>(floats);
}

// The tensor-core forward and backward together (the backward consumes the forward's lse,
// so both must be the same version): at bf16 precision, where the v1 kernels apply.
bool use_tensor_cores(const HsaParams& P, std::initializer_list<const Tensor*> tensors) {
    return matmul_precision() == MatmulPrecision::BF16 &&
           hsa_tensor_core_eligible(P.d, P.S, P.heads_per_kv, tensors);
}

}  // namespace

// ================================================================ backend methods

void CudaBackend::hsa_forward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                              const Tensor& weights, int64_t chunk_size, Tensor& out, Tensor& lse) {
    const char* op = "hsa_forward";
    const checks::HsaDims D =
        checks::check_hsa_forward(q, kmem, vmem, indices, weights, chunk_size, out, lse, Device::CUDA);
    const HsaParams P = hsa_params(op, D, q, kmem, vmem, indices, weights);
    if (use_tensor_cores(P, {&q, &kmem, &vmem, &weights, &out})) {
        hsa_forward_tensor_core(q, kmem, vmem, indices, weights, chunk_size, out, lse, /*indices_checked=*/true);
        return;
    }
    const int64_t blocks = query_blocks(P);
    if (blocks == 0) return;
    HSA_CHECK(blocks < INT_MAX, op << ": " << blocks << " query blocks, expected fewer than " << INT_MAX);
    const size_t shared_bytes = query_kernel_shared_bytes(P, false);
    allow_shared_bytes(op, hsa_forward_kernel, shared_bytes);
    hsa_forward_kernel<<<static_cast<unsigned>(blocks), kHsaThreads, shared_bytes>>>(P, out.data<float>(),
                                                                                    lse.data<float>());
    HSA_CUDA_CHECK_LAUNCH("hsa_forward_kernel");
}

void CudaBackend::hsa_backward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                               const Tensor& weights, int64_t chunk_size, const Tensor& lse, const Tensor& grad_out,
                               Tensor& grad_q, Tensor& grad_kmem, Tensor& grad_vmem, Tensor& grad_weights) {
    const char* op = "hsa_backward";
    const checks::HsaBackwardDims D = checks::check_hsa_backward(
        q, kmem, vmem, indices, weights, chunk_size, lse, grad_out, grad_q, grad_kmem, grad_vmem, grad_weights,
        Device::CUDA);
    const HsaParams P = hsa_params(op, D, q, kmem, vmem, indices, weights);
    const bool want_q = D.want_q, want_k = D.want_kmem, want_v = D.want_vmem, want_w = D.want_weights;
    if (!want_q && !want_k && !want_v && !want_w) return;
    const float* lse_p = lse.data<float>();
    const float* grad_out_p = grad_out.data<float>();
    float* gk = want_k ? grad_kmem.data<float>() : nullptr;
    float* gv = want_v ? grad_vmem.data<float>() : nullptr;
    const bool tensor_cores = use_tensor_cores(P, {&q, &kmem, &vmem, &weights, &grad_out, want_q ? &grad_q : nullptr,
                                                   want_k ? &grad_kmem : nullptr, want_v ? &grad_vmem : nullptr});
    const HsaTensorCoreShape shape{P.B, P.T, P.H, P.Hk, P.Hr, P.Tm, P.K, P.C, P.d};

    // Pass 1: od = dO . o per (t, h, k), and grad_q.
    Tensor od = Tensor::empty({P.B, P.T, P.H, P.K}, DType::F32, Device::CUDA);
    const int64_t blocks = query_blocks(P);
    // Tensor cores: bf16 copies of kmem / vmem (one rounding pass each) for both passes, and
    // of q / dO, which pass 1 writes as it reads them, for pass 3.
    Tensor kmem16, vmem16, q16, grad_out16;
    HsaTensorCoreOperands tc{};
    if (tensor_cores) {
        kmem16 = rounded_bf16_copy(kmem);
        vmem16 = rounded_bf16_copy(vmem);
        tc = {q.data<float>(), grad_out_p, static_cast<const __nv_bfloat16*>(kmem16.raw_data()),
              static_cast<const __nv_bfloat16*>(vmem16.raw_data()), weights.data<float>(), lse_p};
        if (want_k || want_v) {
            q16 = Tensor::empty(q.shape(), DType::BF16, Device::CUDA);
            grad_out16 = Tensor::empty(grad_out.shape(), DType::BF16, Device::CUDA);
        }
        hsa_backward_queries_tensor_core(shape, tc, indices.data<int32_t>(), od.data<float>(),
                                         want_q ? grad_q.data<float>() : nullptr,
                                         q16.defined() ? static_cast<__nv_bfloat16*>(q16.raw_data()) : nullptr,
                                         grad_out16.defined() ? static_cast<__nv_bfloat16*>(grad_out16.raw_data()) : nullptr);
    } else if (blocks > 0) {
        HSA_CHECK(blocks < INT_MAX, op << ": " << blocks << " query blocks, expected fewer than " << INT_MAX);
        const size_t shared_bytes = query_kernel_shared_bytes(P, true);
        allow_shared_bytes(op, hsa_backward_query_kernel, shared_bytes);
        hsa_backward_query_kernel<<<static_cast<unsigned>(blocks), kHsaThreads, shared_bytes>>>(
            P, lse_p, grad_out_p, od.data<float>(), want_q ? grad_q.data<float>() : nullptr);
        HSA_CUDA_CHECK_LAUNCH("hsa_backward_query_kernel");
    }

    // Pass 2: grad_weights, summing the query heads of each retrieval head in order.
    if (want_w) {
        const int64_t n = P.B * P.T * P.Hr * P.K;
        if (n > 0) {
            hsa_grad_weights_kernel<<<blocks_for(n, 256), 256>>>(P, od.data<float>(), grad_weights.data<float>());
            HSA_CUDA_CHECK_LAUNCH("hsa_grad_weights_kernel");
        }
    }

    // Pass 3: dK, dV per (b, chunk, g) over the selections of the chunk, in order.
    if (want_k || want_v) {
        if (P.B * P.C * P.Hk > 0) {
            Tensor pair_ids, segment_start;
            cuda_detail::build_chunk_pair_lists(op, indices, P.C, pair_ids, segment_start);
            if (tensor_cores) {
                hsa_backward_memory_tensor_core(shape, tc, static_cast<const __nv_bfloat16*>(q16.raw_data()),
                                                static_cast<const __nv_bfloat16*>(grad_out16.raw_data()),
                                                od.data<float>(), pair_ids.data<int32_t>(),
                                                segment_start.data<int32_t>(), gk, gv);
            } else {
                // Threads own one column and M rows of the chunk: NT / d rows per pass.
                const int NT = P.d > 64 ? 512 : 256;
                const int64_t rows_needed = (P.S + NT / P.d - 1) / (NT / P.d);  // <= 32 for d, S <= 128
                HSA_CHECK(rows_needed <= 32, op << ": chunk_size " << P.S << " with head dim " << P.d
                                                << " is not supported by the CUDA backend");
                const float* odp = od.data<float>();
                if (NT == 256 && rows_needed <= 16)
                    launch_memory_kernel<256, 16>(op, P, lse_p, grad_out_p, odp, pair_ids, segment_start, gk, gv);
                else if (NT == 256)
                    launch_memory_kernel<256, 32>(op, P, lse_p, grad_out_p, odp, pair_ids, segment_start, gk, gv);
                else if (rows_needed <= 16)
                    launch_memory_kernel<512, 16>(op, P, lse_p, grad_out_p, odp, pair_ids, segment_start, gk, gv);
                else
                    launch_memory_kernel<512, 32>(op, P, lse_p, grad_out_p, odp, pair_ids, segment_start, gk, gv);
            }
        }
        const int64_t tail = P.B * (P.Tm - P.C * P.S) * P.Hk * P.d;
        if (tail > 0) {
            hsa_zero_tail_kernel<<<blocks_for(tail, 256), 256>>>(P, gk, gv);
            HSA_CUDA_CHECK_LAUNCH("hsa_zero_tail_kernel");
        }
    }
}

}  // namespace hsa
