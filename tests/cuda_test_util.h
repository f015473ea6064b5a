// Helpers of the CUDA tests (tests/test_cuda_ops.cpp, tests/test_cuda_hsa_v1.cpp): skip
// without a GPU, copy inputs to the device, poison outputs so an unwritten element fails,
// the relative L2 error against the CPU reference, and random inputs of an HSA case.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/cuda_allocator.h"
#include "core/rng.h"
#include "core/tensor.h"

// Skips the test, with the reason, when no GPU is visible.
#define HSA_REQUIRE_GPU()                                                                                   \
    do {                                                                                                    \
        if (!::hsa::cuda_available())                                                                       \
            GTEST_SKIP() << "no GPU: CUDA kernels are tested on the GPU machine (bash launch/gpu_check.sh)"; \
    } while (0)

namespace hsa::test {

// A copy on the GPU; an undefined tensor stays undefined.
inline Tensor on_gpu(const Tensor& t) { return t.defined() ? t.to(Device::CUDA) : t; }

// A CUDA tensor filled with garbage that no kernel result equals (NaN for f32, -7777 else).
inline Tensor poisoned(const Shape& shape, DType dtype = DType::F32) {
    return Tensor::full(shape, dtype == DType::F32 ? std::nanf("") : -7777.0f, dtype, Device::CUDA);
}

// ||got - want|| / ||want|| (||got - want|| when want is 0), infinite if any element of
// got is not finite (unwritten poison or overflow).
inline double relative_error(const Tensor& got_tensor, const Tensor& want_tensor) {
    std::vector<float> got = got_tensor.to_vector(), want = want_tensor.to_vector();
    EXPECT_EQ(got.size(), want.size());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
        norm += static_cast<double>(want[i]) * want[i];
    }
    if (norm == 0) return std::sqrt(diff);
    return std::sqrt(diff / norm);
}

// The same values rounded to bf16 (round to nearest even) and back: what the tensor-core
// kernels feed the MMAs.
inline Tensor rounded_to_bf16(const Tensor& t) {
    std::vector<float> values = t.to_vector();
    for (float& v : values) v = bf16_to_float(float_to_bf16(v));
    return Tensor::from_vector(values, t.shape());
}

// The accuracy rule of the tensor-core kernel tests: got's relative error against the CPU
// reference `want` is at most `tolerance`, and at most `over_floor` times the error of the
// same CPU computation on bf16-rounded inputs (`floor`): the kernel loses no more than bf16
// operands must lose. Both errors are printed after `label`.
inline void expect_bf16_accurate(const std::string& label, const char* name, const Tensor& got, const Tensor& want,
                                 const Tensor& floor, double tolerance, double over_floor) {
    const double err = relative_error(got, want), floor_err = relative_error(floor, want);
    std::printf("  %-40s %-12s rel err %.2e (bf16-input CPU %.2e)\n", label.c_str(), name, err, floor_err);
    EXPECT_LE(err, tolerance) << name << " vs CPU reference";
    EXPECT_LE(err, over_floor * floor_err) << name << ": CPU on bf16-rounded inputs is off by " << floor_err;
}

// Sizes of an HSA forward / backward case (core/backend.h, Backend::hsa_forward).
struct HsaCase {
    int64_t B, T, H, Hk, Hr, d, S, K;
};

struct HsaInputs {
    Tensor q, kmem, vmem, indices, weights;  // on the CPU
};

// Random q [B, T, H, d], kmem and vmem [B, C * S, Hk, d] (C = T / S whole chunks), weights
// in [0.1, 1), and indices chosen by the CPU select_chunks from random retrieval queries
// and landmarks of width 8 (tokens of chunk 0 and padding included).
inline HsaInputs random_hsa_inputs(Rng& rng, const HsaCase& c) {
    const int64_t C = c.T / c.S;
    HsaInputs in;
    in.q = rng.normal({c.B, c.T, c.H, c.d});
    in.kmem = rng.normal({c.B, C * c.S, c.Hk, c.d});
    in.vmem = rng.normal({c.B, C * c.S, c.Hk, c.d});
    Tensor qr = rng.normal({c.B, c.T, c.Hr, 8}), landmarks = rng.normal({c.B, C, c.Hr, 8});
    in.indices = Tensor::empty({c.B, c.T, c.Hr, c.K}, DType::I32);
    backend_for(Device::CPU).select_chunks(qr, landmarks, c.S, in.indices);
    in.weights = rng.uniform(in.indices.shape(), 0.1f, 1.0f);
    return in;
}

}  // namespace hsa::test
