// CpuBackend: elementwise ops, data movement, embedding, GEMM, RMSNorm, RoPE, SwiGLU,
// cross-entropy and AdamW. The reference implementation the CUDA kernels are tested against.
//
// Determinism: every output element is written by exactly one OpenMP thread, and the order
// in which its terms are added is fixed by the code, not by the schedule. The only
// cross-thread reductions (sum, sum_of_squares) sum fixed-size blocks in parallel and then
// the block sums serially, in order. So results are bit-identical for any thread count.
// All validation happens before any parallel region (no exceptions inside OpenMP); the
// argument and shape checks are shared with the other backends (core/backend_checks.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/backend_checks.h"
#include "core/cpu/cpu_backend.h"

namespace hsa {

namespace {

// Loops over less work than this run on the calling thread (an `if` clause): forking a team
// for a few hundred elements costs more than the work, badly so on an oversubscribed host.
// The clause never changes results, only which thread computes an element.
constexpr int64_t kMinParallelWork = int64_t{1} << 14;

constexpr Device kCpu = Device::CPU;

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

}  // namespace

// ---------------------------------------------------------------------------------------
// elementwise and data movement

void CpuBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
    const int64_t n = checks::check_binary("add", a, b, out, kCpu);
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
}

void CpuBackend::mul(const Tensor& a, const Tensor& b, Tensor& out) {
    const int64_t n = checks::check_binary("mul", a, b, out, kCpu);
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) po[i] = pa[i] * pb[i];
}

void CpuBackend::scale(const Tensor& a, float alpha, Tensor& out) {
    const int64_t n = checks::check_scale(a, out, kCpu);
    const float* pa = a.data<float>();
    float* po = out.data<float>();
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) po[i] = alpha * pa[i];
}

void CpuBackend::axpy(float alpha, const Tensor& x, Tensor& target) {
    const int64_t n = checks::check_axpy(x, target, kCpu);
    const float* px = x.data<float>();
    float* pt = target.data<float>();
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) pt[i] += alpha * px[i];
}

void CpuBackend::copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, Tensor& dst,
                           int64_t dst_len, int64_t dst_start, int64_t length, int64_t inner, bool accumulate) {
    checks::check_copy_rows(src, outer, src_len, src_start, dst, dst_len, dst_start, length, inner, kCpu);
    const float* ps = src.data<float>();
    float* pd = dst.data<float>();
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
    checks::check_sum_middle(x, outer, n, inner, out, kCpu);
    const float* px = x.data<float>();
    float* po = out.data<float>();
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
    checks::check_broadcast_middle(x, outer, n, inner, out, kCpu);
    const float* px = x.data<float>();
    float* po = out.data<float>();
    const int64_t rows = outer * n;
#pragma omp parallel for schedule(static) if (rows * inner >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
        const float* s = px + (r / n) * inner;
        float* d = po + r * inner;
        for (int64_t i = 0; i < inner; ++i) d[i] = alpha * s[i];
    }
}

double CpuBackend::sum_of_squares(const Tensor& x) {
    const float* px = checks::f32_data(x, "sum_of_squares", "x", kCpu);
    return blocked_sum(px, x.numel(), [](double v) { return v * v; });
}

double CpuBackend::sum(const Tensor& x) {
    const float* px = checks::f32_data(x, "sum", "x", kCpu);
    return blocked_sum(px, x.numel(), [](double v) { return v; });
}

// ---------------------------------------------------------------------------------------
// embedding

void CpuBackend::embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) {
    const checks::EmbeddingDims dims = checks::check_embedding(table, ids, out, kCpu);
    const int64_t V = dims.V, D = dims.D, N = dims.N;
    const float* pt = table.data<float>();
    const int32_t* pi = ids.data<int32_t>();
    float* po = out.data<float>();
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
    const checks::EmbeddingDims dims = checks::check_embedding_backward(ids, grad_out, grad_table, kCpu);
    const int64_t V = dims.V, D = dims.D, N = dims.N;
    const int32_t* pi = ids.data<int32_t>();
    const float* pg = grad_out.data<float>();
    float* pt = grad_table.data<float>();
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
    const checks::GemmDims dims = checks::check_gemm(a, transpose_a, b, transpose_b, out, kCpu);
    const int64_t M = dims.M, N = dims.N, K = dims.K, B = dims.batch, Bo = dims.out_batch;
    const float* pa = a.data<float>();
    const float* pb_raw = b.data<float>();
    float* po = out.data<float>();
    const int64_t Bsum = (Bo == 1) ? B : 1;  // batches summed into one out matrix

    // b as [Bb, K, N], contiguous in N.
    std::vector<float> packed;
    const float* pb = pb_raw;
    if (transpose_b) {
        packed.resize(static_cast<size_t>(dims.b_batch * K * N));
        const int64_t rows = dims.b_batch * K;
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
    const int64_t a_bstride = (dims.a_batch == 1) ? 0 : M * K;
    const int64_t b_bstride = (dims.b_batch == 1) ? 0 : K * N;

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
                // The product rounded to f32, then added in f32: what cuBLAS's epilogue does
                // (beta = 1), and what writing the product and adding it with axpy gives, so
                // the tape's accumulation into an owned gradient changes no bits.
                for (int64_t j = 0; j < nb; ++j) orow[j] = orow[j] + static_cast<float>(acc[i][j]);
            } else {
                for (int64_t j = 0; j < nb; ++j) orow[j] = static_cast<float>(acc[i][j]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// RMSNorm over the last dim: out = x * inv_rms * weight, inv_rms = 1 / sqrt(mean(x^2) + eps).

void CpuBackend::rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& out, Tensor& inv_rms) {
    const checks::RmsNormDims dims = checks::check_rmsnorm(x, weight, out, inv_rms, kCpu);
    const int64_t D = dims.D, N = dims.N;
    const float* px = x.data<float>();
    float* po = out.data<float>();
    float* pr = inv_rms.data<float>();
    const float* pw = weight.defined() ? weight.data<float>() : nullptr;
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
                                  const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, bool accumulate_x) {
    const checks::RmsNormDims dims =
        checks::check_rmsnorm_backward(x, weight, inv_rms, grad_out, grad_x, grad_weight, kCpu);
    const int64_t D = dims.D, N = dims.N;
    const float* px = x.data<float>();
    const float* pr = inv_rms.data<float>();
    const float* pg = grad_out.data<float>();
    const float* pw = weight.defined() ? weight.data<float>() : nullptr;
    if (grad_x.defined()) {
        float* pgx = grad_x.data<float>();
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
                const float value = static_cast<float>(r * gw - xr[j] * c);
                dx[j] = accumulate_x ? dx[j] + value : value;
            }
        }
    }
    if (grad_weight.defined()) {
        float* pgw = grad_weight.data<float>();
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
    const checks::RopeDims dims = checks::check_rope(op, in, base, out, kCpu);
    const int64_t B = dims.B, T = dims.T, H = dims.H, d = dims.d;
    const float* pi = in.data<float>();
    float* po = out.data<float>();
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
    const int64_t n = checks::check_swiglu(gate, up, out, kCpu);
    const float* pg = gate.data<float>();
    const float* pu = up.data<float>();
    float* po = out.data<float>();
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork / 8)
    for (int64_t i = 0; i < n; ++i) {
        const double g = pg[i];
        const double s = 1.0 / (1.0 + std::exp(-g));
        po[i] = static_cast<float>(g * s * pu[i]);
    }
}

void CpuBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, Tensor& grad_gate,
                                 Tensor& grad_up) {
    const int64_t n = checks::check_swiglu_backward(gate, up, grad_out, grad_gate, grad_up, kCpu);
    const float* pg = gate.data<float>();
    const float* pu = up.data<float>();
    const float* pgo = grad_out.data<float>();
    float* pgg = grad_gate.defined() ? grad_gate.data<float>() : nullptr;
    float* pgu = grad_up.defined() ? grad_up.data<float>() : nullptr;
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

using checks::CrossEntropyInputs;

// The shared checks plus, on the host, every target < V.
CrossEntropyInputs ce_inputs(const Tensor& logits, const Tensor& targets, const Tensor& mask, const char* op) {
    const CrossEntropyInputs in = checks::check_cross_entropy_inputs(op, logits, targets, mask, kCpu);
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
    checks::check_cross_entropy_outputs(in, logits, loss, lse, kCpu);
    float* ploss = loss.data<float>();
    float* plse = lse.data<float>();
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
    checks::check_cross_entropy_grad(in, logits, lse, grad_logits, kCpu);
    const float* plse = lse.data<float>();
    float* pgrad = grad_logits.data<float>();
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
    const int64_t n = checks::check_adamw(param, grad, m, v, step, kCpu);
    float* pp = param.data<float>();
    const float* pg = grad.data<float>();
    float* pm = m.data<float>();
    float* pv = v.data<float>();
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
