// One harness for every op test (after ggml's test-backend-ops): fresh random inputs each
// run (the seed is printed so a failure can be replayed with HSA_TEST_SEED=<seed>), and a
// finite-difference gradient check driven by a single function per op.
//
// Gradient check: loss = sum(f(inputs) * P) for a fixed random projection P; the analytic
// gradient from the tape is compared, element by element, with the central difference
// (loss(x + eps) - loss(x - eps)) / (2 eps) evaluated in double over f32 outputs.
// Tolerance: with f32 outputs the rounding noise of the difference quotient is about
// 1e-7 * |loss| / eps, and the truncation error is O(eps^2); eps = 1e-2 (smooth ops at
// O(1) inputs) keeps both near 1e-4, so |analytic - numeric| <= atol + rtol * |numeric|
// with atol = 2e-3, rtol = 2e-2 separates real mistakes (errors of O(1)) from noise.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace hsa::test {

// A fresh seed per process unless HSA_TEST_SEED pins one.
inline uint64_t test_seed() {
    static uint64_t seed = [] {
        if (const char* pinned = std::getenv("HSA_TEST_SEED")) return static_cast<uint64_t>(std::strtoull(pinned, nullptr, 10));
        std::random_device device;
        return (static_cast<uint64_t>(device()) << 32) ^ device();
    }();
    return seed;
}

// A generator per test, derived from the process seed and the test's name.
inline Rng test_rng() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "none";
    uint64_t h = test_seed();
    for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
    return Rng(h);
}

#define HSA_SEED_TRACE() SCOPED_TRACE("random inputs from HSA_TEST_SEED=" + std::to_string(::hsa::test::test_seed()))

struct GradCheckOptions {
    float eps = 1e-2f;
    float atol = 2e-3f;
    float rtol = 2e-2f;
    int64_t max_elements_per_input = 48;  // elements differenced per input (sampled at random)
};

using OpFunction = std::function<Tensor(const std::vector<Tensor>&)>;

inline double projected_loss(const Tensor& out, const std::vector<float>& projection) {
    std::vector<float> values = out.to_vector();
    double total = 0;
    for (size_t i = 0; i < values.size(); ++i) total += static_cast<double>(values[i]) * projection[i];
    return total;
}

// differentiable[i] says whether inputs[i] gets a gradient check (integer inputs never do).
inline void check_gradients(const OpFunction& f, std::vector<Tensor> inputs, const std::vector<bool>& differentiable,
                            Rng& rng, const GradCheckOptions& options = {}) {
    ASSERT_EQ(inputs.size(), differentiable.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
        if (!inputs[i].defined()) continue;
        inputs[i] = inputs[i].clone();
        inputs[i].set_requires_grad(differentiable[i]);
    }
    Tensor out = f(inputs);
    std::vector<float> projection = rng.normal(out.shape()).to_vector();
    Tensor loss = ops::sum(ops::mul(out, Tensor::from_vector(projection, out.shape())));
    backward(loss);

    NoGradGuard no_grad;
    for (size_t i = 0; i < inputs.size(); ++i) {
        if (!differentiable[i] || !inputs[i].defined()) continue;
        Tensor& x = inputs[i];
        ASSERT_TRUE(x.grad().defined()) << "input " << i << " received no gradient";
        std::vector<float> analytic = x.grad().to_vector();
        const int64_t n = x.numel();
        std::vector<int64_t> elements;
        if (n <= options.max_elements_per_input) {
            for (int64_t j = 0; j < n; ++j) elements.push_back(j);
        } else {
            for (int64_t j = 0; j < options.max_elements_per_input; ++j) elements.push_back(rng.next_int(0, n));
        }
        float* data = x.data<float>();
        int failures = 0;
        for (int64_t j : elements) {
            const float original = data[j];
            data[j] = original + options.eps;
            double plus = projected_loss(f(inputs), projection);
            data[j] = original - options.eps;
            double minus = projected_loss(f(inputs), projection);
            data[j] = original;
            double numeric = (plus - minus) / (2.0 * options.eps);
            double error = std::fabs(analytic[j] - numeric);
            double allowed = options.atol + options.rtol * std::fabs(numeric);
            if (error > allowed && failures++ < 5) {
                ADD_FAILURE() << "input " << i << " element " << j << ": analytic " << analytic[j] << " vs numeric "
                              << numeric << " (|diff| " << error << " > " << allowed << ")";
            }
        }
        EXPECT_EQ(failures, 0) << "input " << i << ": " << failures << " of " << elements.size()
                               << " sampled gradient elements out of tolerance";
    }
}

// Two ways of computing the same op (a fused op and the ops it fuses, say) from the same
// inputs: each runs on fresh copies of `inputs` (on their device, requiring gradients) and
// back-propagates sum(out * projection); the outputs and every input's gradient must be
// bit-identical (or both absent). `names` labels the inputs in failures.
inline void expect_same_bits(const OpFunction& a, const OpFunction& b, const std::vector<Tensor>& inputs,
                             const Tensor& projection, const std::vector<std::string>& names) {
    auto run = [&](const OpFunction& f, std::vector<Tensor>& grads) {
        std::vector<Tensor> in;
        for (const Tensor& t : inputs) in.push_back(t.clone());
        for (auto& t : in) t.set_requires_grad(true);
        Tensor out = f(in);
        backward(ops::sum(ops::mul(out, projection)));
        grads.clear();
        for (auto& t : in) grads.push_back(t.grad());
        return out;
    };
    std::vector<Tensor> grads_a, grads_b;
    const Tensor out_a = run(a, grads_a), out_b = run(b, grads_b);
    EXPECT_EQ(out_a.shape(), out_b.shape());
    EXPECT_EQ(out_a.to_vector(), out_b.to_vector()) << "outputs differ";
    for (size_t i = 0; i < inputs.size(); ++i) {
        const std::string name = i < names.size() ? names[i] : "input " + std::to_string(i);
        ASSERT_EQ(grads_a[i].defined(), grads_b[i].defined()) << name;
        if (!grads_a[i].defined()) continue;
        EXPECT_EQ(grads_a[i].to_vector(), grads_b[i].to_vector()) << name;
    }
}

// Largest |a - b| over two tensors of equal shape.
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
    EXPECT_EQ(a.shape(), b.shape());
    std::vector<float> x = a.to_vector(), y = b.to_vector();
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, static_cast<double>(std::fabs(x[i] - y[i])));
    return worst;
}

}  // namespace hsa::test
