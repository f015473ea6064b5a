#include "trainers/bench.h"

#include "trainers/bench_train.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iomanip>
#include <sstream>

#include "core/backend.h"
#include "core/cuda_allocator.h"
#include "core/precision.h"
#include "core/model/config.h"
#include "core/rng.h"
#include "core/tensor.h"

#ifdef HSA_WITH_CUDA
#include "trainers/gpu_timer.h"
#endif
#ifdef HSA_WITH_CUDA_KERNELS
#include "kernels/cuda_backend.h"  // time_gemm_algorithms
#endif

namespace hsa {

namespace {

// A `--shape NxL[xd]` filter (empty: every shape).
struct ShapeFilter {
    int64_t batch = 0, length = 0, head_dim = 0;  // 0: any
    bool matches(int64_t n, int64_t l, int64_t d) const {
        return (batch == 0 || batch == n) && (length == 0 || length == l) && (head_dim == 0 || head_dim == d);
    }
};

#ifdef HSA_WITH_CUDA

// Fewer repeats for slow cases so a bench run stays within minutes.
int repeats_for(const std::function<void()>& body) {
    const float ms = GpuTimer().time_ms(body);
    return ms > 500 ? 3 : (ms > 50 ? 7 : 20);
}

// Random visible top-K chunk lists, most recent first, -1 padded (TARGETS.md: "random top-K").
Tensor random_selection(Rng& rng, int64_t batch, int64_t length, int64_t chunk, int64_t k) {
    std::vector<int32_t> ids(static_cast<size_t>(batch * length * k), -1);
    std::vector<int32_t> picks;
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < length; ++t) {
            const int64_t visible = t / chunk;
            picks.clear();
            if (visible <= k) {
                for (int64_t c = visible - 1; c >= 0; --c) picks.push_back(static_cast<int32_t>(c));
            } else {
                while (static_cast<int64_t>(picks.size()) < k) {
                    int32_t c = static_cast<int32_t>(rng.next_int(0, visible));
                    if (std::find(picks.begin(), picks.end(), c) == picks.end()) picks.push_back(c);
                }
                std::sort(picks.rbegin(), picks.rend());
            }
            std::copy(picks.begin(), picks.end(), ids.begin() + (b * length + t) * k);
        }
    return Tensor::from_vector_i32(ids, {batch, length, 1, k});
}

struct HsaShape {
    int64_t batch, length, head_dim;
    double reference_fwd_ms, reference_total_ms;  // public Triton kernel, TARGETS.md (H100)
};

int bench_hsa(std::ostream& out, const ShapeFilter& filter) {
    const int64_t H = 16, Hk = 1, S = 64, K = 8;
    const std::vector<HsaShape> shapes = {{8, 4096, 64, 1.15, 5.55},   {8, 4096, 128, 1.78, 8.95},
                                          {2, 16384, 64, 1.16, 7.29},   {1, 65536, 64, 1.97, 18.5},
                                          {1, 262144, 64, 7.13, 188.0}, {1, 262144, 128, 15.4, 424.0}};
    Backend& gpu = backend_for(Device::CUDA);
    Rng rng(2026);
    out << "HSA operator, H 16, Hk 1, S 64, K 8, random top-K chunks, f32 storage (reference: public Triton kernel, "
           "bf16, TARGETS.md). f32: v0 kernels (kernels/hsa.cu, precision f32). bf16: precision bf16 (training's "
           "default): tensor-core forward v1 (kernels/hsa_forward_v1.cu) and backward v1 (kernels/hsa_backward_v1.cu), "
           "d 64 and 128. rel err: bf16 output "
           "against f32 output (relative L2). TFLOP/s: 4 N L H K S d for the forward, 3.5x that for fwd+bwd. "
           "peak GiB: bf16 fwd+bwd\n";
    out << "| N x L | d | f32 fwd ms | f32 fwd+bwd ms | bf16 fwd ms | bf16 fwd+bwd ms | bf16 fwd TFLOP/s | bf16 fwd+bwd "
           "TFLOP/s | bf16 rel err | ref fwd ms | ref fwd+bwd ms | peak GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const HsaShape& s : shapes) {
        const int64_t N = s.batch, L = s.length, d = s.head_dim;
        if (!filter.matches(N, L, d)) continue;
        Tensor q = rng.normal({N, L, H, d}, 1.0f, Device::CUDA);
        Tensor kmem = rng.normal({N, L, Hk, d}, 1.0f, Device::CUDA);
        Tensor vmem = rng.normal({N, L, Hk, d}, 1.0f, Device::CUDA);
        Tensor indices = random_selection(rng, N, L, S, K).to(Device::CUDA);
        Tensor weights = rng.uniform({N, L, 1, K}, 0.05f, 0.25f, Device::CUDA);
        Tensor grad_out = rng.normal({N, L, H, d}, 1.0f, Device::CUDA);
        Tensor o = Tensor::empty(q.shape(), DType::F32, Device::CUDA), o_bf16 = Tensor::empty(q.shape(), DType::F32, Device::CUDA);
        Tensor lse = Tensor::empty({N, L, H, K}, DType::F32, Device::CUDA);
        Tensor gq = Tensor::empty(q.shape(), DType::F32, Device::CUDA), gk = Tensor::empty(kmem.shape(), DType::F32, Device::CUDA),
               gv = Tensor::empty(vmem.shape(), DType::F32, Device::CUDA), gw = Tensor::empty(weights.shape(), DType::F32, Device::CUDA);
        Tensor* result = &o;
        auto forward = [&] { gpu.hsa_forward(q, kmem, vmem, indices, weights, S, *result, lse); };
        auto both = [&] {
            forward();
            gpu.hsa_backward(q, kmem, vmem, indices, weights, S, lse, grad_out, gq, gk, gv, gw);
        };
        const double flops = 4.0 * static_cast<double>(N * L * H * K * S * d);
        const double fwd = median_ms(forward, 2, repeats_for(forward));
        const double total = median_ms(both, 1, repeats_for(both));
        double bf16_fwd = 0, bf16_total = 0;
        cuda_allocator_reset_peak();
        {
            MatmulPrecisionScope precision(MatmulPrecision::BF16);
            result = &o_bf16;
            bf16_fwd = median_ms(forward, 2, repeats_for(forward));
            bf16_total = median_ms(both, 1, repeats_for(both));
        }
        const double peak = static_cast<double>(cuda_allocator_stats().peak_bytes_in_use) / (1 << 30);
        gpu.axpy(-1.0f, o, o_bf16);  // o_bf16 becomes bf16 - f32
        const double err = std::sqrt(gpu.sum_of_squares(o_bf16) / std::max(gpu.sum_of_squares(o), 1e-30));
        out << "| " << N << " x " << L / 1024 << "K | " << d << " | " << std::fixed << std::setprecision(2) << fwd << " | "
            << total << " | " << bf16_fwd << " | " << bf16_total << " | " << std::setprecision(1)
            << flops / (bf16_fwd * 1e-3) / 1e12 << " | " << 3.5 * flops / (bf16_total * 1e-3) / 1e12 << " | " << std::scientific
            << std::setprecision(1) << err << " | " << std::fixed << std::setprecision(2) << s.reference_fwd_ms << " | "
            << s.reference_total_ms << " | " << peak << " |\n"
            << std::flush;
    }
    return 0;
}

// kv_heads: 16 (flex_attention's reference runs, MHA) or fewer (GQA: the model's is 1;
// the reference columns then do not apply).
int bench_swa(std::ostream& out, const ShapeFilter& filter, int64_t kv_heads) {
    const int64_t H = 16, d = 64, W = 512, Hk = kv_heads;
    struct Shape2 { int64_t batch, length; double ref_fwd, ref_total; };
    const std::vector<Shape2> shapes = {{8, 4096, 0.32, 1.52}, {1, 65536, 0.86, 3.97}};
    Backend& gpu = backend_for(Device::CUDA);
    Rng rng(2027);
    const bool reference_applies = Hk == H;
    out << "Sliding-window attention, window 512, 16 q / " << Hk << " kv heads, d 64, f32 storage (reference: torch flex_attention, "
           "TARGETS.md). f32: CUDA-core kernels (kernels/attention.cu, precision f32); bf16: tensor-core kernels "
           "(kernels/attention_tc.cu, precision bf16, training's default; q, k and out stored in bf16 as the model stores them). TFLOP/s count 4 T W' H d for the forward "
           "and 3.5x that for forward+backward (the backward recomputes 1 product and adds 4; W' = keys actually in the causal window).\n";
    out << "| N x L | f32 fwd ms | f32 fwd+bwd ms | bf16 fwd ms | bf16 fwd+bwd ms | bf16 fwd TFLOP/s | bf16 fwd+bwd TFLOP/s "
           "| ref fwd ms | ref fwd+bwd ms |\n|---|---|---|---|---|---|---|---|---|\n";
    for (const Shape2& s : shapes) {
        if (!filter.matches(s.batch, s.length, d)) continue;
        Tensor q = rng.normal({s.batch, s.length, H, d}, 1.0f, Device::CUDA);
        Tensor k = rng.normal({s.batch, s.length, Hk, d}, 1.0f, Device::CUDA);
        Tensor v = rng.normal({s.batch, s.length, Hk, d}, 1.0f, Device::CUDA);
        Tensor grad_out = rng.normal({s.batch, s.length, H, d}, 1.0f, Device::CUDA);
        // The model's storage at bf16 precision: q and k as rmsnorm_rope leaves them, out as wo takes it.
        const Tensor q16 = q.to(DType::BF16), k16 = k.to(DType::BF16);
        Tensor o32 = Tensor::empty(q.shape(), DType::F32, Device::CUDA), o16 = Tensor::empty(q.shape(), DType::BF16, Device::CUDA);
        Tensor lse = Tensor::empty({s.batch, s.length, H}, DType::F32, Device::CUDA);
        Tensor gq = Tensor::empty(q.shape(), DType::F32, Device::CUDA), gk = Tensor::empty(k.shape(), DType::F32, Device::CUDA),
               gv = Tensor::empty(k.shape(), DType::F32, Device::CUDA);
        const AttentionSpan span{true, W};
        const Tensor *qp = &q, *kp = &k;  // the storage of the precision being timed
        Tensor* op = &o32;
        auto forward = [&] { gpu.attention_forward(*qp, *kp, v, span, *op, lse); };
        auto both = [&] {
            forward();
            gpu.attention_backward(*qp, *kp, v, *op, lse, grad_out, span, gq, gk, gv);
        };
        double ms[2][2];  // [precision f32, bf16][fwd, fwd+bwd]
        for (int p = 0; p < 2; ++p) {
            const bool bf16 = p == 1;
            qp = bf16 ? &q16 : &q;
            kp = bf16 ? &k16 : &k;
            op = bf16 ? &o16 : &o32;
            MatmulPrecisionScope precision(bf16 ? MatmulPrecision::BF16 : MatmulPrecision::F32);
            ms[p][0] = median_ms(forward, 2, repeats_for(forward));
            ms[p][1] = median_ms(both, 1, repeats_for(both));
        }
        double keys = 0;  // exact count of (query, key) pairs in the causal window
        for (int64_t t = 0; t < s.length; ++t) keys += static_cast<double>(std::min<int64_t>(t + 1, W));
        const double flops = 4.0 * static_cast<double>(s.batch * H * d) * keys;
        out << "| " << s.batch << " x " << s.length / 1024 << "K | " << std::fixed << std::setprecision(2) << ms[0][0] << " | "
            << ms[0][1] << " | " << ms[1][0] << " | " << ms[1][1] << " | " << std::setprecision(1)
            << flops / (ms[1][0] * 1e-3) / 1e12 << " | " << 3.5 * flops / (ms[1][1] * 1e-3) / 1e12 << " | "
            << std::setprecision(2);
        if (reference_applies) out << s.ref_fwd << " | " << s.ref_total << " |\n" << std::flush;
        else out << "- | - |\n" << std::flush;
    }
    return 0;
}

// The bf16 products of one training step of the paper-scale model (8 x 4096 tokens, d 1024,
// MLP 2752, vocabulary 50304), through the backend's gemm at bf16 precision with bf16
// operands (cuBLASLt, f32 accumulation and output), with the grouped alternatives of the MLP
// beside them: gate and up as one product of width 2F, the input gradient as one product of
// depth 2F instead of two with the second accumulating, the weight gradients as one.
int bench_gemm(std::ostream& out) {
    struct Case {
        const char* what;
        int64_t M, N, K;
        bool ta, tb, accumulate;
        int per_step;  // products of this shape a step (0: an alternative, not in the step)
    };
    const int64_t T = 8 * 4096, D = 1024, F = 2752, V = 50304;
    const std::vector<Case> cases = {
        {"MLP gate / up: x w1", T, F, D, false, false, false, 32},
        {"  grouped: x [w1 | w3]", T, 2 * F, D, false, false, false, 0},
        {"MLP down: h w2", T, D, F, false, false, false, 16},
        {"MLP dx: d_gate w1^T (+ d_up w3^T, accumulating)", T, D, F, false, true, true, 32},
        {"  grouped: [d_gate | d_up] [w1 | w3]^T", T, D, 2 * F, false, true, false, 0},
        {"MLP dw1: x^T d_gate", D, F, T, true, false, false, 32},
        {"  grouped: x^T [d_gate | d_up]", D, 2 * F, T, true, false, false, 0},
        {"MLP dh: g w2^T", T, F, D, false, true, false, 16},
        {"MLP dw2: h^T g", F, D, T, true, false, false, 16},
        {"projection: x w (d x d)", T, D, D, false, false, false, 34},
        {"projection dx: g w^T", T, D, D, false, true, false, 34},
        {"projection dw: x^T g", D, D, T, true, false, false, 34},
        {"head: x w_vocab", T, V, D, false, false, false, 1},
    };
    Backend& gpu = backend_for(Device::CUDA);
    MatmulPrecisionScope precision(MatmulPrecision::BF16);
    Rng rng(2028);
    constexpr int kAlgorithms = 16;
#ifdef HSA_WITH_CUDA_KERNELS
    const bool tuning = gemm_autotuning();
#else
    const bool tuning = false;
#endif
    out << "bf16 products of the paper-scale step (8 x 4096 tokens), cuBLASLt via the backend's gemm, bf16 operands, "
           "f32 output; 'grouped' rows are alternatives to the row above them, not part of the step today.\n"
        << "Last columns: the algorithms cuBLASLt's heuristic offers (up to " << kAlgorithms
        << "), the ms of its first choice, of the fastest, and of the fastest whose output has the first one's bits "
           "(median of 9, not accumulating). 'ms' is gemm's own, with autotuning "
        << (tuning ? "on" : "off (HSA_GEMM_AUTOTUNE=0)") << ".\n"
        << "| product | M x N x K | ms | TFLOP/s | per step | algorithms | first ms | fastest ms (#) | fastest same-bits "
           "ms (#) |\n|---|---|---|---|---|---|---|---|---|\n";
    for (const Case& c : cases) {
        const Tensor a = gpu.product_operand(rng.normal(c.ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, 1.0f, Device::CUDA),
                                             c.M, c.N, c.K);
        const Tensor b = gpu.product_operand(rng.normal(c.tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, 1.0f, Device::CUDA),
                                             c.M, c.N, c.K);
        Tensor result = Tensor::zeros({c.M, c.N}, DType::F32, Device::CUDA);
        auto body = [&] { gpu.gemm(a, c.ta, b, c.tb, result, c.accumulate); };
        const double ms = median_ms(body, 2, repeats_for(body));
        const double flops = 2.0 * static_cast<double>(c.M) * static_cast<double>(c.N) * static_cast<double>(c.K);
        // The algorithms cuBLASLt's heuristic offers for the same product (not accumulating):
        // its first choice, the fastest, and the fastest with the first one's bits (what gemm's
        // autotuning picks).
#ifdef HSA_WITH_CUDA_KERNELS
        const std::vector<GemmAlgorithmTiming> algos = time_gemm_algorithms(a, c.ta, b, c.tb, result, kAlgorithms, 9);
#else
        const std::vector<GemmAlgorithmTiming> algos = {{ms, true}};
#endif
        size_t best = 0, best_same = 0;
        for (size_t i = 1; i < algos.size(); ++i) {
            if (algos[i].ms < 0) continue;
            if (algos[i].ms < algos[best].ms) best = i;
            if (algos[i].same_bits && algos[i].ms < algos[best_same].ms) best_same = i;
        }
        out << "| " << c.what << " | " << c.M << " x " << c.N << " x " << c.K << " | " << std::fixed
            << std::setprecision(3) << ms << " | " << std::setprecision(1) << flops / (ms * 1e-3) / 1e12 << " | ";
        if (c.per_step > 0) out << c.per_step << " | ";
        else out << "- | ";
        out << algos.size() << " | " << std::setprecision(3) << algos.front().ms << " | " << algos[best].ms << " (#"
            << best << ") | " << algos[best_same].ms << " (#" << best_same << ") |\n"
            << std::flush;
    }
    return 0;
}

#endif  // HSA_WITH_CUDA

}  // namespace

namespace {

// "NxL" or "NxLxd", positive integers (e.g. 8x4096x64).
ShapeFilter parse_shape_filter(const std::string& what, const std::string& text) {
    std::vector<int64_t> parts;
    size_t start = 0;
    while (true) {
        const size_t end = text.find('x', start);
        const std::string part = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (part.empty() || part.size() > 12 || part.find_first_not_of("0123456789") != std::string::npos ||
            std::stoll(part) <= 0)
            throw ConfigError("bench " + what + ": --shape expects NxL or NxLxd with positive integers, got '" + text + "'");
        parts.push_back(std::stoll(part));
        if (end == std::string::npos) break;
        start = end + 1;
    }
    if (parts.size() < 2 || parts.size() > 3)
        throw ConfigError("bench " + what + ": --shape expects NxL or NxLxd with positive integers, got '" + text + "'");
    return ShapeFilter{parts[0], parts[1], parts.size() == 3 ? parts[2] : 0};
}

}  // namespace

int run_bench(const std::string& what, const std::vector<std::string>& args, std::ostream& out) {
    if (what != "hsa" && what != "swa" && what != "train" && what != "gemm")
        throw ConfigError("bench: unknown benchmark '" + what + "' (known: hsa, swa, gemm, train)");
    ShapeFilter filter;
    int64_t kv_heads = 16;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--shape" && (what == "hsa" || what == "swa")) {
            if (i + 1 == args.size()) throw ConfigError("bench " + what + ": --shape needs a value (NxL or NxLxd)");
            filter = parse_shape_filter(what, args[++i]);
        } else if (args[i] == "--kv-heads" && what == "swa") {
            const std::string value = i + 1 < args.size() ? args[++i] : "";
            if (value != "1" && value != "2" && value != "4" && value != "8" && value != "16")
                throw ConfigError("bench swa: --kv-heads expects 1, 2, 4, 8 or 16 (a divisor of the 16 q heads), got '" +
                                  value + "'");
            kv_heads = std::stoll(value);
        } else {
            throw ConfigError("bench " + what + ": unexpected argument '" + args[i] + "'");
        }
    }
    if (what == "train") return bench_train(out);
#ifdef HSA_WITH_CUDA
    HSA_CHECK(cuda_available(), "bench " << what << ": no GPU visible; benchmarks time CUDA kernels");
    if (what == "gemm") return bench_gemm(out);
    return what == "hsa" ? bench_hsa(out, filter) : bench_swa(out, filter, kv_heads);
#else
    (void)out;
    (void)filter;
    (void)kv_heads;
    HSA_FAIL("bench " << what << ": this build has no CUDA support");
#endif
}

}  // namespace hsa
