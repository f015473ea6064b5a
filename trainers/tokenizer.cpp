#include "trainers/tokenizer.h"

#include "core/model/config.h"
#include "core/tensor.h"
#include "trainers/bpe_tokenizer.h"

namespace hsa {

namespace {
const char* const kBuiltinNames[] = {"bos", "eos", "pad"};
}

int32_t ByteTokenizer::add_special(const std::string& name) {
    HSA_CHECK(!name.empty(), "tokenizer: a special token needs a non-empty name");
    for (int i = 0; i < 3; ++i)
        HSA_CHECK(name != kBuiltinNames[i], "tokenizer: special '" << name << "' is built in (id " << 256 + i << ")");
    const int32_t existing = special_id(name);
    if (existing >= 0) return existing;
    extra_.push_back(name);
    return vocab_size() - 1;
}

int32_t ByteTokenizer::special_id(const std::string& name) const {
    for (int i = 0; i < 3; ++i)
        if (name == kBuiltinNames[i]) return 256 + i;
    for (size_t i = 0; i < extra_.size(); ++i)
        if (extra_[i] == name) return kBaseVocabSize + static_cast<int32_t>(i);
    return -1;
}

std::vector<int32_t> ByteTokenizer::encode(const std::string& text) const {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (char c : text) ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(c)));
    return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string text;
    text.reserve(ids.size());
    const int32_t vocab = vocab_size();
    for (size_t i = 0; i < ids.size(); ++i) {
        const int32_t id = ids[i];
        HSA_CHECK(id >= 0 && id < vocab, "tokenizer: id " << id << " at position " << i << " is outside the vocabulary [0, "
                                                          << vocab << ")");
        if (id < 256) {
            text += static_cast<char>(static_cast<unsigned char>(id));
        } else {
            const std::string& name = id < kBaseVocabSize ? std::string(kBuiltinNames[id - 256]) : extra_[id - kBaseVocabSize];
            text += "<|" + name + "|>";
        }
    }
    return text;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
    if (spec == "byte") return std::make_unique<ByteTokenizer>();
    if (spec.empty()) throw ConfigError("tokenizer: empty name, expected 'byte' or the path of a tokenizer.json");
    return BpeTokenizer::load(spec);
}

}  // namespace hsa
