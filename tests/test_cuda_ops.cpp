// Every CUDA backend method against the CPU reference on fresh random inputs, at several
// shapes including ragged ones, forward and every gradient; and the whole model on the GPU
// against the CPU model. CUDA outputs are poisoned (NaN / -7777) before each call so an
// unwritten element fails.
//
// Tolerances: the CUDA backend computes in f32 (f32 accumulation), the CPU reference
// accumulates in double. A sum of n f32 products carries a relative error of about
// sqrt(n) * 6e-8 for random signs; for n <= 4096 that is < 4e-6. We require the relative
// L2 error ||cuda - cpu|| / ||cpu|| <= 2e-5 for ops with long reductions and 1e-6 for
// element-wise ones, so real indexing or formula mistakes (errors of O(1)) cannot pass.
// Without a GPU every test here skips with the reason.
#include <gtest/gtest.h>

#include <algorithm>

#include <array>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <tuple>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/cuda_allocator.h"
#include "core/model/model.h"
#include "core/ops.h"
#include "core/precision.h"
#include "cuda_test_util.h"
#include "op_test_harness.h"

#ifdef HSA_WITH_CUDA_KERNELS
#include "kernels/cuda_backend.h"  // gemm autotuning, gemm_of_bf16
#endif

namespace hsa {
namespace {

using test::expect_same_bits;
using test::HsaCase;
using test::on_gpu;
using test::poisoned;
using test::random_hsa_inputs;
using test::relative_error;
using test::test_rng;

// Under compute-sanitizer (100x slower) HSA_TEST_SMALL=1 skips the largest shapes.
bool small_only() { return std::getenv("HSA_TEST_SMALL") != nullptr; }

// Cross-entropy targets: N random classes in [0, V), row 1 ignored (-1). N >= 2.
Tensor targets_with_one_ignored(Rng& rng, int64_t N, int64_t V) {
    std::vector<int32_t> t(static_cast<size_t>(N));
    for (auto& v : t) v = static_cast<int32_t>(rng.next_int(0, V));
    t[1] = -1;
    return Tensor::from_vector_i32(t, {N});
}

// (N, V) of the bf16-logit cross-entropy tests: V 11 and 1028 take the scalar / two-kernel
// paths (bf16 rows load 16 bytes = 8 elements only when V % 8 == 0), 1032 and 50304 the
// 16-byte and fused ones; the largest is left out under HSA_TEST_SMALL.
std::vector<std::array<int64_t, 2>> bf16_logit_shapes() {
    std::vector<std::array<int64_t, 2>> shapes{{9, 11}, {33, 1028}, {64, 1032}};
    if (!small_only()) shapes.push_back({257, 50304});
    return shapes;
}

constexpr double kElementwiseTol = 1e-6;
constexpr double kReductionTol = 2e-5;

Backend& cpu() { return backend_for(Device::CPU); }
Backend& gpu() { return backend_for(Device::CUDA); }

#define EXPECT_CLOSE(gpu_tensor, cpu_tensor, tol) \
    EXPECT_LE(relative_error(gpu_tensor, cpu_tensor), tol) << #gpu_tensor << " vs CPU reference"

// ------------------------------------------------------------------ elementwise family

TEST(CudaOps, ElementwiseAndDataMovement) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int64_t n : {1, 7, 4096, 100003}) {
        Tensor a = rng.normal({n}), b = rng.normal({n});
        Tensor want = Tensor::empty({n}), got = poisoned({n});
        cpu().add(a, b, want);
        gpu().add(on_gpu(a), on_gpu(b), got);
        EXPECT_CLOSE(got, want, kElementwiseTol);
        cpu().mul(a, b, want);
        gpu().mul(on_gpu(a), on_gpu(b), got);
        EXPECT_CLOSE(got, want, kElementwiseTol);
        cpu().scale(a, -1.7f, want);
        gpu().scale(on_gpu(a), -1.7f, got);
        EXPECT_CLOSE(got, want, kElementwiseTol);
        Tensor target_cpu = b.clone(), target_gpu = on_gpu(b);
        cpu().axpy(0.3f, a, target_cpu);
        gpu().axpy(0.3f, on_gpu(a), target_gpu);
        EXPECT_CLOSE(target_gpu, target_cpu, kElementwiseTol);
        // In place, as clip_grad_norm uses it.
        Tensor in_place = on_gpu(a);
        gpu().scale(in_place, 2.0f, in_place);
        cpu().scale(a, 2.0f, want);
        EXPECT_CLOSE(in_place, want, kElementwiseTol);
        EXPECT_NEAR(gpu().sum(on_gpu(a)), cpu().sum(a), 1e-5 * std::sqrt(static_cast<double>(n)) + 1e-6);
        EXPECT_NEAR(gpu().sum_of_squares(on_gpu(a)), cpu().sum_of_squares(a), 1e-5 * static_cast<double>(n) * 1e-2 + 1e-6);
    }
    // copy_rows (slice / concat): element runs (inner 5), runs of float4 (inner 4; inner 1 with
    // every count and offset a multiple of 4, as the model's k / v slices of kv), and inner 1
    // with an offset that is not (element path); then sum_middle (mean), broadcast_middle
    // (repeat), accumulate.
    struct CopyCase {
        int64_t src_len, src_start, dst_len, dst_start, length, inner;
    };
    for (const CopyCase& c : {CopyCase{11, 6, 7, 2, 4, 5}, CopyCase{11, 6, 7, 2, 4, 4}, CopyCase{128, 64, 64, 0, 64, 1},
                              CopyCase{128, 3, 68, 1, 64, 1}}) {
        SCOPED_TRACE("copy_rows inner " + std::to_string(c.inner) + " src_start " + std::to_string(c.src_start));
        const int64_t rows = 37;
        Tensor from = rng.normal({rows, c.src_len, c.inner}), to = rng.normal({rows, c.dst_len, c.inner});
        for (bool accumulate : {false, true}) {
            Tensor want = to.clone(), got = on_gpu(to);
            cpu().copy_rows(from, rows, c.src_len, c.src_start, want, c.dst_len, c.dst_start, c.length, c.inner,
                            accumulate);
            gpu().copy_rows(on_gpu(from), rows, c.src_len, c.src_start, got, c.dst_len, c.dst_start, c.length, c.inner,
                            accumulate);
            EXPECT_CLOSE(got, want, kElementwiseTol);
        }
    }
    const int64_t outer = 3, src_len = 11, inner = 5;
    Tensor src = rng.normal({outer, src_len, inner});
    Tensor summed_want = Tensor::empty({outer, inner}), summed_got = poisoned({outer, inner});
    cpu().sum_middle(src, outer, src_len, inner, 0.25f, summed_want);
    gpu().sum_middle(on_gpu(src), outer, src_len, inner, 0.25f, summed_got);
    EXPECT_CLOSE(summed_got, summed_want, kReductionTol);
    Tensor spread_want = Tensor::empty({outer, src_len, inner}), spread_got = poisoned({outer, src_len, inner});
    cpu().broadcast_middle(summed_want, outer, src_len, inner, 3.0f, spread_want);
    gpu().broadcast_middle(on_gpu(summed_want), outer, src_len, inner, 3.0f, spread_got);
    EXPECT_CLOSE(spread_got, spread_want, kElementwiseTol);
}

// ------------------------------------------------------------------ layers

TEST(CudaOps, EmbeddingForwardBackward) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    // D 7: one column a thread; D 64 and 1040: four (1040 / 4 = 260 columns a row: a second,
    // ragged column tile of the 256-thread blocks).
    for (auto [V, D, N] : std::vector<std::array<int64_t, 3>>{{13, 7, 29}, {300, 64, 1000}, {50, 1040, 300}}) {
        Tensor table = rng.normal({V, D});
        std::vector<int32_t> id_values(static_cast<size_t>(N));
        for (auto& id : id_values) id = static_cast<int32_t>(rng.next_int(0, V));
        Tensor ids = Tensor::from_vector_i32(id_values, {N});
        Tensor want = Tensor::empty({N, D}), got = poisoned({N, D});
        cpu().embedding_forward(table, ids, want);
        gpu().embedding_forward(on_gpu(table), on_gpu(ids), got);
        EXPECT_CLOSE(got, want, kElementwiseTol);
        Tensor grad_out = rng.normal({N, D});
        Tensor gwant = Tensor::empty({V, D}), ggot = poisoned({V, D});
        cpu().embedding_backward(ids, grad_out, gwant);
        gpu().embedding_backward(on_gpu(ids), on_gpu(grad_out), ggot);
        EXPECT_CLOSE(ggot, gwant, kReductionTol);
    }
}

// Every transpose, batching mode and accumulate flag against the CPU. At f32 precision to
// f32 rounding; at bf16 precision within the bf16 bound of GemmBf16PrecisionIsBf16Accurate
// (relative 1e-2), once with sizes that are multiples of 8 (the operands' bf16 copies) and
// once with odd sizes (the FAST_16BF fallback on f32 operands).
void check_gemm_modes(Rng& rng, int64_t M, int64_t K, int64_t N, int64_t B, double tolerance);

TEST(CudaOps, GemmAllTransposesBatchesAndAccumulate) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    check_gemm_modes(rng, 37, 53, 29, 3, -1);
}

TEST(CudaOps, GemmBf16AllTransposesBatchesAndAccumulate) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    MatmulPrecisionScope bf16(MatmulPrecision::BF16);
    check_gemm_modes(rng, 40, 64, 24, 3, 1e-2);  // bf16 copies
    check_gemm_modes(rng, 37, 53, 29, 3, 1e-2);  // FAST_16BF fallback
}

void check_gemm_modes(Rng& rng, int64_t M, int64_t K, int64_t N, int64_t B, double tolerance) {
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (int mode = 0; mode < 4; ++mode) {  // 2-D x 2-D, 3-D x 3-D, 3-D x shared 2-D, 3-D x 3-D summed into 2-D
                SCOPED_TRACE("transpose_a " + std::to_string(ta) + " transpose_b " + std::to_string(tb) + " mode " +
                             std::to_string(mode));
                Shape a_shape = ta ? Shape{K, M} : Shape{M, K};
                Shape b_shape = tb ? Shape{N, K} : Shape{K, N};
                if (mode >= 1) a_shape.insert(a_shape.begin(), B);
                if (mode == 1 || mode == 3) b_shape.insert(b_shape.begin(), B);
                Shape out_shape = mode == 0 || mode == 3 ? Shape{M, N} : Shape{B, M, N};
                Tensor a = rng.normal(a_shape), b = rng.normal(b_shape);
                for (bool accumulate : {false, true}) {
                    Tensor base = rng.normal(out_shape);
                    Tensor want = base.clone(), got = on_gpu(base);
                    cpu().gemm(a, ta, b, tb, want, accumulate);
                    gpu().gemm(on_gpu(a), ta, on_gpu(b), tb, got, accumulate);
                    if (tolerance < 0) {
                        EXPECT_CLOSE(got, want, kReductionTol);
                    } else {
                        EXPECT_LE(relative_error(got, want), tolerance) << "M " << M << " K " << K << " N " << N;
                    }
                }
            }
}

// gemm_backward rounds the output gradient to bf16 once for both products; the products
// must be bit-identical to the two separate gemm calls (the same rounding, made once), and
// within bf16 accuracy of the CPU reference. Shapes with a dim not a multiple of 8 take the
// FAST_16BF path with no shared copy; only-one-gradient calls round nothing up front.
TEST(CudaOps, GemmBackwardSharesTheRoundedGradient) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    MatmulPrecisionScope bf16(MatmulPrecision::BF16);
    for (auto [M, K, N] : std::vector<std::array<int64_t, 3>>{{40, 64, 24}, {37, 53, 29}})
        for (bool ta : {false, true})
            for (bool tb : {false, true})
                for (bool batched : {false, true}) {
                    SCOPED_TRACE("M " + std::to_string(M) + " ta " + std::to_string(ta) + " tb " + std::to_string(tb) +
                                 " batched " + std::to_string(batched));
                    Shape a_shape = ta ? Shape{K, M} : Shape{M, K};
                    Shape b_shape = tb ? Shape{N, K} : Shape{K, N};
                    Shape g_shape{M, N};
                    if (batched) {  // [B, M, K] x shared [K, N]: the weight gradient sums the batch
                        a_shape.insert(a_shape.begin(), 3);
                        g_shape.insert(g_shape.begin(), 3);
                    }
                    Tensor a = rng.normal(a_shape), b = rng.normal(b_shape), g = rng.normal(g_shape);
                    Tensor ga_want = Tensor::empty(a_shape), gb_want = Tensor::empty(b_shape);
                    cpu().gemm_backward(a, ta, b, tb, g, ga_want, gb_want, false, false);
                    Tensor ga = poisoned(a_shape), gb = poisoned(b_shape);
                    gpu().gemm_backward(on_gpu(a), ta, on_gpu(b), tb, on_gpu(g), ga, gb, false, false);
                    // The base class's two-call version, on the GPU.
                    Tensor ga_two = poisoned(a_shape), gb_two = poisoned(b_shape);
                    gpu().Backend::gemm_backward(on_gpu(a), ta, on_gpu(b), tb, on_gpu(g), ga_two, gb_two, false, false);
                    EXPECT_EQ(ga.to_vector(), ga_two.to_vector());
                    EXPECT_EQ(gb.to_vector(), gb_two.to_vector());
                    EXPECT_LE(relative_error(ga, ga_want), 1e-2);
                    EXPECT_LE(relative_error(gb, gb_want), 1e-2);
                    // One gradient only: the other stays untouched.
                    Tensor only_a = poisoned(a_shape), none;
                    gpu().gemm_backward(on_gpu(a), ta, on_gpu(b), tb, on_gpu(g), only_a, none, false, false);
                    EXPECT_EQ(only_a.to_vector(), ga.to_vector());
                    // Accumulating into existing gradients: base + product.
                    Tensor base_a = rng.normal(a_shape), base_b = rng.normal(b_shape);
                    Tensor acc_a = on_gpu(base_a), acc_b = on_gpu(base_b);
                    gpu().gemm_backward(on_gpu(a), ta, on_gpu(b), tb, on_gpu(g), acc_a, acc_b, true, true);
                    Tensor want_a = base_a.clone(), want_b = base_b.clone();
                    cpu().add(base_a, ga.to(Device::CPU), want_a);
                    cpu().add(base_b, gb.to(Device::CPU), want_b);
                    EXPECT_LE(relative_error(acc_a, want_a), 1e-5);
                    EXPECT_LE(relative_error(acc_b, want_b), 1e-5);
                }
}

// BF16 matmul precision rounds operands to bf16 (8 significant bits: 2^-9 = 2e-3 relative
// per operand), so the product carries ~3e-3 relative error: bounded by 1e-2, and above
// 1e-5, which proves the tensor-core path is the one taken.
TEST(CudaOps, GemmBf16PrecisionIsBf16Accurate) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    Tensor a = rng.normal({3, 96, 256}), b = rng.normal({256, 160});
    Tensor want = Tensor::empty({3, 96, 160}), got = poisoned({3, 96, 160});
    cpu().gemm(a, false, b, false, want, false);
    {
        MatmulPrecisionScope bf16(MatmulPrecision::BF16);
        gpu().gemm(on_gpu(a), false, on_gpu(b), false, got, false);
    }
    const double error = relative_error(got, want);
    EXPECT_LE(error, 1e-2);
    EXPECT_GT(error, 1e-5) << "bf16 precision asked for, but the product is f32-exact";
    Tensor exact = poisoned({3, 96, 160});
    gpu().gemm(on_gpu(a), false, on_gpu(b), false, exact, false);  // the scope restored f32
    EXPECT_CLOSE(exact, want, kReductionTol);
}

// The batched sum of squares (one read-back for a whole gradient norm) equals the single
// calls bit for bit, and the CPU reference within reduction tolerance; empty tensors give 0.
TEST(CudaOps, SumOfSquaresManyEqualsSingleCalls) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    std::vector<Tensor> cpu_xs, gpu_xs;
    // The last is long enough for the 4-deep unrolled loads of each thread (4 strides of the
    // 1024 blocks' 262144 float4s) and their remainder, plus a tail of odd elements.
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1024}, int64_t{0}, int64_t{300001}, int64_t{4096 * 257},
                      int64_t{4 * 1048576 + 262144 * 4 + 4101}}) {
        cpu_xs.push_back(rng.normal({n}));
        gpu_xs.push_back(on_gpu(cpu_xs.back()));
    }
    const std::vector<double> many = gpu().sum_of_squares_many(gpu_xs);
    ASSERT_EQ(many.size(), gpu_xs.size());
    for (size_t i = 0; i < gpu_xs.size(); ++i) {
        EXPECT_EQ(many[i], gpu().sum_of_squares(gpu_xs[i])) << "tensor " << i;
        const double want = cpu().sum_of_squares(cpu_xs[i]);
        EXPECT_NEAR(many[i], want, 1e-9 * std::max(1.0, want)) << "tensor " << i;
    }
    EXPECT_EQ(many[3], 0.0);
    EXPECT_TRUE(gpu().sum_of_squares_many({}).empty());
}

TEST(CudaOps, RmsnormRopeSwiglu) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    // 20000 x 64: 1024 blocks of partial weight sums, the combine kernel's widest case.
    // 4099 x 768 and 9000 x 1024: the float4 wide kernels with several rows a warp, a ragged
    // last block, and (768) lanes whose last float4 slots are past the row. D 16 / 32 / 64 /
    // 128: the narrow kernels (several rows a warp; 300, 257 and 65 rows end mid-warp).
    for (auto [N, D] : std::vector<std::array<int64_t, 2>>{{5, 7}, {300, 64}, {17, 1024}, {3, 3000}, {20000, 64},
                                                           {4099, 768}, {9000, 1024}, {1000, 128}, {257, 32}, {65, 16}}) {
        if (small_only() && N > 1000) continue;
        Tensor x = rng.normal({N, D}), w = rng.normal({D}), grad_out = rng.normal({N, D});
        for (bool with_weight : {true, false}) {
            Tensor weight = with_weight ? w : Tensor();
            Tensor want = Tensor::empty({N, D}), inv_want = Tensor::empty({N});
            Tensor got = poisoned({N, D}), inv_got = poisoned({N});
            cpu().rmsnorm_forward(x, weight, 1e-6f, want, inv_want);
            gpu().rmsnorm_forward(on_gpu(x), on_gpu(weight), 1e-6f, got, inv_got);
            EXPECT_CLOSE(got, want, kReductionTol);
            EXPECT_CLOSE(inv_got, inv_want, kReductionTol);
            Tensor gx_want = Tensor::empty({N, D}), gw_want = with_weight ? Tensor::empty({D}) : Tensor();
            Tensor gx_got = poisoned({N, D}), gw_got = with_weight ? poisoned({D}) : Tensor();
            cpu().rmsnorm_backward(x, weight, inv_want, grad_out, gx_want, gw_want, false);
            gpu().rmsnorm_backward(on_gpu(x), on_gpu(weight), on_gpu(inv_want), on_gpu(grad_out), gx_got, gw_got, false);
            EXPECT_CLOSE(gx_got, gx_want, kReductionTol);
            if (with_weight) {
                EXPECT_CLOSE(gw_got, gw_want, kReductionTol);
            }
            // Accumulating into an existing gradient (fused and x-only paths).
            Tensor base = rng.normal({N, D});
            Tensor acc_want = base.clone(), acc_got = on_gpu(base), gw_acc = with_weight ? poisoned({D}) : Tensor();
            Tensor none;
            cpu().rmsnorm_backward(x, weight, inv_want, grad_out, acc_want, none, true);
            gpu().rmsnorm_backward(on_gpu(x), on_gpu(weight), on_gpu(inv_want), on_gpu(grad_out), acc_got, gw_acc, true);
            EXPECT_CLOSE(acc_got, acc_want, kReductionTol);
            if (with_weight) {
                EXPECT_EQ(gw_acc.to_vector(), gw_got.to_vector()) << "the weight gradient is written, never accumulated";
            }
        }
    }
    for (int64_t offset : {0, 5, 1000003}) {
        Tensor x = rng.normal({2, 9, 3, 16});
        Tensor want = Tensor::empty(x.shape()), got = poisoned(x.shape());
        cpu().rope_forward(x, offset, 10000.0f, want);
        gpu().rope_forward(on_gpu(x), offset, 10000.0f, got);
        EXPECT_CLOSE(got, want, kReductionTol) << "offset " << offset;
        cpu().rope_backward(x, offset, 10000.0f, want);
        gpu().rope_backward(on_gpu(x), offset, 10000.0f, got);
        EXPECT_CLOSE(got, want, kReductionTol) << "offset " << offset;
    }
    Tensor gate = rng.normal({7, 33}), up = rng.normal({7, 33}), g = rng.normal({7, 33});
    Tensor want = Tensor::empty(gate.shape()), got = poisoned(gate.shape());
    cpu().swiglu_forward(gate, up, want);
    gpu().swiglu_forward(on_gpu(gate), on_gpu(up), got);
    EXPECT_CLOSE(got, want, kElementwiseTol * 4);
    Tensor gg_want = Tensor::empty(gate.shape()), gu_want = Tensor::empty(gate.shape());
    Tensor gg_got = poisoned(gate.shape()), gu_got = poisoned(gate.shape());
    cpu().swiglu_backward(gate, up, g, gg_want, gu_want);
    gpu().swiglu_backward(on_gpu(gate), on_gpu(up), on_gpu(g), gg_got, gu_got);
    EXPECT_CLOSE(gg_got, gg_want, kElementwiseTol * 4);
    EXPECT_CLOSE(gu_got, gu_want, kElementwiseTol * 4);
}

TEST(CudaOps, CrossEntropyAndAdamW) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    // V 11: the scalar path; 1028 and 50304: float4 rows.
    for (auto [N, V] : std::vector<std::array<int64_t, 2>>{{9, 11}, {33, 1028}, {257, 50304}}) {
        if (small_only() && V > 1000) continue;
        Tensor logits = rng.normal({N, V}, 3.0f);
        Tensor targets = targets_with_one_ignored(rng, N, V);
        Tensor mask = rng.uniform({N}, 0.0f, 2.0f);
        for (bool with_mask : {true, false}) {
            Tensor m = with_mask ? mask : Tensor();
            Tensor loss_want = Tensor::empty({}), lse_want = Tensor::empty({N});
            Tensor loss_got = poisoned({}), lse_got = poisoned({N});
            cpu().cross_entropy_forward(logits, targets, m, loss_want, lse_want);
            gpu().cross_entropy_forward(on_gpu(logits), on_gpu(targets), on_gpu(m), loss_got, lse_got);
            EXPECT_CLOSE(loss_got, loss_want, kReductionTol);
            EXPECT_CLOSE(lse_got, lse_want, kReductionTol);
            Tensor g_want = Tensor::empty({N, V}), g_got = poisoned({N, V});
            cpu().cross_entropy_backward(logits, targets, m, lse_want, 1.5f, g_want);
            gpu().cross_entropy_backward(on_gpu(logits), on_gpu(targets), on_gpu(m), on_gpu(lse_want), 1.5f, g_got);
            EXPECT_CLOSE(g_got, g_want, kReductionTol);
        }
    }
    Tensor p = rng.normal({1001}), g = rng.normal({1001}), m = rng.normal({1001}, 0.1f), v = rng.uniform({1001}, 0.0f, 0.1f);
    Tensor p_gpu = on_gpu(p), m_gpu = on_gpu(m), v_gpu = on_gpu(v);
    for (int64_t step = 1; step <= 3; ++step) {
        cpu().adamw_step(p, g, m, v, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step);
        gpu().adamw_step(p_gpu, on_gpu(g), m_gpu, v_gpu, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step);
    }
    EXPECT_CLOSE(p_gpu, p, kElementwiseTol);
    EXPECT_CLOSE(m_gpu, m, kElementwiseTol);
    EXPECT_CLOSE(v_gpu, v, kElementwiseTol);
}

// The loss and its gradient from bf16 logits (the head's logits at bf16 precision,
// Backend::head_logits) against the CPU reference on the same values in f32, with the f32
// kernel's tolerance: reading bf16 loses nothing beyond the rounding the values already
// carry. V 11 and 1028: the scalar path (bf16 rows load 16 bytes = 8 elements when V % 8 == 0);
// 1032 and 50304: 16-byte loads. The gradient is written in f32 here and in bf16 by the fused
// head (LinearCrossEntropyEqualsMatmulThenCrossEntropy).
TEST(CudaOps, CrossEntropyOnBf16Logits) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (auto [N, V] : bf16_logit_shapes()) {
        SCOPED_TRACE("N " + std::to_string(N) + " V " + std::to_string(V));
        const Tensor logits = test::rounded_to_bf16(rng.normal({N, V}, 3.0f));  // bf16 values, held in f32
        const Tensor logits16 = on_gpu(logits).to(DType::BF16);             // exact
        Tensor targets = targets_with_one_ignored(rng, N, V);
        Tensor mask = rng.uniform({N}, 0.0f, 2.0f);
        Tensor loss_want = Tensor::empty({}), lse_want = Tensor::empty({N});
        Tensor loss_got = poisoned({}), lse_got = poisoned({N});
        cpu().cross_entropy_forward(logits, targets, mask, loss_want, lse_want);
        gpu().cross_entropy_forward(logits16, on_gpu(targets), on_gpu(mask), loss_got, lse_got);
        EXPECT_CLOSE(loss_got, loss_want, kReductionTol);
        EXPECT_CLOSE(lse_got, lse_want, kReductionTol);
        Tensor g_want = Tensor::empty({N, V}), g_got = poisoned({N, V});
        cpu().cross_entropy_backward(logits, targets, mask, lse_want, 1.5f, g_want);
        gpu().cross_entropy_backward(logits16, on_gpu(targets), on_gpu(mask), on_gpu(lse_want), 1.5f, g_got);
        EXPECT_CLOSE(g_got, g_want, kReductionTol);
    }
    // The CPU backend takes f32 logits only.
    Tensor loss = Tensor::empty({}), lse = Tensor::empty({2});
    EXPECT_THROW(cpu().cross_entropy_forward(Tensor::zeros({2, 8}, DType::BF16), Tensor::from_vector_i32({0, 1}, {2}),
                                             Tensor(), loss, lse),
                 Error);
}

// The head's loss with its gradient written over bf16 logits (the forward of
// linear_cross_entropy when a gradient will be taken) against the CPU's forward, then
// backward at grad_loss 1, on the same values: loss and lse with the f32 kernel's tolerance,
// the gradient within its bf16 rounding (u = 2^-8 relative an element). V 1032 and 50304 take
// the fused kernel (each row staged in shared memory once); V 1028 and 11 the two kernels, the
// gradient written in place. f32 logits get the loss only (false; the unfused backward follows).
TEST(CudaOps, CrossEntropyWithGradientInPlace) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (auto [N, V] : bf16_logit_shapes()) {
        const Tensor logits = test::rounded_to_bf16(rng.normal({N, V}, 3.0f));
        const Tensor targets = targets_with_one_ignored(rng, N, V);
        const Tensor mask = rng.uniform({N}, 0.0f, 2.0f);
        Tensor loss_want = Tensor::empty({}), lse_want = Tensor::empty({N}), g_want = Tensor::empty({N, V});
        cpu().cross_entropy_forward(logits, targets, mask, loss_want, lse_want);
        cpu().cross_entropy_backward(logits, targets, mask, lse_want, 1.0f, g_want);
        for (DType dtype : {DType::F32, DType::BF16}) {
            SCOPED_TRACE("N " + std::to_string(N) + " V " + std::to_string(V) + " " + dtype_name(dtype));
            Tensor in_place = on_gpu(logits).to(dtype), loss = poisoned({}), lse = poisoned({N});
            const bool wrote =
                gpu().cross_entropy_forward_with_gradient(in_place, on_gpu(targets), on_gpu(mask), loss, lse);
            EXPECT_CLOSE(loss, loss_want, kReductionTol);
            EXPECT_CLOSE(lse, lse_want, kReductionTol);
            EXPECT_EQ(in_place.dtype(), dtype);
            EXPECT_EQ(wrote, dtype == DType::BF16);
            if (wrote) EXPECT_CLOSE(in_place, g_want, 1.0 / 256 + kReductionTol);
            else EXPECT_EQ(in_place.to_vector(), logits.to_vector());
        }
    }
}

// adamw_step_many (one launch, the gradient scale folded in) against scale then adamw_step
// per tensor on the GPU: bit-identical parameters and moments, gradients untouched. Sizes
// below, at and above one block's chunk (4096), with ragged tails (the scalar path of a
// block), different decays, and an empty tensor.
TEST(CudaOps, AdamWManyEqualsScaleThenStepPerTensor) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    const std::vector<int64_t> sizes{1, 7, 4096, 4097, 70001, 0, 1024};
    for (float grad_scale : {0.37f, 1.0f}) {
        std::vector<Tensor> p1, g, m1, v1, p2, m2, v2;
        for (int64_t n : sizes) {
            p1.push_back(on_gpu(rng.normal({n})));
            g.push_back(on_gpu(rng.normal({n})));
            m1.push_back(on_gpu(rng.normal({n}, 0.1f)));
            v1.push_back(on_gpu(rng.uniform({n}, 0.0f, 0.1f)));
            p2.push_back(p1.back().clone());
            m2.push_back(m1.back().clone());
            v2.push_back(v1.back().clone());
        }
        std::vector<Backend::AdamWSlot> slots;
        for (size_t i = 0; i < sizes.size(); ++i) slots.push_back({p1[i], g[i], m1[i], v1[i], i % 2 ? 0.1f : 0.0f});
        const std::vector<float> g_before = g[3].to_vector();
        for (int64_t step = 1; step <= 2; ++step) {
            gpu().adamw_step_many(slots, 1e-3f, 0.9f, 0.95f, 1e-8f, step, grad_scale);
            for (size_t i = 0; i < sizes.size(); ++i) {
                Tensor scaled = Tensor::empty(g[i].shape(), DType::F32, Device::CUDA);
                gpu().scale(g[i], grad_scale, scaled);
                gpu().adamw_step(p2[i], scaled, m2[i], v2[i], 1e-3f, 0.9f, 0.95f, 1e-8f, i % 2 ? 0.1f : 0.0f, step);
            }
        }
        for (size_t i = 0; i < sizes.size(); ++i) {
            SCOPED_TRACE("size " + std::to_string(sizes[i]) + " scale " + std::to_string(grad_scale));
            EXPECT_EQ(p1[i].to_vector(), p2[i].to_vector());
            EXPECT_EQ(m1[i].to_vector(), m2[i].to_vector());
            EXPECT_EQ(v1[i].to_vector(), v2[i].to_vector());
        }
        EXPECT_EQ(g[3].to_vector(), g_before) << "the gradients are not scaled in place";
    }
}

// ------------------------------------------------------------------ attention, retrieval, HSA

TEST(CudaOps, LocalAttentionForwardBackward) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    struct Case { int64_t B, T, H, Hk, d; AttentionSpan span; };
    for (const Case& c : {Case{2, 11, 4, 2, 8, {true, 4}}, Case{1, 300, 4, 1, 64, {true, 128}},
                          Case{2, 77, 2, 2, 32, {true, 0}}, Case{12, 65, 4, 1, 16, {false, 0}},
                          Case{1, 130, 16, 1, 128, {true, 64}}, Case{2, 19, 2, 1, 12, {true, 8}}}) {
        SCOPED_TRACE("T " + std::to_string(c.T) + " d " + std::to_string(c.d) + " window " + std::to_string(c.span.window));
        Tensor q = rng.normal({c.B, c.T, c.H, c.d}), k = rng.normal({c.B, c.T, c.Hk, c.d}), v = rng.normal({c.B, c.T, c.Hk, c.d});
        Tensor out_want = Tensor::empty(q.shape()), lse_want = Tensor::empty({c.B, c.T, c.H});
        Tensor out_got = poisoned(q.shape()), lse_got = poisoned({c.B, c.T, c.H});
        cpu().attention_forward(q, k, v, c.span, out_want, lse_want);
        gpu().attention_forward(on_gpu(q), on_gpu(k), on_gpu(v), c.span, out_got, lse_got);
        EXPECT_CLOSE(out_got, out_want, kReductionTol);
        EXPECT_CLOSE(lse_got, lse_want, kReductionTol);
        Tensor grad_out = rng.normal(q.shape());
        Tensor gq_w = Tensor::empty(q.shape()), gk_w = Tensor::empty(k.shape()), gv_w = Tensor::empty(v.shape());
        Tensor gq_g = poisoned(q.shape()), gk_g = poisoned(k.shape()), gv_g = poisoned(v.shape());
        cpu().attention_backward(q, k, v, out_want, lse_want, grad_out, c.span, gq_w, gk_w, gv_w);
        gpu().attention_backward(on_gpu(q), on_gpu(k), on_gpu(v), on_gpu(out_want), on_gpu(lse_want), on_gpu(grad_out), c.span,
                                 gq_g, gk_g, gv_g);
        EXPECT_CLOSE(gq_g, gq_w, kReductionTol);
        EXPECT_CLOSE(gk_g, gk_w, kReductionTol);
        EXPECT_CLOSE(gv_g, gv_w, kReductionTol);
    }
}

// Scores whose CPU (double) and GPU (f32) rankings may legitimately differ only when two
// candidates are within float rounding of each other; random normal inputs make such
// near-ties rare. Each row's selection is a set listed by chunk index, so one swapped pair
// shifts the positions of others: rows are compared as sets, and a difference is accepted
// only when every chunk selected by one side alone scores within 1e-4 of every chunk
// selected by the other side alone (both then sit at the K-th place), and the padding
// agrees exactly.
void expect_same_selection(const Tensor& got_gpu, const Tensor& want, const Tensor& qr, const Tensor& landmarks) {
    std::vector<float> got = got_gpu.to_vector(), ref = want.to_vector();
    const int64_t Hr = qr.size(2), dr = qr.size(3), C = landmarks.size(1), T = qr.size(1), K = want.size(3);
    const float* q = qr.data<float>();
    const float* l = landmarks.data<float>();
    auto score = [&](int64_t b, int64_t t, int64_t r, int64_t c) {
        double s = 0;
        for (int64_t i = 0; i < dr; ++i) s += static_cast<double>(q[((b * T + t) * Hr + r) * dr + i]) * l[((b * C + c) * Hr + r) * dr + i];
        return s / std::sqrt(static_cast<double>(dr));
    };
    int64_t hard_mismatches = 0, near_ties = 0;
    const int64_t rows = static_cast<int64_t>(ref.size()) / K;
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t r = row % Hr, t = (row / Hr) % T, b = row / (Hr * T);
        std::vector<int64_t> got_set, ref_set;
        for (int64_t k = 0; k < K; ++k) {
            got_set.push_back(static_cast<int64_t>(got[static_cast<size_t>(row * K + k)]));
            ref_set.push_back(static_cast<int64_t>(ref[static_cast<size_t>(row * K + k)]));
        }
        if (got_set == ref_set) continue;
        std::vector<int64_t> only_got, only_ref;
        for (int64_t c : got_set)
            if (std::find(ref_set.begin(), ref_set.end(), c) == ref_set.end()) only_got.push_back(c);
        for (int64_t c : ref_set)
            if (std::find(got_set.begin(), got_set.end(), c) == got_set.end()) only_ref.push_back(c);
        bool tie = !only_got.empty() && only_got.size() == only_ref.size();
        for (int64_t a : only_got)
            for (int64_t c : only_ref)
                tie = tie && a >= 0 && c >= 0 && std::fabs(score(b, t, r, a) - score(b, t, r, c)) <= 1e-4;
        if (tie) {
            ++near_ties;
        } else if (hard_mismatches++ < 3) {
            ADD_FAILURE() << "row " << row << " (b " << b << ", t " << t << ", r " << r << "): " << only_got.size()
                          << " chunk(s) only in the GPU selection, " << only_ref.size() << " only in the CPU's";
        }
    }
    EXPECT_EQ(hard_mismatches, 0) << "selected chunks differ beyond near-ties (" << near_ties << " near-tie rows accepted)";
}

TEST(CudaOps, RetrievalSelectionAndWeights) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    struct Case { int64_t B, T, Hr, dr, S, K; };
    // Up to 256 visible chunks (and dr % 4 == 0) the selection runs the tiled kernel (64
    // tokens a block); beyond, or with dr 30, the per-row streaming kernel.
    for (const Case& c : {Case{2, 37, 1, 8, 4, 3}, Case{1, 200, 2, 16, 8, 8}, Case{1, 4096, 1, 64, 64, 8},
                          Case{1, 256, 1, 1024, 16, 4}, Case{1, 200, 2, 1500, 8, 4}, Case{1, 1200, 1, 30, 4, 8},
                          Case{1, 70000, 1, 32, 64, 16}}) {
        SCOPED_TRACE("T " + std::to_string(c.T) + " K " + std::to_string(c.K));
        if (small_only() && c.T > 1000) continue;
        const int64_t C = c.T / c.S;
        Tensor qr = rng.normal({c.B, c.T, c.Hr, c.dr}), landmarks = rng.normal({c.B, C, c.Hr, c.dr});
        Tensor idx_want = Tensor::empty({c.B, c.T, c.Hr, c.K}, DType::I32), idx_got = poisoned({c.B, c.T, c.Hr, c.K}, DType::I32);
        cpu().select_chunks(qr, landmarks, c.S, idx_want);
        gpu().select_chunks(on_gpu(qr), on_gpu(landmarks), c.S, idx_got);
        expect_same_selection(idx_got, idx_want, qr, landmarks);
        if (c.T > 5000) continue;  // the weights' cost is independent of C; small cases suffice
        for (WeightKind kind : {WeightKind::Softmax, WeightKind::StickBreak}) {
            Tensor w_want = Tensor::empty(idx_want.shape()), w_got = poisoned(idx_want.shape());
            cpu().chunk_weights_forward(qr, landmarks, idx_want, kind, w_want);
            gpu().chunk_weights_forward(on_gpu(qr), on_gpu(landmarks), on_gpu(idx_want), kind, w_got);
            EXPECT_CLOSE(w_got, w_want, kReductionTol);
            Tensor gw = rng.normal(idx_want.shape());
            Tensor gq_w = Tensor::empty(qr.shape()), gl_w = Tensor::empty(landmarks.shape());
            Tensor gq_g = poisoned(qr.shape()), gl_g = poisoned(landmarks.shape());
            cpu().chunk_weights_backward(qr, landmarks, idx_want, kind, w_want, gw, gq_w, gl_w);
            gpu().chunk_weights_backward(on_gpu(qr), on_gpu(landmarks), on_gpu(idx_want), kind, on_gpu(w_want), on_gpu(gw), gq_g, gl_g);
            EXPECT_CLOSE(gq_g, gq_w, kReductionTol);
            EXPECT_CLOSE(gl_g, gl_w, kReductionTol);
            // The landmark gradient cuts busy chunks into work items (partials added in item
            // order, no atomics): a second run gives the same bits.
            Tensor gq_again = poisoned(qr.shape()), gl_again = poisoned(landmarks.shape());
            gpu().chunk_weights_backward(on_gpu(qr), on_gpu(landmarks), on_gpu(idx_want), kind, on_gpu(w_want), on_gpu(gw),
                                         gq_again, gl_again);
            EXPECT_EQ(gl_again.to_vector(), gl_g.to_vector()) << "grad_landmarks differs between two runs";
        }
    }
}

TEST(CudaOps, HsaForwardBackward) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (const HsaCase& c : {HsaCase{2, 23, 4, 2, 1, 8, 4, 3}, HsaCase{1, 50, 8, 4, 2, 16, 4, 4},
                             HsaCase{1, 40, 4, 2, 2, 16, 8, 8}, HsaCase{1, 1024, 16, 1, 1, 64, 64, 8},
                             HsaCase{1, 512, 16, 1, 1, 128, 64, 8}}) {
        SCOPED_TRACE("T " + std::to_string(c.T) + " d " + std::to_string(c.d) + " K " + std::to_string(c.K));
        if (small_only() && c.T > 100) continue;
        const auto [q, kmem, vmem, indices, weights] = random_hsa_inputs(rng, c);
        Tensor out_want = Tensor::empty(q.shape()), lse_want = Tensor::empty({c.B, c.T, c.H, c.K});
        Tensor out_got = poisoned(q.shape()), lse_got = poisoned({c.B, c.T, c.H, c.K});
        cpu().hsa_forward(q, kmem, vmem, indices, weights, c.S, out_want, lse_want);
        gpu().hsa_forward(on_gpu(q), on_gpu(kmem), on_gpu(vmem), on_gpu(indices), on_gpu(weights), c.S, out_got, lse_got);
        EXPECT_CLOSE(out_got, out_want, kReductionTol);
        EXPECT_CLOSE(lse_got, lse_want, kReductionTol);
        Tensor grad_out = rng.normal(q.shape());
        Tensor gq_w = Tensor::empty(q.shape()), gk_w = Tensor::empty(kmem.shape()), gv_w = Tensor::empty(vmem.shape()),
               gw_w = Tensor::empty(weights.shape());
        Tensor gq_g = poisoned(q.shape()), gk_g = poisoned(kmem.shape()), gv_g = poisoned(vmem.shape()),
               gw_g = poisoned(weights.shape());
        cpu().hsa_backward(q, kmem, vmem, indices, weights, c.S, lse_want, grad_out, gq_w, gk_w, gv_w, gw_w);
        gpu().hsa_backward(on_gpu(q), on_gpu(kmem), on_gpu(vmem), on_gpu(indices), on_gpu(weights), c.S, on_gpu(lse_want),
                           on_gpu(grad_out), gq_g, gk_g, gv_g, gw_g);
        EXPECT_CLOSE(gq_g, gq_w, kReductionTol);
        EXPECT_CLOSE(gk_g, gk_w, kReductionTol);
        EXPECT_CLOSE(gv_g, gv_w, kReductionTol);
        EXPECT_CLOSE(gw_g, gw_w, kReductionTol);
    }
}

// ------------------------------------------------------------------ RMSNorm then RoPE fused

// The fused GPU kernels against the CPU composition rope(rmsnorm(x)) at every head dim the
// fused path takes (16, 32, 64, 128) plus one it does not (d 12: the composed GPU ops),
// with and without a weight, a position offset of a long evaluation, ragged row counts,
// and grad_x accumulated into an existing buffer. f32 rotation and norm against the double
// reference: <= kReductionTol (relative L2).
TEST(CudaOps, RmsnormRopeMatchesCpuComposition) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int64_t d : {16, 32, 64, 128, 12}) {
        for (bool with_weight : {true, false}) {
            SCOPED_TRACE("d " + std::to_string(d) + (with_weight ? " weighted" : " no weight"));
            const Shape shape{2, 37, 3, d};
            const int64_t offset = 1000003;
            Tensor x = rng.normal(shape), w = with_weight ? rng.normal({d}) : Tensor(), g = rng.normal(shape);
            Tensor base = rng.normal(shape);
            const int64_t N = 2 * 37 * 3;
            // CPU: the composition.
            Tensor normed = Tensor::empty(shape), inv_want = Tensor::empty({N}), out_want = Tensor::empty(shape);
            Tensor normed_flat = normed.view({N, d});
            cpu().rmsnorm_forward(x.view({N, d}), w, 1e-6f, normed_flat, inv_want);
            cpu().rope_forward(normed, offset, 10000.0f, out_want);
            Tensor g_normed = Tensor::empty(shape);
            cpu().rope_backward(g, offset, 10000.0f, g_normed);
            Tensor gx_want = base.clone().view({N, d}), gw_want = with_weight ? Tensor::empty({d}) : Tensor();
            cpu().rmsnorm_backward(x.view({N, d}), w, inv_want, g_normed.view({N, d}), gx_want, gw_want, true);
            // GPU: the fused op's backend methods.
            Tensor out_got = poisoned(shape), inv_got = poisoned({N});
            gpu().rmsnorm_rope_forward(on_gpu(x), on_gpu(w), 1e-6f, offset, 10000.0f, out_got, inv_got);
            EXPECT_CLOSE(out_got, out_want, kReductionTol);
            EXPECT_CLOSE(inv_got, inv_want, kReductionTol);
            // A bf16 out (q / k for the attention at bf16 precision): the f32 out rounded to
            // nearest even, bit for bit, with the same inv_rms (the fused kernel's bf16 store,
            // and at d 12 the composition rounded after).
            Tensor out16 = poisoned(shape, DType::BF16), inv16 = poisoned({N});
            gpu().rmsnorm_rope_forward(on_gpu(x), on_gpu(w), 1e-6f, offset, 10000.0f, out16, inv16);
            EXPECT_EQ(out16.to_vector(), test::rounded_to_bf16(out_got).to_vector());
            EXPECT_EQ(inv16.to_vector(), inv_got.to_vector());
            Tensor gx_got = on_gpu(base), gw_got = with_weight ? poisoned({d}) : Tensor();
            gpu().rmsnorm_rope_backward(on_gpu(x), on_gpu(w), on_gpu(inv_want), offset, 10000.0f, on_gpu(g), gx_got,
                                        gw_got, true);
            EXPECT_CLOSE(gx_got, gx_want.view(shape), kReductionTol);
            if (with_weight) {
                EXPECT_CLOSE(gw_got, gw_want, kReductionTol);
            }
        }
    }
}

// ops::linear_rmsnorm_rope on the GPU against the composition rmsnorm_rope(reshape(linear))
// on the GPU: the output and every gradient (x, W, the norm weight) bit for bit, at bf16
// precision (where the fused op's backward writes only the bf16 gradient of the projection,
// the rounding the composition's product makes of its f32 one; q stored in bf16 as the
// model does) and at f32 precision; x f32 and, as the model's normalised input, bf16; head
// dims 64 (the fused kernels) and 12 (the composed ones); 600 rows (the product in bf16)
// and 602 (not a multiple of 8: the product multiplies f32, so the gradient stays f32).
// x's gradient is accumulated into (x feeds a second product). Then the backend method
// itself: a bf16 gradient exactly where the fused kernels run at bf16 precision.
TEST(CudaOps, LinearRmsnormRopeEqualsTheComposition) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
        for (auto [d, T] : std::vector<std::pair<int64_t, int64_t>>{{64, 300}, {12, 300}, {64, 301}}) {
            for (DType x_dtype : {DType::F32, DType::BF16}) {
                if (x_dtype == DType::BF16 && precision != MatmulPrecision::BF16) continue;
                SCOPED_TRACE(std::string(matmul_precision_name(precision)) + " d " + std::to_string(d) + " T " +
                             std::to_string(T) + " x " + dtype_name(x_dtype));
                MatmulPrecisionScope scope(precision);
                const int64_t B = 2, Din = 128, heads = 4;
                const DType out_dtype = precision == MatmulPrecision::BF16 ? DType::BF16 : DType::F32;
                Tensor x0 = on_gpu(test::rounded_to_bf16(rng.normal({B, T, Din})));
                Tensor w0 = on_gpu(rng.normal({Din, heads * d}, 0.1f)), n0 = on_gpu(rng.normal({d}));
                // The loss reads out through a product (which takes a bf16 out as the model's
                // attention does) and x through a second one.
                Tensor readout = on_gpu(rng.normal({heads * d, 8})), other = on_gpu(rng.normal({Din, 16}));
                auto run = [&](bool fused, std::vector<Tensor>& grads) {
                    Tensor x = x_dtype == DType::F32 ? x0.clone() : x0.to(x_dtype), w = w0.clone(), norm = n0.clone();
                    for (Tensor* t : {&x, &w, &norm}) t->set_requires_grad(true);
                    Tensor out = fused ? ops::linear_rmsnorm_rope(x, w, heads, norm, 1e-6f, 5, 500.0f, out_dtype)
                                       : ops::rmsnorm_rope(ops::reshape(ops::linear(x, w), {B, T, heads, d}), norm,
                                                           1e-6f, 5, 500.0f, out_dtype);
                    const Tensor read = ops::linear(ops::reshape(out, {B * T, heads * d}), readout);
                    const Tensor side = ops::linear(x, other);
                    backward(ops::add(ops::sum(ops::mul(read, read)), ops::sum(ops::mul(side, side))));
                    grads = {x.grad(), w.grad(), norm.grad()};
                    return out;
                };
                std::vector<Tensor> fused_grads, plain_grads;
                const Tensor fused = run(true, fused_grads), plain = run(false, plain_grads);
                EXPECT_EQ(fused.dtype(), out_dtype);
                EXPECT_EQ(fused.to_vector(), plain.to_vector());
                for (size_t i = 0; i < fused_grads.size(); ++i) {
                    ASSERT_TRUE(fused_grads[i].defined() && plain_grads[i].defined()) << i;
                    EXPECT_EQ(fused_grads[i].to_vector(), plain_grads[i].to_vector()) << "gradient " << i;
                }
            }
        }
    }
    // The backend method: bf16 on the fused path at bf16 precision, f32 off it (d 12) or at f32.
    for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
        for (int64_t d : {64, 12}) {
            MatmulPrecisionScope scope(precision);
            const Shape shape{2, 37, 3, d};
            Tensor x = on_gpu(rng.normal(shape)), w = on_gpu(rng.normal({d})), g = on_gpu(rng.normal(shape));
            Tensor out = poisoned(shape), inv = poisoned({2 * 37 * 3}), gw = poisoned({d}), gw_plain = poisoned({d});
            gpu().rmsnorm_rope_forward(x, w, 1e-6f, 0, 10000.0f, out, inv);
            const Tensor operand = gpu().rmsnorm_rope_backward_operand(x, w, inv, 0, 10000.0f, g, gw);
            const bool fused_bf16 = precision == MatmulPrecision::BF16 && d == 64;
            EXPECT_EQ(operand.dtype(), fused_bf16 ? DType::BF16 : DType::F32) << "d " << d;
            Tensor gx = poisoned(shape);
            gpu().rmsnorm_rope_backward(x, w, inv, 0, 10000.0f, g, gx, gw_plain, false);
            EXPECT_EQ(operand.to_vector(), (fused_bf16 ? test::rounded_to_bf16(gx) : gx).to_vector()) << "d " << d;
            EXPECT_EQ(gw.to_vector(), gw_plain.to_vector()) << "d " << d;
        }
    }
}

// ------------------------------------------------------------------ residual add + RMSNorm fused

// Backend::add_rmsnorm_forward on the GPU against the CPU's add then rmsnorm: wide rows
// (the fused kernel: D 1024, 520) and others (the composed path: D 64, 100), with and
// without a weight; sum exact (one f32 add), out and inv_rms to the reduction tolerance.
// Then ops::add_rmsnorm on the GPU against add then rmsnorm on the GPU: bit-identical
// outputs and gradients (the fused kernel adds and normalises exactly as the two kernels).
TEST(CudaOps, AddRmsnormMatchesCpuAndSeparateOps) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int64_t D : {1024, 520, 64, 100}) {
        for (bool weighted : {true, false}) {
            SCOPED_TRACE("D " + std::to_string(D) + (weighted ? " weighted" : " no weight"));
            const int64_t N = 37;
            Tensor x = rng.normal({N, D}), a = rng.normal({N, D}), w = weighted ? rng.normal({D}) : Tensor();
            Tensor sum_want = Tensor::empty({N, D}), out_want = Tensor::empty({N, D}), inv_want = Tensor::empty({N});
            cpu().add(x, a, sum_want);
            cpu().rmsnorm_forward(sum_want, w, 1e-5f, out_want, inv_want);
            Tensor sum_got = poisoned({N, D}), out_got = poisoned({N, D}), inv_got = poisoned({N});
            gpu().add_rmsnorm_forward(on_gpu(x), on_gpu(a), on_gpu(w), 1e-5f, sum_got, out_got, inv_got);
            EXPECT_EQ(sum_got.to_vector(), sum_want.to_vector());
            EXPECT_CLOSE(out_got, out_want, kReductionTol);
            EXPECT_CLOSE(inv_got, inv_want, kReductionTol);

            Tensor proj_sum = on_gpu(rng.normal({2, N, D})), proj_norm = on_gpu(rng.normal({2, N, D}));
            Tensor x3 = rng.normal({2, N, D}), a3 = rng.normal({2, N, D});
            auto run = [&](bool fused, std::vector<Tensor>& grads) {
                std::vector<Tensor> in{on_gpu(x3), on_gpu(a3)};
                if (weighted) in.push_back(on_gpu(w));
                for (auto& t : in) t.set_requires_grad(true);
                Tensor sum, normed;
                const Tensor weight = weighted ? in[2] : Tensor();
                if (fused) std::tie(sum, normed) = ops::add_rmsnorm(in[0], in[1], weight, 1e-5f);
                else {
                    sum = ops::add(in[0], in[1]);
                    normed = ops::rmsnorm(sum, weight, 1e-5f);
                }
                backward(ops::add(ops::sum(ops::mul(sum, proj_sum)), ops::sum(ops::mul(normed, proj_norm))));
                grads.clear();
                for (auto& t : in) grads.push_back(t.grad());
                return std::vector<Tensor>{sum, normed};
            };
            std::vector<Tensor> fused_grads, plain_grads;
            const auto fused = run(true, fused_grads), plain = run(false, plain_grads);
            for (size_t i = 0; i < 2; ++i) EXPECT_EQ(fused[i].to_vector(), plain[i].to_vector()) << (i ? "normed" : "sum");
            for (size_t i = 0; i < fused_grads.size(); ++i)
                EXPECT_EQ(fused_grads[i].to_vector(), plain_grads[i].to_vector()) << "input " << i;
        }
    }
}

// rmsnorm_backward_rounded: on the wide rows' path at bf16 precision the CUDA backend
// returns grad_x's values rounded to bf16 (written or accumulated, weighted or not), bit for
// bit what rounding grad_x would give, and grad_x itself as rmsnorm_backward writes it;
// elsewhere (narrow rows, f32 precision) nothing. Then, end to end: the attention output's
// product takes the residual gradient's held copy, and its gradients must have the bits of
// the same graph with the copy lost on the way (a multiply by one, whose gradient is a
// fresh buffer, makes the product round the gradient itself).
TEST(CudaOps, RmsnormBackwardRoundsTheResidualGradientOnce) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
        MatmulPrecisionScope scope(precision);
        for (int64_t D : {1024, 64}) {
            for (bool accumulate : {false, true}) {
                SCOPED_TRACE("D " + std::to_string(D) + (accumulate ? " accumulate" : "") + " precision " +
                             matmul_precision_name(precision));
                const int64_t N = 45;
                Tensor x = on_gpu(rng.normal({N, D})), w = on_gpu(rng.normal({D})), g = on_gpu(rng.normal({N, D}));
                Tensor inv = poisoned({N}), normed = poisoned({N, D});
                gpu().rmsnorm_forward(x, w, 1e-5f, normed, inv);
                const Tensor start = rng.normal({N, D});
                Tensor gx_want = accumulate ? on_gpu(start) : poisoned({N, D}), gw_want = poisoned({D});
                Tensor gx_got = accumulate ? on_gpu(start) : poisoned({N, D}), gw_got = poisoned({D});
                gpu().rmsnorm_backward(x, w, inv, g, gx_want, gw_want, accumulate);
                const Tensor rounded = gpu().rmsnorm_backward_rounded(x, w, inv, g, gx_got, gw_got, accumulate);
                EXPECT_EQ(gx_got.to_vector(), gx_want.to_vector());
                EXPECT_EQ(gw_got.to_vector(), gw_want.to_vector());
                if (D == 1024 && precision == MatmulPrecision::BF16) {
                    ASSERT_TRUE(rounded.defined());
                    EXPECT_EQ(rounded.dtype(), DType::BF16);
                    EXPECT_EQ(rounded.to_vector(), test::rounded_to_bf16(gx_want).to_vector());
                } else {
                    EXPECT_FALSE(rounded.defined());
                }
            }
        }
    }
    MatmulPrecisionScope bf16(MatmulPrecision::BF16);
    const int64_t N = 64, D = 1024;
    const Tensor o0 = rng.normal({N, D}), w0 = rng.normal({D, D}, 0.03f), x0 = rng.normal({N, D});
    const Tensor nw0 = rng.normal({D}), proj0 = rng.normal({N, D});
    {  // the op attaches the copy: a leaf keeps its gradient (and the copy) after backward
        Tensor x = on_gpu(x0);
        x.set_requires_grad(true);
        backward(ops::sum(ops::mul(ops::rmsnorm(x, on_gpu(nw0), 1e-5f), on_gpu(proj0))));
        const Tensor held_copy = x.grad().rounded_copy();
        ASSERT_TRUE(held_copy.defined()) << "rmsnorm's backward attached no bf16 copy";
        EXPECT_EQ(held_copy.to_vector(), test::rounded_to_bf16(x.grad()).to_vector());
    }
    auto run = [&](bool lose_copy) {
        std::vector<Tensor> in{on_gpu(o0), on_gpu(w0), on_gpu(x0), on_gpu(nw0)};
        for (auto& t : in) t.set_requires_grad(true);
        Tensor a = ops::linear(in[0], in[1]);
        if (lose_copy) a = ops::mul(a, on_gpu(Tensor::full({N, D}, 1.0f)));
        const auto [sum, normed] = ops::add_rmsnorm(in[2], a, in[3], 1e-5f);
        backward(ops::add(ops::sum(ops::mul(normed, on_gpu(proj0))), ops::sum(sum)));
        std::vector<std::vector<float>> grads;
        for (auto& t : in) grads.push_back(t.grad().to_vector());
        return grads;
    };
    const auto held = run(false), rounded_again = run(true);
    const char* names[] = {"o", "w", "x", "norm weight"};
    for (size_t i = 0; i < held.size(); ++i) EXPECT_EQ(held[i], rounded_again[i]) << names[i];

    // The q path: rmsnorm_rope's backward rounds q's gradient for the q projection.
    const int64_t B = 2, T = 24, H = 4, d = 64;
    const Tensor q0 = rng.normal({B, T, H, d}), qw0 = rng.normal({d}), gq0 = rng.normal({B, T, H, d});
    for (bool accumulate : {false, true}) {
        SCOPED_TRACE(accumulate ? "rmsnorm_rope accumulate" : "rmsnorm_rope");
        Tensor q = on_gpu(q0), qw = on_gpu(qw0), g = on_gpu(gq0), inv = poisoned({B * T * H});
        Tensor out = poisoned({B, T, H, d});
        gpu().rmsnorm_rope_forward(q, qw, 1e-5f, 0, 10000.0f, out, inv);
        const Tensor start = rng.normal({B, T, H, d});
        Tensor gx_want = accumulate ? on_gpu(start) : poisoned({B, T, H, d}), gw_want = poisoned({d});
        Tensor gx_got = accumulate ? on_gpu(start) : poisoned({B, T, H, d}), gw_got = poisoned({d});
        gpu().rmsnorm_rope_backward(q, qw, inv, 0, 10000.0f, g, gx_want, gw_want, accumulate);
        const Tensor rounded =
            gpu().rmsnorm_rope_backward_rounded(q, qw, inv, 0, 10000.0f, g, gx_got, gw_got, accumulate);
        EXPECT_EQ(gx_got.to_vector(), gx_want.to_vector());
        EXPECT_EQ(gw_got.to_vector(), gw_want.to_vector());
        ASSERT_TRUE(rounded.defined());
        EXPECT_EQ(rounded.to_vector(), test::rounded_to_bf16(gx_want).to_vector());
    }
    const Tensor xn0 = rng.normal({B, T, D}), wq0 = rng.normal({D, H * d}, 0.03f);
    auto run_q = [&](bool lose_copy) {
        std::vector<Tensor> in{on_gpu(xn0), on_gpu(wq0), on_gpu(qw0)};
        for (auto& t : in) t.set_requires_grad(true);
        Tensor q = ops::reshape(ops::linear(in[0], in[1]), {B, T, H, d});
        if (lose_copy) q = ops::mul(q, on_gpu(Tensor::full({B, T, H, d}, 1.0f)));
        backward(ops::sum(ops::mul(ops::rmsnorm_rope(q, in[2], 1e-5f, 0, 10000.0f), on_gpu(gq0))));
        std::vector<std::vector<float>> grads;
        for (auto& t : in) grads.push_back(t.grad().to_vector());
        return grads;
    };
    const auto q_held = run_q(false), q_rounded_again = run_q(true);
    const char* q_names[] = {"xn", "wq", "q norm weight"};
    for (size_t i = 0; i < q_held.size(); ++i) EXPECT_EQ(q_held[i], q_rounded_again[i]) << q_names[i];
}

// ------------------------------------------------------------------ bf16 operands

// A normalised activation stored as bf16 (rmsnorm / add_rmsnorm out_dtype bf16) must hold
// exactly the rounded f32 result, and the products must take it as the same values they
// would round themselves: at bf16 precision with dims on the bf16 path, linear and
// swiglu_mlp on the bf16 activation give the bits of the f32 one (output and every
// gradient, the activation's gradient f32). Off the bf16 path (a dim not a multiple of 8,
// or f32 precision) the operand is widened back to f32 exactly: the same bits as the f32
// product of the rounded values.
TEST(CudaOps, Bf16OperandsGiveTheBitsOfRoundedF32) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int64_t D : {1024, 64, 100}) {
        SCOPED_TRACE("D " + std::to_string(D));
        const int64_t N = 24;
        Tensor x = on_gpu(rng.normal({N, D})), a = on_gpu(rng.normal({N, D})), w = on_gpu(rng.normal({D}));
        Tensor out32 = poisoned({N, D}), inv32 = poisoned({N}), out16 = poisoned({N, D}, DType::BF16), inv16 = poisoned({N});
        gpu().rmsnorm_forward(x, w, 1e-5f, out32, inv32);
        gpu().rmsnorm_forward(x, w, 1e-5f, out16, inv16);
        EXPECT_EQ(out16.to_vector(), test::rounded_to_bf16(out32).to_vector());
        EXPECT_EQ(inv16.to_vector(), inv32.to_vector());
        Tensor sum32 = poisoned({N, D}), sum16 = poisoned({N, D});
        gpu().add_rmsnorm_forward(x, a, w, 1e-5f, sum32, out32, inv32);
        gpu().add_rmsnorm_forward(x, a, w, 1e-5f, sum16, out16, inv16);
        EXPECT_EQ(sum16.to_vector(), sum32.to_vector());
        EXPECT_EQ(out16.to_vector(), test::rounded_to_bf16(out32).to_vector());
    }
    for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
        for (int64_t F : {96, 36}) {
            SCOPED_TRACE(std::string("precision ") + matmul_precision_name(precision) + " F " + std::to_string(F));
            MatmulPrecisionScope scope(precision);
            const int64_t B = 2, T = 40, D = 32;
            Tensor x0 = rng.normal({B, T, D}), nw0 = rng.normal({D}), w0 = rng.normal({D, F}), w1_0 = rng.normal({D, F}),
                   w3_0 = rng.normal({D, F}), w2_0 = rng.normal({F, D});
            Tensor proj_lin = on_gpu(rng.normal({B, T, F})), proj_mlp = on_gpu(rng.normal({B, T, D}));
            // The norm's output stored as `dtype`, then a linear and an MLP on it.
            auto run = [&](DType dtype, std::vector<Tensor>& grads) {
                std::vector<Tensor> in{on_gpu(x0), on_gpu(nw0), on_gpu(w0), on_gpu(w1_0), on_gpu(w3_0), on_gpu(w2_0)};
                for (auto& t : in) t.set_requires_grad(true);
                Tensor xn = ops::rmsnorm(in[0], in[1], 1e-5f, dtype);
                Tensor lin = ops::linear(xn, in[2]);
                Tensor mlp = ops::swiglu_mlp(xn, in[3], in[4], in[5]);
                backward(ops::add(ops::sum(ops::mul(lin, proj_lin)), ops::sum(ops::mul(mlp, proj_mlp))));
                grads.clear();
                for (auto& t : in) grads.push_back(t.grad());
                return std::vector<Tensor>{lin, mlp};
            };
            if (precision == MatmulPrecision::F32) {
                // The model never stores bf16 at f32 precision; the widening path must still
                // give the f32 product of the rounded values.
                std::vector<Tensor> g16;
                const auto o16 = run(DType::BF16, g16);
                NoGradGuard no_grad;
                const Tensor widened = on_gpu(test::rounded_to_bf16(ops::rmsnorm(on_gpu(x0), on_gpu(nw0), 1e-5f)));
                EXPECT_EQ(o16[0].to_vector(), ops::linear(widened, on_gpu(w0)).to_vector()) << "linear off the bf16 path";
                EXPECT_EQ(o16[1].to_vector(),
                          ops::swiglu_mlp(widened, on_gpu(w1_0), on_gpu(w3_0), on_gpu(w2_0)).to_vector())
                    << "mlp off the bf16 path";
                continue;
            }
            std::vector<Tensor> g16, g32;
            const auto o16 = run(DType::BF16, g16), o32 = run(DType::F32, g32);
            const bool on_path = F % 8 == 0;
            for (size_t i = 0; i < 2; ++i) {
                if (on_path) EXPECT_EQ(o16[i].to_vector(), o32[i].to_vector()) << (i ? "mlp" : "linear");
                else EXPECT_LE(relative_error(o16[i], o32[i]), 1e-2) << (i ? "mlp" : "linear");
            }
            const char* names[] = {"x", "norm weight", "w", "w1", "w3", "w2"};
            for (size_t i = 0; i < g16.size(); ++i) {
                ASSERT_TRUE(g16[i].defined()) << names[i];
                EXPECT_EQ(g16[i].dtype(), DType::F32) << names[i];
                if (on_path) EXPECT_EQ(g16[i].to_vector(), g32[i].to_vector()) << names[i];
                else EXPECT_LE(relative_error(g16[i], g32[i]), 1e-2) << names[i];
            }
        }
    }
}

// ------------------------------------------------------------------ SwiGLU MLP fused

// ops::swiglu_mlp on the GPU against the separate ops on the GPU. At f32 precision, and for
// F = 36 (not a multiple of 8, off the bf16 product path) at bf16 precision, the fused op
// composes the same backend calls: output and all four gradients bit-identical. At bf16
// precision with every dim a multiple of 8 the fused path keeps gate, up and the hidden
// gradient in bf16 (the separate ops keep them in f32 and round only the products'
// operands), so it is held to the bf16 rule instead: against the exact CPU composition its
// relative error is at most 2x that of the separate GPU ops (two to three more roundings
// of 2^-9 on top of the five the products already make) and at most 1e-2.
TEST(CudaOps, SwigluMlpEqualsSeparateOps) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int64_t F : {96, 36}) {
        for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
            SCOPED_TRACE("F " + std::to_string(F) + " precision " + matmul_precision_name(precision));
            MatmulPrecisionScope scope(precision);
            const int64_t B = 2, T = 40, D = 32;
            Tensor x0 = rng.normal({B, T, D}), w1_0 = rng.normal({D, F}), w3_0 = rng.normal({D, F});
            Tensor w2_0 = rng.normal({F, D}), projection0 = rng.normal({B, T, D});
            auto run = [&](bool fused, Device device, std::vector<Tensor>& grads) {
                auto place = [&](const Tensor& t) { return device == Device::CUDA ? on_gpu(t) : t.clone(); };
                std::vector<Tensor> in{place(x0), place(w1_0), place(w3_0), place(w2_0)};
                for (auto& t : in) t.set_requires_grad(true);
                Tensor out = fused ? ops::swiglu_mlp(in[0], in[1], in[2], in[3])
                                   : ops::linear(ops::swiglu(ops::linear(in[0], in[1]), ops::linear(in[0], in[2])), in[3]);
                backward(ops::sum(ops::mul(out, place(projection0))));
                grads.clear();
                for (auto& t : in) grads.push_back(t.grad());
                return out;
            };
            std::vector<Tensor> fused_grads, plain_grads, cpu_grads;
            Tensor fused = run(true, Device::CUDA, fused_grads), plain = run(false, Device::CUDA, plain_grads);
            const char* names[] = {"x", "w1", "w3", "w2"};
            const bool bf16_path = precision == MatmulPrecision::BF16 && F % 8 == 0;
            if (!bf16_path) {
                EXPECT_EQ(fused.to_vector(), plain.to_vector());
                for (size_t i = 0; i < 4; ++i)
                    EXPECT_EQ(fused_grads[i].to_vector(), plain_grads[i].to_vector()) << names[i];
                continue;
            }
            Tensor exact = run(false, Device::CPU, cpu_grads);
            const std::string label = "swiglu_mlp F " + std::to_string(F);
            test::expect_bf16_accurate(label, "out", fused, exact, plain, 1e-2, 2.0);
            for (size_t i = 0; i < 4; ++i)
                test::expect_bf16_accurate(label, names[i], fused_grads[i], cpu_grads[i], plain_grads[i], 1e-2, 2.0);
        }
    }
}

// The fused MLP's gradient bookkeeping on the GPU at bf16 precision (the grouped path, which
// adds into existing gradients by its own split pass for w1 / w3 and by beta = 1 for x and
// w2): a second backward into the same leaves must give exactly twice the first's gradients
// (x + x is exact), and a w1 that wants no gradient must leave w3's bits unchanged (F 96 on
// the grouped path, F 36 off it).
TEST(CudaOps, SwigluMlpAccumulatesAndSkipsGradients) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    MatmulPrecisionScope scope(MatmulPrecision::BF16);
    for (int64_t F : {96, 36}) {
        SCOPED_TRACE("F " + std::to_string(F));
        const int64_t B = 2, T = 40, D = 32;
        const Tensor x0 = rng.normal({B, T, D}), w1_0 = rng.normal({D, F}), w3_0 = rng.normal({D, F});
        const Tensor w2_0 = rng.normal({F, D}), projection = on_gpu(rng.normal({B, T, D}));
        // Gradients of x, w1, w3, w2 after `passes` backwards (w1's only when wanted).
        auto gradients = [&](int passes, bool want_w1) {
            std::vector<Tensor> in{on_gpu(x0), on_gpu(w1_0), on_gpu(w3_0), on_gpu(w2_0)};
            for (size_t i = 0; i < in.size(); ++i) in[i].set_requires_grad(i != 1 || want_w1);
            for (int p = 0; p < passes; ++p)
                backward(ops::sum(ops::mul(ops::swiglu_mlp(in[0], in[1], in[2], in[3]), projection)));
            std::vector<std::vector<float>> grads;
            for (const Tensor& t : in) grads.push_back(t.grad().defined() ? t.grad().to_vector() : std::vector<float>{});
            return grads;
        };
        const auto once = gradients(1, true), twice = gradients(2, true), no_w1 = gradients(1, false);
        const char* names[] = {"x", "w1", "w3", "w2"};
        for (size_t i = 0; i < 4; ++i) {
            std::vector<float> doubled = once[i];
            for (float& v : doubled) v *= 2.0f;
            EXPECT_EQ(twice[i], doubled) << names[i];
        }
        EXPECT_TRUE(no_w1[1].empty());
        EXPECT_EQ(no_w1[2], once[2]) << "w3";
        EXPECT_EQ(no_w1[3], once[3]) << "w2";
        EXPECT_EQ(no_w1[0], once[0]) << "x";
    }
}

// ops::linear on the GPU against reshape -> matmul on the GPU, both precisions, dims on and
// off the bf16 product path (k 40 / 36): linear rounds an f32 input once and keeps the copy
// for the weight gradient (Backend::product_operand), and adds a second product's input
// gradient in place (beta = 1); gemm rounds the same input inside each product and the
// reshape adds with a pass of its own. Output and all three gradients bit-identical.
TEST(CudaOps, LinearEqualsReshapedMatmul) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int64_t k : {40, 36}) {
        for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
            SCOPED_TRACE("k " + std::to_string(k) + " precision " + matmul_precision_name(precision));
            MatmulPrecisionScope scope(precision);
            // x feeds both products; their outputs side by side.
            auto both = [k](bool as_linear) {
                return [as_linear, k](const std::vector<Tensor>& in) {
                    auto product = [&](const Tensor& w) {
                        return as_linear ? ops::reshape(ops::linear(in[0], w), {-1, w.size(1)})
                                         : ops::matmul(ops::reshape(in[0], {-1, k}), w);
                    };
                    return ops::concat({product(in[1]), product(in[2])}, 1);
                };
            };
            expect_same_bits(both(true), both(false),
                             {on_gpu(rng.normal({2, 24, k})), on_gpu(rng.normal({k, 32})), on_gpu(rng.normal({k, 16}))},
                             on_gpu(rng.normal({48, 48})), {"x", "wa", "wb"});
        }
    }
}

// The residual added by the MLP's last product (cuBLASLt's C, beta = 1) against add after
// the MLP, on the GPU, both precisions, on and off the bf16 product path: the epilogue adds
// the product's f32 value to the residual with one rounding, as add does, so the output and
// all five gradients must be bit-identical.
TEST(CudaOps, SwigluMlpResidualEqualsAdd) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    for (int64_t F : {96, 36}) {
        for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
            SCOPED_TRACE("F " + std::to_string(F) + " precision " + matmul_precision_name(precision));
            MatmulPrecisionScope scope(precision);
            const int64_t B = 2, T = 40, D = 32;
            expect_same_bits(
                [](const std::vector<Tensor>& in) { return ops::swiglu_mlp(in[0], in[1], in[2], in[3], in[4]); },
                [](const std::vector<Tensor>& in) { return ops::add(in[4], ops::swiglu_mlp(in[0], in[1], in[2], in[3])); },
                {on_gpu(rng.normal({B, T, D})), on_gpu(rng.normal({D, F})), on_gpu(rng.normal({D, F})),
                 on_gpu(rng.normal({F, D})), on_gpu(rng.normal({B, T, D}))},
                on_gpu(rng.normal({B, T, D})), {"x", "w1", "w3", "w2", "residual"});
        }
    }
}

// GEMM autotuning (kernels/gemm.cu) keeps only algorithms whose output has the bits of
// cuBLASLt's first choice, so a product big enough to be tuned (2 M N K >= 1e10) gives the
// same bits with tuning on and off: writing in place; accumulating (a plan of its own, whose
// trials run into scratch, so the output is added to exactly once); and with a bf16 output
// of at least 2^26 elements (smaller bf16 outputs are not tuned). The shapes are used by no
// other test, so the plans are new.

TEST(CudaOps, GemmAutotuningKeepsTheHeuristicsBits) {
#ifndef HSA_WITH_CUDA_KERNELS
    GTEST_SKIP() << "no GPU: this build has no CUDA kernels";
#else
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    MatmulPrecisionScope scope(MatmulPrecision::BF16);
    const bool was_on = gemm_autotuning();
    const int64_t M = 2056, N = 1544, K = 2048;  // 2 M N K = 1.3e10
    const Tensor a = on_gpu(rng.normal({M, K})), b = on_gpu(rng.normal({N, K}));  // b used transposed
    const int64_t M16 = 8192, N16 = 8200, K16 = 256;  // 67.2M bf16 outputs, 2 M N K = 3.4e10
    const Tensor a16 = on_gpu(rng.normal({M16, K16})).to(DType::BF16), b16 = on_gpu(rng.normal({K16, N16})).to(DType::BF16);
    const Tensor start = on_gpu(rng.normal({M, N}));
    std::vector<float> out[2], sum[2], out16[2];
    for (bool tuned : {false, true}) {
        set_gemm_autotuning(tuned);
        Tensor o = poisoned({M, N}), acc = start.clone(), o16 = poisoned({M16, N16}, DType::BF16);
        gpu().gemm(a, false, b, true, o, false);
        gpu().gemm(a, false, b, true, acc, true);
        gemm_of_bf16(a16, false, b16, false, o16, false);
        out[tuned] = o.to_vector();
        sum[tuned] = acc.to_vector();
        out16[tuned] = o16.to_vector();
    }
    set_gemm_autotuning(was_on);
    EXPECT_EQ(out[1], out[0]);
    EXPECT_EQ(sum[1], sum[0]);
    EXPECT_EQ(out16[1], out16[0]);
    const std::vector<float> begin = start.to_vector();
    // Within f32 rounding of start + out (an algorithm may add C to partial sums): a trial
    // that reached the real output would have added the product 2 or more times.
    size_t wrong = 0;
    for (size_t i = 0; i < begin.size(); ++i)
        wrong += std::fabs(sum[1][i] - (begin[i] + out[1][i])) > 1e-5f * (std::fabs(begin[i]) + std::fabs(out[1][i]));
    EXPECT_EQ(wrong, 0u) << "accumulating products must add the product to the output once";
#endif
}

// ------------------------------------------------------------------ head + loss fused

// ops::linear_cross_entropy on the GPU against matmul then cross_entropy on the GPU, at both
// precisions, tied and untied heads. The fused op writes the logits gradient (at grad_loss 1)
// over its logits in the forward and only multiplies in the backward, in bf16 when its logits
// are (dims multiples of 8 at bf16 precision), else in f32 through gemm_backward like the
// unfused path.
// - At bf16 precision with every dim a multiple of 8 (V = 200) the fused op stores its logits
//   in bf16 (Backend::head_logits): it sees z' with |z'_v - z_v| <= u |z_v| (u = 2^-8, bf16's
//   unit roundoff) where the unfused path sees the f32 product z. Each row's nll then moves by
//   at most 2 u max|z| (its lse and its target's logit by u max|z| each), so the loss does;
//   each probability moves by a factor within exp(+-2 u max|z|), which bounds the gradients'
//   relative difference by exp(2 u max|z|) - 1, plus 2u for the bf16 rounding of the logits
//   gradient that both paths apply (at different points). Logits are ~N(0, 1) here.
// - Elsewhere (f32 precision, or V = 203, off the bf16 path) the fused op's logits are the f32
//   ones: loss and gradients bit-identical.
// - With x frozen (only the weight's gradient wanted) the weight gradient is the fused run's,
//   bit for bit: the same gradient, the same product.
TEST(CudaOps, LinearCrossEntropyEqualsMatmulThenCrossEntropy) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    constexpr double u = 1.0 / 256.0;
    for (int64_t V : {200, 203}) {
        for (bool tied : {false, true}) {
            for (MatmulPrecision precision : {MatmulPrecision::BF16, MatmulPrecision::F32}) {
                SCOPED_TRACE("V " + std::to_string(V) + (tied ? " tied" : " untied") + " precision " +
                             matmul_precision_name(precision));
                MatmulPrecisionScope scope(precision);
                const int64_t N = 64, D = 32;
                const float w_scale = 1.0f / std::sqrt(static_cast<float>(D));
                Tensor x0 = rng.normal({N, D}), w0 = tied ? rng.normal({V, D}, w_scale) : rng.normal({D, V}, w_scale);
                std::vector<int32_t> ids(static_cast<size_t>(N));
                for (auto& id : ids) id = static_cast<int32_t>(rng.next_int(0, V));
                ids[5] = -1;  // ignored
                Tensor targets = Tensor::from_vector_i32(ids, {N});
                Tensor mask = on_gpu(rng.uniform({N}, 0.1f, 2.0f)), gpu_targets = on_gpu(targets);
                auto run = [&](bool fused, bool x_grad, Tensor& gx, Tensor& gw) {
                    Tensor x = on_gpu(x0), w = on_gpu(w0);
                    x.set_requires_grad(x_grad);
                    w.set_requires_grad(true);
                    Tensor loss = fused ? ops::linear_cross_entropy(x, w, tied, gpu_targets, mask)
                                        : ops::cross_entropy(ops::matmul(x, w, false, tied), gpu_targets, mask);
                    backward(loss);
                    gx = x.grad();
                    gw = w.grad();
                    return loss.item();
                };
                Tensor gx_fused, gw_fused, gx_plain, gw_plain, gx_frozen, gw_frozen;
                const float fused = run(true, true, gx_fused, gw_fused), plain = run(false, true, gx_plain, gw_plain);
                run(true, false, gx_frozen, gw_frozen);
                EXPECT_FALSE(gx_frozen.defined());
                EXPECT_EQ(gw_frozen.to_vector(), gw_fused.to_vector());
                const Tensor logits = gpu().head_logits(on_gpu(x0), on_gpu(w0), tied);
                const bool bf16_logits = precision == MatmulPrecision::BF16 && V % 8 == 0;
                EXPECT_EQ(logits.dtype(), bf16_logits ? DType::BF16 : DType::F32);
                if (!bf16_logits) {
                    EXPECT_EQ(fused, plain);
                    EXPECT_EQ(gx_fused.to_vector(), gx_plain.to_vector());
                    EXPECT_EQ(gw_fused.to_vector(), gw_plain.to_vector());
                    continue;
                }
                float max_logit = 0.0f;
                for (float z : ops::matmul(on_gpu(x0), on_gpu(w0), false, tied).to_vector())
                    max_logit = std::max(max_logit, std::fabs(z));
                const double loss_bound = 2 * u * max_logit + 1e-6 * std::fabs(plain);
                const double grad_bound = std::expm1(2 * u * max_logit) + 2 * u;
                std::printf("  V %d %s: max |logit| %.2f, loss diff %.2e (bound %.2e), grad x %.2e, grad w %.2e "
                            "(bound %.2e)\n",
                            static_cast<int>(V), tied ? "tied" : "untied", max_logit, std::fabs(fused - plain),
                            loss_bound, relative_error(gx_fused, gx_plain), relative_error(gw_fused, gw_plain),
                            grad_bound);
                EXPECT_LE(std::fabs(fused - plain), loss_bound);
                EXPECT_LE(relative_error(gx_fused, gx_plain), grad_bound);
                EXPECT_LE(relative_error(gw_fused, gw_plain), grad_bound);
                // The stored logits: the f32 product's values rounded once (and the product's
                // own accumulation-order differences, ~1e-6 at D = 32).
                EXPECT_LE(relative_error(logits, ops::matmul(on_gpu(x0), on_gpu(w0), false, tied)), u + 1e-5);
            }
        }
    }
}

// ------------------------------------------------------------------ whole model

// Same seed, same parameters (initialised on the host and copied), same selection (the
// CPU's, held fixed so near-ties cannot diverge): loss and every parameter gradient agree.
TEST(CudaModel, LossAndGradientsMatchCpuModel) {
    HSA_REQUIRE_GPU();
    HSA_SEED_TRACE();
    Rng rng = test_rng();
    ModelConfig config;  // the tiny default
    config.upper_groups = 2;
    Model cpu_model(config, 11, Device::CPU), gpu_model(config, 11, Device::CUDA);
    const int64_t B = 2, T = 77;
    std::vector<int32_t> ids(static_cast<size_t>(B * T)), next(static_cast<size_t>(B * T));
    for (auto& id : ids) id = static_cast<int32_t>(rng.next_int(0, config.vocab_size));
    for (auto& id : next) id = static_cast<int32_t>(rng.next_int(0, config.vocab_size));
    Tensor tokens = Tensor::from_vector_i32(ids, {B, T}), targets = Tensor::from_vector_i32(next, {B, T});
    std::vector<Tensor> selection;
    ForwardOptions record;
    record.record_selection = &selection;
    Tensor cpu_loss = cpu_model.loss(tokens, targets, Tensor(), record);
    backward(cpu_loss);
    ForwardOptions fixed;
    fixed.fixed_selection = &selection;
    Tensor gpu_loss = gpu_model.loss(tokens, targets, Tensor(), fixed);
    backward(gpu_loss);
    EXPECT_NEAR(gpu_loss.item(), cpu_loss.item(), 1e-5 * std::fabs(cpu_loss.item()));
    auto& cpu_params = cpu_model.parameters().entries();
    auto& gpu_params = gpu_model.parameters().entries();
    ASSERT_EQ(cpu_params.size(), gpu_params.size());
    for (size_t i = 0; i < cpu_params.size(); ++i) {
        ASSERT_TRUE(gpu_params[i].tensor.grad().defined()) << gpu_params[i].name;
        EXPECT_LE(relative_error(gpu_params[i].tensor.grad(), cpu_params[i].tensor.grad()), 1e-4) << cpu_params[i].name;
    }
}

}  // namespace
}  // namespace hsa
