// Elementwise ops and data movement for the CUDA backend: add, mul, scale, axpy,
// copy_rows, sum_middle, broadcast_middle, sum, sum_of_squares.
//
// - Elementwise maps use 16-byte (float4) accesses when every pointer is 16-byte aligned,
//   with a scalar tail; each element is read and written by one thread, so out may alias
//   an input (scale(g, f, g) in place).
// - f32 arithmetic uses __fadd_rn / __fmul_rn (no FMA contraction), as the CPU reference
//   computes it, so those results are bit-identical.
// - Reductions are deterministic: fixed work split, double partials, fixed-order combine.
#include <cstdint>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 4096;  // grid-stride loops cover the rest

unsigned grid_for(int64_t work) {
    const unsigned blocks = blocks_for(work, kThreads);
    return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}

constexpr Device kCuda = Device::CUDA;

// Double scratch of `count` values on the device (uninitialised).
Tensor double_scratch(int64_t count) { return Tensor::empty({count < 1 ? 1 : count}, DType::I64, Device::CUDA); }
double* double_ptr(const Tensor& t) { return static_cast<double*>(t.raw_data()); }

// ---- elementwise maps: out[i] = op(a[i], b[i]) ----

struct AddOp {
    __device__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};
struct MulOp {
    __device__ float operator()(float a, float b) const { return __fmul_rn(a, b); }
};
struct ScaleOp {
    float alpha;
    __device__ float operator()(float a, float) const { return __fmul_rn(alpha, a); }
};
struct AxpyOp {  // a = target, b = x
    float alpha;
    __device__ float operator()(float t, float x) const { return __fadd_rn(t, __fmul_rn(alpha, x)); }
};

template <class Op>
__global__ void map2_kernel(const float* a, const float* b, float* out, int64_t n, bool vec, Op op) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        const float4* a4 = reinterpret_cast<const float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b);
        float4* o4 = reinterpret_cast<float4*>(out);
        for (int64_t k = tid; k < n4; k += stride) {
            const float4 x = a4[k];
            const float4 y = b4[k];
            float4 r;
            r.x = op(x.x, y.x);
            r.y = op(x.y, y.y);
            r.z = op(x.z, y.z);
            r.w = op(x.w, y.w);
            o4[k] = r;
        }
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) out[k] = op(a[k], b[k]);
}

template <class Op>
void launch_map2(const float* a, const float* b, float* out, int64_t n, Op op, const char* name) {
    if (n <= 0) return;
    const bool vec = aligned16(a) && aligned16(b) && aligned16(out);
    map2_kernel<Op><<<grid_for(vec ? (n + 3) / 4 : n), kThreads>>>(a, b, out, n, vec, op);
    HSA_CUDA_CHECK_LAUNCH(name);
}

// ---- copy_rows, broadcast_middle: T is float or float4, `inner` counted in T units ----

__device__ inline float vadd(float a, float b) { return __fadd_rn(a, b); }
__device__ inline float4 vadd(float4 a, float4 b) {
    return make_float4(__fadd_rn(a.x, b.x), __fadd_rn(a.y, b.y), __fadd_rn(a.z, b.z), __fadd_rn(a.w, b.w));
}
__device__ inline float vscale(float alpha, float a) { return __fmul_rn(alpha, a); }
__device__ inline float4 vscale(float alpha, float4 a) {
    return make_float4(__fmul_rn(alpha, a.x), __fmul_rn(alpha, a.y), __fmul_rn(alpha, a.z), __fmul_rn(alpha, a.w));
}

// copy_rows as `segments` contiguous runs of `run` elements: run o goes from src + o *
// src_pitch + src_offset to dst + o * dst_pitch + dst_offset (added when accumulating).
// Index: 32-bit when segments x run fits, for the division. In float4 units when every
// count and offset is a multiple of 4 (the caller divides them): a slice along the last
// dim (the model's k / v of one kv product: 64 of 128 floats a row, inner 1) then moves 16
// bytes a thread, where an element a thread with 64-bit divisions ran at ~0.6 TB/s.
template <class T, class Index>
__global__ void copy_rows_kernel(const T* src, T* dst, Index segments, Index run,
                                 int64_t src_pitch, int64_t src_offset, int64_t dst_pitch, int64_t dst_offset,
                                 bool accumulate) {
    const Index total = segments * run;
    const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
    for (Index e = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
        const Index o = e / run, i = e - o * run;
        const T s = src[static_cast<int64_t>(o) * src_pitch + src_offset + i];
        T* d = dst + static_cast<int64_t>(o) * dst_pitch + dst_offset + i;
        *d = accumulate ? vadd(*d, s) : s;
    }
}

template <class T>
void launch_copy_rows(const T* src, T* dst, int64_t segments, int64_t run, int64_t src_pitch, int64_t src_offset,
                      int64_t dst_pitch, int64_t dst_offset, bool accumulate) {
    const int64_t total = segments * run;
    if (total < (int64_t{1} << 31))
        copy_rows_kernel<T, uint32_t><<<grid_for(total), kThreads>>>(
            src, dst, static_cast<uint32_t>(segments), static_cast<uint32_t>(run), src_pitch, src_offset, dst_pitch,
            dst_offset, accumulate);
    else
        copy_rows_kernel<T, int64_t><<<grid_for(total), kThreads>>>(src, dst, segments, run, src_pitch, src_offset,
                                                                    dst_pitch, dst_offset, accumulate);
}

template <class T>
__global__ void broadcast_middle_kernel(const T* x, int64_t outer, int64_t n, int64_t inner, float alpha, T* out) {
    const int64_t total = outer * n * inner;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int64_t i = e % inner, o = (e / inner) / n;
        out[e] = vscale(alpha, x[o * inner + i]);
    }
}

// ---- sum_middle ----

// One thread per (o, i): out[o, i] = alpha * sum_{j} x[o, j, i], double accumulation in j order.
__global__ void sum_middle_kernel(const float* x, int64_t outer, int64_t n, int64_t inner, float alpha,
                                  float* out) {
    const int64_t total = outer * inner;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int64_t o = e / inner, i = e % inner;
        const float* p = x + o * n * inner + i;
        double acc = 0.0;
        for (int64_t j = 0; j < n; ++j) acc += static_cast<double>(p[j * inner]);
        out[e] = static_cast<float>(static_cast<double>(alpha) * acc);
    }
}

// Split version for few outputs and a long middle dim: split s sums rows [s*chunk, (s+1)*chunk)
// into partial[s, o, i]; the combine kernel adds the splits in order.
__global__ void sum_middle_partial_kernel(const float* x, int64_t outer, int64_t n, int64_t inner, int64_t splits,
                                          int64_t chunk, double* partial) {
    const int64_t width = outer * inner;
    const int64_t total = splits * width;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
        const int64_t s = e / width, rem = e % width;
        const int64_t o = rem / inner, i = rem % inner;
        const int64_t begin = s * chunk;
        const int64_t end = begin + chunk < n ? begin + chunk : n;
        const float* p = x + o * n * inner + i;
        double acc = 0.0;
        for (int64_t j = begin; j < end; ++j) acc += static_cast<double>(p[j * inner]);
        partial[e] = acc;
    }
}

__global__ void sum_middle_combine_kernel(const double* partial, int64_t splits, int64_t width, float alpha,
                                          float* out) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < width; e += stride) {
        double acc = 0.0;
        for (int64_t s = 0; s < splits; ++s) acc += partial[s * width + e];
        out[e] = static_cast<float>(static_cast<double>(alpha) * acc);
    }
}

// ---- whole-tensor sums ----

constexpr int kSumThreads = 256;
constexpr int kSumMaxBlocks = 1024;
constexpr int kCombineThreads = 1024;

template <bool Square>
__device__ inline double sum_term(float v) {
    const double d = static_cast<double>(v);
    return Square ? d * d : d;
}

// A thread's terms of float4s tid, tid + stride, ... below n4, added in that order: kUnroll
// loads are issued before any is added (one 16-byte load in flight a thread ran the
// gradient norm at 2.0 TB/s; docs/PERF.md version 58), the order and so the bits as one at a time.
constexpr int kSumUnroll = 4;

template <bool Square>
__device__ inline double sum_float4s(const float4* x4, int64_t n4, int64_t tid, int64_t stride) {
    double acc = 0.0;
    int64_t k = tid;
    for (; k + (kSumUnroll - 1) * stride < n4; k += kSumUnroll * stride) {
        float4 v[kSumUnroll];
#pragma unroll
        for (int u = 0; u < kSumUnroll; ++u) v[u] = x4[k + u * stride];
#pragma unroll
        for (int u = 0; u < kSumUnroll; ++u) {
            acc += sum_term<Square>(v[u].x);
            acc += sum_term<Square>(v[u].y);
            acc += sum_term<Square>(v[u].z);
            acc += sum_term<Square>(v[u].w);
        }
    }
    for (; k < n4; k += stride) {
        const float4 v = x4[k];
        acc += sum_term<Square>(v.x);
        acc += sum_term<Square>(v.y);
        acc += sum_term<Square>(v.z);
        acc += sum_term<Square>(v.w);
    }
    return acc;
}

template <bool Square>
__global__ void partial_sum_kernel(const float* x, int64_t n, bool vec, double* partial) {
    __shared__ double shared[32];
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    double acc = 0.0;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = n >> 2;
        acc = sum_float4s<Square>(reinterpret_cast<const float4*>(x), n4, tid, stride);
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < n; k += stride) acc += sum_term<Square>(x[k]);
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block: adds `count` partials in a fixed order and writes result[0].
__global__ void combine_sum_kernel(const double* partial, int count, double* result) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (int k = threadIdx.x; k < count; k += blockDim.x) acc += partial[k];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) result[0] = acc;
}

// Launches the reduction of x into result[0] (partial sums in scratch); n depends only on
// x, so the split, and the result, are reproducible run to run.
template <bool Square>
int64_t sum_blocks(int64_t n) {
    const int64_t per_block = static_cast<int64_t>(kSumThreads) * 4;
    int64_t blocks = (n + per_block - 1) / per_block;
    return blocks > kSumMaxBlocks ? kSumMaxBlocks : blocks;
}

template <bool Square>
void launch_device_sum(const float* px, int64_t n, double* partial, int64_t blocks, double* result) {
    partial_sum_kernel<Square><<<static_cast<unsigned>(blocks), kSumThreads>>>(px, n, aligned16(px), partial);
    HSA_CUDA_CHECK_LAUNCH((Square ? "sum_of_squares partial_sum_kernel" : "sum partial_sum_kernel"));
    combine_sum_kernel<<<1, kCombineThreads>>>(partial, static_cast<int>(blocks), result);
    HSA_CUDA_CHECK_LAUNCH((Square ? "sum_of_squares combine_sum_kernel" : "sum combine_sum_kernel"));
}

// Many tensors' sums of squares in two launches: physical block b runs virtual block
// b - block_start[t] of tensor t's own grid (block_start: prefix sums of sum_blocks(n_t)),
// with exactly the element assignment, order and partial layout of partial_sum_kernel on
// that tensor alone; then block t adds tensor t's partials as combine_sum_kernel does. So
// every result is bit-identical to sum_of_squares of the tensor alone, at two launches
// instead of two per tensor (the gradient norm: 198 tensors, ~400 launches, 2 ms a step).
struct SumTask {
    const float* x;
    int64_t n;
};

__device__ inline bool aligned16_device(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__global__ void partial_sum_of_squares_many_kernel(const SumTask* tasks, const int64_t* block_start, int tasks_count,
                                                   double* partial) {
    __shared__ double shared[32];
    const int64_t b = blockIdx.x;
    const int lo = task_of_block(block_start, tasks_count, b);
    const SumTask task = tasks[lo];
    const int64_t blocks = block_start[lo + 1] - block_start[lo];
    const int64_t stride = blocks * blockDim.x;
    const int64_t tid = (b - block_start[lo]) * blockDim.x + threadIdx.x;
    const bool vec = aligned16_device(task.x);
    double acc = 0.0;
    int64_t tail_start = 0;
    if (vec) {
        const int64_t n4 = task.n >> 2;
        acc = sum_float4s<true>(reinterpret_cast<const float4*>(task.x), n4, tid, stride);
        tail_start = n4 << 2;
    }
    for (int64_t k = tail_start + tid; k < task.n; k += stride) acc += sum_term<true>(task.x[k]);
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[b] = acc;
}

__global__ void combine_sum_many_kernel(const double* partial, const int64_t* block_start, double* results) {
    __shared__ double shared[32];
    const int t = static_cast<int>(blockIdx.x);
    const double* mine = partial + block_start[t];
    const int count = static_cast<int>(block_start[t + 1] - block_start[t]);
    double acc = 0.0;
    for (int k = threadIdx.x; k < count; k += blockDim.x) acc += mine[k];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) results[t] = acc;
}

template <bool Square>
double device_sum(const Tensor& x, const char* op) {
    const float* px = cuda_f32(x, op, "x");
    const int64_t n = x.numel();
    if (n == 0) return 0.0;
    const int64_t blocks = sum_blocks<Square>(n);
    Tensor scratch = double_scratch(blocks + 1);
    double* partial = double_ptr(scratch);
    launch_device_sum<Square>(px, n, partial, blocks, partial + blocks);
    double result = 0.0;
    HSA_CUDA_CHECK(cudaMemcpy(&result, partial + blocks, sizeof(double), cudaMemcpyDeviceToHost));
    return result;
}

}  // namespace

// ---------------------------------------------------------------------------------------

void CudaBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
    const int64_t n = checks::check_binary("add", a, b, out, kCuda);
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
    launch_map2(pa, pb, po, n, AddOp{}, "add map2_kernel");
}

void CudaBackend::mul(const Tensor& a, const Tensor& b, Tensor& out) {
    const int64_t n = checks::check_binary("mul", a, b, out, kCuda);
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
    launch_map2(pa, pb, po, n, MulOp{}, "mul map2_kernel");
}

void CudaBackend::scale(const Tensor& a, float alpha, Tensor& out) {
    const int64_t n = checks::check_scale(a, out, kCuda);
    const float* pa = a.data<float>();
    float* po = out.data<float>();
    launch_map2(pa, pa, po, n, ScaleOp{alpha}, "scale map2_kernel");
}

void CudaBackend::axpy(float alpha, const Tensor& x, Tensor& target) {
    const int64_t n = checks::check_axpy(x, target, kCuda);
    const float* px = x.data<float>();
    float* pt = target.data<float>();
    launch_map2(pt, px, pt, n, AxpyOp{alpha}, "axpy map2_kernel");
}

void CudaBackend::copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, Tensor& dst,
                            int64_t dst_len, int64_t dst_start, int64_t length, int64_t inner, bool accumulate) {
    checks::check_copy_rows(src, outer, src_len, src_start, dst, dst_len, dst_start, length, inner, kCuda);
    const float* ps = src.data<float>();
    float* pd = dst.data<float>();
    if (outer == 0 || length == 0 || inner == 0) return;
    // For each of the outer indices, rows [start, start + length) of inner elements each are
    // one contiguous run of length x inner elements in both tensors.
    const int64_t run = length * inner, src_pitch = src_len * inner, dst_pitch = dst_len * inner;
    const int64_t src_offset = src_start * inner, dst_offset = dst_start * inner;
    const bool vectorised = run % 4 == 0 && src_pitch % 4 == 0 && dst_pitch % 4 == 0 && src_offset % 4 == 0 &&
                            dst_offset % 4 == 0 && aligned16(ps) && aligned16(pd);
    if (vectorised)
        launch_copy_rows(reinterpret_cast<const float4*>(ps), reinterpret_cast<float4*>(pd), outer, run / 4,
                         src_pitch / 4, src_offset / 4, dst_pitch / 4, dst_offset / 4, accumulate);
    else
        launch_copy_rows(ps, pd, outer, run, src_pitch, src_offset, dst_pitch, dst_offset, accumulate);
    HSA_CUDA_CHECK_LAUNCH("copy_rows_kernel");
}

void CudaBackend::sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha, Tensor& out) {
    checks::check_sum_middle(x, outer, n, inner, out, kCuda);
    const float* px = x.data<float>();
    float* po = out.data<float>();
    const int64_t width = outer * inner;
    if (width == 0) return;
    // Aim for ~128K threads: split the middle dim when there are few outputs and it is long.
    constexpr int64_t kTargetThreads = int64_t{1} << 17;
    constexpr int64_t kMinRowsPerSplit = 64;
    int64_t splits = 1;
    if (width < kTargetThreads && n >= 2 * kMinRowsPerSplit) {
        const int64_t by_threads = (kTargetThreads + width - 1) / width;
        const int64_t by_rows = n / kMinRowsPerSplit;
        splits = by_threads < by_rows ? by_threads : by_rows;
    }
    if (splits <= 1) {
        sum_middle_kernel<<<grid_for(width), kThreads>>>(px, outer, n, inner, alpha, po);
        HSA_CUDA_CHECK_LAUNCH("sum_middle_kernel");
        return;
    }
    const int64_t chunk = (n + splits - 1) / splits;
    splits = (n + chunk - 1) / chunk;
    Tensor scratch = double_scratch(splits * width);
    double* partial = double_ptr(scratch);
    sum_middle_partial_kernel<<<grid_for(splits * width), kThreads>>>(px, outer, n, inner, splits, chunk, partial);
    HSA_CUDA_CHECK_LAUNCH("sum_middle_partial_kernel");
    sum_middle_combine_kernel<<<grid_for(width), kThreads>>>(partial, splits, width, alpha, po);
    HSA_CUDA_CHECK_LAUNCH("sum_middle_combine_kernel");
}

void CudaBackend::broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha,
                                   Tensor& out) {
    checks::check_broadcast_middle(x, outer, n, inner, out, kCuda);
    const float* px = x.data<float>();
    float* po = out.data<float>();
    if (outer == 0 || n == 0 || inner == 0) return;
    if (inner % 4 == 0 && aligned16(px) && aligned16(po)) {
        const int64_t inner4 = inner / 4;
        broadcast_middle_kernel<float4><<<grid_for(outer * n * inner4), kThreads>>>(
            reinterpret_cast<const float4*>(px), outer, n, inner4, alpha, reinterpret_cast<float4*>(po));
    } else {
        broadcast_middle_kernel<float><<<grid_for(outer * n * inner), kThreads>>>(px, outer, n, inner, alpha, po);
    }
    HSA_CUDA_CHECK_LAUNCH("broadcast_middle_kernel");
}

double CudaBackend::sum_of_squares(const Tensor& x) { return device_sum<true>(x, "sum_of_squares"); }

std::vector<double> CudaBackend::sum_of_squares_many(const std::vector<Tensor>& xs) {
    std::vector<double> out(xs.size(), 0.0);
    std::vector<SumTask> tasks;
    std::vector<size_t> which;  // index in xs of each task (empty tensors have none: sum 0)
    std::vector<int64_t> block_start{0};
    for (size_t i = 0; i < xs.size(); ++i) {
        const float* px = cuda_f32(xs[i], "sum_of_squares", "x");
        const int64_t n = xs[i].numel();
        if (n == 0) continue;
        tasks.push_back({px, n});
        which.push_back(i);
        block_start.push_back(block_start.back() + sum_blocks<true>(n));
    }
    if (tasks.empty()) return out;
    const int count = static_cast<int>(tasks.size());
    const int64_t blocks = block_start.back();
    HSA_CHECK(blocks < (int64_t{1} << 31), "sum_of_squares: " << blocks << " blocks, over the grid limit");
    // One device buffer: the task table, the block offsets, the results, the partials.
    const int64_t table_words = (static_cast<int64_t>(sizeof(SumTask)) * count + 7) / 8;
    Tensor scratch = double_scratch(table_words + (count + 1) + count + blocks);
    char* base = static_cast<char*>(scratch.raw_data());
    auto* d_tasks = reinterpret_cast<SumTask*>(base);
    auto* d_start = reinterpret_cast<int64_t*>(base + 8 * table_words);
    double* results = reinterpret_cast<double*>(d_start + count + 1);
    double* partial = results + count;
    // Pageable host memory: the copies are staged before the calls return.
    HSA_CUDA_CHECK(cudaMemcpyAsync(d_tasks, tasks.data(), sizeof(SumTask) * count, cudaMemcpyHostToDevice));
    HSA_CUDA_CHECK(cudaMemcpyAsync(d_start, block_start.data(), sizeof(int64_t) * (count + 1), cudaMemcpyHostToDevice));
    partial_sum_of_squares_many_kernel<<<static_cast<unsigned>(blocks), kSumThreads>>>(d_tasks, d_start, count, partial);
    HSA_CUDA_CHECK_LAUNCH("partial_sum_of_squares_many_kernel");
    combine_sum_many_kernel<<<static_cast<unsigned>(count), kCombineThreads>>>(partial, d_start, results);
    HSA_CUDA_CHECK_LAUNCH("combine_sum_many_kernel");
    std::vector<double> sums(tasks.size());
    HSA_CUDA_CHECK(cudaMemcpy(sums.data(), results, sizeof(double) * count, cudaMemcpyDeviceToHost));
    for (size_t k = 0; k < which.size(); ++k) out[which[k]] = sums[k];
    return out;
}

double CudaBackend::sum(const Tensor& x) { return device_sum<false>(x, "sum"); }

}  // namespace hsa
