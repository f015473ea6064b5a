// CudaBackend::gemm through cuBLASLt: f32 in, f32 out, CUBLAS_COMPUTE_32F (true f32 FMA, no
// TF32), so results track the CPU reference (core/cpu/cpu_basic.cpp) to f32 rounding.
//
// With core/precision.h set to BF16, products use CUBLAS_COMPUTE_32F_FAST_16BF instead
// (bf16 tensor cores, f32 accumulation); plans are cached per precision.
//
// Row-major trick: our tensors are row-major, cuBLASLt is column-major. A row-major [R, C]
// matrix is a column-major [C, R] one, so out = op(a) op(b) is computed as the column-major
// product out^T (N x M) = op(b)^T (N x K) . op(a)^T (K x M): cuBLASLt's "A" is our b, its
// "B" is our a, each with its own transpose flag unchanged.
//
// Batches (core/backend.h): a batch of 1 is shared, an out batch of 1 with B > 1 sums over
// the batch. Cases, fastest first:
//   all batches B                       -> one strided-batched matmul
//   out B, a B (not transposed), b 1    -> batch folded into M: [B*M, K] . op(b)
//   out 1, a B (transposed), b B (not)  -> batch folded into K: [B*K, M]^T . [B*K, N]
//   anything else                       -> a loop of matmuls (beta = 1 after the first
//                                          when summing), a fixed order: deterministic
// accumulate: beta = 1 on the first matmul too.
//
// One cuBLASLt handle and one 32 MiB workspace per device, created lazily and kept. Plans
// (descriptors, layouts and the heuristic's algorithm) are cached per shape and pointer
// alignment, so steady-state calls skip descriptor creation and the heuristic.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <map>
#include <mutex>

#include "core/precision.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_common.cuh"

namespace hsa {

namespace {

#define HSA_CUBLAS_CHECK(call)                                                                              \
    do {                                                                                                    \
        cublasStatus_t hsa_cublas_status_ = (call);                                                         \
        HSA_CHECK(hsa_cublas_status_ == CUBLAS_STATUS_SUCCESS,                                              \
                  "gemm: " << #call << " failed: " << cublasLtGetStatusName(hsa_cublas_status_) << " ("     \
                           << cublasLtGetStatusString(hsa_cublas_status_) << ")");                          \
    } while (0)

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr size_t kMaxCachedPlans = 4096;

struct DeviceState {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
};

// Column-major problem as cuBLASLt sees it: D (m x n) = op(A) (m x k) . op(B) (k x n).
// Key fields: device, transA, transB, m, n, k, lda, ldb, ldc, batch, strideA, strideB,
// strideC, alignA, alignB, alignC, precision (core/precision.h).
using PlanKey = std::array<int64_t, 17>;

struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_c = nullptr;
    cublasLtMatmulAlgo_t algo{};
};

std::mutex g_mutex;  // guards everything below and serialises enqueueing matmuls
std::map<int, DeviceState> g_devices;
std::map<PlanKey, Plan> g_plans;

DeviceState& device_state(int device) {
    DeviceState& state = g_devices[device];
    if (state.handle == nullptr) HSA_CUBLAS_CHECK(cublasLtCreate(&state.handle));
    if (state.workspace == nullptr) HSA_CUDA_CHECK(cudaMalloc(&state.workspace, kWorkspaceBytes));
    return state;
}

void destroy_plan(Plan& plan) {
    if (plan.layout_a) cublasLtMatrixLayoutDestroy(plan.layout_a);
    if (plan.layout_b) cublasLtMatrixLayoutDestroy(plan.layout_b);
    if (plan.layout_c) cublasLtMatrixLayoutDestroy(plan.layout_c);
    if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
    plan = Plan{};
}

// Largest power of two (<= 256) dividing the address and, for several matrices at
// stride_elems apart, the stride in bytes: the alignment every matrix of the batch has.
uint32_t alignment_of(const void* pointer, int64_t stride_elems) {
    uint64_t bits = reinterpret_cast<uintptr_t>(pointer) | 256u;
    if (stride_elems > 0) bits |= static_cast<uint64_t>(stride_elems) * sizeof(float);
    return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

cublasLtMatrixLayout_t make_layout(int64_t rows, int64_t cols, int64_t ld, int batch, int64_t stride) {
    cublasLtMatrixLayout_t layout = nullptr;
    HSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, static_cast<uint64_t>(rows),
                                                static_cast<uint64_t>(cols), ld));
    if (batch > 1) {
        const int32_t count = batch;
        HSA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                          sizeof(count)));
        HSA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                          &stride, sizeof(stride)));
    }
    return layout;
}

Plan& find_plan(const DeviceState& state, const PlanKey& key) {
    auto found = g_plans.find(key);
    if (found != g_plans.end()) return found->second;
    if (g_plans.size() >= kMaxCachedPlans) {
        for (auto& entry : g_plans) destroy_plan(entry.second);
        g_plans.clear();
    }
    const bool trans_a = key[1] != 0, trans_b = key[2] != 0;
    const int64_t m = key[3], n = key[4], k = key[5], lda = key[6], ldb = key[7], ldc = key[8];
    const int batch = static_cast<int>(key[9]);
    const int64_t stride_a = key[10], stride_b = key[11], stride_c = key[12];
    const uint32_t align_a = static_cast<uint32_t>(key[13]), align_b = static_cast<uint32_t>(key[14]),
                   align_c = static_cast<uint32_t>(key[15]);

    Plan plan;
    try {
        // BF16: cuBLASLt rounds the f32 operands to bf16 for the tensor cores and
        // accumulates in f32 (mixed-precision compute on f32 storage).
        const cublasComputeType_t compute =
            key[16] == static_cast<int64_t>(MatmulPrecision::BF16) ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
        HSA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
        const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
        HSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
        HSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
        // Stored shapes (column-major): A is m x k (k x m when transposed), B is k x n (n x k).
        plan.layout_a = trans_a ? make_layout(k, m, lda, batch, stride_a) : make_layout(m, k, lda, batch, stride_a);
        plan.layout_b = trans_b ? make_layout(n, k, ldb, batch, stride_b) : make_layout(k, n, ldb, batch, stride_b);
        plan.layout_c = make_layout(m, n, ldc, batch, stride_c);

        cublasLtMatmulPreference_t pref = nullptr;
        HSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        cublasLtMatmulHeuristicResult_t result{};
        int found_count = 0;
        cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
        const uint64_t workspace = kWorkspaceBytes;
        const std::array<std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t>, 4> aligns{
            {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
             {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
             {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
             {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}}};
        status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                      sizeof(workspace));
        for (const auto& [attr, value] : aligns)
            if (status == CUBLAS_STATUS_SUCCESS)
                status = cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
        if (status == CUBLAS_STATUS_SUCCESS)
            status = cublasLtMatmulAlgoGetHeuristic(state.handle, plan.desc, plan.layout_a, plan.layout_b,
                                                    plan.layout_c, plan.layout_c, pref, 1, &result, &found_count);
        cublasLtMatmulPreferenceDestroy(pref);
        HSA_CHECK(status == CUBLAS_STATUS_SUCCESS, "gemm: cuBLASLt preference/heuristic failed: "
                                                       << cublasLtGetStatusName(status) << " ("
                                                       << cublasLtGetStatusString(status) << ")");
        HSA_CHECK(found_count > 0 && result.state == CUBLAS_STATUS_SUCCESS,
                  "gemm: cuBLASLt found no " << (key[16] ? "bf16" : "f32") << " algorithm for m " << m << " n " << n << " k " << k << " batch "
                                                                 << batch << " (alignments " << align_a << "/"
                                                                 << align_b << "/" << align_c << " bytes)");
        plan.algo = result.algo;
    } catch (...) {
        destroy_plan(plan);
        throw;
    }
    return g_plans.emplace(key, plan).first->second;
}

// Row-major out[M, N] (= or += per beta) = op(a)[M, K] . op(b)[K, N], for `batch` matrices
// stride_* elements apart. a is stored [M, K] ([K, M] when ta), b [K, N] ([N, K] when tb).
// loop_stride_*: when the caller loops over this call with advancing pointers, the stride
// of that loop (so the cached plan's alignment holds for every iteration); 0 otherwise.
struct RowMajorGemm {
    const float* a;
    bool ta;
    const float* b;
    bool tb;
    float* c;
    int64_t M, N, K;
    int batch = 1;
    int64_t stride_a = 0, stride_b = 0, stride_c = 0;
    int64_t loop_stride_a = 0, loop_stride_b = 0, loop_stride_c = 0;
};

void check_int_range(int64_t value, const char* what) {
    HSA_CHECK(value <= INT_MAX, "gemm: " << what << " " << value << " exceeds cuBLASLt's int32 limit " << INT_MAX);
}

void run_gemm(const RowMajorGemm& g, float beta) {
    check_int_range(g.M, "M");
    check_int_range(g.N, "N");
    check_int_range(g.K, "K");
    int device = 0;
    HSA_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(g_mutex);
    DeviceState& state = device_state(device);
    // cuBLASLt operands: A = our b (column-major N x K, or K x N stored when tb),
    // B = our a (column-major K x M, or M x K stored when ta), C = out^T (N x M, ld N).
    const int64_t lda = g.tb ? g.K : g.N;
    const int64_t ldb = g.ta ? g.M : g.K;
    const int64_t ldc = g.N;
    const int64_t sa = g.batch > 1 ? g.stride_b : 0, sb = g.batch > 1 ? g.stride_a : 0,
                  sc = g.batch > 1 ? g.stride_c : 0;
    const uint32_t align_a = std::min(alignment_of(g.b, sa), alignment_of(g.b, g.loop_stride_b));
    const uint32_t align_b = std::min(alignment_of(g.a, sb), alignment_of(g.a, g.loop_stride_a));
    const uint32_t align_c = std::min(alignment_of(g.c, sc), alignment_of(g.c, g.loop_stride_c));
    const PlanKey key{device, g.tb ? 1 : 0, g.ta ? 1 : 0, g.N, g.M, g.K, lda, ldb, ldc, g.batch, sa, sb, sc,
                      align_a, align_b, align_c, static_cast<int64_t>(matmul_precision())};
    const Plan& plan = find_plan(state, key);
    const float alpha = 1.0f;
    HSA_CUBLAS_CHECK(cublasLtMatmul(state.handle, plan.desc, &alpha, g.b, plan.layout_a, g.a, plan.layout_b, &beta,
                                    g.c, plan.layout_c, g.c, plan.layout_c, &plan.algo, state.workspace,
                                    kWorkspaceBytes, /*stream=*/0));
}

}  // namespace

void CudaBackend::gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& out,
                       bool accumulate) {
    const checks::GemmDims dims = checks::check_gemm(a, transpose_a, b, transpose_b, out, Device::CUDA);
    const int64_t M = dims.M, N = dims.N, K = dims.K, B = dims.batch, Bo = dims.out_batch;
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
    if (Bo == 0 || M == 0 || N == 0) return;  // empty out
    const float beta0 = accumulate ? 1.0f : 0.0f;
    if (K == 0) {  // empty sums
        if (!accumulate) HSA_CUDA_CHECK(cudaMemsetAsync(po, 0, out.nbytes(), 0));
        return;
    }

    const int64_t a_step = dims.a_batch == 1 ? 0 : M * K;  // elements between batches (0 = shared)
    const int64_t b_step = dims.b_batch == 1 ? 0 : K * N;
    const int64_t o_step = Bo == 1 ? 0 : M * N;

    RowMajorGemm g{pa, transpose_a, pb, transpose_b, po, M, N, K};
    if (B == 1) {
        run_gemm(g, beta0);
        return;
    }
    if (Bo == B) {  // one out matrix per batch
        if (dims.a_batch == B && dims.b_batch == B) {
            check_int_range(B, "batch");
            g.batch = static_cast<int>(B);
            g.stride_a = a_step;
            g.stride_b = b_step;
            g.stride_c = o_step;
            run_gemm(g, beta0);
            return;
        }
        if (dims.a_batch == B && !transpose_a && dims.b_batch == 1) {  // [B*M, K] . op(b)
            g.M = B * M;
            run_gemm(g, beta0);
            return;
        }
        g.loop_stride_a = a_step;
        g.loop_stride_b = b_step;
        g.loop_stride_c = o_step;
        for (int64_t i = 0; i < B; ++i) {
            g.a = pa + i * a_step;
            g.b = pb + i * b_step;
            g.c = po + i * o_step;
            run_gemm(g, beta0);
        }
        return;
    }
    // Bo == 1 < B: out = sum over the batch.
    if (dims.a_batch == B && dims.b_batch == B && transpose_a && !transpose_b) {  // [B*K, M]^T . [B*K, N]
        g.K = B * K;
        run_gemm(g, beta0);
        return;
    }
    g.loop_stride_a = a_step;
    g.loop_stride_b = b_step;
    for (int64_t i = 0; i < B; ++i) {
        g.a = pa + i * a_step;
        g.b = pb + i * b_step;
        run_gemm(g, i == 0 ? beta0 : 1.0f);
    }
}

}  // namespace hsa
