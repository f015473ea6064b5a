// Caching CUDA allocator: device memory from cudaMalloc (never managed memory), kept in
// size-keyed free lists after release so the training loop does not pay cudaMalloc/cudaFree
// every step. Single-stream use: a block freed on the host may be handed out again at once,
// which is safe because all our work is ordered on one stream.
// Built without the CUDA toolkit, every call reports that CUDA is unavailable.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hsa {

struct CudaAllocatorStats {
    size_t bytes_in_use = 0;       // handed out and not yet freed
    size_t bytes_reserved = 0;     // obtained from cudaMalloc (in use + cached)
    size_t peak_bytes_in_use = 0;
    int64_t cuda_malloc_calls = 0;
    int64_t cache_hits = 0;
};

void* cuda_allocator_malloc(size_t bytes);
void cuda_allocator_free(void* pointer);
void cuda_allocator_release_cached();  // returns cached blocks to the driver
CudaAllocatorStats cuda_allocator_stats();
void cuda_allocator_reset_peak();

// Thin wrappers so files outside kernels/ need no CUDA headers.
void cuda_copy(void* dst, bool dst_on_device, const void* src, bool src_on_device, size_t bytes);
void cuda_memset_zero(void* pointer, size_t bytes);
int cuda_device_count();  // 0 when there is no toolkit, driver or GPU
bool cuda_available();

}  // namespace hsa
