// Counter-based random numbers (Philox-4x32-10): value i of stream s under seed k is a pure
// function of (k, s, i), so fills are identical whatever the thread count or device, and a
// generator's whole state is (seed, next counter), which checkpoints store exactly.
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace hsa {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

class Rng {
public:
    explicit Rng(uint64_t seed = 0, uint64_t counter = 0) : seed_(seed), counter_(counter) {}

    // Element-wise fills (f32 tensors on CPU; other devices are filled on the host and copied).
    void normal_(Tensor& t, float mean = 0.0f, float stddev = 1.0f);
    void uniform_(Tensor& t, float low = 0.0f, float high = 1.0f);
    Tensor normal(const Shape& shape, float stddev = 1.0f, Device device = Device::CPU);
    Tensor uniform(const Shape& shape, float low, float high, Device device = Device::CPU);

    // Scalars, for data generation.
    uint64_t next_u64();
    double next_double();                         // [0, 1)
    int64_t next_int(int64_t low, int64_t high);  // [low, high)

    uint64_t seed() const { return seed_; }
    uint64_t counter() const { return counter_; }

private:
    // Returns 4 uniform 32-bit words for block index `block` of this generator.
    std::array<uint32_t, 4> block(uint64_t block_index) const;
    uint64_t seed_;
    uint64_t counter_;  // blocks of 4 words consumed so far
};

}  // namespace hsa
