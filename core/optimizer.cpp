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

void AdamW::step(float lr) {
    ++step_;
    auto& entries = params_.entries();
    for (size_t i = 0; i < entries.size(); ++i) {
        Tensor grad = entries[i].tensor.grad();
        if (!grad.defined()) continue;
        const float decay = entries[i].weight_decay ? config_.weight_decay : 0.0f;
        backend_for(grad.device())
            .adamw_step(entries[i].tensor, grad, m_[i], v_[i], lr, config_.beta1, config_.beta2, config_.eps, decay, step_);
    }
}

}  // namespace hsa
