// RoPE (rotate-half convention) for the CUDA backend. x [B, T, H, d], half = d/2; the
// pair (i, i + half) of token t rotates by angle (position_offset + t) * base^(-2i/d):
//   y_i = x_i cos - x_{i+half} sin,   y_{i+half} = x_{i+half} cos + x_i sin.
// The backward is the inverse rotation (sin negated).
//
// One block per (b, t) row: the block first computes cos/sin for its position in double
// (angle in double: positions reach 1e6 in long evaluation), into shared memory, then
// rotates all H heads with them, evaluating the rotation in double as the CPU does.
// Each pair is read and written by one thread, so out may alias x.
#include <cstdint>

#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

constexpr int64_t kMaxHalf = 2048;  // 3 * half doubles of shared memory <= 48 KiB

__global__ void rope_kernel(const float* in, float* out, int64_t rows, int64_t T, int64_t H, int64_t half,
                            int64_t position_offset, double base, double direction) {
    extern __shared__ double smem[];
    double* freq = smem;            // [half]
    double* cosv = smem + half;     // [half]
    double* sinv = smem + 2 * half; // [half]
    const int64_t d = 2 * half;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x)
        freq[i] = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    __syncthreads();
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const int64_t t = row % T;
        const double pos = static_cast<double>(position_offset + t);
        for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
            double s, c;
            sincos(pos * freq[i], &s, &c);
            cosv[i] = c;
            sinv[i] = direction * s;
        }
        __syncthreads();
        const int64_t pairs = H * half;
        for (int64_t e = threadIdx.x; e < pairs; e += blockDim.x) {
            const int64_t h = e / half, i = e % half;
            const int64_t base_index = (row * H + h) * d;
            const double x0 = in[base_index + i], x1 = in[base_index + i + half];
            const double c = cosv[i], s = sinv[i];
            out[base_index + i] = static_cast<float>(x0 * c - x1 * s);
            out[base_index + i + half] = static_cast<float>(x1 * c + x0 * s);
        }
        __syncthreads();  // before the next row overwrites cos/sin
    }
}

void rope_apply(const Tensor& in, int64_t position_offset, float base, Tensor& out, double direction,
                const char* op) {
    const checks::RopeDims dims = checks::check_rope(op, in, base, out, Device::CUDA);
    const int64_t B = dims.B, T = dims.T, H = dims.H, d = dims.d;
    const float* pi = in.data<float>();
    float* po = out.data<float>();
    const int64_t half = d / 2;
    HSA_CHECK(half <= kMaxHalf, op << ": head dim d = " << d << " exceeds the supported " << 2 * kMaxHalf);
    const int64_t rows = B * T;
    if (rows == 0 || H == 0 || half == 0) return;
    const int64_t pairs = H * half;
    const int threads = pairs >= 256 ? 256 : static_cast<int>((pairs + 31) / 32 * 32);
    const unsigned grid = static_cast<unsigned>(rows < (int64_t{1} << 20) ? rows : (int64_t{1} << 20));
    const size_t shared_bytes = static_cast<size_t>(3 * half) * sizeof(double);
    rope_kernel<<<grid, threads, shared_bytes>>>(pi, po, rows, T, H, half, position_offset, static_cast<double>(base),
                                                  direction);
    HSA_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

void CudaBackend::rope_forward(const Tensor& x, int64_t position_offset, float base, Tensor& out) {
    rope_apply(x, position_offset, base, out, 1.0, "rope");
}

void CudaBackend::rope_backward(const Tensor& grad_out, int64_t position_offset, float base, Tensor& grad_x) {
    if (!grad_x.defined()) return;
    rope_apply(grad_out, position_offset, base, grad_x, -1.0, "rope_backward");
}

}  // namespace hsa
