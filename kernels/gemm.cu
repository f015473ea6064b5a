// CudaBackend::gemm through cuBLASLt: f32 in, f32 out, CUBLAS_COMPUTE_32F (true f32 FMA, no
// TF32), so results track the CPU reference (core/cpu/cpu_basic.cpp) to f32 rounding.
//
// With core/precision.h set to BF16, both operands are first rounded to bf16 (round to
// nearest even) into scratch buffers by one vectorised pass each, and cuBLASLt multiplies
// bf16 x bf16 with f32 accumulation into the f32 output (CUBLAS_COMPUTE_32F). Measured, this
// beat CUBLAS_COMPUTE_32F_FAST_16BF on f32 operands (which converts inside the product) for
// the model's shapes: docs/PERF.md version 7. Plans are cached per precision and output type.
// An operand may also arrive in bf16, rounded by its producer (Backend::takes_bf16_operands):
// used as it is on the bf16 path, widened exactly to f32 off it. gemm_of_bf16 (the fused
// ops' products) multiplies bf16 copies the caller made and may write a bf16 output.
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
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <map>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

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

// How the operands reach the tensor cores: f32 exactly (precision F32); bf16 copies (BF16
// precision, the fast path); or f32 operands converted inside cuBLASLt
// (CUBLAS_COMPUTE_32F_FAST_16BF), the BF16 fallback for sizes whose bf16 rows would not be
// 16-byte aligned (a dim not a multiple of 8), which cuBLASLt's bf16 kernels want.
enum OperandMode : int64_t { kF32Exact = 0, kBf16Copies = 1, kF32Fast16bf = 2 };

struct DeviceState {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
};

// Column-major problem as cuBLASLt sees it: D (m x n) = op(A) (m x k) . op(B) (k x n).
// Key fields: device, transA, transB, m, n, k, lda, ldb, ldc, batch, strideA, strideB,
// strideC, alignA, alignB, alignC, operand mode (OperandMode), output type (0 f32, 1 bf16),
// whether the algorithm is tuned (1) or the heuristic's first choice (0), and for tuned plans
// whether the call adds C (beta != 0): algorithms with the same bits at beta 0 may differ
// where C joins partial sums (split-K), so the two are tuned and cached apart.
using PlanKey = std::array<int64_t, 20>;

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
uint32_t alignment_of(const void* pointer, int64_t stride_elems, size_t element_bytes = sizeof(float)) {
    uint64_t bits = reinterpret_cast<uintptr_t>(pointer) | 256u;
    if (stride_elems > 0) bits |= static_cast<uint64_t>(stride_elems) * element_bytes;
    return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int batch,
                                   int64_t stride) {
    cublasLtMatrixLayout_t layout = nullptr;
    HSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, static_cast<uint64_t>(rows),
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

// The descriptors and layouts of a key's problem (no algorithm yet).
Plan make_plan(const PlanKey& key) {
    const bool trans_a = key[1] != 0, trans_b = key[2] != 0;
    const int64_t m = key[3], n = key[4], k = key[5], lda = key[6], ldb = key[7], ldc = key[8];
    const int batch = static_cast<int>(key[9]);
    const int64_t stride_a = key[10], stride_b = key[11], stride_c = key[12];
    Plan plan;
    try {
        // Accumulation is f32 in every mode; the output is f32 or (gemm_of_bf16's bf16 out)
        // bf16, rounded to nearest even from the f32 accumulator.
        const cudaDataType_t output_type = key[17] != 0 ? CUDA_R_16BF : CUDA_R_32F;
        const cudaDataType_t operand_type = key[16] == kBf16Copies ? CUDA_R_16BF : CUDA_R_32F;
        const cublasComputeType_t compute = key[16] == kF32Fast16bf ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
        HSA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
        const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
        HSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
        HSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
        // Stored shapes (column-major): A is m x k (k x m when transposed), B is k x n (n x k).
        plan.layout_a = trans_a ? make_layout(operand_type, k, m, lda, batch, stride_a)
                                : make_layout(operand_type, m, k, lda, batch, stride_a);
        plan.layout_b = trans_b ? make_layout(operand_type, n, k, ldb, batch, stride_b)
                                : make_layout(operand_type, k, n, ldb, batch, stride_b);
        plan.layout_c = make_layout(output_type, m, n, ldc, batch, stride_c);
    } catch (...) {
        destroy_plan(plan);
        throw;
    }
    return plan;
}

// Up to `count` algorithms cuBLASLt's heuristic offers for the plan's problem, best first
// (by its own model), within the workspace and the key's alignments.
std::vector<cublasLtMatmulAlgo_t> heuristic_algorithms(const DeviceState& state, const Plan& plan, const PlanKey& key,
                                                       int count) {
    const uint32_t align_a = static_cast<uint32_t>(key[13]), align_b = static_cast<uint32_t>(key[14]),
                   align_c = static_cast<uint32_t>(key[15]);
    cublasLtMatmulPreference_t pref = nullptr;
    HSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(count));
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
        if (status == CUBLAS_STATUS_SUCCESS) status = cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
    if (status == CUBLAS_STATUS_SUCCESS)
        status = cublasLtMatmulAlgoGetHeuristic(state.handle, plan.desc, plan.layout_a, plan.layout_b, plan.layout_c,
                                                plan.layout_c, pref, count, results.data(), &found_count);
    cublasLtMatmulPreferenceDestroy(pref);
    HSA_CHECK(status == CUBLAS_STATUS_SUCCESS, "gemm: cuBLASLt preference/heuristic failed: "
                                                   << cublasLtGetStatusName(status) << " ("
                                                   << cublasLtGetStatusString(status) << ")");
    std::vector<cublasLtMatmulAlgo_t> algos;
    for (int i = 0; i < found_count; ++i)
        if (results[static_cast<size_t>(i)].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[static_cast<size_t>(i)].algo);
    HSA_CHECK(!algos.empty(), "gemm: cuBLASLt found no " << (key[16] != kF32Exact ? "bf16" : "f32") << " algorithm for m "
                                                         << key[3] << " n " << key[4] << " k " << key[5] << " batch "
                                                         << key[9] << " (alignments " << align_a << "/" << align_b
                                                         << "/" << align_c << " bytes)");
    return algos;
}

// Row-major out[M, N] (= or += per beta) = op(a)[M, K] . op(b)[K, N], for `batch` matrices
// stride_* elements apart. a is stored [M, K] ([K, M] when ta), b [K, N] ([N, K] when tb).
// loop_stride_*: when the caller loops over this call with advancing pointers, the stride
// of that loop (so the cached plan's alignment holds for every iteration); 0 otherwise.
struct RowMajorGemm {
    const void* a;  // f32, or bf16 at BF16 precision (element_bytes says which)
    bool ta;
    const void* b;
    bool tb;
    void* c;  // f32, or bf16 when c_bf16
    int64_t M, N, K;
    int batch = 1;
    int64_t stride_a = 0, stride_b = 0, stride_c = 0;
    int64_t loop_stride_a = 0, loop_stride_b = 0, loop_stride_c = 0;
    size_t element_bytes = sizeof(float);  // of a and b
    OperandMode mode = kF32Exact;
    bool c_bf16 = false;
    const void* c_in = nullptr;  // cuBLASLt's C (c = product + beta C) when not c itself
    float alpha = 1.0f;          // c = alpha product (+ beta C)
};

void check_int_range(int64_t value, const char* what) {
    HSA_CHECK(value <= INT_MAX, "gemm: " << what << " " << value << " exceeds cuBLASLt's int32 limit " << INT_MAX);
}

// The plan key of a product: its cuBLASLt problem and the alignments every call shares.
PlanKey plan_key(const RowMajorGemm& g, int device, bool tuned, bool reads_c = false) {
    // cuBLASLt operands: A = our b (column-major N x K, or K x N stored when tb),
    // B = our a (column-major K x M, or M x K stored when ta), C = out^T (N x M, ld N).
    const int64_t lda = g.tb ? g.K : g.N;
    const int64_t ldb = g.ta ? g.M : g.K;
    const int64_t ldc = g.N;
    const int64_t sa = g.batch > 1 ? g.stride_b : 0, sb = g.batch > 1 ? g.stride_a : 0,
                  sc = g.batch > 1 ? g.stride_c : 0;
    const size_t eb = g.element_bytes;
    const uint32_t align_a = std::min(alignment_of(g.b, sa, eb), alignment_of(g.b, g.loop_stride_b, eb));
    const uint32_t align_b = std::min(alignment_of(g.a, sb, eb), alignment_of(g.a, g.loop_stride_a, eb));
    const size_t cb = g.c_bf16 ? 2 : sizeof(float);
    const void* c_in = g.c_in ? g.c_in : g.c;
    const uint32_t align_c = std::min({alignment_of(g.c, sc, cb), alignment_of(g.c, g.loop_stride_c, cb),
                                       alignment_of(c_in, sc, cb), alignment_of(c_in, g.loop_stride_c, cb)});
    return PlanKey{device, g.tb ? 1 : 0, g.ta ? 1 : 0, g.N, g.M, g.K, lda, ldb, ldc, g.batch, sa, sb, sc,
                   align_a, align_b, align_c, g.mode, g.c_bf16 ? 1 : 0, tuned ? 1 : 0, tuned && reads_c ? 1 : 0};
}

cublasStatus_t try_matmul(const DeviceState& state, const Plan& plan, const cublasLtMatmulAlgo_t& algo,
                          const RowMajorGemm& g, float beta) {
    const float alpha = g.alpha;
    const void* c_in = g.c_in ? g.c_in : g.c;
    return cublasLtMatmul(state.handle, plan.desc, &alpha, g.b, plan.layout_a, g.a, plan.layout_b, &beta, c_in,
                          plan.layout_c, g.c, plan.layout_c, &algo, state.workspace, kWorkspaceBytes, /*stream=*/0);
}

void enqueue_matmul(const DeviceState& state, const Plan& plan, const cublasLtMatmulAlgo_t& algo,
                    const RowMajorGemm& g, float beta) {
    HSA_CUBLAS_CHECK(try_matmul(state, plan, algo, g, beta));
}

// ---- autotuning ----
// cuBLASLt's heuristic picks an algorithm from its model of the GPU; for the paper-scale
// step's products on the H200 its first choice was 10-24% slower than another one it offers
// for several of them (hsa bench gemm, docs/PERF.md version 53). So on a plan's first use, a bf16 product
// of at least kTuneMinFlops runs each of the heuristic's first kTuneCandidates algorithms on
// the call's own operands, and keeps the fastest whose output has the same bits as the first
// choice's. The same bits on a full-size product mean the same summation order, so tuning
// changes no result, only the time: runs stay reproducible whatever the timings say, and a
// tuned run equals an untuned one bit for bit. HSA_GEMM_AUTOTUNE=0 (or
// set_gemm_autotuning(false)) keeps the heuristic's first choice.
constexpr double kTuneMinFlops = 1e10;
constexpr int kTuneCandidates = 8;
constexpr int kTuneRuns = 3;  // timed runs a candidate (median), after one warm-up
constexpr size_t kTuneMaxScratchBytes = size_t{1} << 30;

int g_autotune = -1;  // -1: not yet read from HSA_GEMM_AUTOTUNE; guarded by g_mutex

bool autotuning_on() {
    if (g_autotune < 0) {
        const char* env = std::getenv("HSA_GEMM_AUTOTUNE");
        g_autotune = env != nullptr && std::string(env) == "0" ? 0 : 1;
    }
    return g_autotune == 1;
}

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {  // splitmix64's finaliser
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// hash += sum over i of mix64(i, words[i]) mod 2^64: addition commutes, so the atomics'
// order does not matter; outputs differing anywhere collide with probability ~2^-64. Also
// counts the words holding a non-zero value and flags non-finite values (bf16: two a word),
// so that a degenerate output (all zero, or NaN / Inf), which any summation order reproduces,
// is not taken as evidence.
struct OutputSummary {
    unsigned long long hash, nonzero, nonfinite;
};
__global__ void output_hash_kernel(const uint32_t* __restrict__ words, int64_t n, bool bf16, OutputSummary* out) {
    unsigned long long acc = 0, nonzero = 0, nonfinite = 0;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const uint32_t w = words[i];
        acc += mix64(static_cast<unsigned long long>(i) * 0x9e3779b97f4a7c15ull ^ w);
        nonzero += (w & (bf16 ? 0x7fff7fffu : 0x7fffffffu)) != 0;
        nonfinite += bf16 ? ((w & 0x7f80u) == 0x7f80u || (w & 0x7f800000u) == 0x7f800000u)
                          : (w & 0x7f800000u) == 0x7f800000u;
    }
    for (int o = 16; o > 0; o >>= 1) {
        acc += __shfl_down_sync(0xffffffffu, acc, o);
        nonzero += __shfl_down_sync(0xffffffffu, nonzero, o);
        nonfinite += __shfl_down_sync(0xffffffffu, nonfinite, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(&out->hash, acc);
        atomicAdd(&out->nonzero, nonzero);
        atomicAdd(&out->nonfinite, nonfinite);
    }
}

// One candidate's trial: median ms, and whether its output has the reference's bits (the
// first candidate cuBLASLt ran: the heuristic's choice unless it refused it).
struct AlgorithmTrial {
    double ms = -1;  // < 0: cuBLASLt refused to run it
    bool same_bits = false;
};
struct AlgorithmTrials {
    std::vector<AlgorithmTrial> trials;
    bool degenerate = false;  // the reference output is all zero or not finite: no evidence
};

// Runs each algorithm on g (into g.c, which must be safe to overwrite: the caller points it
// at scratch when the call is not idempotent), hashing each output once after a warm-up.
AlgorithmTrials try_algorithms(const DeviceState& state, const Plan& plan, const RowMajorGemm& g, float beta,
                               const std::vector<cublasLtMatmulAlgo_t>& algos, int runs) {
    const int64_t words = g.M * g.N * (g.c_bf16 ? 2 : 4) / 4;
    constexpr int64_t kSummaryWords = sizeof(OutputSummary) / sizeof(int64_t);
    Tensor summaries = Tensor::zeros({static_cast<int64_t>(algos.size()) * kSummaryWords}, DType::I64, Device::CUDA);
    auto* summary = static_cast<OutputSummary*>(summaries.raw_data());
    AlgorithmTrials result;
    result.trials.resize(algos.size());
    cudaEvent_t start = nullptr, stop = nullptr;
    try {
        HSA_CUDA_CHECK(cudaEventCreate(&start));
        HSA_CUDA_CHECK(cudaEventCreate(&stop));
        for (size_t i = 0; i < algos.size(); ++i) {
            if (try_matmul(state, plan, algos[i], g, beta) != CUBLAS_STATUS_SUCCESS) continue;
            const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((words + 255) / 256, 4096));
            output_hash_kernel<<<blocks, 256>>>(static_cast<const uint32_t*>(g.c), words, g.c_bf16, summary + i);
            HSA_CUDA_CHECK_LAUNCH("output_hash_kernel");
            std::vector<float> ms;
            for (int r = 0; r < runs; ++r) {
                HSA_CUDA_CHECK(cudaEventRecord(start, 0));
                HSA_CUBLAS_CHECK(try_matmul(state, plan, algos[i], g, beta));
                HSA_CUDA_CHECK(cudaEventRecord(stop, 0));
                HSA_CUDA_CHECK(cudaEventSynchronize(stop));
                float t = 0;
                HSA_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
                ms.push_back(t);
            }
            std::sort(ms.begin(), ms.end());
            result.trials[i].ms = ms[ms.size() / 2];
        }
    } catch (...) {
        if (start) cudaEventDestroy(start);
        if (stop) cudaEventDestroy(stop);
        throw;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    std::vector<OutputSummary> host(algos.size());
    HSA_CUDA_CHECK(cudaMemcpy(host.data(), summary, host.size() * sizeof(OutputSummary), cudaMemcpyDeviceToHost));
    size_t reference = 0;
    while (reference < algos.size() && result.trials[reference].ms < 0) ++reference;
    if (reference == algos.size()) return result;
    result.degenerate = host[reference].nonzero == 0 || host[reference].nonfinite != 0;
    for (size_t i = 0; i < algos.size(); ++i)
        result.trials[i].same_bits = result.trials[i].ms >= 0 && host[i].hash == host[reference].hash;
    return result;
}

// The algorithm for a new plan: the heuristic's first, or the tuned choice (above). Tuning
// falls back to the heuristic's first choice, rather than fail the product, when it cannot
// decide soundly: no scratch for a call that reads its output, a degenerate output, a bf16
// output too small for its rounding to show a different summation order (below
// kTuneMinBf16Outputs elements: an f32 difference of one ulp changes a bf16 value about once
// in 2^16 elements), or any error while trying (out of memory for the scratch, say).
constexpr int64_t kTuneMinBf16Outputs = int64_t{1} << 26;

cublasLtMatmulAlgo_t choose_algorithm(const DeviceState& state, const Plan& plan, const PlanKey& key,
                                      const RowMajorGemm& g, float beta, bool tune) {
    const std::vector<cublasLtMatmulAlgo_t> algos = heuristic_algorithms(state, plan, key, tune ? kTuneCandidates : 1);
    if (!tune || algos.size() < 2 || (g.c_bf16 && g.M * g.N < kTuneMinBf16Outputs)) return algos.front();
    try {
        RowMajorGemm trial = g;
        Tensor scratch;
        // A product that reads its own output (beta != 0 with C = D) would add up over the
        // trial runs: those go to scratch, reading C from the real output.
        if (beta != 0.0f && (g.c_in == nullptr || g.c_in == g.c)) {
            const size_t bytes = static_cast<size_t>(g.M * g.N) * (g.c_bf16 ? 2 : 4);
            if (bytes > kTuneMaxScratchBytes) return algos.front();
            scratch = Tensor::empty({static_cast<int64_t>(bytes / 4)}, DType::F32, Device::CUDA);
            trial.c_in = g.c;
            trial.c = scratch.raw_data();
        }
        const AlgorithmTrials tried = try_algorithms(state, plan, trial, beta, algos, kTuneRuns);
        if (tried.degenerate) return algos.front();
        size_t best = 0;
        while (best < algos.size() && tried.trials[best].ms < 0) ++best;
        if (best == algos.size()) return algos.front();
        for (size_t i = best + 1; i < algos.size(); ++i)
            if (tried.trials[i].same_bits && tried.trials[i].ms < tried.trials[best].ms) best = i;
        return algos[best];
    } catch (const std::exception&) {
        cudaGetLastError();  // a failed launch's error is not left for the next check to report
        return algos.front();
    }
}

void run_gemm(const RowMajorGemm& g, float beta) {
    check_int_range(g.M, "M");
    check_int_range(g.N, "N");
    check_int_range(g.K, "K");
    int device = 0;
    HSA_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(g_mutex);
    DeviceState& state = device_state(device);
    // Tuned: bf16 products (the training path) big enough for a few percent to matter,
    // single matrices called as such (not a batch or a caller's loop of them).
    const bool tune = autotuning_on() && g.mode == kBf16Copies && g.batch == 1 && g.loop_stride_a == 0 &&
                      g.loop_stride_b == 0 && g.loop_stride_c == 0 &&
                      2.0 * static_cast<double>(g.M) * static_cast<double>(g.N) * static_cast<double>(g.K) >=
                          kTuneMinFlops;
    const PlanKey key = plan_key(g, device, tune, beta != 0.0f);
    auto found = g_plans.find(key);
    if (found == g_plans.end()) {
        if (g_plans.size() >= kMaxCachedPlans) {
            for (auto& entry : g_plans) destroy_plan(entry.second);
            g_plans.clear();
        }
        Plan plan = make_plan(key);
        try {
            plan.algo = choose_algorithm(state, plan, key, g, beta, tune);
        } catch (...) {
            destroy_plan(plan);
            throw;
        }
        found = g_plans.emplace(key, plan).first;
    }
    enqueue_matmul(state, found->second, found->second.algo, g, beta);
}

// f32 -> bf16 (round to nearest even), 4 elements a thread when both are 16/8-byte aligned.
__global__ void round_to_bf16_kernel(const float* __restrict__ in, __nv_bfloat16* __restrict__ out, int64_t n,
                                     bool vectorised) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t vector_end = vectorised ? n / 4 * 4 : 0;
    for (int64_t k = first; k < vector_end / 4; k += stride) {
        const float4 v = reinterpret_cast<const float4*>(in)[k];
        reinterpret_cast<__nv_bfloat162*>(out)[2 * k] = __floats2bfloat162_rn(v.x, v.y);
        reinterpret_cast<__nv_bfloat162*>(out)[2 * k + 1] = __floats2bfloat162_rn(v.z, v.w);
    }
    for (int64_t k = vector_end + first; k < n; k += stride) out[k] = __float2bfloat16_rn(in[k]);
}

__global__ void widen_to_f32_kernel(const __nv_bfloat16* __restrict__ in, float* __restrict__ out, int64_t n) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride)
        out[k] = __bfloat162float(in[k]);
}

}  // namespace

// An f32 copy of a contiguous bf16 operand (exact): for products off the bf16 path.
Tensor widened_f32_copy(const Tensor& t) {
    Tensor copy = Tensor::empty(t.shape(), DType::F32, Device::CUDA);
    const int64_t n = t.numel();
    if (n == 0) return copy;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
    widen_to_f32_kernel<<<blocks, 256>>>(static_cast<const __nv_bfloat16*>(t.raw_data()), copy.data<float>(), n);
    HSA_CUDA_CHECK_LAUNCH("widen_to_f32_kernel");
    return copy;
}

// A bf16 copy of a contiguous f32 tensor's data, new or into dst (kernels/cuda_common.cuh).
Tensor rounded_bf16_copy(const Tensor& t) {
    Tensor copy = Tensor::empty(t.shape(), DType::BF16, Device::CUDA);
    round_into_bf16(t, copy);
    return copy;
}

void round_into_bf16(const Tensor& t, Tensor& dst) {
    HSA_CHECK(dst.dtype() == DType::BF16 && dst.is_contiguous() && dst.numel() == t.numel(),
              "round_into_bf16: destination must be a contiguous bf16 tensor of " << t.numel() << " elements");
    const int64_t n = t.numel();
    if (n == 0) return;
    const float* in = t.data<float>();
    __nv_bfloat16* out = static_cast<__nv_bfloat16*>(dst.raw_data());
    const bool vectorised = reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0;
    const int64_t work = vectorised ? (n + 3) / 4 : n;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((work + 255) / 256, 4096));
    round_to_bf16_kernel<<<blocks, 256>>>(in, out, n, vectorised);
    HSA_CUDA_CHECK_LAUNCH("round_to_bf16_kernel");
}

// Whether an M x K by K x N product runs on bf16 copies of its operands: bf16 precision and
// every dim a multiple of 8 (cuBLASLt's bf16 kernels want 16-byte aligned rows).
static bool bf16_product(int64_t M, int64_t N, int64_t K) {
    return matmul_precision() == MatmulPrecision::BF16 && M % 8 == 0 && N % 8 == 0 && K % 8 == 0;
}

// The backend's gemm. a_rounded / b_rounded: when defined, bf16 copies of a / b already
// made by the caller, used instead of rounding again when the bf16 path is taken. a or b
// may themselves be bf16 (already rounded by their producer): used as they are on the bf16
// path, widened to f32 (exact) off it.
static void gemm_on_device(const Tensor& a_in, bool transpose_a, const Tensor& b_in, bool transpose_b, Tensor& out,
                           bool accumulate, const Tensor& a_rounded_in, const Tensor& b_rounded_in,
                           float alpha = 1.0f) {
    const checks::GemmDims dims = checks::check_gemm(a_in, transpose_a, b_in, transpose_b, out, Device::CUDA);
    const int64_t M = dims.M, N = dims.N, K = dims.K, B = dims.batch, Bo = dims.out_batch;
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

    // At BF16 precision the operands are multiplied as bf16 copies (see the top of the file);
    // the copies live until the matmuls are enqueued, and the stream orders their reuse.
    const bool bf16_precision = matmul_precision() == MatmulPrecision::BF16;
    const bool bf16 = bf16_product(M, N, K);
    const bool a_is_bf16 = a_in.dtype() == DType::BF16, b_is_bf16 = b_in.dtype() == DType::BF16;
    const Tensor a = a_is_bf16 && !bf16 ? widened_f32_copy(a_in) : a_in;
    const Tensor b = b_is_bf16 && !bf16 ? widened_f32_copy(b_in) : b_in;
    const Tensor a_rounded = a_is_bf16 ? a_in : a_rounded_in;
    const Tensor b_rounded = b_is_bf16 ? b_in : b_rounded_in;
    Tensor a16, b16;
    if (bf16) {
        a16 = a_rounded.defined() ? a_rounded : rounded_bf16_copy(a);
        b16 = b_rounded.defined() ? b_rounded : rounded_bf16_copy(b);
    }
    const size_t eb = bf16 ? 2 : sizeof(float);
    const char* pa = static_cast<const char*>(bf16 ? a16.raw_data() : a.raw_data());
    const char* pb = static_cast<const char*>(bf16 ? b16.raw_data() : b.raw_data());
    RowMajorGemm g{pa, transpose_a, pb, transpose_b, po, M, N, K};
    g.element_bytes = eb;
    g.mode = bf16 ? kBf16Copies : bf16_precision ? kF32Fast16bf : kF32Exact;
    g.alpha = alpha;
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
            g.a = pa + i * a_step * eb;
            g.b = pb + i * b_step * eb;
            g.c = po + i * o_step;  // f32 out here
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
        g.a = pa + i * a_step * eb;
        g.b = pb + i * b_step * eb;
        run_gemm(g, i == 0 ? beta0 : 1.0f);
    }
}

// out = op(a16) . op(b16), both operands already bf16 (2-D, contiguous, every dim a
// multiple of 8): the products of the fused ops, whose operands exist only in bf16. The
// same cuBLASLt call as gemm's bf16 path for the same (a, transpose) arrangement. out is
// f32, or bf16 (the f32 accumulator rounded to nearest even by cuBLASLt's epilogue; not
// with accumulate, which would add in bf16) for products whose consumer wants bf16.
// out = op(a16) . op(b16) as cuBLASLt's bf16 problem, after checking (named `op` in errors):
// contiguous 2-D bf16 CUDA operands that agree, every dim a multiple of 8, out [M, N] f32 or bf16.
static RowMajorGemm bf16_operand_gemm(const char* op, const Tensor& a16, bool transpose_a, const Tensor& b16,
                                      bool transpose_b, Tensor& out) {
    for (const auto* t : {&a16, &b16})
        HSA_CHECK(t->dtype() == DType::BF16 && t->device() == Device::CUDA && t->ndim() == 2 && t->is_contiguous(),
                  op << ": operands must be contiguous 2-D bf16 CUDA tensors, got " << dtype_name(t->dtype()) << " "
                     << shape_string(t->shape()));
    const int64_t M = transpose_a ? a16.size(1) : a16.size(0), K = transpose_a ? a16.size(0) : a16.size(1);
    const int64_t Kb = transpose_b ? b16.size(1) : b16.size(0), N = transpose_b ? b16.size(0) : b16.size(1);
    HSA_CHECK(K == Kb && M % 8 == 0 && N % 8 == 0 && K % 8 == 0,
              op << ": op(a) " << M << " x " << K << " and op(b) " << Kb << " x " << N
                 << " must agree and be multiples of 8");
    const bool out_bf16 = out.dtype() == DType::BF16;
    checks::check_tensor(op, "out", out, {M, N}, out_bf16 ? DType::BF16 : DType::F32, Device::CUDA);
    RowMajorGemm g{a16.raw_data(), transpose_a, b16.raw_data(), transpose_b, out.raw_data(), M, N, K};
    g.element_bytes = 2;
    g.mode = kBf16Copies;
    g.c_bf16 = out_bf16;
    return g;
}

void gemm_of_bf16(const Tensor& a16, bool transpose_a, const Tensor& b16, bool transpose_b, Tensor& out,
                  bool accumulate, const Tensor& addend) {
    RowMajorGemm g = bf16_operand_gemm("gemm_of_bf16", a16, transpose_a, b16, transpose_b, out);
    HSA_CHECK(!(g.c_bf16 && (accumulate || addend.defined())), "gemm_of_bf16: a bf16 output cannot be added to");
    HSA_CHECK(!(accumulate && addend.defined()), "gemm_of_bf16: accumulate and an addend exclude each other");
    if (addend.defined()) checks::check_tensor("gemm_of_bf16", "addend", addend, {g.M, g.N}, DType::F32, Device::CUDA);
    if (g.M == 0 || g.N == 0) return;
    if (addend.defined()) g.c_in = addend.raw_data();
    run_gemm(g, accumulate || addend.defined() ? 1.0f : 0.0f);
}

// For `hsa bench gemm`: each algorithm cuBLASLt's heuristic offers for out = op(a16) .
// op(b16), up to max_algorithms, in the heuristic's order (the first is its choice): median ms
// of `repeats` runs after a warm-up, and whether its output has the first one's bits (what
// autotuning requires). Operands as gemm_of_bf16's; out is overwritten.
std::vector<GemmAlgorithmTiming> time_gemm_algorithms(const Tensor& a16, bool transpose_a, const Tensor& b16,
                                                      bool transpose_b, Tensor& out, int max_algorithms, int repeats) {
    HSA_CHECK(max_algorithms >= 1 && repeats >= 1, "time_gemm_algorithms: needs at least one algorithm and one run");
    const RowMajorGemm g = bf16_operand_gemm("time_gemm_algorithms", a16, transpose_a, b16, transpose_b, out);
    int device = 0;
    HSA_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(g_mutex);
    DeviceState& state = device_state(device);
    const PlanKey key = plan_key(g, device, false);
    Plan plan = make_plan(key);
    std::vector<GemmAlgorithmTiming> timings;
    try {
        for (const AlgorithmTrial& t :
             try_algorithms(state, plan, g, 0.0f, heuristic_algorithms(state, plan, key, max_algorithms), repeats).trials)
            timings.push_back({t.ms, t.same_bits});
    } catch (...) {
        destroy_plan(plan);
        throw;
    }
    destroy_plan(plan);
    return timings;
}

void set_gemm_autotuning(bool on) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_autotune = on ? 1 : 0;
}

bool gemm_autotuning() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return autotuning_on();
}

Tensor CudaBackend::product_operand(const Tensor& x, int64_t M, int64_t N, int64_t K) {
    if (!bf16_product(M, N, K) || x.dtype() != DType::F32 || x.device() != Device::CUDA || !x.is_contiguous()) return x;
    return rounded_bf16_copy(x);
}

void CudaBackend::gemm(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, Tensor& out,
                       bool accumulate) {
    gemm_on_device(a, transpose_a, b, transpose_b, out, accumulate, Tensor(), Tensor());
}

// Both gradients of out = op(a) . op(b) from d out = alpha g, each undefined one skipped:
// grad_a = alpha g op(b)^T (as a is stored), grad_b = alpha op(a)^T g. g16: g's bf16 copy when
// the caller made one for both products (or undefined; a bf16 g is used as it is).
static void gradient_products(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b, const Tensor& g,
                              const Tensor& g16, float alpha, Tensor& grad_a, Tensor& grad_b, bool accumulate_a,
                              bool accumulate_b) {
    if (grad_a.defined()) {
        if (!transpose_a) gemm_on_device(g, false, b, !transpose_b, grad_a, accumulate_a, g16, Tensor(), alpha);
        else gemm_on_device(b, transpose_b, g, true, grad_a, accumulate_a, Tensor(), g16, alpha);
    }
    if (grad_b.defined()) {
        if (!transpose_b) gemm_on_device(a, !transpose_a, g, false, grad_b, accumulate_b, Tensor(), g16, alpha);
        else gemm_on_device(g, true, a, transpose_a, grad_b, accumulate_b, g16, Tensor(), alpha);
    }
}

// The output gradient feeds both products; at bf16 precision it is rounded once here
// rather than once inside each product (a linear layer's g is the size of its output:
// this halves the rounding traffic of the backward's largest operand, the logits' g).
// The products take the bf16 path only when every dim is a multiple of 8, the same for
// both since they share the forward's M, N, K; otherwise g is not rounded here.
void CudaBackend::gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b,
                                const Tensor& g, Tensor& grad_a, Tensor& grad_b, bool accumulate_a,
                                bool accumulate_b) {
    // g may come in bf16 (ops::linear_rmsnorm_rope: the rounding this would make, written by
    // the norm's backward without the f32 values); the products then take it as it is.
    const checks::GemmDims dims =
        checks::check_gemm(a, transpose_a, b, transpose_b, g, Device::CUDA, /*out_may_be_bf16=*/true);
    const bool share = grad_a.defined() && grad_b.defined() && bf16_product(dims.M, dims.N, dims.K) && g.numel() > 0;
    // A bf16 copy written with g (Tensor::rounded_copy: the residual stream's gradient, by
    // rmsnorm's backward) is the rounding this would make: the same bits without the pass.
    const Tensor held = g.rounded_copy();
    const Tensor g16 = g.dtype() == DType::BF16 ? g : held.defined() ? held : share ? rounded_bf16_copy(g) : Tensor();
    gradient_products(a, transpose_a, b, transpose_b, g, g16, 1.0f, grad_a, grad_b, accumulate_a, accumulate_b);
}

// The head at bf16 precision: logits [N, V] in bf16, the product's f32 accumulator rounded
// once by cuBLASLt's epilogue (what autocast stores; the loss and its backward read them
// widened to f32). Half the bytes of the step's largest tensor (6.6 GB f32 at the paper's
// 32768 x 50304), written once and read twice. Off the bf16 path (f32 precision, a dim not a
// multiple of 8, a non-contiguous operand): the f32 default.
Tensor CudaBackend::head_logits(const Tensor& x, const Tensor& weight, bool transpose_weight) {
    if (x.ndim() != 2 || weight.ndim() != 2) return Backend::head_logits(x, weight, transpose_weight);
    const int64_t N = x.size(0), D = x.size(1), V = transpose_weight ? weight.size(0) : weight.size(1);
    // D = 0 (empty sums) and N or V = 0 take the default, which writes zeros / nothing.
    if (!bf16_product(N, V, D) || N == 0 || V == 0 || D == 0 || !x.is_contiguous() || !weight.is_contiguous() ||
        x.device() != Device::CUDA || weight.device() != Device::CUDA || weight.dtype() != DType::F32)
        return Backend::head_logits(x, weight, transpose_weight);
    const Tensor x16 = x.dtype() == DType::BF16 ? x : rounded_bf16_copy(x);
    Tensor logits = Tensor::empty({N, V}, DType::BF16, Device::CUDA);
    gemm_of_bf16(x16, false, rounded_bf16_copy(weight), transpose_weight, logits, false);
    return logits;
}

// The head's backward from its bf16 logits gradient (cross_entropy_forward_with_gradient over
// head_logits' bf16 logits): both products read it as it is, the grad_loss scale applied as
// cuBLASLt's alpha; the [N, V] gradient is never rounded or copied. An f32 gradient takes the
// default (gemm_backward, which rounds it once for both products at bf16 precision).
void CudaBackend::scaled_gemm_backward(const Tensor& a, bool transpose_a, const Tensor& b, bool transpose_b,
                                       const Tensor& g, float grad_scale, Tensor& grad_a, Tensor& grad_b,
                                       bool accumulate_a, bool accumulate_b) {
    if (g.dtype() != DType::BF16) {
        Backend::scaled_gemm_backward(a, transpose_a, b, transpose_b, g, grad_scale, grad_a, grad_b, accumulate_a,
                                      accumulate_b);
        return;
    }
    const checks::GemmDims dims = checks::check_gemm(a, transpose_a, b, transpose_b, g, Device::CUDA, /*out_may_be_bf16=*/true);
    if (dims.batch != 1 || !bf16_product(dims.M, dims.N, dims.K)) {  // off the bf16 path since the forward
        Backend::scaled_gemm_backward(a, transpose_a, b, transpose_b, widened_f32_copy(g), grad_scale, grad_a, grad_b,
                                      accumulate_a, accumulate_b);
        return;
    }
    gradient_products(a, transpose_a, b, transpose_b, g, Tensor(), grad_scale, grad_a, grad_b, accumulate_a,
                      accumulate_b);
}

}  // namespace hsa
