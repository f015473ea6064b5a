// Training checkpoints (shared/design/SYSTEM.md "Data formats"): one HDF5 file per save,
// readable with h5py:
//   /params/<name>        f32 master weights
//   /optim/<name>/m, /v   AdamW first and second moments
//   root attributes:
//     format               "hsa-checkpoint-1"
//     config               the full resolved configuration as JSON (FullConfig::to_json)
//     step                 steps completed
//     tokens_seen          training tokens consumed
//     optimizer_steps      AdamW updates made (step minus skipped steps; bias correction)
//     skipped_steps, consecutive_bad_steps   the non-finite-loss bookkeeping
//     data_state           the BatchSource's state() as JSON: data position and RNG counters
//     rng_state            the seeds of everything random, as JSON
//     parameter_order      JSON array of the parameter names in the model's order
//     params_checksum, optimizer_checksum   64-bit hashes (hex) of the stored bytes
// The file is written as "<name>.tmp" in the same folder, fsync'd, renamed to its final name
// and the folder fsync'd, so a crash at any moment leaves every file with a final name
// complete; the checksums catch later damage (truncation, flipped bits).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/model/model.h"
#include "core/optimizer.h"

namespace hsa {

// Everything besides tensors that a run needs to continue exactly.
struct CheckpointState {
    Json config;                // resolved configuration of the run
    int64_t step = 0;           // steps completed
    int64_t tokens_seen = 0;
    int64_t optimizer_steps = 0;
    int64_t skipped_steps = 0;
    int64_t consecutive_bad_steps = 0;
    Json data_state;            // BatchSource::state()
    Json rng_state;
};

// A checkpoint read into host memory and verified against its checksums.
struct Checkpoint {
    std::string path;
    CheckpointState state;
    std::vector<std::string> parameter_names;  // model order
    std::vector<Tensor> params;                // f32 CPU, one per name
    std::vector<Tensor> first_moments, second_moments;  // empty unless read with the optimizer
};

// "step-00000100.h5".
std::string checkpoint_file_name(int64_t step);

// Writes a checkpoint at `path` (folder must exist) through a temporary file and a rename.
void save_checkpoint(const std::string& path, const CheckpointState& state, const ParameterStore& params,
                     AdamW& optimizer);

// Reads and verifies a checkpoint; throws hsa::Error with one line saying what is wrong
// (not HDF5, truncated, missing field, checksum mismatch).
Checkpoint read_checkpoint(const std::string& path, bool with_optimizer = true);

// Copies a checkpoint into a model's parameters (and the optimizer's moments and step count
// when given). Throws hsa::Error naming the first parameter whose name or shape differs.
void apply_checkpoint(const Checkpoint& checkpoint, ParameterStore& params, AdamW* optimizer);

// Complete checkpoints ("step-<digits>.h5") in a folder, by ascending step. Temporary files
// are not listed. A missing folder has none.
struct CheckpointFile {
    int64_t step;
    std::string path;
};
std::vector<CheckpointFile> list_checkpoints(const std::string& folder);

// Removes temporary files a killed writer left behind ("step-*.h5.tmp"); returns how many.
int remove_checkpoint_temporaries(const std::string& folder);

// Deletes all but the newest `keep` checkpoints (keep <= 0 keeps all).
void prune_checkpoints(const std::string& folder, int64_t keep);

// Fields of the configuration that only say where and how often things are written or
// reported; a resumed run may change them. Every other field changes the math.
const std::vector<std::string>& bookkeeping_config_fields();

// The first field (model, then train, task, data) whose value differs between a checkpoint's
// configuration and the current one, ignoring bookkeeping fields, as "train.lr: checkpoint
// 0.01, now 0.02", followed by " (and 2 more: a, b)" when others differ too; "" when they agree.
std::string first_config_difference(const Json& checkpoint_config, const Json& current_config);

}  // namespace hsa
