// `hsa bench train`: ms/step, tokens/s, MFU (TARGETS.md formula), peak memory and a
// per-method breakdown of one training step of the paper-scale model on one GPU.
#pragma once

#include <ostream>

namespace hsa {

int bench_train(std::ostream& out);

}  // namespace hsa
