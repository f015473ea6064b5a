// CudaBackend::attention_forward / attention_backward: local attention (sliding-window causal
// or bidirectional), GQA, scale 1/sqrt(d), FlashAttention style, f32 throughout. At bf16
// matrix-product precision (core/precision.h) and head dim 64 they hand over to the
// tensor-core kernels of kernels/attention_tc.cu. Matches
// core/cpu/cpu_attention.cpp (which accumulates in double) to f32 rounding.
//
// Layouts: q, out, grad_q [B, T, H, d] (row (b*T + t)*H + h); k, v [B, T, Hk, d] (row
// (b*T + s)*Hk + g); lse [B, T, H]. Head h reads KV head g = h / (H/Hk).
//
// Head dims: kernels are templated on a padded width D in {16, 32, 64, 128}; the real d
// (1..128) is a runtime value, and dims d..D-1 are zero in every register and shared tile,
// so they add nothing to dot products and are never written.
//
// Thread layout: a row (query, or key in the dK/dV kernel) is owned by TPR adjacent lanes
// of one warp; lane r of the group holds the float4 chunks c*TPR + r (c < D/(4*TPR)), so the
// TPR lanes read consecutive float4s of a shared-memory row (conflict-free; other groups of
// the warp read the same row, a broadcast). Dot products are a per-lane partial sum and a
// butterfly (__shfl_xor) over the group, which leaves the identical value in every lane.
// All loop bounds around shuffles are block-uniform, so every lane reaches every shuffle.
//
// Forward: per (b, h) and tile of BQ queries, loop over key tiles of BK keys (K, V in shared
// memory), online softmax over sub-chunks of 16 keys (one rescale per sub-chunk).
// Backward (deterministic, no atomics):
//   delta kernel: delta[row] = dO[row] . O[row]
//   dQ kernel:    per (b, h) and query tile, loop over key tiles: p = exp(s - lse),
//                 ds = p (dO.v - delta), dq += ds k; dq *= scale
//   dK/dV kernel: per (b, g) and key tile, loop over the G query heads of g (ascending),
//                 then the query tiles that see the keys (ascending): dv += p dO,
//                 dk += ds q; dk *= scale
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/precision.h"
#include "kernels/attention_tc.cuh"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

constexpr int kSub = 16;  // keys per online-softmax rescale in the forward

// ------------------------------------------------------------------ device helpers

// Visible key range [lo, hi] of query t (lo > hi: none).
__device__ __forceinline__ void keys_of_query(bool causal, int window, int T, int t, int& lo, int& hi) {
    if (!causal) {
        lo = 0;
        hi = T - 1;
    } else {
        hi = t;
        lo = window > 0 ? max(0, t - window + 1) : 0;
    }
}

// Queries [lo, hi] that see key s (the inverse of keys_of_query).
__device__ __forceinline__ void queries_of_key(bool causal, int window, int T, int s, int& lo, int& hi) {
    if (!causal) {
        lo = 0;
        hi = T - 1;
    } else {
        lo = s;
        hi = window > 0 ? min(T - 1, s + window - 1) : T - 1;
    }
}

template <int TPR>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
    for (int offset = TPR / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// This lane's float4 chunks of a global row of d floats (zeros past d, or all zeros when
// !valid).
template <int D, int TPR>
__device__ __forceinline__ void load_row_chunks(const float* __restrict__ row, int d, bool valid, int r,
                                                float4 (&out)[D / (4 * TPR)]) {
#pragma unroll
    for (int c = 0; c < D / (4 * TPR); ++c) {
        const int i0 = (c * TPR + r) * 4;
        out[c].x = valid && i0 + 0 < d ? row[i0 + 0] : 0.0f;
        out[c].y = valid && i0 + 1 < d ? row[i0 + 1] : 0.0f;
        out[c].z = valid && i0 + 2 < d ? row[i0 + 2] : 0.0f;
        out[c].w = valid && i0 + 3 < d ? row[i0 + 3] : 0.0f;
    }
}

template <int D, int TPR>
__device__ __forceinline__ void store_row_chunks(float* __restrict__ row, int d, int r, float factor,
                                                 const float4 (&v)[D / (4 * TPR)]) {
#pragma unroll
    for (int c = 0; c < D / (4 * TPR); ++c) {
        const int i0 = (c * TPR + r) * 4;
        if (i0 + 0 < d) row[i0 + 0] = v[c].x * factor;
        if (i0 + 1 < d) row[i0 + 1] = v[c].y * factor;
        if (i0 + 2 < d) row[i0 + 2] = v[c].z * factor;
        if (i0 + 3 < d) row[i0 + 3] = v[c].w * factor;
    }
}

// Partial dot product of this lane's chunks with a shared-memory row (D floats, float4s).
template <int D, int TPR>
__device__ __forceinline__ float partial_dot(const float4 (&a)[D / (4 * TPR)], const float4* __restrict__ row,
                                             int r) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < D / (4 * TPR); ++c) {
        const float4 x = row[c * TPR + r];
        s = fmaf(a[c].x, x.x, s);
        s = fmaf(a[c].y, x.y, s);
        s = fmaf(a[c].z, x.z, s);
        s = fmaf(a[c].w, x.w, s);
    }
    return s;
}

// acc += p * row (this lane's chunks).
template <int D, int TPR>
__device__ __forceinline__ void axpy_row(float p, const float4* __restrict__ row, int r,
                                         float4 (&acc)[D / (4 * TPR)]) {
#pragma unroll
    for (int c = 0; c < D / (4 * TPR); ++c) {
        const float4 x = row[c * TPR + r];
        acc[c].x = fmaf(p, x.x, acc[c].x);
        acc[c].y = fmaf(p, x.y, acc[c].y);
        acc[c].z = fmaf(p, x.z, acc[c].z);
        acc[c].w = fmaf(p, x.w, acc[c].w);
    }
}

// Copies `rows` rows of a [B, T, heads, d] tensor (rows t0.., head `head`, batch b) into
// shared memory as [rows][D], zero past T and past d.
template <int D>
__device__ __forceinline__ void load_tile(float* __restrict__ dst, const float* __restrict__ src, int rows, int t0,
                                          int64_t b, int T, int heads, int head, int d) {
    for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
        const int j = idx / D, i = idx % D;
        const int t = t0 + j;
        float value = 0.0f;
        if (t < T && i < d) value = src[((b * T + t) * heads + head) * static_cast<int64_t>(d) + i];
        dst[idx] = value;
    }
}

// The query side of a (batch x head, query tile) block, shared by the forward and the dQ
// kernels: which row this thread's lanes own, the keys that row sees, and the key range
// any row of the block sees.
template <int TPR, int BQ>
struct QueryTile {
    int64_t b, row;
    int h, g, r, t;
    bool active;
    int lo_t = 0, hi_t = -1;  // inactive rows see nothing
    int k_lo, k_hi;

    __device__ QueryTile(int T, int H, int group, bool causal, int window) {
        const int bh = blockIdx.x;
        b = bh / H;
        h = bh % H;
        g = h / group;
        const int q0 = blockIdx.y * BQ;
        r = threadIdx.x % TPR;
        t = q0 + threadIdx.x / TPR;
        active = t < T;
        if (active) keys_of_query(causal, window, T, t, lo_t, hi_t);
        const int q_last = min(T - 1, q0 + BQ - 1);
        int unused;
        keys_of_query(causal, window, T, q0, k_lo, unused);
        keys_of_query(causal, window, T, q_last, unused, k_hi);
        row = (b * T + t) * H + h;
    }
};

// ------------------------------------------------------------------ forward

template <int D, int TPR, int BQ, int BK>
__global__ void __launch_bounds__(BQ* TPR)
    attention_forward_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                             float* __restrict__ out, float* __restrict__ lse, int T, int H, int Hk, int d, int group,
                             bool causal, int window, float scale) {
    constexpr int NC = D / (4 * TPR);
    __shared__ __align__(16) float k_tile[BK * D];
    __shared__ __align__(16) float v_tile[BK * D];
    const float4* k4 = reinterpret_cast<const float4*>(k_tile);
    const float4* v4 = reinterpret_cast<const float4*>(v_tile);

    const QueryTile<TPR, BQ> tile(T, H, group, causal, window);
    const int64_t b = tile.b;
    const int h = tile.h, g = tile.g, r = tile.r, t = tile.t;
    const bool active = tile.active;
    const int lo_t = tile.lo_t, hi_t = tile.hi_t, k_lo = tile.k_lo, k_hi = tile.k_hi;
    const int64_t row = tile.row;
    float4 qv[NC], acc[NC];
    load_row_chunks<D, TPR>(q + row * d, d, active, r, qv);
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float m = -INFINITY, l = 0.0f;

    for (int k0 = k_lo; k0 <= k_hi; k0 += BK) {
        __syncthreads();  // previous tile fully used
        load_tile<D>(k_tile, k, BK, k0, b, T, Hk, g, d);
        load_tile<D>(v_tile, v, BK, k0, b, T, Hk, g, d);
        __syncthreads();
        const int n_keys = min(BK, k_hi - k0 + 1);  // block-uniform
        for (int j0 = 0; j0 < n_keys; j0 += kSub) {
            float s[kSub];
            float mx = -INFINITY;
#pragma unroll
            for (int jj = 0; jj < kSub; ++jj) {
                const int j = j0 + jj;  // j < BK always (kSub divides BK)
                const float dot = group_sum<TPR>(partial_dot<D, TPR>(qv, k4 + j * (D / 4), r));
                const int key = k0 + j;
                s[jj] = (key >= lo_t && key <= hi_t) ? dot * scale : -INFINITY;
                mx = fmaxf(mx, s[jj]);
            }
            if (mx > -INFINITY) {  // uniform within the row's lane group
                const float m_new = fmaxf(m, mx);
                const float alpha = expf(m - m_new);  // 0 while m is still -inf
                l *= alpha;
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    acc[c].x *= alpha;
                    acc[c].y *= alpha;
                    acc[c].z *= alpha;
                    acc[c].w *= alpha;
                }
#pragma unroll
                for (int jj = 0; jj < kSub; ++jj) {
                    const float p = expf(s[jj] - m_new);  // 0 for masked keys
                    l += p;
                    axpy_row<D, TPR>(p, v4 + (j0 + jj) * (D / 4), r, acc);
                }
                m = m_new;
            }
        }
    }

    if (active) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        store_row_chunks<D, TPR>(out + row * d, d, r, inv, acc);
        if (r == 0) lse[row] = m + logf(l);
    }
}

// ------------------------------------------------------------------ backward

// delta[row] = dO[row] . O[row], one warp per row; O f32 or bf16 (attention_forward's out).
template <class OutT>
__global__ void attention_delta_kernel(const float* __restrict__ grad_out, const OutT* __restrict__ out,
                                       float* __restrict__ delta, int64_t rows, int d) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warp leaves together
    float s = 0.0f;
    for (int i = lane; i < d; i += 32) s = fmaf(grad_out[row * d + i], load1(out, row * d + i), s);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) delta[row] = s;
}

// The same with 16-byte accesses, for d a multiple of 8 and 16-byte aligned rows: 8 threads
// a row, each taking 8 elements at a time (two float4 of dO, 16 bytes of O), then a 3-step
// shuffle sum. One warp a row read 4 bytes a lane and ran at ~2 TB/s (102 us a call at
// 8 x 4096 x 16 heads, 15 calls a step; docs/PERF.md version 55).
constexpr int kDeltaThreadsPerRow = 8;

__device__ __forceinline__ Float8 load8_as_float(const float* p, int64_t k) {
    const float4 a = reinterpret_cast<const float4*>(p)[2 * k], b = reinterpret_cast<const float4*>(p)[2 * k + 1];
    return Float8{{a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}};
}
__device__ __forceinline__ Float8 load8_as_float(const __nv_bfloat16* p, int64_t k) { return load8(p, k); }

template <class OutT>
__global__ void attention_delta_vec_kernel(const float* __restrict__ grad_out, const OutT* __restrict__ out,
                                           float* __restrict__ delta, int64_t rows, int d) {
    const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t row = t / kDeltaThreadsPerRow;
    const int part = static_cast<int>(t % kDeltaThreadsPerRow);
    float s = 0.0f;
    if (row < rows) {
        const float* go = grad_out + row * d;
        const OutT* o = out + row * d;
        for (int i = part; i < d / 8; i += kDeltaThreadsPerRow) {
            const Float8 a = load8_as_float(go, i), b = load8_as_float(o, i);
#pragma unroll
            for (int e = 0; e < 8; ++e) s = fmaf(a.v[e], b.v[e], s);
        }
    }
    // Groups of 8 lanes are aligned in the warp; every lane takes part (rows past the end add 0).
#pragma unroll
    for (int offset = kDeltaThreadsPerRow / 2; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (part == 0 && row < rows) delta[row] = s;
}

template <int D, int TPR, int BQ, int BK>
__global__ void __launch_bounds__(BQ* TPR)
    attention_backward_dq_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                 const float* __restrict__ v, const float* __restrict__ grad_out,
                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                 float* __restrict__ grad_q, int T, int H, int Hk, int d, int group, bool causal,
                                 int window, float scale) {
    constexpr int NC = D / (4 * TPR);
    __shared__ __align__(16) float k_tile[BK * D];
    __shared__ __align__(16) float v_tile[BK * D];
    const float4* k4 = reinterpret_cast<const float4*>(k_tile);
    const float4* v4 = reinterpret_cast<const float4*>(v_tile);

    const QueryTile<TPR, BQ> tile(T, H, group, causal, window);
    const int64_t b = tile.b;
    const int h = tile.h, g = tile.g, r = tile.r, t = tile.t;
    const bool active = tile.active;
    const int lo_t = tile.lo_t, hi_t = tile.hi_t, k_lo = tile.k_lo, k_hi = tile.k_hi;
    const int64_t row = tile.row;
    float4 qv[NC], gov[NC], acc[NC];
    load_row_chunks<D, TPR>(q + row * d, d, active, r, qv);
    load_row_chunks<D, TPR>(grad_out + row * d, d, active, r, gov);
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float lse_t = active ? lse[row] : 0.0f;
    const float delta_t = active ? delta[row] : 0.0f;

    for (int k0 = k_lo; k0 <= k_hi; k0 += BK) {
        __syncthreads();
        load_tile<D>(k_tile, k, BK, k0, b, T, Hk, g, d);
        load_tile<D>(v_tile, v, BK, k0, b, T, Hk, g, d);
        __syncthreads();
        const int n_keys = min(BK, k_hi - k0 + 1);  // block-uniform
        for (int j = 0; j < n_keys; ++j) {
            const float score = group_sum<TPR>(partial_dot<D, TPR>(qv, k4 + j * (D / 4), r));
            const float dp = group_sum<TPR>(partial_dot<D, TPR>(gov, v4 + j * (D / 4), r));
            const int key = k0 + j;
            if (key >= lo_t && key <= hi_t) {
                const float p = expf(score * scale - lse_t);
                axpy_row<D, TPR>(p * (dp - delta_t), k4 + j * (D / 4), r, acc);
            }
        }
    }
    if (active) store_row_chunks<D, TPR>(grad_q + row * d, d, r, scale, acc);
}

template <int D, int TPR, int BKEY, int BQ>
__global__ void __launch_bounds__(BKEY* TPR)
    attention_backward_dkdv_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                   const float* __restrict__ v, const float* __restrict__ grad_out,
                                   const float* __restrict__ lse, const float* __restrict__ delta,
                                   float* __restrict__ grad_k, float* __restrict__ grad_v, int T, int H, int Hk,
                                   int d, int group, bool causal, int window, float scale) {
    constexpr int NC = D / (4 * TPR);
    __shared__ __align__(16) float q_tile[BQ * D];
    __shared__ __align__(16) float go_tile[BQ * D];
    __shared__ float lse_tile[BQ];
    __shared__ float delta_tile[BQ];
    const float4* q4 = reinterpret_cast<const float4*>(q_tile);
    const float4* go4 = reinterpret_cast<const float4*>(go_tile);

    const int bg = blockIdx.x;
    const int64_t b = bg / Hk;
    const int g = bg % Hk;
    const int s0 = blockIdx.y * BKEY;
    const int r = threadIdx.x % TPR;
    const int s = s0 + threadIdx.x / TPR;
    const bool active = s < T;

    int lo_s = 0, hi_s = -1;  // queries that see key s
    if (active) queries_of_key(causal, window, T, s, lo_s, hi_s);
    const int s_last = min(T - 1, s0 + BKEY - 1);
    int t_lo, t_hi, unused;
    queries_of_key(causal, window, T, s0, t_lo, unused);
    queries_of_key(causal, window, T, s_last, unused, t_hi);

    const int64_t key_row = (b * T + s) * Hk + g;
    float4 kv[NC], vv[NC], dk[NC], dv[NC];
    load_row_chunks<D, TPR>(k + key_row * d, d, active, r, kv);
    load_row_chunks<D, TPR>(v + key_row * d, d, active, r, vv);
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        dk[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        dv[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }

    for (int h = g * group; h < (g + 1) * group; ++h) {
        for (int t0 = t_lo; t0 <= t_hi; t0 += BQ) {
            __syncthreads();
            load_tile<D>(q_tile, q, BQ, t0, b, T, H, h, d);
            load_tile<D>(go_tile, grad_out, BQ, t0, b, T, H, h, d);
            for (int j = threadIdx.x; j < BQ; j += blockDim.x) {
                const int t = t0 + j;
                const int64_t row = (b * T + t) * H + h;
                lse_tile[j] = t < T ? lse[row] : 0.0f;
                delta_tile[j] = t < T ? delta[row] : 0.0f;
            }
            __syncthreads();
            const int n_queries = min(BQ, t_hi - t0 + 1);  // block-uniform
            for (int j = 0; j < n_queries; ++j) {
                const float score = group_sum<TPR>(partial_dot<D, TPR>(kv, q4 + j * (D / 4), r));
                const float dp = group_sum<TPR>(partial_dot<D, TPR>(vv, go4 + j * (D / 4), r));
                const int t = t0 + j;
                if (t >= lo_s && t <= hi_s) {
                    const float p = expf(score * scale - lse_tile[j]);
                    axpy_row<D, TPR>(p, go4 + j * (D / 4), r, dv);
                    axpy_row<D, TPR>(p * (dp - delta_tile[j]), q4 + j * (D / 4), r, dk);
                }
            }
        }
    }
    if (active) {
        if (grad_k) store_row_chunks<D, TPR>(grad_k + key_row * d, d, r, scale, dk);
        if (grad_v) store_row_chunks<D, TPR>(grad_v + key_row * d, d, r, 1.0f, dv);
    }
}

// ------------------------------------------------------------------ launch configuration

// Forward: 32 dims per lane (16 for D = 16), 64 queries per block; key tiles sized so K and
// V tiles take 32 KiB at most.
template <int D>
struct ForwardConfig {
    static constexpr int TPR = D >= 32 ? D / 32 : 1;
    static constexpr int BQ = 64;
    static constexpr int BK = D == 128 ? 32 : 64;
};

// Backward: 16 dims per lane (three or four D-wide register arrays per row), 256 threads
// at most per block, tiles of 32 KiB at most.
template <int D>
struct BackwardConfig {
    static constexpr int TPR = D / 16;
    static constexpr int BROWS = D == 128 ? 32 : 64;  // rows owned per block (queries or keys)
    static constexpr int BTILE = D == 128 ? 32 : 64;  // rows per shared tile
};

using checks::AttentionDims;

// The CUDA kernels' limits, after the shared checks (core/backend_checks.h).
void check_attention_limits(const char* op, const AttentionDims& D) {
    HSA_CHECK(D.d <= 128, op << ": head dim " << D.d << " exceeds the CUDA kernels' limit of 128");
    HSA_CHECK(D.T < (int64_t{1} << 30), op << ": T = " << D.T << " is too long for the CUDA kernels");
    HSA_CHECK(D.B * D.H < (int64_t{1} << 31), op << ": B * H = " << D.B * D.H << " exceeds the grid limit");
}

// A window covering the whole sequence is the same as no window; int range for kernels.
int kernel_window(AttentionSpan span, int64_t T) {
    return (span.window == 0 || span.window >= T) ? 0 : static_cast<int>(span.window);
}

unsigned tiles_for(int64_t T, int rows_per_block, const char* op) {
    const int64_t tiles = (T + rows_per_block - 1) / rows_per_block;
    HSA_CHECK(tiles <= 65535, op << ": T = " << T << " needs " << tiles << " tiles, over the grid limit 65535");
    return static_cast<unsigned>(tiles);
}

template <int D>
void launch_forward(const AttentionDims& A, const float* q, const float* k, const float* v, float* out, float* lse,
                    bool causal, int window, float scale) {
    using C = ForwardConfig<D>;
    const dim3 grid(static_cast<unsigned>(A.B * A.H), tiles_for(A.T, C::BQ, "attention_forward"));
    attention_forward_kernel<D, C::TPR, C::BQ, C::BK><<<grid, C::BQ * C::TPR>>>(
        q, k, v, out, lse, static_cast<int>(A.T), static_cast<int>(A.H), static_cast<int>(A.Hk),
        static_cast<int>(A.d), static_cast<int>(A.group), causal, window, scale);
    HSA_CUDA_CHECK_LAUNCH("attention_forward_kernel");
}

template <int D>
void launch_backward(const AttentionDims& A, const float* q, const float* k, const float* v, const float* grad_out,
                     const float* lse, const float* delta, float* grad_q, float* grad_k, float* grad_v, bool causal,
                     int window, float scale) {
    using C = BackwardConfig<D>;
    const int T = static_cast<int>(A.T), H = static_cast<int>(A.H), Hk = static_cast<int>(A.Hk);
    const int d = static_cast<int>(A.d), group = static_cast<int>(A.group);
    if (grad_q) {
        const dim3 grid(static_cast<unsigned>(A.B * A.H), tiles_for(A.T, C::BROWS, "attention_backward"));
        attention_backward_dq_kernel<D, C::TPR, C::BROWS, C::BTILE><<<grid, C::BROWS * C::TPR>>>(
            q, k, v, grad_out, lse, delta, grad_q, T, H, Hk, d, group, causal, window, scale);
        HSA_CUDA_CHECK_LAUNCH("attention_backward_dq_kernel");
    }
    if (grad_k || grad_v) {
        const dim3 grid(static_cast<unsigned>(A.B * A.Hk), tiles_for(A.T, C::BROWS, "attention_backward"));
        attention_backward_dkdv_kernel<D, C::TPR, C::BROWS, C::BTILE><<<grid, C::BROWS * C::TPR>>>(
            q, k, v, grad_out, lse, delta, grad_k, grad_v, T, H, Hk, d, group, causal, window, scale);
        HSA_CUDA_CHECK_LAUNCH("attention_backward_dkdv_kernel");
    }
}

// q or k as the f32 kernels take them: a bf16 tensor (rmsnorm_rope's rounded output, when
// the tensor-core kernels do not apply) widened exactly.
Tensor f32_of(const Tensor& t) { return t.dtype() == DType::BF16 ? widened_f32_copy(t) : t; }

}  // namespace

bool CudaBackend::attention_takes_bf16_qk(int64_t head_dim) const {
    return matmul_precision() == MatmulPrecision::BF16 && attention_tensor_core_eligible(head_dim, {});
}

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span, Tensor& out,
                                    Tensor& lse) {
    const AttentionDims A = checks::check_attention_forward(q, k, v, span, out, lse, Device::CUDA);
    check_attention_limits("attention_forward", A);
    if (A.B == 0 || A.T == 0) return;
    // At bf16 matrix-product precision (training), the tensor-core kernels (which write a
    // bf16 out directly).
    if (matmul_precision() == MatmulPrecision::BF16 && attention_tensor_core_eligible(A.d, {&q, &k, &v, &out})) {
        attention_forward_tensor_core(q, k, v, span.causal, kernel_window(span, A.T), out, lse);
        return;
    }
    if (q.dtype() == DType::BF16 || k.dtype() == DType::BF16) {  // the f32 kernels on exact f32 copies
        attention_forward(f32_of(q), f32_of(k), v, span, out, lse);
        return;
    }
    if (out.dtype() == DType::BF16) {  // the f32 kernels' result, rounded once
        Tensor out32 = Tensor::empty(out.shape(), DType::F32, Device::CUDA);
        attention_forward(q, k, v, span, out32, lse);
        round_into_bf16(out32, out);
        return;
    }
    const float* pq = q.data<float>();
    const float* pk = k.data<float>();
    const float* pv = v.data<float>();
    float* po = out.data<float>();
    float* pl = lse.data<float>();
    const bool causal = span.causal;
    const int window = kernel_window(span, A.T);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(A.d)));
    if (A.d <= 16) launch_forward<16>(A, pq, pk, pv, po, pl, causal, window, scale);
    else if (A.d <= 32) launch_forward<32>(A, pq, pk, pv, po, pl, causal, window, scale);
    else if (A.d <= 64) launch_forward<64>(A, pq, pk, pv, po, pl, causal, window, scale);
    else launch_forward<128>(A, pq, pk, pv, po, pl, causal, window, scale);
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                     const Tensor& lse, const Tensor& grad_out, AttentionSpan span, Tensor& grad_q,
                                     Tensor& grad_k, Tensor& grad_v) {
    const checks::AttentionBackwardDims A = checks::check_attention_backward(q, k, v, out, lse, grad_out, span, grad_q,
                                                                             grad_k, grad_v, Device::CUDA);
    check_attention_limits("attention_backward", A);
    const bool want_q = A.want_q, want_k = A.want_k, want_v = A.want_v;
    if (!want_q && !want_k && !want_v) return;
    if (A.B == 0 || A.T == 0) return;

    // At bf16 precision the tensor-core kernels, which also sum delta = dO . O as they load dO.
    if (matmul_precision() == MatmulPrecision::BF16 &&
        attention_tensor_core_eligible(A.d, {&q, &k, &v, &out, &grad_out, want_q ? &grad_q : nullptr,
                                             want_k ? &grad_k : nullptr, want_v ? &grad_v : nullptr})) {
        attention_backward_tensor_core(q, k, v, out, grad_out, lse, span.causal, kernel_window(span, A.T),
                                       want_q ? &grad_q : nullptr, want_k ? &grad_k : nullptr,
                                       want_v ? &grad_v : nullptr);
        return;
    }
    if (q.dtype() == DType::BF16 || k.dtype() == DType::BF16) {  // the f32 kernels on exact f32 copies
        attention_backward(f32_of(q), f32_of(k), v, out, lse, grad_out, span, grad_q, grad_k, grad_v);
        return;
    }

    const int64_t rows = A.B * A.T * A.H;
    Tensor delta = Tensor::empty({A.B, A.T, A.H}, DType::F32, Device::CUDA);
    float* pdelta = delta.data<float>();
    // 16-byte loads where d and the rows allow (8 threads a row), else a warp a row; O in
    // its stored dtype either way.
    const bool vectorised = A.d % 8 == 0 && aligned16(grad_out.raw_data()) && aligned16(out.raw_data());
    const auto launch_delta = [&](const auto* po) {
        constexpr int kThreads = 256;
        const int d = static_cast<int>(A.d);
        if (vectorised)
            attention_delta_vec_kernel<<<blocks_for(rows * kDeltaThreadsPerRow, kThreads), kThreads>>>(
                grad_out.data<float>(), po, pdelta, rows, d);
        else
            attention_delta_kernel<<<blocks_for(rows, kThreads / 32), kThreads>>>(grad_out.data<float>(), po, pdelta,
                                                                                 rows, d);
    };
    if (out.dtype() == DType::BF16) launch_delta(static_cast<const __nv_bfloat16*>(out.raw_data()));
    else launch_delta(out.data<float>());
    HSA_CUDA_CHECK_LAUNCH("attention_delta_kernel");

    const float* pq = q.data<float>();
    const float* pk = k.data<float>();
    const float* pv = v.data<float>();
    const float* pgo = grad_out.data<float>();
    const float* pl = lse.data<float>();
    float* gq = want_q ? grad_q.data<float>() : nullptr;
    float* gk = want_k ? grad_k.data<float>() : nullptr;
    float* gv = want_v ? grad_v.data<float>() : nullptr;
    const bool causal = span.causal;
    const int window = kernel_window(span, A.T);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(A.d)));
    if (A.d <= 16) launch_backward<16>(A, pq, pk, pv, pgo, pl, pdelta, gq, gk, gv, causal, window, scale);
    else if (A.d <= 32) launch_backward<32>(A, pq, pk, pv, pgo, pl, pdelta, gq, gk, gv, causal, window, scale);
    else if (A.d <= 64) launch_backward<64>(A, pq, pk, pv, pgo, pl, pdelta, gq, gk, gv, causal, window, scale);
    else launch_backward<128>(A, pq, pk, pv, pgo, pl, pdelta, gq, gk, gv, causal, window, scale);
    // delta goes back to the caching allocator when it leaves scope; all work is ordered on
    // the default stream, so reuse of its memory by a later op is safe.
}

}  // namespace hsa
