// The CPU reference backend: the truth that CUDA kernels are tested against.
// Clarity beats speed, but loops are parallelised with OpenMP over independent outputs,
// and every output element is computed by one thread in a fixed order, so results are
// bit-identical whatever the thread count. Reductions accumulate in double where the
// sum is long (norms, softmax denominators, attention and GEMM inner products).
// Split across files by family: cpu_basic.cpp (elementwise, embedding, gemm, norms,
// RoPE, SwiGLU, cross-entropy, AdamW) and cpu_attention.cpp (attention, retrieval, HSA).
// Argument and shape checks are shared with the CUDA backend: core/backend_checks.h.
#pragma once

#include "core/backend.h"

namespace hsa {

class CpuBackend final : public Backend {
public:
    Device device() const override { return Device::CPU; }
    HSA_BACKEND_OVERRIDES
};

}  // namespace hsa
