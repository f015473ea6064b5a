// Embedding lookup and its gradient for the CUDA backend.
//
// forward: one block per token row copies table[id] (float4 when aligned).
// backward (deterministic, no float atomics): (id, position) pairs are stably radix-sorted
// by id (CUB), which lists each id's positions in ascending order; then one thread per
// (table row, column) sums its positions in that order in double, as the CPU reference
// does, and writes 0 for ids that never occur.
// Out-of-range ids: kernels record the smallest bad position in a device flag; the launcher
// reads it back after the kernel and throws naming the id and position.
#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <cstdint>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

constexpr unsigned long long kNoError = ~0ull;

// A device word holding the smallest bad position (kNoError when none).
Tensor make_error_flag() {
    Tensor flag = Tensor::empty({1}, DType::I64, Device::CUDA);
    HSA_CUDA_CHECK(cudaMemset(flag.raw_data(), 0xFF, sizeof(unsigned long long)));
    return flag;
}
unsigned long long* flag_ptr(const Tensor& flag) { return static_cast<unsigned long long*>(flag.raw_data()); }

// Throws when the flag records a bad id (reads the flag and then the id back: synchronises).
void throw_if_bad_id(const Tensor& flag, const int32_t* ids, int64_t V, const char* op) {
    unsigned long long bad = kNoError;
    HSA_CUDA_CHECK(cudaMemcpy(&bad, flag.raw_data(), sizeof(bad), cudaMemcpyDeviceToHost));
    if (bad == kNoError) return;
    int32_t id = 0;
    HSA_CUDA_CHECK(cudaMemcpy(&id, ids + bad, sizeof(id), cudaMemcpyDeviceToHost));
    HSA_FAIL(op << ": id " << id << " at position " << bad << " is outside the vocabulary [0, " << V << ")");
}

template <class T>
__global__ void embedding_forward_kernel(const T* table, const int32_t* ids, T* out, int64_t N, int64_t V,
                                         int64_t width, unsigned long long* bad) {
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const int32_t id = ids[n];
        if (id < 0 || id >= V) {
            if (threadIdx.x == 0) atomicMin(bad, static_cast<unsigned long long>(n));
            continue;
        }
        const T* src = table + static_cast<int64_t>(id) * width;
        T* dst = out + n * width;
        for (int64_t j = threadIdx.x; j < width; j += blockDim.x) dst[j] = src[j];
    }
}

// Range check of every id, and positions[n] = n (the values the sort carries).
__global__ void check_ids_kernel(const int32_t* ids, int64_t N, int64_t V, int32_t* positions,
                                 unsigned long long* bad) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N; n += stride) {
        const int32_t id = ids[n];
        if (id < 0 || id >= V) atomicMin(bad, static_cast<unsigned long long>(n));
        positions[n] = static_cast<int32_t>(n);
    }
}

// For the sorted ids: row v's positions are sorted[begin[v], end[v]). begin/end start at 0.
__global__ void segment_bounds_kernel(const uint32_t* sorted_ids, int64_t N, int32_t* begin, int32_t* end) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
        const uint32_t id = sorted_ids[i];
        if (i == 0 || sorted_ids[i - 1] != id) begin[id] = static_cast<int32_t>(i);
        if (i == N - 1 || sorted_ids[i + 1] != id) end[id] = static_cast<int32_t>(i + 1);
    }
}

// Block (v, column tile): grad_table[v, j] = sum over v's positions p, ascending, of
// grad_out[p, j], in double. T is float (a column a thread) or float4 (four, with 16-byte
// loads and stores where D % 4 == 0 and the rows are aligned: one float a thread ran at ~1
// TB/s, docs/PERF.md version 58); each column adds in the same order either way, so the
// bits are the same. width: D in T's.
template <class T>
__global__ void embedding_accumulate_kernel(const T* grad_out, const int32_t* sorted_pos, const int32_t* begin,
                                            const int32_t* end, int64_t width, T* grad_table) {
    constexpr int E = sizeof(T) / sizeof(float);
    const int64_t v = blockIdx.x;
    const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
    if (j >= width) return;
    const int32_t b = begin[v], e = end[v];
    double acc[E] = {};
    for (int32_t p = b; p < e; ++p) {
        const T g = grad_out[static_cast<int64_t>(sorted_pos[p]) * width + j];
        const float* gf = reinterpret_cast<const float*>(&g);
#pragma unroll
        for (int c = 0; c < E; ++c) acc[c] += static_cast<double>(gf[c]);
    }
    T sum;
    float* sf = reinterpret_cast<float*>(&sum);
#pragma unroll
    for (int c = 0; c < E; ++c) sf[c] = static_cast<float>(acc[c]);
    grad_table[v * width + j] = sum;
}

// One block a vocabulary row, up to max_threads columns (in T's) a block.
template <class T>
void launch_embedding_accumulate(const T* grad_out, const int32_t* sorted_pos, const int32_t* begin,
                                 const int32_t* end, int64_t V, int64_t D, int64_t width, int max_threads,
                                 T* grad_table) {
    const int threads = width >= max_threads ? max_threads : static_cast<int>((width + 31) / 32 * 32);
    const int64_t tiles = (width + threads - 1) / threads;
    HSA_CHECK(tiles <= 65535, "embedding_backward: D = " << D << " is too large");
    const dim3 grid(static_cast<unsigned>(V), static_cast<unsigned>(tiles));
    embedding_accumulate_kernel<T><<<grid, threads>>>(grad_out, sorted_pos, begin, end, width, grad_table);
    HSA_CUDA_CHECK_LAUNCH("embedding_backward embedding_accumulate_kernel");
}

}  // namespace

void CudaBackend::embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) {
    const checks::EmbeddingDims dims = checks::check_embedding(table, ids, out, Device::CUDA);
    const int64_t V = dims.V, D = dims.D, N = dims.N;
    const float* pt = table.data<float>();
    const int32_t* pi = ids.data<int32_t>();
    float* po = out.data<float>();
    if (N == 0) return;
    Tensor flag = make_error_flag();
    const unsigned grid = static_cast<unsigned>(N < 65536 ? N : 65536);
    if (D % 4 == 0 && aligned16(pt) && aligned16(po)) {
        const int64_t width = D / 4;
        const int threads = width >= 128 ? 128 : (width <= 32 ? 32 : static_cast<int>((width + 31) / 32 * 32));
        embedding_forward_kernel<float4><<<grid, threads>>>(reinterpret_cast<const float4*>(pt), pi,
                                                            reinterpret_cast<float4*>(po), N, V, width, flag_ptr(flag));
    } else {
        const int threads = D >= 128 ? 128 : (D <= 32 ? 32 : static_cast<int>((D + 31) / 32 * 32));
        embedding_forward_kernel<float><<<grid, threads>>>(pt, pi, po, N, V, D, flag_ptr(flag));
    }
    HSA_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
    throw_if_bad_id(flag, pi, V, "embedding");
}

void CudaBackend::embedding_backward(const Tensor& ids, const Tensor& grad_out, Tensor& grad_table) {
    if (!grad_table.defined()) return;
    const checks::EmbeddingDims dims = checks::check_embedding_backward(ids, grad_out, grad_table, Device::CUDA);
    const int64_t V = dims.V, D = dims.D, N = dims.N;
    const int32_t* pi = ids.data<int32_t>();
    const float* pg = grad_out.data<float>();
    float* pt = grad_table.data<float>();
    HSA_CHECK(N < INT32_MAX, "embedding_backward: " << N << " ids exceed the i32 position range");
    HSA_CHECK(V <= INT32_MAX, "embedding_backward: vocabulary " << V << " exceeds the i32 range");
    if (V == 0 || D == 0) {
        // Every id is out of range when V == 0; nothing to write when D == 0.
        HSA_CHECK(N == 0 || V > 0, "embedding_backward: " << N << " ids but the vocabulary is empty");
        return;
    }
    if (N == 0) {
        HSA_CUDA_CHECK(cudaMemset(pt, 0, static_cast<size_t>(V * D) * sizeof(float)));
        return;
    }

    // 1. Range check; positions 0..N-1.
    Tensor flag = make_error_flag();
    Tensor positions = Tensor::empty({N}, DType::I32, Device::CUDA);
    {
        const int threads = 256;
        unsigned grid = blocks_for(N, threads);
        if (grid > 4096) grid = 4096;
        check_ids_kernel<<<grid, threads>>>(pi, N, V, positions.data<int32_t>(), flag_ptr(flag));
        HSA_CUDA_CHECK_LAUNCH("embedding_backward check_ids_kernel");
    }
    throw_if_bad_id(flag, pi, V, "embedding_backward");

    // 2. Stable sort of (id, position) by id: positions of one id stay ascending.
    Tensor sorted_ids = Tensor::empty({N}, DType::I32, Device::CUDA);
    Tensor sorted_pos = Tensor::empty({N}, DType::I32, Device::CUDA);
    const uint32_t* keys_in = reinterpret_cast<const uint32_t*>(pi);
    uint32_t* keys_out = reinterpret_cast<uint32_t*>(sorted_ids.data<int32_t>());
    int end_bit = 1;
    while (end_bit < 32 && (int64_t{1} << end_bit) < V) ++end_bit;  // ids < V <= 2^end_bit
    size_t temp_bytes = 0;
    HSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out,
                                                   positions.data<int32_t>(), sorted_pos.data<int32_t>(),
                                                   static_cast<int>(N), 0, end_bit));
    Tensor temp = Tensor::empty({static_cast<int64_t>((temp_bytes + 7) / 8)}, DType::I64, Device::CUDA);
    HSA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, keys_in, keys_out,
                                                   positions.data<int32_t>(), sorted_pos.data<int32_t>(),
                                                   static_cast<int>(N), 0, end_bit));
    HSA_CUDA_CHECK_LAUNCH("embedding_backward cub::DeviceRadixSort::SortPairs");

    // 3. Per-row segment bounds in the sorted order (rows that never occur stay [0, 0)).
    Tensor bounds = Tensor::zeros({2, V}, DType::I32, Device::CUDA);
    int32_t* begin = bounds.data<int32_t>();
    int32_t* end = begin + V;
    {
        const int threads = 256;
        unsigned grid = blocks_for(N, threads);
        if (grid > 4096) grid = 4096;
        segment_bounds_kernel<<<grid, threads>>>(keys_out, N, begin, end);
        HSA_CUDA_CHECK_LAUNCH("embedding_backward segment_bounds_kernel");
    }

    // 4. One thread per (row, column or four columns), positions in ascending order.
    if (D % 4 == 0 && aligned16(pg) && aligned16(pt))
        launch_embedding_accumulate(reinterpret_cast<const float4*>(pg), sorted_pos.data<int32_t>(), begin, end, V, D,
                                    D / 4, 256, reinterpret_cast<float4*>(pt));
    else
        launch_embedding_accumulate(pg, sorted_pos.data<int32_t>(), begin, end, V, D, D, 128, pt);
}

}  // namespace hsa
