// `hsa data`: encode|decode (text on stdin to a JSON list of token ids on stdout and back,
// for scripts) live here; tokenize/inspect are in shard_command, task in task_command.
#pragma once

#include <istream>
#include <ostream>
#include <string>
#include <vector>

namespace hsa {

// The help text of `hsa data`.
const std::string& data_help();

// args: everything after `data`. Returns the exit code (0, or 2 when only help was printed
// because no subcommand was given). Bad arguments or input throw ConfigError
// (core/model/config.h: exit 2).
int run_data(const std::vector<std::string>& args, std::istream& in, std::ostream& out);

}  // namespace hsa
