#include "core/autograd.h"

#include "core/backend.h"

namespace hsa {

Tape& Tape::current() {
    thread_local Tape tape;
    return tape;
}

bool Tape::should_record(std::initializer_list<const Tensor*> inputs) const {
    if (!enabled) return false;
    for (const Tensor* t : inputs)
        if (t && t->defined() && t->requires_grad()) return true;
    return false;
}

void Tape::record(std::vector<Tensor> outputs, BackwardFn backward_fn) {
    for (Tensor& t : outputs) t.set_requires_grad(true);
    entries_.push_back({std::move(outputs), std::move(backward_fn)});
}

void Tape::backward(const Tensor& loss) {
    HSA_CHECK(loss.defined() && loss.numel() == 1,
              "backward() needs a scalar loss, got shape " << (loss.defined() ? shape_string(loss.shape()) : "undefined"));
    HSA_CHECK(loss.requires_grad(), "backward(): the loss does not depend on any tensor that requires a gradient");
    loss.set_grad(Tensor::full(loss.shape(), 1.0f, DType::F32, loss.device()));
    // Closures must not record new entries while we walk.
    bool previous = enabled;
    enabled = false;
    for (size_t i = entries_.size(); i-- > 0;) {
        Entry& entry = entries_[i];
        bool any = false;
        for (const Tensor& out : entry.outputs) any = any || out.grad().defined();
        if (!any) continue;
        std::vector<Tensor> grads;
        grads.reserve(entry.outputs.size());
        for (const Tensor& out : entry.outputs)
            grads.push_back(out.grad().defined() ? out.grad() : Tensor::zeros(out.shape(), DType::F32, out.device()));
        entry.backward(grads);
        // Intermediate gradients are not needed once consumed; drop them to save memory,
        // except for tensors the user holds as leaves (not tape outputs).
        for (Tensor& out : entry.outputs) out.zero_grad();
        entry.backward = nullptr;
    }
    enabled = previous;
    entries_.clear();
}

void Tape::clear() { entries_.clear(); }

void Tensor::accumulate_grad(const Tensor& g) const {
    if (!requires_grad()) return;
    HSA_CHECK(g.shape() == shape(), "gradient of shape " << shape_string(g.shape()) << " for tensor '" << name()
                                                         << "' of shape " << shape_string(shape()));
    Tensor& grad = impl_->grad;
    if (!grad.defined()) {
        // Adopt g as it is: a copy per tape edge used to be the largest device cost outside
        // the kernels (every activation gradient copied once more). Sharing is safe because
        // a shared buffer is never written in place (below, and writable_grad()).
        grad = g.is_contiguous() && g.dtype() == DType::F32 ? g : g.clone();
        return;
    }
    if (grad.is_sole_reference() && grad.is_contiguous()) {
        grad.drop_rounded_copy();
        backend_for(g.device()).axpy(1.0f, g, grad);
        return;
    }
    // The buffer is also someone else's (another input's gradient, the caller's handle):
    // write the sum to a fresh buffer, which costs what the in-place update does.
    Tensor sum = Tensor::empty(shape(), DType::F32, g.device());
    backend_for(g.device()).add(grad, g, sum);
    grad = sum;
}

Tensor Tensor::grad_to_accumulate_into() const {
    if (!requires_grad()) return Tensor();
    const Tensor& grad = impl_->grad;
    if (!grad.defined() || !grad.is_sole_reference() || !grad.is_contiguous() || grad.dtype() != DType::F32) return Tensor();
    grad.drop_rounded_copy();  // the caller writes it
    return grad;
}

Tensor Tensor::writable_grad() const {
    Tensor& grad = impl_->grad;
    if (!grad.defined()) grad = Tensor::zeros(shape(), DType::F32, device());
    else if (!grad.is_sole_reference() || !grad.is_contiguous()) grad = grad.clone();
    grad.drop_rounded_copy();  // the caller writes it
    return grad;
}

}  // namespace hsa
