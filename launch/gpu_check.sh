#!/usr/bin/env bash
# One call on the GPU machine: build (sm_90a), print `hsa info`, run every test (GPU tests
# included), and print a short summary table last. Logs go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=${OUT:-/tmp/hsa_gpu_check}
mkdir -p "$out"
jobs=$(nproc)
start=$(date +%s)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build -j"$jobs" > "$out/build.log" 2>&1 || { grep -E "error" "$out/build.log" | head -30; exit 1; }
build_s=$(( $(date +%s) - start ))
./build/launch/hsa info | tee "$out/info.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/info.log"
echo "profilers: $(command -v nsys || echo no nsys) $(command -v ncu || echo no ncu)" | tee -a "$out/info.log"
start=$(date +%s)
(cd build && ctest -j"$jobs" --timeout 900 --output-on-failure) > "$out/ctest.log" 2>&1
ctest_rc=$?
test_s=$(( $(date +%s) - start ))
grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest.log" | tail -20
grep -B2 -A12 -E "\*\*\*Failed|\[  FAILED  \]" "$out/ctest.log" | head -80
# Tests that skipped (each once: ctest also lists them again in its summary), e.g. those
# needing the ICU / corpus packages that only `launch/setup.sh` installs.
skipped=$(grep -c -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped' "$out/ctest.log" || true)

# Kernel tests under compute-sanitizer (memcheck, racecheck), when it is installed.
sanitizer="not run"
if command -v compute-sanitizer >/dev/null 2>&1; then
  HSA_TEST_SMALL=1 compute-sanitizer --tool memcheck --error-exitcode 3 ./build/tests/hsa_tests --gtest_filter='CudaOps.*:CudaHsaV1.*:CudaAttentionTensorCore.*' > "$out/sanitizer.log" 2>&1
  mem_rc=$?
  # Racecheck leaves out the GEMM autotuning test: it runs cuBLAS's alternative Hopper
  # kernels (nvjet_sm90_*, warp-specialised, synchronised through TMA / mbarriers), on which
  # racecheck reports shared-memory hazards in NVIDIA's code (100+ at 2026-11-29, none in
  # ours); memcheck still runs it, and the heuristic's own kernels in the other tests are clean.
  HSA_TEST_SMALL=1 compute-sanitizer --tool racecheck --error-exitcode 3 ./build/tests/hsa_tests --gtest_filter='CudaOps.*:CudaHsaV1.*:CudaAttentionTensorCore.*:-CudaOps.GemmAutotuningKeepsTheHeuristicsBits' >> "$out/sanitizer.log" 2>&1
  race_rc=$?
  sanitizer="memcheck rc=$mem_rc, racecheck rc=$race_rc ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer.log" | tr '\n' ' '))"
fi

# One GPU training run of the tiny default, then the benchmarks.
start=$(date +%s)
./build/launch/hsa train --set train.device=cuda --set train.out_dir="$out/run_cuda" --overwrite > "$out/train_cuda.log" 2>&1
train_rc=$?
train_s=$(( $(date +%s) - start ))
tail -3 "$out/train_cuda.log"
for b in hsa swa train; do ./build/launch/hsa bench $b 2>&1 | tee -a "$out/bench.log"; done
./build/launch/hsa bench swa --kv-heads 1 2>&1 | tee -a "$out/bench.log"  # the model's GQA
./build/launch/hsa bench gemm 2>&1 | tee -a "$out/bench.log"
echo
echo "| step | result | seconds |"
echo "|---|---|---|"
echo "| build (sm_90a) | ok | $build_s |"
echo "| ctest | rc=$ctest_rc, $(grep -E 'tests passed' "$out/ctest.log" | tail -1), skipped $skipped | $test_s |"
echo "| compute-sanitizer | $sanitizer | |"
echo "| train tiny on cuda | rc=$train_rc, $(grep -E '^final' "$out/train_cuda.log") | $train_s |"
exit $ctest_rc
