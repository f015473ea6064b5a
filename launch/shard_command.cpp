#include "launch/shard_command.h"

#include "core/model/config.h"

namespace hsa {

int run_data_shards(const std::string& sub, const std::vector<std::string>&, std::ostream&) {
    throw ConfigError("data " + sub + ": not implemented yet");
}

}  // namespace hsa
