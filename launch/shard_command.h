// `hsa data tokenize` (text files to HDF5 token shards) and `hsa data inspect` (a shard's
// summary and a decoded sample).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace hsa {

// sub is "tokenize" or "inspect"; args follow it. Returns the exit code; bad input throws
// ConfigError (one line, exit 2).
int run_data_shards(const std::string& sub, const std::vector<std::string>& args, std::ostream& out);

}  // namespace hsa
