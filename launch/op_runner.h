// `hsa op NAME --inputs IN.h5 --out OUT.h5 [--device cpu|cuda]`: runs one op of
// core/ops.h forward and backward on inputs from an HDF5 file and writes the output and
// the input gradients to another, so an op can be checked against an outside reference
// (PyTorch, JAX, h5py scripts). Dataset names and shapes: docs/OPS.md.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace hsa {

// The help text of `hsa op` (generated from the op table, so it lists every op).
const std::string& op_help();

// args: everything after `op`. Returns the exit code (0). Bad arguments or input (unknown
// op, missing file or dataset, wrong dtype or shape, bad attribute) throw ConfigError
// (core/model/config.h: exit 2); failures while running throw hsa::Error (exit 1).
int run_op(const std::vector<std::string>& args, std::ostream& out);

}  // namespace hsa
