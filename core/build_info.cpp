#include "core/build_info.h"

#include <hdf5.h>
#include <omp.h>

#ifdef HSA_WITH_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>
#endif
#ifdef HSA_WITH_CUDNN
#include <cudnn.h>
#endif

namespace hsa {

namespace {
std::string major_minor(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }
}  // namespace

std::string build_flags() {
    std::string flags = "C++17, compiler ";
#if defined(__clang__)
    flags += "clang " __clang_version__;
#elif defined(__GNUC__)
    flags += "g++ " __VERSION__;
#endif
#ifdef NDEBUG
    flags += ", optimised (NDEBUG)";
#else
    flags += ", debug assertions on";
#endif
#ifdef HSA_WITH_CUDA
    flags += ", CUDA toolkit linked";
#else
    flags += ", CUDA off";
#endif
    flags += ", OpenMP " + std::to_string(_OPENMP);
    return flags;
}

std::string cuda_runtime_version() {
#ifdef HSA_WITH_CUDA
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess) return "unavailable";
    return major_minor(v);
#else
    return "not built";
#endif
}

std::string cuda_driver_version() {
#ifdef HSA_WITH_CUDA
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess || v == 0) {
        cudaGetLastError();
        return "no driver";
    }
    return major_minor(v);
#else
    return "not built";
#endif
}

std::string cudnn_version() {
#ifdef HSA_WITH_CUDNN
    size_t v = cudnnGetVersion();  // major*10000 + minor*100 + patch since cuDNN 9
    return std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100) + "." + std::to_string(v % 100);
#else
    return "not built";
#endif
}

std::string cublaslt_version() {
#ifdef HSA_WITH_CUDA
    size_t v = cublasLtGetVersion();  // major*10000 + minor*100 + patch
    return std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100) + "." + std::to_string(v % 100);
#else
    return "not built";
#endif
}

std::string hdf5_version() {
    unsigned major = 0, minor = 0, release = 0;
    H5get_libversion(&major, &minor, &release);
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
}

int openmp_threads() { return omp_get_max_threads(); }

std::vector<GpuInfo> visible_gpus() {
    std::vector<GpuInfo> gpus;
#ifdef HSA_WITH_CUDA
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return gpus;
    }
    for (int i = 0; i < count; ++i) {
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
        GpuInfo g;
        g.index = i;
        g.name = prop.name;
        g.major = prop.major;
        g.minor = prop.minor;
        g.memory_gib = static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0);
        g.multiprocessors = prop.multiProcessorCount;
        gpus.push_back(g);
    }
#endif
    return gpus;
}

}  // namespace hsa
