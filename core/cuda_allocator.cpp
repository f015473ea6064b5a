#include "core/cuda_allocator.h"

#include <map>
#include <mutex>
#include <unordered_map>

#include "core/tensor.h"

#ifdef HSA_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace hsa {

#ifdef HSA_WITH_CUDA

#define HSA_CUDA_CHECK(call)                                                                  \
    do {                                                                                      \
        cudaError_t hsa_status_ = (call);                                                     \
        HSA_CHECK(hsa_status_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(hsa_status_)); \
    } while (0)

namespace {

// Rounds requests so that blocks of nearby sizes are interchangeable: 512-byte steps up
// to 1 MiB, then 2 MiB steps. A cached block is reused for a request when it is at most
// twice as large, which bounds the waste.
size_t round_request(size_t bytes) {
    const size_t small_step = 512, large_step = size_t(2) << 20;
    if (bytes <= (size_t(1) << 20)) return (bytes + small_step - 1) / small_step * small_step;
    return (bytes + large_step - 1) / large_step * large_step;
}

struct CachingAllocator {
    std::mutex mutex;
    std::multimap<size_t, void*> free_blocks;          // size -> block
    std::unordered_map<void*, size_t> live_blocks;     // block -> size
    CudaAllocatorStats stats;

    void* allocate(size_t bytes) {
        std::lock_guard<std::mutex> lock(mutex);
        size_t size = round_request(bytes);
        auto it = free_blocks.lower_bound(size);
        void* block = nullptr;
        if (it != free_blocks.end() && it->first <= 2 * size) {
            size = it->first;
            block = it->second;
            free_blocks.erase(it);
            stats.cache_hits++;
        } else {
            cudaError_t status = cudaMalloc(&block, size);
            if (status != cudaSuccess) {
                // Out of memory: give the cache back to the driver and try once more.
                cudaGetLastError();
                release_locked();
                status = cudaMalloc(&block, size);
            }
            HSA_CHECK(status == cudaSuccess, "cudaMalloc of " << size << " bytes failed: " << cudaGetErrorString(status)
                                                              << " (in use " << stats.bytes_in_use << " bytes)");
            stats.cuda_malloc_calls++;
            stats.bytes_reserved += size;
        }
        live_blocks[block] = size;
        stats.bytes_in_use += size;
        if (stats.bytes_in_use > stats.peak_bytes_in_use) stats.peak_bytes_in_use = stats.bytes_in_use;
        return block;
    }

    void release(void* block) {
        if (!block) return;
        std::lock_guard<std::mutex> lock(mutex);
        auto it = live_blocks.find(block);
        if (it == live_blocks.end()) return;  // not ours: ignore rather than corrupt the cache
        stats.bytes_in_use -= it->second;
        free_blocks.emplace(it->second, block);
        live_blocks.erase(it);
    }

    void release_locked() {
        for (auto& entry : free_blocks) {
            cudaFree(entry.second);
            stats.bytes_reserved -= entry.first;
        }
        free_blocks.clear();
    }
};

CachingAllocator& allocator() {
    // Leaked on purpose: tensors may be destroyed during static destruction after the
    // CUDA context is gone, so the allocator must outlive them.
    static CachingAllocator* instance = new CachingAllocator();
    return *instance;
}

}  // namespace

void* cuda_allocator_malloc(size_t bytes) { return allocator().allocate(bytes); }
void cuda_allocator_free(void* pointer) { allocator().release(pointer); }
void cuda_allocator_release_cached() {
    std::lock_guard<std::mutex> lock(allocator().mutex);
    allocator().release_locked();
}
CudaAllocatorStats cuda_allocator_stats() {
    std::lock_guard<std::mutex> lock(allocator().mutex);
    return allocator().stats;
}
void cuda_allocator_reset_peak() {
    std::lock_guard<std::mutex> lock(allocator().mutex);
    allocator().stats.peak_bytes_in_use = allocator().stats.bytes_in_use;
}

void cuda_copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t bytes) {
    cudaMemcpyKind kind = dst_on_device ? (src_on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                        : (src_on_device ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    HSA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
}

void cuda_memset_zero(void* pointer, size_t bytes) { HSA_CUDA_CHECK(cudaMemset(pointer, 0, bytes)); }

int cuda_device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

#else  // no CUDA toolkit at build time

static void no_cuda() { HSA_FAIL("this build of hsa has no CUDA support (configured without the CUDA toolkit)"); }
void* cuda_allocator_malloc(size_t) { no_cuda(); return nullptr; }
void cuda_allocator_free(void*) {}
void cuda_allocator_release_cached() {}
CudaAllocatorStats cuda_allocator_stats() { return {}; }
void cuda_allocator_reset_peak() {}
void cuda_copy(void*, bool, const void*, bool, size_t) { no_cuda(); }
void cuda_memset_zero(void*, size_t) { no_cuda(); }
int cuda_device_count() { return 0; }

#endif

bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace hsa
