// Task shards (shared/design/SYSTEM.md "Data formats"): generated examples in one HDF5 file
// that the trainer (SFT) and `hsa eval` read back.
//
// Layout (N examples, T tokens in all):
//   /tokens          u16 (vocab <= 65536) or u32 [T]  every example's prompt + answer + EOS, back to back
//   /loss_mask       u8 [T]      1 on answer tokens (answer text and its EOS), else 0
//   /offsets         i64 [N]     first token of each example (example i ends where i+1 starts, the last at T)
//   /prompt_lengths  i64 [N]     tokens of example i's prompt (the answer starts at offset + prompt_length)
//   /lengths         i64 [N]     tokens of example i
//   /target_lengths  i64 [N]     the length it was generated for (TaskOptions.length)
//   /depths          f64 [N]     needle depth 0..1, -1 when the task has none
//   /answers         strings [N] each a JSON list of the reference answers, e.g. ["4721093"]
//   /questions       strings [N] the question (BABILong's scoring uses it), "" for RULER tasks
//   /tasks           strings [N] each example's task name
// Root attributes: vocab_size, tokenizer (name), bos, eos, task (the name, or the names joined
// by ',' for a mixed shard), seed, format ("hsa-task-shard-1").
// Strings are variable-length UTF-8 (h5py reads them as str or bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainers/tasks/task.h"
#include "trainers/tokenizer.h"

namespace hsa {

struct TaskShard {
    std::string tokenizer;
    int64_t vocab_size = 0;
    int64_t bos = -1, eos = -1;
    std::string task;
    int64_t seed = 0;
    std::vector<TaskExample> examples;
};

// Writes a task shard one example at a time: /tokens and /loss_mask grow on disk (chunked
// datasets), so memory holds one example however many are generated; the per-example
// datasets, strings and attributes are written by close(). A writer destroyed without
// close() (an error part way) removes its file, so no half shard is left behind.
class TaskShardWriter {
public:
    // Creates `path` (replacing any file there). Throws hsa::Error naming the file.
    TaskShardWriter(const std::string& path, const Tokenizer& tok, int64_t seed);
    ~TaskShardWriter();
    TaskShardWriter(const TaskShardWriter&) = delete;
    TaskShardWriter& operator=(const TaskShardWriter&) = delete;

    void append(const TaskExample& example);
    void close();
    int64_t examples() const { return static_cast<int64_t>(offsets_.size()); }
    int64_t tokens() const { return total_; }

private:
    void discard();  // closes the handles and removes an unfinished file
    std::string path_;
    int64_t vocab_size_, bos_, eos_, seed_;
    std::string tokenizer_;
    int64_t file_ = -1, tokens_set_ = -1, mask_set_ = -1;  // hid_t handles while open
    bool wide_ = false;                                      // u32 tokens (vocab > 65536)
    int64_t total_ = 0;
    std::vector<int64_t> offsets_, prompt_lengths_, lengths_, target_lengths_;
    std::vector<double> depths_;
    std::vector<std::string> answers_, questions_, tasks_, task_order_;
};

// Writes `examples` (made with `tok`) to `path`, replacing any file there. Throws hsa::Error
// naming the file on failure.
void write_task_shard(const std::string& path, const std::vector<TaskExample>& examples, const Tokenizer& tok,
                      int64_t seed);
// Reads a whole task shard back; throws hsa::Error naming the file and what is wrong.
TaskShard read_task_shard(const std::string& path);

// Variable-length UTF-8 string datasets (the HDF5 layer of core/hdf5_io.h has none yet), in a
// file that is not open elsewhere.
void write_string_dataset(const std::string& path, const std::string& dataset, const std::vector<std::string>& values);
std::vector<std::string> read_string_dataset(const std::string& path, const std::string& dataset);

}  // namespace hsa
