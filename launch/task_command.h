// `hsa data task ...`: generate RULER- and BABILong-style task data into HDF5 task shards,
// print examples, and score predictions.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace hsa {

// args follow "task". Returns the exit code; bad input throws ConfigError (one line, exit 2).
int run_data_task(const std::vector<std::string>& args, std::ostream& out);

}  // namespace hsa
