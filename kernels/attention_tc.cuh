// Local attention (sliding-window causal or bidirectional, GQA) on Hopper tensor cores: bf16
// operands (wgmma, sm_90a), f32 accumulation, f32 online softmax, f32 storage (or bf16 q, k
// and out). The
// backend's attention_forward / attention_backward (kernels/attention.cu) use these when
// the matrix-product precision is BF16 (core/precision.h; training's default) and the head
// dim is supported, and the f32 CUDA-core kernels otherwise. Same semantics and layouts as
// Backend::attention_forward / attention_backward (core/backend.h).
#pragma once

#include <cstdint>

#include "core/backend.h"
#include "core/tensor.h"

namespace hsa {

// True when the tensor-core kernels take these tensors: head dim 64 and 16-byte aligned
// data (a view at an odd offset goes to the f32 kernels).
bool attention_tensor_core_eligible(int64_t head_dim, std::initializer_list<const Tensor*> tensors);

// Arguments already checked by the backend (core/backend_checks.h). window: 0 = unlimited.
void attention_forward_tensor_core(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, int window,
                                   Tensor& out, Tensor& lse);
// out: the forward's (f32 or bf16), read for delta = rowsum(grad_out * out) as the kernels
// load dO. q and k may be f32 or bf16. grad_q / grad_k / grad_v may be null (not wanted).
void attention_backward_tensor_core(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& grad_out, const Tensor& lse, bool causal, int window, Tensor* grad_q,
                                    Tensor* grad_k, Tensor* grad_v);

}  // namespace hsa
