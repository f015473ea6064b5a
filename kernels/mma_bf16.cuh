// Tensor-core building blocks shared by the bf16 kernels (kernels/hsa_forward_v1.cu,
// hsa_backward_v1.cu, attention_tc.cu): packing f32 pairs to bf16, cp.async copies into shared memory,
// ldmatrix loads of B fragments from shared tiles, the m16n8k16 MMA, and reductions over
// the 4 lanes of a quad.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point
// type"), lane = 4 * groupID + tig (threadID_in_group):
//   A 16x16 (row): reg0 = (row gid,   cols 2tig, 2tig+1), reg1 = (row gid+8, same cols),
//                  reg2 = (row gid,   cols 2tig+8, +9),  reg3 = (row gid+8, cols 2tig+8, +9)
//   B 16x8 (col):  reg0 = (rows 2tig, 2tig+1; col gid), reg1 = (rows 2tig+8, +9; col gid)
//   C/D 16x8 f32:  c0, c1 = (row gid, cols 2tig, 2tig+1), c2, c3 = (row gid+8, same cols)
// In every packed register the lower-indexed element sits in the low 16 bits. The C layout
// of two adjacent n-tiles is exactly the A layout of one k-step (pack_c_as_a), which is how
// a softmax's probabilities feed the next product without leaving registers.
// ldmatrix.m8n8.x4: lane l gives the address of row (l & 7) of matrix (l >> 3) and gets,
// of each matrix i, register i = (row l / 4, cols 2 (l % 4), +1); with .trans it gets
// (rows 2 (l % 4), +1; col l / 4) instead, i.e. the B fragment of a row-major [k][n] tile.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace hsa::mma {

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo, .y = hi
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t shared_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// cp.async of 16 bytes global -> shared, bypassing L1 (.cg); valid = false writes 16 zero
// bytes and reads nothing (src-size 0), which is how tiles are padded past the last row.
__device__ __forceinline__ void cp_async_16(uint32_t shared_dst, const void* global_src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_dst), "l"(global_src),
                 "r"(src_bytes));
}

// cp.async of 4 bytes (.ca: the 4-byte form); valid = false writes zero.
__device__ __forceinline__ void cp_async_4(uint32_t shared_dst, const void* global_src, bool valid) {
    const int src_bytes = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared_dst), "l"(global_src),
                 "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `pending` committed groups of this thread are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// c += a b for one 16x8x16 tile.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x as one MUFU.EX2 (ex2.approx.ftz). exp2f compiles to ex2.approx without .ftz, which
// adds a compare and two multiplies an element to return results below 2^-126 as
// denormals; in a softmax such a probability adds nothing next to the row's largest term
// (1), so flushing it to 0 is harmless and saves the softmax loops' ALU / FMA issue slots.
// Results of 2^-126 and above are the same bits as exp2f's.
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The A fragments of k-step ks from the f32 C tiles 2 ks and 2 ks + 1 (16 x 16 values).
__device__ __forceinline__ void pack_c_as_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// Lane offset (in bf16 elements) of the ldmatrix.x4 that reads B fragments of a row-major
// [n][k] shared tile (stride ld): matrix i = lane >> 3 is rows 8j + (lane & 7) at columns
// 16 kk + 8 i, so one call at + (8 j ld + 16 kk) gives {b0 b1} of (n-tile j, k-step kk) and
// {b2 b3} of (j, kk + 1).
__device__ __forceinline__ int b_from_nk_lane_offset(int lane, int ld) { return (lane & 7) * ld + (lane >> 3) * 8; }
// Lane offset of the ldmatrix.x4.trans that reads B fragments of a row-major [k][n] tile:
// one call at + (16 ks ld + 8 n) gives {b0 b1} of (k-step ks, n-tile n) and {b2 b3} of
// (ks, n + 1).
__device__ __forceinline__ int b_from_kn_lane_offset(int lane, int ld) { return (lane & 15) * ld + (lane >> 4) * 8; }
// Lane offset of the ldmatrix.x4 (no .trans) that reads the A fragments of 16 rows of a
// row-major [rows][k] tile: one call at + 16 kk gives reg0..reg3 of k-step kk (lanes 0-15
// rows 0-15 at column 0, lanes 16-31 the same rows at column 8). The same offset as
// b_from_kn_lane_offset; named apart for what it reads.
__device__ __forceinline__ int a_from_rows_lane_offset(int lane, int ld) { return b_from_kn_lane_offset(lane, ld); }

// The A fragments (16 x D, all k-steps) of rows ra and ra + 8 of a [rows][D] f32 matrix;
// zeros for rows at or past T.
template <int D>
__device__ __forceinline__ void load_a_rows(const float* __restrict__ base, int64_t stride, int ra, int T, int tig,
                                            uint32_t (&f)[D / 16][4]) {
    const int rb = ra + 8;
    const bool va = ra < T, vb = rb < T;
    const float* pa = base + static_cast<int64_t>(va ? ra : 0) * stride + 2 * tig;
    const float* pb = base + static_cast<int64_t>(vb ? rb : 0) * stride + 2 * tig;
    const float2 zero = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const float2 a_lo = va ? __ldg(reinterpret_cast<const float2*>(pa + 16 * kk)) : zero;
        const float2 a_hi = va ? __ldg(reinterpret_cast<const float2*>(pa + 16 * kk + 8)) : zero;
        const float2 b_lo = vb ? __ldg(reinterpret_cast<const float2*>(pb + 16 * kk)) : zero;
        const float2 b_hi = vb ? __ldg(reinterpret_cast<const float2*>(pb + 16 * kk + 8)) : zero;
        f[kk][0] = pack_bf16(a_lo.x, a_lo.y);
        f[kk][1] = pack_bf16(b_lo.x, b_lo.y);
        f[kk][2] = pack_bf16(a_hi.x, a_hi.y);
        f[kk][3] = pack_bf16(b_hi.x, b_hi.y);
    }
}

// The same fragments from a [rows][D] bf16 matrix (no rounding: the values are bf16).
template <int D>
__device__ __forceinline__ void load_a_rows_bf16(const __nv_bfloat16* __restrict__ base, int64_t stride, int ra,
                                                 int T, int tig, uint32_t (&f)[D / 16][4]) {
    const int rb = ra + 8;
    const bool va = ra < T, vb = rb < T;
    const uint32_t* pa = reinterpret_cast<const uint32_t*>(base + static_cast<int64_t>(va ? ra : 0) * stride + 2 * tig);
    const uint32_t* pb = reinterpret_cast<const uint32_t*>(base + static_cast<int64_t>(vb ? rb : 0) * stride + 2 * tig);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        f[kk][0] = va ? __ldg(pa + 8 * kk) : 0u;
        f[kk][1] = vb ? __ldg(pb + 8 * kk) : 0u;
        f[kk][2] = va ? __ldg(pa + 8 * kk + 4) : 0u;
        f[kk][3] = vb ? __ldg(pb + 8 * kk + 4) : 0u;
    }
}

// The A fragments of rows ra and ra + 8 (already bf16, from load_a_rows) back to a [rows][D]
// bf16 matrix (rows at or past T skipped): a kernel that reads f32 rows anyway leaves the
// bf16 copies that a later kernel streams by cp.async.
template <int D>
__device__ __forceinline__ void store_a_rows_bf16(__nv_bfloat16* __restrict__ base, int64_t stride, int ra, int T,
                                                  int tig, const uint32_t (&f)[D / 16][4]) {
    const int rb = ra + 8;
    uint32_t* pa = reinterpret_cast<uint32_t*>(base + static_cast<int64_t>(ra) * stride + 2 * tig);
    uint32_t* pb = reinterpret_cast<uint32_t*>(base + static_cast<int64_t>(rb) * stride + 2 * tig);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        if (ra < T) {
            pa[8 * kk] = f[kk][0];      // cols 16 kk + 2 tig, +1
            pa[8 * kk + 4] = f[kk][2];  // cols 16 kk + 8 + 2 tig, +1
        }
        if (rb < T) {
            pb[8 * kk] = f[kk][1];
            pb[8 * kk + 4] = f[kk][3];
        }
    }
}

// c[j] (16 x N, j = n-tile of 8 columns) = A (registers, 16 x D) times the transpose of an
// [N][D] shared tile (row stride D + 8) read from the lane's ldmatrix address nk_lane.
template <int D, int N>
__device__ __forceinline__ void product_with_tile_transpose(const uint32_t (&a)[D / 16][4], uint32_t nk_lane,
                                                            float (&c)[N / 8][4]) {
    constexpr int kLd = D + 8;
#pragma unroll
    for (int j = 0; j < N / 8; ++j) {
        c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk += 2) {
            uint32_t b[4];
            ldmatrix_x4(b, nk_lane + 2u * static_cast<uint32_t>(8 * j * kLd + 16 * kk));
            mma_bf16_16816(c[j], a[kk], b[0], b[1]);
            mma_bf16_16816(c[j], a[kk + 1], b[2], b[3]);
        }
    }
}

// The same product with A read from shared memory: 16 rows of a row-major [rows][D] tile
// (row stride D + 8) at the lane's address a_lane (a_from_rows_lane_offset), each k-step's
// fragments loaded once (k-steps outer), for kernels whose A does not fit in registers.
// Each c[j] sums its k-steps in the same order as product_with_tile_transpose.
template <int D, int N>
__device__ __forceinline__ void product_with_tile_transpose_shared_a(uint32_t a_lane, uint32_t nk_lane,
                                                                     float (&c)[N / 8][4]) {
    constexpr int kLd = D + 8;
#pragma unroll
    for (int j = 0; j < N / 8; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk += 2) {
        uint32_t a0[4], a1[4];
        ldmatrix_x4(a0, a_lane + 2u * static_cast<uint32_t>(16 * kk));
        ldmatrix_x4(a1, a_lane + 2u * static_cast<uint32_t>(16 * kk + 16));
#pragma unroll
        for (int j = 0; j < N / 8; ++j) {
            uint32_t b[4];
            ldmatrix_x4(b, nk_lane + 2u * static_cast<uint32_t>(8 * j * kLd + 16 * kk));
            mma_bf16_16816(c[j], a0, b[0], b[1]);
            mma_bf16_16816(c[j], a1, b[2], b[3]);
        }
    }
}

// Where the 16 rows x 16 columns of an A operand come from in a product with the transpose
// of a shared tile: registers (all k-steps held) or a shared row-major tile.
template <int D>
struct RegisterRows {
    const uint32_t (&f)[D / 16][4];
    template <int N>
    __device__ __forceinline__ void times_transpose_of(uint32_t nk_lane, float (&c)[N / 8][4]) const {
        product_with_tile_transpose<D, N>(f, nk_lane, c);
    }
};
template <int D>
struct SharedRows {
    uint32_t a_lane;
    template <int N>
    __device__ __forceinline__ void times_transpose_of(uint32_t nk_lane, float (&c)[N / 8][4]) const {
        product_with_tile_transpose_shared_a<D, N>(a_lane, nk_lane, c);
    }
};

// acc (16 x D) += A (registers, 16 x N as N / 16 k-steps) times an [N][D] shared tile (row
// stride D + 8) read
// from the lane's ldmatrix address kn_lane.
template <int D, int N>
__device__ __forceinline__ void accumulate_product_with_tile(const uint32_t (&a)[N / 16][4], uint32_t kn_lane,
                                                             float (&acc)[D / 8][4]) {
    constexpr int kLd = D + 8;
#pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
#pragma unroll
        for (int ks = 0; ks < N / 16; ++ks) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, kn_lane + 2u * static_cast<uint32_t>(16 * ks * kLd + 8 * n));
            mma_bf16_16816(acc[n], a[ks], b[0], b[1]);
            mma_bf16_16816(acc[n + 1], a[ks], b[2], b[3]);
        }
    }
}

// The key-side backward step of one tile of N queries (HSA pass 3):
// given P^T (16 keys x N, the C layout; weights already folded in) in p,
//   dV += P^T dO;  dS^T = P^T * (V dO^T - row_term[query]);  dK += dS^T Q,
// with v_rows the keys' V as an A operand (RegisterRows or SharedRows), dO / Q read from
// [N][D] shared tiles at the lanes' ldmatrix addresses (do_kn, do_nk, q_kn), row_term the N
// queries' delta (od) values. p is overwritten by dS^T.
template <int D, int N, class VRows>
__device__ __forceinline__ void key_side_backward_step(float (&p)[N / 8][4], const VRows& v_rows, uint32_t do_kn,
                                                       uint32_t do_nk, uint32_t q_kn, const float* row_term, int tig,
                                                       float (&dk)[D / 8][4], float (&dv)[D / 8][4]) {
    {
        uint32_t pf[N / 16][4];
#pragma unroll
        for (int ks = 0; ks < N / 16; ++ks) pack_c_as_a(pf[ks], p[2 * ks], p[2 * ks + 1]);
        accumulate_product_with_tile<D, N>(pf, do_kn, dv);  // dV += P^T dO
    }
    float dpt[N / 8][4];
    v_rows.template times_transpose_of<N>(do_nk, dpt);  // V dO^T
#pragma unroll
    for (int j = 0; j < N / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const float term = row_term[8 * j + 2 * tig + e];
            p[j][e] *= dpt[j][e] - term;  // dS^T
            p[j][2 + e] *= dpt[j][2 + e] - term;
        }
    uint32_t dsf[N / 16][4];
#pragma unroll
    for (int ks = 0; ks < N / 16; ++ks) pack_c_as_a(dsf[ks], p[2 * ks], p[2 * ks + 1]);
    accumulate_product_with_tile<D, N>(dsf, q_kn, dk);  // dK += dS^T Q
}

// Two adjacent elements: f32, or bf16 rounded to nearest even (as rounded_bf16_copy).
__device__ __forceinline__ void store_pair(float* p, float x, float y) {
    *reinterpret_cast<float2*>(p) = make_float2(x, y);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}

// Rows ra and ra + 8 of acc times factor_a / factor_b into a [rows][D] f32 or bf16 matrix.
template <int D, class OutT>
__device__ __forceinline__ void store_rows(OutT* __restrict__ base, int64_t stride, int ra, int T, int tig,
                                           const float (&acc)[D / 8][4], float factor_a, float factor_b) {
    const int rb = ra + 8;
    OutT* pa = base + static_cast<int64_t>(ra) * stride + 2 * tig;
    OutT* pb = base + static_cast<int64_t>(rb) * stride + 2 * tig;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        if (ra < T) store_pair(pa + 8 * n, acc[n][0] * factor_a, acc[n][1] * factor_a);
        if (rb < T) store_pair(pb + 8 * n, acc[n][2] * factor_b, acc[n][3] * factor_b);
    }
}

// Starts the cp.async copy of N rows of a [rows][D] bf16 matrix (row j at base + j *
// row_stride) into one warp's shared tile (row stride D + 8); every lane takes part, the
// caller commits, waits and __syncwarp()s before reading.
template <int D, int N>
__device__ __forceinline__ void start_tile_copy_warp(const __nv_bfloat16* __restrict__ base, int64_t row_stride,
                                                     __nv_bfloat16* tile, int lane) {
    constexpr int kLd = D + 8;
    constexpr int kChunksPerRow = D / 8;            // 16-byte chunks
    constexpr int kRowsPerStep = 32 / kChunksPerRow;  // rows one warp-wide step covers
    static_assert(32 % kChunksPerRow == 0 && N % kRowsPerStep == 0, "whole rows a step");
    // Consecutive lanes copy consecutive chunks of a row; each step moves kRowsPerStep rows.
    const int row = lane / kChunksPerRow, col = (lane % kChunksPerRow) * 8;
    const __nv_bfloat16* src = base + row * row_stride + col;
    uint32_t dst = shared_address(tile + row * kLd + col);
#pragma unroll 4  // fully unrolled, the compiler keeps every step's address live and spills
    for (int step = 0; step < N / kRowsPerStep; ++step) {
        cp_async_16(dst, src, true);
        src += kRowsPerStep * row_stride;
        dst += 2u * kRowsPerStep * kLd;
    }
}

}  // namespace hsa::mma
