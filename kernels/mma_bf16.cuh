// Tensor-core building blocks shared by the bf16 kernels (kernels/hsa_forward_v1.cu,
// kernels/attention_tc.cu): packing f32 pairs to bf16, ldmatrix loads of B fragments from
// shared tiles, the m16n8k16 MMA, and reductions over the 4 lanes of a quad.
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

// c += a b for one 16x8x16 tile.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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

}  // namespace hsa::mma
