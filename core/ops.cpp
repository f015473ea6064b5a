#include "core/ops.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "core/autograd.h"
#include "core/precision.h"

namespace hsa::ops {

namespace {

Backend& backend_of(const Tensor& t) { return backend_for(t.device()); }

Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), DType::F32, t.device()); }

void check_float(const Tensor& t, const char* op, const char* what) {
    HSA_CHECK(t.defined(), op << ": " << what << " is undefined");
    HSA_CHECK(t.dtype() == DType::F32, op << ": " << what << " has dtype " << dtype_name(t.dtype()) << ", expected f32");
    HSA_CHECK(t.is_contiguous(), op << ": " << what << " must be contiguous");
}

// A product's operand: f32, or bf16 (rounded by its producer) where the backend takes those.
// (checks::check_operand in core/backend_checks.cpp applies the same rule inside the
// backends: bf16 on CUDA only, the one backend with takes_bf16_operands().)
void check_operand(const Tensor& t, const char* op, const char* what) {
    if (t.defined() && t.dtype() == DType::BF16) {
        HSA_CHECK(backend_of(t).takes_bf16_operands(),
                  op << ": " << what << " is bf16, which the " << device_name(t.device()) << " backend does not multiply");
        HSA_CHECK(t.is_contiguous(), op << ": " << what << " must be contiguous");
        return;
    }
    check_float(t, op, what);
}

// The dtype of a normalised output: f32, or bf16 where the backend takes bf16 operands.
void check_norm_dtype(const Tensor& x, DType dtype, const char* op) {
    HSA_CHECK(dtype == DType::F32 || (dtype == DType::BF16 && backend_of(x).takes_bf16_operands()),
              op << ": output dtype " << dtype_name(dtype) << " is not available on the " << device_name(x.device())
                 << " backend (available: f32" << (backend_of(x).takes_bf16_operands() ? ", bf16)" : ")"));
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
    HSA_CHECK(a.device() == b.device(), op << ": inputs on different devices (" << device_name(a.device()) << " and "
                                           << device_name(b.device()) << ")");
}

// A norm's optional weight: f32 [d] on x's device. `dim` names d in the error.
void check_norm_weight(const Tensor& x, const Tensor& weight, int64_t d, const char* op, const char* dim) {
    if (!weight.defined()) return;
    check_float(weight, op, "weight");
    HSA_CHECK(weight.ndim() == 1 && weight.size(0) == d,
              op << ": weight " << shape_string(weight.shape()) << " does not match " << dim << " " << d);
    check_same_device(x, weight, op);
}

int normalize_dim(int dim, int ndim, const char* op) {
    int d = dim < 0 ? dim + ndim : dim;
    HSA_CHECK(d >= 0 && d < ndim, op << ": dimension " << dim << " out of range for " << ndim << "-d tensor");
    return d;
}

// outer = product of dims before `dim`, inner = product after.
void split_at(const Shape& shape, int dim, int64_t& outer, int64_t& inner) {
    outer = 1;
    inner = 1;
    for (int i = 0; i < dim; ++i) outer *= shape[i];
    for (size_t i = dim + 1; i < shape.size(); ++i) inner *= shape[i];
}

Tensor grad_buffer(const Tensor& like) { return Tensor::empty(like.shape(), DType::F32, like.device()); }

// Where a backward writes one operand's gradient. A gradient the operand already owns (an
// input shared by several products, such as the q/k/v projections' normalised input) is
// added into in place (accumulate); otherwise a fresh buffer, handed over by deliver().
// Undefined when the operand wants no gradient.
struct GradTarget {
    Tensor grad;
    bool accumulate = false;

    explicit GradTarget(const Tensor& operand) : grad(operand.grad_to_accumulate_into()), accumulate(grad.defined()) {
        if (!accumulate && operand.requires_grad()) grad = grad_buffer(operand);
    }
    void deliver(const Tensor& operand) const {
        if (!grad.defined() || accumulate) return;
        Tensor target = operand;
        target.accumulate_grad(grad);
    }
};

// The product of linear, x [..., k] . weight [k, n] -> f32 [m, n], and its backward, shared
// with linear_rmsnorm_rope. The operands in the form the backend multiplies them (on CUDA
// at bf16: each rounded once, the weight once a step rather than again in the backward, ~65
// passes a step at the paper's scale; docs/PERF.md version 55), kept only for a gradient
// that will be taken.
struct LinearProduct {
    Tensor x, weight;            // as given: their gradients
    Tensor saved, saved_weight;  // what the backward multiplies
    int64_t k = 0, n = 0;
    bool in_bf16 = false;  // the backend multiplies it in bf16 (the weight came back rounded)

    LinearProduct(const Tensor& x_in, const Tensor& weight_in, Tensor& out) : x(x_in), weight(weight_in) {
        k = x.size(-1);
        n = weight.size(1);
        const int64_t m = x.numel() / std::max<int64_t>(k, 1);
        Backend& backend = backend_of(x);
        const Tensor operand = backend.product_operand(x.view({m, k}), m, n, k);
        const Tensor weight_operand = backend.product_operand(weight, m, n, k);
        out = Tensor::empty({m, n}, DType::F32, x.device());
        backend.gemm(operand, false, weight_operand, false, out, false);
        saved = weight.requires_grad() ? operand : x.view({m, k});
        saved_weight = x.requires_grad() ? weight_operand : weight;
        in_bf16 = weight_operand.dtype() == DType::BF16 && weight.dtype() == DType::F32;
    }

    // x's and the weight's gradients from g = d out (f32, or bf16 where in_bf16).
    void backward(const Tensor& g) const {
        GradTarget gx(x), gw(weight);
        Tensor gx_flat = gx.grad.defined() ? gx.grad.view({-1, k}) : Tensor();
        // The rounded weight only while the products still run in bf16 (a backward at
        // another precision multiplies the weight as it is).
        const bool bf16_now = matmul_precision() == MatmulPrecision::BF16;
        backend_of(x).gemm_backward(saved, false, bf16_now ? saved_weight : weight, false, g.view({-1, n}), gx_flat,
                                    gw.grad, gx.accumulate, gw.accumulate);
        gx.deliver(x);
        gw.deliver(weight);
    }
};

// The backward closures of add and rmsnorm, shared with add_rmsnorm (which records both).
void record_add(const Tensor& a, const Tensor& b, const Tensor& out) {
    if (!Tape::current().should_record({&a, &b})) return;
    Tape::current().record({out}, [a, b](const std::vector<Tensor>& g) {
        Tensor ga = a, gb = b;
        ga.accumulate_grad(g[0]);
        gb.accumulate_grad(g[0]);
    });
}

void record_rmsnorm(const Tensor& x, const Tensor& weight, const Tensor& inv_rms, const Tensor& out) {
    if (!Tape::current().should_record({&x, &weight})) return;
    const int64_t d = x.size(-1);
    Tape::current().record({out}, [x, weight, inv_rms, d](const std::vector<Tensor>& g) {
        Tensor flat_x = x.view({-1, d});
        // x usually has a gradient already (the residual add's): add into it in place.
        const Tensor existing = x.grad_to_accumulate_into();
        const bool accumulate = existing.defined();
        Tensor gx = accumulate ? existing.view({-1, d}) : x.requires_grad() ? grad_buffer(flat_x) : Tensor();
        Tensor gw = weight.defined() && weight.requires_grad() ? grad_buffer(weight) : Tensor();
        // With gx's bf16 rounding where the backend writes it in the same pass: the residual
        // stream's gradient is what the next products in the backward (the MLP's, the
        // attention's output projection) take in bf16, and a rounding pass over it cost ~45
        // us a call (docs/PERF.md version 56).
        const Tensor rounded =
            backend_of(x).rmsnorm_backward_rounded(flat_x, weight, inv_rms, g[0].view({-1, d}), gx, gw, accumulate);
        if (rounded.defined()) gx.set_rounded_copy(rounded);
        Tensor tx = x, tw = weight;
        if (gx.defined() && !accumulate) tx.accumulate_grad(gx.view(x.shape()));
        if (gw.defined()) tw.accumulate_grad(gw);
    });
}

}  // namespace

// ---------------------------------------------------------------- elementwise and shape

Tensor add(const Tensor& a, const Tensor& b) {
    check_float(a, "add", "a");
    check_float(b, "add", "b");
    check_same_device(a, b, "add");
    HSA_CHECK(a.shape() == b.shape(), "add: shapes " << shape_string(a.shape()) << " and " << shape_string(b.shape()) << " differ");
    Tensor out = empty_like(a);
    backend_of(a).add(a, b, out);
    record_add(a, b, out);
    return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
    check_float(a, "mul", "a");
    check_float(b, "mul", "b");
    check_same_device(a, b, "mul");
    HSA_CHECK(a.shape() == b.shape(), "mul: shapes " << shape_string(a.shape()) << " and " << shape_string(b.shape()) << " differ");
    Tensor out = empty_like(a);
    backend_of(a).mul(a, b, out);
    if (Tape::current().should_record({&a, &b})) {
        Tape::current().record({out}, [a, b](const std::vector<Tensor>& g) {
            Tensor ga = a, gb = b;
            if (a.requires_grad()) {
                Tensor t = grad_buffer(a);
                backend_of(a).mul(g[0], b, t);
                ga.accumulate_grad(t);
            }
            if (b.requires_grad()) {
                Tensor t = grad_buffer(b);
                backend_of(b).mul(g[0], a, t);
                gb.accumulate_grad(t);
            }
        });
    }
    return out;
}

Tensor scale(const Tensor& a, float alpha) {
    check_float(a, "scale", "a");
    Tensor out = empty_like(a);
    backend_of(a).scale(a, alpha, out);
    if (Tape::current().should_record({&a})) {
        Tape::current().record({out}, [a, alpha](const std::vector<Tensor>& g) {
            Tensor ga = a, t = grad_buffer(a);
            backend_of(a).scale(g[0], alpha, t);
            ga.accumulate_grad(t);
        });
    }
    return out;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
    HSA_CHECK(x.defined(), "reshape: input is undefined");
    // A view shares storage; its own autograd identity routes gradients back to x.
    Tensor out = x.view(shape);
    out.set_requires_grad(false);
    if (Tape::current().should_record({&x})) {
        Tape::current().record({out}, [x](const std::vector<Tensor>& g) {
            Tensor gx = x;
            gx.accumulate_grad(g[0].view(x.shape()));
        });
    }
    return out;
}

Tensor slice(const Tensor& x, int dim_in, int64_t start, int64_t length) {
    check_float(x, "slice", "x");
    int dim = normalize_dim(dim_in, x.ndim(), "slice");
    const int64_t len = x.shape()[dim];
    HSA_CHECK(start >= 0 && length >= 0 && start + length <= len,
              "slice: range [" << start << ", " << start + length << ") outside dimension of size " << len);
    // The whole dimension (the chunk encoder's tokens when T is a multiple of S): a view,
    // whose gradient is x's as it is, instead of a copy each way.
    if (start == 0 && length == len) return reshape(x, x.shape());
    int64_t outer, inner;
    split_at(x.shape(), dim, outer, inner);
    Shape shape = x.shape();
    shape[dim] = length;
    Tensor out = Tensor::empty(shape, DType::F32, x.device());
    backend_of(x).copy_rows(x, outer, len, start, out, length, 0, length, inner, false);
    if (Tape::current().should_record({&x})) {
        Tape::current().record({out}, [x, outer, inner, len, start, length](const std::vector<Tensor>& g) {
            // Added straight into x's gradient: slices of one tensor (a fused projection's
            // parts) then cost their own rows, not a zero-filled full-size buffer each.
            Tensor gx = x.writable_grad();
            backend_of(x).copy_rows(g[0], outer, length, 0, gx, len, start, length, inner, true);
        });
    }
    return out;
}

Tensor concat(const std::vector<Tensor>& xs, int dim_in) {
    HSA_CHECK(!xs.empty(), "concat: no inputs");
    for (const Tensor& x : xs) check_float(x, "concat", "input");
    const int ndim = xs[0].ndim();
    int dim = normalize_dim(dim_in, ndim, "concat");
    Shape shape = xs[0].shape();
    int64_t total = 0;
    for (const Tensor& x : xs) {
        check_same_device(x, xs[0], "concat");
        Shape other = x.shape();
        HSA_CHECK(x.ndim() == ndim, "concat: inputs of different ranks");
        other[dim] = shape[dim];
        HSA_CHECK(other == shape, "concat: shape " << shape_string(x.shape()) << " does not match "
                                                   << shape_string(xs[0].shape()) << " outside dimension " << dim);
        total += x.shape()[dim];
    }
    shape[dim] = total;
    int64_t outer, inner;
    split_at(shape, dim, outer, inner);
    Tensor out = Tensor::empty(shape, DType::F32, xs[0].device());
    int64_t offset = 0;
    for (const Tensor& x : xs) {
        backend_of(x).copy_rows(x, outer, x.shape()[dim], 0, out, total, offset, x.shape()[dim], inner, false);
        offset += x.shape()[dim];
    }
    bool record = false;
    for (const Tensor& x : xs) record = record || Tape::current().should_record({&x});
    if (record) {
        Tape::current().record({out}, [xs, dim, outer, inner, total](const std::vector<Tensor>& g) {
            int64_t at = 0;
            for (const Tensor& x : xs) {
                const int64_t len = x.shape()[dim];
                if (x.requires_grad()) {
                    Tensor gx = grad_buffer(x);
                    backend_of(x).copy_rows(g[0], outer, total, at, gx, len, 0, len, inner, false);
                    Tensor target = x;
                    target.accumulate_grad(gx);
                }
                at += len;
            }
        });
    }
    return out;
}

Tensor mean(const Tensor& x, int dim_in) {
    check_float(x, "mean", "x");
    int dim = normalize_dim(dim_in, x.ndim(), "mean");
    int64_t outer, inner;
    split_at(x.shape(), dim, outer, inner);
    const int64_t n = x.shape()[dim];
    HSA_CHECK(n > 0, "mean over an empty dimension");
    Shape shape = x.shape();
    shape.erase(shape.begin() + dim);
    Tensor out = Tensor::empty(shape, DType::F32, x.device());
    backend_of(x).sum_middle(x, outer, n, inner, 1.0f / static_cast<float>(n), out);
    if (Tape::current().should_record({&x})) {
        Tape::current().record({out}, [x, outer, n, inner](const std::vector<Tensor>& g) {
            Tensor gx = grad_buffer(x);
            backend_of(x).broadcast_middle(g[0], outer, n, inner, 1.0f / static_cast<float>(n), gx);
            Tensor target = x;
            target.accumulate_grad(gx);
        });
    }
    return out;
}

Tensor sum(const Tensor& x) {
    check_float(x, "sum", "x");
    Tensor out = Tensor::full({}, static_cast<float>(backend_of(x).sum(x)), DType::F32, x.device());
    if (Tape::current().should_record({&x})) {
        Tape::current().record({out}, [x](const std::vector<Tensor>& g) {
            Tensor gx = grad_buffer(x);
            backend_of(x).broadcast_middle(g[0], 1, x.numel(), 1, 1.0f, gx);
            Tensor target = x;
            target.accumulate_grad(gx);
        });
    }
    return out;
}

Tensor repeat_leading(const Tensor& x, int64_t n) {
    check_float(x, "repeat_leading", "x");
    HSA_CHECK(n >= 1, "repeat_leading: count " << n << " < 1");
    Shape shape = x.shape();
    shape.insert(shape.begin(), n);
    Tensor out = Tensor::empty(shape, DType::F32, x.device());
    backend_of(x).broadcast_middle(x, 1, n, x.numel(), 1.0f, out);
    if (Tape::current().should_record({&x})) {
        Tape::current().record({out}, [x, n](const std::vector<Tensor>& g) {
            Tensor gx = grad_buffer(x);
            backend_of(x).sum_middle(g[0], 1, n, x.numel(), 1.0f, gx);
            Tensor target = x;
            target.accumulate_grad(gx);
        });
    }
    return out;
}

// ---------------------------------------------------------------- layers

Tensor embedding(const Tensor& table, const Tensor& ids) {
    check_float(table, "embedding", "table");
    HSA_CHECK(table.ndim() == 2, "embedding: table must be [V, D], got " << shape_string(table.shape()));
    HSA_CHECK(ids.dtype() == DType::I32, "embedding: ids must be i32, got " << dtype_name(ids.dtype()));
    check_same_device(table, ids, "embedding");
    Shape shape = ids.shape();
    shape.push_back(table.size(1));
    Tensor flat_ids = ids.view({ids.numel()});
    Tensor out = Tensor::empty({ids.numel(), table.size(1)}, DType::F32, table.device());
    backend_of(table).embedding_forward(table, flat_ids, out);
    out = out.view(shape);
    if (Tape::current().should_record({&table})) {
        Tape::current().record({out}, [table, flat_ids](const std::vector<Tensor>& g) {
            Tensor gt = grad_buffer(table);
            backend_of(table).embedding_backward(flat_ids, g[0].view({flat_ids.numel(), table.size(1)}), gt);
            Tensor target = table;
            target.accumulate_grad(gt);
        });
    }
    return out;
}

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b) {
    check_operand(a, "matmul", "a");
    check_operand(b, "matmul", "b");
    check_same_device(a, b, "matmul");
    HSA_CHECK(a.ndim() == 2 || a.ndim() == 3, "matmul: a must be 2-D or 3-D, got " << shape_string(a.shape()));
    HSA_CHECK(b.ndim() == 2 || b.ndim() == 3, "matmul: b must be 2-D or 3-D, got " << shape_string(b.shape()));
    const int64_t batch_a = a.ndim() == 3 ? a.size(0) : 1, batch_b = b.ndim() == 3 ? b.size(0) : 1;
    HSA_CHECK(batch_a == batch_b || batch_a == 1 || batch_b == 1,
              "matmul: batch sizes " << batch_a << " and " << batch_b << " do not broadcast");
    const int64_t m = transpose_a ? a.size(-1) : a.size(-2);
    const int64_t k_a = transpose_a ? a.size(-2) : a.size(-1);
    const int64_t k_b = transpose_b ? b.size(-1) : b.size(-2);
    const int64_t n = transpose_b ? b.size(-2) : b.size(-1);
    HSA_CHECK(k_a == k_b, "matmul: inner dimensions " << k_a << " and " << k_b << " differ (a " << shape_string(a.shape())
                                                      << ", b " << shape_string(b.shape()) << ")");
    const bool batched = a.ndim() == 3 || b.ndim() == 3;
    const int64_t batch = std::max(batch_a, batch_b);
    Tensor out = batched ? Tensor::empty({batch, m, n}, DType::F32, a.device()) : Tensor::empty({m, n}, DType::F32, a.device());
    backend_of(a).gemm(a, transpose_a, b, transpose_b, out, false);
    if (Tape::current().should_record({&a, &b})) {
        Tape::current().record({out}, [a, b, transpose_a, transpose_b](const std::vector<Tensor>& g) {
            GradTarget ga(a), gb(b);
            backend_of(a).gemm_backward(a, transpose_a, b, transpose_b, g[0], ga.grad, gb.grad, ga.accumulate,
                                        gb.accumulate);
            ga.deliver(a);
            gb.deliver(b);
        });
    }
    return out;
}

Tensor linear(const Tensor& x, const Tensor& weight) {
    HSA_CHECK(weight.ndim() == 2, "linear: weight must be [Din, Dout], got " << shape_string(weight.shape()));
    HSA_CHECK(x.size(-1) == weight.size(0), "linear: input feature size " << x.size(-1) << " does not match weight "
                                                                         << shape_string(weight.shape()));
    Shape out_shape = x.shape();
    out_shape.back() = weight.size(1);
    // One tape entry on x itself, not reshape -> matmul -> reshape: x's gradient is then
    // a GradTarget of the product, which adds into a gradient x already has (beta = 1,
    // the same bits as a separate add). Through a reshape, the product wrote a fresh
    // buffer that the reshape's backward added in with one more pass over it (axpy): x
    // feeding two products (the attention's q and kv) cost 16 such passes a step. Any rank
    // (a 2-D x included) takes this path, so every input is rounded once.
    check_operand(x, "linear", "x");
    check_operand(weight, "linear", "weight");
    check_same_device(x, weight, "linear");
    Tensor out;
    const LinearProduct product(x, weight, out);
    out = out.view(out_shape);
    if (Tape::current().should_record({&x, &weight}))
        Tape::current().record({out}, [product](const std::vector<Tensor>& g) { product.backward(g[0]); });
    return out;
}

Tensor swiglu_mlp(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2, const Tensor& residual) {
    const char* op = "swiglu_mlp";
    for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&x, "x"}, {&w1, "w1"}, {&w3, "w3"}, {&w2, "w2"}}) {
        if (t == &x) check_operand(*t, op, name);
        else check_float(*t, op, name);
        check_same_device(x, *t, op);
    }
    HSA_CHECK(x.ndim() >= 1, op << ": x must be [..., D], got " << shape_string(x.shape()));
    const int64_t D = x.size(-1);
    HSA_CHECK(w1.ndim() == 2 && w1.size(0) == D, op << ": w1 " << shape_string(w1.shape()) << " should be [" << D << ", F]");
    const int64_t F = w1.size(1);
    HSA_CHECK(w3.ndim() == 2 && w3.size(0) == D && w3.size(1) == F,
              op << ": w3 " << shape_string(w3.shape()) << " should be [" << D << ", " << F << "] like w1");
    HSA_CHECK(w2.ndim() == 2 && w2.size(0) == F && w2.size(1) == D,
              op << ": w2 " << shape_string(w2.shape()) << " should be [" << F << ", " << D << "]");
    if (residual.defined()) {
        check_float(residual, op, "residual");
        check_same_device(x, residual, op);
        HSA_CHECK(residual.shape() == x.shape(), op << ": residual " << shape_string(residual.shape())
                                                    << " does not match x " << shape_string(x.shape()));
    }
    Tensor flat = reshape(x, {-1, D});
    const int64_t N = flat.size(0);
    Tensor out = Tensor::empty({N, D}, DType::F32, x.device());
    auto saved = std::make_shared<MlpSaved>();
    Tensor xc = flat.is_contiguous() ? flat : flat.contiguous();
    const Tensor residual_flat = residual.defined() ? residual.view({N, D}) : Tensor();
    backend_of(x).swiglu_mlp_forward(xc, w1, w3, w2, residual_flat, out, *saved);
    if (Tape::current().should_record({&flat, &w1, &w3, &w2, &residual})) {
        Tape::current().record({out}, [flat, w1, w3, w2, residual, saved](const std::vector<Tensor>& g) {
            // The residual's share first, as add's backward (residual, then the MLP) gives it.
            if (residual.defined() && residual.requires_grad()) {
                Tensor target = residual;
                target.accumulate_grad(g[0].view(residual.shape()));
            }
            if (!flat.requires_grad() && !w1.requires_grad() && !w3.requires_grad() && !w2.requires_grad()) return;
            GradTarget gx(flat), g1(w1), g3(w3), g2(w2);
            backend_of(flat).swiglu_mlp_backward(w1, w3, w2, *saved, g[0], gx.grad, g1.grad, g3.grad, g2.grad,
                                                 gx.accumulate, g1.accumulate, g3.accumulate, g2.accumulate);
            gx.deliver(flat);
            g1.deliver(w1);
            g3.deliver(w3);
            g2.deliver(w2);
        });
    }
    return reshape(out, x.shape());
}

Tensor rmsnorm(const Tensor& x, const Tensor& weight, float eps, DType out_dtype) {
    check_float(x, "rmsnorm", "x");
    check_norm_dtype(x, out_dtype, "rmsnorm");
    const int64_t d = x.size(-1);
    check_norm_weight(x, weight, d, "rmsnorm", "feature size");
    Tensor flat = x.view({-1, d});
    Tensor out = Tensor::empty(flat.shape(), out_dtype, x.device());
    Tensor inv_rms = Tensor::empty({flat.size(0)}, DType::F32, x.device());
    backend_of(x).rmsnorm_forward(flat, weight, eps, out, inv_rms);
    out = out.view(x.shape());
    record_rmsnorm(x, weight, inv_rms, out);
    return out;
}

std::pair<Tensor, Tensor> add_rmsnorm(const Tensor& x, const Tensor& a, const Tensor& weight, float eps,
                                      DType normed_dtype) {
    const char* op = "add_rmsnorm";
    check_float(x, op, "x");
    check_norm_dtype(x, normed_dtype, op);
    check_float(a, op, "a");
    check_same_device(x, a, op);
    HSA_CHECK(x.shape() == a.shape(), op << ": shapes " << shape_string(x.shape()) << " and " << shape_string(a.shape()) << " differ");
    HSA_CHECK(x.ndim() >= 1 && x.size(-1) > 0, op << ": x must have a non-empty last dim, got " << shape_string(x.shape()));
    const int64_t d = x.size(-1);
    check_norm_weight(x, weight, d, op, "feature size");
    Tensor sum = empty_like(x), out = Tensor::empty(x.shape(), normed_dtype, x.device());
    const int64_t n = x.numel() / d;
    Tensor inv_rms = Tensor::empty({n}, DType::F32, x.device());
    Tensor sum_flat = sum.view({n, d}), out_flat = out.view({n, d});
    backend_of(x).add_rmsnorm_forward(x.view({n, d}), a.view({n, d}), weight, eps, sum_flat, out_flat, inv_rms);
    // The two ops' backward closures, in their order: the norm's runs first and adds into
    // the sum's gradient, which the add's then passes on (bit-identical to add, rmsnorm).
    record_add(x, a, sum);
    record_rmsnorm(sum, weight, inv_rms, out);
    return {sum, out};
}

Tensor rmsnorm_rope(const Tensor& x, const Tensor& weight, float eps, int64_t position_offset, float base,
                    DType out_dtype) {
    const char* op = "rmsnorm_rope";
    check_float(x, op, "x");
    check_norm_dtype(x, out_dtype, op);
    HSA_CHECK(x.ndim() == 4 && x.size(3) % 2 == 0 && x.size(3) > 0,
              op << ": x must be [B, T, H, d] with even d, got " << shape_string(x.shape()));
    const int64_t d = x.size(3);
    check_norm_weight(x, weight, d, op, "head dim");
    Tensor xc = x.is_contiguous() ? x : x.contiguous();
    Tensor out = Tensor::empty(xc.shape(), out_dtype, x.device());
    Tensor inv_rms = Tensor::empty({xc.numel() / d}, DType::F32, x.device());
    backend_of(x).rmsnorm_rope_forward(xc, weight, eps, position_offset, base, out, inv_rms);
    if (Tape::current().should_record({&x, &weight})) {
        Tape::current().record({out}, [x, xc, weight, inv_rms, position_offset, base](const std::vector<Tensor>& g) {
            // As rmsnorm's backward: a gradient x already owns is added into in place.
            const Tensor existing = x.grad_to_accumulate_into();
            const bool accumulate = existing.defined() && xc.id() == x.id();
            Tensor gx = accumulate ? existing : x.requires_grad() ? grad_buffer(xc) : Tensor();
            Tensor gw = weight.defined() && weight.requires_grad() ? grad_buffer(weight) : Tensor();
            // With gx's bf16 rounding where the backend writes it in the same pass (q's
            // gradient is the q projection's product operand), as in rmsnorm's backward.
            const Tensor rounded = backend_of(x).rmsnorm_rope_backward_rounded(xc, weight, inv_rms, position_offset,
                                                                               base, g[0], gx, gw, accumulate);
            if (rounded.defined()) gx.set_rounded_copy(rounded);
            Tensor tx = x, tw = weight;
            if (gx.defined() && !accumulate) tx.accumulate_grad(gx);
            if (gw.defined()) tw.accumulate_grad(gw);
        });
    }
    return out;
}

Tensor linear_rmsnorm_rope(const Tensor& x, const Tensor& weight, int64_t heads, const Tensor& norm_weight, float eps,
                           int64_t position_offset, float base, DType out_dtype) {
    const char* op = "linear_rmsnorm_rope";
    check_operand(x, op, "x");
    check_operand(weight, op, "weight");
    check_same_device(x, weight, op);
    check_norm_dtype(x, out_dtype, op);
    HSA_CHECK(x.ndim() == 3, op << ": x must be [B, T, Din], got " << shape_string(x.shape()));
    HSA_CHECK(weight.ndim() == 2 && weight.size(0) == x.size(2),
              op << ": weight " << shape_string(weight.shape()) << " must be [" << x.size(2) << ", heads * d]");
    HSA_CHECK(heads > 0 && weight.size(1) > 0 && weight.size(1) % heads == 0 && (weight.size(1) / heads) % 2 == 0,
              op << ": " << weight.size(1) << " output features do not split into " << heads << " heads of even size");
    const int64_t B = x.size(0), T = x.size(1), m = B * T, d = weight.size(1) / heads;
    check_norm_weight(x, norm_weight, d, op, "head dim");
    Tensor projected;
    const LinearProduct product(x, weight, projected);  // as linear makes it
    projected = projected.view({B, T, heads, d});
    Tensor out = Tensor::empty(projected.shape(), out_dtype, x.device());
    Tensor inv_rms = Tensor::empty({m * heads}, DType::F32, x.device());
    backend_of(x).rmsnorm_rope_forward(projected, norm_weight, eps, position_offset, base, out, inv_rms);
    if (Tape::current().should_record({&x, &weight, &norm_weight})) {
        Tape::current().record({out}, [product, norm_weight, projected, inv_rms, position_offset,
                                       base](const std::vector<Tensor>& g) {
            Backend& be = backend_of(product.x);
            Tensor gnorm = norm_weight.defined() && norm_weight.requires_grad() ? grad_buffer(norm_weight) : Tensor();
            // The projection's output gradient in the form its product takes it: where that
            // runs in bf16, only the rounding gemm_backward would make of the f32 one.
            Tensor g_projected;
            if (product.in_bf16) {
                g_projected = be.rmsnorm_rope_backward_operand(projected, norm_weight, inv_rms, position_offset, base,
                                                               g[0], gnorm);
            } else {
                g_projected = grad_buffer(projected);
                be.rmsnorm_rope_backward(projected, norm_weight, inv_rms, position_offset, base, g[0], g_projected,
                                         gnorm, false);
            }
            if (gnorm.defined()) {
                Tensor tn = norm_weight;
                tn.accumulate_grad(gnorm);
            }
            product.backward(g_projected);
        });
    }
    return out;
}

Tensor rope(const Tensor& x, int64_t position_offset, float base) {
    check_float(x, "rope", "x");
    HSA_CHECK(x.ndim() == 4 && x.size(3) % 2 == 0, "rope: x must be [B, T, H, d] with even d, got " << shape_string(x.shape()));
    Tensor out = empty_like(x);
    backend_of(x).rope_forward(x, position_offset, base, out);
    if (Tape::current().should_record({&x})) {
        Tape::current().record({out}, [x, position_offset, base](const std::vector<Tensor>& g) {
            Tensor gx = grad_buffer(x);
            backend_of(x).rope_backward(g[0], position_offset, base, gx);
            Tensor target = x;
            target.accumulate_grad(gx);
        });
    }
    return out;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
    check_float(gate, "swiglu", "gate");
    check_float(up, "swiglu", "up");
    HSA_CHECK(gate.shape() == up.shape(), "swiglu: gate " << shape_string(gate.shape()) << " and up "
                                                          << shape_string(up.shape()) << " differ");
    Tensor out = empty_like(gate);
    backend_of(gate).swiglu_forward(gate, up, out);
    if (Tape::current().should_record({&gate, &up})) {
        Tape::current().record({out}, [gate, up](const std::vector<Tensor>& g) {
            Tensor gg = gate.requires_grad() ? grad_buffer(gate) : Tensor();
            Tensor gu = up.requires_grad() ? grad_buffer(up) : Tensor();
            backend_of(gate).swiglu_backward(gate, up, g[0], gg, gu);
            Tensor tg = gate, tu = up;
            if (gg.defined()) tg.accumulate_grad(gg);
            if (gu.defined()) tu.accumulate_grad(gu);
        });
    }
    return out;
}

Tensor local_attention(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span, DType out_dtype) {
    check_operand(q, "attention", "q");  // bf16 where the backend takes it: rmsnorm_rope's rounded q / k
    check_operand(k, "attention", "k");
    check_float(v, "attention", "v");
    HSA_CHECK(q.ndim() == 4, "attention: q must be [B, T, H, d], got " << shape_string(q.shape()));
    HSA_CHECK(k.ndim() == 4 && k.shape() == v.shape(), "attention: k " << shape_string(k.shape()) << " and v "
                                                                        << shape_string(v.shape()) << " must be equal [B, T, Hk, d]");
    HSA_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "attention: k " << shape_string(k.shape()) << " does not match q " << shape_string(q.shape()));
    HSA_CHECK(q.size(2) % k.size(2) == 0, "attention: query heads " << q.size(2) << " not a multiple of kv heads " << k.size(2));
    HSA_CHECK(span.window >= 0, "attention: window " << span.window << " < 0");
    check_norm_dtype(q, out_dtype, "attention");
    Tensor out = Tensor::empty(q.shape(), out_dtype, q.device());
    Tensor lse = Tensor::empty({q.size(0), q.size(1), q.size(2)}, DType::F32, q.device());
    backend_of(q).attention_forward(q, k, v, span, out, lse);
    if (Tape::current().should_record({&q, &k, &v})) {
        Tape::current().record({out}, [q, k, v, out, lse, span](const std::vector<Tensor>& g) {
            Tensor gq = q.requires_grad() ? grad_buffer(q) : Tensor();
            Tensor gk = k.requires_grad() ? grad_buffer(k) : Tensor();
            Tensor gv = v.requires_grad() ? grad_buffer(v) : Tensor();
            backend_of(q).attention_backward(q, k, v, out, lse, g[0], span, gq, gk, gv);
            Tensor tq = q, tk = k, tv = v;
            if (gq.defined()) tq.accumulate_grad(gq);
            if (gk.defined()) tk.accumulate_grad(gk);
            if (gv.defined()) tv.accumulate_grad(gv);
        });
    }
    return out;
}

// ---------------------------------------------------------------- retrieval and HSA

static void check_retrieval_inputs(const Tensor& qr, const Tensor& landmarks, const char* op) {
    check_float(qr, op, "qr");
    check_float(landmarks, op, "landmarks");
    HSA_CHECK(qr.ndim() == 4, op << ": qr must be [B, T, Hr, dr], got " << shape_string(qr.shape()));
    HSA_CHECK(landmarks.ndim() == 4 && landmarks.size(0) == qr.size(0) && landmarks.size(2) == qr.size(2) &&
                  landmarks.size(3) == qr.size(3),
              op << ": landmarks " << shape_string(landmarks.shape()) << " must be [B, C, Hr, dr] matching qr "
                 << shape_string(qr.shape()));
    check_same_device(qr, landmarks, op);
}

static void check_indices(const Tensor& indices, const Tensor& qr, const char* op) {
    HSA_CHECK(indices.dtype() == DType::I32, op << ": indices must be i32, got " << dtype_name(indices.dtype()));
    HSA_CHECK(indices.ndim() == 4 && indices.size(0) == qr.size(0) && indices.size(1) == qr.size(1) &&
                  indices.size(2) == qr.size(2),
              op << ": indices " << shape_string(indices.shape()) << " must be [B, T, Hr, K] for qr " << shape_string(qr.shape()));
}

Tensor select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size, int64_t topk) {
    check_retrieval_inputs(qr, landmarks, "select_chunks");
    HSA_CHECK(chunk_size >= 1, "select_chunks: chunk size " << chunk_size << " < 1");
    HSA_CHECK(topk >= 1, "select_chunks: top-K " << topk << " < 1");
    Tensor indices = Tensor::empty({qr.size(0), qr.size(1), qr.size(2), topk}, DType::I32, qr.device());
    backend_of(qr).select_chunks(qr, landmarks, chunk_size, indices);
    return indices;
}

Tensor chunk_weights(const Tensor& qr, const Tensor& landmarks, const Tensor& indices, WeightKind kind) {
    check_retrieval_inputs(qr, landmarks, "chunk_weights");
    check_indices(indices, qr, "chunk_weights");
    Tensor weights = Tensor::empty(indices.shape(), DType::F32, qr.device());
    backend_of(qr).chunk_weights_forward(qr, landmarks, indices, kind, weights);
    if (Tape::current().should_record({&qr, &landmarks})) {
        Tape::current().record({weights}, [qr, landmarks, indices, kind, weights](const std::vector<Tensor>& g) {
            Tensor gq = qr.requires_grad() ? grad_buffer(qr) : Tensor();
            Tensor gl = landmarks.requires_grad() ? grad_buffer(landmarks) : Tensor();
            backend_of(qr).chunk_weights_backward(qr, landmarks, indices, kind, weights, g[0], gq, gl);
            Tensor tq = qr, tl = landmarks;
            if (gq.defined()) tq.accumulate_grad(gq);
            if (gl.defined()) tl.accumulate_grad(gl);
        });
    }
    return weights;
}

Tensor hsa_attention(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                     const Tensor& weights, int64_t chunk_size) {
    check_float(q, "hsa_attention", "q");
    check_float(kmem, "hsa_attention", "kmem");
    check_float(vmem, "hsa_attention", "vmem");
    check_float(weights, "hsa_attention", "weights");
    HSA_CHECK(q.ndim() == 4, "hsa_attention: q must be [B, T, H, d], got " << shape_string(q.shape()));
    HSA_CHECK(kmem.ndim() == 4 && kmem.shape() == vmem.shape() && kmem.size(0) == q.size(0) && kmem.size(3) == q.size(3),
              "hsa_attention: kmem " << shape_string(kmem.shape()) << " and vmem " << shape_string(vmem.shape())
                                     << " must be equal [B, Tm, Hk, d] matching q " << shape_string(q.shape()));
    HSA_CHECK(q.size(2) % kmem.size(2) == 0, "hsa_attention: query heads " << q.size(2) << " not a multiple of kv heads " << kmem.size(2));
    HSA_CHECK(indices.dtype() == DType::I32 && indices.ndim() == 4 && indices.size(0) == q.size(0) &&
                  indices.size(1) == q.size(1) && kmem.size(2) % indices.size(2) == 0,
              "hsa_attention: indices " << shape_string(indices.shape()) << " must be i32 [B, T, Hr, K] with Hk % Hr == 0");
    HSA_CHECK(weights.shape() == indices.shape(), "hsa_attention: weights " << shape_string(weights.shape())
                                                                            << " must match indices " << shape_string(indices.shape()));
    HSA_CHECK(chunk_size >= 1, "hsa_attention: chunk size " << chunk_size << " < 1");
    Tensor out = empty_like(q);
    Tensor lse = Tensor::empty({q.size(0), q.size(1), q.size(2), indices.size(3)}, DType::F32, q.device());
    backend_of(q).hsa_forward(q, kmem, vmem, indices, weights, chunk_size, out, lse);
    if (Tape::current().should_record({&q, &kmem, &vmem, &weights})) {
        Tape::current().record({out}, [q, kmem, vmem, indices, weights, chunk_size, lse](const std::vector<Tensor>& g) {
            Tensor gq = q.requires_grad() ? grad_buffer(q) : Tensor();
            Tensor gk = kmem.requires_grad() ? grad_buffer(kmem) : Tensor();
            Tensor gv = vmem.requires_grad() ? grad_buffer(vmem) : Tensor();
            Tensor gw = weights.requires_grad() ? grad_buffer(weights) : Tensor();
            backend_of(q).hsa_backward(q, kmem, vmem, indices, weights, chunk_size, lse, g[0], gq, gk, gv, gw);
            Tensor tq = q, tk = kmem, tv = vmem, tw = weights;
            if (gq.defined()) tq.accumulate_grad(gq);
            if (gk.defined()) tk.accumulate_grad(gk);
            if (gv.defined()) tv.accumulate_grad(gv);
            if (gw.defined()) tw.accumulate_grad(gw);
        });
    }
    return out;
}

// ---------------------------------------------------------------- loss

namespace {

struct LossTargets {
    Tensor targets;  // [N] i32
    Tensor mask;     // [N] f32 or undefined
};

LossTargets flat_loss_targets(const char* op, int64_t N, const Tensor& targets, const Tensor& mask) {
    HSA_CHECK(targets.dtype() == DType::I32 && targets.numel() == N,
              op << ": targets must be i32 with " << N << " entries, got " << dtype_name(targets.dtype()) << " "
                 << shape_string(targets.shape()));
    LossTargets t{targets.view({targets.numel()}), Tensor()};
    if (mask.defined()) {
        check_float(mask, op, "mask");
        HSA_CHECK(mask.numel() == N, op << ": mask has " << mask.numel() << " entries, expected " << N);
        t.mask = mask.view({mask.numel()});
    }
    return t;
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& mask) {
    check_float(logits, "cross_entropy", "logits");
    HSA_CHECK(logits.ndim() == 2, "cross_entropy: logits must be [N, V], got " << shape_string(logits.shape()));
    const LossTargets t = flat_loss_targets("cross_entropy", logits.size(0), targets, mask);
    Tensor flat_targets = t.targets, flat_mask = t.mask;
    Tensor loss = Tensor::empty({}, DType::F32, logits.device());
    Tensor lse = Tensor::empty({logits.size(0)}, DType::F32, logits.device());
    backend_of(logits).cross_entropy_forward(logits, flat_targets, flat_mask, loss, lse);
    if (Tape::current().should_record({&logits})) {
        Tape::current().record({loss}, [logits, flat_targets, flat_mask, lse](const std::vector<Tensor>& g) {
            Tensor gl = grad_buffer(logits);
            backend_of(logits).cross_entropy_backward(logits, flat_targets, flat_mask, lse, g[0].item(), gl);
            Tensor target = logits;
            target.accumulate_grad(gl);
        });
    }
    return loss;
}

Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, bool transpose_weight, const Tensor& targets,
                            const Tensor& mask) {
    const char* op = "linear_cross_entropy";
    check_float(x, op, "x");
    check_float(weight, op, "weight");
    check_same_device(x, weight, op);
    HSA_CHECK(x.ndim() == 2, op << ": x must be [N, D], got " << shape_string(x.shape()));
    HSA_CHECK(weight.ndim() == 2, op << ": weight must be 2-D, got " << shape_string(weight.shape()));
    const int64_t D = x.size(1), N = x.size(0);
    const int64_t weight_in = transpose_weight ? weight.size(1) : weight.size(0);
    HSA_CHECK(weight_in == D, op << ": x " << shape_string(x.shape()) << " does not match weight "
                                 << shape_string(weight.shape()) << (transpose_weight ? " (transposed)" : ""));
    const LossTargets t = flat_loss_targets(op, N, targets, mask);
    Tensor flat_targets = t.targets, flat_mask = t.mask;
    Backend& backend = backend_of(x);
    // f32, or bf16 at the CUDA backend's bf16 precision (Backend::head_logits).
    Tensor logits = backend.head_logits(x, weight, transpose_weight);
    Tensor loss = Tensor::empty({}, DType::F32, x.device());
    Tensor lse = Tensor::empty({N}, DType::F32, x.device());
    if (!Tape::current().should_record({&x, &weight})) {
        backend.cross_entropy_forward(logits, flat_targets, flat_mask, loss, lse);
        return loss;
    }
    // True: logits now hold d loss / d logits at grad_loss 1 (the CUDA backend's bf16 logits).
    const bool gradient_in_place =
        backend.cross_entropy_forward_with_gradient(logits, flat_targets, flat_mask, loss, lse);
    Tape::current().record({loss}, [x, weight, transpose_weight, logits, flat_targets, flat_mask, lse,
                                     gradient_in_place](const std::vector<Tensor>& g) {
        GradTarget gx(x), gw(weight);
        Backend& b = backend_of(x);
        if (gradient_in_place) {
            b.scaled_gemm_backward(x, false, weight, transpose_weight, logits, g[0].item(), gx.grad, gw.grad,
                                   gx.accumulate, gw.accumulate);
        } else if (gx.grad.defined() || gw.grad.defined()) {  // as cross_entropy then matmul would
            Tensor grad_logits = Tensor::empty(logits.shape(), DType::F32, logits.device());
            b.cross_entropy_backward(logits, flat_targets, flat_mask, lse, g[0].item(), grad_logits);
            b.gemm_backward(x, false, weight, transpose_weight, grad_logits, gx.grad, gw.grad, gx.accumulate,
                            gw.accumulate);
        }
        gx.deliver(x);
        gw.deliver(weight);
    });
    return loss;
}

}  // namespace hsa::ops
