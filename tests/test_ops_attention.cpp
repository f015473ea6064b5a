// Tests of the attention family (core/cpu/cpu_attention.cpp through core/ops.h):
// local_attention, select_chunks, chunk_weights and hsa_attention.
// - OpsAttentionGrad:        finite-difference gradient checks of every differentiable input
// - OpsAttentionForward:     forward values against naive computations written here in double
// - OpsAttentionSelect:      top-K chunk selection semantics (visibility, order, padding, ties)
// - OpsAttentionHsa:         HSA invariants (chunk 0 retrieves nothing, equals full attention
//                            over the visible chunks when K covers them all)
// - OpsAttentionCausality:   a change at token t0 leaves every earlier output bit-identical
// - OpsAttentionDeterminism: outputs and gradients bit-identical with 1 and 2 threads
// - OpsAttentionErrors:      bad shapes and indices are rejected with one-line errors
#include <gtest/gtest.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/backend.h"
#include "tests/op_test_harness.h"

namespace hsa::test {
namespace {

// ---------------------------------------------------------------- small helpers

// Row-major offset into a 4-D tensor of shape [n0, n1, n2, n3].
struct Idx4 {
    int64_t n0, n1, n2, n3;
    explicit Idx4(const Tensor& t) : n0(t.size(0)), n1(t.size(1)), n2(t.size(2)), n3(t.size(3)) {}
    int64_t operator()(int64_t a, int64_t b, int64_t c, int64_t d) const { return ((a * n1 + b) * n2 + c) * n3 + d; }
};

double dot_d(const std::vector<float>& a, int64_t ia, const std::vector<float>& b, int64_t ib, int64_t n) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(a[ia + i]) * static_cast<double>(b[ib + i]);
    return acc;
}

double max_abs_diff_d(const std::vector<float>& got, const std::vector<double>& want) {
    EXPECT_EQ(got.size(), want.size());
    double worst = 0.0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
        worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]));
    return worst;
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

GradCheckOptions every_element() {
    GradCheckOptions options;
    options.max_elements_per_input = 100000;  // small shapes: difference every element
    return options;
}

// ---------------------------------------------------------------- naive references

struct NaiveAttention {
    std::vector<double> out, lse;
};

// Explicit probabilities over all T keys with a visibility mask, in double.
NaiveAttention naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span) {
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3), Hk = k.size(2);
    const std::vector<float> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
    const Idx4 iq(q), ik(k);
    NaiveAttention result;
    result.out.assign(static_cast<size_t>(B * T * H * d), 0.0);
    result.lse.assign(static_cast<size_t>(B * T * H), 0.0);
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t h = 0; h < H; ++h) {
                const int64_t g = h / (H / Hk);
                std::vector<double> score(T, -std::numeric_limits<double>::infinity());
                for (int64_t s = 0; s < T; ++s) {
                    bool visible = true;
                    if (span.causal) visible = s <= t && (span.window == 0 || t - s < span.window);
                    if (visible) score[s] = dot_d(qv, iq(b, t, h, 0), kv, ik(b, s, g, 0), d) / std::sqrt(double(d));
                }
                const double m = *std::max_element(score.begin(), score.end());
                double z = 0.0;
                for (int64_t s = 0; s < T; ++s) z += std::exp(score[s] - m);
                result.lse[(b * T + t) * H + h] = m + std::log(z);
                for (int64_t s = 0; s < T; ++s) {
                    const double p = std::exp(score[s] - m) / z;
                    for (int64_t i = 0; i < d; ++i) result.out[iq(b, t, h, i)] += p * vv[ik(b, s, g, i)];
                }
            }
        }
    }
    return result;
}

// Chunk weights by their definitions (stick-breaking as an explicit product), in double.
std::vector<double> naive_chunk_weights(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                        WeightKind kind) {
    const int64_t B = qr.size(0), T = qr.size(1), Hr = qr.size(2), dr = qr.size(3), K = indices.size(3);
    const std::vector<float> qv = qr.to_vector(), lv = landmarks.to_vector(), iv = indices.to_vector();
    const Idx4 iq(qr), il(landmarks), ii(indices);
    std::vector<double> w(static_cast<size_t>(B * T * Hr * K), 0.0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t r = 0; r < Hr; ++r) {
                std::vector<double> s(K, 0.0);
                std::vector<bool> valid(K, false);
                for (int64_t k = 0; k < K; ++k) {
                    const int c = static_cast<int>(iv[ii(b, t, r, k)]);
                    valid[k] = c >= 0;
                    if (valid[k]) s[k] = dot_d(qv, iq(b, t, r, 0), lv, il(b, c, r, 0), dr) / std::sqrt(double(dr));
                }
                for (int64_t k = 0; k < K; ++k) {
                    if (!valid[k]) continue;
                    double value;
                    if (kind == WeightKind::Softmax) {
                        double z = 0.0;
                        for (int64_t j = 0; j < K; ++j)
                            if (valid[j]) z += std::exp(s[j]);
                        value = std::exp(s[k]) / z;
                    } else {
                        value = 1.0 / (1.0 + std::exp(-s[k]));
                        for (int64_t j = 0; j < k; ++j)
                            if (valid[j]) value *= 1.0 - 1.0 / (1.0 + std::exp(-s[j]));
                    }
                    w[ii(b, t, r, k)] = value;
                }
            }
    return w;
}

// HSA by its definition: per selected chunk its own softmax, fused by the weights.
NaiveAttention naive_hsa(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                         const Tensor& weights, int64_t S) {
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3), Hk = kmem.size(2);
    const int64_t Hr = indices.size(2), K = indices.size(3);
    const std::vector<float> qv = q.to_vector(), kv = kmem.to_vector(), vv = vmem.to_vector();
    const std::vector<float> iv = indices.to_vector(), wv = weights.to_vector();
    const Idx4 iq(q), ik(kmem), ii(indices);
    NaiveAttention result;
    result.out.assign(static_cast<size_t>(B * T * H * d), 0.0);
    result.lse.assign(static_cast<size_t>(B * T * H * K), 0.0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t h = 0; h < H; ++h) {
                const int64_t g = h / (H / Hk), r = g / (Hk / Hr);
                for (int64_t k = 0; k < K; ++k) {
                    const int64_t c = static_cast<int64_t>(iv[ii(b, t, r, k)]);
                    if (c < 0) continue;
                    std::vector<double> s(S);
                    for (int64_t j = 0; j < S; ++j)
                        s[j] = dot_d(qv, iq(b, t, h, 0), kv, ik(b, c * S + j, g, 0), d) / std::sqrt(double(d));
                    const double m = *std::max_element(s.begin(), s.end());
                    double z = 0.0;
                    for (double x : s) z += std::exp(x - m);
                    result.lse[((b * T + t) * H + h) * K + k] = m + std::log(z);
                    for (int64_t j = 0; j < S; ++j)
                        for (int64_t i = 0; i < d; ++i)
                            result.out[iq(b, t, h, i)] +=
                                wv[ii(b, t, r, k)] * std::exp(s[j] - m) / z * vv[ik(b, c * S + j, g, i)];
                }
            }
    return result;
}


// Direct backend calls, to see the lse that the ops keep internal.
struct Forward {
    Tensor out, lse;
};

Forward backend_attention(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span) {
    Forward f{Tensor::empty(q.shape()), Tensor::empty({q.size(0), q.size(1), q.size(2)})};
    backend_for(Device::CPU).attention_forward(q, k, v, span, f.out, f.lse);
    return f;
}

Forward backend_hsa(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                    const Tensor& weights, int64_t S) {
    Forward f{Tensor::empty(q.shape()), Tensor::empty({q.size(0), q.size(1), q.size(2), indices.size(3)})};
    backend_for(Device::CPU).hsa_forward(q, kmem, vmem, indices, weights, S, f.out, f.lse);
    return f;
}

Tensor select_fixed(const Tensor& qr, const Tensor& landmarks, int64_t S, int64_t K) {
    NoGradGuard no_grad;
    return ops::select_chunks(qr, landmarks, S, K);
}

// Random indices [B, T, Hr, K]: -1 with probability 1/3 (anywhere in the row), else a chunk < C.
Tensor random_indices(Rng& rng, const Shape& shape, int64_t C) {
    std::vector<int32_t> values(static_cast<size_t>(shape_numel(shape)));
    for (auto& x : values) x = rng.next_int(0, 3) == 0 ? -1 : static_cast<int32_t>(rng.next_int(0, C));
    return Tensor::from_vector_i32(values, shape);
}

// ================================================================ gradient checks

void check_attention_grad(const Shape& q_shape, int64_t Hk, AttentionSpan span) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const Shape kv_shape{q_shape[0], q_shape[1], Hk, q_shape[3]};
    auto f = [span](const std::vector<Tensor>& x) { return ops::local_attention(x[0], x[1], x[2], span); };
    check_gradients(f, {rng.normal(q_shape), rng.normal(kv_shape), rng.normal(kv_shape)}, {true, true, true}, rng,
                    every_element());
}

TEST(OpsAttentionGrad, LocalCausalWindow) { check_attention_grad({2, 11, 4, 8}, 2, {true, 4}); }

TEST(OpsAttentionGrad, LocalCausalUnlimited) { check_attention_grad({2, 9, 3, 6}, 1, {true, 0}); }

// The chunk encoder's in-chunk attention: [B*C, S+1, H, d], every position sees all S+1.
TEST(OpsAttentionGrad, Bidirectional) { check_attention_grad({3, 6, 4, 8}, 2, {false, 0}); }

// A bf16 output is for backends that multiply bf16 operands (CUDA): the CPU refuses it.
// Zeros are enough: only the refusals are under test.
TEST(OpsAttention, Bf16OutputIsRefusedOnTheCpu) {
    Tensor q = Tensor::zeros({1, 4, 2, 8}), kv = Tensor::zeros({1, 4, 1, 8});
    EXPECT_THROW(ops::local_attention(q, kv, kv, {true, 2}, DType::BF16), Error);
    EXPECT_EQ(ops::local_attention(q, kv, kv, {true, 2}, DType::F32).dtype(), DType::F32);
    // So are bf16 q / k (rmsnorm_rope's bf16 output, which the CPU refuses to make too).
    EXPECT_THROW(ops::local_attention(q.to(DType::BF16), kv, kv, {true, 2}), Error);
    EXPECT_THROW(ops::local_attention(q, kv.to(DType::BF16), kv, {true, 2}), Error);
    EXPECT_THROW(ops::rmsnorm_rope(q, Tensor(), 1e-6f, 0, 10000.0f, DType::BF16), Error);
}

void check_chunk_weights_grad(WeightKind kind) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 13, S = 3, C = 4, Hr = 2, dr = 5, K = 3;
    Tensor qr = rng.normal({B, T, Hr, dr}), landmarks = rng.normal({B, C, Hr, dr});
    Tensor indices = select_fixed(qr, landmarks, S, K);  // held fixed while differencing
    // The selection includes empty rows (chunk 0), padded rows and a real top-K choice.
    const std::vector<float> iv = indices.to_vector();
    const Idx4 ii(indices);
    EXPECT_EQ(iv[ii(0, 0, 0, 0)], -1.0f);
    EXPECT_EQ(iv[ii(0, 4, 0, 1)], -1.0f);
    EXPECT_EQ(iv[ii(0, 12, 0, 2)] >= 0.0f, true);
    auto f = [indices, kind](const std::vector<Tensor>& x) { return ops::chunk_weights(x[0], x[1], indices, kind); };
    check_gradients(f, {qr, landmarks}, {true, true}, rng, every_element());
}

TEST(OpsAttentionGrad, ChunkWeightsSoftmax) { check_chunk_weights_grad(WeightKind::Softmax); }

TEST(OpsAttentionGrad, ChunkWeightsStickBreak) { check_chunk_weights_grad(WeightKind::StickBreak); }

// T = 13, S = 3: tokens 0-2 retrieve nothing, 3-5 one chunk (K = 3: padded), 12 chooses 3 of 4.
// extra_rows > 0 puts rows past the last whole chunk into kmem/vmem (they get zero gradient).
void check_hsa_grad(int64_t H, int64_t Hk, int64_t Hr, int64_t extra_rows) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 13, S = 3, C = 4, d = 6, dr = 5, K = 3;
    const int64_t Tm = C * S + extra_rows;
    Tensor indices = select_fixed(rng.normal({B, T, Hr, dr}), rng.normal({B, C, Hr, dr}), S, K);
    auto f = [indices](const std::vector<Tensor>& x) { return ops::hsa_attention(x[0], x[1], x[2], indices, x[3], 3); };
    check_gradients(f,
                    {rng.normal({B, T, H, d}), rng.normal({B, Tm, Hk, d}), rng.normal({B, Tm, Hk, d}),
                     rng.uniform({B, T, Hr, K}, 0.1f, 1.0f)},
                    {true, true, true, true}, rng, every_element());

    // Gradients of rows that no token selected (and of the tail rows) are exactly zero;
    // the weight gradient at padding is exactly zero.
    std::vector<Tensor> x = {rng.normal({B, T, H, d}), rng.normal({B, Tm, Hk, d}), rng.normal({B, Tm, Hk, d}),
                             rng.uniform({B, T, Hr, K}, 0.1f, 1.0f)};
    for (auto& t : x) t.set_requires_grad(true);
    backward(ops::sum(ops::mul(f(x), rng.normal({B, T, H, d}))));
    const std::vector<float> iv = indices.to_vector(), gk = x[1].grad().to_vector(), gv = x[2].grad().to_vector();
    const std::vector<float> gw = x[3].grad().to_vector();
    const Idx4 ii(indices), im(x[1]);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t g = 0; g < Hk; ++g) {
            const int64_t r = g / (Hk / Hr);
            for (int64_t row = 0; row < Tm; ++row) {
                bool used = false;
                for (int64_t t = 0; t < T; ++t)
                    for (int64_t k = 0; k < K; ++k) used |= row < C * S && iv[ii(b, t, r, k)] == row / S;
                if (used) continue;
                for (int64_t i = 0; i < d; ++i) {
                    EXPECT_EQ(gk[im(b, row, g, i)], 0.0f) << "kmem row " << row << " never selected";
                    EXPECT_EQ(gv[im(b, row, g, i)], 0.0f) << "vmem row " << row << " never selected";
                }
            }
        }
    for (size_t i = 0; i < iv.size(); ++i)
        if (iv[i] < 0) { EXPECT_EQ(gw[i], 0.0f) << "weight gradient at padding, element " << i; }
}

TEST(OpsAttentionGrad, HsaOneRetrievalHead) { check_hsa_grad(4, 2, 1, 0); }

TEST(OpsAttentionGrad, HsaRetrievalHeadPerKvHead) { check_hsa_grad(4, 2, 2, 0); }

// 1 < Hr < Hk: KV heads 0,1 use retrieval head 0 and KV heads 2,3 use retrieval head 1.
TEST(OpsAttentionGrad, HsaTwoKvHeadsPerRetrievalHead) { check_hsa_grad(8, 4, 2, 0); }

TEST(OpsAttentionGrad, HsaMemoryWithTailRows) { check_hsa_grad(4, 2, 1, 2); }

// ================================================================ forward values

TEST(OpsAttentionForward, LocalMatchesNaive) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const AttentionSpan spans[] = {{true, 4}, {true, 1}, {true, 0}, {true, 50}, {false, 0}};
    for (AttentionSpan span : spans) {
        SCOPED_TRACE("causal " + std::to_string(span.causal) + " window " + std::to_string(span.window));
        Tensor q = rng.normal({2, 11, 6, 8}), k = rng.normal({2, 11, 3, 8}), v = rng.normal({2, 11, 3, 8});
        Forward got = backend_attention(q, k, v, span);
        NaiveAttention want = naive_attention(q, k, v, span);
        EXPECT_LT(max_abs_diff_d(got.out.to_vector(), want.out), 1e-5);
        EXPECT_LT(max_abs_diff_d(got.lse.to_vector(), want.lse), 1e-5);
        // The op returns the same output as the backend.
        EXPECT_TRUE(bit_identical(ops::local_attention(q, k, v, span).to_vector(), got.out.to_vector()));
    }
    // Window 1 attends to the token itself only: out = v of its KV head.
    Tensor q = rng.normal({1, 5, 2, 4}), k = rng.normal({1, 5, 1, 4}), v = rng.normal({1, 5, 1, 4});
    const std::vector<float> out = ops::local_attention(q, k, v, {true, 1}).to_vector(), vv = v.to_vector();
    for (int64_t t = 0; t < 5; ++t)
        for (int64_t h = 0; h < 2; ++h)
            for (int64_t i = 0; i < 4; ++i) EXPECT_NEAR(out[(t * 2 + h) * 4 + i], vv[t * 4 + i], 1e-6);
}

TEST(OpsAttentionForward, ChunkWeightsMatchNaive) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 17, Hr = 3, dr = 7, C = 5, K = 4;
    Tensor qr = rng.normal({B, T, Hr, dr}), landmarks = rng.normal({B, C, Hr, dr});
    // Random indices, padding anywhere in a row, and indices from the real selection.
    const Tensor index_sets[] = {random_indices(rng, {B, T, Hr, K}, C), select_fixed(qr, landmarks, 3, K)};
    for (const Tensor& indices : index_sets) {
        for (WeightKind kind : {WeightKind::Softmax, WeightKind::StickBreak}) {
            SCOPED_TRACE(kind == WeightKind::Softmax ? "softmax" : "stickbreak");
            const std::vector<float> w = ops::chunk_weights(qr, landmarks, indices, kind).to_vector();
            EXPECT_LT(max_abs_diff_d(w, naive_chunk_weights(qr, landmarks, indices, kind)), 1e-6);
            const std::vector<float> iv = indices.to_vector();
            for (int64_t row = 0; row < B * T * Hr; ++row) {
                double total = 0.0;
                int valid = 0;
                for (int64_t k = 0; k < K; ++k) {
                    const float wk = w[row * K + k];
                    if (iv[row * K + k] < 0) {
                        EXPECT_EQ(wk, 0.0f);
                    } else {
                        EXPECT_GT(wk, 0.0f);
                        ++valid;
                    }
                    total += wk;
                }
                if (kind == WeightKind::Softmax && valid > 0) { EXPECT_NEAR(total, 1.0, 1e-5); }
                if (kind == WeightKind::StickBreak) { EXPECT_LT(total, 1.0 + 1e-6); }
                if (valid == 0) { EXPECT_EQ(total, 0.0); }
            }
        }
    }
}

TEST(OpsAttentionForward, HsaMatchesNaive) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 7, H = 6, d = 5, S = 3, C = 4, K = 3;
    for (int64_t Hk : {1, 3, 6}) {
        for (int64_t Hr : {int64_t{1}, Hk, Hk == 6 ? int64_t{2} : Hk}) {
            SCOPED_TRACE("Hk " + std::to_string(Hk) + " Hr " + std::to_string(Hr));
            // Arbitrary indices (padding in the middle of rows, repeats) and arbitrary weights.
            Tensor q = rng.normal({B, T, H, d}), kmem = rng.normal({B, C * S + 1, Hk, d});
            Tensor vmem = rng.normal({B, C * S + 1, Hk, d});
            Tensor indices = random_indices(rng, {B, T, Hr, K}, C), weights = rng.normal({B, T, Hr, K});
            Forward got = backend_hsa(q, kmem, vmem, indices, weights, S);
            NaiveAttention want = naive_hsa(q, kmem, vmem, indices, weights, S);
            EXPECT_LT(max_abs_diff_d(got.out.to_vector(), want.out), 1e-5);
            EXPECT_LT(max_abs_diff_d(got.lse.to_vector(), want.lse), 1e-5);
            EXPECT_TRUE(bit_identical(ops::hsa_attention(q, kmem, vmem, indices, weights, S).to_vector(),
                                      got.out.to_vector()));
        }
    }
}

// ================================================================ select_chunks

// Brute force: chunk c is chosen iff fewer than K visible chunks beat it (higher score, or
// an equal score and a larger index); the chosen are listed by index descending, then -1.
void expect_selection_matches_brute_force(const Tensor& qr, const Tensor& landmarks, int64_t S, int64_t K,
                                          const Tensor& indices) {
    const int64_t B = qr.size(0), T = qr.size(1), Hr = qr.size(2), dr = qr.size(3), C = landmarks.size(1);
    ASSERT_EQ(indices.shape(), (Shape{B, T, Hr, K}));
    ASSERT_EQ(indices.dtype(), DType::I32);
    const std::vector<float> qv = qr.to_vector(), lv = landmarks.to_vector(), iv = indices.to_vector();
    const Idx4 iq(qr), il(landmarks), ii(indices);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t r = 0; r < Hr; ++r) {
                const int64_t visible = std::min(t / S, C);
                std::vector<double> score(visible);
                for (int64_t c = 0; c < visible; ++c)
                    score[c] = dot_d(qv, iq(b, t, r, 0), lv, il(b, c, r, 0), dr) / std::sqrt(double(dr));
                std::vector<int64_t> expected;
                for (int64_t c = visible - 1; c >= 0; --c) {
                    int64_t better = 0;
                    for (int64_t o = 0; o < visible; ++o)
                        better += score[o] > score[c] || (score[o] == score[c] && o > c);
                    if (better < K) expected.push_back(c);
                }
                ASSERT_EQ(static_cast<int64_t>(expected.size()), std::min(K, visible));
                for (int64_t k = 0; k < K; ++k) {
                    const int64_t got = static_cast<int64_t>(iv[ii(b, t, r, k)]);
                    const int64_t want = k < static_cast<int64_t>(expected.size()) ? expected[k] : -1;
                    ASSERT_EQ(got, want) << "b " << b << " t " << t << " r " << r << " k " << k;
                    if (got >= 0) { ASSERT_LT(got, t / S) << "chunk not wholly before token " << t; }
                    if (k > 0 && got >= 0) { ASSERT_LT(got, iv[ii(b, t, r, k - 1)]) << "not most recent first"; }
                }
            }
}

TEST(OpsAttentionSelect, MatchesBruteForce) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 23, S = 4, Hr = 2, dr = 7;
    // C = floor(T / S) chunks, and fewer landmarks than the tokens could see (C < t / S).
    for (int64_t C : {5, 3}) {
        for (int64_t K : {1, 3, 6}) {
            SCOPED_TRACE("C " + std::to_string(C) + " K " + std::to_string(K));
            Tensor qr = rng.normal({B, T, Hr, dr}), landmarks = rng.normal({B, C, Hr, dr});
            Tensor indices = ops::select_chunks(qr, landmarks, S, K);
            expect_selection_matches_brute_force(qr, landmarks, S, K, indices);
            // Tokens of chunk 0 see nothing; token t sees min(floor(t/S), C) chunks.
            const std::vector<float> iv = indices.to_vector();
            const Idx4 ii(indices);
            for (int64_t t = 0; t < T; ++t) {
                int64_t valid = 0;
                for (int64_t k = 0; k < K; ++k) valid += iv[ii(1, t, 1, k)] >= 0;
                EXPECT_EQ(valid, std::min({K, t / S, C})) << "token " << t;
            }
        }
    }
}

TEST(OpsAttentionSelect, TiesGoToTheMoreRecentChunk) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t T = 21, S = 3, C = 7, dr = 4, K = 3;
    // All landmarks identical: every visible score ties, so the K most recent chunks win.
    {
        Tensor qr = rng.normal({1, T, 1, dr});
        Tensor one = rng.normal({dr});
        std::vector<float> lv;
        for (int64_t c = 0; c < C; ++c)
            for (float x : one.to_vector()) lv.push_back(x);
        Tensor landmarks = Tensor::from_vector(lv, {1, C, 1, dr});
        Tensor indices = ops::select_chunks(qr, landmarks, S, K);
        const std::vector<float> iv = indices.to_vector();
        for (int64_t t = 0; t < T; ++t) {
            const int64_t visible = t / S;
            for (int64_t k = 0; k < K; ++k)
                EXPECT_EQ(iv[t * K + k], k < visible ? float(visible - 1 - k) : -1.0f) << "token " << t;
        }
        expect_selection_matches_brute_force(qr, landmarks, S, K, indices);
    }
    // Exact partial ties: qr = (1, 0, ...), landmark c = (value_c, random...) with values
    // {1, 2, 2, 3, 1, 2, 0}: the best 3 of chunks 0..5 are 3, then the 2s at 5 and 2 (not 1).
    {
        const float values[C] = {1, 2, 2, 3, 1, 2, 0};
        std::vector<float> qv(static_cast<size_t>(T * dr), 0.0f), lv;
        for (int64_t t = 0; t < T; ++t) qv[t * dr] = 1.0f;
        const std::vector<float> noise = rng.normal({C, dr}).to_vector();
        for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < dr; ++i) lv.push_back(i == 0 ? values[c] : noise[c * dr + i]);
        Tensor qr = Tensor::from_vector(qv, {1, T, 1, dr}), landmarks = Tensor::from_vector(lv, {1, C, 1, dr});
        Tensor indices = ops::select_chunks(qr, landmarks, S, K);
        const std::vector<float> iv = indices.to_vector();
        const int64_t t = 6 * S;  // sees chunks 0..5
        EXPECT_EQ(std::vector<float>(iv.begin() + t * K, iv.begin() + t * K + K), (std::vector<float>{5, 3, 2}));
        const int64_t t3 = 3 * S;  // sees chunks 0..2: scores 1, 2, 2 -> all three
        EXPECT_EQ(std::vector<float>(iv.begin() + t3 * K, iv.begin() + t3 * K + K), (std::vector<float>{2, 1, 0}));
        Tensor indices4 = ops::select_chunks(qr, landmarks, S, 4);
        const std::vector<float> iv4 = indices4.to_vector();
        EXPECT_EQ(std::vector<float>(iv4.begin() + t * 4, iv4.begin() + t * 4 + 4), (std::vector<float>{5, 3, 2, 1}));
        expect_selection_matches_brute_force(qr, landmarks, S, K, indices);
        expect_selection_matches_brute_force(qr, landmarks, S, 4, indices4);
    }
}

// ================================================================ HSA invariants

TEST(OpsAttentionHsa, ChunkZeroTokensRetrieveNothing) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 11, S = 4, C = 2, H = 4, Hk = 2, Hr = 2, d = 6, dr = 5, K = 2;
    Tensor qr = rng.normal({B, T, Hr, dr}), landmarks = rng.normal({B, C, Hr, dr});
    Tensor indices = ops::select_chunks(qr, landmarks, S, K);
    for (WeightKind kind : {WeightKind::Softmax, WeightKind::StickBreak}) {
        Tensor weights = ops::chunk_weights(qr, landmarks, indices, kind);
        Tensor out = ops::hsa_attention(rng.normal({B, T, H, d}), rng.normal({B, C * S, Hk, d}),
                                        rng.normal({B, C * S, Hk, d}), indices, weights, S);
        const std::vector<float> iv = indices.to_vector(), wv = weights.to_vector(), ov = out.to_vector();
        const Idx4 ii(indices), io(out);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < T; ++t) {
                bool any = false;
                for (int64_t r = 0; r < Hr; ++r)
                    for (int64_t k = 0; k < K; ++k) {
                        if (t < S) { EXPECT_EQ(iv[ii(b, t, r, k)], -1.0f); }
                        if (t < S) { EXPECT_EQ(wv[ii(b, t, r, k)], 0.0f); }
                        any |= iv[ii(b, t, r, k)] >= 0;
                    }
                for (int64_t h = 0; h < H; ++h)
                    for (int64_t i = 0; i < d; ++i) {
                        if (t < S) { EXPECT_EQ(ov[io(b, t, h, i)], 0.0f) << "token " << t << " in chunk 0"; }
                        if (any) { EXPECT_NE(ov[io(b, t, h, i)], 0.0f) << "token " << t << " retrieved but got 0"; }
                    }
            }
    }
}

// With K >= the number of visible chunks and softmax weights, HSA is attention over all
// visible chunks, each with its own softmax, fused by a softmax over all visible scores.
void check_hsa_equals_full_visible(int64_t Hr) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 19, S = 3, C = 6, H = 4, Hk = 2, d = 7, dr = 5, K = C + 1;
    Tensor q = rng.normal({B, T, H, d}), kmem = rng.normal({B, C * S, Hk, d}), vmem = rng.normal({B, C * S, Hk, d});
    Tensor qr = rng.normal({B, T, Hr, dr}), landmarks = rng.normal({B, C, Hr, dr});
    Tensor indices = ops::select_chunks(qr, landmarks, S, K);
    Tensor weights = ops::chunk_weights(qr, landmarks, indices, WeightKind::Softmax);
    const std::vector<float> out = ops::hsa_attention(q, kmem, vmem, indices, weights, S).to_vector();

    const std::vector<float> qv = q.to_vector(), kv = kmem.to_vector(), vv = vmem.to_vector();
    const std::vector<float> qrv = qr.to_vector(), lv = landmarks.to_vector();
    const Idx4 iq(q), ik(kmem), iqr(qr), il(landmarks);
    std::vector<double> want(out.size(), 0.0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t h = 0; h < H; ++h) {
                const int64_t g = h / (H / Hk), r = g / (Hk / Hr), visible = std::min(t / S, C);
                std::vector<double> chunk_score(visible);
                double z = 0.0;
                for (int64_t c = 0; c < visible; ++c) {
                    chunk_score[c] = dot_d(qrv, iqr(b, t, r, 0), lv, il(b, c, r, 0), dr) / std::sqrt(double(dr));
                    z += std::exp(chunk_score[c]);
                }
                for (int64_t c = 0; c < visible; ++c) {
                    // o_c: softmax attention over chunk c's S keys alone.
                    std::vector<double> p(S);
                    double pz = 0.0;
                    for (int64_t j = 0; j < S; ++j) {
                        p[j] = std::exp(dot_d(qv, iq(b, t, h, 0), kv, ik(b, c * S + j, g, 0), d) / std::sqrt(double(d)));
                        pz += p[j];
                    }
                    const double w = std::exp(chunk_score[c]) / z;
                    for (int64_t j = 0; j < S; ++j)
                        for (int64_t i = 0; i < d; ++i) want[iq(b, t, h, i)] += w * p[j] / pz * vv[ik(b, c * S + j, g, i)];
                }
            }
    EXPECT_LT(max_abs_diff_d(out, want), 1e-5);
}

TEST(OpsAttentionHsa, EqualsAttentionOverAllVisibleChunksOneRetrievalHead) { check_hsa_equals_full_visible(1); }

TEST(OpsAttentionHsa, EqualsAttentionOverAllVisibleChunksRetrievalHeadPerKvHead) { check_hsa_equals_full_visible(2); }

// ================================================================ causality

// Replaces token t0's entries (dim 1 of a [B, T, ...] tensor) with fresh random values.
Tensor perturb_token(const Tensor& x, int64_t t0, Rng& rng) {
    Tensor y = x.clone();
    const int64_t T = x.size(1), inner = x.numel() / (x.size(0) * T);
    const std::vector<float> fresh = rng.normal({x.size(0), inner}).to_vector();
    float* p = y.data<float>();
    for (int64_t b = 0; b < x.size(0); ++b)
        for (int64_t i = 0; i < inner; ++i) p[(b * T + t0) * inner + i] = fresh[b * inner + i] + 3.0f;
    return y;
}

// Rows [t_lo, t_hi) of dim 1 equal bit for bit.
bool rows_identical(const Tensor& a, const Tensor& b, int64_t t_lo, int64_t t_hi) {
    const int64_t T = a.size(1), inner = a.numel() / (a.size(0) * T);
    const std::vector<float> x = a.to_vector(), y = b.to_vector();
    for (int64_t n = 0; n < a.size(0); ++n)
        for (int64_t t = t_lo; t < t_hi; ++t)
            if (std::memcmp(&x[(n * T + t) * inner], &y[(n * T + t) * inner], inner * sizeof(float)) != 0) return false;
    return true;
}

TEST(OpsAttentionCausality, LocalAttention) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 13, H = 4, Hk = 2, d = 6, W = 4;
    Tensor q = rng.normal({B, T, H, d}), k = rng.normal({B, T, Hk, d}), v = rng.normal({B, T, Hk, d});
    for (AttentionSpan span : {AttentionSpan{true, W}, AttentionSpan{true, 0}}) {
        const Tensor base = ops::local_attention(q, k, v, span);
        for (int64_t t0 = 0; t0 < T; ++t0) {
            SCOPED_TRACE("window " + std::to_string(span.window) + " t0 " + std::to_string(t0));
            const Tensor changed =
                ops::local_attention(perturb_token(q, t0, rng), perturb_token(k, t0, rng), perturb_token(v, t0, rng), span);
            EXPECT_TRUE(rows_identical(base, changed, 0, t0));
            EXPECT_FALSE(rows_identical(base, changed, t0, t0 + 1));  // the change is visible at t0
            // Tokens past the window do not see t0 either.
            if (span.window > 0) { EXPECT_TRUE(rows_identical(base, changed, std::min(T, t0 + W), T)); }
        }
    }
    // Bidirectional attention is not causal: a change at the last token reaches token 0.
    const AttentionSpan bidir{false, 0};
    EXPECT_FALSE(rows_identical(ops::local_attention(q, k, v, bidir),
                                ops::local_attention(q, perturb_token(k, T - 1, rng), v, bidir), 0, 1));
}

// The retrieval pipeline from per-token inputs: q and qr per token, memory rows per token,
// and landmark c built from the tokens of chunk c only (a sum, in the test).
TEST(OpsAttentionCausality, RetrievalAndHsa) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 14, S = 3, C = T / S, H = 4, Hk = 2, Hr = 2, d = 5, dr = 6, K = 2;
    struct Outputs {
        Tensor indices, softmax, stickbreak, hsa;
    };
    auto run = [&](const Tensor& q, const Tensor& qr, const Tensor& mem_k, const Tensor& mem_v, const Tensor& z) {
        std::vector<float> zv = z.to_vector(), lv(static_cast<size_t>(B * C * Hr * dr), 0.0f);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t c = 0; c < C; ++c)
                for (int64_t j = 0; j < S; ++j)
                    for (int64_t x = 0; x < Hr * dr; ++x) lv[(b * C + c) * Hr * dr + x] += zv[(b * T + c * S + j) * Hr * dr + x];
        Tensor landmarks = Tensor::from_vector(lv, {B, C, Hr, dr});
        Outputs o;
        o.indices = ops::select_chunks(qr, landmarks, S, K);
        o.softmax = ops::chunk_weights(qr, landmarks, o.indices, WeightKind::Softmax);
        o.stickbreak = ops::chunk_weights(qr, landmarks, o.indices, WeightKind::StickBreak);
        o.hsa = ops::hsa_attention(q, mem_k, mem_v, o.indices, o.stickbreak, S);
        return o;
    };
    Tensor q = rng.normal({B, T, H, d}), qr = rng.normal({B, T, Hr, dr});
    Tensor mem_k = rng.normal({B, T, Hk, d}), mem_v = rng.normal({B, T, Hk, d}), z = rng.normal({B, T, Hr, dr});
    const Outputs base = run(q, qr, mem_k, mem_v, z);
    for (int64_t t0 = 0; t0 < T; ++t0) {
        SCOPED_TRACE("t0 " + std::to_string(t0));
        const Outputs changed = run(perturb_token(q, t0, rng), perturb_token(qr, t0, rng), perturb_token(mem_k, t0, rng),
                                    perturb_token(mem_v, t0, rng), perturb_token(z, t0, rng));
        EXPECT_TRUE(rows_identical(base.indices.to(DType::F32), changed.indices.to(DType::F32), 0, t0));
        EXPECT_TRUE(rows_identical(base.softmax, changed.softmax, 0, t0));
        EXPECT_TRUE(rows_identical(base.stickbreak, changed.stickbreak, 0, t0));
        EXPECT_TRUE(rows_identical(base.hsa, changed.hsa, 0, t0));
        if (t0 >= S) { EXPECT_FALSE(rows_identical(base.hsa, changed.hsa, t0, t0 + 1)); }  // t0 retrieves: q changed
    }
}

// ================================================================ determinism

// Forward output and every input's gradient (loss = sum(out * P), P fixed by seed).
std::vector<std::vector<float>> outputs_and_gradients(const OpFunction& f, const std::vector<Tensor>& inputs,
                                                      const std::vector<bool>& differentiable, uint64_t seed) {
    std::vector<Tensor> x;
    for (size_t i = 0; i < inputs.size(); ++i) {
        x.push_back(inputs[i].clone());
        x.back().set_requires_grad(differentiable[i]);
    }
    Tensor out = f(x);
    Rng rng(seed);
    backward(ops::sum(ops::mul(out, rng.normal(out.shape()))));
    std::vector<std::vector<float>> result{out.to_vector()};
    for (size_t i = 0; i < x.size(); ++i)
        if (differentiable[i]) result.push_back(x[i].grad().to_vector());
    return result;
}

TEST(OpsAttentionDeterminism, BitIdenticalAcrossThreadCounts) {
#ifndef _OPENMP
    GTEST_SKIP() << "built without OpenMP";
#else
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 37, S = 4, C = T / S, H = 4, Hk = 2, d = 16, dr = 8, K = 3;
    Tensor q = rng.normal({B, T, H, d}), k = rng.normal({B, T, Hk, d}), v = rng.normal({B, T, Hk, d});
    Tensor kmem = rng.normal({B, C * S, Hk, d}), vmem = rng.normal({B, C * S, Hk, d});
    struct Case {
        OpFunction f;
        std::vector<Tensor> inputs;
        std::vector<bool> differentiable;
    };
    std::vector<Case> cases;
    for (AttentionSpan span : {AttentionSpan{true, 5}, AttentionSpan{true, 0}, AttentionSpan{false, 0}})
        cases.push_back({[span](const std::vector<Tensor>& x) { return ops::local_attention(x[0], x[1], x[2], span); },
                         {q, k, v},
                         {true, true, true}});
    std::vector<std::pair<Tensor, Tensor>> retrieval_inputs;
    for (int64_t Hr : {int64_t{1}, Hk}) {
        Tensor qr = rng.normal({B, T, Hr, dr}), landmarks = rng.normal({B, C, Hr, dr});
        retrieval_inputs.push_back({qr, landmarks});
        Tensor indices = select_fixed(qr, landmarks, S, K);
        Tensor weights = rng.uniform({B, T, Hr, K}, 0.1f, 1.0f);
        for (WeightKind kind : {WeightKind::Softmax, WeightKind::StickBreak})
            cases.push_back({[indices, kind](const std::vector<Tensor>& x) {
                                 return ops::chunk_weights(x[0], x[1], indices, kind);
                             },
                             {qr, landmarks},
                             {true, true}});
        cases.push_back({[indices, S](const std::vector<Tensor>& x) {
                             return ops::hsa_attention(x[0], x[1], x[2], indices, x[3], S);
                         },
                         {q, kmem, vmem, weights},
                         {true, true, true, true}});
    }
    const int previous = omp_get_max_threads();
    for (size_t i = 0; i < cases.size(); ++i) {
        SCOPED_TRACE("case " + std::to_string(i));
        const Case& c = cases[i];
        omp_set_num_threads(1);
        const auto one = outputs_and_gradients(c.f, c.inputs, c.differentiable, 1234 + i);
        omp_set_num_threads(2);
        const auto two = outputs_and_gradients(c.f, c.inputs, c.differentiable, 1234 + i);
        omp_set_num_threads(3);
        const auto three = outputs_and_gradients(c.f, c.inputs, c.differentiable, 1234 + i);
        ASSERT_EQ(one.size(), c.inputs.size() + 1);
        ASSERT_EQ(one.size(), two.size());
        for (size_t j = 0; j < one.size(); ++j) {
            EXPECT_TRUE(bit_identical(one[j], two[j])) << "tensor " << j << " (0 = output) differs, 1 vs 2 threads";
            EXPECT_TRUE(bit_identical(one[j], three[j])) << "tensor " << j << " (0 = output) differs, 1 vs 3 threads";
        }
    }
    for (const auto& [qr, landmarks] : retrieval_inputs) {
        omp_set_num_threads(1);
        const std::vector<float> one = ops::select_chunks(qr, landmarks, S, K).to_vector();
        omp_set_num_threads(2);
        const std::vector<float> two = ops::select_chunks(qr, landmarks, S, K).to_vector();
        EXPECT_TRUE(bit_identical(one, two)) << "select_chunks differs, 1 vs 2 threads";
    }
    omp_set_num_threads(previous);
#endif
}

// ================================================================ errors

void expect_one_line_error(const std::function<void()>& call, const std::string& fragment) {
    try {
        call();
        ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
    } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find(fragment), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
}

TEST(OpsAttentionErrors, RejectsBadShapesAndIndices) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Backend& cpu = backend_for(Device::CPU);
    const int64_t B = 1, T = 7, H = 2, Hk = 1, d = 4, S = 3, Hr = 1, dr = 3, K = 2;
    Tensor q = rng.normal({B, T, H, d}), k = rng.normal({B, T, Hk, d});
    Tensor out = Tensor::empty({B, T, H, d}), lse = Tensor::empty({B, T, H});
    // v with the wrong head dim.
    Tensor bad_v = rng.normal({B, T, Hk, d + 1});
    expect_one_line_error([&] { cpu.attention_forward(q, k, bad_v, {true, 0}, out, lse); }, "[1,7,1,5]");
    // Query heads not a multiple of KV heads.
    Tensor k3 = rng.normal({B, T, 3, d});
    expect_one_line_error([&] { cpu.attention_forward(q, k3, k3, {true, 0}, out, lse); }, "Hk");
    // Wrong lse shape.
    Tensor bad_lse = Tensor::empty({B, T, H, 1});
    expect_one_line_error([&] { cpu.attention_forward(q, k, k, {true, 0}, out, bad_lse); }, "lse");

    Tensor qr = rng.normal({B, T, Hr, dr}), landmarks = rng.normal({B, 2, Hr, dr});
    Tensor bad_indices = Tensor::empty({B, T, Hr + 1, K}, DType::I32);
    expect_one_line_error([&] { cpu.select_chunks(qr, landmarks, S, bad_indices); }, "indices");
    // A chunk index beyond the landmarks.
    Tensor indices = Tensor::from_vector_i32(std::vector<int32_t>(B * T * Hr * K, 2), {B, T, Hr, K});
    Tensor weights = Tensor::empty({B, T, Hr, K});
    expect_one_line_error([&] { cpu.chunk_weights_forward(qr, landmarks, indices, WeightKind::Softmax, weights); },
                          "indices");
    // HSA: chunk 2 needs rows [6, 9) but kmem has 8 rows; chunk 1 is fine.
    Tensor kmem = rng.normal({B, 8, Hk, d});
    Tensor hsa_lse = Tensor::empty({B, T, H, K});
    expect_one_line_error([&] { cpu.hsa_forward(q, kmem, kmem, indices, weights, S, out, hsa_lse); }, "indices");
    Tensor ok_indices = Tensor::from_vector_i32(std::vector<int32_t>(B * T * Hr * K, 1), {B, T, Hr, K});
    weights.fill(0.5f);
    EXPECT_NO_THROW(cpu.hsa_forward(q, kmem, kmem, ok_indices, weights, S, out, hsa_lse));
    Tensor negative = Tensor::from_vector_i32(std::vector<int32_t>(B * T * Hr * K, -2), {B, T, Hr, K});
    expect_one_line_error([&] { cpu.hsa_forward(q, kmem, kmem, negative, weights, S, out, hsa_lse); }, "-2");
    // Hr must divide Hk.
    Tensor indices2 = Tensor::from_vector_i32(std::vector<int32_t>(B * T * 2 * K, -1), {B, T, 2, K});
    Tensor weights2 = Tensor::zeros({B, T, 2, K});
    expect_one_line_error([&] { cpu.hsa_forward(q, kmem, kmem, indices2, weights2, S, out, hsa_lse); }, "Hr");
}

}  // namespace
}  // namespace hsa::test
