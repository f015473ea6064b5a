// HDF5 token shards (shared/design/SYSTEM.md "Data formats"): dataset /tokens (u16 when the
// vocabulary fits 16 bits, else u32; 1-D, chunked and extendible), optional /loss_mask (u8,
// same length), and the root attributes vocab_size, tokenizer (name), bos, eos. Documents
// are separated by an EOS token; a corpus is many shards PREFIX-00000.h5, PREFIX-00001.h5, ...
//
// ShardWriter streams tokens into shards (never holding a shard in memory); ShardReader
// validates a shard and reads ranges of it; tokenize_files is `hsa data tokenize` and
// summarize_shard is `hsa data inspect`, both usable without the CLI.
//
// Every bad input is a ConfigError with one line naming the file.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "trainers/tokenizer.h"

namespace hsa {

// What a shard's attributes say about its tokens.
struct ShardFormat {
    std::string tokenizer;  // the tokenizer's name(): "byte", or e.g. "gpt2"
    int64_t vocab_size = 0;
    int64_t bos = -1;       // -1 when the vocabulary has none
    int64_t eos = -1;
};

// The format a tokenizer produces.
ShardFormat shard_format_of(const Tokenizer& tok);

// "u16" when every id of a vocabulary of this size fits 16 bits, else "u32".
const char* shard_dtype_for(int64_t vocab_size);

// PREFIX-00000.h5 for index 0.
std::string shard_path(const std::string& prefix, int64_t index);

struct ShardWriterOptions {
    std::string prefix;                      // shards are PREFIX-00000.h5, PREFIX-00001.h5, ...
    ShardFormat format;
    int64_t shard_tokens = 100'000'000;      // a new shard starts after this many tokens
    bool loss_mask = false;                  // also write /loss_mask (append must then pass one)
};

// Appends tokens to shards, rolling over to the next file every shard_tokens tokens. A shard
// is written under PREFIX-NNNNN.h5.tmp and renamed when complete, so a crash never leaves
// a half shard under a real name. No file is created until the first token arrives.
class ShardWriter {
public:
    explicit ShardWriter(ShardWriterOptions options);
    ~ShardWriter();  // an unfinished shard's temporary file is removed
    ShardWriter(const ShardWriter&) = delete;
    ShardWriter& operator=(const ShardWriter&) = delete;

    // Every id must lie in [0, vocab_size) (an error names the offending id otherwise).
    // loss_mask: one 0/1 byte per token when options.loss_mask, else must be null.
    void append(const int32_t* tokens, int64_t count, const uint8_t* loss_mask = nullptr);
    void append(const std::vector<int32_t>& tokens) { append(tokens.data(), static_cast<int64_t>(tokens.size())); }
    // Completes the last shard; returns the paths of all shards written (none for no tokens).
    std::vector<std::string> finish();

    int64_t tokens_written() const { return total_tokens_; }
    const std::vector<std::string>& completed_shards() const { return completed_; }

private:
    void open_shard();
    void flush_buffer();
    void close_shard();
    void abandon_shard() noexcept;

    ShardWriterOptions options_;
    bool wide_ = false;                  // u32 storage
    int64_t total_tokens_ = 0;
    int64_t shard_index_ = 0;
    int64_t shard_written_ = 0;          // tokens of the open shard already in the file
    std::vector<uint32_t> buffer_;       // tokens not yet written to the open shard
    std::vector<uint8_t> mask_buffer_;
    std::vector<std::string> completed_;
    std::string temp_path_;              // the open shard's temporary name ("" = none open)
    int64_t file_ = -1, tokens_set_ = -1, mask_set_ = -1;  // hid_t of the open shard
    bool finished_ = false;
};

// An open, validated shard. Throws ConfigError (one line naming the file) when the file is
// missing, not HDF5, lacks /tokens, stores it as anything but 1-D u16/u32, lacks a valid
// vocab_size attribute, or (model_vocab_size > 0) has a vocab_size above the model's.
class ShardReader {
public:
    explicit ShardReader(const std::string& path, int64_t model_vocab_size = 0);
    ~ShardReader();
    ShardReader(ShardReader&& other) noexcept;
    ShardReader& operator=(ShardReader&& other) noexcept;
    ShardReader(const ShardReader&) = delete;
    ShardReader& operator=(const ShardReader&) = delete;

    const std::string& path() const { return path_; }
    const ShardFormat& format() const { return format_; }
    int64_t size() const { return size_; }       // tokens
    const std::string& dtype() const { return dtype_; }  // "u16" or "u32"
    bool has_loss_mask() const { return mask_set_ >= 0; }

    // Tokens [start, start + count) into out; reads only that range from the file. An id
    // at or above vocab_size is an error naming its position (never passed on as garbage).
    void read(int64_t start, int64_t count, int32_t* out) const;
    std::vector<int32_t> read(int64_t start, int64_t count) const;
    // The loss mask over the same range (all ones when the shard has none).
    void read_loss_mask(int64_t start, int64_t count, uint8_t* out) const;

private:
    void close() noexcept;
    void check_range(int64_t start, int64_t count, const char* what) const;
    std::string path_;
    ShardFormat format_;
    std::string dtype_;
    int64_t size_ = 0;
    int64_t file_ = -1, tokens_set_ = -1, mask_set_ = -1;  // hid_t
};

// Expands shell globs (and plain paths) to a sorted, de-duplicated list of files; a pattern
// that matches nothing is a ConfigError naming `what` (e.g. "data.shards") and the pattern.
std::vector<std::string> expand_shard_patterns(const std::vector<std::string>& patterns, const std::string& what);

// ---------------------------------------------------------------- hsa data tokenize

enum class DocumentSplit {
    BlankLines,  // a document ends at one or more blank (whitespace-only) lines and at the end of a file
    PerFile,     // each file is one document, byte for byte
};

struct TokenizeOptions {
    std::vector<std::string> inputs;   // text files
    std::string out_prefix;
    int64_t shard_tokens = 100'000'000;
    DocumentSplit split = DocumentSplit::BlankLines;
    bool overwrite = false;            // replace existing PREFIX-NNNNN.h5 shards (else an error)
    int64_t read_bytes = 1 << 20;      // bytes read from a file at a time
};

struct TokenizeProgress {
    int64_t bytes_read = 0, total_bytes = 0;
    int64_t tokens = 0, documents = 0;
    double seconds = 0;
};

struct TokenizeResult {
    TokenizeProgress totals;
    std::vector<std::string> shards;
};

// Streams the inputs through the tokenizer into shards: each document's tokens, then EOS.
// In blank-line mode line ends are normalised to "\n" and a document is its lines joined by
// "\n" (no trailing newline). Calls `progress` (if set) about once a second. Throws
// ConfigError for unreadable inputs, existing shards without overwrite, or no text at all.
TokenizeResult tokenize_files(const Tokenizer& tok, const TokenizeOptions& options,
                              const std::function<void(const TokenizeProgress&)>& progress = nullptr);

// ---------------------------------------------------------------- hsa data inspect

struct ShardSummary {
    std::string path;
    ShardFormat format;
    std::string dtype;
    int64_t tokens = 0;
    int64_t documents = 0;           // EOS tokens, plus one for a final unterminated document
    bool ends_mid_document = false;  // the last token is not EOS (the next shard continues it)
    bool has_loss_mask = false;
    int64_t loss_mask_ones = 0;      // = tokens when there is no mask
    int64_t distinct_tokens = 0;
    std::vector<std::pair<int32_t, int64_t>> top_tokens;  // (id, count), most frequent first
    std::vector<int32_t> head;       // the first tokens, for a decoded sample
};

// Reads the whole shard in ranges (never all at once).
ShardSummary summarize_shard(const std::string& path, int64_t top = 10, int64_t head_tokens = 200);

}  // namespace hsa
