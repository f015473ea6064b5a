#include "core/backend.h"

#include <array>

#include "core/cpu/cpu_backend.h"

namespace hsa {

namespace {
std::array<std::unique_ptr<Backend>, 2>& registry() {
    static std::array<std::unique_ptr<Backend>, 2> backends = [] {
        std::array<std::unique_ptr<Backend>, 2> b;
        b[0] = std::make_unique<CpuBackend>();
        return b;
    }();
    return backends;
}
}  // namespace

Backend& backend_for(Device device) {
    auto& slot = registry()[device == Device::CPU ? 0 : 1];
    HSA_CHECK(slot != nullptr, "no " << device_name(device) << " backend in this build: CUDA kernels are not built or not registered");
    return *slot;
}

void register_backend(Device device, std::unique_ptr<Backend> backend) {
    registry()[device == Device::CPU ? 0 : 1] = std::move(backend);
}

}  // namespace hsa
