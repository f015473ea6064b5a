// Tests of the basic ops (core/ops.h) on the CPU backend (core/cpu/cpu_basic.cpp):
// forward values against small independent computations in double, finite-difference
// gradient checks of every differentiable input, backend-level semantics (write vs
// accumulate, batch rules, errors), AdamW against its formula, and thread-count invariance.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "core/backend.h"
#include "tests/op_test_harness.h"

namespace hsa {
namespace {

using test::check_gradients;
using test::expect_same_bits;
using test::test_rng;

Backend& cpu() { return backend_for(Device::CPU); }

// Random ids in [0, V).
Tensor random_ids(Rng& rng, const Shape& shape, int64_t V) {
    std::vector<int32_t> ids(static_cast<size_t>(shape_numel(shape)));
    for (auto& id : ids) id = static_cast<int32_t>(rng.next_int(0, V));
    return Tensor::from_vector_i32(ids, shape);
}

std::vector<int32_t> ids_of(const Tensor& t) {
    std::vector<int32_t> out(static_cast<size_t>(t.numel()));
    std::memcpy(out.data(), t.data<int32_t>(), out.size() * sizeof(int32_t));
    return out;
}

// Element-wise |got - want| <= atol + rtol |want|.
void expect_close(const std::vector<float>& got, const std::vector<double>& want, double atol = 1e-5,
                  double rtol = 1e-5, const char* what = "value") {
    ASSERT_EQ(got.size(), want.size()) << what;
    int failures = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!(std::fabs(got[i] - want[i]) <= atol + rtol * std::fabs(want[i])) && failures++ < 5)
            ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i];
    }
    EXPECT_EQ(failures, 0) << what << ": " << failures << " elements differ";
}

// op(x)[bt][r][c] where x is stored as [batch, R, C] (batch 1 is shared) and op transposes.
double op_at(const std::vector<float>& x, int64_t batch, int64_t R, int64_t C, bool transpose, int64_t bt, int64_t r,
             int64_t c) {
    const int64_t b = batch == 1 ? 0 : bt;
    return transpose ? x[static_cast<size_t>((b * R + c) * C + r)] : x[static_cast<size_t>((b * R + r) * C + c)];
}

// Naive batched product in double: out[bt][m][n] = sum_k op(a)[bt][m][k] op(b)[bt][k][n].
// a is stored [Ba, Ra, Ca], b [Bb, Rb, Cb]. sum_batches: out has batch 1 and sums over bt.
std::vector<double> naive_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, bool sum_batches = false) {
    auto dims = [](const Tensor& t, int64_t& batch, int64_t& R, int64_t& C) {
        batch = t.ndim() == 3 ? t.size(0) : 1;
        R = t.size(-2);
        C = t.size(-1);
    };
    int64_t Ba, Ra, Ca, Bb, Rb, Cb;
    dims(a, Ba, Ra, Ca);
    dims(b, Bb, Rb, Cb);
    const int64_t M = ta ? Ca : Ra, K = ta ? Ra : Ca, N = tb ? Rb : Cb;
    const int64_t B = std::max(Ba, Bb);
    std::vector<float> av = a.to_vector(), bv = b.to_vector();
    const int64_t Bo = sum_batches ? 1 : B;
    std::vector<double> out(static_cast<size_t>(Bo * M * N), 0.0);
    for (int64_t bt = 0; bt < B; ++bt)
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
                double acc = 0.0;
                for (int64_t k = 0; k < K; ++k)
                    acc += op_at(av, Ba, Ra, Ca, ta, bt, m, k) * op_at(bv, Bb, Rb, Cb, tb, bt, k, n);
                out[static_cast<size_t>(((sum_batches ? 0 : bt) * M + m) * N + n)] += acc;
            }
    return out;
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Restores the OpenMP thread count on scope exit.
struct ThreadCountGuard {
    int saved = omp_get_max_threads();
    ~ThreadCountGuard() { omp_set_num_threads(saved); }
};

// ======================================================================= elementwise

TEST(OpsBasicElementwise, AddForwardAndGradients) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor a = rng.normal({3, 5, 7}), b = rng.normal({3, 5, 7});
    std::vector<float> av = a.to_vector(), bv = b.to_vector();
    std::vector<double> want(av.size());
    for (size_t i = 0; i < av.size(); ++i) want[i] = static_cast<double>(av[i]) + bv[i];
    expect_close(ops::add(a, b).to_vector(), want, 1e-6, 1e-6, "add");
    check_gradients([](const std::vector<Tensor>& x) { return ops::add(x[0], x[1]); }, {a, b}, {true, true}, rng);
}

TEST(OpsBasicElementwise, MulForwardAndGradients) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor a = rng.normal({3, 5, 7}), b = rng.normal({3, 5, 7});
    std::vector<float> av = a.to_vector(), bv = b.to_vector();
    std::vector<double> want(av.size());
    for (size_t i = 0; i < av.size(); ++i) want[i] = static_cast<double>(av[i]) * bv[i];
    expect_close(ops::mul(a, b).to_vector(), want, 1e-6, 1e-6, "mul");
    check_gradients([](const std::vector<Tensor>& x) { return ops::mul(x[0], x[1]); }, {a, b}, {true, true}, rng);
}

TEST(OpsBasicElementwise, ScaleForwardAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor a = rng.normal({3, 5, 7});
    std::vector<float> av = a.to_vector();
    std::vector<double> want(av.size());
    for (size_t i = 0; i < av.size(); ++i) want[i] = -1.75 * av[i];
    expect_close(ops::scale(a, -1.75f).to_vector(), want, 1e-6, 1e-6, "scale");
    check_gradients([](const std::vector<Tensor>& x) { return ops::scale(x[0], -1.75f); }, {a}, {true}, rng);
}

TEST(OpsBasicElementwise, AxpyAccumulatesIntoTarget) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({5, 7}), target = rng.normal({5, 7});
    std::vector<float> xv = x.to_vector(), tv = target.to_vector();
    cpu().axpy(0.3f, x, target);
    std::vector<double> want(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) want[i] = tv[i] + 0.3 * xv[i];
    expect_close(target.to_vector(), want, 1e-6, 1e-6, "axpy");
    Tensor wrong = rng.normal({5, 6});
    EXPECT_THROW(cpu().axpy(1.0f, wrong, target), Error);
}

TEST(OpsBasicElementwise, MismatchedNumelThrows) {
    Tensor a = Tensor::zeros({3, 5}), b = Tensor::zeros({3, 4}), out = Tensor::zeros({3, 5});
    EXPECT_THROW(cpu().add(a, b, out), Error);
    EXPECT_THROW(cpu().mul(a, b, out), Error);
    EXPECT_THROW(cpu().scale(a, 2.0f, b), Error);
}

// ======================================================================= shape ops

TEST(OpsBasicShape, ReshapeForwardAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 7});
    Tensor y = ops::reshape(x, {5, -1});
    EXPECT_EQ(y.shape(), (Shape{5, 21}));
    EXPECT_EQ(y.to_vector(), x.to_vector());
    check_gradients([](const std::vector<Tensor>& in) { return ops::reshape(in[0], {7, 15}); }, {x}, {true}, rng);
}

TEST(OpsBasicShape, SliceForwardAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 7});
    std::vector<float> xv = x.to_vector();
    Tensor y = ops::slice(x, 1, 1, 3);
    ASSERT_EQ(y.shape(), (Shape{3, 3, 7}));
    std::vector<double> want;
    for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 1; j < 4; ++j)
            for (int64_t k = 0; k < 7; ++k) want.push_back(xv[static_cast<size_t>((i * 5 + j) * 7 + k)]);
    expect_close(y.to_vector(), want, 0, 0, "slice dim 1");
    Tensor z = ops::slice(x, -1, 2, 5);
    ASSERT_EQ(z.shape(), (Shape{3, 5, 5}));
    std::vector<double> want_z;
    for (int64_t r = 0; r < 15; ++r)
        for (int64_t k = 2; k < 7; ++k) want_z.push_back(xv[static_cast<size_t>(r * 7 + k)]);
    expect_close(z.to_vector(), want_z, 0, 0, "slice dim -1");
    check_gradients([](const std::vector<Tensor>& in) { return ops::slice(in[0], 1, 1, 3); }, {x}, {true}, rng);
    check_gradients([](const std::vector<Tensor>& in) { return ops::slice(in[0], 0, 2, 1); }, {x}, {true}, rng);
    // The whole dimension: x's values (a view, no copy), and the gradient passes through.
    EXPECT_EQ(ops::slice(x, 1, 0, 5).to_vector(), xv);
    check_gradients([](const std::vector<Tensor>& in) { return ops::slice(in[0], 1, 0, 5); }, {x}, {true}, rng);
    EXPECT_THROW(ops::slice(x, 1, 3, 3), Error);
}

TEST(OpsBasicShape, ConcatForwardAndGradients) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor a = rng.normal({3, 2, 7}), b = rng.normal({3, 5, 7}), c = rng.normal({3, 1, 7});
    Tensor y = ops::concat({a, b, c}, 1);
    ASSERT_EQ(y.shape(), (Shape{3, 8, 7}));
    std::vector<float> av = a.to_vector(), bv = b.to_vector(), cv = c.to_vector();
    std::vector<double> want;
    for (int64_t i = 0; i < 3; ++i) {
        for (int64_t j = 0; j < 2 * 7; ++j) want.push_back(av[static_cast<size_t>(i * 14 + j)]);
        for (int64_t j = 0; j < 5 * 7; ++j) want.push_back(bv[static_cast<size_t>(i * 35 + j)]);
        for (int64_t j = 0; j < 1 * 7; ++j) want.push_back(cv[static_cast<size_t>(i * 7 + j)]);
    }
    expect_close(y.to_vector(), want, 0, 0, "concat");
    check_gradients([](const std::vector<Tensor>& in) { return ops::concat({in[0], in[1], in[2]}, 1); }, {a, b, c},
                    {true, true, true}, rng);
    Tensor d = rng.normal({3, 5, 2});
    check_gradients([](const std::vector<Tensor>& in) { return ops::concat({in[0], in[1]}, -1); }, {b, d},
                    {true, true}, rng);
}

TEST(OpsBasicShape, MeanForwardAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 7});
    std::vector<float> xv = x.to_vector();
    for (int dim = 0; dim < 3; ++dim) {
        Tensor y = ops::mean(x, dim);
        const int64_t sizes[3] = {3, 5, 7};
        Shape expected;
        for (int i = 0; i < 3; ++i)
            if (i != dim) expected.push_back(sizes[i]);
        ASSERT_EQ(y.shape(), expected);
        std::vector<double> want(static_cast<size_t>(y.numel()), 0.0);
        for (int64_t i = 0; i < 3; ++i)
            for (int64_t j = 0; j < 5; ++j)
                for (int64_t k = 0; k < 7; ++k) {
                    const int64_t idx[3] = {i, j, k};
                    int64_t o = 0;
                    for (int q = 0; q < 3; ++q)
                        if (q != dim) o = o * sizes[q] + idx[q];
                    want[static_cast<size_t>(o)] += xv[static_cast<size_t>((i * 5 + j) * 7 + k)] / double(sizes[dim]);
                }
        expect_close(y.to_vector(), want, 1e-6, 1e-5, "mean");
        check_gradients([dim](const std::vector<Tensor>& in) { return ops::mean(in[0], dim); }, {x}, {true}, rng);
    }
}

TEST(OpsBasicShape, SumForwardAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 7});
    double want = 0;
    for (float v : x.to_vector()) want += v;
    Tensor s = ops::sum(x);
    EXPECT_EQ(s.numel(), 1);
    EXPECT_NEAR(s.item(), want, 1e-5 * (1 + std::fabs(want)));
    check_gradients([](const std::vector<Tensor>& in) { return ops::sum(in[0]); }, {x}, {true}, rng);
}

TEST(OpsBasicShape, RepeatLeadingForwardAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({5, 7});
    Tensor y = ops::repeat_leading(x, 3);
    ASSERT_EQ(y.shape(), (Shape{3, 5, 7}));
    std::vector<float> xv = x.to_vector();
    std::vector<double> want;
    for (int r = 0; r < 3; ++r)
        for (float v : xv) want.push_back(v);
    expect_close(y.to_vector(), want, 0, 0, "repeat_leading");
    check_gradients([](const std::vector<Tensor>& in) { return ops::repeat_leading(in[0], 3); }, {x}, {true}, rng);
}

// Backend data-movement primitives directly: bounds, alpha, accumulate.
TEST(OpsBasicShape, CopyRowsSumMiddleBroadcastMiddle) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor src = rng.normal({3, 5, 7}), dst = rng.normal({3, 4, 7});
    std::vector<float> sv = src.to_vector(), dv = dst.to_vector();
    cpu().copy_rows(src, 3, 5, 1, dst, 4, 2, 2, 7, /*accumulate=*/true);
    std::vector<double> want = to_double(dv);
    for (int64_t o = 0; o < 3; ++o)
        for (int64_t j = 0; j < 2; ++j)
            for (int64_t i = 0; i < 7; ++i)
                want[static_cast<size_t>((o * 4 + 2 + j) * 7 + i)] += sv[static_cast<size_t>((o * 5 + 1 + j) * 7 + i)];
    expect_close(dst.to_vector(), want, 1e-6, 1e-6, "copy_rows accumulate");
    EXPECT_THROW(cpu().copy_rows(src, 3, 5, 4, dst, 4, 0, 2, 7, false), Error);  // source rows past the end
    EXPECT_THROW(cpu().copy_rows(src, 3, 5, 0, dst, 4, 3, 2, 7, false), Error);  // destination rows past the end

    Tensor summed = Tensor::full({3, 7}, 123.0f);
    cpu().sum_middle(src, 3, 5, 7, 0.5f, summed);
    std::vector<double> want_sum(21, 0.0);
    for (int64_t o = 0; o < 3; ++o)
        for (int64_t j = 0; j < 5; ++j)
            for (int64_t i = 0; i < 7; ++i)
                want_sum[static_cast<size_t>(o * 7 + i)] += 0.5 * sv[static_cast<size_t>((o * 5 + j) * 7 + i)];
    expect_close(summed.to_vector(), want_sum, 1e-6, 1e-6, "sum_middle");

    Tensor x = rng.normal({3, 7}), out = Tensor::full({3, 5, 7}, 123.0f);
    cpu().broadcast_middle(x, 3, 5, 7, -2.0f, out);
    std::vector<float> xv = x.to_vector();
    std::vector<double> want_b;
    for (int64_t o = 0; o < 3; ++o)
        for (int64_t j = 0; j < 5; ++j)
            for (int64_t i = 0; i < 7; ++i) want_b.push_back(-2.0 * xv[static_cast<size_t>(o * 7 + i)]);
    expect_close(out.to_vector(), want_b, 0, 0, "broadcast_middle");
}

TEST(OpsBasicShape, SumAndSumOfSquaresAreDoubleAndThreadInvariant) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 10007});  // several blocks, last one partial
    double want = 0, want_sq = 0;
    for (float v : x.to_vector()) {
        want += v;
        want_sq += static_cast<double>(v) * v;
    }
    ThreadCountGuard guard;
    omp_set_num_threads(1);
    const double s1 = cpu().sum(x), q1 = cpu().sum_of_squares(x);
    omp_set_num_threads(2);
    const double s2 = cpu().sum(x), q2 = cpu().sum_of_squares(x);
    EXPECT_EQ(std::memcmp(&s1, &s2, sizeof(double)), 0) << s1 << " vs " << s2;
    EXPECT_EQ(std::memcmp(&q1, &q2, sizeof(double)), 0) << q1 << " vs " << q2;
    EXPECT_NEAR(s1, want, 1e-9 * x.numel());
    EXPECT_NEAR(q1, want_sq, 1e-9 * want_sq);
}

// ======================================================================= embedding

TEST(OpsBasicEmbedding, ForwardAndTableGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t V = 11, D = 5;
    Tensor table = rng.normal({V, D});
    Tensor ids = random_ids(rng, {3, 7}, V);
    ids.data<int32_t>()[4] = ids.data<int32_t>()[0];  // guaranteed repeats
    ids.data<int32_t>()[9] = ids.data<int32_t>()[0];
    Tensor out = ops::embedding(table, ids);
    ASSERT_EQ(out.shape(), (Shape{3, 7, D}));
    std::vector<float> tv = table.to_vector();
    std::vector<int32_t> iv = ids_of(ids);
    std::vector<double> want;
    for (int32_t id : iv)
        for (int64_t j = 0; j < D; ++j) want.push_back(tv[static_cast<size_t>(id * D + j)]);
    expect_close(out.to_vector(), want, 0, 0, "embedding");
    check_gradients([](const std::vector<Tensor>& in) { return ops::embedding(in[0], in[1]); }, {table, ids},
                    {true, false}, rng);
}

TEST(OpsBasicEmbedding, BackwardWritesSumsPerRowAndZeroElsewhere) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t V = 13, D = 5, N = 21;
    Tensor ids = random_ids(rng, {N}, V);
    ids.data<int32_t>()[3] = 2;
    ids.data<int32_t>()[17] = 2;
    Tensor grad_out = rng.normal({N, D});
    Tensor grad_table = Tensor::full({V, D}, 99.0f);  // must be overwritten, not added to
    cpu().embedding_backward(ids, grad_out, grad_table);
    std::vector<double> want(static_cast<size_t>(V * D), 0.0);
    std::vector<float> gv = grad_out.to_vector();
    std::vector<int32_t> iv = ids_of(ids);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < D; ++j) want[static_cast<size_t>(iv[n] * D + j)] += gv[static_cast<size_t>(n * D + j)];
    expect_close(grad_table.to_vector(), want, 1e-6, 1e-6, "embedding_backward");
}

TEST(OpsBasicEmbedding, OutOfRangeIdThrows) {
    Tensor table = Tensor::full({4, 3}, 1.0f);
    EXPECT_THROW(ops::embedding(table, Tensor::from_vector_i32({0, 4, 1}, {3})), Error);
    EXPECT_THROW(ops::embedding(table, Tensor::from_vector_i32({0, -1, 1}, {3})), Error);
    Tensor grad_table = Tensor::zeros({4, 3});
    EXPECT_THROW(cpu().embedding_backward(Tensor::from_vector_i32({7}, {1}), Tensor::zeros({1, 3}), grad_table),
                 Error);
}

// ======================================================================= matmul / gemm

TEST(OpsBasicMatmul, TwoDimAllTransposeCombos) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t M = 5, K = 7, N = 3;
    for (int combo = 0; combo < 4; ++combo) {
        const bool ta = combo & 1, tb = combo & 2;
        SCOPED_TRACE("transpose_a=" + std::to_string(ta) + " transpose_b=" + std::to_string(tb));
        Tensor a = rng.normal(ta ? Shape{K, M} : Shape{M, K});
        Tensor b = rng.normal(tb ? Shape{N, K} : Shape{K, N});
        Tensor out = ops::matmul(a, b, ta, tb);
        ASSERT_EQ(out.shape(), (Shape{M, N}));
        expect_close(out.to_vector(), naive_matmul(a, ta, b, tb), 1e-5, 1e-5, "matmul");
        check_gradients([ta, tb](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1], ta, tb); }, {a, b},
                        {true, true}, rng);
    }
}

TEST(OpsBasicMatmul, Batched3Dx3DAllTransposeCombos) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 3, M = 5, K = 7, N = 3;
    for (int combo = 0; combo < 4; ++combo) {
        const bool ta = combo & 1, tb = combo & 2;
        SCOPED_TRACE("transpose_a=" + std::to_string(ta) + " transpose_b=" + std::to_string(tb));
        Tensor a = rng.normal(ta ? Shape{B, K, M} : Shape{B, M, K});
        Tensor b = rng.normal(tb ? Shape{B, N, K} : Shape{B, K, N});
        Tensor out = ops::matmul(a, b, ta, tb);
        ASSERT_EQ(out.shape(), (Shape{B, M, N}));
        expect_close(out.to_vector(), naive_matmul(a, ta, b, tb), 1e-5, 1e-5, "batched matmul");
        check_gradients([ta, tb](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1], ta, tb); }, {a, b},
                        {true, true}, rng);
    }
}

TEST(OpsBasicMatmul, Batched3Dx2DSharedB) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int combo = 0; combo < 4; ++combo) {
        const bool ta = combo & 1, tb = combo & 2;
        SCOPED_TRACE("transpose_a=" + std::to_string(ta) + " transpose_b=" + std::to_string(tb));
        Tensor a = rng.normal(ta ? Shape{3, 7, 5} : Shape{3, 5, 7});
        Tensor b = rng.normal(tb ? Shape{3, 7} : Shape{7, 3});  // shared across the batch of 3
        Tensor out = ops::matmul(a, b, ta, tb);
        ASSERT_EQ(out.shape(), (Shape{3, 5, 3}));
        expect_close(out.to_vector(), naive_matmul(a, ta, b, tb), 1e-5, 1e-5, "matmul shared b");
        // b's gradient sums over the batch (gemm with an out batch of 1).
        check_gradients([ta, tb](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1], ta, tb); }, {a, b},
                        {true, true}, rng);
    }
}

TEST(OpsBasicMatmul, Shared2DAx3DB) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor a = rng.normal({5, 7});
    Tensor b = rng.normal({3, 7, 3});
    Tensor out = ops::matmul(a, b);
    ASSERT_EQ(out.shape(), (Shape{3, 5, 3}));
    expect_close(out.to_vector(), naive_matmul(a, false, b, false), 1e-5, 1e-5, "matmul shared a");
    check_gradients([](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1]); }, {a, b}, {true, true}, rng);
}

TEST(OpsBasicMatmul, LinearForwardAndGradients) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 7}), w = rng.normal({7, 3});
    Tensor y = ops::linear(x, w);
    ASSERT_EQ(y.shape(), (Shape{3, 5, 3}));
    expect_close(y.to_vector(), naive_matmul(x.view({15, 7}), false, w, false), 1e-5, 1e-5, "linear");
    check_gradients([](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1]); }, {x, w}, {true, true}, rng);
}

// An input feeding two linears (the attention's q and kv products): linear adds the second
// product's gradient into the first's in place (beta = 1), which must give the bits of
// reshape -> matmul -> reshape, whose reshape added the two with a separate pass. A 2-D
// input (straight to matmul) as well.
TEST(OpsBasicMatmul, LinearSharedInputGradientEqualsReshapedMatmuls) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (const Shape& shape : {Shape{3, 5, 7}, Shape{15, 7}}) {
        SCOPED_TRACE(shape_string(shape));
        const int64_t rows = shape_numel(shape) / 7;
        // x feeds both products; their outputs side by side.
        auto both = [](bool as_linear) {
            return [as_linear](const std::vector<Tensor>& in) {
                auto product = [&](const Tensor& w) {
                    return as_linear ? ops::reshape(ops::linear(in[0], w), {-1, w.size(1)})
                                     : ops::matmul(ops::reshape(in[0], {-1, 7}), w);
                };
                return ops::concat({product(in[1]), product(in[2])}, 1);
            };
        };
        expect_same_bits(both(true), both(false), {rng.normal(shape), rng.normal({7, 4}), rng.normal({7, 6})},
                         rng.normal({rows, 10}), {"x", "wa", "wb"});
    }
}

TEST(OpsBasicMatmul, GemmBatchSumAndAccumulate) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    // out batch 1 with B = 3: the product is summed over the batch; accumulate adds to out.
    Tensor a = rng.normal({3, 7, 5}), b = rng.normal({3, 3, 7});
    Tensor out = rng.normal({5, 3});
    std::vector<double> want = naive_matmul(a, true, b, true, /*sum_batches=*/true);
    std::vector<float> before = out.to_vector();
    for (size_t i = 0; i < want.size(); ++i) want[i] += before[i];
    cpu().gemm(a, true, b, true, out, /*accumulate=*/true);
    expect_close(out.to_vector(), want, 1e-5, 1e-5, "gemm batch sum + accumulate");
    // Without accumulate the old contents are overwritten.
    Tensor out2 = Tensor::full({5, 3}, 77.0f);
    cpu().gemm(a, true, b, true, out2, false);
    expect_close(out2.to_vector(), naive_matmul(a, true, b, true, true), 1e-5, 1e-5, "gemm batch sum");
    // Shared a and b (both batch 1) into a batch-3 out: every out matrix is the same product.
    Tensor a2 = rng.normal({5, 7}), b2 = rng.normal({7, 3}), out3 = Tensor::full({3, 5, 3}, 5.0f);
    cpu().gemm(a2, false, b2, false, out3, false);
    std::vector<double> single = naive_matmul(a2, false, b2, false), want3;
    for (int r = 0; r < 3; ++r) want3.insert(want3.end(), single.begin(), single.end());
    expect_close(out3.to_vector(), want3, 1e-5, 1e-5, "gemm broadcast to out batch");
}

TEST(OpsBasicMatmul, GemmShapeErrors) {
    Tensor a = Tensor::zeros({5, 7}), b = Tensor::zeros({6, 3}), out = Tensor::zeros({5, 3});
    EXPECT_THROW(cpu().gemm(a, false, b, false, out, false), Error);  // inner dims 7 vs 6
    Tensor b2 = Tensor::zeros({7, 3}), bad_out = Tensor::zeros({5, 4});
    EXPECT_THROW(cpu().gemm(a, false, b2, false, bad_out, false), Error);
    Tensor a3 = Tensor::zeros({2, 5, 7}), b3 = Tensor::zeros({3, 7, 3}), out3 = Tensor::zeros({3, 5, 3});
    EXPECT_THROW(cpu().gemm(a3, false, b3, false, out3, false), Error);  // batches 2 and 3
    EXPECT_THROW(ops::matmul(a, b), Error);
}

TEST(OpsBasicMatmul, GemmBitIdenticalAcrossThreadCounts) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    ThreadCountGuard guard;
    struct Case {
        Shape a, b, out;
        bool ta, tb, acc;
    };
    // Sizes span several 4-row and 256-column tiles, with ragged edges.
    const std::vector<Case> cases = {
        {{37, 131}, {131, 301}, {37, 301}, false, false, false},
        {{131, 37}, {301, 131}, {37, 301}, true, true, false},
        {{3, 37, 131}, {131, 301}, {3, 37, 301}, false, false, true},
        {{3, 131, 37}, {3, 131, 263}, {37, 263}, true, false, false},  // batch summed into out
    };
    for (const Case& c : cases) {
        Tensor a = rng.normal(c.a), b = rng.normal(c.b), init = rng.normal(c.out);
        Tensor out1 = init.clone(), out2 = init.clone();
        omp_set_num_threads(1);
        cpu().gemm(a, c.ta, b, c.tb, out1, c.acc);
        omp_set_num_threads(2);
        cpu().gemm(a, c.ta, b, c.tb, out2, c.acc);
        ASSERT_EQ(out1.numel(), out2.numel());
        EXPECT_EQ(std::memcmp(out1.data<float>(), out2.data<float>(), out1.nbytes()), 0)
            << "gemm " << shape_string(c.a) << " x " << shape_string(c.b) << " differs between 1 and 2 threads";
        // And it is right.
        std::vector<double> want = naive_matmul(a, c.ta, b, c.tb, c.out.size() == 2 && (c.a.size() == 3 || c.b.size() == 3));
        if (c.acc) {
            std::vector<float> iv = init.to_vector();
            for (size_t i = 0; i < want.size(); ++i) want[i] += iv[i];
        }
        expect_close(out1.to_vector(), want, 1e-4, 1e-5, "gemm large");
    }
}

// ======================================================================= rmsnorm

std::vector<double> rmsnorm_reference(const Tensor& x, const Tensor& w, double eps) {
    std::vector<float> xv = x.to_vector();
    std::vector<float> wv = w.defined() ? w.to_vector() : std::vector<float>();
    const int64_t D = x.size(-1), N = x.numel() / D;
    std::vector<double> out(xv.size());
    for (int64_t n = 0; n < N; ++n) {
        double ms = 0;
        for (int64_t j = 0; j < D; ++j) ms += static_cast<double>(xv[n * D + j]) * xv[n * D + j];
        ms /= static_cast<double>(D);
        const double r = 1.0 / std::sqrt(ms + eps);
        for (int64_t j = 0; j < D; ++j) out[n * D + j] = xv[n * D + j] * r * (w.defined() ? wv[j] : 1.0f);
    }
    return out;
}

TEST(OpsBasicRmsnorm, WithWeightForwardAndGradients) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 7}), w = rng.normal({7});
    Tensor y = ops::rmsnorm(x, w, 1e-5f);
    ASSERT_EQ(y.shape(), x.shape());
    expect_close(y.to_vector(), rmsnorm_reference(x, w, 1e-5), 1e-5, 1e-5, "rmsnorm");
    check_gradients([](const std::vector<Tensor>& in) { return ops::rmsnorm(in[0], in[1], 1e-5f); }, {x, w},
                    {true, true}, rng);
}

TEST(OpsBasicRmsnorm, WithoutWeightForwardAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 7});
    Tensor y = ops::rmsnorm(x, Tensor());
    expect_close(y.to_vector(), rmsnorm_reference(x, Tensor(), 1e-6), 1e-5, 1e-5, "rmsnorm no weight");
    check_gradients([](const std::vector<Tensor>& in) { return ops::rmsnorm(in[0], Tensor()); }, {x}, {true}, rng);
}

TEST(OpsBasicRmsnorm, BackwardOverwritesAndSkipsUndefined) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({5, 7}), w = rng.normal({7}), g = rng.normal({5, 7});
    Tensor out = Tensor::empty({5, 7}), inv = Tensor::empty({5});
    cpu().rmsnorm_forward(x, w, 1e-6f, out, inv);
    std::vector<float> xv = x.to_vector(), iv = inv.to_vector();
    for (int64_t n = 0; n < 5; ++n) {
        double ms = 0;
        for (int64_t j = 0; j < 7; ++j) ms += static_cast<double>(xv[n * 7 + j]) * xv[n * 7 + j];
        EXPECT_NEAR(iv[n], 1.0 / std::sqrt(ms / 7 + 1e-6), 1e-6 * iv[n]);
    }
    Tensor gx1 = Tensor::full({5, 7}, 42.0f), gw1 = Tensor::full({7}, 42.0f);
    Tensor gx2 = Tensor::full({5, 7}, -3.0f), none;
    cpu().rmsnorm_backward(x, w, inv, g, gx1, gw1, false);
    cpu().rmsnorm_backward(x, w, inv, g, gx2, none, false);  // grad_weight not wanted
    EXPECT_EQ(gx1.to_vector(), gx2.to_vector());
    // accumulate_x adds into grad_x: base + value, with the value rounded to f32 first
    // (what writing it and adding it with axpy gives).
    Tensor base = Tensor::full({5, 7}, 0.25f), added = base.clone();
    cpu().rmsnorm_backward(x, w, inv, g, added, none, true);
    std::vector<float> av = added.to_vector(), g1 = gx1.to_vector();
    for (size_t i = 0; i < av.size(); ++i) EXPECT_EQ(av[i], 0.25f + g1[i]);
    // grad_weight[j] = sum_n g[n, j] x[n, j] inv_rms[n].
    std::vector<float> gv = g.to_vector();
    std::vector<double> want_gw(7, 0.0);
    for (int64_t n = 0; n < 5; ++n)
        for (int64_t j = 0; j < 7; ++j) want_gw[j] += static_cast<double>(gv[n * 7 + j]) * xv[n * 7 + j] * iv[n];
    expect_close(gw1.to_vector(), want_gw, 1e-5, 1e-5, "rmsnorm grad_weight");
}

// ======================================================================= rope

TEST(OpsBasicRope, ForwardMatchesExplicitRotation) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 3, T = 5, H = 3, d = 6, offset = 11;
    for (float base : {10000.0f, 7.5f}) {
        Tensor x = rng.normal({B, T, H, d});
        Tensor y = ops::rope(x, offset, base);
        ASSERT_EQ(y.shape(), x.shape());
        std::vector<float> xv = x.to_vector();
        std::vector<double> want(xv.size());
        for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < T; ++t)
                for (int64_t h = 0; h < H; ++h)
                    for (int64_t i = 0; i < d / 2; ++i) {
                        const double angle = static_cast<double>(offset + t) * std::pow(double(base), -2.0 * i / d);
                        const size_t at = static_cast<size_t>(((b * T + t) * H + h) * d);
                        const double x0 = xv[at + i], x1 = xv[at + i + d / 2];
                        want[at + i] = x0 * std::cos(angle) - x1 * std::sin(angle);
                        want[at + i + d / 2] = x1 * std::cos(angle) + x0 * std::sin(angle);
                    }
        expect_close(y.to_vector(), want, 1e-5, 1e-5, "rope");
    }
}

TEST(OpsBasicRope, GradientWithPositionOffset) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 3, 6});
    check_gradients([](const std::vector<Tensor>& in) { return ops::rope(in[0], 7, 100.0f); }, {x}, {true}, rng);
    check_gradients([](const std::vector<Tensor>& in) { return ops::rope(in[0], 1000); }, {x}, {true}, rng);
}

TEST(OpsBasicRope, BackwardIsInverseRotation) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 5, 1, 10}), y = Tensor::empty({3, 5, 1, 10}), back = Tensor::full({3, 5, 1, 10}, 9.0f);
    cpu().rope_forward(x, 13, 10000.0f, y);
    cpu().rope_backward(y, 13, 10000.0f, back);
    expect_close(back.to_vector(), to_double(x.to_vector()), 1e-5, 1e-5, "rope inverse");
    Tensor odd = Tensor::zeros({1, 2, 1, 5}), odd_out = Tensor::zeros({1, 2, 1, 5});
    EXPECT_THROW(cpu().rope_forward(odd, 0, 10000.0f, odd_out), Error);
}

// ======================================================================= swiglu

TEST(OpsBasicSwiglu, ForwardAndGradients) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor g = rng.normal({3, 5, 7}, 2.0f), u = rng.normal({3, 5, 7});
    std::vector<float> gv = g.to_vector(), uv = u.to_vector();
    std::vector<double> want(gv.size());
    for (size_t i = 0; i < gv.size(); ++i) want[i] = gv[i] / (1.0 + std::exp(-static_cast<double>(gv[i]))) * uv[i];
    expect_close(ops::swiglu(g, u).to_vector(), want, 1e-6, 1e-5, "swiglu");
    check_gradients([](const std::vector<Tensor>& in) { return ops::swiglu(in[0], in[1]); }, {g, u}, {true, true},
                    rng);
}

// ======================================================================= cross-entropy

// Hand log-softmax: loss and per-row lse.
double cross_entropy_reference(const Tensor& logits, const std::vector<int32_t>& targets,
                               const std::vector<float>* mask, std::vector<double>* lse_out) {
    std::vector<float> lv = logits.to_vector();
    const int64_t N = logits.size(0), V = logits.size(1);
    double num = 0, den = 0;
    if (lse_out) lse_out->assign(static_cast<size_t>(N), 0.0);
    for (int64_t i = 0; i < N; ++i) {
        double s = 0;
        for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(lv[i * V + v]));
        const double lse = std::log(s);
        if (lse_out) (*lse_out)[i] = lse;
        if (targets[i] < 0) continue;
        const double w = mask ? (*mask)[i] : 1.0;
        num += w * (lse - lv[i * V + targets[i]]);
        den += w;
    }
    return den == 0 ? 0.0 : num / den;
}

TEST(OpsBasicCrossEntropy, ForwardMatchesHandLogSoftmaxWithMaskAndIgnored) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t N = 7, V = 5;
    Tensor logits = rng.normal({N, V}, 2.0f);
    Tensor targets = random_ids(rng, {N}, V);
    targets.data<int32_t>()[2] = -1;
    Tensor mask = rng.uniform({N}, 0.1f, 2.0f);
    std::vector<float> mv = mask.to_vector();
    std::vector<int32_t> tv = ids_of(targets);
    std::vector<double> want_lse;
    const double want = cross_entropy_reference(logits, tv, &mv, &want_lse);
    EXPECT_NEAR(ops::cross_entropy(logits, targets, mask).item(), want, 1e-5 * (1 + std::fabs(want)));
    const double want_nomask = cross_entropy_reference(logits, tv, nullptr, nullptr);
    EXPECT_NEAR(ops::cross_entropy(logits, targets).item(), want_nomask, 1e-5 * (1 + std::fabs(want_nomask)));
    Tensor loss = Tensor::empty({}), lse = Tensor::empty({N});
    cpu().cross_entropy_forward(logits, targets, mask, loss, lse);
    expect_close(lse.to_vector(), want_lse, 1e-5, 1e-5, "cross_entropy lse");
    EXPECT_NEAR(loss.item(), want, 1e-5 * (1 + std::fabs(want)));
}

TEST(OpsBasicCrossEntropy, GradientsWithMaskAndIgnoredTarget) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t N = 7, V = 5;
    Tensor logits = rng.normal({N, V});
    Tensor targets = random_ids(rng, {N}, V);
    targets.data<int32_t>()[4] = -1;
    Tensor mask = rng.uniform({N}, 0.1f, 2.0f);
    check_gradients([](const std::vector<Tensor>& in) { return ops::cross_entropy(in[0], in[1], in[2]); },
                    {logits, targets, mask}, {true, false, false}, rng);
    check_gradients([](const std::vector<Tensor>& in) { return ops::cross_entropy(in[0], in[1]); }, {logits, targets},
                    {true, false}, rng);
}

TEST(OpsBasicCrossEntropy, BackwardMatchesSoftmaxFormula) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t N = 7, V = 5;
    Tensor logits = rng.normal({N, V});
    Tensor targets = random_ids(rng, {N}, V);
    targets.data<int32_t>()[1] = -3;
    Tensor mask = rng.uniform({N}, 0.1f, 2.0f);
    Tensor loss = Tensor::empty({}), lse = Tensor::empty({N});
    cpu().cross_entropy_forward(logits, targets, mask, loss, lse);
    Tensor grad = Tensor::full({N, V}, 55.0f);
    cpu().cross_entropy_backward(logits, targets, mask, lse, 2.5f, grad);
    std::vector<float> lv = logits.to_vector(), mv = mask.to_vector();
    std::vector<int32_t> tv = ids_of(targets);
    std::vector<double> lse_ref;
    cross_entropy_reference(logits, tv, &mv, &lse_ref);
    double den = 0;
    for (int64_t i = 0; i < N; ++i)
        if (tv[i] >= 0) den += mv[i];
    std::vector<double> want(static_cast<size_t>(N * V), 0.0);
    for (int64_t i = 0; i < N; ++i) {
        if (tv[i] < 0) continue;  // ignored rows get exactly zero gradient
        for (int64_t v = 0; v < V; ++v)
            want[i * V + v] = 2.5 * mv[i] / den * (std::exp(lv[i * V + v] - lse_ref[i]) - (v == tv[i] ? 1.0 : 0.0));
    }
    expect_close(grad.to_vector(), want, 1e-6, 1e-5, "cross_entropy grad");
    for (int64_t v = 0; v < V; ++v) EXPECT_EQ(grad.to_vector()[1 * V + v], 0.0f);
}

TEST(OpsBasicCrossEntropy, NothingCountsGivesZeroLossAndGradient) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t N = 5, V = 3;
    Tensor logits = rng.normal({N, V});
    Tensor all_ignored = Tensor::from_vector_i32({-1, -1, -1, -1, -1}, {N});
    Tensor targets = random_ids(rng, {N}, V);
    Tensor zero_mask = Tensor::zeros({N});
    for (int which = 0; which < 2; ++which) {
        Tensor x = logits.clone();
        x.set_requires_grad(true);
        Tensor loss = which == 0 ? ops::cross_entropy(x, all_ignored) : ops::cross_entropy(x, targets, zero_mask);
        EXPECT_EQ(loss.item(), 0.0f);
        backward(loss);
        ASSERT_TRUE(x.grad().defined());
        for (float g : x.grad().to_vector()) EXPECT_EQ(g, 0.0f);
    }
}

TEST(OpsBasicCrossEntropy, OutOfRangeTargetThrows) {
    Tensor logits = Tensor::zeros({2, 3});
    EXPECT_THROW(ops::cross_entropy(logits, Tensor::from_vector_i32({0, 3}, {2})), Error);
}

// ================================================================ RMSNorm then RoPE fused

// rmsnorm_rope against rope(rmsnorm(x)): output and gradients bit-identical on the CPU (the
// default backend methods compose the same kernels), with and without a weight, and with
// x's gradient accumulated into (x also feeds a second op).
TEST(OpsBasicRmsnormRope, EqualsRopeOfRmsnorm) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const Shape shape{2, 5, 3, 8};
    Tensor x0 = rng.normal(shape), w0 = rng.normal({8}), projection = rng.normal(shape);
    for (bool with_weight : {true, false}) {
        SCOPED_TRACE(with_weight ? "weighted" : "no weight");
        auto run = [&](bool fused, Tensor& gx, Tensor& gw) {
            Tensor x = x0.clone(), w = with_weight ? w0.clone() : Tensor();
            x.set_requires_grad(true);
            if (w.defined()) w.set_requires_grad(true);
            Tensor out = fused ? ops::rmsnorm_rope(x, w, 1e-6f, 7, 500.0f)
                               : ops::rope(ops::rmsnorm(x, w, 1e-6f), 7, 500.0f);
            backward(ops::add(ops::sum(ops::mul(out, projection)), ops::sum(ops::mul(x, x))));
            gx = x.grad();
            gw = w.defined() ? w.grad() : Tensor();
            return out;
        };
        Tensor gx_f, gw_f, gx_p, gw_p;
        Tensor fused = run(true, gx_f, gw_f), plain = run(false, gx_p, gw_p);
        EXPECT_EQ(fused.to_vector(), plain.to_vector());
        EXPECT_EQ(gx_f.to_vector(), gx_p.to_vector());
        if (with_weight) {
            EXPECT_EQ(gw_f.to_vector(), gw_p.to_vector());
        }
    }
}

TEST(OpsBasicRmsnormRope, GradientsByFiniteDifferences) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({1, 3, 2, 6}), w = rng.normal({6});
    check_gradients([](const std::vector<Tensor>& in) { return ops::rmsnorm_rope(in[0], in[1], 1e-6f, 3, 100.0f); },
                    {x, w}, {true, true}, rng);
}

// linear_rmsnorm_rope against rmsnorm_rope(reshape(linear(x, W))): output and every gradient
// (x, W, the norm weight) bit-identical on the CPU, with x's gradient accumulated into (x
// feeds a second op, as the attention's normalised input feeds k / v's product too).
TEST(OpsBasicRmsnormRope, LinearRmsnormRopeEqualsTheComposition) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 5, Din = 7, heads = 3, d = 8;
    Tensor x0 = rng.normal({B, T, Din}), w0 = rng.normal({Din, heads * d}), n0 = rng.normal({d});
    Tensor projection = rng.normal({B, T, heads, d}), other = rng.normal({B, T, Din});
    auto run = [&](bool fused, std::vector<Tensor>& grads) {
        Tensor x = x0.clone(), w = w0.clone(), norm = n0.clone();
        for (Tensor* t : {&x, &w, &norm}) t->set_requires_grad(true);
        Tensor out = fused ? ops::linear_rmsnorm_rope(x, w, heads, norm, 1e-6f, 11, 500.0f)
                           : ops::rmsnorm_rope(ops::reshape(ops::linear(x, w), {B, T, heads, d}), norm, 1e-6f, 11, 500.0f);
        backward(ops::add(ops::sum(ops::mul(out, projection)), ops::sum(ops::mul(x, other))));
        grads = {x.grad(), w.grad(), norm.grad()};
        return out;
    };
    std::vector<Tensor> fused_grads, plain_grads;
    const Tensor fused = run(true, fused_grads), plain = run(false, plain_grads);
    EXPECT_EQ(fused.to_vector(), plain.to_vector());
    for (size_t i = 0; i < fused_grads.size(); ++i) EXPECT_EQ(fused_grads[i].to_vector(), plain_grads[i].to_vector()) << i;
}

TEST(OpsBasicRmsnormRope, LinearRmsnormRopeGradientsByFiniteDifferences) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({1, 3, 5}), w = rng.normal({5, 12}), norm = rng.normal({6});
    check_gradients(
        [](const std::vector<Tensor>& in) { return ops::linear_rmsnorm_rope(in[0], in[1], 2, in[2], 1e-6f, 3, 100.0f); },
        {x, w, norm}, {true, true, true}, rng);
}

TEST(OpsBasicRmsnormRope, LinearRmsnormRopeBadShapesThrow) {
    const Tensor norm = Tensor::zeros({4});
    EXPECT_THROW(ops::linear_rmsnorm_rope(Tensor::zeros({2, 6}), Tensor::zeros({6, 8}), 2, norm, 1e-6f), Error);  // x not 3-D
    EXPECT_THROW(ops::linear_rmsnorm_rope(Tensor::zeros({1, 2, 5}), Tensor::zeros({6, 8}), 2, norm, 1e-6f), Error);  // Din
    EXPECT_THROW(ops::linear_rmsnorm_rope(Tensor::zeros({1, 2, 6}), Tensor::zeros({6, 8}), 3, norm, 1e-6f), Error);  // heads
    EXPECT_THROW(ops::linear_rmsnorm_rope(Tensor::zeros({1, 2, 6}), Tensor::zeros({6, 6}), 2, Tensor(), 1e-6f), Error);  // odd d
    EXPECT_THROW(ops::linear_rmsnorm_rope(Tensor::zeros({1, 2, 6}), Tensor::zeros({6, 8}), 2, Tensor::zeros({3}), 1e-6f),
                 Error);  // norm weight != [d]
    EXPECT_THROW(ops::linear_rmsnorm_rope(Tensor::zeros({1, 2, 6}), Tensor::zeros({6, 8}), 2, norm, 1e-6f, 0, 1e4f,
                                          DType::BF16),
                 Error);  // bf16 out on the CPU
}

TEST(OpsBasicRmsnormRope, BadShapesThrow) {
    EXPECT_THROW(ops::rmsnorm_rope(Tensor::zeros({1, 2, 3, 5}), Tensor(), 1e-6f), Error);           // odd d
    EXPECT_THROW(ops::rmsnorm_rope(Tensor::zeros({2, 3, 4}), Tensor(), 1e-6f), Error);              // not 4-D
    EXPECT_THROW(ops::rmsnorm_rope(Tensor::zeros({1, 2, 3, 4}), Tensor::zeros({6}), 1e-6f), Error);  // weight != [d]
}

// ================================================================ residual add + RMSNorm fused

// The model's pattern: both outputs used downstream (the sum as the residual stream, the
// normalised sum by a product), so the sum's gradient has two sources. Everything
// bit-identical to add then rmsnorm on the CPU, with and without a weight.
std::vector<Tensor> add_rmsnorm_pattern(bool fused, const std::vector<Tensor>& in, const Tensor& proj_sum,
                                        const Tensor& proj_norm, std::vector<Tensor>& grads) {
    Tensor sum, normed;
    if (fused) std::tie(sum, normed) = ops::add_rmsnorm(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), 1e-5f);
    else {
        sum = ops::add(in[0], in[1]);
        normed = ops::rmsnorm(sum, in.size() > 2 ? in[2] : Tensor(), 1e-5f);
    }
    backward(ops::add(ops::sum(ops::mul(sum, proj_sum)), ops::sum(ops::mul(normed, proj_norm))));
    grads.clear();
    for (const auto& t : in) grads.push_back(t.grad());
    return {sum, normed};
}

TEST(OpsBasicAddRmsnorm, EqualsAddThenRmsnorm) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (bool weighted : {true, false}) {
        SCOPED_TRACE(weighted ? "weighted" : "no weight");
        const Shape shape{2, 5, 12};
        Tensor x0 = rng.normal(shape), a0 = rng.normal(shape), w0 = rng.normal({12});
        Tensor proj_sum = rng.normal(shape), proj_norm = rng.normal(shape);
        auto inputs = [&] {
            std::vector<Tensor> in{x0.clone(), a0.clone()};
            if (weighted) in.push_back(w0.clone());
            for (auto& t : in) t.set_requires_grad(true);
            return in;
        };
        std::vector<Tensor> fused_grads, plain_grads;
        const auto fused = add_rmsnorm_pattern(true, inputs(), proj_sum, proj_norm, fused_grads);
        const auto plain = add_rmsnorm_pattern(false, inputs(), proj_sum, proj_norm, plain_grads);
        for (size_t i = 0; i < 2; ++i) EXPECT_EQ(fused[i].to_vector(), plain[i].to_vector()) << (i ? "normed" : "sum");
        for (size_t i = 0; i < fused_grads.size(); ++i) {
            ASSERT_TRUE(fused_grads[i].defined()) << i;
            EXPECT_EQ(fused_grads[i].to_vector(), plain_grads[i].to_vector()) << "input " << i;
        }
    }
}

TEST(OpsBasicAddRmsnorm, GradientsByFiniteDifferences) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 6}), a = rng.normal({3, 6}), w = rng.normal({6});
    Tensor proj = rng.normal({3, 6});
    check_gradients(
        [&](const std::vector<Tensor>& in) {
            auto [sum, normed] = ops::add_rmsnorm(in[0], in[1], in[2], 1e-5f);
            return ops::add(ops::mul(sum, proj), normed);  // both outputs reach the loss
        },
        {x, a, w}, {true, true, true}, rng);
}

// bf16 activations exist only where the backend multiplies them (CUDA): the CPU says so.
TEST(OpsBasicAddRmsnorm, Bf16OutputsAndOperandsAreRefusedOnTheCpu) {
    Tensor x = Tensor::full({2, 8}, 1.0f);
    EXPECT_THROW(ops::rmsnorm(x, Tensor(), 1e-6f, DType::BF16), Error);
    EXPECT_THROW(ops::add_rmsnorm(x, x, Tensor(), 1e-6f, DType::BF16), Error);
    Tensor x16 = Tensor::zeros({2, 8}, DType::BF16);
    Tensor w = Tensor::full({8, 4}, 1.0f);
    EXPECT_THROW(ops::matmul(x16, w), Error);
    EXPECT_THROW(ops::swiglu_mlp(x16, w, w, Tensor::full({4, 8}, 1.0f)), Error);
}

TEST(OpsBasicAddRmsnorm, BadShapesThrow) {
    Tensor x = Tensor::zeros({2, 4});
    EXPECT_THROW(ops::add_rmsnorm(x, Tensor::zeros({2, 5}), Tensor(), 1e-6f), Error);   // a != x's shape
    EXPECT_THROW(ops::add_rmsnorm(x, Tensor::zeros({2, 4}), Tensor::zeros({5}), 1e-6f), Error);  // weight != [D]
    EXPECT_THROW(ops::add_rmsnorm(x, Tensor::from_vector_i32({0, 1, 2, 3, 4, 5, 6, 7}, {2, 4}), Tensor(), 1e-6f),
                 Error);  // not float
}

// ================================================================ SwiGLU MLP fused

// swiglu_mlp against linear(swiglu(linear(x, w1), linear(x, w3)), w2): output and every
// gradient bit-identical on the CPU (the default backend methods compose the same kernels).
TEST(OpsBasicSwigluMlp, EqualsSeparateOps) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 5, D = 6, F = 10;
    Tensor x0 = rng.normal({B, T, D}), w1_0 = rng.normal({D, F}), w3_0 = rng.normal({D, F}), w2_0 = rng.normal({F, D});
    expect_same_bits([](const std::vector<Tensor>& in) { return ops::swiglu_mlp(in[0], in[1], in[2], in[3]); },
                     [](const std::vector<Tensor>& in) {
                         return ops::linear(ops::swiglu(ops::linear(in[0], in[1]), ops::linear(in[0], in[2])), in[3]);
                     },
                     {x0, w1_0, w3_0, w2_0}, rng.normal({B, T, D}), {"x", "w1", "w3", "w2"});
}

// With a residual: residual + the MLP, against add(residual, swiglu_mlp(...)): output and
// every gradient bit-identical, for a separate residual and for x itself as the residual
// (its two gradients then meet in one buffer).
TEST(OpsBasicSwigluMlp, ResidualEqualsAdd) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t B = 2, T = 5, D = 6, F = 10;
    Tensor x0 = rng.normal({B, T, D}), r0 = rng.normal({B, T, D}), w1_0 = rng.normal({D, F});
    Tensor w3_0 = rng.normal({D, F}), w2_0 = rng.normal({F, D}), projection = rng.normal({B, T, D});
    for (bool x_is_residual : {false, true}) {
        SCOPED_TRACE(x_is_residual ? "x is the residual" : "a residual of its own");
        const size_t r = x_is_residual ? 0 : 4;
        expect_same_bits([r](const std::vector<Tensor>& in) { return ops::swiglu_mlp(in[0], in[1], in[2], in[3], in[r]); },
                         [r](const std::vector<Tensor>& in) {
                             return ops::add(in[r], ops::swiglu_mlp(in[0], in[1], in[2], in[3]));
                         },
                         {x0, w1_0, w3_0, w2_0, r0}, projection, {"x", "w1", "w3", "w2", "residual"});
    }
    EXPECT_THROW(ops::swiglu_mlp(x0, w1_0, w3_0, w2_0, Tensor::zeros({B, T, D + 1})), Error);  // residual != x's shape
}

TEST(OpsBasicSwigluMlp, GradientsByFiniteDifferences) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 4}), w1 = rng.normal({4, 5}), w3 = rng.normal({4, 5}), w2 = rng.normal({5, 4});
    check_gradients([](const std::vector<Tensor>& in) { return ops::swiglu_mlp(in[0], in[1], in[2], in[3]); },
                    {x, w1, w3, w2}, {true, true, true, true}, rng);
}

TEST(OpsBasicSwigluMlp, BadShapesThrow) {
    Tensor x = Tensor::zeros({2, 4}), w1 = Tensor::zeros({4, 5}), w2 = Tensor::zeros({5, 4});
    EXPECT_THROW(ops::swiglu_mlp(x, Tensor::zeros({3, 5}), w1, w2), Error);  // w1 rows != D
    EXPECT_THROW(ops::swiglu_mlp(x, w1, Tensor::zeros({4, 6}), w2), Error);  // w3 != w1's shape
    EXPECT_THROW(ops::swiglu_mlp(x, w1, w1, Tensor::zeros({5, 3})), Error);  // w2 != [F, D]
}

// ================================================================ head + loss fused

// loss and gradients of linear_cross_entropy against matmul then cross_entropy, for an
// untied head [D, V] and a tied one (the embedding [V, D], transposed): bit-identical on the
// CPU (same kernels in the same order). x is also used by a second product, so its
// gradient is accumulated into (the path where the op adds into an owned buffer).
TEST(OpsBasicLinearCrossEntropy, EqualsMatmulThenCrossEntropy) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t N = 9, D = 6, V = 11;
    for (bool tied : {false, true}) {
        SCOPED_TRACE(tied ? "tied (weight [V, D] transposed)" : "untied (weight [D, V])");
        Tensor x0 = rng.normal({N, D}), w0 = tied ? rng.normal({V, D}) : rng.normal({D, V}), side = rng.normal({D, 3});
        Tensor targets = random_ids(rng, {N}, V);
        targets.data<int32_t>()[3] = -1;
        Tensor mask = rng.uniform({N}, 0.1f, 2.0f);
        auto run = [&](bool fused, Tensor& gx, Tensor& gw) {
            Tensor x = x0.clone(), w = w0.clone();
            x.set_requires_grad(true);
            w.set_requires_grad(true);
            Tensor other = ops::sum(ops::matmul(x, side));  // x feeds a second product
            Tensor loss = fused ? ops::linear_cross_entropy(x, w, tied, targets, mask)
                                : ops::cross_entropy(ops::matmul(x, w, false, tied), targets, mask);
            const float value = loss.item();
            backward(ops::add(loss, ops::scale(other, 0.25f)));
            gx = x.grad();
            gw = w.grad();
            return value;
        };
        Tensor gx_fused, gw_fused, gx_plain, gw_plain;
        const float fused = run(true, gx_fused, gw_fused), plain = run(false, gx_plain, gw_plain);
        EXPECT_EQ(fused, plain);
        EXPECT_EQ(gx_fused.to_vector(), gx_plain.to_vector());
        EXPECT_EQ(gw_fused.to_vector(), gw_plain.to_vector());
    }
}

TEST(OpsBasicLinearCrossEntropy, GradientsByFiniteDifferences) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t N = 5, D = 4, V = 7;
    Tensor x = rng.normal({N, D}), w = rng.normal({D, V}), wt = rng.normal({V, D});
    Tensor targets = random_ids(rng, {N}, V);
    targets.data<int32_t>()[1] = -1;
    Tensor mask = rng.uniform({N}, 0.1f, 2.0f);
    check_gradients([](const std::vector<Tensor>& in) { return ops::linear_cross_entropy(in[0], in[1], false, in[2], in[3]); },
                    {x, w, targets, mask}, {true, true, false, false}, rng);
    check_gradients([](const std::vector<Tensor>& in) { return ops::linear_cross_entropy(in[0], in[1], true, in[2]); },
                    {x, wt, targets}, {true, true, false}, rng);
}

TEST(OpsBasicLinearCrossEntropy, BadShapesThrow) {
    Tensor x = Tensor::zeros({2, 3}), w = Tensor::zeros({3, 4}), targets = Tensor::from_vector_i32({0, 1}, {2});
    EXPECT_THROW(ops::linear_cross_entropy(x, Tensor::zeros({5, 4}), false, targets), Error);  // D mismatch
    EXPECT_THROW(ops::linear_cross_entropy(x, w, true, targets), Error);                       // [V, D] expected
    EXPECT_THROW(ops::linear_cross_entropy(Tensor::zeros({2, 1, 3}), w, false, targets), Error);
    EXPECT_THROW(ops::linear_cross_entropy(x, w, false, Tensor::from_vector_i32({0}, {1})), Error);
    EXPECT_THROW(ops::linear_cross_entropy(x, w, false, Tensor::from_vector_i32({0, 4}, {2})), Error);  // target >= V
}

// ======================================================================= AdamW

TEST(OpsBasicAdamW, TwoStepsMatchFormula) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const Shape shape{3, 5, 7};
    Tensor param = rng.normal(shape), g1 = rng.normal(shape), g2 = rng.normal(shape, 0.3f);
    Tensor m = Tensor::zeros(shape), v = Tensor::zeros(shape);
    const float lr = 0.01f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    std::vector<double> p = to_double(param.to_vector()), mm(p.size(), 0.0), vv(p.size(), 0.0);
    const std::vector<float> grads[2] = {g1.to_vector(), g2.to_vector()};
    for (int64_t step = 1; step <= 2; ++step) {
        cpu().adamw_step(param, step == 1 ? g1 : g2, m, v, lr, b1, b2, eps, wd, step);
        const std::vector<float>& g = grads[step - 1];
        for (size_t i = 0; i < p.size(); ++i) {
            mm[i] = double(b1) * mm[i] + (1 - double(b1)) * g[i];
            vv[i] = double(b2) * vv[i] + (1 - double(b2)) * double(g[i]) * g[i];
            const double mhat = mm[i] / (1 - std::pow(double(b1), double(step)));
            const double vhat = vv[i] / (1 - std::pow(double(b2), double(step)));
            p[i] -= double(lr) * (mhat / (std::sqrt(vhat) + double(eps)) + double(wd) * p[i]);
        }
        SCOPED_TRACE("step " + std::to_string(step));
        expect_close(m.to_vector(), mm, 1e-6, 1e-5, "adamw m");
        expect_close(v.to_vector(), vv, 1e-7, 1e-5, "adamw v");
        expect_close(param.to_vector(), p, 1e-6, 1e-5, "adamw param");
    }
    EXPECT_THROW(cpu().adamw_step(param, g1, m, v, lr, b1, b2, eps, wd, 0), Error);
}

}  // namespace
}  // namespace hsa
