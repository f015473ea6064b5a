// The differentiable ops. Each one checks shapes (clear one-line errors), dispatches to
// the backend of its inputs' device (core/backend.h) and, when an input requires a
// gradient, records its backward on the tape (core/autograd.h).
// Shapes use the letters of core/backend.h. The math is in shared/design/MODEL.md.
#pragma once

#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace hsa::ops {

// ---- elementwise and shape ----
Tensor add(const Tensor& a, const Tensor& b);   // equal shapes
Tensor mul(const Tensor& a, const Tensor& b);   // equal shapes
Tensor scale(const Tensor& a, float alpha);
Tensor reshape(const Tensor& x, const Shape& shape);  // a view; -1 infers one dim
Tensor slice(const Tensor& x, int dim, int64_t start, int64_t length);
Tensor concat(const std::vector<Tensor>& xs, int dim);
Tensor mean(const Tensor& x, int dim);           // removes dim
Tensor sum(const Tensor& x);                     // scalar
// x [D...] -> [n, D...]: n copies stacked on a new leading dim (gradient sums them).
Tensor repeat_leading(const Tensor& x, int64_t n);

// ---- layers ----
Tensor embedding(const Tensor& table, const Tensor& ids);   // [V, D], i32 [...] -> [..., D]
Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false);
Tensor linear(const Tensor& x, const Tensor& weight);       // x [..., Din] . W [Din, Dout]
// Over the last dim. out_dtype bf16 (where Backend::takes_bf16_operands()): the output is
// stored rounded, for an activation that only feeds products (matmul / linear / swiglu_mlp
// take it as is; its gradient is f32). The same values as rounding the f32 output.
Tensor rmsnorm(const Tensor& x, const Tensor& weight, float eps = 1e-6f, DType out_dtype = DType::F32);
Tensor rope(const Tensor& x, int64_t position_offset = 0, float base = 10000.0f);  // x [B, T, H, d]
Tensor swiglu(const Tensor& gate, const Tensor& up);
// The residual add then RMSNorm: {x + a, rmsnorm(x + a, weight, eps)}, equal shapes. The
// same values and gradients as add then rmsnorm (bit-identical); the forward runs as one
// pass on CUDA (Backend::add_rmsnorm_forward).
// normed_dtype: as rmsnorm's out_dtype.
std::pair<Tensor, Tensor> add_rmsnorm(const Tensor& x, const Tensor& a, const Tensor& weight, float eps = 1e-6f,
                                      DType normed_dtype = DType::F32);
// rope(rmsnorm(x, weight, eps), position_offset, base) as one op (the q / k path), x
// [B, T, H, d]: the same values as the two ops, through Backend::rmsnorm_rope_forward /
// backward (one pass each way on CUDA). out_dtype as rmsnorm's: bf16 (where the backend
// takes bf16 operands) for q / k that only feed local_attention where it rounds them to bf16
// for its products anyway (Backend::attention_takes_bf16_qk: the same bits, half the
// bytes). Its gradient is f32.
Tensor rmsnorm_rope(const Tensor& x, const Tensor& weight, float eps, int64_t position_offset = 0,
                    float base = 10000.0f, DType out_dtype = DType::F32);
// rmsnorm_rope(reshape(linear(x, weight), [..., heads, d]), norm_weight, ...) as one op (the
// attention's q path), x [B, T, Din], weight [Din, heads * d]: the same values and gradients
// (bit for bit on CUDA). Where the product runs in bf16 (CUDA at bf16 precision, dims that
// are multiples of 8) the norm's backward hands the projection's backward only the bf16
// rounding of the gradient it would write (Backend::rmsnorm_rope_backward_operand): the f32
// gradient between them, which nothing else reads, is never stored. out_dtype as
// rmsnorm_rope's.
Tensor linear_rmsnorm_rope(const Tensor& x, const Tensor& weight, int64_t heads, const Tensor& norm_weight, float eps,
                           int64_t position_offset = 0, float base = 10000.0f, DType out_dtype = DType::F32);
// The SwiGLU MLP as one op: linear(swiglu(linear(x, w1), linear(x, w3)), w2), x [..., D],
// w1 and w3 [D, F], w2 [F, D]. The same values as the separate ops; through
// Backend::swiglu_mlp_forward / swiglu_mlp_backward, so a backend keeps its products'
// operands in the form it multiplies them (bf16 on CUDA at bf16 precision, no f32 h).
// residual (f32, x's shape, optional): returns residual + the MLP, the same values and
// gradients as add(residual, swiglu_mlp(...)) (bit-identical), with the add done by the
// last product's epilogue on CUDA instead of a pass over the stream of its own.
Tensor swiglu_mlp(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& w2,
                  const Tensor& residual = Tensor());
// out_dtype bf16 (where Backend::takes_bf16_operands()): the output stored rounded, for an
// output that only feeds a product (the layer's wo, which takes it as is); the backward
// reads it for delta = dO . O. Its gradient is f32. q and k may likewise be bf16 there
// (rmsnorm_rope's bf16 output); their gradients are f32.
Tensor local_attention(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span,
                       DType out_dtype = DType::F32);

// ---- retrieval and HSA ----
// Not differentiable: the top-K choice (core/backend.h select_chunks).
Tensor select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size, int64_t topk);
Tensor chunk_weights(const Tensor& qr, const Tensor& landmarks, const Tensor& indices, WeightKind kind);
Tensor hsa_attention(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                     const Tensor& weights, int64_t chunk_size);

// ---- loss ----
// logits [N, V], targets i32 [N] (negative = ignored), mask [N] f32 or undefined.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& mask = Tensor());
// The LM head and its loss as one op: cross_entropy(x . op(weight), targets, mask), x [N, D],
// weight [D, V] (or [V, D] with transpose_weight: a tied embedding). The same values as
// matmul then cross_entropy (up to the CUDA backend's bf16 logits, Backend::head_logits).
// When a gradient will be taken the forward also writes the logits gradient over the logits
// (Backend::cross_entropy_forward_with_gradient) and the backward only multiplies
// (Backend::scaled_gemm_backward): the [N, V] tensor is read once by the loss.
Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, bool transpose_weight, const Tensor& targets,
                            const Tensor& mask = Tensor());

}  // namespace hsa::ops
