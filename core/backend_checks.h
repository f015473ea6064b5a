// Argument and shape validation shared by every backend (core/cpu/ and kernels/): the
// checks a Backend method (core/backend.h) makes before it touches any data, with the
// messages users see. Each helper takes the Device its backend runs on and names it in
// messages ("add: a is on cpu, expected CUDA").
//
// Not here, and kept in the backends (after these checks):
// - checks that read tensor data (ids, targets and chunk indices in range): the CPU reads
//   host memory, CUDA checks on the device;
// - a backend's own limits (the CUDA kernels' largest head dim, int32 grid ranges).
//
// Order of checks: inputs' dtype/device/layout, then shapes, then outputs, as a method
// reads its arguments; the first failing check throws hsa::Error with a one-line message.
#pragma once

#include <cstdint>

#include "core/backend.h"

namespace hsa::checks {

// The backend's name in messages: "CPU" or "CUDA".
const char* backend_name(Device device);

// ---- any shape: a defined, contiguous tensor of the dtype on `device`; returns its data ----
float* f32_data(const Tensor& t, const char* op, const char* what, Device device);
int32_t* i32_data(const Tensor& t, const char* op, const char* what, Device device);
void check_numel(const Tensor& t, int64_t expected, const char* op, const char* what);

// ---- exact shapes (the attention family) ----
// Defined, on `device`, of `dtype`, shaped `expected`, contiguous.
void check_tensor(const char* op, const char* name, const Tensor& t, const Shape& expected, DType dtype,
                  Device device);
// A gradient output: undefined means "not wanted" (false); otherwise it must be an f32
// tensor shaped `expected` (true).
bool wanted(const char* op, const char* name, const Tensor& t, const Shape& expected, Device device);
// Defined with `rank` dims; `layout` names them in the message, e.g. "[B, T, H, d]".
void check_rank(const char* op, const char* name, const Tensor& t, int rank, const char* layout);

// ---- elementwise and data movement; the element-count checks return n ----
int64_t check_binary(const char* op, const Tensor& a, const Tensor& b, const Tensor& out, Device device);  // add, mul
int64_t check_scale(const Tensor& a, const Tensor& out, Device device);
int64_t check_axpy(const Tensor& x, const Tensor& target, Device device);
void check_copy_rows(const Tensor& src, int64_t outer, int64_t src_len, int64_t src_start, const Tensor& dst,
                     int64_t dst_len, int64_t dst_start, int64_t length, int64_t inner, Device device);
void check_sum_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out, Device device);
void check_broadcast_middle(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out,
                            Device device);

// ---- embedding (ids' range is the backend's) ----
struct EmbeddingDims {
    int64_t V, D, N;  // vocabulary, width, number of ids
};
EmbeddingDims check_embedding(const Tensor& table, const Tensor& ids, const Tensor& out, Device device);
EmbeddingDims check_embedding_backward(const Tensor& ids, const Tensor& grad_out, const Tensor& grad_table,
                                       Device device);

// ---- gemm: op(a) [M, K] . op(b) [K, N] -> out [M, N], batch rules of core/backend.h ----
struct GemmDims {
    int64_t M, N, K;
    int64_t batch;                        // B: the largest of the three batch counts
    int64_t a_batch, b_batch, out_batch;  // each 1 or B (leading dims flattened)
};
// out is f32; or also bf16 when out_may_be_bf16 (the CUDA head's stored logits, checked
// as the shape of the product whose gradient is taken, or a bf16 gradient g handed to
// gemm_backward in the same position).
GemmDims check_gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& out,
                    Device device, bool out_may_be_bf16 = false);

// ---- RMSNorm over the last dim: N rows of D ----
struct RmsNormDims {
    int64_t N, D;
};
RmsNormDims check_rmsnorm(const Tensor& x, const Tensor& weight, const Tensor& out, const Tensor& inv_rms,
                          Device device);
RmsNormDims check_rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                                   const Tensor& grad_out, const Tensor& grad_x, const Tensor& grad_weight,
                                   Device device);

// ---- RoPE: x and out [B, T, H, d], d even, base > 0 (op: "rope" or "rope_backward") ----
struct RopeDims {
    int64_t B, T, H, d;
};
// out f32; with out_may_be_bf16 also bf16 on CUDA (rmsnorm_rope's output for the attention).
RopeDims check_rope(const char* op, const Tensor& x, float base, const Tensor& out, Device device,
                    bool out_may_be_bf16 = false);

// ---- SwiGLU: return n ----
int64_t check_swiglu(const Tensor& gate, const Tensor& up, const Tensor& out, Device device);
int64_t check_swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& grad_out, const Tensor& grad_gate,
                              const Tensor& grad_up, Device device);

// ---- cross-entropy (targets' range is the backend's) ----
struct CrossEntropyInputs {
    const float* logits;     // [N, V] f32, or null when the logits are bf16
    const void* logits_bf16; // [N, V] bf16 (allowed by the caller), or null
    const int32_t* targets;  // N elements
    const float* mask;       // N elements, or null: all ones
    int64_t N, V;
};
// logits [N, V] (f32; or bf16 when allow_bf16_logits: the CUDA head's stored logits),
// targets i32 with N elements, mask undefined or N elements.
CrossEntropyInputs check_cross_entropy_inputs(const char* op, const Tensor& logits, const Tensor& targets,
                                              const Tensor& mask, Device device, bool allow_bf16_logits = false);
// Forward outputs: loss one element, lse N elements, and V > 0 unless N = 0.
void check_cross_entropy_outputs(const CrossEntropyInputs& in, const Tensor& logits, const Tensor& loss,
                                 const Tensor& lse, Device device);
// Backward: lse N elements, grad_logits shaped as logits.
void check_cross_entropy_grad(const CrossEntropyInputs& in, const Tensor& logits, const Tensor& lse,
                              const Tensor& grad_logits, Device device);

// ---- AdamW: param, grad, m, v of equal size, step >= 1; returns n ----
int64_t check_adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, int64_t step,
                    Device device);

// ---- local attention: q [B, T, H, d], k and v [B, T, Hk, d], H % Hk == 0, span valid ----
struct AttentionDims {
    int64_t B, T, H, Hk, d, group;  // group = H / Hk query heads per KV head
};
struct AttentionBackwardDims : AttentionDims {
    bool want_q, want_k, want_v;  // gradient outputs that are defined
};
AttentionDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span,
                             Device device);
AttentionDims check_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, AttentionSpan span,
                                      const Tensor& out, const Tensor& lse, Device device);
AttentionBackwardDims check_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                               const Tensor& lse, const Tensor& grad_out, AttentionSpan span,
                                               const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v,
                                               Device device);

// ---- retrieval: qr [B, T, Hr, dr], landmarks [B, C, Hr, dr], indices i32 [B, T, Hr, K] ----
// (indices' values, -1 or a chunk < C, are the backend's to check.)
struct RetrievalDims {
    int64_t B, T, Hr, dr, C, K;
};
struct ChunkWeightsBackwardDims : RetrievalDims {
    bool want_qr, want_landmarks;
};
RetrievalDims retrieval_dims(const char* op, const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                             Device device);
RetrievalDims check_select_chunks(const Tensor& qr, const Tensor& landmarks, int64_t chunk_size,
                                  const Tensor& indices, Device device);
RetrievalDims check_chunk_weights_forward(const Tensor& qr, const Tensor& landmarks, const Tensor& indices,
                                          const Tensor& weights, Device device);
ChunkWeightsBackwardDims check_chunk_weights_backward(const Tensor& qr, const Tensor& landmarks,
                                                      const Tensor& indices, const Tensor& weights,
                                                      const Tensor& grad_weights, const Tensor& grad_qr,
                                                      const Tensor& grad_landmarks, Device device);

// ---- HSA: q [B, T, H, d], kmem and vmem [B, Tm, Hk, d], indices i32 and weights
// [B, T, Hr, K]; chunk_size S > 0, H % Hk == 0, Hk % Hr == 0, K > 0 ----
// (indices' values, -1 or a chunk < C = Tm / S, are the backend's to check.)
struct HsaDims {
    int64_t B, T, H, Hk, Hr, d, Tm, S, K, C;  // C = Tm / S whole chunks in the memory
    int64_t heads_per_kv, heads_per_r;        // H / Hk, H / Hr
};
struct HsaBackwardDims : HsaDims {
    bool want_q, want_kmem, want_vmem, want_weights;
};
HsaDims hsa_dims(const char* op, const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                 const Tensor& weights, int64_t chunk_size, Device device);
HsaDims check_hsa_forward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                          const Tensor& weights, int64_t chunk_size, const Tensor& out, const Tensor& lse,
                          Device device);
HsaBackwardDims check_hsa_backward(const Tensor& q, const Tensor& kmem, const Tensor& vmem, const Tensor& indices,
                                   const Tensor& weights, int64_t chunk_size, const Tensor& lse,
                                   const Tensor& grad_out, const Tensor& grad_q, const Tensor& grad_kmem,
                                   const Tensor& grad_vmem, const Tensor& grad_weights, Device device);

}  // namespace hsa::checks
