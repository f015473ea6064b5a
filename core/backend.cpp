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

void Backend::cross_entropy_product_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b,
                                             const Tensor& logits, const Tensor& targets, const Tensor& mask,
                                             const Tensor& lse, float grad_loss, Tensor& grad_a, Tensor& grad_b,
                                             bool accumulate_a, bool accumulate_b) {
    if (!grad_a.defined() && !grad_b.defined()) return;
    Tensor grad_logits = Tensor::empty(logits.shape(), DType::F32, logits.device());
    cross_entropy_backward(logits, targets, mask, lse, grad_loss, grad_logits);
    gemm_backward(a, transpose_a, b, transpose_b, grad_logits, grad_a, grad_b, accumulate_a, accumulate_b);
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
