// Hopper warpgroup matrix products (wgmma.mma_async, sm_90a) for the bf16 kernels: shared
// tiles in the 128-byte swizzled layout wgmma reads (filled by cp.async, SwizzledTileCopier,
// or from A fragments in registers), their matrix descriptors, the m64n64k16 and m64n32k16
// products with A from registers or from shared memory, and the fences and commit / wait of
// the async groups. PTX ISA: "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions".
//
// A warpgroup is 4 consecutive warps (128 threads); wgmma computes a 64-row product, warp w
// of the group holding rows 16 w .. 16 w + 15. Within a warp the A registers and the f32
// accumulators have exactly the mma.m16n8k16 A and C layouts (kernels/mma_bf16.cuh): the
// accumulator of m64nNk16 is float[N / 8][4], n-tile j at index j, so the softmax code and
// pack_c_as_a of the mma.sync kernels work on it unchanged.
//
// Shared tiles: [rows][64] bf16, one 128-byte line a row, 16-byte chunk c of row r stored at
// chunk c ^ (r % 8) (the 128-byte swizzle: address bits 4-6 XOR bits 7-9, so a tile must be
// 1024-byte aligned). Eight rows form a 1024-byte atom. Read as a K-major operand (B = K^T
// for S = Q K^T: the 64 dims are K, contiguous) the product's k-step kk starts 32 kk bytes
// into the tile; read MN-major (B = V for O = P V: the rows are K, the 64 dims N, contiguous;
// trans-b = 1) k-step kk starts 2 atoms (16 rows) = 2048 kk bytes in.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/mma_bf16.cuh"

namespace hsa::wgmma {

constexpr int kWarpgroupThreads = 128;
constexpr uint32_t kSwizzleAtomBytes = 1024;  // 8 rows of 128 bytes

// The byte offset of element (row, col) of a [rows][64] bf16 swizzled tile, col a multiple of 8.
__device__ __forceinline__ uint32_t swizzled_offset(int row, int col) {
    return static_cast<uint32_t>(row * 128 + (((col >> 3) ^ (row & 7)) << 4));
}

// Matrix descriptor of a 128-byte swizzled tile at shared address `address` (PTX ISA, "Matrix
// Descriptor Format"): bits 0-13 start address >> 4, 16-29 leading byte offset >> 4, 32-45
// stride byte offset >> 4, 62-63 swizzle mode (1 = 128-byte). The stride byte offset is the
// distance between 8-row atoms. The leading byte offset is unused by K-major swizzled
// operands and, for MN-major ones, is the distance between 64-element column blocks, which a
// 64-wide tile never crosses; it is set to the atom size too, so that either reading of the
// two fields gives the right layout.
__device__ __forceinline__ uint64_t swizzled_descriptor(uint32_t address) {
    constexpr uint64_t kAtom = kSwizzleAtomBytes >> 4;
    return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (kAtom << 16) | (kAtom << 32) | (uint64_t{1} << 62);
}
// The descriptor advanced by `bytes` (a multiple of 16): only the start address field moves.
__device__ __forceinline__ uint64_t advanced(uint64_t descriptor, uint32_t bytes) { return descriptor + (bytes >> 4); }

// Orders this thread's earlier register writes before the next wgmma reads (accumulators,
// A fragments): required before the first wgmma and after registers it uses were touched.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
// Closes the group of wgmmas issued since the last commit.
__device__ __forceinline__ void commit_group() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most `pending` committed groups are in flight (groups complete in order).
template <int pending>
__device__ __forceinline__ void wait_group() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(pending) : "memory");
}
// Shared memory written by ordinary stores or cp.async (the generic proxy) is read by wgmma
// through the async proxy: each writer fences its own writes before the barrier that
// publishes them.
__device__ __forceinline__ void fence_shared_for_async_proxy() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Pins accumulator registers at this point of the program: after wait_group, reads of them
// cannot be scheduled before the wait (the compiler sees a new definition here).
template <int N>
__device__ __forceinline__ void pin(float (&d)[N][4]) {
#pragma unroll
    for (int j = 0; j < N; ++j)
        asm volatile("" : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])::"memory");
}

// d (+)= a B for a 64 x 64 x 16 step: a = this warp's 16 rows (mma.m16n8k16 A layout), B
// from shared memory by descriptor, K-major (kTransB 0) or MN-major (kTransB 1).
// accumulate = false overwrites d.
template <int kTransB>
__device__ __forceinline__ void mma_m64n64k16(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b_descriptor,
                                              bool accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n"
        "}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
          "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
          "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
          "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
          "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor), "r"(static_cast<int>(accumulate)),
          "n"(kTransB)
        : "memory");
}

// d (+)= a B for a 64 x 32 x 16 step (half the columns of mma_m64n64k16: 16 accumulators).
template <int kTransB>
__device__ __forceinline__ void mma_m64n32k16(float (&d)[4][4], const uint32_t (&a)[4], uint64_t b_descriptor,
                                              bool accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "{%16, %17, %18, %19}, %20, p, 1, 1, %22;\n"
        "}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
          "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
          "+f"(d[3][2]), "+f"(d[3][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor), "r"(static_cast<int>(accumulate)),
          "n"(kTransB)
        : "memory");
}

// d (+)= A B for a 64 x 32 x 16 step with A from shared memory too (K-major, by descriptor).
template <int kTransB>
__device__ __forceinline__ void mma_m64n32k16_ss(float (&d)[4][4], uint64_t a_descriptor, uint64_t b_descriptor,
                                                 bool accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "%16, %17, p, 1, 1, 0, %19;\n"
        "}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
          "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
          "+f"(d[3][2]), "+f"(d[3][3])
        : "l"(a_descriptor), "l"(b_descriptor), "r"(static_cast<int>(accumulate)), "n"(kTransB)
        : "memory");
}

// Stores A fragments (mma.m16n8k16 layout, k-step kk at a[kk]: rows r and r + 8, columns
// 16 kk + 2 tig (+1) and + 8) into a [rows][D] swizzled bf16 tile at shared address `tile`,
// as 4-byte pairs. The caller fences for the async proxy and synchronises before wgmma reads.
template <int D>
__device__ __forceinline__ void store_a_fragments_swizzled(const uint32_t (&a)[D / 16][4], int r, int tig,
                                                           uint32_t tile) {
    static_assert(D == 64, "one 64-dim bf16 row is one 128-byte swizzled line");
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = r + (i & 1) * 8, col = 16 * kk + (i >> 1) * 8;  // col: the 8-column chunk
            const uint32_t address = tile + swizzled_offset(row, col) + 4u * tig;
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(a[kk][i]) : "memory");
        }
}

// A thread's part in copying kRows-row tiles of [rows][64] bf16 matrices (row r at base + r *
// stride) into swizzled shared tiles by cp.async, all kThreads threads of the block taking
// part (the caller commits and waits). The thread's rows, columns and destinations are fixed
// at construction, so a tile's copies cost one address computation and then an add each; a
// tile wholly inside T copies without predicates, rows at or past T are zero-filled (reading
// nothing) otherwise.
template <int kRows, int kThreads>
struct SwizzledTileCopier {
    static constexpr int kChunksPerRow = 8;  // 16-byte chunks of a 64-dim row
    static_assert(kThreads % kChunksPerRow == 0 && kRows * kChunksPerRow % kThreads == 0, "whole rows a pass");
    static constexpr int kRowsPerPass = kThreads / kChunksPerRow;
    static_assert(kRowsPerPass % 8 == 0, "a thread's rows share their swizzle phase");
    static constexpr int kPasses = kRows / kRowsPerPass;

    int64_t stride, thread_offset, pass_stride;  // elements
    uint32_t dst_offset;                         // bytes into a tile
    int row0, T;

    __device__ __forceinline__ SwizzledTileCopier(int64_t stride_, int T_) : stride(stride_), T(T_) {
        const int x = static_cast<int>(threadIdx.x);
        row0 = x / kChunksPerRow;
        const int col = (x % kChunksPerRow) * 8;
        thread_offset = row0 * stride + col;
        pass_stride = kRowsPerPass * stride;
        dst_offset = swizzled_offset(row0, col);
    }
    // Starts the copy of rows first .. first + kRows - 1 of the matrix at base into `tile`.
    __device__ __forceinline__ void start(const __nv_bfloat16* __restrict__ base, int first, uint32_t tile) const {
        const __nv_bfloat16* src = base + first * stride + thread_offset;
        const uint32_t dst = tile + dst_offset;
        if (first + kRows <= T) {
#pragma unroll
            for (int i = 0; i < kPasses; ++i) mma::cp_async_16(dst + i * kRowsPerPass * 128, src + i * pass_stride, true);
        } else {
#pragma unroll
            for (int i = 0; i < kPasses; ++i) {
                const bool valid = first + row0 + i * kRowsPerPass < T;
                mma::cp_async_16(dst + i * kRowsPerPass * 128, valid ? src + i * pass_stride : base, valid);
            }
        }
    }
};

}  // namespace hsa::wgmma
