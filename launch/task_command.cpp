#include "launch/task_command.h"

#include "core/model/config.h"

namespace hsa {

int run_data_task(const std::vector<std::string>&, std::ostream&) {
    throw ConfigError("data task: not implemented yet");
}

}  // namespace hsa
