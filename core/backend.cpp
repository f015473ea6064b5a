#include "core/backend.h"

#include <array>

#include "core/cpu/cpu_backend.h"

namespace hsa {

namespace {
std::array<std::unique_ptr<Backend>, 2>& registry() {
    static std::array<std::unique_ptr<Backend>, 2> backends = [] {
        std::array<std::unique_ptr<Backend>, 2> b;
        b[0] = std::make_unique<CpuBackend>();
        return b;
    }();
    return backends;
}
}  // namespace

// out = op(a) op(b):  d op(a) = g op(b)^T,  d op(b) = op(a)^T g. A shared (batch-1)
// operand gets its gradient summed over the batch by gemm.
void Backend::gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& g,
                            Tensor& grad_a, Tensor& grad_b, bool accumulate_a, bool accumulate_b) {
    if (grad_a.defined()) {
        if (!transpose_a) gemm(g, false, b, !transpose_b, grad_a, accumulate_a);  // g op(b)^T
        else gemm(b, transpose_b, g, true, grad_a, accumulate_a);                 // op(b) g^T
    }
    if (grad_b.defined()) {
        if (!transpose_b) gemm(a, !transpose_a, g, false, grad_b, accumulate_b);  // op(a)^T g
        else gemm(g, true, a, transpose_a, grad_b, accumulate_b);                 // g^T op(a)
    }
}

Tensor Backend::head_logits(const Tensor& x, const Tensor& weight, bool transpose_weight) {
    const int64_t V = transpose_weight ? weight.size(0) : weight.size(1);
    Tensor logits = Tensor::empty({x.size(0), V}, DType::F32, x.device());
    gemm(x, false, weight, transpose_weight, logits, false);
    return logits;
}

bool Backend::cross_entropy_forward_with_gradient(Tensor& logits, const Tensor& targets, const Tensor& mask,
                                                  Tensor& loss, Tensor& lse) {
    cross_entropy_forward(logits, targets, mask, loss, lse);
    return false;
}

void Backend::scaled_gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b,
                                   const Tensor& g, float grad_scale, Tensor& grad_a, Tensor& grad_b,
                                   bool accumulate_a, bool accumulate_b) {
    if (!grad_a.defined() && !grad_b.defined()) return;
    if (grad_scale == 1.0f) {
        gemm_backward(a, transpose_a, b, transpose_b, g, grad_a, grad_b, accumulate_a, accumulate_b);
        return;
    }
    Tensor scaled = Tensor::empty(g.shape(), DType::F32, g.device());
    scale(g, grad_scale, scaled);
    gemm_backward(a, transpose_a, b, transpose_b, scaled, grad_a, grad_b, accumulate_a, accumulate_b);
}

void Backend::swiglu_mlp_forward(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                                 const Tensor& residual, Tensor& out, MlpSaved& saved) {
    const int64_t N = x.size(0), F = w1.size(1);
    saved.gate = Tensor::empty({N, F}, DType::F32, x.device());
    saved.up = Tensor::empty({N, F}, DType::F32, x.device());
    saved.hidden_operand = Tensor::empty({N, F}, DType::F32, x.device());
    saved.x_operand = x;
    gemm(x, false, w1, false, saved.gate, false);
    gemm(x, false, w3, false, saved.up, false);
    swiglu_forward(saved.gate, saved.up, saved.hidden_operand);
    gemm(saved.hidden_operand, false, w2, false, out, false);
    if (residual.defined()) add(residual, out, out);  // elementwise, so out may be an input
}

// The separate ops' backward, last op first: h w2, then the SwiGLU, then x w1 and x w3.
void Backend::swiglu_mlp_backward(const Tensor& w1, const Tensor& w3, const Tensor& w2, const MlpSaved& saved,
                                  const Tensor& grad_out, Tensor& grad_x, Tensor& grad_w1, Tensor& grad_w3,
                                  Tensor& grad_w2, bool accumulate_x, bool accumulate_w1, bool accumulate_w3,
                                  bool accumulate_w2) {
    const Tensor& x = saved.x_operand;
    Tensor grad_hidden = Tensor::empty(saved.gate.shape(), DType::F32, x.device());
    gemm_backward(saved.hidden_operand, false, w2, false, grad_out, grad_hidden, grad_w2, false, accumulate_w2);
    Tensor grad_gate = Tensor::empty(saved.gate.shape(), DType::F32, x.device());
    Tensor grad_up = Tensor::empty(saved.gate.shape(), DType::F32, x.device());
    swiglu_backward(saved.gate, saved.up, grad_hidden, grad_gate, grad_up);
    gemm_backward(x, false, w1, false, grad_gate, grad_x, grad_w1, accumulate_x, accumulate_w1);
    gemm_backward(x, false, w3, false, grad_up, grad_x, grad_w3, true, accumulate_w3);
}

void Backend::adamw_step_many(const std::vector<AdamWSlot>& slots, float lr, float beta1, float beta2, float eps,
                              int64_t step, float grad_scale) {
    for (const AdamWSlot& slot : slots) {
        Tensor param = slot.param, m = slot.m, v = slot.v;
        Tensor grad = slot.grad;
        if (grad_scale != 1.0f) {
            grad = Tensor::empty(slot.grad.shape(), DType::F32, slot.grad.device());
            scale(slot.grad, grad_scale, grad);
        }
        adamw_step(param, grad, m, v, lr, beta1, beta2, eps, slot.weight_decay, step);
    }
}

void Backend::add_rmsnorm_forward(const Tensor& x, const Tensor& a, const Tensor& weight, float eps, Tensor& sum,
                                  Tensor& out, Tensor& inv_rms) {
    add(x, a, sum);
    rmsnorm_forward(sum, weight, eps, out, inv_rms);
}

void Backend::rmsnorm_rope_forward(const Tensor& x, const Tensor& weight, float eps, int64_t position_offset,
                                   float base, Tensor& out, Tensor& inv_rms) {
    const int64_t d = x.size(-1);
    Tensor normed = Tensor::empty(x.shape(), DType::F32, x.device());
    Tensor flat = normed.view({-1, d});
    rmsnorm_forward(x.view({-1, d}), weight, eps, flat, inv_rms);
    rope_forward(normed, position_offset, base, out);
}

void Backend::rmsnorm_rope_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                    int64_t position_offset, float base, const Tensor& grad_out, Tensor& grad_x,
                                    Tensor& grad_weight, bool accumulate_x) {
    const int64_t d = x.size(-1);
    Tensor grad_normed = Tensor::empty(x.shape(), DType::F32, x.device());
    rope_backward(grad_out, position_offset, base, grad_normed);
    Tensor gx = grad_x.defined() ? grad_x.view({-1, d}) : Tensor();
    rmsnorm_backward(x.view({-1, d}), weight, inv_rms, grad_normed.view({-1, d}), gx, grad_weight, accumulate_x);
}

Backend& backend_for(Device device) {
    auto& slot = registry()[device == Device::CPU ? 0 : 1];
    HSA_CHECK(slot != nullptr, "no " << device_name(device) << " backend in this build: CUDA kernels are not built or not registered");
    return *slot;
}

void register_backend(Device device, std::unique_ptr<Backend> backend) {
    registry()[device == Device::CPU ? 0 : 1] = std::move(backend);
}

}  // namespace hsa
