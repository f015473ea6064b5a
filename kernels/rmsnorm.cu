// RMSNorm over the last dim for the CUDA backend: out = x * inv_rms * weight,
// inv_rms = 1 / sqrt(mean(x^2) + eps).
//
// Rows of 16, 32, 64 or 128 elements (the q / k norms' rows of one head) take D / 4 lanes
// each (float4); rows of 513..1024 (the hidden size) one warp each with float4 loads held in
// registers; other rows up to kWarpRowMax one warp each (scalar), wider ones one block each
// (grid-stride over rows). Unaligned data takes the scalar kernels. The row reductions (sum
// of squares, and sum g w x in the backward) accumulate in double in a fixed order; the
// per-element formulas are evaluated in double as in the CPU reference by the scalar
// kernels, in f32 by the float4 ones (~1e-7 relative).
// grad_weight is deterministic: split s of the rows writes partial[s, j] (double), then a
// second kernel adds the splits in order.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>

#include "core/precision.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

// Threads per row block: enough for one float4 (or float) per thread up to 512.
int row_threads(int64_t units) {
    if (units >= 512) return 512;
    if (units <= 32) return 32;
    return static_cast<int>((units + 31) / 32 * 32);
}

unsigned row_grid(int64_t N) { return static_cast<unsigned>(N < (int64_t{1} << 20) ? N : (int64_t{1} << 20)); }

__device__ inline double wval(const float* w, int64_t j) { return w ? static_cast<double>(w[j]) : 1.0; }

constexpr int64_t kWarpRowMax = 2048;
constexpr int kRowsPerBlock = 8;  // warps per block of the warp-per-row kernels

// Xor butterfly: the same additions in the same order on every lane, so every lane ends
// with the same, run-to-run identical value.
__device__ __forceinline__ double warp_sum_double(double v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__global__ void rmsnorm_forward_warp_kernel(const float* x, const float* w, float eps, float* out, float* inv_rms,
                                            int64_t N, int64_t D) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
    if (n >= N) return;
    const float* xr = x + n * D;
    float* orow = out + n * D;
    double ss = 0.0;
    for (int64_t j = lane; j < D; j += 32) ss += static_cast<double>(xr[j]) * xr[j];
    ss = warp_sum_double(ss);
    const double r = 1.0 / sqrt(ss / static_cast<double>(D) + static_cast<double>(eps));
    if (lane == 0) inv_rms[n] = static_cast<float>(r);
    // Each lane rewrites only the elements it read itself: out may alias x.
    for (int64_t j = lane; j < D; j += 32) orow[j] = static_cast<float>(static_cast<double>(xr[j]) * r * wval(w, j));
}

// Rows of 513..1024 columns, D % 4 == 0, 16-byte aligned: one warp a row with float4
// loads held in registers (8 a lane), the sum of squares added across lanes in double, the
// output in f32 (relative error ~1e-7 against the double reference). The scalar warp kernel
// above kept too few loads in flight for rows this wide.
constexpr int kWideM = 8;  // float4 a lane: up to 1024 columns

// Rows the wide kernel takes: 513..1024 columns, D % 4 == 0, every pointer 16-byte aligned.
bool wide_rows(int64_t N, int64_t D, std::initializer_list<const void*> pointers) {
    if (!(D > 512 && D <= 128 * kWideM && D % 4 == 0 && N < (int64_t{1} << 34))) return false;
    for (const void* p : pointers)
        if (p != nullptr && !aligned16(p)) return false;
    return true;
}

// With Residual (add_rmsnorm): the row is x + a (f32 adds, as the add kernel), also written
// to sum; the norm is of that sum. Out: f32, or bf16 (the f32 value rounded to nearest
// even, as rounded_bf16_copy would) for an activation that only feeds products.
template <bool Residual, class Out>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    rmsnorm_forward_wide_kernel(const float* x, const float* a, float* sum, const float* __restrict__ w, float eps,
                                Out* out, float* __restrict__ inv_rms, int64_t N, int64_t D) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
    if (n >= N) return;
    const int64_t D4 = D / 4;
    const float4* xr = reinterpret_cast<const float4*>(x + n * D);
    Out* orow = out + n * D;
    float4 xv[kWideM];
    float lane_ss = 0.0f;
#pragma unroll
    for (int m = 0; m < kWideM; ++m) {
        const int64_t v = lane + 32 * m;
        xv[m] = v < D4 ? xr[v] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (Residual && v < D4) {
            const float4 av = reinterpret_cast<const float4*>(a + n * D)[v];
            xv[m] = make_float4(xv[m].x + av.x, xv[m].y + av.y, xv[m].z + av.z, xv[m].w + av.w);
            reinterpret_cast<float4*>(sum + n * D)[v] = xv[m];  // this lane's own elements: sum may alias x or a
        }
        lane_ss += xv[m].x * xv[m].x + xv[m].y * xv[m].y + xv[m].z * xv[m].z + xv[m].w * xv[m].w;
    }
    const double ss = warp_sum_double(static_cast<double>(lane_ss));  // all reads before any write: out may alias x
    const double rd = 1.0 / sqrt(ss / static_cast<double>(D) + static_cast<double>(eps));
    const float r = static_cast<float>(rd);
    if (lane == 0) inv_rms[n] = r;
#pragma unroll
    for (int m = 0; m < kWideM; ++m) {
        const int64_t v = lane + 32 * m;
        if (v >= D4) continue;
        float4 wv = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
        if (w) wv = __ldg(reinterpret_cast<const float4*>(w) + v);
        store4(orow, v, make_float4(xv[m].x * r * wv.x, xv[m].y * r * wv.y, xv[m].z * r * wv.z, xv[m].w * r * wv.w));
    }
}

__global__ void rmsnorm_backward_x_warp_kernel(const float* x, const float* w, const float* inv_rms, const float* g,
                                               float* dx, int64_t N, int64_t D, bool accumulate) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
    if (n >= N) return;
    const float* xr = x + n * D;
    const float* gr = g + n * D;
    float* dr = dx + n * D;
    const double r = static_cast<double>(inv_rms[n]);
    double dot = 0.0;
    for (int64_t j = lane; j < D; j += 32) dot += static_cast<double>(gr[j]) * wval(w, j) * static_cast<double>(xr[j]);
    dot = warp_sum_double(dot);  // every lane has read its elements before any writes (dx may alias)
    const double c = dot * r * r * r / static_cast<double>(D);
    for (int64_t j = lane; j < D; j += 32) {
        const double gw = static_cast<double>(gr[j]) * wval(w, j);
        const float value = static_cast<float>(r * gw - static_cast<double>(xr[j]) * c);
        dr[j] = accumulate ? dr[j] + value : value;
    }
}

// dx of rows up to 32 M wide and the weight gradient's partial sums in one pass (x and g
// read once). Block b owns rows [b * rows_per_block, ...); warp w of it takes rows w, w + 8,
// ... and lane l handles columns l + 32 m. Each warp keeps its column sums in its own row of
// shared memory (in registers, 32 doubles a lane at width 1024 pushed the kernel to 255
// registers and one block per SM), and the warps' rows are added in warp order into
// partial[b, :]. With accumulate, the old dx is loaded together with x and g, so a row
// still waits for memory once. Every order is fixed: bit-identical run to run.
template <int M>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    rmsnorm_backward_fused_kernel(const float* x, const float* w, const float* inv_rms, const float* g, float* dx,
                                  int64_t N, int64_t D, int64_t rows_per_block, double* partial, bool accumulate) {
    extern __shared__ double warp_columns[];  // [kRowsPerBlock][D]
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int64_t begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
    const int64_t end = begin + rows_per_block < N ? begin + rows_per_block : N;
    double* column_sums = warp_columns + static_cast<int64_t>(warp) * D;
#pragma unroll
    for (int m = 0; m < M; ++m)
        if (lane + 32 * m < D) column_sums[lane + 32 * m] = 0.0;
    for (int64_t n = begin + warp; n < end; n += kRowsPerBlock) {
        const float* xr = x + n * D;
        const float* gr = g + n * D;
        float* dr = dx + n * D;
        float xv[M], gv[M], old[M];
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const int64_t j = lane + 32 * m;
            xv[m] = j < D ? xr[j] : 0.0f;
            gv[m] = j < D ? gr[j] : 0.0f;
            old[m] = accumulate && j < D ? dr[j] : 0.0f;
        }
        const double r = static_cast<double>(inv_rms[n]);
        double dot = 0.0;
#pragma unroll
        for (int m = 0; m < M; ++m)
            if (lane + 32 * m < D) dot += static_cast<double>(gv[m]) * wval(w, lane + 32 * m) * static_cast<double>(xv[m]);
        dot = warp_sum_double(dot);  // every lane holds its elements in registers: dx may alias g or x
        const double c = dot * r * r * r / static_cast<double>(D);
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const int64_t j = lane + 32 * m;
            if (j >= D) continue;
            const double gw = static_cast<double>(gv[m]) * wval(w, j);
            const float value = static_cast<float>(r * gw - static_cast<double>(xv[m]) * c);
            dr[j] = accumulate ? old[m] + value : value;
            column_sums[j] += static_cast<double>(gv[m]) * static_cast<double>(xv[m]) * r;
        }
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        double sum = 0.0;
        for (int v = 0; v < kRowsPerBlock; ++v) sum += warp_columns[v * D + j];
        partial[static_cast<int64_t>(blockIdx.x) * D + j] = sum;
    }
}

// Rows of 513..1024 columns (the hidden size), D % 4 == 0, 16-byte aligned data: dx and the
// weight gradient's partial sums in one pass, x and g read once as float4 and held in
// registers (M = 8 float4 a lane covers 1024 columns). Blocks of 4 warps own rows [b *
// rows_per_block, ...), a warp every 4th row; each lane keeps its columns' sums of g x r in
// f32 registers over the warp's few rows (<= rows_per_block / 4, 8 at 32768 rows), the
// warps' sums go through shared memory and are added in warp order into partial[b, :]
// (double). The row dot product is summed in double across lanes, the per-element formula
// in f32 (relative error ~1e-7 against the double reference). Fixed orders throughout:
// bit-identical run to run. The former x kernel + split column-sum kernel read x and g twice
// at low memory parallelism (scalar loads): 0.29 ms a call at 32768 x 1024 on an H200.
constexpr int kWideWarps = 4;
constexpr int kWideBackwardMinBlocks = 4;  // 128 registers, no spill (ptxas); 5 spills

__global__ void __launch_bounds__(kWideWarps * 32, kWideBackwardMinBlocks)
    rmsnorm_backward_wide_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                 const float* __restrict__ inv_rms, const float* __restrict__ g, float* dx,
                                 __nv_bfloat16* __restrict__ dx16, int64_t N, int64_t D, int64_t rows_per_block,
                                 double* partial, bool accumulate) {
    constexpr int M = kWideM;
    extern __shared__ float wide_columns[];  // [kWideWarps][D]
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int64_t begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
    const int64_t end = begin + rows_per_block < N ? begin + rows_per_block : N;
    const int64_t D4 = D / 4;
    const float4* w4 = reinterpret_cast<const float4*>(w);
    const float4 ones = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    // This warp's column sums of g x r live in its row of shared memory (each lane its own
    // columns, so no barrier until the warps' rows are added); the weight is re-read through
    // L1. Held in registers with x and g they took the kernel to 167 registers, 3 blocks an
    // SM, 17% occupancy and 61% of DRAM bandwidth (ncu).
    float4* mine = reinterpret_cast<float4*>(wide_columns + static_cast<int64_t>(warp) * D);
    if (partial) {
#pragma unroll
        for (int m = 0; m < M; ++m)
            if (lane + 32 * m < D4) mine[lane + 32 * m] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    for (int64_t n = begin + warp; n < end; n += kWideWarps) {
        const float4* xr = reinterpret_cast<const float4*>(x + n * D);
        const float4* gr = reinterpret_cast<const float4*>(g + n * D);
        float4* dr = reinterpret_cast<float4*>(dx + n * D);
        float4 xv[M], gv[M];
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const int64_t v = lane + 32 * m;
            xv[m] = v < D4 ? xr[v] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            gv[m] = v < D4 ? gr[v] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        const float r = inv_rms[n];
        float lane_dot = 0.0f;
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const int64_t v = lane + 32 * m;
            const float4 wv = w && v < D4 ? __ldg(w4 + v) : ones;
            lane_dot += gv[m].x * wv.x * xv[m].x + gv[m].y * wv.y * xv[m].y + gv[m].z * wv.z * xv[m].z +
                        gv[m].w * wv.w * xv[m].w;
        }
        // The dx values being added to, in two groups of M / 2 loads in flight (the first
        // issued before the row's reduction): loaded one at a time as each was written, the
        // kernel ran at ~3.4 TB/s (docs/PERF.md version 58); all M at once would not fit the
        // 128 registers of 4 blocks an SM.
        constexpr int kGroup = M / 2;
        float4 old[kGroup];
        const auto load_old = [&](int first) {
#pragma unroll
            for (int u = 0; u < kGroup; ++u) {
                const int64_t v = lane + 32 * (first + u);
                old[u] = accumulate && v < D4 ? dr[v] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        };
        load_old(0);
        // Every lane holds its elements in registers before any write: dx may alias g or x.
        const double dot = warp_sum_double(static_cast<double>(lane_dot));
        const double rd = static_cast<double>(r);
        const float c = static_cast<float>(dot * rd * rd * rd / static_cast<double>(D));
#pragma unroll
        for (int m = 0; m < M; ++m) {
            if (m == kGroup) load_old(kGroup);  // x and g of the row are all in registers: dx may alias them
            const int64_t v = lane + 32 * m;
            if (v >= D4) continue;
            const float4 wv = w ? __ldg(w4 + v) : ones;
            float4 value = make_float4(r * gv[m].x * wv.x - xv[m].x * c, r * gv[m].y * wv.y - xv[m].y * c,
                                       r * gv[m].z * wv.z - xv[m].z * c, r * gv[m].w * wv.w - xv[m].w * c);
            if (accumulate) {
                const float4 o = old[m % kGroup];
                value.x += o.x;
                value.y += o.y;
                value.z += o.z;
                value.w += o.w;
            }
            dr[v] = value;
            if (dx16) store4(dx16 + n * D, v, value);  // the rounding of the stored value
            if (partial) {
                float4 cs = mine[v];
                cs.x += gv[m].x * xv[m].x * r;
                cs.y += gv[m].y * xv[m].y * r;
                cs.z += gv[m].z * xv[m].z * r;
                cs.w += gv[m].w * xv[m].w * r;
                mine[v] = cs;
            }
        }
    }
    if (partial == nullptr) return;  // dx only (no barrier follows)
    __syncthreads();
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        double sum = 0.0;
        for (int v = 0; v < kWideWarps; ++v) sum += static_cast<double>(wide_columns[v * D + j]);
        partial[static_cast<int64_t>(blockIdx.x) * D + j] = sum;
    }
}

// Narrow rows (the per-head q / k norms: D = 64, N = B x T x H rows), D in {16, 32, 64, 128}
// and 16-byte aligned: L = D / 4 lanes a row, one float4 each, 32 / L rows a warp; the row
// sums are added across the row's lanes in double (xor butterfly: every lane the same
// value, fixed order). One warp a row with scalar loads moved 256 bytes a row per load
// pair: 0.16 ms (forward) and 0.18 ms (backward) a call at 524288 x 64 on an H200.
//
// The same kernels run the q / k path's RMSNorm then RoPE in one pass each way (Rope =
// true): lane p holds columns 4p .. 4p + 3, and the rotate-half partner of its columns is in
// lane p ^ (L / 2) (a shuffle). cos / sin come from a [T, d / 2] float2 table built per call
// (angle and functions in double, as the RoPE kernel computes them); the rotation is f32
// (~1e-7 relative against the double reference). Rows are (b, t, h), t = (n / H) % T.
template <int L>
__device__ __forceinline__ double row_sum_double(double v) {
    for (int offset = L / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

constexpr int64_t kRopeTableMax = int64_t{1} << 22;  // entries (32 MB); longer tables: composed ops

__global__ void rope_table_kernel(float2* table, int64_t T, int64_t half, int64_t position_offset, double base) {
    const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (k >= T * half) return;
    const int64_t t = k / half, i = k % half;
    const double freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(2 * half));
    double sn, cs;
    sincos(static_cast<double>(position_offset + t) * freq, &sn, &cs);
    table[k] = make_float2(static_cast<float>(cs), static_cast<float>(sn));
}

// The rotation of narrow rows: table [T, d / 2] of (cos, sin), or null for plain RMSNorm.
struct NarrowRope {
    const float2* table = nullptr;
    int64_t T = 1, H = 1;
};

__device__ __forceinline__ float4 shfl_xor4(float4 v, int mask) {
    return make_float4(__shfl_xor_sync(0xffffffffu, v.x, mask), __shfl_xor_sync(0xffffffffu, v.y, mask),
                       __shfl_xor_sync(0xffffffffu, v.z, mask), __shfl_xor_sync(0xffffffffu, v.w, mask));
}

// Row n's lane `part` of v rotated by token t = (n / H) % T's angles: forward
// (v_i c - v_{i+half} s | v_{i+half} c + v_i s) or its inverse, the backward's
// (v_i c + v_{i+half} s | v_{i+half} c - v_i s). Every lane calls it (the partner is a
// shuffle); lanes of invalid rows get v back without reading the table.
template <int L>
__device__ __forceinline__ float4 rotate_narrow(float4 v, const NarrowRope& rope, int64_t n, bool valid, int part,
                                                bool inverse) {
    constexpr int kHalf = 2 * L;  // d / 2
    const float4 partner = shfl_xor4(v, L / 2);
    if (!valid) return v;
    const int i0 = 4 * (part < L / 2 ? part : part - L / 2);
    const float4* row = reinterpret_cast<const float4*>(rope.table + ((n / rope.H) % rope.T) * kHalf + i0);
    const float4 a = __ldg(row), b = __ldg(row + 1);
    const float4 c = make_float4(a.x, a.z, b.x, b.z), s = make_float4(a.y, a.w, b.y, b.w);
    const float sign = (part < L / 2) != inverse ? -1.0f : 1.0f;
    return make_float4(v.x * c.x + sign * partner.x * s.x, v.y * c.y + sign * partner.y * s.y,
                       v.z * c.z + sign * partner.z * s.z, v.w * c.w + sign * partner.w * s.w);
}

// Each lane group takes kNarrowRowsPerLane rows, loading all of them before reducing any:
// with one 16-byte load in flight a thread the q passes ran at 2.7-3.0 TB/s (docs/PERF.md).
constexpr int kNarrowRowsPerLane = 2;

// out: f32, or bf16 rounded to nearest even (q / k of the attention at bf16 precision, which
// the attention kernels take as their operands: the bits they would round to themselves).
template <int L, bool Rope, typename OutT>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    rmsnorm_forward_narrow_kernel(const float* x, const float* __restrict__ w, float eps, NarrowRope rope, OutT* out,
                                  float* __restrict__ inv_rms, int64_t N) {
    constexpr int D = 4 * L, kRowsPerWarp = 32 / L, R = kNarrowRowsPerLane;
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int part = lane % L;
    const int64_t first = (static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp) * R * kRowsPerWarp + lane / L;
    float4 xv[R];
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int64_t n = first + k * kRowsPerWarp;
        xv[k] = n < N ? reinterpret_cast<const float4*>(x + n * D)[part] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float4 wv = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    if (w) wv = __ldg(reinterpret_cast<const float4*>(w) + part);
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int64_t n = first + k * kRowsPerWarp;
        const bool valid = n < N;  // no early exit: the whole warp takes part in the shuffles
        const double ss =
            row_sum_double<L>(static_cast<double>(xv[k].x * xv[k].x + xv[k].y * xv[k].y + xv[k].z * xv[k].z +
                                                  xv[k].w * xv[k].w));
        const float r = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(D) + static_cast<double>(eps)));
        float4 y = make_float4(xv[k].x * r * wv.x, xv[k].y * r * wv.y, xv[k].z * r * wv.z, xv[k].w * r * wv.w);
        if (Rope) y = rotate_narrow<L>(y, rope, n, valid, part, /*inverse=*/false);
        if (!valid) continue;  // every row's reads are done (all loaded above): out may alias x
        if (part == 0) inv_rms[n] = r;
        store4(out + n * D, part, y);
    }
}

// Backward of the narrow rows (with Rope: of the inverse rotation of g first, in
// registers): dx and, when partial is set, per-block column sums of g x r (f32 in
// registers over a lane's rows, then added in (warp, row slot) order into partial[b, :] in
// double). Blocks own rows [b * rows_per_block, ...).
template <int L, bool Rope>
__global__ void __launch_bounds__(kRowsPerBlock * 32)
    rmsnorm_backward_narrow_kernel(const float* x, const float* __restrict__ w, const float* __restrict__ inv_rms,
                                   const float* g, NarrowRope rope, float* dx, __nv_bfloat16* __restrict__ dx16,
                                   int64_t N, int64_t rows_per_block, double* partial, bool accumulate) {
    constexpr int D = 4 * L, kRowsPerWarp = 32 / L, kSlots = kRowsPerBlock * kRowsPerWarp;
    __shared__ float4 slot_sums[kSlots][L];
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int part = lane % L, slot = warp * kRowsPerWarp + lane / L;
    const int64_t begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
    const int64_t end = begin + rows_per_block < N ? begin + rows_per_block : N;
    float4 wv = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    if (w) wv = __ldg(reinterpret_cast<const float4*>(w) + part);
    float4 cs = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // Every lane runs the same number of iterations (rows past end are zeros), so the
    // shuffles always see the whole warp. Two rows a lane an iteration, both loaded before
    // either is reduced (twice the bytes in flight), processed in row order: the column sums
    // add in the same order as one row an iteration.
    constexpr int R = kNarrowRowsPerLane;
    for (int64_t first = begin; first < end; first += R * kSlots) {
        float4 xv[R], gv[R];
        float r[R];
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int64_t n = first + k * kSlots + slot;
            xv[k] = gv[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            r[k] = 0.0f;
            if (n < end) {
                xv[k] = reinterpret_cast<const float4*>(x + n * D)[part];
                gv[k] = reinterpret_cast<const float4*>(g + n * D)[part];
                r[k] = inv_rms[n];
            }
        }
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int64_t n = first + k * kSlots + slot;
            const bool valid = n < end;
            if (Rope) gv[k] = rotate_narrow<L>(gv[k], rope, n, valid, part, /*inverse=*/true);
            const double dot = row_sum_double<L>(static_cast<double>(gv[k].x * wv.x * xv[k].x + gv[k].y * wv.y * xv[k].y +
                                                                     gv[k].z * wv.z * xv[k].z + gv[k].w * wv.w * xv[k].w));
            if (!valid) continue;  // every read of the rows is done: dx may alias x or g
            const double rd = static_cast<double>(r[k]);
            const float c = static_cast<float>(dot * rd * rd * rd / static_cast<double>(D));
            const float rk = r[k];
            float4 value = make_float4(rk * gv[k].x * wv.x - xv[k].x * c, rk * gv[k].y * wv.y - xv[k].y * c,
                                       rk * gv[k].z * wv.z - xv[k].z * c, rk * gv[k].w * wv.w - xv[k].w * c);
            if (dx) {  // null: only the bf16 rounding is wanted (rmsnorm_rope_backward_operand)
                float4* dr = reinterpret_cast<float4*>(dx + n * D) + part;
                if (accumulate) {
                    const float4 old = *dr;
                    value.x += old.x;
                    value.y += old.y;
                    value.z += old.z;
                    value.w += old.w;
                }
                *dr = value;
            }
            if (dx16) store4(dx16 + n * D, part, value);  // the rounding of the stored value
            cs.x += gv[k].x * xv[k].x * rk;
            cs.y += gv[k].y * xv[k].y * rk;
            cs.z += gv[k].z * xv[k].z * rk;
            cs.w += gv[k].w * xv[k].w * rk;
        }
    }
    if (partial == nullptr) return;  // dx only (no barrier follows)
    slot_sums[slot][part] = cs;
    __syncthreads();
    for (int j = static_cast<int>(threadIdx.x); j < D; j += blockDim.x) {
        double sum = 0.0;
        for (int k = 0; k < kSlots; ++k) {
            const float4 v = slot_sums[k][j / 4];
            sum += static_cast<double>(j % 4 == 0 ? v.x : j % 4 == 1 ? v.y : j % 4 == 2 ? v.z : v.w);
        }
        partial[static_cast<int64_t>(blockIdx.x) * D + j] = sum;
    }
}

bool narrow_row(int64_t D) { return D == 16 || D == 32 || D == 64 || D == 128; }

template <int L, bool Rope, typename OutT>
void launch_narrow_forward(const float* px, const float* pw, float eps, const NarrowRope& rope, OutT* po, float* pr,
                           int64_t N) {
    constexpr int64_t kRowsPerLaunchBlock = kRowsPerBlock * (32 / L) * kNarrowRowsPerLane;
    rmsnorm_forward_narrow_kernel<L, Rope, OutT>
        <<<static_cast<unsigned>((N + kRowsPerLaunchBlock - 1) / kRowsPerLaunchBlock), kRowsPerBlock * 32>>>(
            px, pw, eps, rope, po, pr, N);
}

// Forward of narrow rows (D in {16, 32, 64, 128}), with the rotation when rope.table is set.
template <bool Rope, typename OutT>
void narrow_forward(const float* px, const float* pw, float eps, const NarrowRope& rope, OutT* po, float* pr,
                    int64_t N, int64_t D) {
    if (D == 16) launch_narrow_forward<4, Rope>(px, pw, eps, rope, po, pr, N);
    else if (D == 32) launch_narrow_forward<8, Rope>(px, pw, eps, rope, po, pr, N);
    else if (D == 64) launch_narrow_forward<16, Rope>(px, pw, eps, rope, po, pr, N);
    else launch_narrow_forward<32, Rope>(px, pw, eps, rope, po, pr, N);
    HSA_CUDA_CHECK_LAUNCH("rmsnorm_forward_narrow_kernel");
}

template <int L, bool Rope>
void launch_narrow_backward(const float* px, const float* pw, const float* pr, const float* pg, const NarrowRope& rope,
                            float* pgx, __nv_bfloat16* pgx16, int64_t N, int64_t blocks, int64_t rows_per_block,
                            double* partial, bool accumulate) {
    rmsnorm_backward_narrow_kernel<L, Rope><<<static_cast<unsigned>(blocks), kRowsPerBlock * 32>>>(
        px, pw, pr, pg, rope, pgx, pgx16, N, rows_per_block, partial, accumulate);
}

unsigned warp_row_grid(int64_t N) { return static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock); }

// The wide kernel into out's dtype (f32, or bf16 for a product operand); with Residual,
// x + a is also written to sum. The caller has checked wide_rows.
template <bool Residual>
void launch_wide_forward(const float* x, const float* a, float* sum, const float* w, float eps, Tensor& out,
                         float* inv_rms, int64_t N, int64_t D) {
    if (out.dtype() == DType::BF16)
        rmsnorm_forward_wide_kernel<Residual><<<warp_row_grid(N), kRowsPerBlock * 32>>>(
            x, a, sum, w, eps, static_cast<__nv_bfloat16*>(out.raw_data()), inv_rms, N, D);
    else
        rmsnorm_forward_wide_kernel<Residual><<<warp_row_grid(N), kRowsPerBlock * 32>>>(
            x, a, sum, w, eps, out.data<float>(), inv_rms, N, D);
    HSA_CUDA_CHECK_LAUNCH("rmsnorm_forward_wide_kernel");
}

template <bool Vec>
__global__ void rmsnorm_forward_kernel(const float* x, const float* w, float eps, float* out, float* inv_rms,
                                       int64_t N, int64_t D) {
    __shared__ double shared[32];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float* xr = x + n * D;
        float* orow = out + n * D;
        double ss = 0.0;
        if (Vec) {
            const float4* x4 = reinterpret_cast<const float4*>(xr);
            for (int64_t k = threadIdx.x; k < D / 4; k += blockDim.x) {
                const float4 v = x4[k];
                ss += static_cast<double>(v.x) * v.x;
                ss += static_cast<double>(v.y) * v.y;
                ss += static_cast<double>(v.z) * v.z;
                ss += static_cast<double>(v.w) * v.w;
            }
        } else {
            for (int64_t j = threadIdx.x; j < D; j += blockDim.x) ss += static_cast<double>(xr[j]) * xr[j];
        }
        ss = block_sum(ss, shared);  // ends with a barrier: out may alias x
        const double r = 1.0 / sqrt(ss / static_cast<double>(D) + static_cast<double>(eps));
        if (threadIdx.x == 0) inv_rms[n] = static_cast<float>(r);
        if (Vec) {
            const float4* x4 = reinterpret_cast<const float4*>(xr);
            float4* o4 = reinterpret_cast<float4*>(orow);
            for (int64_t k = threadIdx.x; k < D / 4; k += blockDim.x) {
                const float4 v = x4[k];
                const int64_t j = 4 * k;
                float4 o;
                o.x = static_cast<float>(static_cast<double>(v.x) * r * wval(w, j));
                o.y = static_cast<float>(static_cast<double>(v.y) * r * wval(w, j + 1));
                o.z = static_cast<float>(static_cast<double>(v.z) * r * wval(w, j + 2));
                o.w = static_cast<float>(static_cast<double>(v.w) * r * wval(w, j + 3));
                o4[k] = o;
            }
        } else {
            for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
                orow[j] = static_cast<float>(static_cast<double>(xr[j]) * r * wval(w, j));
        }
    }
}

// dx_j = r w_j g_j - x_j r^3 / D * sum_k g_k w_k x_k   (all in double, as the CPU reference).
__global__ void rmsnorm_backward_x_kernel(const float* x, const float* w, const float* inv_rms, const float* g,
                                          float* dx, int64_t N, int64_t D, bool accumulate) {
    __shared__ double shared[32];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float* xr = x + n * D;
        const float* gr = g + n * D;
        float* dr = dx + n * D;
        const double r = static_cast<double>(inv_rms[n]);
        double dot = 0.0;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
            dot += static_cast<double>(gr[j]) * wval(w, j) * static_cast<double>(xr[j]);
        dot = block_sum(dot, shared);  // ends with a barrier: dx may alias g or x
        const double c = dot * r * r * r / static_cast<double>(D);
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
            const double gw = static_cast<double>(gr[j]) * wval(w, j);
            const float value = static_cast<float>(r * gw - static_cast<double>(xr[j]) * c);
            dr[j] = accumulate ? dr[j] + value : value;
        }
    }
}

// Block (column tile, split s): partial[s, j] = sum over rows [s*chunk, (s+1)*chunk) of g x r.
__global__ void rmsnorm_grad_weight_partial_kernel(const float* x, const float* inv_rms, const float* g, int64_t N,
                                                   int64_t D, int64_t chunk, double* partial) {
    const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (j >= D) return;
    const int64_t s = blockIdx.y;
    const int64_t begin = s * chunk;
    const int64_t end = begin + chunk < N ? begin + chunk : N;
    double acc = 0.0;
    for (int64_t n = begin; n < end; ++n)
        acc += static_cast<double>(g[n * D + j]) * static_cast<double>(x[n * D + j]) * static_cast<double>(inv_rms[n]);
    partial[s * D + j] = acc;
}

// dw[j] = sum over s of partial[s, j]. A block owns C columns (C a power of two, from
// combine_columns: at least ~128 blocks for the hidden 1024, so every SM reads) and its
// 1024 threads are (split lane r, column c): thread r*C + c sums splits r, r + R, r + 2R,
// ... (R = 1024 / C) in four chains, then the block adds its R sums a column in a fixed
// tree: bit-identical run to run. With 32 columns a block the 1024 x 1024 combine ran on
// 32 SMs at ~0.5 TB/s (16 us, 42 calls a step; docs/PERF.md version 55).
constexpr int kCombineThreads = 1024;

__global__ void __launch_bounds__(kCombineThreads)
    rmsnorm_grad_weight_combine_kernel(const double* partial, int64_t splits, int64_t D, int columns, float* dw) {
    __shared__ double sums[kCombineThreads];
    const int c = static_cast<int>(threadIdx.x) & (columns - 1), r = static_cast<int>(threadIdx.x) / columns;
    const int lanes = kCombineThreads / columns;
    const int64_t j = static_cast<int64_t>(blockIdx.x) * columns + c;
    double acc = 0.0;
    if (j < D) {
        // Four independent chains keep four loads in flight; added in a fixed order.
        double c0 = 0.0, c1 = 0.0, c2 = 0.0, c3 = 0.0;
        const int64_t R = lanes;
        int64_t s = r;
        for (; s + 3 * R < splits; s += 4 * R) {
            c0 += partial[s * D + j];
            c1 += partial[(s + R) * D + j];
            c2 += partial[(s + 2 * R) * D + j];
            c3 += partial[(s + 3 * R) * D + j];
        }
        for (; s < splits; s += R) c0 += partial[s * D + j];
        acc = (c0 + c1) + (c2 + c3);
    }
    sums[threadIdx.x] = acc;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {  // lane r adds lane r + half, same column
        if (r < half) sums[threadIdx.x] += sums[threadIdx.x + half * columns];
        __syncthreads();
    }
    if (r == 0 && j < D) dw[j] = static_cast<float>(sums[c]);
}

// Columns a combine block owns: 8 (64-byte runs of each split's row) for wide rows, fewer
// for narrow ones so that D / C blocks still spread over the SMs (one for D <= 128).
int combine_columns(int64_t D) {
    int columns = 1;
    while (columns < 8 && D / (2 * columns) >= 128) columns *= 2;
    return columns;
}

void launch_combine(const double* partial, int64_t splits, int64_t D, float* dw) {
    const int columns = combine_columns(D);
    rmsnorm_grad_weight_combine_kernel<<<static_cast<unsigned>((D + columns - 1) / columns), kCombineThreads>>>(
        partial, splits, D, columns, dw);
    HSA_CUDA_CHECK_LAUNCH("rmsnorm_grad_weight_combine_kernel");
}

// Widest row of the fused backward (16 columns a lane). Wider rows (the hidden 1024) held
// x, g and the old dx in 96 registers a lane, which left one block per SM (255 registers,
// spills): 0.36-0.55 ms a call at 32768 x 1024 on an H200. Rows up to 1024 wide take the
// float4 wide kernel; wider or unaligned ones the x kernel (one warp per row) and the split
// column-sum kernel, which read x and g twice.
constexpr int64_t kFusedMax = 512;

template <int M>
void launch_fused(const float* px, const float* pw, const float* pr, const float* pg, float* pgx, int64_t N, int64_t D,
                  int64_t blocks, int64_t rows_per_block, double* partial, size_t shared_bytes, bool accumulate) {
    allow_shared_bytes("rmsnorm_backward", rmsnorm_backward_fused_kernel<M>, shared_bytes);
    rmsnorm_backward_fused_kernel<M><<<static_cast<unsigned>(blocks), kRowsPerBlock * 32, shared_bytes>>>(
        px, pw, pr, pg, pgx, N, D, rows_per_block, partial, accumulate);
    HSA_CUDA_CHECK_LAUNCH("rmsnorm_backward_fused_kernel");
}

// The row blocks of a backward pass that also sums the weight gradient's columns: at most
// 1024 blocks of rows_per_block rows, both from N only (reproducible); when the gradient is
// wanted, partial [blocks, D] doubles for the blocks' column sums, which combine() adds in
// a fixed order into grad_weight.
struct ColumnPartials {
    int64_t blocks, rows_per_block;
    Tensor scratch;
    double* partial = nullptr;

    ColumnPartials(int64_t N, int64_t rows_unit, int64_t D, bool wanted) {
        blocks = std::min<int64_t>(1024, (N + rows_unit - 1) / rows_unit);
        rows_per_block = (N + blocks - 1) / blocks;
        if (wanted) {
            scratch = Tensor::empty({blocks * D}, DType::I64, Device::CUDA);
            partial = static_cast<double*>(scratch.raw_data());
        }
    }
    void combine(int64_t D, float* grad_weight) const {
        if (partial == nullptr) return;
        launch_combine(partial, blocks, D, grad_weight);
    }
};

// Backward of narrow rows (N > 0): dx, and the weight gradient when pgw is set.
template <bool Rope>
void narrow_backward(const float* px, const float* pw, const float* pr, const float* pg, const NarrowRope& rope,
                     float* pgx, float* pgw, int64_t N, int64_t D, bool accumulate, __nv_bfloat16* pgx16 = nullptr) {
    // Blocks of at least 64 rows (two passes of their 32-row slots at D 64), at most 1024
    // blocks: with 256 rows a block the model's k norm (32768 rows, 8 MB) ran 128 blocks of
    // 8 dependent passes, 28 us a call (docs/PERF.md version 58). q's 524288 rows fill the
    // 1024 blocks either way.
    const ColumnPartials cols(N, 64, D, pgw != nullptr);
    const int64_t blocks = cols.blocks, rows_per_block = cols.rows_per_block;
    double* partial = cols.partial;
    if (D == 16) launch_narrow_backward<4, Rope>(px, pw, pr, pg, rope, pgx, pgx16, N, blocks, rows_per_block, partial, accumulate);
    else if (D == 32) launch_narrow_backward<8, Rope>(px, pw, pr, pg, rope, pgx, pgx16, N, blocks, rows_per_block, partial, accumulate);
    else if (D == 64) launch_narrow_backward<16, Rope>(px, pw, pr, pg, rope, pgx, pgx16, N, blocks, rows_per_block, partial, accumulate);
    else launch_narrow_backward<32, Rope>(px, pw, pr, pg, rope, pgx, pgx16, N, blocks, rows_per_block, partial, accumulate);
    HSA_CUDA_CHECK_LAUNCH("rmsnorm_backward_narrow_kernel");
    cols.combine(D, pgw);
}

// The fused path: head dim 16..128 (narrow rows), contiguous 16-byte aligned data, a table
// of at most kRopeTableMax entries.
bool rmsnorm_rope_fused(const Tensor& x, const Tensor& weight, std::initializer_list<const Tensor*> others) {
    if (x.ndim() != 4 || !x.is_contiguous() || x.dtype() != DType::F32 || x.device() != Device::CUDA) return false;
    const int64_t d = x.size(3);
    if (!narrow_row(d) || x.size(1) * (d / 2) > kRopeTableMax) return false;
    if (weight.defined() && (weight.numel() != d || !aligned16(weight.raw_data()))) return false;
    for (const Tensor* t : others)
        if (t && t->defined() && (!t->is_contiguous() || t->shape() != x.shape() || !aligned16(t->raw_data())))
            return false;
    return aligned16(x.raw_data());
}

// The tables by (device, T, half, offset, base), each a pure function of its key: computed
// once rather than on every call (56 calls a step at the paper's shape, 5.5 us each in
// double; docs/PERF.md version 55). Dropped all at once past kRopeCacheBytes (evaluation
// with ever-new offsets then recomputes, as before); a caller's Tensor keeps its table alive
// and the stream orders any reuse of the memory. Heap-held and never destroyed, so no CUDA
// memory is freed during static destruction, after the runtime may have shut down.
constexpr size_t kRopeCacheBytes = size_t{64} << 20;

Tensor rope_table(int64_t T, int64_t half, int64_t position_offset, float base) {
    using Key = std::tuple<int, int64_t, int64_t, int64_t, float>;
    static std::mutex mutex;
    static auto* cache = new std::map<Key, Tensor>();
    static size_t cached_bytes = 0;
    int device = 0;
    HSA_CUDA_CHECK(cudaGetDevice(&device));
    const Key key{device, T, half, position_offset, base};
    std::lock_guard<std::mutex> lock(mutex);
    if (const auto found = cache->find(key); found != cache->end()) return found->second;
    Tensor table = Tensor::empty({T * half * 2}, DType::F32, Device::CUDA);
    const int64_t n = T * half;
    rope_table_kernel<<<blocks_for(n, 256), 256>>>(reinterpret_cast<float2*>(table.raw_data()), T, half,
                                                   position_offset, static_cast<double>(base));
    HSA_CUDA_CHECK_LAUNCH("rope_table_kernel");
    if (cached_bytes + table.nbytes() > kRopeCacheBytes) {
        cache->clear();
        cached_bytes = 0;
    }
    if (table.nbytes() <= kRopeCacheBytes) {
        cache->emplace(key, table);
        cached_bytes += table.nbytes();
    }
    return table;
}

}  // namespace


void CudaBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& out, Tensor& inv_rms) {
    const checks::RmsNormDims dims = checks::check_rmsnorm(x, weight, out, inv_rms, Device::CUDA);
    const int64_t D = dims.D, N = dims.N;
    if (N == 0) return;
    const float* px = x.data<float>();
    float* pr = inv_rms.data<float>();
    const float* pw = weight.defined() ? weight.data<float>() : nullptr;
    if (wide_rows(N, D, {px, out.raw_data(), pw})) {  // f32 or bf16 out, written directly
        launch_wide_forward<false>(px, nullptr, nullptr, pw, eps, out, pr, N, D);
        return;
    }
    if (out.dtype() == DType::BF16) {  // other rows: the f32 result rounded into it
        Tensor f32 = Tensor::empty(out.shape(), DType::F32, Device::CUDA);
        rmsnorm_forward(x, weight, eps, f32, inv_rms);
        round_into_bf16(f32, out);
        return;
    }
    float* po = out.data<float>();
    if (narrow_row(D) && aligned16(px) && aligned16(po) && (pw == nullptr || aligned16(pw)) &&
        N < (int64_t{1} << 36)) {
        narrow_forward<false>(px, pw, eps, NarrowRope{}, po, pr, N, D);
        return;
    }
    if (D <= kWarpRowMax && N < (int64_t{1} << 34)) {
        rmsnorm_forward_warp_kernel<<<warp_row_grid(N), kRowsPerBlock * 32>>>(px, pw, eps, po, pr, N, D);
    } else if (D % 4 == 0 && aligned16(px) && aligned16(po)) {
        rmsnorm_forward_kernel<true><<<row_grid(N), row_threads(D / 4)>>>(px, pw, eps, po, pr, N, D);
    } else {
        rmsnorm_forward_kernel<false><<<row_grid(N), row_threads(D)>>>(px, pw, eps, po, pr, N, D);
    }
    HSA_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

// The residual add and the norm in one pass for the wide rows (the model's hidden size):
// x and a are read once, sum and out written; elsewhere the two ops.
void CudaBackend::add_rmsnorm_forward(const Tensor& x, const Tensor& a, const Tensor& weight, float eps, Tensor& sum,
                                      Tensor& out, Tensor& inv_rms) {
    const checks::RmsNormDims dims = checks::check_rmsnorm(x, weight, out, inv_rms, Device::CUDA);
    const int64_t D = dims.D, N = dims.N;
    checks::check_tensor("add_rmsnorm", "a", a, x.shape(), DType::F32, Device::CUDA);
    checks::check_tensor("add_rmsnorm", "sum", sum, x.shape(), DType::F32, Device::CUDA);
    const float* pw = weight.defined() ? weight.data<float>() : nullptr;
    const bool wide = a.is_contiguous() && sum.is_contiguous() &&
                      wide_rows(N, D, {x.raw_data(), a.raw_data(), sum.raw_data(), out.raw_data(), pw});
    if (!wide) {
        Backend::add_rmsnorm_forward(x, a, weight, eps, sum, out, inv_rms);
        return;
    }
    if (N == 0) return;
    launch_wide_forward<true>(x.data<float>(), a.data<float>(), sum.data<float>(), pw, eps, out, inv_rms.data<float>(),
                              N, D);
}

namespace {
// The wide rows' fused backward (D in (kFusedMax, 128 * kWideM], multiple of 4, 16-byte
// aligned): true when it applies to these operands.
bool wide_backward(const float* px, const float* pw, const float* pg, const float* pgx, int64_t N, int64_t D) {
    return pgx && N > 0 && D > kFusedMax && D <= 128 * kWideM && D % 4 == 0 && aligned16(px) && aligned16(pg) &&
           aligned16(pgx) && (pw == nullptr || aligned16(pw));
}
}  // namespace

// At bf16 precision, on the wide rows' path (the hidden size: the residual stream), the
// kernel stores each dx value also rounded to bf16 (8 more bytes a row of 4): 67 MB more
// written at 32768 x 1024, where a separate rounding pass reads the 134 MB dx again.
Tensor CudaBackend::rmsnorm_backward_rounded(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                             const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                                             bool accumulate_x) {
    Tensor rounded;
    if (matmul_precision() == MatmulPrecision::BF16 && grad_x.defined()) {
        const checks::RmsNormDims dims =
            checks::check_rmsnorm_backward(x, weight, inv_rms, grad_out, grad_x, grad_weight, Device::CUDA);
        if (wide_backward(x.data<float>(), weight.defined() ? weight.data<float>() : nullptr, grad_out.data<float>(),
                          grad_x.data<float>(), dims.N, dims.D))
            rounded = Tensor::empty({dims.N, dims.D}, DType::BF16, Device::CUDA);
    }
    rmsnorm_backward_into(x, weight, inv_rms, grad_out, grad_x, grad_weight, accumulate_x,
                          rounded.defined() ? rounded.raw_data() : nullptr);
    return rounded;
}

void CudaBackend::rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                   const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, bool accumulate_x) {
    rmsnorm_backward_into(x, weight, inv_rms, grad_out, grad_x, grad_weight, accumulate_x, nullptr);
}

void CudaBackend::rmsnorm_backward_into(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                                        bool accumulate_x, void* grad_x16) {
    const checks::RmsNormDims dims =
        checks::check_rmsnorm_backward(x, weight, inv_rms, grad_out, grad_x, grad_weight, Device::CUDA);
    const int64_t D = dims.D, N = dims.N;
    const float* px = x.data<float>();
    const float* pr = inv_rms.data<float>();
    const float* pg = grad_out.data<float>();
    const float* pw = weight.defined() ? weight.data<float>() : nullptr;
    float* pgx = grad_x.defined() ? grad_x.data<float>() : nullptr;
    float* pgw = grad_weight.defined() ? grad_weight.data<float>() : nullptr;
    if (pgx && N > 0 && narrow_row(D) && aligned16(px) && aligned16(pg) && aligned16(pgx) &&
        (pw == nullptr || aligned16(pw))) {
        narrow_backward<false>(px, pw, pr, pg, NarrowRope{}, pgx, pgw, N, D, accumulate_x);
        return;
    }
    if (pgx && pgw && N > 0 && D <= kFusedMax) {
        const ColumnPartials cols(N, kRowsPerBlock, D, true);
        const int64_t blocks = cols.blocks, rows_per_block = cols.rows_per_block;
        double* partial = cols.partial;
        const size_t shared_bytes = sizeof(double) * kRowsPerBlock * static_cast<size_t>(D);
        const int m = static_cast<int>((D + 31) / 32);
        if (m <= 1) launch_fused<1>(px, pw, pr, pg, pgx, N, D, blocks, rows_per_block, partial, shared_bytes, accumulate_x);
        else if (m <= 2) launch_fused<2>(px, pw, pr, pg, pgx, N, D, blocks, rows_per_block, partial, shared_bytes, accumulate_x);
        else if (m <= 4) launch_fused<4>(px, pw, pr, pg, pgx, N, D, blocks, rows_per_block, partial, shared_bytes, accumulate_x);
        else if (m <= 8) launch_fused<8>(px, pw, pr, pg, pgx, N, D, blocks, rows_per_block, partial, shared_bytes, accumulate_x);
        else launch_fused<16>(px, pw, pr, pg, pgx, N, D, blocks, rows_per_block, partial, shared_bytes, accumulate_x);
        cols.combine(D, pgw);
        return;
    }
    if (wide_backward(px, pw, pg, pgx, N, D)) {
        const ColumnPartials cols(N, kWideWarps, D, pgw != nullptr);
        const size_t shared_bytes = sizeof(float) * kWideWarps * static_cast<size_t>(D);
        rmsnorm_backward_wide_kernel<<<static_cast<unsigned>(cols.blocks), kWideWarps * 32, shared_bytes>>>(
            px, pw, pr, pg, pgx, static_cast<__nv_bfloat16*>(grad_x16), N, D, cols.rows_per_block, cols.partial,
            accumulate_x);
        HSA_CUDA_CHECK_LAUNCH("rmsnorm_backward_wide_kernel");
        cols.combine(D, pgw);
        return;
    }
    if (pgx && N > 0) {
        if (D <= kWarpRowMax && N < (int64_t{1} << 34))
            rmsnorm_backward_x_warp_kernel<<<warp_row_grid(N), kRowsPerBlock * 32>>>(px, pw, pr, pg, pgx, N, D,
                                                                                     accumulate_x);
        else
            rmsnorm_backward_x_kernel<<<row_grid(N), row_threads(D)>>>(px, pw, pr, pg, pgx, N, D, accumulate_x);
        HSA_CUDA_CHECK_LAUNCH("rmsnorm_backward_x_kernel");
    }
    if (pgw) {
        // Enough (split, column) threads to fill the GPU, at least 32 rows per split; the
        // split depends on N and D only, so the result is reproducible.
        constexpr int64_t kTargetThreads = int64_t{1} << 17;
        constexpr int64_t kMinRowsPerSplit = 32;
        int64_t splits = (kTargetThreads + D - 1) / D;
        const int64_t by_rows = (N + kMinRowsPerSplit - 1) / kMinRowsPerSplit;
        if (splits > by_rows) splits = by_rows;
        if (splits > 65535) splits = 65535;
        if (splits < 1) splits = 1;
        const int64_t chunk = N == 0 ? 0 : (N + splits - 1) / splits;
        if (chunk > 0) splits = (N + chunk - 1) / chunk;
        Tensor scratch = Tensor::empty({splits * D}, DType::I64, Device::CUDA);
        double* partial = static_cast<double*>(scratch.raw_data());
        const int threads = 256;
        const dim3 grid(blocks_for(D, threads), static_cast<unsigned>(splits));
        rmsnorm_grad_weight_partial_kernel<<<grid, threads>>>(px, pr, pg, N, D, chunk, partial);
        HSA_CUDA_CHECK_LAUNCH("rmsnorm_grad_weight_partial_kernel");
        launch_combine(partial, splits, D, pgw);
    }
}

void CudaBackend::rmsnorm_rope_forward(const Tensor& x, const Tensor& weight, float eps, int64_t position_offset,
                                       float base, Tensor& out, Tensor& inv_rms) {
    const checks::RopeDims dims = checks::check_rope("rmsnorm_rope", x, base, out, Device::CUDA, /*out_may_be_bf16=*/true);
    const bool to_bf16 = out.dtype() == DType::BF16;
    if (!rmsnorm_rope_fused(x, weight, {&out}) || !inv_rms.is_contiguous()) {
        if (to_bf16) {  // the f32 composition's result, rounded once
            Tensor f32 = Tensor::empty(out.shape(), DType::F32, Device::CUDA);
            Backend::rmsnorm_rope_forward(x, weight, eps, position_offset, base, f32, inv_rms);
            round_into_bf16(f32, out);
            return;
        }
        Backend::rmsnorm_rope_forward(x, weight, eps, position_offset, base, out, inv_rms);
        return;
    }
    const int64_t d = dims.d, N = dims.B * dims.T * dims.H;
    checks::check_tensor("rmsnorm_rope", "inv_rms", inv_rms, {N}, DType::F32, Device::CUDA);
    if (N == 0) return;
    const Tensor table = rope_table(dims.T, d / 2, position_offset, base);
    const auto* pt = reinterpret_cast<const float2*>(table.raw_data());
    const float* pw = weight.defined() ? weight.data<float>() : nullptr;
    const NarrowRope rope{pt, dims.T, dims.H};
    if (to_bf16)
        narrow_forward<true>(x.data<float>(), pw, eps, rope, static_cast<__nv_bfloat16*>(out.raw_data()),
                             inv_rms.data<float>(), N, d);
    else
        narrow_forward<true>(x.data<float>(), pw, eps, rope, out.data<float>(), inv_rms.data<float>(), N, d);
}

void CudaBackend::rmsnorm_rope_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                        int64_t position_offset, float base, const Tensor& grad_out, Tensor& grad_x,
                                        Tensor& grad_weight, bool accumulate_x) {
    rmsnorm_rope_backward_into(x, weight, inv_rms, position_offset, base, grad_out, grad_x, grad_weight, accumulate_x,
                               nullptr);
}

// At bf16 precision on the fused path, dx also rounded to bf16 by the same kernel (see
// rmsnorm_backward_rounded): the q projection's backward then skips its rounding pass.
Tensor CudaBackend::rmsnorm_rope_backward_rounded(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                                  int64_t position_offset, float base, const Tensor& grad_out,
                                                  Tensor& grad_x, Tensor& grad_weight, bool accumulate_x) {
    Tensor rounded;
    if (matmul_precision() == MatmulPrecision::BF16 && grad_x.defined() &&
        rmsnorm_rope_fused(x, weight, {&grad_out, &grad_x}) && inv_rms.is_contiguous() && x.numel() > 0)
        rounded = Tensor::empty(grad_x.shape(), DType::BF16, Device::CUDA);
    rmsnorm_rope_backward_into(x, weight, inv_rms, position_offset, base, grad_out, grad_x, grad_weight, accumulate_x,
                               rounded.defined() ? rounded.raw_data() : nullptr);
    return rounded;
}

// x's gradient as the q projection's backward takes it: at bf16 precision on the fused path
// only its bf16 rounding is written (the f32 values, which nothing would read, are not:
// 134 MB a layer at the paper's shape; docs/PERF.md version 58), elsewhere the default's f32.
Tensor CudaBackend::rmsnorm_rope_backward_operand(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                                  int64_t position_offset, float base, const Tensor& grad_out,
                                                  Tensor& grad_weight) {
    if (matmul_precision() != MatmulPrecision::BF16 || !rmsnorm_rope_fused(x, weight, {&grad_out}) ||
        !inv_rms.is_contiguous() || x.numel() == 0)
        return Backend::rmsnorm_rope_backward_operand(x, weight, inv_rms, position_offset, base, grad_out,
                                                      grad_weight);
    Tensor rounded = Tensor::empty(x.shape(), DType::BF16, Device::CUDA);
    Tensor no_f32;
    rmsnorm_rope_backward_into(x, weight, inv_rms, position_offset, base, grad_out, no_f32, grad_weight, false,
                               rounded.raw_data());
    return rounded;
}

void CudaBackend::rmsnorm_rope_backward_into(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                             int64_t position_offset, float base, const Tensor& grad_out,
                                             Tensor& grad_x, Tensor& grad_weight, bool accumulate_x,
                                             void* grad_x16) {
    const checks::RopeDims dims = checks::check_rope("rmsnorm_rope_backward", grad_out, base, grad_out, Device::CUDA);
    // grad_x undefined with grad_x16 set: the bf16 gradient alone (the caller has checked
    // that the fused path applies).
    const bool rounded_only = !grad_x.defined() && grad_x16 != nullptr;
    if (!rounded_only &&
        (!grad_x.defined() || !rmsnorm_rope_fused(x, weight, {&grad_out, &grad_x}) || !inv_rms.is_contiguous())) {
        Backend::rmsnorm_rope_backward(x, weight, inv_rms, position_offset, base, grad_out, grad_x, grad_weight,
                                       accumulate_x);
        return;
    }
    const int64_t d = dims.d, N = dims.B * dims.T * dims.H;
    checks::check_tensor("rmsnorm_rope_backward", "inv_rms", inv_rms, {N}, DType::F32, Device::CUDA);
    float* pgw = grad_weight.defined() ? cuda_f32(grad_weight, "rmsnorm_rope_backward", "grad_weight") : nullptr;
    if (pgw) checks::check_tensor("rmsnorm_rope_backward", "grad_weight", grad_weight, {d}, DType::F32, Device::CUDA);
    if (N == 0) {
        if (pgw) HSA_CUDA_CHECK(cudaMemsetAsync(pgw, 0, sizeof(float) * d));
        return;
    }
    const Tensor table = rope_table(dims.T, d / 2, position_offset, base);
    const auto* pt = reinterpret_cast<const float2*>(table.raw_data());
    const float* pw = weight.defined() ? weight.data<float>() : nullptr;
    narrow_backward<true>(x.data<float>(), pw, inv_rms.data<float>(), grad_out.data<float>(),
                          NarrowRope{pt, dims.T, dims.H}, rounded_only ? nullptr : grad_x.data<float>(), pgw, N, d,
                          accumulate_x && !rounded_only, static_cast<__nv_bfloat16*>(grad_x16));
}

}  // namespace hsa
