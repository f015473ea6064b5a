// The test binary's entry point: installs the CUDA backend (when built) before the suites
// run, so CUDA tests can compare it with the CPU reference; CUDA tests skip without a GPU.
#include <gtest/gtest.h>

#ifdef HSA_WITH_CUDA_KERNELS
#include "kernels/cuda_backend.h"
#endif

int main(int argc, char** argv) {
#ifdef HSA_WITH_CUDA_KERNELS
    hsa::register_cuda_backend();
#endif
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
