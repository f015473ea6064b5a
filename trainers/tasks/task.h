// The task generators' common interface: RULER-style (niah_*, variable tracking, common/
// frequent word extraction, passkey) and BABILong-style (qa1..qa5) examples rendered with any
// Tokenizer at a target length, deterministic from (seed, index), plus the benchmarks' scoring
// rules. The trainer mixes these into training batches and `hsa eval` scores them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/json.h"
#include "trainers/tokenizer.h"

namespace hsa {

// One example: the context and question as a prompt, then the answer tokens.
struct TaskExample {
    std::string task;                    // the task name, e.g. "niah_single_1" or "qa2"
    std::vector<int32_t> tokens;         // prompt followed by the answer tokens (and EOS)
    std::vector<uint8_t> loss_mask;      // 1 on answer tokens (the ones the loss trains), else 0
    int64_t prompt_length = 0;           // tokens[0, prompt_length) is the prompt given to a model
    std::vector<std::string> answers;    // reference answer strings, as the scorer expects them
    double depth = -1;                   // where the (first) needle sits in the context, 0..1; -1 if none
};

// Options shared by every task; each generator reads what it needs and ignores the rest.
struct TaskOptions {
    int64_t length = 4096;               // target total length in tokens (prompt + answer)
    double depth = -1;                   // needle depth 0..1 (niah, passkey); -1 = random
    uint64_t seed = 1;
    std::string haystack_file;           // prose haystack source; empty = the installed corpus
    Json extra = Json::object();         // task-specific settings (e.g. number of keys)
};

// Every task name the generators know, in a stable order.
std::vector<std::string> task_names();
// True for a known name.
bool is_task(const std::string& name);
// Example `index` of task `name`: deterministic from (options.seed, index). Throws
// ConfigError for an unknown task or impossible options (e.g. a length too short for the
// question). The length is hit within one chunk-sized tolerance (64 tokens) or exactly.
TaskExample generate_task_example(const std::string& name, const Tokenizer& tok, const TaskOptions& options,
                                  int64_t index);
// The benchmark's scoring rule for `name`: 1 for a correct prediction, 0 otherwise, or a
// fraction for partial-credit rules (RULER's string match over all references; BABILong's
// single-label rule).
double score_task(const std::string& name, const std::string& prediction, const std::vector<std::string>& answers);

}  // namespace hsa
