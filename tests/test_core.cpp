// Tests of the foundation pieces: Tensor (shapes, views, copies, dtype conversions),
// the autograd tape, the counter-based RNG (including the Random123 known answers for
// Philox4x32-10), the strict JSON parser/writer, model/full configuration validation and
// overrides, and the caching CUDA allocator (skipped without a GPU).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/cuda_allocator.h"
#include "core/json.h"
#include "core/model/config.h"
#include "core/ops.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "tests/op_test_harness.h"
#include "trainers/trainer.h"

namespace hsa {
namespace {

using test::test_rng;

float float_from_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint32_t bits_of(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return bits;
}

// Runs f, expects an hsa::Error (or subclass) and returns its message.
template <class E = Error>
std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "expected a different exception type, got: " << e.what();
        return "";
    }
    ADD_FAILURE() << "expected an exception, none was thrown";
    return "";
}

// Evaluates haystack once (it is often a call that must throw).
#define EXPECT_CONTAINS(haystack, needle)                                                  \
    do {                                                                                   \
        const std::string hsa_haystack_ = (haystack);                                      \
        EXPECT_NE(hsa_haystack_.find(needle), std::string::npos)                           \
            << "expected \"" << (needle) << "\" in: " << hsa_haystack_;                    \
    } while (0)

// ============================================================================ Tensor

TEST(CoreTensor, ShapesStridesNumel) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int trial = 0; trial < 20; ++trial) {
        const int nd = static_cast<int>(rng.next_int(1, 5));
        Shape shape;
        for (int d = 0; d < nd; ++d) shape.push_back(rng.next_int(1, 7));
        Tensor t = Tensor::zeros(shape);
        EXPECT_EQ(t.shape(), shape);
        EXPECT_EQ(t.ndim(), nd);
        int64_t n = 1;
        for (int64_t s : shape) n *= s;
        EXPECT_EQ(t.numel(), n);
        EXPECT_EQ(t.nbytes(), static_cast<size_t>(n) * 4);
        // Row-major strides: the last dim is contiguous, each stride the product of the dims after it.
        Shape want(nd);
        int64_t stride = 1;
        for (int d = nd - 1; d >= 0; --d) {
            want[d] = stride;
            stride *= shape[d];
        }
        EXPECT_EQ(t.strides(), want);
        EXPECT_TRUE(t.is_contiguous());
        for (int d = 0; d < nd; ++d) {
            EXPECT_EQ(t.size(d), shape[d]);
            EXPECT_EQ(t.size(d - nd), shape[d]);  // negative dims count from the end
        }
        EXPECT_THROW(t.size(nd), Error);
        EXPECT_THROW(t.size(-nd - 1), Error);
        for (float v : t.to_vector()) EXPECT_EQ(v, 0.0f);
    }
    EXPECT_EQ(Tensor::empty({3, 5}, DType::BF16).nbytes(), 30u);
    EXPECT_EQ(Tensor::empty({3, 5}, DType::I64).nbytes(), 120u);
    EXPECT_EQ(Tensor::empty({3, 5}, DType::I32).nbytes(), 60u);
    Tensor s = Tensor::scalar(2.5f);
    EXPECT_EQ(s.ndim(), 0);
    EXPECT_EQ(s.numel(), 1);
    EXPECT_EQ(s.item(), 2.5f);
    Tensor e = Tensor::zeros({0, 3});
    EXPECT_EQ(e.numel(), 0);
    EXPECT_EQ(e.to_vector().size(), 0u);
}

TEST(CoreTensor, NegativeDimensionsAreErrors) {
    EXPECT_CONTAINS(error_of([] { Tensor::empty({2, -3}); }), "negative dimension");
    EXPECT_THROW(Tensor::zeros({-1}), Error);
    EXPECT_THROW(Tensor::full({4, -2, 1}, 1.0f), Error);
    EXPECT_THROW(Tensor::empty({-5}, DType::I32), Error);
}

TEST(CoreTensor, ViewInfersMinusOneAndSharesStorage) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor t = rng.normal({2, 3, 4});
    Tensor a = t.view({-1, 4});
    EXPECT_EQ(a.shape(), (Shape{6, 4}));
    Tensor b = t.view({2, -1});
    EXPECT_EQ(b.shape(), (Shape{2, 12}));
    Tensor c = t.view({4, -1, 2});
    EXPECT_EQ(c.shape(), (Shape{4, 3, 2}));
    EXPECT_EQ(c.strides(), (Shape{6, 2, 1}));
    Tensor d = t.view({24});
    EXPECT_EQ(t.to_vector(), d.to_vector());
    // A view shares storage: a write through it is visible in the original.
    a.data<float>()[7] = 123.0f;
    EXPECT_EQ(t.to_vector()[7], 123.0f);
    EXPECT_EQ(a.raw_data(), t.raw_data());
}

TEST(CoreTensor, ViewErrors) {
    Tensor t = Tensor::zeros({2, 3, 4});
    EXPECT_CONTAINS(error_of([&] { t.view({-1, -1}); }), "more than one -1");
    EXPECT_CONTAINS(error_of([&] { t.view({5, -1}); }), "cannot infer");
    EXPECT_CONTAINS(error_of([&] { t.view({0, -1}); }), "cannot infer");
    EXPECT_CONTAINS(error_of([&] { t.view({7, 3}); }), "does not match");
    EXPECT_CONTAINS(error_of([&] { t.view({2, 3, 5}); }), "does not match");
}

// No public op makes a strided view yet, so this builds one (a transpose of a [R, C]
// tensor) by editing the view's TensorImpl directly.
Tensor transposed_view(const Tensor& t) {
    Tensor v = t.view(t.shape());
    auto* impl = const_cast<TensorImpl*>(v.id());
    impl->shape = {t.shape()[1], t.shape()[0]};
    impl->strides = {1, t.shape()[1]};
    return v;
}

TEST(CoreTensor, ContiguousCopiesStridedViews) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t R = rng.next_int(2, 6), C = rng.next_int(2, 6);
    Tensor t = rng.normal({R, C});
    // Already contiguous: the same tensor comes back (no copy).
    EXPECT_EQ(t.contiguous().id(), t.id());

    Tensor tt = transposed_view(t);
    ASSERT_FALSE(tt.is_contiguous());
    EXPECT_THROW(tt.view({-1}), Error);  // views need contiguous input
    Tensor c = tt.contiguous();
    EXPECT_TRUE(c.is_contiguous());
    EXPECT_EQ(c.shape(), (Shape{C, R}));
    EXPECT_NE(c.raw_data(), t.raw_data());
    std::vector<float> src = t.to_vector(), got = c.to_vector();
    for (int64_t i = 0; i < C; ++i)
        for (int64_t j = 0; j < R; ++j) EXPECT_EQ(got[i * R + j], src[j * C + i]) << i << "," << j;
    // to_vector and clone of the strided view read it in logical order too.
    EXPECT_EQ(tt.to_vector(), got);
    EXPECT_EQ(tt.clone().to_vector(), got);
}

TEST(CoreTensor, CloneIsIndependent) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor t = rng.normal({3, 5});
    const std::vector<float> before = t.to_vector();
    Tensor c = t.clone();
    EXPECT_NE(c.raw_data(), t.raw_data());
    EXPECT_EQ(c.shape(), t.shape());
    EXPECT_EQ(c.to_vector(), before);
    c.fill(-7.0f);
    EXPECT_EQ(t.to_vector(), before);
    t.data<float>()[0] = 42.0f;
    EXPECT_EQ(c.to_vector()[0], -7.0f);
    // Cloning a view also copies.
    Tensor v = t.view({15}).clone();
    v.data<float>()[1] = 9.0f;
    EXPECT_EQ(t.to_vector()[1], before[1]);
}

TEST(CoreTensor, Bf16RoundsToNearestEven) {
    struct Case {
        uint32_t f32;
        uint16_t bf16;
    };
    const Case cases[] = {
        {0x3f800000u, 0x3f80},  // 1.0 exact
        {0x3f807fffu, 0x3f80},  // just below half: down
        {0x3f808000u, 0x3f80},  // exact tie, even (…0) stays
        {0x3f808001u, 0x3f81},  // just above half: up
        {0x3f818000u, 0x3f82},  // exact tie, odd (…1) rounds up to even
        {0xbf818000u, 0xbf82},  // negative tie, odd
        {0xbf808000u, 0xbf80},  // negative tie, even
        {0x00008000u, 0x0000},  // subnormal tie to even (zero)
        {0x00018000u, 0x0002},  // subnormal tie, odd: up
        {0x7f7fffffu, 0x7f80},  // largest float rounds to +inf
        {0x7f800000u, 0x7f80},  // +inf
        {0xff800000u, 0xff80},  // -inf
        {0x80000000u, 0x8000},  // -0
        {0x407fffffu, 0x4080},  // carry into the exponent
    };
    std::vector<float> values;
    for (const Case& c : cases) {
        EXPECT_EQ(float_to_bf16(float_from_bits(c.f32)), c.bf16) << std::hex << "f32 0x" << c.f32;
        values.push_back(float_from_bits(c.f32));
    }
    // The same through Tensor::to(DType::BF16).
    Tensor t = Tensor::from_vector(values, {static_cast<int64_t>(values.size())}).to(DType::BF16);
    ASSERT_EQ(t.dtype(), DType::BF16);
    const uint16_t* b = t.data<uint16_t>();
    for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(b[i], cases[i].bf16) << std::hex << "f32 0x" << cases[i].f32;
    // And back: bf16 -> f32 is exact (the high half of the f32 pattern).
    std::vector<float> back = t.to(DType::F32).to_vector();
    for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(bits_of(back[i]), static_cast<uint32_t>(cases[i].bf16) << 16);
}

TEST(CoreTensor, Bf16NanStaysNanAndEveryPatternRoundTrips) {
    for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f80ffffu, 0xffc00001u}) {
        const uint16_t b = float_to_bf16(float_from_bits(nan_bits));
        EXPECT_TRUE(std::isnan(bf16_to_float(b))) << std::hex << "f32 0x" << nan_bits << " -> bf16 0x" << b;
        EXPECT_EQ(b & 0x8000, (nan_bits >> 16) & 0x8000) << "sign kept";
    }
    Tensor t = Tensor::from_vector({std::numeric_limits<float>::quiet_NaN(), 1.0f}, {2}).to(DType::BF16);
    EXPECT_TRUE(std::isnan(t.to_vector()[0]));
    EXPECT_TRUE(std::isnan(t.to(DType::F32).to_vector()[0]));
    // Every non-NaN bf16 pattern survives bf16 -> f32 -> bf16 unchanged.
    for (uint32_t p = 0; p < 65536; ++p) {
        const float f = bf16_to_float(static_cast<uint16_t>(p));
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f))));
            continue;
        }
        ASSERT_EQ(float_to_bf16(f), p) << std::hex << "bf16 0x" << p;
    }
}

TEST(CoreTensor, Bf16OfRandomValuesIsTheNearest) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    std::vector<float> x = rng.normal({4096}, 100.0f).to_vector();
    Tensor b = Tensor::from_vector(x, {4096}).to(DType::BF16);
    std::vector<float> y = b.to_vector();
    for (size_t i = 0; i < x.size(); ++i) {
        // The two bf16 neighbours of x: truncation and truncation + 1 ulp (away from zero).
        const uint32_t lo_bits = bits_of(x[i]) & 0xffff0000u;
        const float lo = float_from_bits(lo_bits), hi = float_from_bits(lo_bits + 0x10000u);
        const double dlo = std::fabs(static_cast<double>(x[i]) - lo), dhi = std::fabs(static_cast<double>(x[i]) - hi);
        const double dy = std::fabs(static_cast<double>(x[i]) - y[i]);
        ASSERT_LE(dy, std::min(dlo, dhi)) << "x = " << x[i] << " -> " << y[i];
    }
}

TEST(CoreTensor, IntegerDtypesRoundTrip) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    std::vector<int32_t> v = {0, 1, -1, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
    for (int i = 0; i < 64; ++i) v.push_back(static_cast<int32_t>(static_cast<uint32_t>(rng.next_u64())));
    const int64_t n = static_cast<int64_t>(v.size());
    Tensor a = Tensor::from_vector_i32(v, {n});
    Tensor w = a.to(DType::I64);
    ASSERT_EQ(w.dtype(), DType::I64);
    const int64_t* wp = w.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(wp[i], static_cast<int64_t>(v[i]));
    Tensor back = w.to(DType::I32);
    ASSERT_EQ(back.dtype(), DType::I32);
    EXPECT_EQ(std::memcmp(back.data<int32_t>(), v.data(), v.size() * 4), 0);
    // Same dtype: no copy.
    EXPECT_EQ(a.to(DType::I32).id(), a.id());
    // Small integers are exact in f32 and come back.
    Tensor f = Tensor::from_vector_i32({-3, 0, 7, 1 << 20}, {4}).to(DType::F32);
    EXPECT_EQ(f.to_vector(), (std::vector<float>{-3, 0, 7, 1 << 20}));
    Tensor g = f.to(DType::I64).to(DType::I32);
    EXPECT_EQ(std::vector<int32_t>(g.data<int32_t>(), g.data<int32_t>() + 4), (std::vector<int32_t>{-3, 0, 7, 1 << 20}));
    // Wrong typed access is an error.
    EXPECT_THROW(a.data<float>(), Error);
    EXPECT_THROW(w.data<int32_t>(), Error);
    EXPECT_THROW(f.data<uint16_t>(), Error);
}

TEST(CoreTensor, FillEveryDtype) {
    Tensor f = Tensor::empty({3, 4});
    f.fill(-2.25f);
    for (float x : f.to_vector()) EXPECT_EQ(x, -2.25f);
    Tensor b = Tensor::empty({5}, DType::BF16);
    b.fill(1.5f);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(b.data<uint16_t>()[i], 0x3fc0);
    Tensor i32 = Tensor::empty({6}, DType::I32);
    i32.fill(7.0f);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(i32.data<int32_t>()[i], 7);
    Tensor i64 = Tensor::empty({2, 2}, DType::I64);
    i64.fill(-3.0f);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(i64.data<int64_t>()[i], -3);
    Tensor full = Tensor::full({2, 3}, 0.75f, DType::BF16);
    EXPECT_EQ(full.dtype(), DType::BF16);
    for (float x : full.to_vector()) EXPECT_EQ(x, 0.75f);
}

TEST(CoreTensor, ItemErrors) {
    EXPECT_EQ(Tensor::full({1, 1, 1}, 3.0f).item(), 3.0f);
    EXPECT_EQ(Tensor::from_vector_i32({-9}, {1}).item(), -9.0f);
    EXPECT_CONTAINS(error_of([] { Tensor::zeros({2}).item(); }), "item()");
    EXPECT_THROW(Tensor::zeros({0}).item(), Error);
    EXPECT_THROW(Tensor::zeros({2, 3}).item(), Error);
    EXPECT_THROW(Tensor::from_vector({1, 2, 3}, {2, 2}), Error);
    EXPECT_THROW(Tensor::from_vector_i32({1, 2, 3}, {4}), Error);
}

TEST(CoreTensor, CopyFromChecksShapeAndConvertsDtype) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor src = rng.normal({4, 3});
    Tensor dst = Tensor::zeros({4, 3});
    dst.copy_from(src);
    EXPECT_EQ(dst.to_vector(), src.to_vector());
    EXPECT_THROW(Tensor::zeros({3, 4}).copy_from(src), Error);
    Tensor bf = Tensor::zeros({4, 3}, DType::BF16);
    bf.copy_from(src);
    std::vector<float> s = src.to_vector(), got = bf.to_vector();
    for (size_t i = 0; i < s.size(); ++i) EXPECT_EQ(got[i], bf16_to_float(float_to_bf16(s[i])));
}

// ============================================================================ Autograd

class CoreAutograd : public ::testing::Test {
protected:
    void SetUp() override { Tape::current().clear(); }
    void TearDown() override { Tape::current().clear(); }
};

TEST_F(CoreAutograd, TensorUsedTwiceGetsBothGradients) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 4});
    x.set_requires_grad(true);
    Tensor loss = ops::sum(ops::add(x, x));
    EXPECT_EQ(Tape::current().size(), 2u);
    backward(loss);
    EXPECT_EQ(Tape::current().size(), 0u);  // backward clears the tape
    ASSERT_TRUE(x.grad().defined());
    for (float g : x.grad().to_vector()) EXPECT_EQ(g, 2.0f);

    // d/dx sum(x * x) = 2x: both operands of mul route into the same leaf.
    x.zero_grad();
    backward(ops::sum(ops::mul(x, x)));
    std::vector<float> xv = x.to_vector(), gv = x.grad().to_vector();
    for (size_t i = 0; i < xv.size(); ++i) EXPECT_FLOAT_EQ(gv[i], 2.0f * xv[i]);
}

TEST_F(CoreAutograd, GradientsAccumulateAcrossBackwardCalls) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({5});
    Tensor c = rng.normal({5});
    x.set_requires_grad(true);
    backward(ops::sum(ops::mul(x, c)));
    std::vector<float> first = x.grad().to_vector();
    backward(ops::sum(ops::mul(x, c)));
    std::vector<float> second = x.grad().to_vector(), cv = c.to_vector();
    for (size_t i = 0; i < cv.size(); ++i) {
        EXPECT_FLOAT_EQ(first[i], cv[i]);
        EXPECT_FLOAT_EQ(second[i], 2.0f * cv[i]);  // += into the leaf, not overwritten
    }
    EXPECT_FALSE(c.grad().defined()) << "a tensor without requires_grad receives no gradient";
    x.zero_grad();
    EXPECT_FALSE(x.grad().defined());
}

// Gradients are adopted without a copy, so one buffer can be the gradient of several
// tensors (add hands its output gradient to both inputs). Accumulating into such a buffer,
// or writing it in place through writable_grad(), must never change the others.
TEST_F(CoreAutograd, SharedGradientBuffersAreNeverWrittenInPlace) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor a = rng.normal({6}), b = rng.normal({6}), c = rng.normal({6});
    a.set_requires_grad(true);
    b.set_requires_grad(true);
    const std::vector<float> cv = c.to_vector();

    // (a + b) + a: a first adopts the outer add's buffer, which the inner sum also holds,
    // then receives a second contribution; an in-place += would leave b with 2c.
    backward(ops::sum(ops::mul(ops::add(ops::add(a, b), a), c)));
    std::vector<float> ga = a.grad().to_vector(), gb = b.grad().to_vector();
    for (size_t i = 0; i < cv.size(); ++i) {
        EXPECT_EQ(ga[i], 2.0f * cv[i]);
        EXPECT_EQ(gb[i], cv[i]);
    }

    // a + b alone: both gradients are one buffer. Scaling a's in place (as clipping does)
    // goes to a private copy.
    a.zero_grad();
    b.zero_grad();
    backward(ops::sum(ops::mul(ops::add(a, b), c)));
    EXPECT_EQ(a.grad().raw_data(), b.grad().raw_data()) << "expected the copy-free adoption this test is about";
    Tensor writable = a.writable_grad();
    EXPECT_NE(writable.raw_data(), b.grad().raw_data());
    backend_for(Device::CPU).scale(writable, 0.5f, writable);
    ga = a.grad().to_vector();
    gb = b.grad().to_vector();
    for (size_t i = 0; i < cv.size(); ++i) {
        EXPECT_EQ(ga[i], 0.5f * cv[i]);
        EXPECT_EQ(gb[i], cv[i]);
    }
    // A sole owner is written in place, with no copy.
    Tensor again = b.writable_grad();
    EXPECT_EQ(again.raw_data(), b.grad().raw_data());
    Tensor leaf_without_grad = rng.normal({2});
    leaf_without_grad.set_requires_grad(true);
    for (float g : leaf_without_grad.writable_grad().to_vector()) EXPECT_EQ(g, 0.0f);
}

// Tensor::rounded_copy: a bf16 copy written with a gradient's values (rmsnorm's backward on
// CUDA), which products take instead of rounding again. It must be seen through any view over
// the whole storage and dropped by every in-place gradient write of the autograd API
// (accumulate_grad's in-place add, grad_to_accumulate_into, writable_grad): a stale copy
// would silently feed old values to the next product.
TEST_F(CoreAutograd, RoundedCopyIsDroppedByInPlaceGradientWrites) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    auto with_copy = [&] {
        Tensor g = rng.normal({4, 6});
        EXPECT_FALSE(g.rounded_copy().defined());
        EXPECT_TRUE(g.set_rounded_copy(g.to(DType::BF16)));
        return g;
    };
    Tensor g = with_copy();
    const Tensor seen = g.view({24}).rounded_copy();
    ASSERT_TRUE(seen.defined());
    EXPECT_EQ(seen.shape(), (Shape{24}));
    EXPECT_EQ(seen.to_vector(), g.to(DType::BF16).to_vector());
    EXPECT_THROW(g.set_rounded_copy(rng.normal({4, 5}).to(DType::BF16)), Error);  // element count differs
    EXPECT_THROW(g.set_rounded_copy(g), Error);                                   // not bf16

    Tensor x = rng.normal({4, 6});
    x.set_requires_grad(true);
    // writable_grad on a shared buffer writes a private copy, which holds none; the shared
    // buffer (unchanged) keeps its copy.
    x.set_grad(g);
    x.writable_grad();
    EXPECT_FALSE(x.grad().rounded_copy().defined());
    EXPECT_TRUE(g.rounded_copy().defined());
    // Sole-owner buffers are written in place: each writer drops the copy.
    x.set_grad(with_copy());
    x.writable_grad();
    EXPECT_FALSE(x.grad().rounded_copy().defined()) << "writable_grad";
    x.set_grad(with_copy());
    EXPECT_TRUE(x.grad_to_accumulate_into().defined());
    EXPECT_FALSE(x.grad().rounded_copy().defined()) << "grad_to_accumulate_into";
    x.set_grad(with_copy());
    x.accumulate_grad(rng.normal({4, 6}));
    EXPECT_FALSE(x.grad().rounded_copy().defined()) << "accumulate_grad";
}

TEST_F(CoreAutograd, NoGradGuardRecordsNothing) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({4});
    x.set_requires_grad(true);
    {
        NoGradGuard guard;
        EXPECT_FALSE(Tape::current().enabled);
        Tensor y = ops::sum(ops::mul(ops::add(x, x), x));
        EXPECT_EQ(Tape::current().size(), 0u);
        EXPECT_FALSE(y.requires_grad());
        EXPECT_THROW(backward(y), Error);
        {
            NoGradGuard nested;
        }
        EXPECT_FALSE(Tape::current().enabled) << "a nested guard restores the outer (disabled) state";
    }
    EXPECT_TRUE(Tape::current().enabled);
    Tensor z = ops::add(x, x);
    EXPECT_EQ(Tape::current().size(), 1u);
    EXPECT_TRUE(z.requires_grad());
}

TEST_F(CoreAutograd, BackwardNeedsAScalarLoss) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3, 2});
    x.set_requires_grad(true);
    Tensor y = ops::add(x, x);
    EXPECT_CONTAINS(error_of([&] { backward(y); }), "scalar");
    EXPECT_THROW(backward(Tensor()), Error);
    // A one-element loss of any rank is fine.
    Tape::current().clear();
    EXPECT_NO_THROW(backward(ops::reshape(ops::sum(ops::mul(x, x)), {1, 1})));
    std::vector<float> xv = x.to_vector(), gv = x.grad().to_vector();
    for (size_t i = 0; i < xv.size(); ++i) EXPECT_FLOAT_EQ(gv[i], 2.0f * xv[i]);
}

TEST_F(CoreAutograd, BackwardOnALossThatNeedsNoGradThrows) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor x = rng.normal({3});
    Tensor loss = ops::sum(x);
    EXPECT_EQ(Tape::current().size(), 0u);
    EXPECT_CONTAINS(error_of([&] { backward(loss); }), "requires a gradient");
}

// ============================================================================ Rng

TEST(CoreRng, Philox4x32KnownAnswers) {
    // Random123 kat_vectors, philox4x32 with 10 rounds.
    const std::array<uint32_t, 4> zero = philox4x32({0, 0, 0, 0}, {0, 0});
    EXPECT_EQ(zero, (std::array<uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}))
        << std::hex << zero[0] << " " << zero[1] << " " << zero[2] << " " << zero[3];
    const std::array<uint32_t, 4> ones =
        philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu});
    EXPECT_EQ(ones, (std::array<uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}))
        << std::hex << ones[0] << " " << ones[1] << " " << ones[2] << " " << ones[3];
}

TEST(CoreRng, SameSeedAndCounterGiveSameValues) {
    HSA_SEED_TRACE();
    Rng source = test_rng();
    const uint64_t seed = source.next_u64(), counter = source.next_u64() >> 20;
    Rng a(seed, counter), b(seed, counter);
    Tensor ta = a.normal({1001}), tb = b.normal({1001});
    EXPECT_EQ(std::memcmp(ta.raw_data(), tb.raw_data(), ta.nbytes()), 0);
    EXPECT_EQ(a.counter(), counter + (1001 + 3) / 4);
    EXPECT_EQ(a.counter(), b.counter());
    EXPECT_EQ(a.next_u64(), b.next_u64());
    EXPECT_EQ(a.next_double(), b.next_double());
    // The state is exactly (seed, counter): a generator rebuilt from it continues identically.
    Rng c(a.seed(), a.counter());
    Tensor ua = a.uniform({77}, -1.0f, 1.0f), uc = c.uniform({77}, -1.0f, 1.0f);
    EXPECT_EQ(std::memcmp(ua.raw_data(), uc.raw_data(), ua.nbytes()), 0);
    EXPECT_EQ(a.next_int(0, 1000), c.next_int(0, 1000));
}

TEST(CoreRng, FillIsIndependentOfThreadCount) {
    HSA_SEED_TRACE();
    Rng source = test_rng();
    const uint64_t seed = source.next_u64();
    const int previous = omp_get_max_threads();
    const int64_t n = 100003;  // not a multiple of 4: the tail block is partial
    omp_set_num_threads(1);
    Rng a(seed);
    Tensor na = a.normal({n}), ua = a.uniform({n}, -2.0f, 3.0f);
    omp_set_num_threads(2);
    Rng b(seed);
    Tensor nb = b.normal({n}), ub = b.uniform({n}, -2.0f, 3.0f);
    omp_set_num_threads(previous);
    EXPECT_EQ(std::memcmp(na.raw_data(), nb.raw_data(), na.nbytes()), 0);
    EXPECT_EQ(std::memcmp(ua.raw_data(), ub.raw_data(), ua.nbytes()), 0);
    EXPECT_EQ(a.counter(), b.counter());
}

TEST(CoreRng, NormalStatistics) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t n = 100000;
    auto moments = [](const std::vector<float>& v, double& mean, double& stddev) {
        double s = 0, s2 = 0;
        for (float x : v) s += x;
        mean = s / static_cast<double>(v.size());
        for (float x : v) s2 += (x - mean) * (x - mean);
        stddev = std::sqrt(s2 / static_cast<double>(v.size() - 1));
    };
    std::vector<float> v = rng.normal({n}).to_vector();
    double mean, stddev;
    moments(v, mean, stddev);
    // Standard errors: 1/sqrt(n) = 0.0032 for the mean, 1/sqrt(2n) = 0.0022 for the std.
    EXPECT_LT(std::fabs(mean), 0.02);
    EXPECT_LT(std::fabs(stddev - 1.0), 0.02);
    int64_t beyond2 = 0;
    for (float x : v) {
        ASSERT_TRUE(std::isfinite(x));
        beyond2 += std::fabs(x) > 2.0f;
    }
    // P(|x| > 2) = 0.0455; its standard error over 1e5 samples is 0.00066.
    EXPECT_NEAR(static_cast<double>(beyond2) / n, 0.0455, 0.004);

    Tensor t = Tensor::empty({n});
    rng.normal_(t, 3.0f, 0.5f);
    moments(t.to_vector(), mean, stddev);
    EXPECT_LT(std::fabs(mean - 3.0), 0.01);
    EXPECT_LT(std::fabs(stddev - 0.5), 0.01);
}

TEST(CoreRng, UniformInRange) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t n = 100000;
    std::vector<float> u = rng.uniform({n}, 0.0f, 1.0f).to_vector();
    double s = 0;
    for (float x : u) {
        ASSERT_GE(x, 0.0f);
        ASSERT_LT(x, 1.0f);
        s += x;
    }
    EXPECT_NEAR(s / n, 0.5, 0.005);  // standard error 0.0009
    const float low = static_cast<float>(rng.next_double() * 20.0 - 10.0);
    const float high = low + 0.5f + static_cast<float>(rng.next_double() * 10.0);
    std::vector<float> r = rng.uniform({n}, low, high).to_vector();
    float lo = high, hi = low;
    for (float x : r) {
        ASSERT_GE(x, low);
        ASSERT_LE(x, high);
        lo = std::min(lo, x);
        hi = std::max(hi, x);
    }
    // The samples spread over the whole range.
    EXPECT_LT(lo - low, 0.001f * (high - low));
    EXPECT_LT(high - hi, 0.001f * (high - low));
    for (int i = 0; i < 10000; ++i) {
        const double d = rng.next_double();
        ASSERT_GE(d, 0.0);
        ASSERT_LT(d, 1.0);
    }
}

TEST(CoreRng, NextIntRangeAndErrors) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int trial = 0; trial < 20; ++trial) {
        const int64_t low = rng.next_int(-1000, 1000);
        const int64_t width = rng.next_int(1, 9);
        std::set<int64_t> seen;
        for (int i = 0; i < 400; ++i) {
            const int64_t v = rng.next_int(low, low + width);
            ASSERT_GE(v, low);
            ASSERT_LT(v, low + width);
            seen.insert(v);
        }
        EXPECT_EQ(static_cast<int64_t>(seen.size()), width) << "every value of a small range appears";
    }
    EXPECT_EQ(rng.next_int(5, 6), 5);
    const int64_t big_low = -(int64_t(1) << 40), big_high = int64_t(1) << 40;
    for (int i = 0; i < 1000; ++i) {
        const int64_t v = rng.next_int(big_low, big_high);
        ASSERT_GE(v, big_low);
        ASSERT_LT(v, big_high);
    }
    EXPECT_CONTAINS(error_of([&] { rng.next_int(5, 5); }), "empty range");
    EXPECT_THROW(rng.next_int(5, 4), Error);
}

TEST(CoreRng, DifferentSeedsAndCountersDiffer) {
    HSA_SEED_TRACE();
    Rng source = test_rng();
    const uint64_t seed = source.next_u64();
    std::vector<float> a = Rng(seed).normal({256}).to_vector();
    std::vector<float> b = Rng(seed + 1).normal({256}).to_vector();
    std::vector<float> c = Rng(seed ^ (uint64_t(1) << 40)).normal({256}).to_vector();  // high half of the key
    std::vector<float> d = Rng(seed, 1).normal({256}).to_vector();
    int same_ab = 0, same_ac = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        same_ab += a[i] == b[i];
        same_ac += a[i] == c[i];
    }
    EXPECT_LE(same_ab, 2);
    EXPECT_LE(same_ac, 2);
    // Counter 1 is the stream shifted by one block of four values.
    for (size_t i = 0; i + 4 < a.size(); ++i) ASSERT_EQ(d[i], a[i + 4]);
    EXPECT_NE(Rng(seed).next_u64(), Rng(seed + 1).next_u64());
}

// ============================================================================ Json

TEST(CoreJson, ParseDumpRoundTripOfNestedValues) {
    const std::string text = R"( {
        "a": [1, 2.5, -3e-2, true, false, null, "x\"y\\z\n\t/"],
        "b": {"c": {}, "d": [], "e": [[0], {"f": -7}]},
        "s": "\u0001"
    } )";
    Json j = Json::parse(text);
    ASSERT_TRUE(j.is_object());
    const Json& a = j.at("a");
    ASSERT_TRUE(a.is_array());
    ASSERT_EQ(a.items().size(), 7u);
    EXPECT_EQ(a.items()[0].as_number(), 1.0);
    EXPECT_EQ(a.items()[1].as_number(), 2.5);
    EXPECT_DOUBLE_EQ(a.items()[2].as_number(), -0.03);
    EXPECT_TRUE(a.items()[3].is_bool() && a.items()[3].as_bool());
    EXPECT_TRUE(a.items()[4].is_bool() && !a.items()[4].as_bool());
    EXPECT_TRUE(a.items()[5].is_null());
    EXPECT_EQ(a.items()[6].as_string(), "x\"y\\z\n\t/");
    EXPECT_EQ(j.at("b").at("e").items()[1].at("f").as_number(), -7.0);
    EXPECT_EQ(j.at("s").as_string(), std::string(1, '\x01'));
    EXPECT_THROW(j.at("missing"), Error);

    const std::string compact = j.dump();
    EXPECT_EQ(compact,
              R"({"a":[1,2.5,-0.03,true,false,null,"x\"y\\z\n\t/"],"b":{"c":{},"d":[],"e":[[0],{"f":-7}]},"s":"\u0001"})");
    EXPECT_EQ(compact.find('\n'), std::string::npos);
    EXPECT_EQ(Json::parse(compact).dump(), compact);
    const std::string pretty = j.dump(2);
    EXPECT_NE(pretty.find("\n  \"a\": ["), std::string::npos) << pretty;
    EXPECT_EQ(Json::parse(pretty).dump(), compact);
}

TEST(CoreJson, BuiltValuesRoundTrip) {
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Json root = Json::object();
    Json list = Json::array();
    std::vector<float> floats;
    for (int i = 0; i < 50; ++i) {
        // f32 values survive the 9 significant digits of dump exactly.
        const float f = rng.normal({1}, 1000.0f).item() * std::pow(10.0f, static_cast<float>(rng.next_int(-6, 6)));
        floats.push_back(f);
        list.push_back(Json(static_cast<double>(f)));
    }
    root["floats"] = list;
    root["nested"]["deeper"]["flag"] = true;
    root["text"] = "tab\there";
    Json back = Json::parse(root.dump());
    ASSERT_EQ(back.at("floats").items().size(), floats.size());
    for (size_t i = 0; i < floats.size(); ++i)
        EXPECT_EQ(static_cast<float>(back.at("floats").items()[i].as_number()), floats[i]) << root.at("floats").items()[i].dump();
    EXPECT_TRUE(back.at("nested").at("deeper").at("flag").as_bool());
    EXPECT_EQ(back.at("text").as_string(), "tab\there");
    EXPECT_EQ(back.dump(), root.dump());
    EXPECT_EQ(Json(std::nan("")).dump(), "null");  // JSON has no NaN
}

TEST(CoreJson, DumpsIntegersWithoutDecimals) {
    EXPECT_EQ(Json(0).dump(), "0");
    EXPECT_EQ(Json(-5).dump(), "-5");
    EXPECT_EQ(Json(3.0).dump(), "3");
    EXPECT_EQ(Json(int64_t(123456789012)).dump(), "123456789012");
    EXPECT_EQ(Json(int64_t(-999999999999999)).dump(), "-999999999999999");
    EXPECT_EQ(Json(1e6).dump(), "1000000");
    EXPECT_EQ(Json(0.5).dump(), "0.5");
    EXPECT_EQ(Json(1e-3).dump(), "0.001");
    EXPECT_EQ(Json::parse("[4096]").dump(), "[4096]");
}

// Config integers are accepted up to 9e15 (ConfigReader); they must survive a dump (the
// resolved config of --print-config, checkpoints) exactly.
TEST(CoreJson, DumpsLargeConfigIntegersExactly) {
    for (int64_t v : {int64_t(1000000000000001), int64_t(1) << 52, int64_t(9000000000000000), -(int64_t(1) << 50)}) {
        const std::string text = Json(v).dump();
        EXPECT_EQ(text, std::to_string(v));
        EXPECT_EQ(static_cast<int64_t>(Json::parse(text).as_number()), v) << text;
    }
}

TEST(CoreJson, UnicodeEscapes) {
    EXPECT_EQ(Json::parse(R"("\u0041")").as_string(), "A");
    EXPECT_EQ(Json::parse(R"("\u00e9")").as_string(), "\xc3\xa9");
    EXPECT_EQ(Json::parse(R"("\u20AC")").as_string(), "\xe2\x82\xac");
    EXPECT_EQ(Json::parse(R"("\ud83d\ude00")").as_string(), "\xf0\x9f\x98\x80");  // U+1F600 as a surrogate pair
    EXPECT_EQ(Json::parse(R"("\uD834\uDD1E!")").as_string(), "\xf0\x9d\x84\x9e!");  // U+1D11E
    EXPECT_EQ(Json::parse(R"("\udbff\udfff")").as_string(), "\xf4\x8f\xbf\xbf");   // U+10FFFF
    EXPECT_EQ(Json::parse("\"caf\xc3\xa9\"").as_string(), "caf\xc3\xa9");           // raw UTF-8 passes through
    // Non-ASCII text survives dump + parse.
    const std::string s = "\xf0\x9f\x98\x80 \xe2\x82\xac \xc3\xa9";
    EXPECT_EQ(Json::parse(Json(s).dump()).as_string(), s);
    EXPECT_CONTAINS(error_of([] { Json::parse(R"("\ud83d")"); }), "surrogate");
    EXPECT_CONTAINS(error_of([] { Json::parse(R"("\ud83dx")"); }), "surrogate");
    EXPECT_CONTAINS(error_of([] { Json::parse(R"("\ud83d\u0041")"); }), "surrogate");
    EXPECT_CONTAINS(error_of([] { Json::parse(R"("\u12G4")"); }), "hex");
    EXPECT_CONTAINS(error_of([] { Json::parse(R"("\u12")"); }), "line 1");
    EXPECT_CONTAINS(error_of([] { Json::parse(R"("\q")"); }), "unknown escape");
}

TEST(CoreJson, ErrorsNameLineAndColumn) {
    struct Case {
        const char* text;
        const char* where;
        const char* what;
    };
    const Case cases[] = {
        // trailing comma in an object: the '}' on line 3 where a field name was expected
        {"{\n  \"a\": 1,\n}", "cfg.json: line 3 column 1:", "expected a field name"},
        // trailing comma in an array
        {"[1, 2,]", "cfg.json: line 1 column 7:", "unexpected character ']'"},
        // missing closing quote: the string runs to the end of the input
        {"{\"a\": \"abc}", "cfg.json: line 1 column 12:", "unterminated string"},
        // missing opening quote of a field name
        {"{\n  a: 1}", "cfg.json: line 2 column 3:", "expected a field name"},
        // duplicate key: reported right after the second key
        {"{\"a\": 1,\n \"a\": 2}", "cfg.json: line 2 column 5:", "duplicate field \"a\""},
        // garbage after the value
        {"{\"a\": 1} x", "cfg.json: line 1 column 10:", "unexpected text after the JSON value"},
        {"1 2", "cfg.json: line 1 column 3:", "unexpected text after the JSON value"},
        // bad numbers
        {"[1.]", "cfg.json: line 1 column 4:", "malformed number"},
        {"\n\n  -x", "cfg.json: line 3 column 4:", "malformed number"},
        {"1e+", "cfg.json: line 1 column 4:", "malformed number"},
        {"[01]", "cfg.json: line 1 column 3:", "expected ',' or ']'"},
        {"+1", "cfg.json: line 1 column 1:", "unexpected character '+'"},
        // others
        {"", "cfg.json: line 1 column 1:", "unexpected end of input"},
        {"{\"a\" 1}", "cfg.json: line 1 column 6:", "expected ':'"},
        {"[1 2]", "cfg.json: line 1 column 4:", "expected ',' or ']'"},
        {"// c\n{}", "cfg.json: line 1 column 1:", "unexpected character '/'"},
        {"\"a\nb\"", "cfg.json: line", "control character"},
        {"tru", "cfg.json: line 1 column 1:", "unexpected character 't'"},
    };
    for (const Case& c : cases) {
        const std::string message = error_of([&] { Json::parse(c.text, "cfg.json"); });
        EXPECT_EQ(message.rfind(c.where, 0), 0u) << "input: " << c.text << "\nmessage: " << message;
        EXPECT_CONTAINS(message, c.what);
        EXPECT_EQ(message.find('\n'), std::string::npos) << "one line";
    }
}

// ============================================================================ Configs

// {"model": ..., "train": ..., "task": ...}: the default config of `hsa train` with one
// field set by `--set`-style assignment.
Json config_with(std::initializer_list<const char*> assignments) {
    Json root = default_train_config();
    for (const char* a : assignments) apply_override(root, a);
    return root;
}

std::string config_error(std::initializer_list<const char*> assignments) {
    Json root = config_with(assignments);
    return error_of<ConfigError>([&] { FullConfig::from_json(root); });
}

std::string config_error(const Json& root) {
    return error_of<ConfigError>([&] { FullConfig::from_json(root); });
}

TEST(CoreConfig, DefaultsAreValid) {
    ModelConfig m;
    EXPECT_NO_THROW(m.validate());
    ModelConfig parsed = ModelConfig::from_json(Json::object());
    EXPECT_EQ(parsed.to_json().dump(), m.to_json().dump());
    EXPECT_EQ(parsed.hidden, 64);
    EXPECT_EQ(parsed.residual, ResidualMode::Brp);
    EXPECT_EQ(parsed.mlp_size(), 128);
    parsed.mlp_hidden = 0;  // automatic F: 8/3 * 64 = 170 -> 192
    EXPECT_EQ(parsed.mlp_size(), 192);
    // The small default of `hsa train` is valid, and to_json -> from_json is the identity.
    FullConfig full = FullConfig::from_json(default_train_config());
    EXPECT_EQ(full.model.hidden, 64);
    EXPECT_EQ(full.train.steps, 300);
    EXPECT_EQ(full.task.values, 8);
    EXPECT_EQ(ModelConfig::from_json(full.model.to_json()).to_json().dump(), full.model.to_json().dump());
    EXPECT_EQ(TrainConfig{}.device, "cpu");
}

// "Every field has a default" (hsa train --help): a config file that sets nothing must be
// usable, which needs the defaults of all three sections to be consistent.
TEST(CoreConfig, EmptyConfigUsesConsistentDefaults) {
    EXPECT_NO_THROW(FullConfig::from_json(Json::object())) << config_error(Json::object());
    EXPECT_NO_THROW(FullConfig::from_json(Json::parse(R"({"model": {}, "train": {}, "task": {}})")));
}

TEST(CoreConfig, UnknownFieldsAndSections) {
    std::string m = config_error({"model.hiden=64"});
    EXPECT_CONTAINS(m, "model");
    EXPECT_CONTAINS(m, "unknown field \"hiden\"");
    EXPECT_CONTAINS(m, "hidden");  // the known fields are listed
    EXPECT_CONTAINS(config_error({"train.step=3"}), "unknown field \"step\"");
    EXPECT_CONTAINS(config_error({"train.step=3"}), "config train");
    EXPECT_CONTAINS(config_error({"task.pair=1"}), "unknown field \"pair\"");
    EXPECT_CONTAINS(config_error({"task.pair=1"}), "config task");
    std::string s = config_error({"modle.hidden=64"});
    EXPECT_CONTAINS(s, "unknown section \"modle\"");
    EXPECT_CONTAINS(config_error(Json::parse("[1]")), "expected a JSON object");
    EXPECT_CONTAINS(config_error(Json::parse(R"({"model": 3})")), "config model: expected an object");
}

TEST(CoreConfig, WrongTypes) {
    std::string m = config_error({"model.hidden=\"64\""});
    EXPECT_CONTAINS(m, "model.hidden");
    EXPECT_CONTAINS(m, "expected an integer, got string");
    m = config_error({"model.hidden=64.5"});
    EXPECT_CONTAINS(m, "model.hidden");
    EXPECT_CONTAINS(m, "64.5");
    m = config_error({"train.steps=1e20"});
    EXPECT_CONTAINS(m, "train.steps");
    m = config_error({"model.cls=1"});
    EXPECT_CONTAINS(m, "model.cls");
    EXPECT_CONTAINS(m, "expected true or false");
    m = config_error({"model.qk_norm=\"yes\""});
    EXPECT_CONTAINS(m, "model.qk_norm");
    m = config_error({"train.lr=fast"});
    EXPECT_CONTAINS(m, "train.lr");
    EXPECT_CONTAINS(m, "expected a number");
    m = config_error({"model.residual=3"});
    EXPECT_CONTAINS(m, "model.residual");
    EXPECT_CONTAINS(m, "expected a string");
    m = config_error({"task.keys=true"});
    EXPECT_CONTAINS(m, "task.keys");
    m = config_error({"model.hidden=null"});
    EXPECT_CONTAINS(m, "model.hidden");
}

TEST(CoreConfig, ShapeConstraints) {
    EXPECT_CONTAINS(config_error({"model.heads=3"}), "model.hidden");  // 64 % 3
    EXPECT_CONTAINS(config_error({"model.heads=3"}), "divisible by heads");
    EXPECT_CONTAINS(config_error({"model.kv_heads=3"}), "model.heads");  // 4 % 3
    EXPECT_CONTAINS(config_error({"model.kv_heads=3"}), "divisible by kv_heads");
    EXPECT_CONTAINS(config_error({"model.chunk_size=0"}), "model.chunk_size");
    EXPECT_CONTAINS(config_error({"model.topk=0"}), "model.topk");
    EXPECT_CONTAINS(config_error({"model.window=0"}), "model.window");
    EXPECT_CONTAINS(config_error({"model.hidden=-64"}), "model.hidden");
    EXPECT_CONTAINS(config_error({"model.hidden=68", "model.heads=4"}), "even for RoPE");  // head dim 17
    // retrieval_heads must be 1 or kv_heads.
    EXPECT_CONTAINS(config_error({"model.retrieval_heads=2"}), "model.retrieval_heads");
    EXPECT_CONTAINS(config_error({"model.kv_heads=2", "model.retrieval_heads=4"}), "model.retrieval_heads");
    EXPECT_NO_THROW(FullConfig::from_json(config_with({"model.kv_heads=2", "model.retrieval_heads=2"})));
    EXPECT_NO_THROW(FullConfig::from_json(config_with({"model.kv_heads=2", "model.retrieval_heads=1"})));
    // No encoder needs the mean landmark.
    std::string m = config_error({"model.encoder_layers=0"});
    EXPECT_CONTAINS(m, "model.cls");
    EXPECT_CONTAINS(m, "encoder_layers = 0");
    EXPECT_NO_THROW(FullConfig::from_json(config_with({"model.encoder_layers=0", "model.cls=false"})));
}

TEST(CoreConfig, TrainTopkAndSwitchStrings) {
    FullConfig all = FullConfig::from_json(config_with({"model.train_topk=all"}));
    EXPECT_EQ(all.model.train_topk, -1);
    EXPECT_EQ(all.model.selection_k(true, 7), 7);
    EXPECT_EQ(all.model.selection_k(false, 7), all.model.topk);
    EXPECT_EQ(all.model.to_json().at("train_topk").as_string(), "all");
    FullConfig three = FullConfig::from_json(config_with({"model.train_topk=3"}));
    EXPECT_EQ(three.model.train_topk, 3);
    EXPECT_EQ(three.model.selection_k(true, 7), 3);
    EXPECT_CONTAINS(config_error({"model.train_topk=some"}), "model.train_topk");
    EXPECT_CONTAINS(config_error({"model.train_topk=0"}), "model.train_topk");
    EXPECT_CONTAINS(config_error({"model.train_topk=2.5"}), "model.train_topk");

    FullConfig standard = FullConfig::from_json(config_with({"model.residual=standard", "model.weights=stickbreak"}));
    EXPECT_EQ(standard.model.residual, ResidualMode::Standard);
    EXPECT_TRUE(standard.model.stickbreak);
    std::string r = config_error({"model.residual=brpp"});
    EXPECT_CONTAINS(r, "model.residual");
    EXPECT_CONTAINS(r, "brpp");
    std::string w = config_error({"model.weights=sigmoid"});
    EXPECT_CONTAINS(w, "model.weights");
    EXPECT_CONTAINS(w, "sigmoid");
    EXPECT_CONTAINS(config_error({"train.device=tpu"}), "train.device");
    if (!cuda_available()) EXPECT_CONTAINS(config_error({"train.device=cuda"}), "no GPU");
}

TEST(CoreConfig, ApplyOverride) {
    Json root = Json::object();
    apply_override(root, "model.hidden=128");
    apply_override(root, "model.cls=false");
    apply_override(root, "model.residual=standard");       // bare word: a string
    apply_override(root, "model.weights=\"stickbreak\"");  // quoted JSON string
    apply_override(root, "train.lr=1e-3");
    apply_override(root, "train.steps=-4");
    apply_override(root, "task.name=a=b");  // only the first '=' splits
    apply_override(root, "task.list=[1, 2]");
    EXPECT_TRUE(root.at("model").at("hidden").is_number());
    EXPECT_EQ(root.at("model").at("hidden").as_number(), 128.0);
    EXPECT_TRUE(root.at("model").at("cls").is_bool());
    EXPECT_FALSE(root.at("model").at("cls").as_bool());
    EXPECT_EQ(root.at("model").at("residual").as_string(), "standard");
    EXPECT_EQ(root.at("model").at("weights").as_string(), "stickbreak");
    EXPECT_DOUBLE_EQ(root.at("train").at("lr").as_number(), 1e-3);
    EXPECT_EQ(root.at("train").at("steps").as_number(), -4.0);
    EXPECT_EQ(root.at("task").at("name").as_string(), "a=b");
    EXPECT_TRUE(root.at("task").at("list").is_array());
    // A later override of the same field wins.
    apply_override(root, "model.hidden=96");
    EXPECT_EQ(root.at("model").at("hidden").as_number(), 96.0);
    // A section that is not an object is replaced.
    Json odd = Json::parse(R"({"model": 5})");
    apply_override(odd, "model.heads=2");
    EXPECT_EQ(odd.at("model").at("heads").as_number(), 2.0);

    for (const char* bad : {"model.hidden", "=5", "hidden=5", ".hidden=5", "model.=5", "", "model"}) {
        Json r = Json::object();
        EXPECT_CONTAINS(error_of<ConfigError>([&] { apply_override(r, bad); }), "section.key=value");
    }
}

// ============================================================================ CUDA allocator

TEST(CoreCudaAllocator, CachesBlocksAndRoundTripsTensors) {
    if (!cuda_available()) GTEST_SKIP() << "no GPU: cuda_available() is false (CPU backend only)";
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    // Start from an empty cache so that the block freed below is the only one of its class.
    cuda_allocator_release_cached();
    const size_t bytes = (size_t(3) << 20) + 4096 * static_cast<size_t>(rng.next_int(1, 64));
    const CudaAllocatorStats s0 = cuda_allocator_stats();
    void* p = cuda_allocator_malloc(bytes);
    ASSERT_NE(p, nullptr);
    const CudaAllocatorStats s1 = cuda_allocator_stats();
    EXPECT_EQ(s1.cuda_malloc_calls, s0.cuda_malloc_calls + 1) << "the cache was empty";
    EXPECT_GE(s1.bytes_in_use, s0.bytes_in_use + bytes);
    EXPECT_GE(s1.bytes_reserved, s1.bytes_in_use);
    EXPECT_GE(s1.peak_bytes_in_use, s1.bytes_in_use);
    cuda_allocator_free(p);
    const CudaAllocatorStats s2 = cuda_allocator_stats();
    EXPECT_EQ(s2.bytes_in_use, s0.bytes_in_use);
    EXPECT_EQ(s2.bytes_reserved, s1.bytes_reserved) << "a freed block stays cached";
    void* q = cuda_allocator_malloc(bytes);
    const CudaAllocatorStats s3 = cuda_allocator_stats();
    EXPECT_EQ(q, p) << "the cached block is handed out again";
    EXPECT_EQ(s3.cache_hits, s2.cache_hits + 1);
    EXPECT_EQ(s3.cuda_malloc_calls, s2.cuda_malloc_calls);
    EXPECT_EQ(s3.bytes_in_use, s1.bytes_in_use);
    cuda_allocator_free(q);
    EXPECT_EQ(cuda_allocator_stats().bytes_in_use, s0.bytes_in_use);

    // Peak tracking.
    cuda_allocator_reset_peak();
    const size_t base = cuda_allocator_stats().bytes_in_use;
    EXPECT_EQ(cuda_allocator_stats().peak_bytes_in_use, base);
    void* big = cuda_allocator_malloc(size_t(8) << 20);
    void* small = cuda_allocator_malloc(1000);
    const size_t high = cuda_allocator_stats().bytes_in_use;
    EXPECT_GE(high, base + (size_t(8) << 20) + 1000);
    cuda_allocator_free(big);
    cuda_allocator_free(small);
    EXPECT_EQ(cuda_allocator_stats().peak_bytes_in_use, high);
    EXPECT_EQ(cuda_allocator_stats().bytes_in_use, base);
    cuda_allocator_release_cached();
    EXPECT_EQ(cuda_allocator_stats().bytes_reserved, cuda_allocator_stats().bytes_in_use);

    // Tensors: CPU -> CUDA -> CPU is bit-exact, for every dtype.
    Tensor host = rng.normal({37, 53});
    Tensor dev = host.to(Device::CUDA);
    EXPECT_EQ(dev.device(), Device::CUDA);
    EXPECT_EQ(dev.shape(), host.shape());
    Tensor again = dev.to(Device::CPU);
    EXPECT_EQ(again.device(), Device::CPU);
    EXPECT_EQ(std::memcmp(again.raw_data(), host.raw_data(), host.nbytes()), 0);
    Tensor bf = host.to(DType::BF16);
    Tensor bf_back = bf.to(Device::CUDA).clone().to(Device::CPU);
    EXPECT_EQ(std::memcmp(bf_back.raw_data(), bf.raw_data(), bf.nbytes()), 0);
    Tensor z = Tensor::zeros({5, 7}, DType::I64, Device::CUDA);
    for (float v : z.to_vector()) EXPECT_EQ(v, 0.0f);
    Tensor f = Tensor::full({9}, -1.5f, DType::F32, Device::CUDA);
    for (float v : f.to_vector()) EXPECT_EQ(v, -1.5f);
}

}  // namespace
}  // namespace hsa
