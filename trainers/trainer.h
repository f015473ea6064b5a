// The training loop: AdamW with warmup + cosine decay, global grad-norm clipping and
// gradient accumulation, over batches from a BatchSource (trainers/batch_source.h) chosen by
// the config's "data" section (trainers/data_sources.h: text shards, task examples, the
// built-in recall task of trainers/recall_task.h, or a mixture; by default the recall task
// alone). A run with outputs writes its folder
// train.out_dir:
//   config.json          the resolved configuration
//   log.jsonl            one record per step (fields: trainers/train_log.h)
//   loss.png, accuracy.png   curves drawn by gnuplot (trainers/plot.h)
//   checkpoints/step-00000100.h5   the last keep_checkpoints saves (trainers/checkpoint.h)
// and can be resumed from its newest complete checkpoint with the same losses, bit for
// bit, as a run that never stopped (same device and thread-independent CPU arithmetic).
#pragma once

#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/model/config.h"
#include "trainers/batch_source.h"
#include "trainers/data_sources.h"
#include "trainers/recall_task.h"

namespace hsa {

// Defaults: the tiny run of `hsa train` with no config (about 30 s on two CPU cores).
struct TrainConfig {
    int64_t steps = 300;
    int64_t batch_size = 8;      // sequences per micro-batch
    int64_t grad_accum = 1;      // micro-batches per optimizer step: a step sees batch_size * grad_accum sequences
    int64_t seq_len = 128;
    double lr = 1e-2;
    double min_lr_ratio = 0.1;   // cosine decays to lr * min_lr_ratio
    int64_t warmup = 20;
    double weight_decay = 0.1;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double grad_clip = 1.0;      // 0 = off
    int64_t seed = 1;            // model initialisation and data order
    int64_t log_every = 25;      // progress line every N steps (log.jsonl gets every step)
    int64_t eval_every = 100;    // held-out evaluation every N steps; 0 = only at the end
    int64_t eval_batches = 4;    // held-out micro-batches per evaluation
    std::string device = "cpu";  // "cpu" or "cuda" (one GPU)
    std::string precision = "bf16";  // CUDA matrix products: "bf16" (tensor cores, f32 accumulation
                                     // and f32 master weights) or "f32"; the CPU always computes exactly
    std::string out_dir = "runs/tiny";  // log, config, plots and checkpoints of the run
    int64_t save_every = 100;    // checkpoint every N steps; 0 = only at the end (always at the end)
    int64_t keep_checkpoints = 3;  // keep the newest N checkpoints; 0 = keep all
    int64_t max_bad_steps = 5;   // consecutive steps with a non-finite loss or gradient tolerated
                                 // (each skipped: no update) before the run stops with an error
    // Testing aid: steps (1-based) whose loss is treated as NaN, to exercise the skipping and
    // stopping above without a real divergence. Empty in real runs.
    std::vector<int64_t> inject_nan_steps;

    static TrainConfig from_json(const Json& section);
    Json to_json() const;
    double lr_at(int64_t step) const;  // step counts from 0
};

struct FullConfig {
    ModelConfig model;
    TrainConfig train;
    RecallTaskConfig task;  // the built-in recall task (section "task"), used where data.weights.recall > 0
    DataConfig data;        // which data, mixed how (section "data"); data.recall is always `task`
    // Parses {"model": {...}, "train": {...}, "task": {...}, "data": {...}}; unknown sections
    // or fields are errors (ConfigError). The recall task is configured in "task" only: a
    // "recall" field in "data" is an error, and to_json() leaves it out of "data".
    static FullConfig from_json(const Json& root);
    Json to_json() const;  // every field, resolved; from_json(to_json()) is the identity
};

// The configuration `hsa train` starts from: every field at its default (the structs'
// initialisers), i.e. a tiny model that learns the recall task on a CPU in about 30 s.
Json default_train_config();

// The training data of a configuration (make_batch_source of config.data with train.seed):
// global batches of batch_size * grad_accum sequences (`held_out` = false) or the held-out
// evaluation stream of batch_size sequences (true). Throws ConfigError naming a bad shard.
std::unique_ptr<BatchSource> make_training_batch_source(const FullConfig& config, bool held_out);

struct RunOptions {
    std::ostream* progress = nullptr;  // progress lines and warnings ("warning: ..."); nullptr = silent
    bool write_outputs = true;         // write train.out_dir (log, config, checkpoints, plots)
    bool resume = false;               // continue from the newest complete checkpoint in out_dir
                                       // (none there: start at step 0, saying so)
    bool overwrite = false;            // start over in an out_dir holding an earlier run's checkpoints
    // Checked after every step: when it becomes non-zero (a signal handler sets it), the run
    // writes a checkpoint and stops with TrainingInterrupted.
    const volatile std::sig_atomic_t* stop_requested = nullptr;
};

struct TrainResult {
    int64_t first_step = 0;           // steps completed before this call (resumed runs)
    std::vector<float> losses;        // per step run by this call; NaN for skipped steps
    std::vector<double> grad_norms;   // per step, before clipping
    int64_t skipped_steps = 0;        // over the whole run, resumed part included
    double final_accuracy = 0;        // held-out accuracy at the end (answer positions)
    double final_eval_loss = 0;
    double tokens_per_second = 0;
    std::string last_checkpoint;      // path of the newest checkpoint written ("" for none)
};

// The run stopped after train.max_bad_steps consecutive non-finite steps (runtime failure).
struct TrainingDiverged : Error {
    explicit TrainingDiverged(const std::string& message) : Error(message) {}
};
// The run stopped on RunOptions::stop_requested after writing a checkpoint.
struct TrainingInterrupted : Error {
    explicit TrainingInterrupted(const std::string& message) : Error(message) {}
};

// True when the data is the recall task alone (the default); its accuracy is then "recall
// accuracy", else the accuracy at the loss positions ("answer accuracy").
bool recall_only(const FullConfig& config);
// One line describing the data mix, for the progress output.
std::string describe_data(const FullConfig& config);

class Model;
// Runs the loop. Trains `model` in place when given (it must match config.model), else a
// fresh model seeded by train.seed. Throws ConfigError for an out_dir that cannot be used
// (earlier run's checkpoints without resume/overwrite, a checkpoint whose configuration
// differs in a field that changes the math), TrainingDiverged, TrainingInterrupted.
TrainResult run_training(const FullConfig& config, const RunOptions& options, Model* model = nullptr);

// In memory only (no out_dir): run_training without outputs, progress to `progress`.
TrainResult train_recall(const FullConfig& config, std::ostream* progress, Model* model = nullptr);

// Held-out evaluation: accuracy at the answer (mask) positions and mean loss over `batches`
// micro-batches of a source.
struct EvalResult {
    double accuracy = 0;
    double loss = 0;
};
EvalResult evaluate_batches(Model& model, BatchSource& source, int64_t batches);
// The same on the recall task's held-out stream (seed train.seed + kHeldOutSeedOffset).
// fixed_selection (per upper group, [B, T, Hr, K]) overrides retrieval, for ablations.
EvalResult evaluate_recall(Model& model, const FullConfig& config, int64_t batches,
                           const std::vector<Tensor>* fixed_selection = nullptr);

}  // namespace hsa
