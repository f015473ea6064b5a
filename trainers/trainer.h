// The minimal training loop of the foundation: AdamW with warmup + cosine decay, global
// grad-norm clipping, on the built-in recall task (trainers/recall_task.h), with a progress
// line and periodic held-out accuracy. The full trainer (HDF5 shards, checkpoints, resume)
// builds on this in its own issue.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/model/config.h"
#include "trainers/recall_task.h"

namespace hsa {

// Defaults: the tiny run of `hsa train` with no config (about 30 s on two CPU cores).
struct TrainConfig {
    int64_t steps = 300;
    int64_t batch_size = 8;
    int64_t seq_len = 128;
    double lr = 1e-2;
    double min_lr_ratio = 0.1;   // cosine decays to lr * min_lr_ratio
    int64_t warmup = 20;
    double weight_decay = 0.1;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double grad_clip = 1.0;      // 0 = off
    int64_t seed = 1;
    int64_t log_every = 25;
    int64_t eval_every = 100;    // 0 = only at the end
    int64_t eval_batches = 4;
    std::string device = "cpu";  // "cpu" or "cuda" (one GPU)
    std::string precision = "bf16";  // CUDA matrix products: "bf16" (tensor cores, f32 accumulation
                                     // and f32 master weights) or "f32"; the CPU always computes exactly

    static TrainConfig from_json(const Json& section);
    Json to_json() const;
    double lr_at(int64_t step) const;  // step counts from 0
};

struct FullConfig {
    ModelConfig model;
    TrainConfig train;
    RecallTaskConfig task;
    // Parses {"model": {...}, "train": {...}, "task": {...}}; unknown sections or fields
    // are errors (ConfigError).
    static FullConfig from_json(const Json& root);
    Json to_json() const;  // every field, resolved; from_json(to_json()) is the identity
};

// The configuration `hsa train` starts from: every field at its default (the structs'
// initialisers), i.e. a tiny model that learns the recall task on a CPU in about 30 s.
Json default_train_config();

struct TrainResult {
    std::vector<float> losses;        // per step
    std::vector<double> grad_norms;   // per step, before clipping
    double final_accuracy = 0;        // held-out recall accuracy at the end
    double final_eval_loss = 0;
    double tokens_per_second = 0;
};

class Model;
// Runs the loop; progress lines go to `progress` (nullptr = silent). Trains `model` in
// place when given (it must match config.model), else a fresh model seeded by train.seed.
TrainResult train_recall(const FullConfig& config, std::ostream* progress, Model* model = nullptr);

// Held-out evaluation: accuracy and mean loss over `batches` batches of a seed stream
// disjoint from training's. fixed_selection (per upper group, [B, T, Hr, K]) overrides
// retrieval, for ablations.
struct EvalResult {
    double accuracy = 0;
    double loss = 0;
};
EvalResult evaluate_recall(Model& model, const FullConfig& config, int64_t batches,
                           const std::vector<Tensor>* fixed_selection = nullptr);

}  // namespace hsa
