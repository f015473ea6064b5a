// Backend: the device-level implementations behind every op. core/ops.h (the autograd
// layer) allocates outputs, calls a backend's forward, and records a closure on the tape
// that calls the matching backward. The CPU backend (core/cpu/) is the reference; the
// CUDA backend (kernels/) registers itself at start-up and must match it.
//
// Conventions, stated once:
// - All floating tensors are contiguous; f32 on the CPU backend. Index tensors are i32.
// - Outputs are preallocated by the caller with the documented shapes.
// - Backward methods WRITE (=) their gradient outputs; the tape accumulates them (+=)
//   into the tensors' .grad. A gradient output that is undefined is not wanted: skip it.
// - Shapes: B batch, T tokens, H query heads, Hk key/value heads (H % Hk == 0, head h
//   uses KV head h / (H/Hk)), d head dim, C chunks, S chunk size, Hr retrieval heads
//   (Hk % Hr == 0; KV head g uses retrieval head g / (Hk/Hr)), dr retrieval head dim, K top-K.
// The math of every op is in shared/design/MODEL.md.
#pragma once

#include <cstdint>
#include <memory>

#include <vector>

#include "core/tensor.h"

namespace hsa {

// Which keys a query sees in local_attention.
struct AttentionSpan {
    bool causal = true;   // causal: token t sees s <= t; otherwise all s (bidirectional)
    int64_t window = 0;   // causal only: t sees s in [t - window + 1, t]; 0 = unlimited
};

enum class WeightKind { Softmax, StickBreak };

// What Backend::swiglu_mlp_backward needs from its forward: gate = x w1 and up = x w3 (the
// SwiGLU's inputs), and the two products' left operands in the form the backend multiplies
// them: x and h = silu(gate) * up. x_operand has x's dtype (f32, or bf16 where the backend
// takes bf16 operands); gate, up and h are f32 by default and bf16 on the CUDA backend's
// fused path at bf16 precision, where h is never stored in f32. That path also keeps its
// bf16 copies of the weights (the backward multiplies by the same values; undefined by
// default), and groups: gate holds [gate | up] as one [N, 2F] tensor and w1_operand
// [w1 | w3] as one [D, 2F] (one product each way), up and w3_operand staying undefined.
struct MlpSaved {
    Tensor gate, up;
    Tensor x_operand, hidden_operand;
    Tensor w1_operand, w3_operand, w2_operand;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual Device device() const = 0;
    // Whether products (gemm, gemm_backward, swiglu_mlp's x) take bf16 operands and
    // rmsnorm / add_rmsnorm write a bf16 out: the CUDA backend, so at bf16 precision a
    // normalised activation that only feeds products is stored once, rounded, in half the bytes.
    virtual bool takes_bf16_operands() const { return false; }
    // Whether local_attention multiplies q and k of this head dim as bf16 at the current
    // precision (the CUDA tensor-core kernels: d 64 at bf16 precision), so that a producer may
    // store them rounded (rmsnorm_rope's out_dtype) with no loss; elsewhere f32 is kept.
    virtual bool attention_takes_bf16_qk(int64_t /*head_dim*/) const { return false; }
    // x as a product of M x K by K x N (either side, either transpose) would multiply it: x
    // itself, or on CUDA at bf16 precision an f32 x rounded to a bf16 copy (the rounding gemm
    // does inside; same bits). A caller that multiplies x again (linear: forward, then the
    // weight gradient) rounds it once instead of once a product.
    virtual Tensor product_operand(const Tensor& x, int64_t M, int64_t N, int64_t K) {
        (void)M, (void)N, (void)K;
        return x;
    }

    // ---- elementwise and data movement (any shapes, equal numel) ----
    virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;         // out = a + b
    virtual void mul(const Tensor& a, const Tensor& b, Tensor& out) = 0;         // out = a * b
    virtual void scale(const Tensor& a, float alpha, Tensor& out) = 0;           // out = alpha * a
    virtual void axpy(float alpha, const Tensor& x, Tensor& target) = 0;         // target += alpha * x
    // Views src as [outer, src_len, inner] and dst as [outer, dst_len, inner] and copies
    // rows [src_start, src_start+length) to rows [dst_start, ...). accumulate: += instead of =.
    virtual void copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, Tensor& dst,
                           int64_t dst_len, int64_t dst_start, int64_t length, int64_t inner, bool accumulate) = 0;
    // out[o, i] = alpha * sum_n x[o, n, i]      (x viewed as [outer, n, inner])
    virtual void sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha, Tensor& out) = 0;
    // out[o, n, i] = alpha * x[o, i]            (out viewed as [outer, n, inner])
    virtual void broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha,
                                  Tensor& out) = 0;
    virtual double sum_of_squares(const Tensor& x) = 0;  // accumulated in double
    // sum_of_squares of each tensor, equal to calling it one by one (which is what this
    // default does). The CUDA backend reads all results back in one transfer: one device
    // round trip for a whole gradient norm instead of one per parameter.
    virtual std::vector<double> sum_of_squares_many(const std::vector<Tensor>& xs) {
        std::vector<double> out;
        out.reserve(xs.size());
        for (const Tensor& x : xs) out.push_back(sum_of_squares(x));
        return out;
    }
    virtual double sum(const Tensor& x) = 0;             // accumulated in double

    // ---- embedding: table [V, D], ids i32 [N] (each in [0, V)), out [N, D] ----
    virtual void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) = 0;
    virtual void embedding_backward(const Tensor& ids, const Tensor& grad_out, Tensor& grad_table) = 0;

    // ---- matrix product: out = op(a) . op(b), op = transpose when asked ----
    // a: [Ba, M, K] (or [K, M] transposed), b: [Bb, K, N] (or [N, K]), out: [Bo, M, N];
    // 2-D tensors are batch 1. Batch counts are 1 or a common B: a batch of 1 is shared,
    // and an out batch of 1 with B > 1 sums over the batch. accumulate: out += instead of =.
    // On the CUDA backend (takes_bf16_operands()) a and b may also be bf16: an activation
    // its producer already rounded (rmsnorm's bf16 out), multiplied as is at bf16 precision;
    // gradients stay f32. gemm_backward and swiglu_mlp's x take them the same way.
    virtual void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& out,
                      bool accumulate) = 0;
    // Both gradients of out = op(a) . op(b) from the output gradient g: grad_a (shaped as a)
    // and grad_b (as b), either undefined when not wanted; written (=), or added (+=) when
    // accumulate_a / accumulate_b. Batch rules as gemm.
    // This default makes the two gemm calls; the CUDA backend at bf16 precision rounds g
    // to bf16 once for both products instead of once per product.
    virtual void gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b,
                               const Tensor& g, Tensor& grad_a, Tensor& grad_b, bool accumulate_a,
                               bool accumulate_b);

    // ---- SwiGLU MLP: out = residual + (silu(x w1) * (x w3)) w2; x [N, D], w1 and w3 [D, F],
    // w2 [F, D], out [N, D], residual [N, D] f32 or undefined (no add) ----
    // The defaults compose gemm, swiglu_forward / swiglu_backward and gemm_backward in the
    // order of the separate ops (bit-identical to them). The CUDA backend at bf16 precision
    // writes h and the gate / up gradients directly in bf16, the form the products read, and
    // rounds x once for all four products that use it: the same values, without the f32
    // copies and rounding passes of the [N, F] tensors; it adds the residual in the last
    // product's epilogue (cuBLASLt's C = residual, beta = 1: the product's f32 value plus
    // the residual, rounded once, as the separate add), not by a pass of its own.
    virtual void swiglu_mlp_forward(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                                    const Tensor& residual, Tensor& out, MlpSaved& saved);
    // Gradients, each undefined when not wanted, written (=) or added (+=) when its
    // accumulate flag is set; grad_x is written by the w1 product and added to by the w3 one.
    virtual void swiglu_mlp_backward(const Tensor& w1, const Tensor& w3, const Tensor& w2, const MlpSaved& saved,
                                     const Tensor& grad_out, Tensor& grad_x, Tensor& grad_w1, Tensor& grad_w3,
                                     Tensor& grad_w2, bool accumulate_x, bool accumulate_w1, bool accumulate_w3,
                                     bool accumulate_w2);

    // ---- RMSNorm over the last dim: x [N, D], weight [D] or undefined, inv_rms [N] ----
    // out is f32, or bf16 on a backend that takes_bf16_operands() (the f32 result rounded
    // to nearest even, for a consumer that multiplies it in bf16 anyway).
    virtual void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& out,
                                 Tensor& inv_rms) = 0;
    // accumulate_x: grad_x += instead of = (the tape passes a gradient buffer the input
    // already owns, which saves a separate add of the whole activation).
    virtual void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                  const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, bool accumulate_x) = 0;
    // rmsnorm_backward that also returns grad_x's values rounded to bf16 (a new tensor, for
    // Tensor::set_rounded_copy) where the backend makes them in the same pass, for consumers
    // that multiply the gradient in bf16 (the residual stream's gradient feeds the next
    // products). The default returns undefined after rmsnorm_backward.
    virtual Tensor rmsnorm_backward_rounded(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                            const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                                            bool accumulate_x) {
        rmsnorm_backward(x, weight, inv_rms, grad_out, grad_x, grad_weight, accumulate_x);
        return Tensor();
    }

    // ---- the residual add then RMSNorm: sum = x + a, out = rmsnorm(sum) over the last dim,
    // x, a, sum, out [N, D], inv_rms [N] ----
    // The default composes add and rmsnorm_forward (bit-identical to the two ops); the CUDA
    // backend reads x and a once for both outputs (rows of 513..1024 columns). The backward
    // is the two ops' (rmsnorm_backward into the sum's gradient, then the add's).
    virtual void add_rmsnorm_forward(const Tensor& x, const Tensor& a, const Tensor& weight, float eps, Tensor& sum,
                                     Tensor& out, Tensor& inv_rms);

    // ---- RoPE, rotate-half convention: x [B, T, H, d] (d even), position of token t is
    // position_offset + t; pair (i, i + d/2) rotates by angle pos * base^(-2i/d) ----
    virtual void rope_forward(const Tensor& x, int64_t position_offset, float base, Tensor& out) = 0;
    virtual void rope_backward(const Tensor& grad_out, int64_t position_offset, float base, Tensor& grad_x) = 0;
    // ---- the q / k path: out = rope(rmsnorm(x, weight, eps)) over the head dim, x [B, T, H, d],
    // weight [d], inv_rms [B*T*H] ----
    // The defaults compose rmsnorm_forward / rope_forward and rope_backward / rmsnorm_backward
    // (bit-identical to the separate ops); the CUDA backend runs each direction as one pass
    // for head dims 16..128 (the normalised tensor is never stored).
    virtual void rmsnorm_rope_forward(const Tensor& x, const Tensor& weight, float eps, int64_t position_offset,
                                      float base, Tensor& out, Tensor& inv_rms);
    virtual void rmsnorm_rope_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                       int64_t position_offset, float base, const Tensor& grad_out, Tensor& grad_x,
                                       Tensor& grad_weight, bool accumulate_x);
    // With grad_x's values rounded to bf16, as rmsnorm_backward_rounded (q's gradient feeds
    // the q projection's products). The default returns undefined after rmsnorm_rope_backward.
    virtual Tensor rmsnorm_rope_backward_rounded(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                                 int64_t position_offset, float base, const Tensor& grad_out,
                                                 Tensor& grad_x, Tensor& grad_weight, bool accumulate_x) {
        rmsnorm_rope_backward(x, weight, inv_rms, position_offset, base, grad_out, grad_x, grad_weight, accumulate_x);
        return Tensor();
    }
    // x's gradient for a product that takes it next (ops::linear_rmsnorm_rope: the q
    // projection's backward), returned in the form the backend multiplies it: the default
    // writes f32 (rmsnorm_rope_backward into a fresh buffer); a backend whose products take
    // bf16 may return only the bf16 rounding of those values.
    virtual Tensor rmsnorm_rope_backward_operand(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                                 int64_t position_offset, float base, const Tensor& grad_out,
                                                 Tensor& grad_weight) {
        Tensor grad_x = Tensor::empty(x.shape(), DType::F32, x.device());
        rmsnorm_rope_backward(x, weight, inv_rms, position_offset, base, grad_out, grad_x, grad_weight, false);
        return grad_x;
    }

    // ---- SwiGLU: out = silu(gate) * up, same shapes ----
    virtual void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
    virtual void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, Tensor& grad_gate,
                                 Tensor& grad_up) = 0;

    // ---- local attention (sliding-window causal, or bidirectional), GQA, scale 1/sqrt(d) ----
    // q [B, T, H, d], k and v [B, T, Hk, d], out [B, T, H, d], lse [B, T, H] (natural-log
    // sum-exp of the scaled scores, what the backward needs instead of probabilities).
    // out is f32, or bf16 on a backend that takes_bf16_operands(): the f32 result rounded to
    // nearest even, for an output that only feeds a product (the layer's wo); the backward
    // then reads that out for delta = dO . O. There q and k may also be bf16 (rounded by
    // rmsnorm_rope where attention_takes_bf16_qk: the values the tensor-core products would
    // round them to; other kernels widen them exactly); gradients are f32.
    virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span,
                                   Tensor& out, Tensor& lse) = 0;
    virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& lse, const Tensor& grad_out, AttentionSpan span, Tensor& grad_q,
                                    Tensor& grad_k, Tensor& grad_v) = 0;

    // ---- retrieval ----
    // qr [B, T, Hr, dr], landmarks [B, C, Hr, dr]. score(t, c) = qr[t] . l[c] / sqrt(dr),
    // visible only when c < floor(t / chunk_size). Writes indices [B, T, Hr, K] i32: the
    // K best visible chunks (ties to the larger chunk index), sorted by chunk index
    // descending (most recent first), padded with -1 when fewer than K are visible.
    virtual void select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size, Tensor& indices) = 0;
    // weights [B, T, Hr, K] over the selected chunks, in the listed order; 0 at padding.
    // Softmax: w_k = exp(s_k) / sum_j exp(s_j). StickBreak: w_k = sigmoid(s_k) * prod_{j<k} (1 - sigmoid(s_j)).
    virtual void chunk_weights_forward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                       WeightKind kind, Tensor& weights) = 0;
    virtual void chunk_weights_backward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                        WeightKind kind, const Tensor& weights, const Tensor& grad_weights,
                                        Tensor& grad_qr, Tensor& grad_landmarks) = 0;

    // ---- hierarchical sparse attention ----
    // q [B, T, H, d]; kmem, vmem [B, Tm, Hk, d] with chunk c at rows [c*S, c*S + S);
    // indices, weights [B, T, Hr, K]. For head h (KV head g, retrieval head r):
    //   o[t,h,k] = softmax over the S keys of chunk indices[t,r,k] of q.kmem / sqrt(d), applied to vmem
    //   out[t,h] = sum_k weights[t,r,k] * o[t,h,k]   (padding index -1 contributes nothing)
    // lse [B, T, H, K]: log-sum-exp per (token, head, selected chunk); 0 at padding.
    virtual void hsa_forward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                             const Tensor& weights, int64_t chunk_size, Tensor& out, Tensor& lse) = 0;
    virtual void hsa_backward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                              const Tensor& weights, int64_t chunk_size, const Tensor& lse, const Tensor& grad_out,
                              Tensor& grad_q, Tensor& grad_kmem, Tensor& grad_vmem, Tensor& grad_weights) = 0;

    // ---- cross-entropy: logits [N, V], targets i32 [N] (negative = ignored), mask [N] or
    // undefined (all ones). loss = sum_i mask_i * nll_i / max(sum_i mask_i over non-ignored, tiny).
    // Writes loss [] (scalar) and lse [N]. ----
    virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,
                                       Tensor& lse) = 0;
    virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& mask,
                                        const Tensor& lse, float grad_loss, Tensor& grad_logits) = 0;
    // The head's logits for linear_cross_entropy: x [N, D] . op(weight) (weight [D, V], or
    // [V, D] when transpose_weight) -> [N, V]. This default writes them in f32 (gemm); the
    // CUDA backend at bf16 precision stores them in bf16, as autocast does (the product's f32
    // accumulator rounded once; the loss then reads the rounded values): the step's largest
    // tensor in half the bytes, written once and read by the loss and its backward.
    virtual Tensor head_logits(const Tensor& x, const Tensor& weight, bool transpose_weight);
    // The head's loss when its gradient will be taken (linear_cross_entropy): loss and lse
    // as cross_entropy_forward. A backend may also write d loss / d logits at grad_loss 1 over
    // the logits, in their dtype, and return true: the backward then scales by its grad_loss
    // (the loss is linear in it) and only multiplies (scaled_gemm_backward). This default
    // returns false after cross_entropy_forward (the backward then runs cross_entropy_backward
    // and gemm_backward, as the unfused ops do); the CUDA backend does so for bf16 logits,
    // staging each row in shared memory once: the [N, V] logits are read once, not twice.
    virtual bool cross_entropy_forward_with_gradient(Tensor& logits, const Tensor& targets, const Tensor& mask,
                                                     Tensor& loss, Tensor& lse);
    // Both gradients of out = op(a) . op(b) when d loss / d out = grad_scale * g: g is the
    // head's logits gradient at grad_loss 1 (f32, or bf16 from the CUDA backend's bf16
    // logits), grad_scale the backward's grad_loss. As gemm_backward otherwise (this default:
    // gemm_backward of g, scaled first unless grad_scale is 1); the CUDA backend multiplies a
    // bf16 g as it is, scaling in the products (cuBLASLt's alpha).
    virtual void scaled_gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b,
                                      const Tensor& g, float grad_scale, Tensor& grad_a, Tensor& grad_b,
                                      bool accumulate_a, bool accumulate_b);

    // ---- optimiser: AdamW with decoupled weight decay, bias-corrected, step counts from 1 ----
    // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (mhat / (sqrt(vhat) + eps) + wd p)
    virtual void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1,
                            float beta2, float eps, float weight_decay, int64_t step) = 0;
    // Many parameters at once, each with its own weight decay, the update taking the
    // gradient as float(grad_scale * g) (gradient clipping folded in: the gradients
    // themselves are not changed). The same values as scale(g, grad_scale) then adamw_step
    // per parameter, which is this default (with a scaled copy when grad_scale != 1); the
    // CUDA backend runs all parameters in one launch.
    struct AdamWSlot {
        Tensor param, grad, m, v;  // handles: the update writes param, m and v in place
        float weight_decay;
    };
    virtual void adamw_step_many(const std::vector<AdamWSlot>& slots, float lr, float beta1, float beta2, float eps,
                                 int64_t step, float grad_scale);
};

// Every Backend method above as an override declaration, for the class body of a concrete
// backend (CpuBackend, CudaBackend), which then defines device() and these methods. One
// list for all backends; keep it in step with Backend (the documentation is there). A
// missing or mismatched entry does not compile (`override`; the backends are final and
// instantiated).
#define HSA_BACKEND_OVERRIDES                                                                                      \
    void add(const Tensor& a, const Tensor& b, Tensor& out) override;                                              \
    void mul(const Tensor& a, const Tensor& b, Tensor& out) override;                                              \
    void scale(const Tensor& a, float alpha, Tensor& out) override;                                                \
    void axpy(float alpha, const Tensor& x, Tensor& target) override;                                              \
    void copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, Tensor& dst,              \
                   int64_t dst_len, int64_t dst_start, int64_t length, int64_t inner, bool accumulate) override;   \
    void sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha, Tensor& out) override;  \
    void broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, float alpha,                   \
                          Tensor& out) override;                                                                   \
    double sum_of_squares(const Tensor& x) override;                                                               \
    double sum(const Tensor& x) override;                                                                          \
    void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out) override;                          \
    void embedding_backward(const Tensor& ids, const Tensor& grad_out, Tensor& grad_table) override;               \
    void gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& out,                   \
              bool accumulate) override;                                                                           \
    void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& out, Tensor& inv_rms) override; \
    void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms, const Tensor& grad_out,    \
                          Tensor& grad_x, Tensor& grad_weight, bool accumulate_x) override;                        \
    void rope_forward(const Tensor& x, int64_t position_offset, float base, Tensor& out) override;                 \
    void rope_backward(const Tensor& grad_out, int64_t position_offset, float base, Tensor& grad_x) override;      \
    void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override;                               \
    void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, Tensor& grad_gate,          \
                         Tensor& grad_up) override;                                                                \
    void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span, Tensor& out,     \
                           Tensor& lse) override;                                                                  \
    void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,                  \
                            const Tensor& lse, const Tensor& grad_out, AttentionSpan span, Tensor& grad_q,         \
                            Tensor& grad_k, Tensor& grad_v) override;                                              \
    void select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size, Tensor& indices) override;   \
    void chunk_weights_forward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices, WeightKind kind,  \
                               Tensor& weights) override;                                                          \
    void chunk_weights_backward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices, WeightKind kind, \
                                const Tensor& weights, const Tensor& grad_weights, Tensor& grad_qr,                \
                                Tensor& grad_landmarks) override;                                                  \
    void hsa_forward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,               \
                     const Tensor& weights, int64_t chunk_size, Tensor& out, Tensor& lse) override;                \
    void hsa_backward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,              \
                      const Tensor& weights, int64_t chunk_size, const Tensor& lse, const Tensor& grad_out,        \
                      Tensor& grad_q, Tensor& grad_kmem, Tensor& grad_vmem, Tensor& grad_weights) override;        \
    void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& mask, Tensor& loss,      \
                               Tensor& lse) override;                                                              \
    void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& mask,                   \
                                const Tensor& lse, float grad_loss, Tensor& grad_logits) override;                 \
    void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, float lr, float beta1, float beta2,   \
                    float eps, float weight_decay, int64_t step) override;

// The backend for a device. Throws a clear error when no backend is registered for it
// (a CPU-only build asked for CUDA).
Backend& backend_for(Device device);
void register_backend(Device device, std::unique_ptr<Backend> backend);

}  // namespace hsa
