#include "core/precision.h"

#include <atomic>

#include "core/tensor.h"

namespace hsa {

namespace {
std::atomic<MatmulPrecision> g_precision{MatmulPrecision::F32};
}

MatmulPrecision matmul_precision() { return g_precision.load(); }
void set_matmul_precision(MatmulPrecision precision) { g_precision.store(precision); }

MatmulPrecision parse_matmul_precision(const std::string& name) {
    if (name == "f32") return MatmulPrecision::F32;
    if (name == "bf16") return MatmulPrecision::BF16;
    HSA_FAIL("matmul precision \"" << name << "\": expected \"f32\" or \"bf16\"");
}

const char* matmul_precision_name(MatmulPrecision precision) {
    return precision == MatmulPrecision::BF16 ? "bf16" : "f32";
}

}  // namespace hsa
