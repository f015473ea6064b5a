// CPU reference for the attention family: local attention (sliding-window causal or
// bidirectional, GQA), retrieval (top-K chunk selection and chunk weights) and
// hierarchical sparse attention. Semantics: core/backend.h; math: shared/design/MODEL.md.
//
// Determinism: every parallel loop is over independent outputs; each output element is
// written by exactly one iteration, which computes it in a fixed order. Gradients that
// collect contributions from many queries (keys, values, landmarks, memory rows) are
// computed per key / landmark / memory chunk, looping over the queries that use it in
// ascending order. No atomics, so results are bit-identical for any thread count.
// Dot products, softmax sums and gradient accumulators are double.
//
// Backward passes recompute probabilities from the forward's log-sum-exp
// (p = exp(score - lse)), FlashAttention style, and never store a T x T matrix.
//
// Argument and shape checks are shared with the other backends (core/backend_checks.h);
// this file adds the host-side check that chunk indices are -1 or a chunk < C.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/backend_checks.h"
#include "core/cpu/cpu_backend.h"

namespace hsa {

namespace {

using checks::AttentionDims;
using checks::HsaDims;
using checks::RetrievalDims;

constexpr Device kCpu = Device::CPU;

double dot(const float* a, const float* b, int64_t n) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    return acc;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---------------------------------------------------------------- local attention

// Keys [lo, hi] that query t sees.
void keys_of_query(AttentionSpan span, int64_t T, int64_t t, int64_t& lo, int64_t& hi) {
    if (!span.causal) {
        lo = 0;
        hi = T - 1;
        return;
    }
    hi = t;
    lo = span.window > 0 ? std::max<int64_t>(0, t - span.window + 1) : 0;
}

// Queries [lo, hi] that see key s (the inverse of keys_of_query).
void queries_of_key(AttentionSpan span, int64_t T, int64_t s, int64_t& lo, int64_t& hi) {
    if (!span.causal) {
        lo = 0;
        hi = T - 1;
        return;
    }
    lo = s;
    hi = span.window > 0 ? std::min<int64_t>(T - 1, s + span.window - 1) : T - 1;
}

// ---------------------------------------------------------------- retrieval

// Serial (exceptions cannot leave an OpenMP region): every index is -1 or a chunk < C.
void check_chunk_indices(const char* op, const Tensor& indices, int64_t C) {
    const int32_t* idx = indices.data<int32_t>();
    const int64_t n = indices.numel();
    for (int64_t i = 0; i < n; ++i) {
        HSA_CHECK(idx[i] == -1 || (idx[i] >= 0 && idx[i] < C),
                  op << ": indices element " << i << " is " << idx[i] << ", expected -1 or a chunk in [0, " << C
                     << ")");
    }
}

// Scores s_k = qr[t,r] . l[c_k, r] / sqrt(dr) and weights w_k of one (b, t, r) row of
// indices, in double. Padding entries (index -1) get weight 0 and take no part.
void chunk_weights_row(const float* qr_row, const float* landmarks_b, const int32_t* idx_row, int64_t K, int64_t Hr,
                       int64_t dr, int64_t r, WeightKind kind, double* scores, double* weights,
                       double* sigmoids) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(dr));
    for (int64_t k = 0; k < K; ++k) {
        const int32_t c = idx_row[k];
        scores[k] = c < 0 ? 0.0 : dot(qr_row, landmarks_b + (c * Hr + r) * dr, dr) * scale;
        weights[k] = 0.0;
        sigmoids[k] = 0.0;
    }
    if (kind == WeightKind::Softmax) {
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t k = 0; k < K; ++k)
            if (idx_row[k] >= 0) m = std::max(m, scores[k]);
        if (m == -std::numeric_limits<double>::infinity()) return;  // nothing selected
        double total = 0.0;
        for (int64_t k = 0; k < K; ++k)
            if (idx_row[k] >= 0) total += std::exp(scores[k] - m);
        for (int64_t k = 0; k < K; ++k)
            if (idx_row[k] >= 0) weights[k] = std::exp(scores[k] - m) / total;
    } else {
        double remaining = 1.0;  // prod over earlier valid entries of (1 - sigmoid)
        for (int64_t k = 0; k < K; ++k) {
            if (idx_row[k] < 0) continue;
            sigmoids[k] = sigmoid(scores[k]);
            weights[k] = sigmoids[k] * remaining;
            remaining *= sigmoid(-scores[k]);  // 1 - sigmoid(s), without cancellation
        }
    }
}

// ---------------------------------------------------------------- HSA

// Scores q . kmem[j] / sqrt(d) for the S rows of chunk c (KV head g) of batch b.
void chunk_scores(const HsaDims& dims, const float* q_row, const float* kmem, int64_t b, int64_t g, int64_t c,
                  double* scores) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(dims.d));
    for (int64_t j = 0; j < dims.S; ++j) {
        const float* key = kmem + ((b * dims.Tm + c * dims.S + j) * dims.Hk + g) * dims.d;
        scores[j] = dot(q_row, key, dims.d) * scale;
    }
}

}  // namespace

// ================================================================ local attention

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span,
                                   Tensor& out, Tensor& lse) {
    const AttentionDims D = checks::check_attention_forward(q, k, v, span, out, lse, kCpu);
    const float* qp = q.data<float>();
    const float* kp = k.data<float>();
    const float* vp = v.data<float>();
    float* op_out = out.data<float>();
    float* lp = lse.data<float>();
    const double scale = 1.0 / std::sqrt(static_cast<double>(D.d));

    const int64_t rows = D.B * D.T * D.H;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t h = row % D.H;
        const int64_t t = (row / D.H) % D.T;
        const int64_t b = row / (D.H * D.T);
        const int64_t g = h / D.group;
        const float* q_row = qp + row * D.d;
        int64_t lo, hi;
        keys_of_query(span, D.T, t, lo, hi);

        std::vector<double> scores(static_cast<size_t>(hi - lo + 1));
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t s = lo; s <= hi; ++s) {
            scores[s - lo] = dot(q_row, kp + ((b * D.T + s) * D.Hk + g) * D.d, D.d) * scale;
            m = std::max(m, scores[s - lo]);
        }
        double total = 0.0;
        for (int64_t s = lo; s <= hi; ++s) total += std::exp(scores[s - lo] - m);

        std::vector<double> acc(static_cast<size_t>(D.d), 0.0);
        for (int64_t s = lo; s <= hi; ++s) {
            const double p = std::exp(scores[s - lo] - m) / total;
            const float* v_row = vp + ((b * D.T + s) * D.Hk + g) * D.d;
            for (int64_t i = 0; i < D.d; ++i) acc[i] += p * v_row[i];
        }
        for (int64_t i = 0; i < D.d; ++i) op_out[row * D.d + i] = static_cast<float>(acc[i]);
        lp[row] = static_cast<float>(m + std::log(total));
    }
}

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& lse, const Tensor& grad_out, AttentionSpan span, Tensor& grad_q,
                                    Tensor& grad_k, Tensor& grad_v) {
    const checks::AttentionBackwardDims D =
        checks::check_attention_backward(q, k, v, out, lse, grad_out, span, grad_q, grad_k, grad_v, kCpu);
    const bool want_q = D.want_q, want_k = D.want_k, want_v = D.want_v;
    if (!want_q && !want_k && !want_v) return;

    const float* qp = q.data<float>();
    const float* kp = k.data<float>();
    const float* vp = v.data<float>();
    const float* outp = out.data<float>();
    const float* lp = lse.data<float>();
    const float* gop = grad_out.data<float>();
    const double scale = 1.0 / std::sqrt(static_cast<double>(D.d));
    const int64_t rows = D.B * D.T * D.H;

    // delta[b,t,h] = rowsum(dO * O): the softmax backward's correction term.
    std::vector<double> delta(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) delta[row] = dot(gop + row * D.d, outp + row * D.d, D.d);

    // For query row (b, t, h) and key s: P = exp(score - lse), dS = P * (dO.v_s - delta).
    auto prob_and_dscore = [&](int64_t b, int64_t t, int64_t h, int64_t s, double& p, double& ds) {
        const int64_t row = (b * D.T + t) * D.H + h;
        const int64_t g = h / D.group;
        const int64_t key_row = (b * D.T + s) * D.Hk + g;
        const double score = dot(qp + row * D.d, kp + key_row * D.d, D.d) * scale;
        p = std::exp(score - static_cast<double>(lp[row]));
        const double dp = dot(gop + row * D.d, vp + key_row * D.d, D.d);
        ds = p * (dp - delta[row]);
    };

    if (want_q) {
        float* gq = grad_q.data<float>();
#pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t h = row % D.H;
            const int64_t t = (row / D.H) % D.T;
            const int64_t b = row / (D.H * D.T);
            const int64_t g = h / D.group;
            int64_t lo, hi;
            keys_of_query(span, D.T, t, lo, hi);
            std::vector<double> acc(static_cast<size_t>(D.d), 0.0);
            for (int64_t s = lo; s <= hi; ++s) {
                double p, ds;
                prob_and_dscore(b, t, h, s, p, ds);
                const float* k_row = kp + ((b * D.T + s) * D.Hk + g) * D.d;
                for (int64_t i = 0; i < D.d; ++i) acc[i] += ds * k_row[i];
            }
            for (int64_t i = 0; i < D.d; ++i) gq[row * D.d + i] = static_cast<float>(acc[i] * scale);
        }
    }

    if (want_k || want_v) {
        // One iteration per key row (b, s, g): loop over the queries that see it, in order.
        float* gk = want_k ? grad_k.data<float>() : nullptr;
        float* gv = want_v ? grad_v.data<float>() : nullptr;
        const int64_t key_rows = D.B * D.T * D.Hk;
#pragma omp parallel for schedule(static)
        for (int64_t key_row = 0; key_row < key_rows; ++key_row) {
            const int64_t g = key_row % D.Hk;
            const int64_t s = (key_row / D.Hk) % D.T;
            const int64_t b = key_row / (D.Hk * D.T);
            int64_t lo, hi;
            queries_of_key(span, D.T, s, lo, hi);
            std::vector<double> acc_k(static_cast<size_t>(D.d), 0.0), acc_v(static_cast<size_t>(D.d), 0.0);
            for (int64_t t = lo; t <= hi; ++t) {
                for (int64_t h = g * D.group; h < (g + 1) * D.group; ++h) {
                    double p, ds;
                    prob_and_dscore(b, t, h, s, p, ds);
                    const int64_t row = (b * D.T + t) * D.H + h;
                    const float* q_row = qp + row * D.d;
                    const float* go_row = gop + row * D.d;
                    for (int64_t i = 0; i < D.d; ++i) {
                        acc_k[i] += ds * q_row[i];
                        acc_v[i] += p * go_row[i];
                    }
                }
            }
            for (int64_t i = 0; i < D.d; ++i) {
                if (gk) gk[key_row * D.d + i] = static_cast<float>(acc_k[i] * scale);
                if (gv) gv[key_row * D.d + i] = static_cast<float>(acc_v[i]);
            }
        }
    }
}

// ================================================================ retrieval

void CpuBackend::select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size, Tensor& indices) {
    const RetrievalDims D = checks::check_select_chunks(qr, landmarks, chunk_size, indices, kCpu);
    const float* qp = qr.data<float>();
    const float* lp = landmarks.data<float>();
    int32_t* out = indices.data<int32_t>();
    const double scale = 1.0 / std::sqrt(static_cast<double>(D.dr));

    const int64_t rows = D.B * D.T * D.Hr;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t r = row % D.Hr;
        const int64_t t = (row / D.Hr) % D.T;
        const int64_t b = row / (D.Hr * D.T);
        // Visible: c < floor(t / S) and c < C.
        const int64_t visible = std::min(t / chunk_size, D.C);
        struct Candidate {
            double score;
            int64_t chunk;
        };
        std::vector<Candidate> candidates(static_cast<size_t>(visible));
        for (int64_t c = 0; c < visible; ++c) {
            double s = dot(qp + row * D.dr, lp + ((b * D.C + c) * D.Hr + r) * D.dr, D.dr) * scale;
            if (std::isnan(s)) s = -std::numeric_limits<double>::infinity();  // NaN ranks last
            candidates[c] = {s, c};
        }
        // Best first: higher score, ties to the larger (more recent) chunk index.
        const int64_t take = std::min(D.K, visible);
        std::partial_sort(candidates.begin(), candidates.begin() + take, candidates.end(),
                          [](const Candidate& a, const Candidate& b2) {
                              return a.score > b2.score || (a.score == b2.score && a.chunk > b2.chunk);
                          });
        std::sort(candidates.begin(), candidates.begin() + take,
                  [](const Candidate& a, const Candidate& b2) { return a.chunk > b2.chunk; });
        int32_t* out_row = out + row * D.K;
        for (int64_t k = 0; k < D.K; ++k) out_row[k] = k < take ? static_cast<int32_t>(candidates[k].chunk) : -1;
    }
}

void CpuBackend::chunk_weights_forward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                       WeightKind kind, Tensor& weights) {
    const RetrievalDims D = checks::check_chunk_weights_forward(qr, landmarks, indices, weights, kCpu);
    check_chunk_indices("chunk_weights_forward", indices, D.C);
    const float* qp = qr.data<float>();
    const float* lp = landmarks.data<float>();
    const int32_t* ip = indices.data<int32_t>();
    float* wp = weights.data<float>();

    const int64_t rows = D.B * D.T * D.Hr;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t r = row % D.Hr;
        const int64_t b = row / (D.Hr * D.T);
        std::vector<double> scores(D.K), w(D.K), sig(D.K);
        chunk_weights_row(qp + row * D.dr, lp + b * D.C * D.Hr * D.dr, ip + row * D.K, D.K, D.Hr, D.dr, r, kind,
                          scores.data(), w.data(), sig.data());
        for (int64_t k = 0; k < D.K; ++k) wp[row * D.K + k] = static_cast<float>(w[k]);
    }
}

void CpuBackend::chunk_weights_backward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                        WeightKind kind, const Tensor& weights, const Tensor& grad_weights,
                                        Tensor& grad_qr, Tensor& grad_landmarks) {
    const checks::ChunkWeightsBackwardDims D = checks::check_chunk_weights_backward(
        qr, landmarks, indices, weights, grad_weights, grad_qr, grad_landmarks, kCpu);
    const bool want_qr = D.want_qr, want_l = D.want_landmarks;
    if (!want_qr && !want_l) return;
    check_chunk_indices("chunk_weights_backward", indices, D.C);
    const float* qp = qr.data<float>();
    const float* lp = landmarks.data<float>();
    const int32_t* ip = indices.data<int32_t>();
    const float* gwp = grad_weights.data<float>();
    const double scale = 1.0 / std::sqrt(static_cast<double>(D.dr));

    // Pass 1, per (b, t, r): d loss / d score_k (scores already include 1/sqrt(dr)).
    // The weights are recomputed in double from qr and landmarks rather than read back.
    const int64_t rows = D.B * D.T * D.Hr;
    std::vector<double> grad_scores(static_cast<size_t>(rows * D.K), 0.0);
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t r = row % D.Hr;
        const int64_t b = row / (D.Hr * D.T);
        const int32_t* idx_row = ip + row * D.K;
        const float* gw = gwp + row * D.K;
        std::vector<double> scores(D.K), w(D.K), sig(D.K);
        chunk_weights_row(qp + row * D.dr, lp + b * D.C * D.Hr * D.dr, idx_row, D.K, D.Hr, D.dr, r, kind,
                          scores.data(), w.data(), sig.data());
        double* gs = grad_scores.data() + row * D.K;
        if (kind == WeightKind::Softmax) {
            // ds_k = w_k (g_k - sum_j w_j g_j)
            double mean = 0.0;
            for (int64_t k = 0; k < D.K; ++k)
                if (idx_row[k] >= 0) mean += w[k] * gw[k];
            for (int64_t k = 0; k < D.K; ++k)
                if (idx_row[k] >= 0) gs[k] = w[k] * (gw[k] - mean);
        } else {
            // log w_k = log sig_k + sum_{j<k} log(1 - sig_j), so
            // ds_m = g_m w_m (1 - sig_m) - sig_m sum_{k>m} g_k w_k.
            double later = 0.0;  // sum over valid k > m of g_k w_k
            for (int64_t m = D.K - 1; m >= 0; --m) {
                if (idx_row[m] < 0) continue;
                gs[m] = gw[m] * w[m] * (1.0 - sig[m]) - sig[m] * later;
                later += gw[m] * w[m];
            }
        }
    }

    if (want_qr) {
        float* gq = grad_qr.data<float>();
#pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t r = row % D.Hr;
            const int64_t b = row / (D.Hr * D.T);
            const int32_t* idx_row = ip + row * D.K;
            std::vector<double> acc(static_cast<size_t>(D.dr), 0.0);
            for (int64_t k = 0; k < D.K; ++k) {
                const int32_t c = idx_row[k];
                if (c < 0) continue;
                const float* l_row = lp + ((b * D.C + c) * D.Hr + r) * D.dr;
                for (int64_t i = 0; i < D.dr; ++i) acc[i] += grad_scores[row * D.K + k] * l_row[i];
            }
            for (int64_t i = 0; i < D.dr; ++i) gq[row * D.dr + i] = static_cast<float>(acc[i] * scale);
        }
    }

    if (want_l) {
        // One iteration per landmark (b, c, r): loop over the (t, k) that selected it, in order.
        float* gl = grad_landmarks.data<float>();
        const int64_t lrows = D.B * D.C * D.Hr;
#pragma omp parallel for schedule(static)
        for (int64_t lrow = 0; lrow < lrows; ++lrow) {
            const int64_t r = lrow % D.Hr;
            const int64_t c = (lrow / D.Hr) % D.C;
            const int64_t b = lrow / (D.Hr * D.C);
            std::vector<double> acc(static_cast<size_t>(D.dr), 0.0);
            for (int64_t t = 0; t < D.T; ++t) {
                const int64_t row = (b * D.T + t) * D.Hr + r;
                for (int64_t k = 0; k < D.K; ++k) {
                    if (ip[row * D.K + k] != c) continue;
                    const double gs = grad_scores[row * D.K + k];
                    const float* q_row = qp + row * D.dr;
                    for (int64_t i = 0; i < D.dr; ++i) acc[i] += gs * q_row[i];
                }
            }
            for (int64_t i = 0; i < D.dr; ++i) gl[lrow * D.dr + i] = static_cast<float>(acc[i] * scale);
        }
    }
}

// ================================================================ hierarchical sparse attention

void CpuBackend::hsa_forward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                             const Tensor& weights, int64_t chunk_size, Tensor& out, Tensor& lse) {
    const HsaDims D = checks::check_hsa_forward(q, kmem, vmem, indices, weights, chunk_size, out, lse, kCpu);
    // A chunk's rows [c*S, c*S + S) must lie within kmem: c < Tm / S.
    check_chunk_indices("hsa_forward", indices, D.C);
    const float* qp = q.data<float>();
    const float* kp = kmem.data<float>();
    const float* vp = vmem.data<float>();
    const int32_t* ip = indices.data<int32_t>();
    const float* wp = weights.data<float>();
    float* outp = out.data<float>();
    float* lp = lse.data<float>();

    const int64_t rows = D.B * D.T * D.H;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t h = row % D.H;
        const int64_t t = (row / D.H) % D.T;
        const int64_t b = row / (D.H * D.T);
        const int64_t g = h / D.heads_per_kv;
        const int64_t r = h / D.heads_per_r;
        const int64_t sel = (b * D.T + t) * D.Hr + r;  // row of indices / weights
        const float* q_row = qp + row * D.d;
        std::vector<double> acc(static_cast<size_t>(D.d), 0.0), scores(static_cast<size_t>(D.S));
        for (int64_t k = 0; k < D.K; ++k) {
            const int32_t c = ip[sel * D.K + k];
            if (c < 0) {
                lp[row * D.K + k] = 0.0f;
                continue;
            }
            chunk_scores(D, q_row, kp, b, g, c, scores.data());
            double m = -std::numeric_limits<double>::infinity();
            for (int64_t j = 0; j < D.S; ++j) m = std::max(m, scores[j]);
            double total = 0.0;
            for (int64_t j = 0; j < D.S; ++j) total += std::exp(scores[j] - m);
            const double w = wp[sel * D.K + k];
            for (int64_t j = 0; j < D.S; ++j) {
                const double p = std::exp(scores[j] - m) / total;
                const float* v_row = vp + ((b * D.Tm + c * D.S + j) * D.Hk + g) * D.d;
                for (int64_t i = 0; i < D.d; ++i) acc[i] += w * p * v_row[i];
            }
            lp[row * D.K + k] = static_cast<float>(m + std::log(total));
        }
        for (int64_t i = 0; i < D.d; ++i) outp[row * D.d + i] = static_cast<float>(acc[i]);
    }
}

void CpuBackend::hsa_backward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                              const Tensor& weights, int64_t chunk_size, const Tensor& lse, const Tensor& grad_out,
                              Tensor& grad_q, Tensor& grad_kmem, Tensor& grad_vmem, Tensor& grad_weights) {
    const checks::HsaBackwardDims D = checks::check_hsa_backward(q, kmem, vmem, indices, weights, chunk_size, lse,
                                                                 grad_out, grad_q, grad_kmem, grad_vmem,
                                                                 grad_weights, kCpu);
    check_chunk_indices("hsa_backward", indices, D.C);
    const bool want_q = D.want_q, want_k = D.want_kmem, want_v = D.want_vmem, want_w = D.want_weights;
    if (!want_q && !want_k && !want_v && !want_w) return;

    const float* qp = q.data<float>();
    const float* kp = kmem.data<float>();
    const float* vp = vmem.data<float>();
    const int32_t* ip = indices.data<int32_t>();
    const float* wp = weights.data<float>();
    const float* lp = lse.data<float>();
    const float* gop = grad_out.data<float>();
    const double scale = 1.0 / std::sqrt(static_cast<double>(D.d));
    const int64_t rows = D.B * D.T * D.H;

    // Probabilities of query row (b,t,h) over the S keys of its k-th selected chunk c,
    // recomputed from the forward's lse.
    auto chunk_probs = [&](int64_t row, int64_t b, int64_t g, int64_t k, int64_t c, double* p) {
        chunk_scores(D, qp + row * D.d, kp, b, g, c, p);
        const double l = lp[row * D.K + k];
        for (int64_t j = 0; j < D.S; ++j) p[j] = std::exp(p[j] - l);
    };

    // Pass 1, per query row (b, t, h): od[row, k] = dO[t,h] . o[t,h,k] (o recomputed; 0 at
    // padding), and grad_q. With dP_j = w dO.v_j and delta = w od, dS_j = p_j (dP_j - delta).
    std::vector<double> od(static_cast<size_t>(rows * D.K), 0.0);
    float* gq = want_q ? grad_q.data<float>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t h = row % D.H;
        const int64_t t = (row / D.H) % D.T;
        const int64_t b = row / (D.H * D.T);
        const int64_t g = h / D.heads_per_kv;
        const int64_t r = h / D.heads_per_r;
        const int64_t sel = (b * D.T + t) * D.Hr + r;
        const float* go_row = gop + row * D.d;
        std::vector<double> p(static_cast<size_t>(D.S)), dov(static_cast<size_t>(D.S));
        std::vector<double> acc(static_cast<size_t>(D.d), 0.0);
        for (int64_t k = 0; k < D.K; ++k) {
            const int32_t c = ip[sel * D.K + k];
            if (c < 0) continue;
            chunk_probs(row, b, g, k, c, p.data());
            double dot_o = 0.0;  // dO . o_k = sum_j p_j (dO . v_j)
            for (int64_t j = 0; j < D.S; ++j) {
                dov[j] = dot(go_row, vp + ((b * D.Tm + c * D.S + j) * D.Hk + g) * D.d, D.d);
                dot_o += p[j] * dov[j];
            }
            od[row * D.K + k] = dot_o;
            if (!gq) continue;
            const double w = wp[sel * D.K + k];
            for (int64_t j = 0; j < D.S; ++j) {
                const double ds = p[j] * w * (dov[j] - dot_o);
                const float* k_row = kp + ((b * D.Tm + c * D.S + j) * D.Hk + g) * D.d;
                for (int64_t i = 0; i < D.d; ++i) acc[i] += ds * k_row[i];
            }
        }
        if (gq)
            for (int64_t i = 0; i < D.d; ++i) gq[row * D.d + i] = static_cast<float>(acc[i] * scale);
    }

    // Pass 2, per (b, t, r): grad_weights = sum over the query heads of r of od (head order).
    if (want_w) {
        float* gw = grad_weights.data<float>();
        const int64_t sel_rows = D.B * D.T * D.Hr;
#pragma omp parallel for schedule(static)
        for (int64_t sel = 0; sel < sel_rows; ++sel) {
            const int64_t r = sel % D.Hr;
            const int64_t bt = sel / D.Hr;  // b * T + t
            for (int64_t k = 0; k < D.K; ++k) {
                double acc = 0.0;
                if (ip[sel * D.K + k] >= 0)
                    for (int64_t h = r * D.heads_per_r; h < (r + 1) * D.heads_per_r; ++h)
                        acc += od[(bt * D.H + h) * D.K + k];
                gw[sel * D.K + k] = static_cast<float>(acc);
            }
        }
    }

    // Pass 3, per memory chunk (b, c, g): loop over the (t, k) that selected c (in the
    // indices of g's retrieval head), then the query heads of g, in order.
    if (want_k || want_v) {
        float* gk = want_k ? grad_kmem.data<float>() : nullptr;
        float* gv = want_v ? grad_vmem.data<float>() : nullptr;
        const int64_t kv_per_r = D.Hk / D.Hr;
        const int64_t units = D.B * D.C * D.Hk;
#pragma omp parallel for schedule(static)
        for (int64_t unit = 0; unit < units; ++unit) {
            const int64_t g = unit % D.Hk;
            const int64_t c = (unit / D.Hk) % D.C;
            const int64_t b = unit / (D.Hk * D.C);
            const int64_t r = g / kv_per_r;
            std::vector<double> acc_k(static_cast<size_t>(D.S * D.d), 0.0), acc_v(static_cast<size_t>(D.S * D.d), 0.0);
            std::vector<double> p(static_cast<size_t>(D.S));
            for (int64_t t = 0; t < D.T; ++t) {
                const int64_t sel = (b * D.T + t) * D.Hr + r;
                for (int64_t k = 0; k < D.K; ++k) {
                    if (ip[sel * D.K + k] != c) continue;
                    const double w = wp[sel * D.K + k];
                    for (int64_t h = g * D.heads_per_kv; h < (g + 1) * D.heads_per_kv; ++h) {
                        const int64_t row = (b * D.T + t) * D.H + h;
                        const float* q_row = qp + row * D.d;
                        const float* go_row = gop + row * D.d;
                        chunk_probs(row, b, g, k, c, p.data());
                        const double dot_o = od[row * D.K + k];
                        for (int64_t j = 0; j < D.S; ++j) {
                            const double dov = dot(go_row, vp + ((b * D.Tm + c * D.S + j) * D.Hk + g) * D.d, D.d);
                            const double ds = p[j] * w * (dov - dot_o);
                            const double pw = p[j] * w;
                            for (int64_t i = 0; i < D.d; ++i) {
                                acc_k[j * D.d + i] += ds * q_row[i];
                                acc_v[j * D.d + i] += pw * go_row[i];
                            }
                        }
                    }
                }
            }
            for (int64_t j = 0; j < D.S; ++j) {
                const int64_t mem_row = (b * D.Tm + c * D.S + j) * D.Hk + g;
                for (int64_t i = 0; i < D.d; ++i) {
                    if (gk) gk[mem_row * D.d + i] = static_cast<float>(acc_k[j * D.d + i] * scale);
                    if (gv) gv[mem_row * D.d + i] = static_cast<float>(acc_v[j * D.d + i]);
                }
            }
        }
        // Rows past the last whole chunk (Tm > C * S) are never attended: zero gradient.
        for (int64_t b = 0; b < D.B; ++b) {
            for (int64_t m = D.C * D.S; m < D.Tm; ++m) {
                for (int64_t x = 0; x < D.Hk * D.d; ++x) {
                    const int64_t at = (b * D.Tm + m) * D.Hk * D.d + x;
                    if (gk) gk[at] = 0.0f;
                    if (gv) gv[at] = 0.0f;
                }
            }
        }
    }
}

}  // namespace hsa
