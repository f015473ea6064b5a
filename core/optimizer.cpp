#include "core/optimizer.h"

#include <cmath>
#include <vector>

#include "core/backend.h"

namespace hsa {

AdamW::AdamW(ParameterStore& params, const AdamWConfig& config) : params_(params), config_(config) {
    for (const auto& e : params_.entries()) {
        m_.push_back(Tensor::zeros(e.tensor.shape(), DType::F32, e.tensor.device()));
        v_.push_back(Tensor::zeros(e.tensor.shape(), DType::F32, e.tensor.device()));
    }
}

double AdamW::grad_norm() const {
    // One batched call per device (a single read-back on the GPU); the per-tensor sums are
    // added in parameter order, as before.
    std::vector<Tensor> cpu_grads, cuda_grads;
    std::vector<bool> on_cuda;
    for (const auto& e : params_.entries()) {
        Tensor g = e.tensor.grad();
        if (!g.defined()) continue;
        on_cuda.push_back(g.device() == Device::CUDA);
        (on_cuda.back() ? cuda_grads : cpu_grads).push_back(g);
    }
    const std::vector<double> cpu_sums =
        cpu_grads.empty() ? std::vector<double>{} : backend_for(Device::CPU).sum_of_squares_many(cpu_grads);
    const std::vector<double> cuda_sums =
        cuda_grads.empty() ? std::vector<double>{} : backend_for(Device::CUDA).sum_of_squares_many(cuda_grads);
    double total = 0;
    size_t next_cpu = 0, next_cuda = 0;
    for (bool cuda : on_cuda) total += cuda ? cuda_sums[next_cuda++] : cpu_sums[next_cpu++];
    return std::sqrt(total);
}

double AdamW::clip_grad_norm(double max_norm) {
    double norm = grad_norm();
    if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
        const float factor = static_cast<float>(max_norm / (norm + 1e-6));
        for (auto& e : params_.entries()) {
            if (!e.tensor.grad().defined()) continue;
            // In place, so on a private buffer: a gradient may share one with another's.
            Tensor g = e.tensor.writable_grad();
            backend_for(g.device()).scale(g, factor, g);
        }
    }
    return norm;
}

void AdamW::step(float lr) { step_with_scale(lr, 1.0f); }

void AdamW::clipped_step(float lr, double max_norm, double norm) {
    float factor = 1.0f;  // as clip_grad_norm computes it
    if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) factor = static_cast<float>(max_norm / (norm + 1e-6));
    step_with_scale(lr, factor);
}

// One batched call per device (the CUDA backend: one launch for all parameters).
void AdamW::step_with_scale(float lr, float grad_scale) {
    ++step_;
    auto& entries = params_.entries();
    std::vector<Backend::AdamWSlot> cpu_slots, cuda_slots;
    for (size_t i = 0; i < entries.size(); ++i) {
        Tensor grad = entries[i].tensor.grad();
        if (!grad.defined()) continue;
        const float decay = entries[i].weight_decay ? config_.weight_decay : 0.0f;
        (grad.device() == Device::CUDA ? cuda_slots : cpu_slots)
            .push_back({entries[i].tensor, grad, m_[i], v_[i], decay});
    }
    if (!cpu_slots.empty())
        backend_for(Device::CPU)
            .adamw_step_many(cpu_slots, lr, config_.beta1, config_.beta2, config_.eps, step_, grad_scale);
    if (!cuda_slots.empty())
        backend_for(Device::CUDA)
            .adamw_step_many(cuda_slots, lr, config_.beta1, config_.beta2, config_.eps, step_, grad_scale);
}

}  // namespace hsa
