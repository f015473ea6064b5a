// The task generators' common interface: RULER-style (niah_*, variable tracking, common/
// frequent word extraction, passkey) and BABILong-style (qa1..qa5) examples rendered with any
// Tokenizer at a target length, deterministic from (seed, index), plus the benchmarks' scoring
// rules. The trainer mixes these into training batches and `hsa eval` scores them.
#pragma once

#include <cstdint>
#include <memory>
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
    // Added fields:
    std::string question;                // the question asked (BABILong's scoring rule ignores labels
                                         // that the question mentions); empty for RULER tasks
    int64_t target_length = 0;           // options.length it was generated for
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

// ---- additions ----

// The same with the example's question: BABILong's rule (qa1..qa5) drops the labels that the
// question mentions before checking the prediction (e.g. "kitchen" in "Where was the apple
// before the kitchen?"), so pass TaskExample::question for those; RULER tasks ignore it.
double score_task(const std::string& name, const std::string& prediction, const std::vector<std::string>& answers,
                  const std::string& question);
// RULER's two string-match metrics for one prediction (case-insensitive substring tests):
// "all" = fraction of the references found; "part" = 1 if any reference is found.
double string_match_all(const std::string& prediction, const std::vector<std::string>& references);
double string_match_part(const std::string& prediction, const std::vector<std::string>& references);
// BABILong's label set for qa1..qa5 (the labels its compare_answers looks for); empty otherwise.
std::vector<std::string> babilong_labels(const std::string& name);

// One line describing a task (for `hsa data task list`); "" for an unknown name.
std::string task_description(const std::string& name);
// "ruler" or "babilong"; "" for an unknown name.
std::string task_family(const std::string& name);
// True when the task reads the prose corpus (or options.haystack_file) for its haystack.
bool task_uses_prose(const std::string& name);
// True when options.depth places a needle (niah_*, passkey); the other tasks ignore it.
bool task_has_depth(const std::string& name);

// A token count as written on command lines and in configs: a plain integer or one with a
// K (x1024) or M (x1048576) suffix, e.g. "4096", "4K", "32M". Throws ConfigError naming the
// text for anything else, zero or negative.
int64_t parse_token_count(const std::string& text);

// Generates many examples with one tokenizer, reusing the tokenized haystack sentences across
// examples (generate_task_example builds a fresh one per call, so a loop over examples should
// use this). Not thread-safe: one generator per thread.
class TaskGenerator {
public:
    explicit TaskGenerator(const Tokenizer& tok);
    ~TaskGenerator();
    TaskGenerator(const TaskGenerator&) = delete;
    TaskGenerator& operator=(const TaskGenerator&) = delete;

    TaskExample generate(const std::string& name, const TaskOptions& options, int64_t index);
    const Tokenizer& tokenizer() const { return tok_; }

    struct Cache;  // tokenized sentences and words, per haystack source

private:
    const Tokenizer& tok_;
    std::unique_ptr<Cache> cache_;
};

}  // namespace hsa
