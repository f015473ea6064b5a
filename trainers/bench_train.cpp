// `hsa bench train`: one training step (forward, backward, clipping, AdamW) of the
// paper-scale model of TARGETS.md on one GPU, batch 8 x 4096, with a breakdown of device
// time by backend method. The breakdown comes from a timing decorator installed as the
// CUDA backend for the measured steps: it brackets every call with CUDA events, so the
// per-method times add up to the device time of the step (host gaps excluded).
#include "trainers/bench_train.h"

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <map>
#include <vector>

#include "core/autograd.h"
#include "core/cuda_allocator.h"
#include "core/json.h"
#include "core/model/config.h"
#include "core/model/model.h"
#include "core/optimizer.h"
#include "core/precision.h"
#include "core/rng.h"

#ifdef HSA_WITH_CUDA_KERNELS
#include <cuda_runtime.h>

#include "kernels/cuda_backend.h"
#include "trainers/gpu_timer.h"
#endif

namespace hsa {

#ifdef HSA_WITH_CUDA_KERNELS

namespace {

class TimingBackend final : public Backend {
public:
    struct Call {
        const char* name;
        cudaEvent_t start, stop;
        std::string detail;
    };

    Device device() const override { return Device::CUDA; }
    bool takes_bf16_operands() const override { return inner_.takes_bf16_operands(); }
    bool attention_takes_bf16_qk(int64_t head_dim) const override { return inner_.attention_takes_bf16_qk(head_dim); }
    // Its own row: the rounding pass of an f32 product input kept for the weight gradient.
    Tensor product_operand(const Tensor& x, int64_t M, int64_t N, int64_t K) override {
        Tensor operand;
        timed("product_operand", [&] { operand = inner_.product_operand(x, M, N, K); });
        return operand;
    }

    // While off, calls go straight to the CUDA backend (one virtual call more), so the
    // measured steps are not slowed by event records; calls are counted either way.
    void set_recording(bool on) { recording_ = on; }

    // Sums elapsed milliseconds per method over the recorded calls and forgets them; the
    // events go back to a pool, so recording costs two cudaEventRecord per call.
    std::map<std::string, double> collect() {
        cudaDeviceSynchronize();
        std::map<std::string, double> totals;
        for (Call& c : calls_) {
            float ms = 0;
            cudaEventElapsedTime(&ms, c.start, c.stop);
            totals[c.name] += ms;
            if (!c.detail.empty()) {
                details_[c.detail].ms += ms;
                details_[c.detail].calls++;
            }
            pool_.push_back(c.start);
            pool_.push_back(c.stop);
        }
        calls_.clear();
        return totals;
    }

    struct HostCost {
        double ms = 0;
        int64_t calls = 0;
    };
    std::map<std::string, HostCost> take_host_costs() {
        std::map<std::string, HostCost> r;
        r.swap(host_);
        return r;
    }

    std::map<std::string, HostCost> take_details() {
        std::map<std::string, HostCost> r;
        r.swap(details_);
        return r;
    }

    int64_t take_call_count() {
        int64_t n = call_count_;
        call_count_ = 0;
        return n;
    }

    ~TimingBackend() override {
        for (cudaEvent_t e : pool_) cudaEventDestroy(e);
    }

    void add(const Tensor& a, const Tensor& b, Tensor& out) override {
        timed("add", [&] { inner_.add(a, b, out); }, "add " + shape_string(a.shape()));
    }
    void mul(const Tensor& a, const Tensor& b, Tensor& out) override { timed("mul", [&] { inner_.mul(a, b, out); }); }
    void scale(const Tensor& a, float alpha, Tensor& out) override { timed("scale", [&] { inner_.scale(a, alpha, out); }); }
    void axpy(float alpha, const Tensor& x, Tensor& target) override {
        timed("axpy", [&] { inner_.axpy(alpha, x, target); }, "axpy " + shape_string(x.shape()));
    }
    void copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, Tensor& dst, int64_t dst_len,
                   int64_t dst_start, int64_t length, int64_t inner, bool accumulate) override {
        timed("copy_rows", [&] { inner_.copy_rows(src, outer, src_len, src_start, dst, dst_len, dst_start, length, inner, accumulate); },
              "copy_rows " + shape_string(src.shape()) + " -> " + shape_string(dst.shape()) + (accumulate ? " accumulating" : ""));
    }
    void sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha, Tensor& out) override {
        timed("sum_middle", [&] { inner_.sum_middle(x, outer, n, inner, alpha, out); });
    }
    void broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha, Tensor& out) override {
        timed("broadcast_middle", [&] { inner_.broadcast_middle(x, outer, n, inner, alpha, out); });
    }
    double sum_of_squares(const Tensor& x) override {
        double r = 0;
        timed("sum_of_squares", [&] { r = inner_.sum_of_squares(x); });
        return r;
    }
    std::vector<double> sum_of_squares_many(const std::vector<Tensor>& xs) override {
        std::vector<double> r;
        timed("sum_of_squares", [&] { r = inner_.sum_of_squares_many(xs); });
        return r;
    }
    double sum(const Tensor& x) override {
        double r = 0;
        timed("sum", [&] { r = inner_.sum(x); });
        return r;
    }
    void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) override {
        timed("embedding", [&] { inner_.embedding_forward(table, ids, out); });
    }
    void embedding_backward(const Tensor& ids, const Tensor& grad_out, Tensor& grad_table) override {
        timed("embedding_backward", [&] { inner_.embedding_backward(ids, grad_out, grad_table); });
    }
    void gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& out, bool accumulate) override {
        timed("gemm", [&] { inner_.gemm(a, ta, b, tb, out, accumulate); },
              "gemm " + shape_string(a.shape()) + (ta ? "T" : "") + " x " + shape_string(b.shape()) + (tb ? "T" : ""));
        gemm_flops_ += 2.0 * static_cast<double>(out.numel()) * static_cast<double>(ta ? a.size(-2) : a.size(-1)) *
                       (a.ndim() == 3 && out.ndim() == 2 ? static_cast<double>(a.size(0)) : 1.0);
    }
    void add_rmsnorm_forward(const Tensor& x, const Tensor& a, const Tensor& w, float eps, Tensor& sum, Tensor& out,
                             Tensor& inv_rms) override {
        timed("add_rmsnorm", [&] { inner_.add_rmsnorm_forward(x, a, w, eps, sum, out, inv_rms); },
              "add_rmsnorm " + shape_string(x.shape()));
    }
    void rmsnorm_rope_forward(const Tensor& x, const Tensor& w, float eps, int64_t offset, float base, Tensor& out,
                              Tensor& inv_rms) override {
        timed("rmsnorm_rope", [&] { inner_.rmsnorm_rope_forward(x, w, eps, offset, base, out, inv_rms); },
              "rmsnorm_rope " + shape_string(x.shape()));
    }
    void rmsnorm_rope_backward(const Tensor& x, const Tensor& w, const Tensor& inv_rms, int64_t offset, float base,
                               const Tensor& g, Tensor& gx, Tensor& gw, bool accumulate_x) override {
        timed("rmsnorm_rope_backward",
              [&] { inner_.rmsnorm_rope_backward(x, w, inv_rms, offset, base, g, gx, gw, accumulate_x); },
              "rmsnorm_rope_backward " + shape_string(x.shape()));
    }
    Tensor rmsnorm_rope_backward_rounded(const Tensor& x, const Tensor& w, const Tensor& inv_rms, int64_t offset,
                                         float base, const Tensor& g, Tensor& gx, Tensor& gw,
                                         bool accumulate_x) override {
        Tensor rounded;
        timed("rmsnorm_rope_backward",
              [&] { rounded = inner_.rmsnorm_rope_backward_rounded(x, w, inv_rms, offset, base, g, gx, gw, accumulate_x); },
              "rmsnorm_rope_backward " + shape_string(x.shape()));
        return rounded;
    }
    Tensor rmsnorm_rope_backward_operand(const Tensor& x, const Tensor& w, const Tensor& inv_rms, int64_t offset,
                                         float base, const Tensor& g, Tensor& gw) override {
        Tensor operand;
        timed("rmsnorm_rope_backward",
              [&] { operand = inner_.rmsnorm_rope_backward_operand(x, w, inv_rms, offset, base, g, gw); },
              "rmsnorm_rope_backward " + shape_string(x.shape()) + " to a product operand");
        return operand;
    }
    // The fused MLP (three products and the SwiGLU) is one entry of its own each way: its
    // products are not in the gemm row's TFLOP/s.
    void swiglu_mlp_forward(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                            const Tensor& residual, Tensor& out, MlpSaved& saved) override {
        timed("swiglu_mlp", [&] { inner_.swiglu_mlp_forward(x, w1, w3, w2, residual, out, saved); },
              "swiglu_mlp " + shape_string(x.shape()) + " x " + shape_string(w1.shape()));
    }
    void swiglu_mlp_backward(const Tensor& w1, const Tensor& w3, const Tensor& w2, const MlpSaved& saved,
                             const Tensor& grad_out, Tensor& grad_x, Tensor& grad_w1, Tensor& grad_w3, Tensor& grad_w2,
                             bool accumulate_x, bool accumulate_w1, bool accumulate_w3, bool accumulate_w2) override {
        timed("swiglu_mlp_backward",
              [&] {
                  inner_.swiglu_mlp_backward(w1, w3, w2, saved, grad_out, grad_x, grad_w1, grad_w3, grad_w2,
                                             accumulate_x, accumulate_w1, accumulate_w3, accumulate_w2);
              },
              "swiglu_mlp_backward " + shape_string(grad_out.shape()) + " x " + shape_string(w1.shape()));
    }
    // The head's backward (logits gradient and both products) is one entry of its own: its
    // products are not in the gemm row's TFLOP/s.
    Tensor head_logits(const Tensor& x, const Tensor& weight, bool transpose_weight) override {
        Tensor logits;
        timed("head_logits", [&] { logits = inner_.head_logits(x, weight, transpose_weight); },
              "head_logits " + shape_string(x.shape()) + " x " + shape_string(weight.shape()) +
                  (transpose_weight ? "T" : ""));
        return logits;
    }
    bool cross_entropy_forward_with_gradient(Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,
                                             Tensor& lse) override {
        bool in_place = false;
        timed("cross_entropy", [&] { in_place = inner_.cross_entropy_forward_with_gradient(logits, targets, mask, loss, lse); });
        return in_place;
    }
    void scaled_gemm_backward(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& g, float grad_scale,
                              Tensor& ga, Tensor& gb, bool accumulate_a, bool accumulate_b) override {
        timed("head_backward",
              [&] { inner_.scaled_gemm_backward(a, ta, b, tb, g, grad_scale, ga, gb, accumulate_a, accumulate_b); },
              "head_backward " + shape_string(a.shape()) + " x " + shape_string(b.shape()) + (tb ? "T" : ""));
    }
    void gemm_backward(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& g, Tensor& ga, Tensor& gb,
                       bool accumulate_a, bool accumulate_b) override {
        timed("gemm", [&] { inner_.gemm_backward(a, ta, b, tb, g, ga, gb, accumulate_a, accumulate_b); },
              "gemm_backward " + shape_string(a.shape()) + (ta ? "T" : "") + " x " + shape_string(b.shape()) + (tb ? "T" : ""));
        // Each wanted gradient is one product of the forward's size.
        const double forward = 2.0 * static_cast<double>(g.numel()) * static_cast<double>(ta ? a.size(-2) : a.size(-1));
        gemm_flops_ += forward * ((ga.defined() ? 1 : 0) + (gb.defined() ? 1 : 0));
    }
    void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& inv_rms) override {
        timed("rmsnorm", [&] { inner_.rmsnorm_forward(x, w, eps, out, inv_rms); },
              "rmsnorm " + shape_string(x.shape()) + (w.defined() ? " weighted" : ""));
    }
    void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& inv_rms, const Tensor& g, Tensor& gx,
                          Tensor& gw, bool accumulate_x) override {
        timed("rmsnorm_backward", [&] { inner_.rmsnorm_backward(x, w, inv_rms, g, gx, gw, accumulate_x); },
              "rmsnorm_backward " + shape_string(x.shape()) + (gw.defined() ? " weighted" : ""));
    }
    Tensor rmsnorm_backward_rounded(const Tensor& x, const Tensor& w, const Tensor& inv_rms, const Tensor& g,
                                    Tensor& gx, Tensor& gw, bool accumulate_x) override {
        Tensor rounded;
        timed("rmsnorm_backward",
              [&] { rounded = inner_.rmsnorm_backward_rounded(x, w, inv_rms, g, gx, gw, accumulate_x); },
              "rmsnorm_backward " + shape_string(x.shape()) + (gw.defined() ? " weighted" : ""));
        return rounded;
    }
    void rope_forward(const Tensor& x, int64_t offset, float base, Tensor& out) override {
        timed("rope", [&] { inner_.rope_forward(x, offset, base, out); });
    }
    void rope_backward(const Tensor& g, int64_t offset, float base, Tensor& gx) override {
        timed("rope_backward", [&] { inner_.rope_backward(g, offset, base, gx); });
    }
    void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override {
        timed("swiglu", [&] { inner_.swiglu_forward(gate, up, out); });
    }
    void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& g, Tensor& gg, Tensor& gu) override {
        timed("swiglu_backward", [&] { inner_.swiglu_backward(gate, up, g, gg, gu); });
    }
    void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span, Tensor& out,
                           Tensor& lse) override {
        timed(span.causal ? "swa_attention" : "chunk_encoder_attention", [&] { inner_.attention_forward(q, k, v, span, out, lse); });
    }
    void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                            const Tensor& g, AttentionSpan span, Tensor& gq, Tensor& gk, Tensor& gv) override {
        timed(span.causal ? "swa_attention_backward" : "chunk_encoder_attention_backward",
              [&] { inner_.attention_backward(q, k, v, out, lse, g, span, gq, gk, gv); });
    }
    void select_chunks(const Tensor& qr, const Tensor& l, int64_t s, Tensor& idx) override {
        timed("select_chunks", [&] { inner_.select_chunks(qr, l, s, idx); });
    }
    void chunk_weights_forward(const Tensor& qr, const Tensor& l, const Tensor& idx, WeightKind kind, Tensor& w) override {
        timed("chunk_weights", [&] { inner_.chunk_weights_forward(qr, l, idx, kind, w); });
    }
    void chunk_weights_backward(const Tensor& qr, const Tensor& l, const Tensor& idx, WeightKind kind, const Tensor& w,
                                const Tensor& gw, Tensor& gq, Tensor& gl) override {
        timed("chunk_weights_backward", [&] { inner_.chunk_weights_backward(qr, l, idx, kind, w, gw, gq, gl); });
    }
    void hsa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& idx, const Tensor& w, int64_t s,
                     Tensor& out, Tensor& lse) override {
        timed("hsa", [&] { inner_.hsa_forward(q, k, v, idx, w, s, out, lse); });
    }
    void hsa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& idx, const Tensor& w, int64_t s,
                      const Tensor& lse, const Tensor& g, Tensor& gq, Tensor& gk, Tensor& gv, Tensor& gw) override {
        timed("hsa_backward", [&] { inner_.hsa_backward(q, k, v, idx, w, s, lse, g, gq, gk, gv, gw); });
    }
    void cross_entropy_forward(const Tensor& logits, const Tensor& t, const Tensor& m, Tensor& loss, Tensor& lse) override {
        timed("cross_entropy", [&] { inner_.cross_entropy_forward(logits, t, m, loss, lse); });
    }
    void cross_entropy_backward(const Tensor& logits, const Tensor& t, const Tensor& m, const Tensor& lse, float g,
                                Tensor& gl) override {
        timed("cross_entropy_backward", [&] { inner_.cross_entropy_backward(logits, t, m, lse, g, gl); });
    }
    void adamw_step_many(const std::vector<AdamWSlot>& slots, float lr, float b1, float b2, float eps, int64_t step,
                         float grad_scale) override {
        timed("adamw", [&] { inner_.adamw_step_many(slots, lr, b1, b2, eps, step, grad_scale); });
    }
    void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float b1, float b2, float eps, float wd,
                    int64_t step) override {
        timed("adamw", [&] { inner_.adamw_step(p, g, m, v, lr, b1, b2, eps, wd, step); });
    }

    double take_gemm_flops() {
        double f = gemm_flops_;
        gemm_flops_ = 0;
        return f;
    }

private:
    // detail: the call's shape, for the per-shape table (empty: counted by method only).
    template <class F> void timed(const char* name, F&& body, std::string detail = std::string()) {
        ++call_count_;
        if (!recording_) {
            // Host time inside the call: launch overhead for asynchronous work, plus the
            // wait of any device read-back the call makes.
            auto start = std::chrono::steady_clock::now();
            body();
            HostCost& cost = host_[name];
            cost.ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
            cost.calls++;
            return;
        }
        Call c{name, event(), event(), std::move(detail)};
        cudaEventRecord(c.start);
        body();
        cudaEventRecord(c.stop);
        calls_.push_back(std::move(c));
    }

    cudaEvent_t event() {
        cudaEvent_t e = nullptr;
        if (!pool_.empty()) {
            e = pool_.back();
            pool_.pop_back();
        } else {
            cudaEventCreate(&e);
        }
        return e;
    }

    CudaBackend inner_;
    std::vector<Call> calls_;
    std::vector<cudaEvent_t> pool_;
    std::map<std::string, HostCost> host_;
    std::map<std::string, HostCost> details_;  // device ms and calls by method and shape
    bool recording_ = true;
    int64_t call_count_ = 0;
    double gemm_flops_ = 0;
};

}  // namespace

struct HostCostRow {
    std::string name;
    double ms, calls;
};

int bench_train(std::ostream& out) {
    HSA_CHECK(cuda_available(), "bench train: no GPU visible");
    const ModelConfig config = paper_scale_model_config();
    const int64_t B = 8, T = 4096, tokens = B * T;

    // Mixed precision as in TARGETS.md's bf16 autocast: bf16 tensor-core products with
    // f32 accumulation, f32 master weights and optimiser state.
    MatmulPrecisionScope precision(MatmulPrecision::BF16);
    auto timing_owner = std::make_unique<TimingBackend>();
    TimingBackend* timing = timing_owner.get();
    register_backend(Device::CUDA, std::move(timing_owner));

    Model model(config, 1, Device::CUDA);
    AdamW optimizer(model.parameters(), AdamWConfig{});
    const int64_t params = model.parameters().count();
    const int64_t embedding = config.vocab_size * config.hidden;
    Rng rng(7);
    std::vector<int32_t> ids(static_cast<size_t>(tokens + 1));
    for (auto& id : ids) id = static_cast<int32_t>(rng.next_int(0, config.vocab_size));
    Tensor input = Tensor::from_vector_i32(std::vector<int32_t>(ids.begin(), ids.end() - 1), {B, T});
    Tensor target = Tensor::from_vector_i32(std::vector<int32_t>(ids.begin() + 1, ids.end()), {B, T});

    auto step = [&] {
        model.parameters().zero_grad();
        Tensor loss = model.loss(input, target, Tensor());
        backward(loss);
        optimizer.clipped_step(1e-4f, 1.0, optimizer.grad_norm());
    };
    out << "training step, paper-scale config (" << std::fixed << std::setprecision(1) << params / 1e6
        << "M parameters), batch 8 x 4096, bf16 GEMMs (f32 accumulation), other kernels f32\n" << std::flush;
    step();  // warm-up: allocator, cuBLASLt handles and plans
    timing->collect();
    timing->take_details();
    timing->take_gemm_flops();
    timing->take_call_count();
    timing->take_host_costs();
    cuda_allocator_reset_peak();
    // The figure: the median of 10 plain steps, no per-call events (with 3 the median moved
    // by 1-2 ms between calls, the size of the changes being measured). Host time is the
    // wall-clock time until step() returns (it includes the waits of the few device
    // read-backs inside a step). The breakdown then times 3 steps with per-call events.
    const int plain_steps = 10, steps = 3;
    timing->set_recording(false);
    std::vector<double> wall, host;
    {
        GpuTimer timer;
        for (int i = 0; i < plain_steps; ++i) {
            auto host_start = std::chrono::steady_clock::now();
            timer.start();
            step();
            host.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_start).count());
            timer.stop();
            wall.push_back(timer.elapsed_ms());
        }
    }
    const double calls_per_step = static_cast<double>(timing->take_call_count()) / plain_steps;
    const auto host_costs = timing->take_host_costs();

    // The breakdown: the same steps again with every backend call bracketed by events.
    timing->set_recording(true);
    std::map<std::string, double> totals;
    std::vector<double> wall_recorded;
    {
        GpuTimer timer;
        for (int i = 0; i < steps; ++i) {
            wall_recorded.push_back(timer.time_ms(step));
            for (auto& [name, t] : timing->collect()) totals[name] += t / steps;
        }
    }
    const double gemm_flops = timing->take_gemm_flops() / (plain_steps + steps);  // both loops counted
    const auto details = timing->take_details();
    const double ms = median(wall);
    const double tokens_per_s = static_cast<double>(tokens) / (ms * 1e-3);
    const double mfu = 6.0 * static_cast<double>(params - embedding) * tokens_per_s / 989e12;
    const double peak = static_cast<double>(cuda_allocator_stats().peak_bytes_in_use) / (1 << 30);
    out << "| ms/step | tokens/s | MFU | peak GB | reference (compiled PyTorch, H100) |\n|---|---|---|---|---|\n";
    out << "| " << std::setprecision(1) << ms << " | " << std::setprecision(0) << tokens_per_s << " | " << std::setprecision(1)
        << 100.0 * mfu << "% | " << std::setprecision(1) << peak * 1.073741824 << " | 175 ms, 187K tokens/s, 26.8%, 48.2 GB |\n";
    std::vector<std::pair<double, std::string>> rows;
    double device_total = 0;
    for (auto& [name, t] : totals) {
        rows.push_back({t, name});
        device_total += t;
    }
    std::sort(rows.rbegin(), rows.rend());
    out << "\nhost: " << std::setprecision(0) << calls_per_step << " backend calls per step, step() returns after "
        << std::setprecision(1) << median(host) << " ms; device busy " << device_total << " ms of " << ms
        << " ms (gap " << ms - device_total << " ms); step with per-call events " << median(wall_recorded) << " ms\n";
    out << "\nbreakdown of device time per step by backend method (sum " << std::setprecision(1) << device_total << " ms)\n";
    out << "| method | ms | share |\n|---|---|---|\n";
    for (auto& [t, name] : rows) {
        if (t < 0.05 * device_total / 20) continue;
        out << "| " << name << " | " << std::setprecision(2) << t << " | " << std::setprecision(1) << 100.0 * t / device_total
            << "% |";
        if (name == "gemm") out << " (" << std::setprecision(0) << gemm_flops / (t * 1e-3) / 1e12 << " TFLOP/s)";
        out << "\n";
    }
    {
        std::vector<std::pair<double, std::string>> detail_rows;
        for (auto& [name, cost] : details) detail_rows.push_back({cost.ms / steps, name});
        std::sort(detail_rows.rbegin(), detail_rows.rend());
        out << "\nlargest calls by shape (device ms per step, calls per step)\n| call | ms | calls |\n|---|---|---|\n";
        for (size_t i = 0; i < detail_rows.size() && i < 40; ++i)
            out << "| " << detail_rows[i].second << " | " << std::setprecision(2) << detail_rows[i].first << " | "
                << std::setprecision(0) << static_cast<double>(details.at(detail_rows[i].second).calls) / steps << " |\n";
    }
    std::vector<std::pair<double, std::string>> host_rows;
    double host_inside = 0;
    for (auto& [name, cost] : host_costs) {
        host_rows.push_back({cost.ms / plain_steps, name});
        host_inside += cost.ms / plain_steps;
    }
    std::sort(host_rows.rbegin(), host_rows.rend());
    out << "\nhost time per step inside backend calls (sum " << std::setprecision(1) << host_inside
        << " ms; outside them, in autograd and tensor code: " << median(host) - host_inside << " ms)\n";
    out << "| method | host ms | calls | us per call |\n|---|---|---|---|\n";
    for (size_t i = 0; i < host_rows.size() && i < 12; ++i) {
        const HostCostRow row{host_rows[i].second, host_rows[i].first,
                              static_cast<double>(host_costs.at(host_rows[i].second).calls) / plain_steps};
        out << "| " << row.name << " | " << std::setprecision(2) << row.ms << " | " << std::setprecision(0) << row.calls
            << " | " << std::setprecision(1) << 1000.0 * row.ms / std::max(1.0, row.calls) << " |\n";
    }
    // Put the plain backend back for anything that runs after the bench.
    register_cuda_backend();
    return 0;
}

#else

int bench_train(std::ostream&) { HSA_FAIL("bench train: this build has no CUDA kernels"); }

#endif

}  // namespace hsa
