// Matrix-product precision of the CUDA backend, the analogue of autocast for GEMMs:
//   F32   true f32 products (the default; what the kernel tests compare to the CPU)
//   BF16  operands rounded to bf16 on the tensor cores, f32 accumulation and f32 storage
//         (cuBLASLt CUBLAS_COMPUTE_32F_FAST_16BF): the bf16 compute of mixed-precision
//         training, with f32 master weights and activations kept as they are.
// The CPU reference always computes exactly (f32 storage, double accumulation).
#pragma once

#include <string>

namespace hsa {

enum class MatmulPrecision { F32, BF16 };

MatmulPrecision matmul_precision();
void set_matmul_precision(MatmulPrecision precision);
MatmulPrecision parse_matmul_precision(const std::string& name);  // "f32" | "bf16", else hsa::Error
const char* matmul_precision_name(MatmulPrecision precision);

// Sets a precision for a scope and restores the previous one.
class MatmulPrecisionScope {
public:
    explicit MatmulPrecisionScope(MatmulPrecision precision) : previous_(matmul_precision()) {
        set_matmul_precision(precision);
    }
    ~MatmulPrecisionScope() { set_matmul_precision(previous_); }
    MatmulPrecisionScope(const MatmulPrecisionScope&) = delete;
    MatmulPrecisionScope& operator=(const MatmulPrecisionScope&) = delete;

private:
    MatmulPrecision previous_;
};

}  // namespace hsa
