// The default tokenizer: one token per byte (ids 0..255), then the specials BOS, EOS and PAD,
// then any task specials registered by name. Any byte string (NUL, invalid UTF-8 included)
// round-trips exactly: decode(encode(text)) == text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hsa {

// What the data pipeline, task generators and trainer need from any tokenizer.
class Tokenizer {
public:
    virtual ~Tokenizer() = default;
    virtual std::string name() const = 0;        // "byte", or e.g. "gpt-neox-20b" (stored in shards)
    virtual int32_t vocab_size() const = 0;
    virtual int32_t bos_id() const = 0;          // -1 when the vocabulary has none
    virtual int32_t eos_id() const = 0;          // every tokenizer has one (document separator)
    virtual int32_t pad_id() const = 0;          // -1 when the vocabulary has none
    virtual std::vector<int32_t> encode(const std::string& text) const = 0;
    virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
};

// "byte" gives a ByteTokenizer; anything else is a path to a Hugging Face tokenizer.json
// (byte-level BPE). Throws ConfigError with one line for a missing, malformed or
// unsupported file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

class ByteTokenizer : public Tokenizer {
public:
    static constexpr int32_t kBos = 256;
    static constexpr int32_t kEos = 257;
    static constexpr int32_t kPad = 258;
    static constexpr int32_t kBaseVocabSize = 259;  // 256 bytes + BOS, EOS, PAD

    // 259 plus the number of registered task specials.
    int32_t vocab_size() const override { return kBaseVocabSize + static_cast<int32_t>(extra_.size()); }
    std::string name() const override { return "byte"; }
    int32_t bos_id() const override { return kBos; }
    int32_t eos_id() const override { return kEos; }
    int32_t pad_id() const override { return kPad; }

    // Registers a task special (rendered "<|name|>") and returns its id: consecutive ids
    // after PAD in registration order. Registering a name again returns its existing id.
    // Throws hsa::Error for an empty name or one of the built-in names (bos, eos, pad).
    int32_t add_special(const std::string& name);
    // The id of a special by name ("bos", "eos", "pad" or a registered one); -1 if none.
    int32_t special_id(const std::string& name) const;
    bool is_special(int32_t id) const { return id >= 256 && id < vocab_size(); }

    // One id per byte; no specials are added.
    std::vector<int32_t> encode(const std::string& text) const override;
    // Bytes back, specials as "<|bos|>", "<|eos|>", "<|pad|>" or "<|name|>". Throws
    // hsa::Error naming the id and its position for an id outside [0, vocab_size()).
    std::string decode(const std::vector<int32_t>& ids) const override;

private:
    std::vector<std::string> extra_;  // task specials; extra_[i] has id kBaseVocabSize + i
};

}  // namespace hsa
