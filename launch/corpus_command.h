// `hsa data corpus`: the installed prose corpus (trainers/tasks/corpus.h) as plain text, one
// document per paragraph, so that `hsa data tokenize --split-blank-lines` can turn its
// training split into shards (what launch/run.sh does).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace hsa {

// args follow "corpus". Returns the exit code; bad input throws ConfigError (one line, exit 2).
int run_data_corpus(const std::vector<std::string>& args, std::ostream& out);

}  // namespace hsa
