// What this build and this machine provide, for `hsa info`.
#pragma once

#include <string>
#include <vector>

namespace hsa {

struct GpuInfo {
    int index = 0;
    std::string name;
    int major = 0, minor = 0;
    double memory_gib = 0;
    int multiprocessors = 0;
};

std::string build_flags();           // compiler, build type, CUDA on/off
std::string cuda_runtime_version();  // "13.0" or "not built"
std::string cuda_driver_version();   // "13.0", "no driver", or "not built"
std::string cudnn_version();         // "9.x.y" or "not built"
std::string cublaslt_version();
std::string hdf5_version();
int openmp_threads();
std::vector<GpuInfo> visible_gpus();  // empty without a driver or GPU

}  // namespace hsa
