// `hsa eval`: a trained model on RULER/BABILong-style task examples (trainers/tasks/task.h)
// at several context lengths and needle depths. Each example's prompt is decoded greedily
// (trainers/generate.h; full recompute per token), the continuation is turned back into
// text and scored with the task's own rule (score_task). The result is one accuracy per
// (length, depth) cell: printed as a table, written as JSON and drawn as a heatmap.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/model/model.h"
#include "trainers/recall_task.h"
#include "trainers/tokenizer.h"

namespace hsa {

// The built-in associative-recall task (trainers/recall_task.h) is evaluated too, under this
// name: its settings come from the checkpoint's "task" section.
constexpr const char* kRecallTaskName = "recall";

struct TaskEvalOptions {
    std::string task;                  // a name of task_names(), or kRecallTaskName
    std::vector<int64_t> lengths;      // target example lengths in tokens
    std::vector<double> depths;        // needle depths in [0, 1]; empty = a random depth per example
    int64_t samples = 10;              // examples per (length, depth) cell
    int64_t max_new = 0;               // tokens decoded per example; 0 = the reference answer's
                                       // token count + 8 (decoding also stops at end-of-text)
    uint64_t seed = 1;                 // example i of a cell is generate(task, {length, depth, seed}, i)
    std::string haystack_file;         // "" = the installed prose corpus
    Json extra = Json::object();       // task settings (TaskOptions::extra)
    // Throws ConfigError (one line) for an unknown task, no lengths, a depth outside [0, 1]
    // or samples < 1.
    void validate() const;
};

struct TaskEvalCell {
    int64_t length = 0;
    double depth = -1;                 // -1 = random depths
    std::vector<double> scores;        // one per example, in [0, 1]
    std::vector<std::string> predictions;
    std::vector<std::vector<std::string>> answers;
    std::vector<int64_t> example_lengths;  // actual token counts
    double accuracy() const;           // mean score
};

struct TaskEvalResult {
    std::vector<TaskEvalCell> cells;   // lengths major, depths minor
    double accuracy() const;           // mean over every example
};

// Runs the evaluation; a line per finished cell goes to `progress` (nullptr = silent).
// Throws ConfigError when an example's tokens do not fit the model's vocabulary.
TaskEvalResult evaluate_task(Model& model, const Tokenizer& tokenizer, const TaskEvalOptions& options, std::ostream* progress);

// The recall task at each length: --samples sequences of that length (pairs early, query
// rounds at the end, every query beyond the sliding window; trainers/recall_task.h), and a
// score per answer position: 1 when the arg-max logit (teacher forcing, one forward pass)
// is the value. Longer lengths put the pairs further from the queries: the extrapolation
// test of HSA retrieval. options.extra overrides fields of trained_task (e.g.
// answers_in_queries=false, so that every answer needs the far pair's chunk). Throws
// ConfigError when a length cannot hold the task or an override is not a task field.
TaskEvalResult evaluate_recall_lengths(Model& model, const RecallTaskConfig& trained_task,
                                       const TaskEvalOptions& options, std::ostream* progress);

// "4K" for multiples of 1024, else the number.
std::string length_label(int64_t length);
// The accuracy table: a row per depth, a column per length, then the mean per length.
std::string task_eval_table(const TaskEvalResult& result, const TaskEvalOptions& options);
// Everything as JSON: options, per-cell scores, predictions and answers, accuracy per length.
Json task_eval_json(const TaskEvalResult& result, const TaskEvalOptions& options, const std::string& checkpoint,
                    int64_t checkpoint_step, const std::string& tokenizer_name);
// The length x depth heatmap (trainers/plot.h); throws hsa::Error when gnuplot fails.
void plot_task_eval(const TaskEvalResult& result, const TaskEvalOptions& options, const std::string& png_path);

}  // namespace hsa
