// The training data sources behind trainers/batch_source.h, and the "data" section of the
// training config that chooses and mixes them:
//   ShardBatchSource  windows of tokenised text from HDF5 shards (trainers/token_shards.h)
//   TaskBatchSource   RULER/BABILong-style task examples (trainers/tasks/task.h), packed
//   RecallBatchSource the built-in recall task (trainers/recall_task.h)
//   MixtureSource     each row drawn from one of the above with fixed weights
// All are deterministic from their construction and seed, and state()/restore() continue
// bit for bit. A held-out variant of each (make_batch_source(..., held_out = true)) never
// shares data with the training variant.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/json.h"
#include "trainers/batch_source.h"
#include "trainers/recall_task.h"
#include "trainers/tasks/task.h"
#include "trainers/token_shards.h"
#include "trainers/tokenizer.h"

namespace hsa {

// Added to the seed of every held-out source. The recall task's value equals the one the
// foundation trainer used for its evaluation batches, so held-out recall data is unchanged.
constexpr uint64_t kHeldOutSeedOffset = 0x5eed0000ull;

// ---------------------------------------------------------------- the "data" config section

// Relative shares of the three kinds of data; they need not sum to 1.
struct DataWeights {
    double text = 0;
    double tasks = 0;
    double recall = 1;
    bool operator==(const DataWeights& o) const { return text == o.text && tasks == o.tasks && recall == o.recall; }
};

// {"shards": [...], "held_out_shards": [...], "held_out_fraction": 0.01, "shuffle": true,
//  "tasks": [...], "task_lengths": [...], "haystack_file": "", "tokenizer": "byte",
//  "weights": {"text": 0, "tasks": 0, "recall": 1}, "recall": {pairs, keys, ...}}
// The defaults are the recall task alone: the foundation's training data.
struct DataConfig {
    std::vector<std::string> shards;           // paths or shell globs of token shards
    std::vector<std::string> held_out_shards;  // held-out text; empty = the last held_out_fraction of `shards`
    double held_out_fraction = 0.01;           // of the shards' tokens, used when held_out_shards is empty
    bool shuffle = true;                       // text windows in a seeded order per epoch (else in file order)
    std::vector<std::string> tasks;            // task names (trainers/tasks/task.h task_names())
    std::vector<int64_t> task_lengths;         // example lengths drawn uniformly; empty = seq_len. The JSON
                                               // may give one length or a list, as numbers or "4K" (x1024)
    std::string haystack_file;                 // prose for the tasks' haystacks; "" = the installed corpus
    std::string tokenizer = "byte";            // renders the tasks; must be the shards' tokenizer
    // When the JSON gives no "weights": text 1 if shards are listed, tasks 1 if tasks are,
    // recall 1 only if neither is. Given weights replace all three (absent keys are 0).
    DataWeights weights;
    RecallTaskConfig recall;                   // the built-in recall task's settings

    // Checks what needs no files (weights, names, lengths, the recall task against the model);
    // throws ConfigError "config data.<field>: ..." on the first problem.
    void validate(int64_t seq_len, int64_t window, int64_t vocab_size) const;
    // Strict: unknown fields and wrong types are ConfigErrors. Does not validate.
    static DataConfig from_json(const Json& section);
    Json to_json() const;  // every field; from_json(to_json()) reproduces the config
};

// The source the trainer pulls [batch, seq_len] batches from: one of the sources below, or a
// MixtureSource over those with positive weight. held_out selects the evaluation split.
// Validates the config and every shard (ConfigError, one line, naming the file).
// With the default config this is a RecallBatchSource whose batch i (counting from 0) equals
// make_recall_batch(config.recall, batch, seq_len, window, seed, i).
//
// The held-out source reads its text in order and continues where it stopped; an evaluation
// that should see the same batches every time saves its state() once and restores it first.
//
// Data parallelism: data_rank in [0, data_ranks) gets its own slice of the data (rank r takes
// every data_ranks-th window / example / recall batch, starting at r), disjoint from the other
// ranks' and, with data_ranks = 1, the whole stream. Ranks that split one sequence (sequence
// parallelism) share a data rank. Each rank's state() differs, so a checkpoint keeps all of
// them, and restore() refuses a state of another rank or rank count.
std::unique_ptr<BatchSource> make_batch_source(const DataConfig& config, int64_t batch, int64_t seq_len, int64_t window,
                                               int64_t vocab_size, uint64_t seed, bool held_out, int64_t data_rank = 0,
                                               int64_t data_ranks = 1);

// ---------------------------------------------------------------- sources

// This process's slice of the data under data parallelism (see make_batch_source).
struct DataRank {
    int64_t rank = 0;
    int64_t ranks = 1;
};

// A source that makes one row at a time; next() is `batch` rows. The mixture draws rows.
class RowSource : public BatchSource {
public:
    RowSource(int64_t batch, int64_t seq_len, DataRank rank = {});
    TrainBatch next() override;
    // Fills one row: seq_len tokens, the next token at each position, and the loss mask.
    // Returns the row's number of task-answer positions.
    virtual int64_t next_row(int32_t* tokens, int32_t* targets, float* mask) = 0;
    // "text", "tasks" or "recall".
    virtual const char* kind() const = 0;
    int64_t batch() const { return batch_; }
    int64_t seq_len() const { return seq_len_; }
    const DataRank& data_rank() const { return rank_; }

protected:
    // Adds "rank" and "ranks" to a state, and checks them (with check_state) on restore.
    void add_rank(Json& state) const;
    void check_rank(const Json& state) const;
    // Throws ConfigError unless `state` is an object of this kind whose `key` equals `expected`.
    void check_state(const Json& state, const std::string& key, const Json& expected) const;
    const Json& state_field(const Json& state, const std::string& key) const;
    int64_t batch_, seq_len_;
    DataRank rank_;
};

struct ShardSourceOptions {
    std::vector<std::string> files;  // shard paths (globs already expanded), read as one stream in this order
    int64_t batch = 1, seq_len = 1;
    int64_t vocab_size = 0;          // the model's; every shard's vocab_size must fit
    uint64_t seed = 1;
    bool shuffle = true;
    // The stream is split at its last held_out_fraction of tokens: held_out = false reads
    // the part before, true the part after (0 with held_out = true: the whole stream).
    double held_out_fraction = 0;
    bool held_out = false;
    DataRank rank;                   // this rank takes the epoch's windows rank, rank + ranks, ...
};

// Rows are windows of seq_len + 1 consecutive tokens of the shards' concatenated stream
// (tokens = the first seq_len, targets = the last seq_len), at stride seq_len, so an epoch
// reads every token once. With shuffle, each epoch shifts the window grid by a seeded
// offset below seq_len and visits the windows in a seeded permutation (a Feistel network:
// no table, so any corpus size); without it, windows go in file order. mask = 1 except
// where a shard's /loss_mask marks the target token 0; answers = the mask's ones when any
// shard has a /loss_mask, else 0 (plain text has no answers). Shards are opened lazily.
class ShardBatchSource : public RowSource {
public:
    explicit ShardBatchSource(ShardSourceOptions options);
    int64_t next_row(int32_t* tokens, int32_t* targets, float* mask) override;
    const char* kind() const override { return "text"; }
    // {"kind": "text", "epoch", "window" (rows done this epoch), "seed", "stream_tokens",
    //  "files", "held_out", "rank", "ranks", and for reading only "shard"/"offset" of the
    //  next window}
    Json state() const override;
    void restore(const Json& state) override;

    const ShardFormat& format() const { return format_; }
    int64_t region_tokens() const { return region_end_ - region_begin_; }  // tokens this split reads
    int64_t epoch() const { return epoch_; }
    // This rank's windows in epoch `epoch` (all ranks get the same number) and the stream
    // offset of its k-th window.
    int64_t windows_in_epoch(int64_t epoch) const;
    int64_t window_start(int64_t epoch, int64_t k) const;

private:
    int64_t epoch_shift(int64_t epoch) const;
    int64_t all_windows(int64_t epoch) const;  // of every rank
    void read_stream(int64_t start, int64_t count, int32_t* tokens, uint8_t* loss_mask);
    ShardReader& reader(size_t index);

    ShardSourceOptions options_;
    ShardFormat format_;
    std::vector<int64_t> shard_begin_;  // stream offset of each file's first token (plus the total at the end)
    bool any_loss_mask_ = false;
    int64_t region_begin_ = 0, region_end_ = 0;
    int64_t epoch_ = 0, window_ = 0;
    std::vector<std::pair<size_t, std::unique_ptr<ShardReader>>> open_;  // most recently used last
    std::vector<int32_t> window_tokens_;
    std::vector<uint8_t> window_mask_;
};

struct TaskSourceOptions {
    std::vector<std::string> tasks;
    std::vector<int64_t> lengths;    // empty = seq_len
    std::string tokenizer = "byte";
    std::string haystack_file;
    int64_t batch = 1, seq_len = 1;
    int64_t vocab_size = 0;          // the model's; the tokenizer's vocabulary must fit
    uint64_t seed = 1;
    DataRank rank;                   // this rank renders examples rank, rank + ranks, ...
};

// Task examples packed into rows: example i (i = 0, 1, ...; this rank's i-th is the stream's
// i * ranks + rank) has its task and length drawn from (seed, i), and is generated by
// generate_task_example(task, tok, {length, seed}, i). Examples are
// placed one after another while they fit in seq_len + 1 tokens; the first that does not
// starts the next row, and the rest of the row is PAD (EOS if the tokenizer has no PAD) with
// mask 0. mask = the example's loss_mask shifted onto the targets; answers = its ones.
class TaskBatchSource : public RowSource {
public:
    explicit TaskBatchSource(TaskSourceOptions options);
    int64_t next_row(int32_t* tokens, int32_t* targets, float* mask) override;
    const char* kind() const override { return "tasks"; }
    Json state() const override;  // {"kind": "tasks", "example", "seed", "rank", "ranks"}
    void restore(const Json& state) override;
    const Tokenizer& tokenizer() const { return *tok_; }
    int64_t next_example() const { return next_example_; }  // this rank's count of examples placed
    // This rank's k-th example as the source places it (at most seq_len + 1 tokens).
    TaskExample example(int64_t k) const;

private:
    TaskSourceOptions options_;
    std::unique_ptr<Tokenizer> tok_;
    // Keeps the tokenized haystack sentences between examples (a fresh one per example
    // would re-tokenize the corpus each time).
    std::unique_ptr<TaskGenerator> generator_;
    int64_t next_example_ = 0;
    std::optional<TaskExample> pending_;  // example next_example_, generated but not yet placed
    std::vector<int32_t> row_tokens_;
    std::vector<uint8_t> row_mask_;
};

// The built-in recall task. Row r is row r % batch of make_recall_batch(task, batch, seq_len,
// window, seed, (r / batch) * ranks + rank), so with one rank next() from a fresh source gives
// exactly the batches the foundation trainer trained on.
class RecallBatchSource : public RowSource {
public:
    RecallBatchSource(RecallTaskConfig task, int64_t batch, int64_t seq_len, int64_t window, uint64_t seed,
                      DataRank rank = {});
    TrainBatch next() override;
    int64_t next_row(int32_t* tokens, int32_t* targets, float* mask) override;
    const char* kind() const override { return "recall"; }
    Json state() const override;  // {"kind": "recall", "row", "seed", "rank", "ranks"}
    void restore(const Json& state) override;

private:
    const RecallBatch& batch_for_row(int64_t row);
    RecallTaskConfig task_;
    int64_t window_;
    uint64_t seed_;
    int64_t row_ = 0;
    int64_t cached_index_ = -1;
    RecallBatch cached_;
};

// Each row comes from one child, drawn with probability weight / sum(weights) from a seeded
// counter-based generator (row r's draw depends only on seed, r and the data rank). state()
// holds the row counter and every child's state.
class MixtureSource : public RowSource {
public:
    MixtureSource(std::vector<std::unique_ptr<RowSource>> children, std::vector<double> weights, uint64_t seed);
    int64_t next_row(int32_t* tokens, int32_t* targets, float* mask) override;
    const char* kind() const override { return "mixture"; }
    // {"kind": "mixture", "row", "seed", "rank", "ranks", "weights": {kind: w},
    //  "rows": {kind: n}, "children": {kind: state}}
    Json state() const override;
    void restore(const Json& state) override;

    size_t children() const { return children_.size(); }
    const RowSource& child(size_t i) const { return *children_[i]; }
    int64_t rows_from(size_t i) const { return rows_from_[i]; }  // rows drawn from child i so far

private:
    std::vector<std::unique_ptr<RowSource>> children_;
    std::vector<double> cumulative_;  // normalised cumulative weights
    std::vector<double> weights_;
    std::vector<int64_t> rows_from_;
    uint64_t seed_;
    int64_t row_ = 0;
};

}  // namespace hsa
