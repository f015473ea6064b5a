// The default tokenizer: one token per byte (ids 0..255), then the specials BOS, EOS and PAD,
// then any task specials registered by name. Any byte string (NUL, invalid UTF-8 included)
// round-trips exactly: decode(encode(text)) == text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hsa {

class ByteTokenizer {
public:
    static constexpr int32_t kBos = 256;
    static constexpr int32_t kEos = 257;
    static constexpr int32_t kPad = 258;
    static constexpr int32_t kBaseVocabSize = 259;  // 256 bytes + BOS, EOS, PAD

    // 259 plus the number of registered task specials.
    int32_t vocab_size() const { return kBaseVocabSize + static_cast<int32_t>(extra_.size()); }

    // Registers a task special (rendered "<|name|>") and returns its id: consecutive ids
    // after PAD in registration order. Registering a name again returns its existing id.
    // Throws hsa::Error for an empty name or one of the built-in names (bos, eos, pad).
    int32_t add_special(const std::string& name);
    // The id of a special by name ("bos", "eos", "pad" or a registered one); -1 if none.
    int32_t special_id(const std::string& name) const;
    bool is_special(int32_t id) const { return id >= 256 && id < vocab_size(); }

    // One id per byte; no specials are added.
    std::vector<int32_t> encode(const std::string& text) const;
    // Bytes back, specials as "<|bos|>", "<|eos|>", "<|pad|>" or "<|name|>". Throws
    // hsa::Error naming the id and its position for an id outside [0, vocab_size()).
    std::string decode(const std::vector<int32_t>& ids) const;

private:
    std::vector<std::string> extra_;  // task specials; extra_[i] has id kBaseVocabSize + i
};

}  // namespace hsa
