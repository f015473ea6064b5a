// Local attention on tensor cores (kernels/attention_tc.cu: bf16 operands, f32 accumulation
// and softmax), reached through the backend's attention_forward / attention_backward at
// bf16 matrix-product precision, against the CPU reference (f32 inputs, double
// accumulation) on fresh random inputs: sliding windows that do and do not divide the 64-row
// tiles, T shorter than a tile, no window, bidirectional (the chunk encoder's S + 1 = 65
// positions), GQA groups 1, 4 and 16. The backward runs on the kernel's own forward output
// and lse, as in training. Outputs are poisoned (NaN) first, so an unwritten element fails.
//
// Tolerances. The kernels round q, K, V, dO and the probabilities (and dS) to bf16: 8
// significant bits, a relative error of at most 2^-9 ~ 2e-3 per operand; accumulation is
// f32. With random signs such errors leave a relative L2 error of a few 1e-3 on out, so we
// require <= 1e-2; lse is O(log W) and depends on q, K only: <= 1e-3. The gradients pass
// through one more rounded product and the difference dP - delta: <= 2e-2. Indexing, mask
// or layout mistakes give errors of O(1). In addition every error must stay within 3x of the
// error of the same CPU computation on bf16-rounded inputs (q, K, V, dO): the kernels lose
// no more than bf16 operands must lose.
// Without a GPU the comparisons skip with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/precision.h"
#include "core/tensor.h"
#include "cuda_test_util.h"
#include "op_test_harness.h"

namespace hsa {
namespace {

using test::expect_bf16_accurate;
using test::on_gpu;
using test::poisoned;
using test::relative_error;
using test::rounded_to_bf16;
using test::test_rng;

constexpr double kOutTol = 1e-2;
constexpr double kLseTol = 1e-3;
constexpr double kGradTol = 2e-2;
constexpr double kOverBf16Inputs = 3.0;

Backend& cpu() { return backend_for(Device::CPU); }

struct AttentionCase {
    int64_t B, T, H, Hk;
    AttentionSpan span;
};

std::string describe(const AttentionCase& c) {
    return "B " + std::to_string(c.B) + " T " + std::to_string(c.T) + " H " + std::to_string(c.H) + " Hk " +
           std::to_string(c.Hk) + (c.span.causal ? " causal window " + std::to_string(c.span.window) : " bidirectional");
}

struct Gradients {
    Tensor q, k, v;
};

// The CPU reference forward and backward (out and lse of its own forward).
void cpu_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& grad_out, AttentionSpan span,
                   Tensor& out, Tensor& lse, Gradients& g) {
    out = Tensor::empty(q.shape());
    lse = Tensor::empty({q.size(0), q.size(1), q.size(2)});
    cpu().attention_forward(q, k, v, span, out, lse);
    g = {Tensor::empty(q.shape()), Tensor::empty(k.shape()), Tensor::empty(v.shape())};
    cpu().attention_backward(q, k, v, out, lse, grad_out, span, g.q, g.k, g.v);
}

TEST(CudaAttentionTensorCore, ForwardBackwardMatchCpuReference) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const int64_t d = 64;
    for (const AttentionCase& c : {AttentionCase{2, 300, 4, 1, {true, 128}}, AttentionCase{1, 37, 2, 2, {true, 16}},
                                   AttentionCase{1, 700, 16, 1, {true, 512}}, AttentionCase{2, 200, 4, 4, {true, 0}},
                                   AttentionCase{1, 333, 8, 2, {true, 100}}, AttentionCase{24, 65, 4, 1, {false, 0}}}) {
        SCOPED_TRACE(describe(c));
        Tensor q = rng.normal({c.B, c.T, c.H, d}), k = rng.normal({c.B, c.T, c.Hk, d}), v = rng.normal({c.B, c.T, c.Hk, d});
        Tensor grad_out = rng.normal(q.shape());
        Tensor out_want, lse_want, out_bf16, lse_bf16;
        Gradients want, bf16;
        cpu_reference(q, k, v, grad_out, c.span, out_want, lse_want, want);
        cpu_reference(rounded_to_bf16(q), rounded_to_bf16(k), rounded_to_bf16(v), rounded_to_bf16(grad_out), c.span,
                      out_bf16, lse_bf16, bf16);

        MatmulPrecisionScope precision(MatmulPrecision::BF16);
        Backend& gpu = backend_for(Device::CUDA);
        Tensor qg = on_gpu(q), kg = on_gpu(k), vg = on_gpu(v), dog = on_gpu(grad_out);
        Tensor out_got = poisoned(q.shape()), lse_got = poisoned(lse_want.shape());
        gpu.attention_forward(qg, kg, vg, c.span, out_got, lse_got);
        Gradients got{poisoned(q.shape()), poisoned(k.shape()), poisoned(v.shape())};
        gpu.attention_backward(qg, kg, vg, out_got, lse_got, dog, c.span, got.q, got.k, got.v);

        const std::string label = describe(c);
        expect_bf16_accurate(label, "out", out_got, out_want, out_bf16, kOutTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "lse", lse_got, lse_want, lse_bf16, kLseTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "grad_q", got.q, want.q, bf16.q, kGradTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "grad_k", got.k, want.k, bf16.k, kGradTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "grad_v", got.v, want.v, bf16.v, kGradTol, kOverBf16Inputs);
    }
}

// A bf16 out (what the model stores for its wo product): the f32 output rounded to nearest
// even, bit for bit, on the tensor-core path (bf16 precision, written by the kernel) and
// the f32 kernels' (f32 precision, rounded after), with the same lse. The backward reads
// that out for delta = dO . O, one more bf16 rounding among the several its products
// make: every gradient's relative error against the CPU reference stays within kGradTol and
// within 1.5x that of the same backward on the f32 out.
TEST(CudaAttentionTensorCore, Bf16OutputIsTheRoundedOutput) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Backend& gpu = backend_for(Device::CUDA);
    for (const AttentionCase& c : {AttentionCase{2, 300, 4, 1, {true, 128}}, AttentionCase{4, 65, 4, 1, {false, 0}}}) {
        for (MatmulPrecision p : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
            SCOPED_TRACE(describe(c) + " precision " + matmul_precision_name(p));
            MatmulPrecisionScope precision(p);
            Tensor q = rng.normal({c.B, c.T, c.H, 64}), k = rng.normal({c.B, c.T, c.Hk, 64}), v = rng.normal(k.shape());
            Tensor grad_out = rng.normal(q.shape());
            Tensor qg = on_gpu(q), kg = on_gpu(k), vg = on_gpu(v), dog = on_gpu(grad_out);
            Tensor out32 = poisoned(q.shape()), lse32 = poisoned({c.B, c.T, c.H});
            Tensor out16 = poisoned(q.shape(), DType::BF16), lse16 = poisoned({c.B, c.T, c.H});
            gpu.attention_forward(qg, kg, vg, c.span, out32, lse32);
            gpu.attention_forward(qg, kg, vg, c.span, out16, lse16);
            EXPECT_EQ(out16.to_vector(), rounded_to_bf16(out32).to_vector());
            EXPECT_EQ(lse16.to_vector(), lse32.to_vector());
            if (p != MatmulPrecision::BF16) continue;
            Tensor out_want, lse_want;
            Gradients want;
            cpu_reference(q, k, v, grad_out, c.span, out_want, lse_want, want);
            Gradients from32{poisoned(q.shape()), poisoned(k.shape()), poisoned(v.shape())};
            Gradients from16{poisoned(q.shape()), poisoned(k.shape()), poisoned(v.shape())};
            gpu.attention_backward(qg, kg, vg, out32, lse32, dog, c.span, from32.q, from32.k, from32.v);
            gpu.attention_backward(qg, kg, vg, out16, lse16, dog, c.span, from16.q, from16.k, from16.v);
            const std::pair<const char*, std::pair<Tensor*, Tensor*>> grads[] = {
                {"grad_q", {&from16.q, &from32.q}}, {"grad_k", {&from16.k, &from32.k}}, {"grad_v", {&from16.v, &from32.v}}};
            const Tensor* wanted[] = {&want.q, &want.k, &want.v};
            for (int i = 0; i < 3; ++i) {
                const double err16 = relative_error(*grads[i].second.first, *wanted[i]);
                const double err32 = relative_error(*grads[i].second.second, *wanted[i]);
                std::printf("  %-40s %-8s rel err %.2e with a bf16 out, %.2e with f32\n", describe(c).c_str(),
                            grads[i].first, err16, err32);
                EXPECT_LE(err16, kGradTol) << grads[i].first;
                EXPECT_LE(err16, 1.5 * err32 + 1e-6) << grads[i].first;
            }
        }
    }
}

// q and k stored in bf16 (what rmsnorm_rope writes for the model at bf16 precision) give
// the same bits as f32 q and k holding the same values: the tensor-core kernels round q and
// K to bf16 for every product, so only the loads change (and the dQ kernel leaves no q copy:
// the dK/dV tiles read q itself). Off the tensor-core path (head dim 32, or f32 precision)
// the f32 kernels take exact f32 copies. Every output and gradient, bit for bit, on
// ragged lengths, GQA, a window and bidirectional spans; and with only dK / dV wanted
// (their inputs then come from the rows kernel, which sums delta as the dQ kernel does).
TEST(CudaAttentionTensorCore, Bf16QueryAndKeyGiveTheSameBits) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Backend& gpu = backend_for(Device::CUDA);
    struct Variant {
        int64_t d;
        MatmulPrecision precision;
    };
    for (const Variant variant : {Variant{64, MatmulPrecision::BF16}, Variant{32, MatmulPrecision::BF16},
                                  Variant{64, MatmulPrecision::F32}}) {
        for (const AttentionCase& c : {AttentionCase{2, 300, 4, 1, {true, 128}}, AttentionCase{1, 37, 2, 2, {true, 16}},
                                       AttentionCase{3, 65, 4, 1, {false, 0}}}) {
            SCOPED_TRACE(describe(c) + " d " + std::to_string(variant.d) + " precision " +
                         matmul_precision_name(variant.precision));
            MatmulPrecisionScope precision(variant.precision);
            const int64_t d = variant.d;
            // Values bf16 holds exactly, in f32 tensors and in bf16 ones.
            Tensor q32 = on_gpu(rounded_to_bf16(rng.normal({c.B, c.T, c.H, d})));
            Tensor k32 = on_gpu(rounded_to_bf16(rng.normal({c.B, c.T, c.Hk, d})));
            Tensor q16 = q32.to(DType::BF16), k16 = k32.to(DType::BF16);
            Tensor v = on_gpu(rng.normal({c.B, c.T, c.Hk, d})), grad_out = on_gpu(rng.normal({c.B, c.T, c.H, d}));
            const DType out_dtype = variant.precision == MatmulPrecision::BF16 ? DType::BF16 : DType::F32;
            Tensor out32 = poisoned(q32.shape(), out_dtype), lse32 = poisoned({c.B, c.T, c.H});
            Tensor out16 = poisoned(q32.shape(), out_dtype), lse16 = poisoned({c.B, c.T, c.H});
            gpu.attention_forward(q32, k32, v, c.span, out32, lse32);
            gpu.attention_forward(q16, k16, v, c.span, out16, lse16);
            EXPECT_EQ(out16.to_vector(), out32.to_vector());
            EXPECT_EQ(lse16.to_vector(), lse32.to_vector());
            Gradients from32{poisoned(q32.shape()), poisoned(k32.shape()), poisoned(v.shape())};
            Gradients from16{poisoned(q32.shape()), poisoned(k32.shape()), poisoned(v.shape())};
            gpu.attention_backward(q32, k32, v, out32, lse32, grad_out, c.span, from32.q, from32.k, from32.v);
            gpu.attention_backward(q16, k16, v, out16, lse16, grad_out, c.span, from16.q, from16.k, from16.v);
            EXPECT_EQ(from16.q.to_vector(), from32.q.to_vector()) << "grad_q";
            EXPECT_EQ(from16.k.to_vector(), from32.k.to_vector()) << "grad_k";
            EXPECT_EQ(from16.v.to_vector(), from32.v.to_vector()) << "grad_v";
            // Equal poison would compare equal: every element must also have been written
            // (poisoned() stores -7777 in f32 and, rounded, -7776 in bf16).
            const float poison16 = bf16_to_float(float_to_bf16(-7777.0f));
            for (const Tensor* t : {&out32, &lse32, &from32.q, &from32.k, &from32.v}) {
                const std::vector<float> values = t->to_vector();
                EXPECT_TRUE(std::all_of(values.begin(), values.end(), [poison16](float x) {
                    return std::isfinite(x) && x != -7777.0f && x != poison16;
                }));
            }
            Tensor none, only_k = poisoned(k32.shape()), only_v = poisoned(v.shape());
            gpu.attention_backward(q16, k16, v, out16, lse16, grad_out, c.span, none, only_k, only_v);
            EXPECT_EQ(only_k.to_vector(), from32.k.to_vector()) << "grad_k without grad_q";
            EXPECT_EQ(only_v.to_vector(), from32.v.to_vector()) << "grad_v without grad_q";
        }
    }
}

// Only the gradients asked for are written: the others stay as they were.
TEST(CudaAttentionTensorCore, WritesOnlyRequestedGradients) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const AttentionSpan span{true, 64};
    Tensor q = rng.normal({1, 150, 4, 64}, 1.0f, Device::CUDA), k = rng.normal({1, 150, 2, 64}, 1.0f, Device::CUDA);
    Tensor v = rng.normal({1, 150, 2, 64}, 1.0f, Device::CUDA), grad_out = rng.normal({1, 150, 4, 64}, 1.0f, Device::CUDA);
    MatmulPrecisionScope precision(MatmulPrecision::BF16);
    Backend& gpu = backend_for(Device::CUDA);
    Tensor out = poisoned(q.shape()), lse = poisoned({1, 150, 4});
    gpu.attention_forward(q, k, v, span, out, lse);
    Tensor all_q = poisoned(q.shape()), all_k = poisoned(k.shape()), all_v = poisoned(v.shape());
    gpu.attention_backward(q, k, v, out, lse, grad_out, span, all_q, all_k, all_v);
    Tensor none, only_v = poisoned(v.shape());
    gpu.attention_backward(q, k, v, out, lse, grad_out, span, none, none, only_v);
    EXPECT_EQ(relative_error(only_v, all_v), 0.0) << "grad_v alone must equal grad_v computed with the others";
    Tensor only_q = poisoned(q.shape());
    gpu.attention_backward(q, k, v, out, lse, grad_out, span, only_q, none, none);
    EXPECT_EQ(relative_error(only_q, all_q), 0.0);
    // dK alone: its q / dO copies and delta come from the rows kernel instead of the dQ
    // kernel, the same values.
    Tensor only_k = poisoned(k.shape());
    gpu.attention_backward(q, k, v, out, lse, grad_out, span, none, only_k, none);
    EXPECT_EQ(relative_error(only_k, all_k), 0.0) << "grad_k alone must equal grad_k computed with dQ";
}

}  // namespace
}  // namespace hsa
