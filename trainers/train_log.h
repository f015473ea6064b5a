// The training run's record on disk (shared/design/SYSTEM.md "Logs"): out_dir/log.jsonl holds
// one JSON object per step, appended and flushed as the step ends, so a crash keeps every
// finished step. Fields of a record:
//   step               steps completed (1-based; checkpoint step-00000100.h5 follows record 100)
//   loss               the step's training loss (null when skipped: not finite)
//   lr                 learning rate of the step
//   grad_norm          global gradient norm before clipping (null when not finite)
//   tokens_per_s       training tokens of the step / its compute time (data, forward,
//                      backward, update; evaluation and checkpoint writing excluded)
//   tokens_seen        tokens consumed so far, skipped steps included
//   peak_memory_bytes  peak resident set of the process on a CPU run, the device
//                      allocator's peak on a GPU run
//   skipped            present (a string saying why) only on a step that made no update
//   eval_loss, eval_accuracy   present only on evaluation steps
// Plus the small helpers the progress line and the output folder need.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/tensor.h"

namespace hsa {

// Appends records to a log.jsonl. On construction keeps only the records of steps
// <= keep_through_step (rewritten through a temporary file and a rename): a run resumed from
// the checkpoint of step N drops what a crashed run logged after N, so the log reads as one
// uninterrupted run. keep_through_step = 0 starts an empty log.
class TrainLog {
public:
    TrainLog(const std::string& path, int64_t keep_through_step);
    void append(const Json& record);  // one line, flushed
    const std::string& path() const { return path_; }

private:
    std::string path_;
    std::ofstream out_;
};

// Every complete record of a log.jsonl, in order. A torn last line (the process died while
// writing it) is ignored; any other malformed line is an error naming the file and line.
// A missing file reads as no records.
std::vector<Json> read_train_log(const std::string& path);

// Peak memory of this run so far: the device allocator's peak on CUDA, else the peak
// resident set size of the process (getrusage).
int64_t peak_memory_bytes(Device device);

// "42s", "3m07s", "2h05m".
std::string format_duration(double seconds);

// Writes text to path through path + ".tmp", fsync and rename: readers see the old file or
// the new one, never a half-written one.
void write_file_atomically(const std::string& path, const std::string& text);

// fsync of a file or a folder (after a rename into it); throws hsa::Error naming the path.
void fsync_path(const std::string& path, bool is_directory);

}  // namespace hsa
