// HSA forward version 1 (kernels/hsa_forward_v1.cu: bf16 operands on tensor cores, f32
// accumulation and softmax) against the CPU reference on fresh random inputs, with the
// selections of the CPU select_chunks (tokens of chunk 0 select nothing; K larger than the
// visible chunks gives -1 padding). Outputs are poisoned (NaN) before the call so an
// unwritten element fails.
//
// Tolerances. The kernel rounds q, K, V (and the probabilities) to bf16: 8 significant
// bits, a relative rounding error of at most 2^-9 ~ 2e-3 per operand; the products are
// accumulated in f32, whose own error (~1e-6 here) is negligible. Errors of 2e-3 per
// operand, with random signs, leave a relative L2 error of a few 1e-3 on out (the
// probabilities' rounding adds about as much as V's), so we require <= 1e-2 for out. lse
// depends on q and K only and is O(log S) ~ 4 in size, so its relative error is ~1e-4;
// we require <= 1e-3. Indexing or layout mistakes give errors of O(1). In addition, v1's
// error must be within 3x of the error of a plain CPU computation that rounds q / K / V to
// bf16 first (same CPU hsa_forward, rounded inputs), i.e. v1 loses no more than bf16
// inputs must lose.
// Without a GPU the comparison skips with the reason; the shape checks run anyway.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/cuda_allocator.h"
#include "core/precision.h"
#include "core/tensor.h"
#include "cuda_test_util.h"
#include "op_test_harness.h"

#ifdef HSA_WITH_CUDA_KERNELS
#include "kernels/hsa_forward_v1.cuh"
#endif

namespace hsa {
namespace {

using test::expect_bf16_accurate;
using test::HsaCase;
using test::on_gpu;
using test::poisoned;
using test::random_hsa_inputs;
using test::relative_error;
using test::rounded_to_bf16;
using test::test_rng;

constexpr double kOutTol = 1e-2;
constexpr double kLseTol = 1e-3;
constexpr double kOverBf16Inputs = 3.0;

Backend& cpu() { return backend_for(Device::CPU); }

TEST(CudaHsaV1, ForwardMatchesCpuReference) {
#ifndef HSA_WITH_CUDA_KERNELS
    GTEST_SKIP() << "no GPU: this build has no CUDA kernels";
#else
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (const HsaCase& c : {HsaCase{2, 300, 16, 1, 1, 64, 64, 8}, HsaCase{1, 200, 8, 2, 2, 128, 64, 4},
                             HsaCase{1, 1024, 4, 4, 1, 64, 64, 8}}) {
        SCOPED_TRACE("B " + std::to_string(c.B) + " T " + std::to_string(c.T) + " H " + std::to_string(c.H) + " Hk " +
                     std::to_string(c.Hk) + " Hr " + std::to_string(c.Hr) + " d " + std::to_string(c.d) + " K " +
                     std::to_string(c.K));
        const auto [q, kmem, vmem, indices, weights] = random_hsa_inputs(rng, c);

        Tensor out_want = Tensor::empty(q.shape()), lse_want = Tensor::empty({c.B, c.T, c.H, c.K});
        cpu().hsa_forward(q, kmem, vmem, indices, weights, c.S, out_want, lse_want);
        Tensor out_bf16 = Tensor::empty(q.shape()), lse_bf16 = Tensor::empty({c.B, c.T, c.H, c.K});
        cpu().hsa_forward(rounded_to_bf16(q), rounded_to_bf16(kmem), rounded_to_bf16(vmem), indices, weights, c.S,
                          out_bf16, lse_bf16);

        Tensor out_got = poisoned(q.shape()), lse_got = poisoned({c.B, c.T, c.H, c.K});
        hsa_forward_tensor_core(on_gpu(q), on_gpu(kmem), on_gpu(vmem), on_gpu(indices), on_gpu(weights), c.S, out_got,
                                lse_got);

        const std::string label = "v1 forward T " + std::to_string(c.T) + " d " + std::to_string(c.d);
        expect_bf16_accurate(label, "out", out_got, out_want, out_bf16, kOutTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "lse", lse_got, lse_want, lse_bf16, kLseTol, kOverBf16Inputs);

        // Exactly: lse 0 at padding, out 0 for tokens that select nothing; and the case
        // must have exercised both.
        const std::vector<float> idx = indices.to_vector(), out = out_got.to_vector(), lse = lse_got.to_vector();
        const int64_t heads_per_r = c.H / c.Hr;
        int64_t padded = 0, empty_rows = 0, bad_lse = 0, bad_out = 0;
        for (int64_t b = 0; b < c.B; ++b)
            for (int64_t t = 0; t < c.T; ++t)
                for (int64_t r = 0; r < c.Hr; ++r) {
                    const int64_t sel = ((b * c.T + t) * c.Hr + r) * c.K;
                    bool any = false;
                    for (int64_t k = 0; k < c.K; ++k) {
                        const bool pad = idx[static_cast<size_t>(sel + k)] < 0;
                        any = any || !pad;
                        if (!pad) continue;
                        ++padded;
                        for (int64_t h = r * heads_per_r; h < (r + 1) * heads_per_r; ++h)
                            bad_lse += lse[static_cast<size_t>(((b * c.T + t) * c.H + h) * c.K + k)] != 0.0f;
                    }
                    if (any) continue;
                    ++empty_rows;
                    for (int64_t h = r * heads_per_r; h < (r + 1) * heads_per_r; ++h)
                        for (int64_t i = 0; i < c.d; ++i)
                            bad_out += out[static_cast<size_t>(((b * c.T + t) * c.H + h) * c.d + i)] != 0.0f;
                }
        EXPECT_GT(padded, 0) << "the case should contain padding";
        EXPECT_GT(empty_rows, 0) << "the case should contain tokens that select no chunk";
        EXPECT_EQ(bad_lse, 0) << "lse entries at padding that are not 0";
        EXPECT_EQ(bad_out, 0) << "out entries of tokens without chunks that are not 0";
    }
#endif
}

// At bf16 precision the backend's hsa_forward / hsa_backward run the tensor-core kernels
// (kernels/hsa_forward_v1.cu, kernels/hsa_backward_v1.cu); the backward consumes the
// forward's own lse, as in training. Tolerances: out and lse as above; the gradients pass
// through one more rounded product (dS or P w rounded to bf16) and the difference
// dov - od, so we require <= 2e-2, and within 3x of the CPU computation on bf16-rounded
// q / K / V / dO. At these sizes pass 3 cuts busy chunks into work items of 16 selections
// (chunk 0 of T 300 is selected ~240 times: ~15 items and their partial sums).
TEST(CudaHsaV1, BackendAtBf16MatchesCpuForwardAndBackward) {
#ifndef HSA_WITH_CUDA_KERNELS
    GTEST_SKIP() << "no GPU: this build has no CUDA kernels";
#else
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    constexpr double kGradTol = 2e-2;
    // d 128 runs the pass-3 variant that reads K / V from shared memory and tiles of 32 entries.
    for (const HsaCase& c : {HsaCase{2, 300, 16, 1, 1, 64, 64, 8}, HsaCase{1, 640, 8, 2, 2, 64, 64, 4},
                             HsaCase{1, 1024, 4, 4, 1, 64, 64, 8}, HsaCase{2, 300, 16, 1, 1, 128, 64, 8},
                             HsaCase{1, 640, 8, 2, 2, 128, 64, 4}}) {
        SCOPED_TRACE("B " + std::to_string(c.B) + " T " + std::to_string(c.T) + " H " + std::to_string(c.H) + " Hk " +
                     std::to_string(c.Hk) + " Hr " + std::to_string(c.Hr) + " d " + std::to_string(c.d) + " K " +
                     std::to_string(c.K));
        const auto [q, kmem, vmem, indices, weights] = random_hsa_inputs(rng, c);
        Tensor grad_out = rng.normal(q.shape());
        struct Result { Tensor out, lse, gq, gk, gv, gw; };
        auto run_cpu = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& go_) {
            Result r{Tensor::empty(q.shape()), Tensor::empty({c.B, c.T, c.H, c.K}), Tensor::empty(q.shape()),
                     Tensor::empty(kmem.shape()), Tensor::empty(vmem.shape()), Tensor::empty(weights.shape())};
            cpu().hsa_forward(q_, k_, v_, indices, weights, c.S, r.out, r.lse);
            cpu().hsa_backward(q_, k_, v_, indices, weights, c.S, r.lse, go_, r.gq, r.gk, r.gv, r.gw);
            return r;
        };
        const Result want = run_cpu(q, kmem, vmem, grad_out);
        const Result floor = run_cpu(rounded_to_bf16(q), rounded_to_bf16(kmem), rounded_to_bf16(vmem), rounded_to_bf16(grad_out));

        MatmulPrecisionScope precision(MatmulPrecision::BF16);
        Backend& gpu = backend_for(Device::CUDA);
        Result got{poisoned(q.shape()), poisoned({c.B, c.T, c.H, c.K}), poisoned(q.shape()), poisoned(kmem.shape()),
                   poisoned(vmem.shape()), poisoned(weights.shape())};
        const Tensor qg = on_gpu(q), kg = on_gpu(kmem), vg = on_gpu(vmem), ig = on_gpu(indices), wg = on_gpu(weights);
        gpu.hsa_forward(qg, kg, vg, ig, wg, c.S, got.out, got.lse);
        gpu.hsa_backward(qg, kg, vg, ig, wg, c.S, got.lse, on_gpu(grad_out), got.gq, got.gk, got.gv, got.gw);

        const std::string label = "backend bf16 T " + std::to_string(c.T) + " H " + std::to_string(c.H) + " Hk " +
                                  std::to_string(c.Hk) + " d " + std::to_string(c.d);
        expect_bf16_accurate(label, "out", got.out, want.out, floor.out, kOutTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "lse", got.lse, want.lse, floor.lse, kLseTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "grad_q", got.gq, want.gq, floor.gq, kGradTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "grad_kmem", got.gk, want.gk, floor.gk, kGradTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "grad_vmem", got.gv, want.gv, floor.gv, kGradTol, kOverBf16Inputs);
        expect_bf16_accurate(label, "grad_weights", got.gw, want.gw, floor.gw, kGradTol, kOverBf16Inputs);

        // Deterministic: pass 3 cuts busy chunks into work items whose partials are summed in
        // item order (no atomics), so a second backward gives the same bits.
        Tensor gq2 = poisoned(q.shape()), gk2 = poisoned(kmem.shape()), gv2 = poisoned(vmem.shape()),
               gw2 = poisoned(weights.shape());
        gpu.hsa_backward(qg, kg, vg, ig, wg, c.S, got.lse, on_gpu(grad_out), gq2, gk2, gv2, gw2);
        EXPECT_EQ(gk2.to_vector(), got.gk.to_vector()) << label << ": grad_kmem differs between two runs";
        EXPECT_EQ(gv2.to_vector(), got.gv.to_vector()) << label << ": grad_vmem differs between two runs";
        EXPECT_EQ(gq2.to_vector(), got.gq.to_vector()) << label << ": grad_q differs between two runs";
    }
#endif
}

// The limits are checked before any device access, so CPU tensors suffice: no GPU needed.
TEST(CudaHsaV1, RejectsUnsupportedShapesWithClearErrors) {
#ifndef HSA_WITH_CUDA_KERNELS
    GTEST_SKIP() << "no GPU: this build has no CUDA kernels";
#else
    auto expect_error = [](int64_t H, int64_t Hk, int64_t d, int64_t S, const std::string& needle) {
        SCOPED_TRACE("H " + std::to_string(H) + " Hk " + std::to_string(Hk) + " d " + std::to_string(d) + " S " +
                     std::to_string(S));
        const int64_t B = 1, T = 128, K = 2;
        Tensor q = Tensor::zeros({B, T, H, d}), kmem = Tensor::zeros({B, T, Hk, d}), vmem = Tensor::zeros({B, T, Hk, d});
        Tensor indices = Tensor::full({B, T, 1, K}, -1.0f, DType::I32), weights = Tensor::zeros({B, T, 1, K});
        Tensor out = Tensor::zeros({B, T, H, d}), lse = Tensor::zeros({B, T, H, K});
        try {
            hsa_forward_tensor_core(q, kmem, vmem, indices, weights, S, out, lse);
            ADD_FAILURE() << "no error";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_error(16, 1, 32, 64, "{64, 128}");   // head dim
    expect_error(16, 1, 96, 64, "{64, 128}");
    expect_error(16, 1, 64, 32, "{64}");        // chunk size
    expect_error(16, 1, 128, 128, "{64}");
    expect_error(32, 1, 64, 64, "1..16");       // GQA group of 32 query heads
#endif
}

}  // namespace
}  // namespace hsa
