#include "core/backend_checks.h"

#include <algorithm>
#include <initializer_list>

namespace hsa::checks {

namespace {

template <class T>
T* typed_data(const Tensor& t, const char* op, const char* what, Device device, DType dtype) {
    HSA_CHECK(t.defined(), op << ": " << what << " is undefined");
    HSA_CHECK(t.device() == device,
              op << ": " << what << " is on " << device_name(t.device()) << ", expected " << backend_name(device));
    HSA_CHECK(t.dtype() == dtype,
              op << ": " << what << " has dtype " << dtype_name(t.dtype()) << ", expected " << dtype_name(dtype));
    HSA_CHECK(t.is_contiguous(), op << ": " << what << " " << shape_string(t.shape()) << " is not contiguous");
    return t.data<T>();
}

// An operand that is f32, or on the CUDA backend also bf16 (an activation its producer
// already rounded for the products: core/backend.h). The same rule as the ops' check
// (core/ops.cpp), keyed on the device because the checks cannot see the backend.
void check_operand(const Tensor& t, const char* op, const char* what, Device device) {
    if (device == Device::CUDA && t.defined() && t.dtype() == DType::BF16) {
        typed_data<uint16_t>(t, op, what, device, DType::BF16);
        return;
    }
    f32_data(t, op, what, device);
}

struct Named {
    const char* name;
    const Tensor& t;
};

// f32 checks on every tensor, in order; then each but tensors[sized] must have as many
// elements as tensors[sized]. Returns that count.
int64_t check_f32_same_numel(const char* op, std::initializer_list<Named> tensors, size_t sized, Device device) {
    for (const Named& x : tensors) f32_data(x.t, op, x.name, device);
    const int64_t n = tensors.begin()[sized].t.numel();
    size_t i = 0;
    for (const Named& x : tensors)
        if (i++ != sized) check_numel(x.t, n, op, x.name);
    return n;
}

// Leading dims flattened into a batch count; the last two are the matrix.
struct MatShape {
    int64_t batch, rows, cols;
};

MatShape mat_shape(const Tensor& t, const char* what) {
    HSA_CHECK(t.ndim() >= 2, "gemm: " << what << " " << shape_string(t.shape()) << " must have at least 2 dims");
    int64_t batch = 1;
    for (int i = 0; i + 2 < t.ndim(); ++i) batch *= t.size(i);
    return {batch, t.size(-2), t.size(-1)};
}

}  // namespace

const char* backend_name(Device device) { return device == Device::CPU ? "CPU" : "CUDA"; }

// ---------------------------------------------------------------------------------------
// generic

float* f32_data(const Tensor& t, const char* op, const char* what, Device device) {
    return typed_data<float>(t, op, what, device, DType::F32);
}

int32_t* i32_data(const Tensor& t, const char* op, const char* what, Device device) {
    return typed_data<int32_t>(t, op, what, device, DType::I32);
}

void check_numel(const Tensor& t, int64_t expected, const char* op, const char* what) {
    HSA_CHECK(t.numel() == expected, op << ": " << what << " " << shape_string(t.shape()) << " has " << t.numel()
                                        << " elements, expected " << expected);
}

void check_tensor(const char* op, const char* name, const Tensor& t, const Shape& expected, DType dtype,
                  Device device) {
    HSA_CHECK(t.defined(), op << ": " << name << " is undefined, expected shape " << shape_string(expected));
    HSA_CHECK(t.device() == device, op << ": " << name << " is on " << device_name(t.device()) << ", expected "
                                       << device_name(device) << " (" << backend_name(device) << " backend)");
    HSA_CHECK(t.dtype() == dtype, op << ": " << name << " has dtype " << dtype_name(t.dtype()) << ", expected "
                                     << dtype_name(dtype));
    HSA_CHECK(t.shape() == expected, op << ": " << name << " has shape " << shape_string(t.shape()) << ", expected "
                                        << shape_string(expected));
    HSA_CHECK(t.is_contiguous(), op << ": " << name << " of shape " << shape_string(t.shape())
                                    << " is not contiguous, expected a contiguous tensor");
}

bool wanted(const char* op, const char* name, const Tensor& t, const Shape& expected, Device device) {
    if (!t.defined()) return false;
    check_tensor(op, name, t, expected, DType::F32, device);
    return true;
}

void check_rank(const char* op, const char* name, const Tensor& t, int rank, const char* layout) {
    HSA_CHECK(t.defined(), op << ": " << name << " is undefined, expected a " << layout << " tensor");
    HSA_CHECK(t.ndim() == rank, op << ": " << name << " has shape " << shape_string(t.shape()) << ", expected "
                                   << layout);
}

// ---------------------------------------------------------------------------------------
// elementwise and data movement

int64_t check_binary(const char* op, const Tensor& a, const Tensor& b, const Tensor& out, Device device) {
    return check_f32_same_numel(op, {{"a", a}, {"b", b}, {"out", out}}, 0, device);
}

int64_t check_scale(const Tensor& a, const Tensor& out, Device device) {
    return check_f32_same_numel("scale", {{"a", a}, {"out", out}}, 0, device);
}

int64_t check_axpy(const Tensor& x, const Tensor& target, Device device) {
    return check_f32_same_numel("axpy", {{"x", x}, {"target", target}}, 1, device);
}

void check_copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, const Tensor& dst,
                     int64_t dst_len, int64_t dst_start, int64_t length, int64_t inner, Device device) {
    f32_data(src, "copy_rows", "src", device);
    f32_data(dst, "copy_rows", "dst", device);
    HSA_CHECK(outer >= 0 && src_len >= 0 && dst_len >= 0 && length >= 0 && inner >= 0,
              "copy_rows: negative size (outer " << outer << ", src_len " << src_len << ", dst_len " << dst_len
                                                 << ", length " << length << ", inner " << inner << ")");
    check_numel(src, outer * src_len * inner, "copy_rows", "src");
    check_numel(dst, outer * dst_len * inner, "copy_rows", "dst");
    HSA_CHECK(src_start >= 0 && src_start + length <= src_len,
              "copy_rows: source rows [" << src_start << ", " << src_start + length << ") outside [0, " << src_len << ")");
    HSA_CHECK(dst_start >= 0 && dst_start + length <= dst_len,
              "copy_rows: destination rows [" << dst_start << ", " << dst_start + length << ") outside [0, " << dst_len
                                              << ")");
}

void check_sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out, Device device) {
    f32_data(x, "sum_middle", "x", device);
    f32_data(out, "sum_middle", "out", device);
    HSA_CHECK(outer >= 0 && n >= 0 && inner >= 0,
              "sum_middle: negative size (outer " << outer << ", n " << n << ", inner " << inner << ")");
    check_numel(x, outer * n * inner, "sum_middle", "x");
    check_numel(out, outer * inner, "sum_middle", "out");
}

void check_broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out,
                            Device device) {
    f32_data(x, "broadcast_middle", "x", device);
    f32_data(out, "broadcast_middle", "out", device);
    HSA_CHECK(outer >= 0 && n >= 0 && inner >= 0,
              "broadcast_middle: negative size (outer " << outer << ", n " << n << ", inner " << inner << ")");
    check_numel(x, outer * inner, "broadcast_middle", "x");
    check_numel(out, outer * n * inner, "broadcast_middle", "out");
}

// ---------------------------------------------------------------------------------------
// embedding

EmbeddingDims check_embedding(const Tensor& table, const Tensor& ids, const Tensor& out, Device device) {
    f32_data(table, "embedding", "table", device);
    i32_data(ids, "embedding", "ids", device);
    f32_data(out, "embedding", "out", device);
    HSA_CHECK(table.ndim() == 2, "embedding: table " << shape_string(table.shape()) << " must be [V, D]");
    const EmbeddingDims dims{table.size(0), table.size(1), ids.numel()};
    check_numel(out, dims.N * dims.D, "embedding", "out");
    return dims;
}

EmbeddingDims check_embedding_backward(const Tensor& ids, const Tensor& grad_out, const Tensor& grad_table,
                                       Device device) {
    i32_data(ids, "embedding_backward", "ids", device);
    f32_data(grad_out, "embedding_backward", "grad_out", device);
    f32_data(grad_table, "embedding_backward", "grad_table", device);
    HSA_CHECK(grad_table.ndim() == 2,
              "embedding_backward: grad_table " << shape_string(grad_table.shape()) << " must be [V, D]");
    const EmbeddingDims dims{grad_table.size(0), grad_table.size(1), ids.numel()};
    check_numel(grad_out, dims.N * dims.D, "embedding_backward", "grad_out");
    return dims;
}

// ---------------------------------------------------------------------------------------
// gemm

GemmDims check_gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& out,
                    Device device, bool out_may_be_bf16) {
    check_operand(a, "gemm", "a", device);
    check_operand(b, "gemm", "b", device);
    if (out_may_be_bf16) check_operand(out, "gemm", "out", device);
    else f32_data(out, "gemm", "out", device);
    const MatShape sa = mat_shape(a, "a"), sb = mat_shape(b, "b"), so = mat_shape(out, "out");
    const int64_t M = transpose_a ? sa.cols : sa.rows;
    const int64_t K = transpose_a ? sa.rows : sa.cols;
    const int64_t Kb = transpose_b ? sb.cols : sb.rows;
    const int64_t N = transpose_b ? sb.rows : sb.cols;
    HSA_CHECK(K == Kb, "gemm: inner dims differ: op(a) of " << shape_string(a.shape()) << (transpose_a ? " (T)" : "")
                                                            << " has " << K << " columns, op(b) of "
                                                            << shape_string(b.shape()) << (transpose_b ? " (T)" : "")
                                                            << " has " << Kb << " rows");
    HSA_CHECK(so.rows == M && so.cols == N, "gemm: out " << shape_string(out.shape()) << " should end in [" << M
                                                         << ", " << N << "]");
    const int64_t B = std::max(sa.batch, std::max(sb.batch, so.batch));
    HSA_CHECK((sa.batch == 1 || sa.batch == B) && (sb.batch == 1 || sb.batch == B) && (so.batch == 1 || so.batch == B),
              "gemm: batch counts a " << sa.batch << ", b " << sb.batch << ", out " << so.batch
                                      << " must each be 1 or a common B = " << B);
    return {M, N, K, B, sa.batch, sb.batch, so.batch};
}

// ---------------------------------------------------------------------------------------
// RMSNorm

RmsNormDims check_rmsnorm(const Tensor& x, const Tensor& weight, const Tensor& out, const Tensor& inv_rms,
                          Device device) {
    f32_data(x, "rmsnorm", "x", device);
    check_operand(out, "rmsnorm", "out", device);
    f32_data(inv_rms, "rmsnorm", "inv_rms", device);
    HSA_CHECK(x.ndim() >= 1 && x.size(-1) > 0, "rmsnorm: x " << shape_string(x.shape()) << " needs a last dim D > 0");
    const int64_t D = x.size(-1), N = x.numel() / D;
    if (weight.defined()) {
        f32_data(weight, "rmsnorm", "weight", device);
        HSA_CHECK(weight.numel() == D, "rmsnorm: weight " << shape_string(weight.shape()) << " should be [" << D << "]");
    }
    check_numel(out, N * D, "rmsnorm", "out");
    check_numel(inv_rms, N, "rmsnorm", "inv_rms");
    return {N, D};
}

RmsNormDims check_rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                   const Tensor& grad_out, const Tensor& grad_x, const Tensor& grad_weight,
                                   Device device) {
    f32_data(x, "rmsnorm_backward", "x", device);
    f32_data(inv_rms, "rmsnorm_backward", "inv_rms", device);
    f32_data(grad_out, "rmsnorm_backward", "grad_out", device);
    HSA_CHECK(x.ndim() >= 1 && x.size(-1) > 0,
              "rmsnorm_backward: x " << shape_string(x.shape()) << " needs a last dim D > 0");
    const int64_t D = x.size(-1), N = x.numel() / D;
    if (weight.defined()) {
        f32_data(weight, "rmsnorm_backward", "weight", device);
        HSA_CHECK(weight.numel() == D,
                  "rmsnorm_backward: weight " << shape_string(weight.shape()) << " should be [" << D << "]");
    }
    check_numel(inv_rms, N, "rmsnorm_backward", "inv_rms");
    check_numel(grad_out, N * D, "rmsnorm_backward", "grad_out");
    if (grad_x.defined()) {
        f32_data(grad_x, "rmsnorm_backward", "grad_x", device);
        check_numel(grad_x, N * D, "rmsnorm_backward", "grad_x");
    }
    if (grad_weight.defined()) {
        HSA_CHECK(weight.defined(), "rmsnorm_backward: grad_weight is defined but weight is undefined");
        f32_data(grad_weight, "rmsnorm_backward", "grad_weight", device);
        check_numel(grad_weight, D, "rmsnorm_backward", "grad_weight");
    }
    return {N, D};
}

// ---------------------------------------------------------------------------------------
// RoPE, SwiGLU

RopeDims check_rope(const char* op, const Tensor& x, float base, const Tensor& out, Device device,
                    bool out_may_be_bf16) {
    f32_data(x, op, "x", device);
    // bf16 on CUDA only for rmsnorm_rope's q / k when the attention takes them so.
    if (out_may_be_bf16) check_operand(out, op, "out", device);
    else f32_data(out, op, "out", device);
    HSA_CHECK(x.ndim() == 4, op << ": x " << shape_string(x.shape()) << " must be [B, T, H, d]");
    const RopeDims dims{x.size(0), x.size(1), x.size(2), x.size(3)};
    HSA_CHECK(dims.d % 2 == 0,
              op << ": head dim d = " << dims.d << " of " << shape_string(x.shape()) << " must be even");
    HSA_CHECK(out.shape() == x.shape(),
              op << ": out " << shape_string(out.shape()) << " should be " << shape_string(x.shape()));
    HSA_CHECK(base > 0.0f, op << ": base " << base << " must be positive");
    return dims;
}

int64_t check_swiglu(const Tensor& gate, const Tensor& up, const Tensor& out, Device device) {
    f32_data(gate, "swiglu", "gate", device);
    f32_data(up, "swiglu", "up", device);
    f32_data(out, "swiglu", "out", device);
    HSA_CHECK(up.shape() == gate.shape(),
              "swiglu: up " << shape_string(up.shape()) << " should match gate " << shape_string(gate.shape()));
    const int64_t n = gate.numel();
    check_numel(out, n, "swiglu", "out");
    return n;
}

int64_t check_swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, const Tensor& grad_gate,
                              const Tensor& grad_up, Device device) {
    const int64_t n =
        check_f32_same_numel("swiglu_backward", {{"gate", gate}, {"up", up}, {"grad_out", grad_out}}, 0, device);
    if (grad_gate.defined()) {
        f32_data(grad_gate, "swiglu_backward", "grad_gate", device);
        check_numel(grad_gate, n, "swiglu_backward", "grad_gate");
    }
    if (grad_up.defined()) {
        f32_data(grad_up, "swiglu_backward", "grad_up", device);
        check_numel(grad_up, n, "swiglu_backward", "grad_up");
    }
    return n;
}

// ---------------------------------------------------------------------------------------
// cross-entropy

CrossEntropyInputs check_cross_entropy_inputs(const char* op, const Tensor& logits, const Tensor& targets,
                                              const Tensor& mask, Device device, bool allow_bf16_logits) {
    CrossEntropyInputs in{};
    if (allow_bf16_logits && logits.defined() && logits.dtype() == DType::BF16) {
        check_operand(logits, op, "logits", device);
        in.logits_bf16 = logits.raw_data();
    } else {
        in.logits = f32_data(logits, op, "logits", device);
    }
    in.targets = i32_data(targets, op, "targets", device);
    HSA_CHECK(logits.ndim() == 2, op << ": logits " << shape_string(logits.shape()) << " must be [N, V]");
    in.N = logits.size(0);
    in.V = logits.size(1);
    HSA_CHECK(targets.numel() == in.N,
              op << ": targets " << shape_string(targets.shape()) << " should have N = " << in.N << " elements");
    if (mask.defined()) {
        in.mask = f32_data(mask, op, "mask", device);
        HSA_CHECK(mask.numel() == in.N,
                  op << ": mask " << shape_string(mask.shape()) << " should have N = " << in.N << " elements");
    }
    return in;
}

void check_cross_entropy_outputs(const CrossEntropyInputs& in, const Tensor& logits, const Tensor& loss,
                                 const Tensor& lse, Device device) {
    f32_data(loss, "cross_entropy", "loss", device);
    f32_data(lse, "cross_entropy", "lse", device);
    check_numel(loss, 1, "cross_entropy", "loss");
    check_numel(lse, in.N, "cross_entropy", "lse");
    HSA_CHECK(in.V > 0 || in.N == 0, "cross_entropy: logits " << shape_string(logits.shape()) << " has V = 0");
}

void check_cross_entropy_grad(const CrossEntropyInputs& in, const Tensor& logits, const Tensor& lse,
                              const Tensor& grad_logits, Device device) {
    f32_data(lse, "cross_entropy_backward", "lse", device);
    f32_data(grad_logits, "cross_entropy_backward", "grad_logits", device);
    check_numel(lse, in.N, "cross_entropy_backward", "lse");
    HSA_CHECK(grad_logits.shape() == logits.shape(), "cross_entropy_backward: grad_logits "
                                                         << shape_string(grad_logits.shape()) << " should be "
                                                         << shape_string(logits.shape()));
}

// ---------------------------------------------------------------------------------------
// AdamW

int64_t check_adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, int64_t step,
                    Device device) {
    const int64_t n = check_f32_same_numel("adamw", {{"param", param}, {"grad", grad}, {"m", m}, {"v", v}}, 0, device);
    HSA_CHECK(step >= 1, "adamw: step " << step << " must be >= 1 (steps count from 1)");
    return n;
}

// ---------------------------------------------------------------------------------------
// local attention

// The dtype an attention tensor may have: f32, or on CUDA also bf16 (an output that only
// feeds a product, stored rounded; q / k rounded by their producer: core/backend.h).
DType attention_dtype(const Tensor& t, Device device) {
    return device == Device::CUDA && t.defined() && t.dtype() == DType::BF16 ? DType::BF16 : DType::F32;
}

AttentionDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span,
                             Device device) {
    check_rank(op, "q", q, 4, "[B, T, H, d]");
    check_rank(op, "k", k, 4, "[B, T, Hk, d]");
    AttentionDims dims{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 0};
    HSA_CHECK(dims.H > 0 && dims.d > 0, op << ": q has shape " << shape_string(q.shape())
                                           << ", expected [B, T, H, d] with H > 0 and d > 0");
    HSA_CHECK(dims.Hk > 0 && dims.H % dims.Hk == 0,
              op << ": k has shape " << shape_string(k.shape()) << ", expected [B, T, Hk, d] with Hk dividing H = "
                 << dims.H);
    dims.group = dims.H / dims.Hk;
    // q and k: f32, or on CUDA bf16 (rmsnorm_rope's rounded output: the attention's products
    // take them in bf16 anyway).
    check_tensor(op, "q", q, {dims.B, dims.T, dims.H, dims.d}, attention_dtype(q, device), device);
    check_tensor(op, "k", k, {dims.B, dims.T, dims.Hk, dims.d}, attention_dtype(k, device), device);
    check_tensor(op, "v", v, {dims.B, dims.T, dims.Hk, dims.d}, DType::F32, device);
    HSA_CHECK(span.window >= 0, op << ": window " << span.window << " is negative, expected >= 0 (0 = unlimited)");
    HSA_CHECK(span.causal || span.window == 0, op << ": window " << span.window
                                                  << " given for bidirectional attention, expected 0 (causal only)");
    return dims;
}

AttentionDims check_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span,
                                      const Tensor& out, const Tensor& lse, Device device) {
    const char* op = "attention_forward";
    const AttentionDims D = attention_dims(op, q, k, v, span, device);
    check_tensor(op, "out", out, {D.B, D.T, D.H, D.d}, attention_dtype(out, device), device);
    check_tensor(op, "lse", lse, {D.B, D.T, D.H}, DType::F32, device);
    return D;
}

AttentionBackwardDims check_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                               const Tensor& lse, const Tensor& grad_out, AttentionSpan span,
                                               const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v,
                                               Device device) {
    const char* op = "attention_backward";
    AttentionBackwardDims D{};
    static_cast<AttentionDims&>(D) = attention_dims(op, q, k, v, span, device);
    check_tensor(op, "out", out, {D.B, D.T, D.H, D.d}, attention_dtype(out, device), device);
    check_tensor(op, "lse", lse, {D.B, D.T, D.H}, DType::F32, device);
    check_tensor(op, "grad_out", grad_out, {D.B, D.T, D.H, D.d}, DType::F32, device);
    D.want_q = wanted(op, "grad_q", grad_q, {D.B, D.T, D.H, D.d}, device);
    D.want_k = wanted(op, "grad_k", grad_k, {D.B, D.T, D.Hk, D.d}, device);
    D.want_v = wanted(op, "grad_v", grad_v, {D.B, D.T, D.Hk, D.d}, device);
    return D;
}

// ---------------------------------------------------------------------------------------
// retrieval

RetrievalDims retrieval_dims(const char* op, const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                             Device device) {
    check_rank(op, "qr", qr, 4, "[B, T, Hr, dr]");
    check_rank(op, "landmarks", landmarks, 4, "[B, C, Hr, dr]");
    check_rank(op, "indices", indices, 4, "[B, T, Hr, K]");
    RetrievalDims dims{qr.size(0), qr.size(1), qr.size(2), qr.size(3), landmarks.size(1), indices.size(3)};
    HSA_CHECK(dims.Hr > 0 && dims.dr > 0, op << ": qr has shape " << shape_string(qr.shape())
                                             << ", expected [B, T, Hr, dr] with Hr > 0 and dr > 0");
    HSA_CHECK(dims.K > 0, op << ": indices has shape " << shape_string(indices.shape())
                             << ", expected [B, T, Hr, K] with K > 0");
    check_tensor(op, "qr", qr, {dims.B, dims.T, dims.Hr, dims.dr}, DType::F32, device);
    check_tensor(op, "landmarks", landmarks, {dims.B, dims.C, dims.Hr, dims.dr}, DType::F32, device);
    check_tensor(op, "indices", indices, {dims.B, dims.T, dims.Hr, dims.K}, DType::I32, device);
    return dims;
}

RetrievalDims check_select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size,
                                  const Tensor& indices, Device device) {
    const char* op = "select_chunks";
    HSA_CHECK(chunk_size > 0, op << ": chunk_size " << chunk_size << " is not positive");
    return retrieval_dims(op, qr, landmarks, indices, device);
}

RetrievalDims check_chunk_weights_forward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                          const Tensor& weights, Device device) {
    const char* op = "chunk_weights_forward";
    const RetrievalDims D = retrieval_dims(op, qr, landmarks, indices, device);
    check_tensor(op, "weights", weights, {D.B, D.T, D.Hr, D.K}, DType::F32, device);
    return D;
}

ChunkWeightsBackwardDims check_chunk_weights_backward(const Tensor& qr, const Tensor& landmarks,
                                                      const Tensor& indices, const Tensor& weights,
                                                      const Tensor& grad_weights, const Tensor& grad_qr,
                                                      const Tensor& grad_landmarks, Device device) {
    const char* op = "chunk_weights_backward";
    ChunkWeightsBackwardDims D{};
    static_cast<RetrievalDims&>(D) = retrieval_dims(op, qr, landmarks, indices, device);
    check_tensor(op, "weights", weights, {D.B, D.T, D.Hr, D.K}, DType::F32, device);
    check_tensor(op, "grad_weights", grad_weights, {D.B, D.T, D.Hr, D.K}, DType::F32, device);
    D.want_qr = wanted(op, "grad_qr", grad_qr, {D.B, D.T, D.Hr, D.dr}, device);
    D.want_landmarks = wanted(op, "grad_landmarks", grad_landmarks, {D.B, D.C, D.Hr, D.dr}, device);
    return D;
}

// ---------------------------------------------------------------------------------------
// HSA

HsaDims hsa_dims(const char* op, const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                 const Tensor& weights, int64_t chunk_size, Device device) {
    check_rank(op, "q", q, 4, "[B, T, H, d]");
    check_rank(op, "kmem", kmem, 4, "[B, Tm, Hk, d]");
    check_rank(op, "indices", indices, 4, "[B, T, Hr, K]");
    HsaDims dims{};
    dims.B = q.size(0);
    dims.T = q.size(1);
    dims.H = q.size(2);
    dims.d = q.size(3);
    dims.Tm = kmem.size(1);
    dims.Hk = kmem.size(2);
    dims.Hr = indices.size(2);
    dims.K = indices.size(3);
    dims.S = chunk_size;
    HSA_CHECK(chunk_size > 0, op << ": chunk_size " << chunk_size << " is not positive");
    HSA_CHECK(dims.H > 0 && dims.d > 0, op << ": q has shape " << shape_string(q.shape())
                                           << ", expected [B, T, H, d] with H > 0 and d > 0");
    HSA_CHECK(dims.Hk > 0 && dims.H % dims.Hk == 0, op << ": kmem has shape " << shape_string(kmem.shape())
                                                       << ", expected [B, Tm, Hk, d] with Hk dividing H = " << dims.H);
    HSA_CHECK(dims.Hr > 0 && dims.Hk % dims.Hr == 0, op << ": indices has shape " << shape_string(indices.shape())
                                                        << ", expected [B, T, Hr, K] with Hr dividing Hk = "
                                                        << dims.Hk);
    HSA_CHECK(dims.K > 0, op << ": indices has shape " << shape_string(indices.shape())
                             << ", expected [B, T, Hr, K] with K > 0");
    dims.C = dims.Tm / dims.S;
    dims.heads_per_kv = dims.H / dims.Hk;
    dims.heads_per_r = dims.H / dims.Hr;
    check_tensor(op, "q", q, {dims.B, dims.T, dims.H, dims.d}, DType::F32, device);
    check_tensor(op, "kmem", kmem, {dims.B, dims.Tm, dims.Hk, dims.d}, DType::F32, device);
    check_tensor(op, "vmem", vmem, {dims.B, dims.Tm, dims.Hk, dims.d}, DType::F32, device);
    check_tensor(op, "indices", indices, {dims.B, dims.T, dims.Hr, dims.K}, DType::I32, device);
    check_tensor(op, "weights", weights, {dims.B, dims.T, dims.Hr, dims.K}, DType::F32, device);
    return dims;
}

HsaDims check_hsa_forward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                          const Tensor& weights, int64_t chunk_size, const Tensor& out, const Tensor& lse,
                          Device device) {
    const char* op = "hsa_forward";
    const HsaDims D = hsa_dims(op, q, kmem, vmem, indices, weights, chunk_size, device);
    check_tensor(op, "out", out, {D.B, D.T, D.H, D.d}, DType::F32, device);
    check_tensor(op, "lse", lse, {D.B, D.T, D.H, D.K}, DType::F32, device);
    return D;
}

HsaBackwardDims check_hsa_backward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                                   const Tensor& weights, int64_t chunk_size, const Tensor& lse,
                                   const Tensor& grad_out, const Tensor& grad_q, const Tensor& grad_kmem,
                                   const Tensor& grad_vmem, const Tensor& grad_weights, Device device) {
    const char* op = "hsa_backward";
    HsaBackwardDims D{};
    static_cast<HsaDims&>(D) = hsa_dims(op, q, kmem, vmem, indices, weights, chunk_size, device);
    check_tensor(op, "lse", lse, {D.B, D.T, D.H, D.K}, DType::F32, device);
    check_tensor(op, "grad_out", grad_out, {D.B, D.T, D.H, D.d}, DType::F32, device);
    D.want_q = wanted(op, "grad_q", grad_q, {D.B, D.T, D.H, D.d}, device);
    D.want_kmem = wanted(op, "grad_kmem", grad_kmem, {D.B, D.Tm, D.Hk, D.d}, device);
    D.want_vmem = wanted(op, "grad_vmem", grad_vmem, {D.B, D.Tm, D.Hk, D.d}, device);
    D.want_weights = wanted(op, "grad_weights", grad_weights, {D.B, D.T, D.Hr, D.K}, device);
    return D;
}

}  // namespace hsa::checks
