// CpuBackend: elementwise ops, data movement, embedding, GEMM, RMSNorm, RoPE, SwiGLU,
// cross-entropy and AdamW. The reference implementation the CUDA kernels are tested against.
//
// Determinism: every output element is written by exactly one OpenMP thread, and the order
// in which its terms are added is fixed by the code, not by the schedule. The only
// cross-thread reductions (sum, sum_of_squares) sum fixed-size blocks in parallel and then
// the block sums serially, in order. So results are bit-identical for any thread count.
// All validation happens before any parallel region (no exceptions inside OpenMP).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/cpu/cpu_backend.h"

namespace hsa {

namespace {

// Loops over less work than this run on the calling thread (an `if` clause): forking a team
// for a few hundred elements costs more than the work, badly so on an oversubscribed host.
// The clause never changes results, only which thread computes an element.
constexpr int64_t kMinParallelWork = int64_t{1} << 14;

// Checks a tensor is a defined, contiguous f32 CPU tensor and returns its data.
float* f32_data(const Tensor& t, const char* op, const char* what) {
    HSA_CHECK(t.defined(), op << ": " << what << " is undefined");
    HSA_CHECK(t.device() == Device::CPU, op << ": " << what << " is on " << device_name(t.device()) << ", expected CPU");
    HSA_CHECK(t.dtype() == DType::F32,
              op << ": " << what << " has dtype " << dtype_name(t.dtype()) << ", expected f32");
    HSA_CHECK(t.is_contiguous(), op << ": " << what << " " << shape_string(t.shape()) << " is not contiguous");
    return t.data<float>();
}

int32_t* i32_data(const Tensor& t, const char* op, const char* what) {
    HSA_CHECK(t.defined(), op << ": " << what << " is undefined");
    HSA_CHECK(t.device() == Device::CPU, op << ": " << what << " is on " << device_name(t.device()) << ", expected CPU");
    HSA_CHECK(t.dtype() == DType::I32,
              op << ": " << what << " has dtype " << dtype_name(t.dtype()) << ", expected i32");
    HSA_CHECK(t.is_contiguous(), op << ": " << what << " " << shape_string(t.shape()) << " is not contiguous");
    return t.data<int32_t>();
}

void check_numel(const Tensor& t, int64_t expected, const char* op, const char* what) {
    HSA_CHECK(t.numel() == expected, op << ": " << what << " " << shape_string(t.shape()) << " has " << t.numel()
                                        << " elements, expected " << expected);
}

// Deterministic double sum of f(x[i]) over fixed blocks: blocks in parallel, block sums in order.
template <class F>
double blocked_sum(const float* x, int64_t n, F f) {
    constexpr int64_t kBlock = 4096;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t begin = blk * kBlock, end = std::min(n, begin + kBlock);
        double acc = 0.0;
        for (int64_t i = begin; i < end; ++i) acc += f(static_cast<double>(x[i]));
        partial[static_cast<size_t>(blk)] = acc;
    }
    double total = 0.0;
    for (double p : partial) total += p;
    return total;
}

// Leading dims flattened into a batch count; the last two are the matrix.
struct MatShape {
    int64_t batch, rows, cols;
};

MatShape mat_shape(const Tensor& t, const char* what) {
    HSA_CHECK(t.ndim() >= 2, "gemm: " << what << " " << shape_string(t.shape()) << " must have at least 2 dims");
    int64_t batch = 1;
    for (int i = 0; i + 2 < t.ndim(); ++i) batch *= t.size(i);
    return {batch, t.size(-2), t.size(-1)};
}

}  // namespace

// ---------------------------------------------------------------------------------------
// elementwise and data movement

void CpuBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
    const float* pa = f32_data(a, "add", "a");
    const float* pb = f32_data(b, "add", "b");
    float* po = f32_data(out, "add", "out");
    const int64_t n = a.numel();
    check_numel(b, n, "add", "b");
    check_numel(out, n, "add", "out");
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
}

void CpuBackend::mul(const Tensor& a, const Tensor& b, Tensor& out) {
    const float* pa = f32_data(a, "mul", "a");
    const float* pb = f32_data(b, "mul", "b");
    float* po = f32_data(out, "mul", "out");
    const int64_t n = a.numel();
    check_numel(b, n, "mul", "b");
    check_numel(out, n, "mul", "out");
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] * pb[i];
}

void CpuBackend::scale(const Tensor& a, float alpha, Tensor& out) {
    const float* pa = f32_data(a, "scale", "a");
    float* po = f32_data(out, "scale", "out");
    const int64_t n = a.numel();
    check_numel(out, n, "scale", "out");
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) po[i] = alpha * pa[i];
}

void CpuBackend::axpy(float alpha, const Tensor& x, Tensor& target) {
    const float* px = f32_data(x, "axpy", "x");
    float* pt = f32_data(target, "axpy", "target");
    const int64_t n = target.numel();
    check_numel(x, n, "axpy", "x");
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) pt[i] += alpha * px[i];
}

void CpuBackend::copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, Tensor& dst,
                           int64_t dst_len, int64_t dst_start, int64_t length, int64_t inner, bool accumulate) {
    const float* ps = f32_data(src, "copy_rows", "src");
    float* pd = f32_data(dst, "copy_rows", "dst");
    HSA_CHECK(outer >= 0 && src_len >= 0 && dst_len >= 0 && length >= 0 && inner >= 0,
              "copy_rows: negative size (outer " << outer << ", src_len " << src_len << ", dst_len " << dst_len
                                                 << ", length " << length << ", inner " << inner << ")");
    check_numel(src, outer * src_len * inner, "copy_rows", "src");
    check_numel(dst, outer * dst_len * inner, "copy_rows", "dst");
    HSA_CHECK(src_start >= 0 && src_start + length <= src_len,
              "copy_rows: source rows [" << src_start << ", " << src_start + length << ") outside [0, " << src_len << ")");
    HSA_CHECK(dst_start >= 0 && dst_start + length <= dst_len,
              "copy_rows: destination rows [" << dst_start << ", " << dst_start + length << ") outside [0, " << dst_len
                                              << ")");
    const int64_t rows = outer * length;
#pragma omp parallel for schedule(static) if (rows * inner >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t o = r / length, j = r % length;
        const float* s = ps + (o * src_len + src_start + j) * inner;
        float* d = pd + (o * dst_len + dst_start + j) * inner;
        if (accumulate) {
            for (int64_t i = 0; i < inner; ++i) d[i] += s[i];
        } else {
            for (int64_t i = 0; i < inner; ++i) d[i] = s[i];
        }
    }
}

void CpuBackend::sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha, Tensor& out) {
    const float* px = f32_data(x, "sum_middle", "x");
    float* po = f32_data(out, "sum_middle", "out");
    HSA_CHECK(outer >= 0 && n >= 0 && inner >= 0,
              "sum_middle: negative size (outer " << outer << ", n " << n << ", inner " << inner << ")");
    check_numel(x, outer * n * inner, "sum_middle", "x");
    check_numel(out, outer * inner, "sum_middle", "out");
    constexpr int64_t kBlock = 256;
    const int64_t blocks_per_outer = (inner + kBlock - 1) / kBlock;
    const int64_t tasks = outer * blocks_per_outer;
#pragma omp parallel for schedule(static) if (outer * n * inner >= kMinParallelWork)
    for (int64_t task = 0; task < tasks; ++task) {
        const int64_t o = task / blocks_per_outer;
        const int64_t begin = (task % blocks_per_outer) * kBlock, end = std::min(inner, begin + kBlock);
        double acc[kBlock];
        for (int64_t i = begin; i < end; ++i) acc[i - begin] = 0.0;
        for (int64_t j = 0; j < n; ++j) {
            const float* row = px + (o * n + j) * inner;
            for (int64_t i = begin; i < end; ++i) acc[i - begin] += row[i];
        }
        for (int64_t i = begin; i < end; ++i) po[o * inner + i] = static_cast<float>(alpha * acc[i - begin]);
    }
}

void CpuBackend::broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha,
                                  Tensor& out) {
    const float* px = f32_data(x, "broadcast_middle", "x");
    float* po = f32_data(out, "broadcast_middle", "out");
    HSA_CHECK(outer >= 0 && n >= 0 && inner >= 0,
              "broadcast_middle: negative size (outer " << outer << ", n " << n << ", inner " << inner << ")");
    check_numel(x, outer * inner, "broadcast_middle", "x");
    check_numel(out, outer * n * inner, "broadcast_middle", "out");
    const int64_t rows = outer * n;
#pragma omp parallel for schedule(static) if (rows * inner >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
        const float* s = px + (r / n) * inner;
        float* d = po + r * inner;
        for (int64_t i = 0; i < inner; ++i) d[i] = alpha * s[i];
    }
}

double CpuBackend::sum_of_squares(const Tensor& x) {
    const float* px = f32_data(x, "sum_of_squares", "x");
    return blocked_sum(px, x.numel(), [](double v) { return v * v; });
}

double CpuBackend::sum(const Tensor& x) {
    const float* px = f32_data(x, "sum", "x");
    return blocked_sum(px, x.numel(), [](double v) { return v; });
}

// ---------------------------------------------------------------------------------------
// embedding

void CpuBackend::embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) {
    const float* pt = f32_data(table, "embedding", "table");
    const int32_t* pi = i32_data(ids, "embedding", "ids");
    float* po = f32_data(out, "embedding", "out");
    HSA_CHECK(table.ndim() == 2, "embedding: table " << shape_string(table.shape()) << " must be [V, D]");
    const int64_t V = table.size(0), D = table.size(1), N = ids.numel();
    check_numel(out, N * D, "embedding", "out");
    for (int64_t n = 0; n < N; ++n)
        HSA_CHECK(pi[n] >= 0 && pi[n] < V, "embedding: id " << pi[n] << " at position " << n
                                                            << " is outside the vocabulary [0, " << V << ")");
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
    for (int64_t n = 0; n < N; ++n) {
        const float* s = pt + static_cast<int64_t>(pi[n]) * D;
        float* d = po + n * D;
        for (int64_t j = 0; j < D; ++j) d[j] = s[j];
    }
}

void CpuBackend::embedding_backward(const Tensor& ids, const Tensor& grad_out, Tensor& grad_table) {
    if (!grad_table.defined()) return;
    const int32_t* pi = i32_data(ids, "embedding_backward", "ids");
    const float* pg = f32_data(grad_out, "embedding_backward", "grad_out");
    float* pt = f32_data(grad_table, "embedding_backward", "grad_table");
    HSA_CHECK(grad_table.ndim() == 2,
              "embedding_backward: grad_table " << shape_string(grad_table.shape()) << " must be [V, D]");
    const int64_t V = grad_table.size(0), D = grad_table.size(1), N = ids.numel();
    check_numel(grad_out, N * D, "embedding_backward", "grad_out");
    // Group positions by id (counting sort, positions in increasing order), then each table
    // row sums its positions in that order: deterministic, one thread per row.
    std::vector<int64_t> start(static_cast<size_t>(V) + 1, 0);
    for (int64_t n = 0; n < N; ++n) {
        HSA_CHECK(pi[n] >= 0 && pi[n] < V, "embedding_backward: id " << pi[n] << " at position " << n
                                                                     << " is outside the vocabulary [0, " << V << ")");
        ++start[static_cast<size_t>(pi[n]) + 1];
    }
    for (int64_t v = 0; v < V; ++v) start[v + 1] += start[v];
    std::vector<int64_t> positions(static_cast<size_t>(N));
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t n = 0; n < N; ++n) positions[static_cast<size_t>(fill[static_cast<size_t>(pi[n])]++)] = n;
    }
#pragma omp parallel if ((N + V) * D >= kMinParallelWork)
    {
        std::vector<double> acc(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 16)
        for (int64_t v = 0; v < V; ++v) {
            float* row = pt + v * D;
            const int64_t begin = start[v], end = start[v + 1];
            if (begin == end) {
                for (int64_t j = 0; j < D; ++j) row[j] = 0.0f;
                continue;
            }
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t p = begin; p < end; ++p) {
                const float* g = pg + positions[static_cast<size_t>(p)] * D;
                for (int64_t j = 0; j < D; ++j) acc[j] += g[j];
            }
            for (int64_t j = 0; j < D; ++j) row[j] = static_cast<float>(acc[j]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// GEMM: out[bo] (+)= sum over the batches mapped to bo of op(a[ba]) . op(b[bb]).
// b is packed (transposed copy when needed) to [Bb, K, N], so the inner loop streams a
// contiguous row of b into a row of double accumulators; a 4-row x 256-column tile of out
// is one task. Each out element sums k = 0..K-1 (and batch 0..B-1) in order, in double.

void CpuBackend::gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& out,
                      bool accumulate) {
    const float* pa = f32_data(a, "gemm", "a");
    const float* pb_raw = f32_data(b, "gemm", "b");
    float* po = f32_data(out, "gemm", "out");
    const MatShape sa = mat_shape(a, "a"), sb = mat_shape(b, "b"), so = mat_shape(out, "out");
    const int64_t M = transpose_a ? sa.cols : sa.rows;
    const int64_t K = transpose_a ? sa.rows : sa.cols;
    const int64_t Kb = transpose_b ? sb.cols : sb.rows;
    const int64_t N = transpose_b ? sb.rows : sb.cols;
    HSA_CHECK(K == Kb, "gemm: inner dims differ: op(a) of " << shape_string(a.shape()) << (transpose_a ? " (T)" : "")
                                                            << " has " << K << " columns, op(b) of "
                                                            << shape_string(b.shape()) << (transpose_b ? " (T)" : "")
                                                            << " has " << Kb << " rows");
    HSA_CHECK(so.rows == M && so.cols == N, "gemm: out " << shape_string(out.shape()) << " should end in [" << M
                                                         << ", " << N << "]");
    const int64_t B = std::max(sa.batch, std::max(sb.batch, so.batch));
    HSA_CHECK((sa.batch == 1 || sa.batch == B) && (sb.batch == 1 || sb.batch == B) && (so.batch == 1 || so.batch == B),
              "gemm: batch counts a " << sa.batch << ", b " << sb.batch << ", out " << so.batch
                                      << " must each be 1 or a common B = " << B);
    const int64_t Bo = so.batch;
    const int64_t Bsum = (Bo == 1) ? B : 1;  // batches summed into one out matrix

    // b as [Bb, K, N], contiguous in N.
    std::vector<float> packed;
    const float* pb = pb_raw;
    if (transpose_b) {
        packed.resize(static_cast<size_t>(sb.batch * K * N));
        const int64_t rows = sb.batch * K;
#pragma omp parallel for schedule(static) if (rows * N >= kMinParallelWork)
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t bb = r / K, k = r % K;
            const float* s = pb_raw + bb * N * K + k;  // b[bb] is [N, K]
            float* d = packed.data() + r * N;
            for (int64_t n = 0; n < N; ++n) d[n] = s[n * K];
        }
        pb = packed.data();
    }
    // a element (m, k) of batch ba at pa + ba * M * K + m * a_m + k * a_k.
    const int64_t a_m = transpose_a ? 1 : K, a_k = transpose_a ? M : 1;
    const int64_t a_bstride = (sa.batch == 1) ? 0 : M * K;
    const int64_t b_bstride = (sb.batch == 1) ? 0 : K * N;

    constexpr int64_t MR = 4, NB = 256;
    const int64_t m_tiles = (M + MR - 1) / MR, n_tiles = (N + NB - 1) / NB;
    const int64_t tasks = Bo * m_tiles * n_tiles;
#pragma omp parallel for schedule(dynamic, 1) if (Bsum * Bo * M * N * K >= kMinParallelWork * 8)
    for (int64_t task = 0; task < tasks; ++task) {
        const int64_t bo = task / (m_tiles * n_tiles);
        const int64_t rem = task % (m_tiles * n_tiles);
        const int64_t m0 = (rem / n_tiles) * MR, n0 = (rem % n_tiles) * NB;
        const int64_t mr = std::min(MR, M - m0), nb = std::min(NB, N - n0);
        double acc[MR][NB];
        for (int64_t i = 0; i < mr; ++i)
            for (int64_t j = 0; j < nb; ++j) acc[i][j] = 0.0;
        for (int64_t s = 0; s < Bsum; ++s) {
            const int64_t batch = (Bo == 1) ? s : bo;
            const float* ab = pa + batch * a_bstride;
            const float* bb = pb + batch * b_bstride + n0;
            if (mr == MR) {
                double* acc0 = acc[0];
                double* acc1 = acc[1];
                double* acc2 = acc[2];
                double* acc3 = acc[3];
                for (int64_t k = 0; k < K; ++k) {
                    const double x0 = ab[(m0 + 0) * a_m + k * a_k];
                    const double x1 = ab[(m0 + 1) * a_m + k * a_k];
                    const double x2 = ab[(m0 + 2) * a_m + k * a_k];
                    const double x3 = ab[(m0 + 3) * a_m + k * a_k];
                    const float* brow = bb + k * N;
                    for (int64_t j = 0; j < nb; ++j) {
                        const double y = brow[j];
                        acc0[j] += x0 * y;
                        acc1[j] += x1 * y;
                        acc2[j] += x2 * y;
                        acc3[j] += x3 * y;
                    }
                }
            } else {
                for (int64_t i = 0; i < mr; ++i) {
                    double* acci = acc[i];
                    for (int64_t k = 0; k < K; ++k) {
                        const double x = ab[(m0 + i) * a_m + k * a_k];
                        const float* brow = bb + k * N;
                        for (int64_t j = 0; j < nb; ++j) acci[j] += x * static_cast<double>(brow[j]);
                    }
                }
            }
        }
        for (int64_t i = 0; i < mr; ++i) {
            float* orow = po + bo * M * N + (m0 + i) * N + n0;
            if (accumulate) {
                for (int64_t j = 0; j < nb; ++j) orow[j] = static_cast<float>(static_cast<double>(orow[j]) + acc[i][j]);
            } else {
                for (int64_t j = 0; j < nb; ++j) orow[j] = static_cast<float>(acc[i][j]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// RMSNorm over the last dim: out = x * inv_rms * weight, inv_rms = 1 / sqrt(mean(x^2) + eps).

void CpuBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& out, Tensor& inv_rms) {
    const float* px = f32_data(x, "rmsnorm", "x");
    float* po = f32_data(out, "rmsnorm", "out");
    float* pr = f32_data(inv_rms, "rmsnorm", "inv_rms");
    HSA_CHECK(x.ndim() >= 1 && x.size(-1) > 0, "rmsnorm: x " << shape_string(x.shape()) << " needs a last dim D > 0");
    const int64_t D = x.size(-1), N = x.numel() / D;
    const float* pw = nullptr;
    if (weight.defined()) {
        pw = f32_data(weight, "rmsnorm", "weight");
        HSA_CHECK(weight.numel() == D, "rmsnorm: weight " << shape_string(weight.shape()) << " should be [" << D << "]");
    }
    check_numel(out, N * D, "rmsnorm", "out");
    check_numel(inv_rms, N, "rmsnorm", "inv_rms");
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
    for (int64_t n = 0; n < N; ++n) {
        const float* xr = px + n * D;
        float* orow = po + n * D;
        double ss = 0.0;
        for (int64_t j = 0; j < D; ++j) ss += static_cast<double>(xr[j]) * xr[j];
        const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + static_cast<double>(eps));
        pr[n] = static_cast<float>(r);
        if (pw) {
            for (int64_t j = 0; j < D; ++j) orow[j] = static_cast<float>(xr[j] * r * pw[j]);
        } else {
            for (int64_t j = 0; j < D; ++j) orow[j] = static_cast<float>(xr[j] * r);
        }
    }
}

// y_j = x_j r w_j with r = (mean(x^2) + eps)^(-1/2), dr/dx_i = -r^3 x_i / D:
// dx_i = r w_i g_i - x_i r^3 / D * sum_j g_j w_j x_j;  dw_j = sum_n g_nj x_nj r_n.
void CpuBackend::rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                  const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight) {
    const float* px = f32_data(x, "rmsnorm_backward", "x");
    const float* pr = f32_data(inv_rms, "rmsnorm_backward", "inv_rms");
    const float* pg = f32_data(grad_out, "rmsnorm_backward", "grad_out");
    HSA_CHECK(x.ndim() >= 1 && x.size(-1) > 0,
              "rmsnorm_backward: x " << shape_string(x.shape()) << " needs a last dim D > 0");
    const int64_t D = x.size(-1), N = x.numel() / D;
    const float* pw = nullptr;
    if (weight.defined()) {
        pw = f32_data(weight, "rmsnorm_backward", "weight");
        HSA_CHECK(weight.numel() == D,
                  "rmsnorm_backward: weight " << shape_string(weight.shape()) << " should be [" << D << "]");
    }
    check_numel(inv_rms, N, "rmsnorm_backward", "inv_rms");
    check_numel(grad_out, N * D, "rmsnorm_backward", "grad_out");
    if (grad_x.defined()) {
        float* pgx = f32_data(grad_x, "rmsnorm_backward", "grad_x");
        check_numel(grad_x, N * D, "rmsnorm_backward", "grad_x");
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
        for (int64_t n = 0; n < N; ++n) {
            const float* xr = px + n * D;
            const float* gr = pg + n * D;
            float* dx = pgx + n * D;
            const double r = pr[n];
            double dot = 0.0;
            for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(gr[j]) * (pw ? pw[j] : 1.0f) * xr[j];
            const double c = dot * r * r * r / static_cast<double>(D);
            for (int64_t j = 0; j < D; ++j) {
                const double gw = static_cast<double>(gr[j]) * (pw ? pw[j] : 1.0f);
                dx[j] = static_cast<float>(r * gw - xr[j] * c);
            }
        }
    }
    if (grad_weight.defined()) {
        HSA_CHECK(pw != nullptr, "rmsnorm_backward: grad_weight is defined but weight is undefined");
        float* pgw = f32_data(grad_weight, "rmsnorm_backward", "grad_weight");
        check_numel(grad_weight, D, "rmsnorm_backward", "grad_weight");
        constexpr int64_t kBlock = 64;
        const int64_t blocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t begin = blk * kBlock, end = std::min(D, begin + kBlock);
            double acc[kBlock] = {};
            for (int64_t n = 0; n < N; ++n) {
                const double r = pr[n];
                const float* xr = px + n * D;
                const float* gr = pg + n * D;
                for (int64_t j = begin; j < end; ++j) acc[j - begin] += static_cast<double>(gr[j]) * xr[j] * r;
            }
            for (int64_t j = begin; j < end; ++j) pgw[j] = static_cast<float>(acc[j - begin]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// RoPE (rotate-half). direction +1: forward rotation by +angle; -1: the inverse (backward).

namespace {

void rope_apply(const Tensor& in, int64_t position_offset, float base, Tensor& out, double direction,
                const char* op) {
    const float* pi = f32_data(in, op, "x");
    float* po = f32_data(out, op, "out");
    HSA_CHECK(in.ndim() == 4, op << ": x " << shape_string(in.shape()) << " must be [B, T, H, d]");
    const int64_t B = in.size(0), T = in.size(1), H = in.size(2), d = in.size(3);
    HSA_CHECK(d % 2 == 0, op << ": head dim d = " << d << " of " << shape_string(in.shape()) << " must be even");
    HSA_CHECK(out.shape() == in.shape(),
              op << ": out " << shape_string(out.shape()) << " should be " << shape_string(in.shape()));
    HSA_CHECK(base > 0.0f, op << ": base " << base << " must be positive");
    const int64_t half = d / 2;
    // cos/sin per (t, i), angle computed in double.
    std::vector<double> cosv(static_cast<size_t>(T * half)), sinv(static_cast<size_t>(T * half));
    std::vector<double> freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
        freq[i] = std::pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / static_cast<double>(d));
#pragma omp parallel for schedule(static) if (T * half >= kMinParallelWork)
    for (int64_t t = 0; t < T; ++t) {
        const double pos = static_cast<double>(position_offset + t);
        for (int64_t i = 0; i < half; ++i) {
            const double angle = pos * freq[i];
            cosv[t * half + i] = std::cos(angle);
            sinv[t * half + i] = direction * std::sin(angle);
        }
    }
    const int64_t rows = B * T;
#pragma omp parallel for schedule(static) if (rows * H * d >= kMinParallelWork)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t t = row % T;
        const double* c = cosv.data() + t * half;
        const double* s = sinv.data() + t * half;
        for (int64_t h = 0; h < H; ++h) {
            const float* x = pi + (row * H + h) * d;
            float* y = po + (row * H + h) * d;
            for (int64_t i = 0; i < half; ++i) {
                const double x0 = x[i], x1 = x[i + half];
                y[i] = static_cast<float>(x0 * c[i] - x1 * s[i]);
                y[i + half] = static_cast<float>(x1 * c[i] + x0 * s[i]);
            }
        }
    }
}

}  // namespace

void CpuBackend::rope_forward(const Tensor& x, int64_t position_offset, float base, Tensor& out) {
    rope_apply(x, position_offset, base, out, 1.0, "rope");
}

void CpuBackend::rope_backward(const Tensor& grad_out, int64_t position_offset, float base, Tensor& grad_x) {
    if (!grad_x.defined()) return;
    rope_apply(grad_out, position_offset, base, grad_x, -1.0, "rope_backward");
}

// ---------------------------------------------------------------------------------------
// SwiGLU: out = silu(g) * u, silu(g) = g * sigmoid(g); d silu / dg = s (1 + g (1 - s)).

void CpuBackend::swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
    const float* pg = f32_data(gate, "swiglu", "gate");
    const float* pu = f32_data(up, "swiglu", "up");
    float* po = f32_data(out, "swiglu", "out");
    HSA_CHECK(up.shape() == gate.shape(),
              "swiglu: up " << shape_string(up.shape()) << " should match gate " << shape_string(gate.shape()));
    const int64_t n = gate.numel();
    check_numel(out, n, "swiglu", "out");
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork / 8)
    for (int64_t i = 0; i < n; ++i) {
        const double g = pg[i];
        const double s = 1.0 / (1.0 + std::exp(-g));
        po[i] = static_cast<float>(g * s * pu[i]);
    }
}

void CpuBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, Tensor& grad_gate,
                                 Tensor& grad_up) {
    const float* pg = f32_data(gate, "swiglu_backward", "gate");
    const float* pu = f32_data(up, "swiglu_backward", "up");
    const float* pgo = f32_data(grad_out, "swiglu_backward", "grad_out");
    const int64_t n = gate.numel();
    check_numel(up, n, "swiglu_backward", "up");
    check_numel(grad_out, n, "swiglu_backward", "grad_out");
    float* pgg = nullptr;
    float* pgu = nullptr;
    if (grad_gate.defined()) {
        pgg = f32_data(grad_gate, "swiglu_backward", "grad_gate");
        check_numel(grad_gate, n, "swiglu_backward", "grad_gate");
    }
    if (grad_up.defined()) {
        pgu = f32_data(grad_up, "swiglu_backward", "grad_up");
        check_numel(grad_up, n, "swiglu_backward", "grad_up");
    }
    if (!pgg && !pgu) return;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork / 8)
    for (int64_t i = 0; i < n; ++i) {
        const double g = pg[i];
        const double s = 1.0 / (1.0 + std::exp(-g));
        const double go = pgo[i];
        if (pgg) pgg[i] = static_cast<float>(go * pu[i] * s * (1.0 + g * (1.0 - s)));
        if (pgu) pgu[i] = static_cast<float>(go * g * s);
    }
}

// ---------------------------------------------------------------------------------------
// cross-entropy: loss = sum_i mask_i nll_i / sum_i mask_i over non-ignored rows (0 when that
// sum is 0); nll_i = lse_i - logits[i, target_i].

namespace {

struct CrossEntropyInputs {
    const float* logits;
    const int32_t* targets;
    const float* mask;  // null: all ones
    int64_t N, V;
};

CrossEntropyInputs ce_inputs(const Tensor& logits, const Tensor& targets, const Tensor& mask, const char* op) {
    CrossEntropyInputs in{};
    in.logits = f32_data(logits, op, "logits");
    in.targets = i32_data(targets, op, "targets");
    HSA_CHECK(logits.ndim() == 2, op << ": logits " << shape_string(logits.shape()) << " must be [N, V]");
    in.N = logits.size(0);
    in.V = logits.size(1);
    HSA_CHECK(targets.numel() == in.N,
              op << ": targets " << shape_string(targets.shape()) << " should have N = " << in.N << " elements");
    if (mask.defined()) {
        in.mask = f32_data(mask, op, "mask");
        HSA_CHECK(mask.numel() == in.N,
                  op << ": mask " << shape_string(mask.shape()) << " should have N = " << in.N << " elements");
    }
    for (int64_t i = 0; i < in.N; ++i)
        HSA_CHECK(in.targets[i] < in.V,
                  op << ": target " << in.targets[i] << " at row " << i << " is outside [0, " << in.V << ")");
    return in;
}

// Serial, in row order: the normaliser sum_i mask_i over non-ignored rows.
double ce_denominator(const CrossEntropyInputs& in) {
    double total = 0.0;
    for (int64_t i = 0; i < in.N; ++i)
        if (in.targets[i] >= 0) total += in.mask ? static_cast<double>(in.mask[i]) : 1.0;
    return total;
}

}  // namespace

void CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,
                                       Tensor& lse) {
    const CrossEntropyInputs in = ce_inputs(logits, targets, mask, "cross_entropy");
    float* ploss = f32_data(loss, "cross_entropy", "loss");
    float* plse = f32_data(lse, "cross_entropy", "lse");
    check_numel(loss, 1, "cross_entropy", "loss");
    check_numel(lse, in.N, "cross_entropy", "lse");
    HSA_CHECK(in.V > 0 || in.N == 0, "cross_entropy: logits " << shape_string(logits.shape()) << " has V = 0");
    std::vector<double> nll(static_cast<size_t>(in.N), 0.0);
    const int64_t N = in.N, V = in.V;
#pragma omp parallel for schedule(static) if (N * V >= kMinParallelWork / 8)
    for (int64_t i = 0; i < N; ++i) {
        const float* row = in.logits + i * V;
        float mx = row[0];
        for (int64_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
        double s = 0.0;
        for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(row[v]) - mx);
        const double l = static_cast<double>(mx) + std::log(s);
        plse[i] = static_cast<float>(l);
        const int32_t t = in.targets[i];
        if (t >= 0) nll[static_cast<size_t>(i)] = (l - row[t]) * (in.mask ? static_cast<double>(in.mask[i]) : 1.0);
    }
    const double denom = ce_denominator(in);
    double total = 0.0;
    for (int64_t i = 0; i < N; ++i) total += nll[static_cast<size_t>(i)];
    ploss[0] = denom == 0.0 ? 0.0f : static_cast<float>(total / denom);
}

// d loss / d logits[i, v] = grad_loss * mask_i / denom * (softmax_iv - [v == target_i]).
void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& mask,
                                        const Tensor& lse, float grad_loss, Tensor& grad_logits) {
    if (!grad_logits.defined()) return;
    const CrossEntropyInputs in = ce_inputs(logits, targets, mask, "cross_entropy_backward");
    const float* plse = f32_data(lse, "cross_entropy_backward", "lse");
    float* pgrad = f32_data(grad_logits, "cross_entropy_backward", "grad_logits");
    check_numel(lse, in.N, "cross_entropy_backward", "lse");
    HSA_CHECK(grad_logits.shape() == logits.shape(), "cross_entropy_backward: grad_logits "
                                                         << shape_string(grad_logits.shape()) << " should be "
                                                         << shape_string(logits.shape()));
    const double denom = ce_denominator(in);
    const int64_t N = in.N, V = in.V;
#pragma omp parallel for schedule(static) if (N * V >= kMinParallelWork / 8)
    for (int64_t i = 0; i < N; ++i) {
        float* g = pgrad + i * V;
        const int32_t t = in.targets[i];
        const double w = (t < 0 || denom == 0.0)
                             ? 0.0
                             : static_cast<double>(grad_loss) * (in.mask ? static_cast<double>(in.mask[i]) : 1.0) / denom;
        if (w == 0.0) {
            for (int64_t v = 0; v < V; ++v) g[v] = 0.0f;
            continue;
        }
        const float* row = in.logits + i * V;
        const double l = plse[i];
        for (int64_t v = 0; v < V; ++v) g[v] = static_cast<float>(w * std::exp(static_cast<double>(row[v]) - l));
        g[t] = static_cast<float>(w * (std::exp(static_cast<double>(row[t]) - l) - 1.0));
    }
}

// ---------------------------------------------------------------------------------------
// AdamW: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; mhat = m / (1 - b1^step),
// vhat = v / (1 - b2^step); p -= lr (mhat / (sqrt(vhat) + eps) + wd p).

void CpuBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1,
                            float beta2, float eps, float weight_decay, int64_t step) {
    float* pp = f32_data(param, "adamw", "param");
    const float* pg = f32_data(grad, "adamw", "grad");
    float* pm = f32_data(m, "adamw", "m");
    float* pv = f32_data(v, "adamw", "v");
    const int64_t n = param.numel();
    check_numel(grad, n, "adamw", "grad");
    check_numel(m, n, "adamw", "m");
    check_numel(v, n, "adamw", "v");
    HSA_CHECK(step >= 1, "adamw: step " << step << " must be >= 1 (steps count from 1)");
    const double b1 = beta1, b2 = beta2;
    const double c1 = 1.0 - std::pow(b1, static_cast<double>(step));
    const double c2 = 1.0 - std::pow(b2, static_cast<double>(step));
    const double lrd = lr, epsd = eps, wd = weight_decay;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) {
        const double g = pg[i];
        const double mi = b1 * pm[i] + (1.0 - b1) * g;
        const double vi = b2 * pv[i] + (1.0 - b2) * g * g;
        pm[i] = static_cast<float>(mi);
        pv[i] = static_cast<float>(vi);
        const double mhat = mi / c1, vhat = vi / c2;
        const double p = pp[i];
        pp[i] = static_cast<float>(p - lrd * (mhat / (std::sqrt(vhat) + epsd) + wd * p));
    }
}

}  // namespace hsa
