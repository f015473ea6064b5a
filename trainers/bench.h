// `hsa bench`: GPU timings of the kernels against the reference figures of
// shared/design/TARGETS.md. Times come from CUDA events around the region (median of
// repeats after warm-up), inputs are random (never zeros), and each table row is printed
// as it is measured.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace hsa {

// hsa: HSA operator forward and forward+backward at TARGETS.md shapes (H 16, Hk 1, S 64,
// K 8, random top-K chunks), useful TFLOP/s = 4 N L H K S d / time (forward).
// swa: sliding-window attention (window 512, 16 q and 16 kv heads, d 64) forward and
// forward+backward at 8x4K and 1x64K.
int run_bench(const std::string& what, const std::vector<std::string>& args, std::ostream& out);

}  // namespace hsa
