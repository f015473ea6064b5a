// CUDA-event timing for the benches (trainers/bench.cpp, trainers/bench_train.cpp): device
// time of work issued on the default stream, host gaps between launches included.
// Include only where HSA_WITH_CUDA is defined.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "core/tensor.h"

namespace hsa {

// Two CUDA events: start() and stop() record them on the default stream, elapsed_ms()
// waits for the stop event and returns the milliseconds between the two.
class GpuTimer {
public:
    GpuTimer() {
        cudaEventCreate(&start_);
        cudaEventCreate(&stop_);
    }
    ~GpuTimer() {
        cudaEventDestroy(start_);
        cudaEventDestroy(stop_);
    }
    GpuTimer(const GpuTimer&) = delete;
    GpuTimer& operator=(const GpuTimer&) = delete;

    void start() { cudaEventRecord(start_); }
    void stop() { cudaEventRecord(stop_); }
    float elapsed_ms() {
        cudaEventSynchronize(stop_);
        float ms = 0;
        cudaEventElapsedTime(&ms, start_, stop_);
        return ms;
    }
    // Milliseconds of one run of `body`.
    template <class F>
    float time_ms(F&& body) {
        start();
        body();
        stop();
        return elapsed_ms();
    }

private:
    cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// The middle element after sorting (the upper one of an even count); `values` not empty.
inline double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
}

// Median milliseconds of `body` over `repeats` runs after `warmup` runs; throws on a
// pending CUDA error.
inline double median_ms(const std::function<void()>& body, int warmup, int repeats) {
    for (int i = 0; i < warmup; ++i) body();
    std::vector<double> times;
    {
        GpuTimer timer;
        for (int i = 0; i < repeats; ++i) times.push_back(timer.time_ms(body));
    }
    cudaError_t status = cudaGetLastError();
    HSA_CHECK(status == cudaSuccess, "bench: CUDA error " << cudaGetErrorString(status));
    return median(times);
}

}  // namespace hsa
