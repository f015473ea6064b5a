#include "kernels/cuda_backend.h"

#include <memory>

namespace hsa {

void register_cuda_backend() { register_backend(Device::CUDA, std::make_unique<CudaBackend>()); }

}  // namespace hsa
