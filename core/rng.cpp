#include "core/rng.h"

#include <cmath>

namespace hsa {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        uint64_t p0 = static_cast<uint64_t>(M0) * c[0];
        uint64_t p1 = static_cast<uint64_t>(M1) * c[2];
        std::array<uint32_t, 4> next = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
                                        static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
        c = next;
        k[0] += W0;
        k[1] += W1;
    }
    return c;
}

std::array<uint32_t, 4> Rng::block(uint64_t index) const {
    return philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0x68736121u, 0u},
                      {static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)});
}

static inline float to_unit_open(uint32_t x) {  // (0, 1]
    return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

void Rng::normal_(Tensor& t, float mean, float stddev) {
    Tensor host = t.device() == Device::CPU && t.dtype() == DType::F32 ? t : Tensor::empty(t.shape());
    float* out = host.data<float>();
    const int64_t n = host.numel();
    const uint64_t base = counter_;
    // Each block of 4 words gives 2 Box-Muller pairs = 4 normals.
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < (n + 3) / 4; ++b) {
        auto w = block(base + static_cast<uint64_t>(b));
        for (int pair = 0; pair < 2; ++pair) {
            float u1 = to_unit_open(w[2 * pair]);
            float u2 = to_unit_open(w[2 * pair + 1]);
            float radius = std::sqrt(-2.0f * std::log(u1));
            float angle = 6.2831853071795864f * u2;
            int64_t i = 4 * b + 2 * pair;
            if (i < n) out[i] = mean + stddev * radius * std::cos(angle);
            if (i + 1 < n) out[i + 1] = mean + stddev * radius * std::sin(angle);
        }
    }
    counter_ += static_cast<uint64_t>((n + 3) / 4);
    if (host.id() != t.id()) t.copy_from(host);
}

void Rng::uniform_(Tensor& t, float low, float high) {
    Tensor host = t.device() == Device::CPU && t.dtype() == DType::F32 ? t : Tensor::empty(t.shape());
    float* out = host.data<float>();
    const int64_t n = host.numel();
    const uint64_t base = counter_;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < (n + 3) / 4; ++b) {
        auto w = block(base + static_cast<uint64_t>(b));
        for (int j = 0; j < 4; ++j) {
            int64_t i = 4 * b + j;
            if (i < n) out[i] = low + (high - low) * (static_cast<float>(w[j] >> 8) * (1.0f / 16777216.0f));
        }
    }
    counter_ += static_cast<uint64_t>((n + 3) / 4);
    if (host.id() != t.id()) t.copy_from(host);
}

Tensor Rng::normal(const Shape& shape, float stddev, Device device) {
    Tensor t = Tensor::empty(shape, DType::F32, device);
    normal_(t, 0.0f, stddev);
    return t;
}

Tensor Rng::uniform(const Shape& shape, float low, float high, Device device) {
    Tensor t = Tensor::empty(shape, DType::F32, device);
    uniform_(t, low, high);
    return t;
}

uint64_t Rng::next_u64() {
    auto w = block(counter_++);
    return (static_cast<uint64_t>(w[0]) << 32) | w[1];
}

double Rng::next_double() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

int64_t Rng::next_int(int64_t low, int64_t high) {
    HSA_CHECK(high > low, "next_int: empty range [" << low << ", " << high << ")");
    uint64_t range = static_cast<uint64_t>(high - low);
    return low + static_cast<int64_t>(next_u64() % range);  // bias < 2^-40 for our ranges
}

}  // namespace hsa
