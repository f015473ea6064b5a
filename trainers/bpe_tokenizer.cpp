#include "trainers/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/json.h"
#include "core/model/config.h"
#include "core/tensor.h"
#include "core/utf8.h"

#ifdef HSA_WITH_ICU
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#endif

namespace hsa {

namespace {

// ---------------------------------------------------------------- UTF-8

// The length (1..4) of the well-formed UTF-8 sequence at s[i] (Unicode Table 3-7: no
// overlongs, surrogates or code points above U+10FFFF), its code point in `cp`; 0 if the
// bytes at i are not well-formed.
size_t utf8_next(const unsigned char* s, size_t n, size_t i, uint32_t& cp) {
    const unsigned char b0 = s[i];
    if (b0 < 0x80) {
        cp = b0;
        return 1;
    }
    size_t length;
    unsigned char low = 0x80, high = 0xBF;  // the allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        length = 2;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        length = 3;
        cp = b0 & 0x0F;
        if (b0 == 0xE0) low = 0xA0;
        if (b0 == 0xED) high = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        length = 4;
        cp = b0 & 0x07;
        if (b0 == 0xF0) low = 0x90;
        if (b0 == 0xF4) high = 0x8F;
    } else {
        return 0;
    }
    if (i + length > n) return 0;
    for (size_t k = 1; k < length; ++k) {
        const unsigned char b = s[i + k];
        if (b < (k == 1 ? low : 0x80) || b > (k == 1 ? high : 0xBF)) return 0;
        cp = (cp << 6) | (b & 0x3F);
    }
    return length;
}

// The code point that ends just before byte `end`, with its start in `start`; false when
// the bytes there are not the end of a well-formed sequence.
bool utf8_prev(const unsigned char* s, size_t end, size_t& start, uint32_t& cp) {
    for (size_t back = 1; back <= 4 && back <= end; ++back) {
        const size_t i = end - back;
        if ((s[i] & 0xC0) == 0x80) continue;  // a continuation byte: keep looking back
        if (utf8_next(s, end, i, cp) == back) {
            start = i;
            return true;
        }
        return false;
    }
    return false;
}

// Rust's String::from_utf8_lossy, which the reference decoder ends with: each maximal
// ill-formed subsequence (a lead byte and the continuation bytes that were still valid for
// it, or one stray byte) becomes one U+FFFD.
std::string utf8_lossy(const std::string& bytes) {
    const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
    const size_t n = bytes.size();
    std::string out;
    out.reserve(n);
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        const size_t length = utf8_next(s, n, i, cp);
        if (length) {
            out.append(bytes, i, length);
            i += length;
            continue;
        }
        // Skip the lead byte and every following byte that a well-formed sequence starting
        // with it could still have had there.
        const unsigned char b0 = s[i];
        size_t expected = b0 >= 0xC2 && b0 <= 0xDF ? 2 : b0 >= 0xE0 && b0 <= 0xEF ? 3 : b0 >= 0xF0 && b0 <= 0xF4 ? 4 : 1;
        size_t j = i + 1;
        for (size_t k = 1; k < expected && j < n; ++k, ++j) {
            const unsigned char b = s[j];
            unsigned char low = 0x80, high = 0xBF;
            if (k == 1) {
                if (b0 == 0xE0) low = 0xA0;
                if (b0 == 0xED) high = 0x9F;
                if (b0 == 0xF0) low = 0x90;
                if (b0 == 0xF4) high = 0x8F;
            }
            if (b < low || b > high) break;
        }
        out += "\xEF\xBF\xBD";
        i = j;
    }
    return out;
}

bool is_well_formed_utf8(const std::string& text) {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    uint32_t cp;
    for (size_t i = 0, length; i < text.size(); i += length)
        if (!(length = utf8_next(s, text.size(), i, cp))) return false;
    return true;
}

// ---------------------------------------------------------------- GPT-2 byte map

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68
// bytes for U+0100.. in byte order, so every byte is one visible, non-space character.
struct ByteMap {
    std::array<uint32_t, 256> byte_to_cp{};
    std::array<int16_t, 324> cp_to_byte{};  // -1 where no byte maps to the code point
    ByteMap() {
        cp_to_byte.fill(-1);
        uint32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
            cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
        }
    }
    std::string to_chars(const char* bytes, size_t length) const {
        std::string out;
        for (size_t i = 0; i < length; ++i) append_utf8(out, byte_to_cp[static_cast<unsigned char>(bytes[i])]);
        return out;
    }
    // What the reference ByteLevel decoder makes of one token: its byte-level characters as
    // bytes, or the token's own UTF-8 when any character is not a byte-level one.
    std::string token_bytes(const std::string& token) const {
        const auto* s = reinterpret_cast<const unsigned char*>(token.data());
        std::string out;
        for (size_t i = 0; i < token.size();) {
            uint32_t cp;
            const size_t length = utf8_next(s, token.size(), i, cp);
            if (!length || cp >= cp_to_byte.size() || cp_to_byte[cp] < 0) return token;
            out += static_cast<char>(cp_to_byte[cp]);
            i += length;
        }
        return out;
    }
};

const ByteMap& byte_map() {
    static const ByteMap map;
    return map;
}

// ---------------------------------------------------------------- Unicode classes

// The classes of the pre-tokenizer pattern: \p{L}, \p{N}, \s (White_Space) and the rest.
enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

#ifdef HSA_WITH_ICU
CharClass classify_with_icu(uint32_t cp) {
    const auto c = static_cast<UChar32>(cp);
    switch (u_charType(c)) {
        case U_UPPERCASE_LETTER:
        case U_LOWERCASE_LETTER:
        case U_TITLECASE_LETTER:
        case U_MODIFIER_LETTER:
        case U_OTHER_LETTER:
            return kLetter;
        case U_DECIMAL_DIGIT_NUMBER:
        case U_LETTER_NUMBER:
        case U_OTHER_NUMBER:
            return kNumber;
        default:
            return u_isUWhiteSpace(c) ? kSpace : kOther;
    }
}

bool is_white_space(uint32_t cp) { return u_isUWhiteSpace(static_cast<UChar32>(cp)); }

// regex-syntax's is_word_character (\w), which the reference uses for single_word tokens.
bool is_word_character(uint32_t cp) {
    const auto c = static_cast<UChar32>(cp);
    return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || (U_GET_GC_MASK(c) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) ||
           u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}

// NFC of well-formed UTF-8.
void append_nfc(std::string& out, const char* text, size_t length) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    if (U_SUCCESS(status)) {
        icu::StringByteSink<std::string> sink(&out);
        nfc->normalizeUTF8(0, icu::StringPiece(text, static_cast<int32_t>(length)), sink, nullptr, status);
    }
    HSA_CHECK(U_SUCCESS(status), "tokenizer: ICU NFC normalization failed: " << u_errorName(status));
}
#else
// Never reached: BpeTokenizer::load refuses to build a tokenizer without ICU.
[[noreturn]] void no_icu() { throw Error("tokenizer: this build has no ICU (install libicu-dev and rebuild)"); }
CharClass classify_with_icu(uint32_t) { no_icu(); }
bool is_white_space(uint32_t) { no_icu(); }
bool is_word_character(uint32_t) { no_icu(); }
void append_nfc(std::string&, const char*, size_t) { no_icu(); }
#endif

// Classes of the Basic Multilingual Plane in a table (the pre-tokenizer asks for every
// code point of the text); the rare supplementary code points ask ICU.
CharClass classify(uint32_t cp) {
    static const std::vector<uint8_t> bmp = [] {
        std::vector<uint8_t> table(0x10000);
        for (uint32_t c = 0; c < 0x10000; ++c) table[c] = classify_with_icu(c);
        return table;
    }();
    return cp < 0x10000 ? static_cast<CharClass>(bmp[cp]) : classify_with_icu(cp);
}

bool is_all_ascii(const std::string& text) {
    for (char c : text)
        if (static_cast<unsigned char>(c) >= 0x80) return false;
    return true;
}

// ---------------------------------------------------------------- loading helpers

// Ids index dense tables (id -> token, id -> bytes), so a stray huge id must not size them.
constexpr double kMaxId = 1 << 24;
constexpr size_t kMaxCachedWordBytes = 256;  // longer words are merged afresh each time
constexpr size_t kCacheCapacity = 1 << 17;   // words; the cache is cleared when it is full

const char* const kEosNames[] = {"<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>"};
const char* const kBosNames[] = {"<|startoftext|>", "<s>", "<|begin_of_text|>", "<bos>", "<|bos|>"};
const char* const kPadNames[] = {"<|padding|>", "<pad>", "<|pad|>", "[PAD]"};

// A short description of a JSON value for an error line.
std::string describe(const Json& value) {
    if (value.is_string()) {
        std::string text = value.dump();
        return text.size() > 60 ? text.substr(0, 57) + "...\"" : text;
    }
    if (value.is_bool() || value.is_null() || value.is_number()) return value.dump();
    return std::string("a JSON ") + value.kind_name();
}

// The "type" of a JSON object component, or "" when it has none.
std::string type_of(const Json& component) {
    if (!component.is_object() || !component.contains("type") || !component.at("type").is_string()) return "";
    return component.at("type").as_string();
}

// A name for shards: "gpt-neox-20b" for ".../gpt-neox-20b.tokenizer.json", and the folder's
// name for ".../gpt2/tokenizer.json" (how Hugging Face snapshots store it).
std::string name_from_path(const std::string& path) {
    const std::filesystem::path p(path);
    std::string stem = p.filename().string();
    for (const char* suffix : {".json", ".tokenizer"})
        if (stem.size() > std::string(suffix).size() && stem.compare(stem.size() - std::string(suffix).size(), std::string::npos, suffix) == 0)
            stem.resize(stem.size() - std::string(suffix).size());
    if (stem == "tokenizer") {
        const std::string folder = std::filesystem::absolute(p).parent_path().filename().string();
        if (!folder.empty()) return folder;
    }
    return stem;
}

}  // namespace

// ---------------------------------------------------------------- loading

bool BpeTokenizer::available() {
#ifdef HSA_WITH_ICU
    return true;
#else
    return false;
#endif
}

void BpeTokenizer::Trie::insert(const std::string& pattern, int32_t token) {
    int32_t node = 0;
    for (char c : pattern) {
        const auto byte = static_cast<unsigned char>(c);
        auto it = nodes[node].children.find(byte);
        if (it == nodes[node].children.end()) {
            nodes.emplace_back();
            it = nodes[node].children.emplace(byte, static_cast<int32_t>(nodes.size() - 1)).first;
        }
        node = it->second;
    }
    first_byte[static_cast<unsigned char>(pattern[0])] = true;
    // The first of several tokens with the same pattern wins, as in the reference's trie.
    if (nodes[node].token < 0) nodes[node].token = token;
}

void BpeTokenizer::MergeTable::reserve(size_t count) {
    int bits = 4;
    while ((size_t{1} << bits) < 2 * count) ++bits;  // at most half full
    keys_.assign(size_t{1} << bits, kEmpty);
    values_.assign(size_t{1} << bits, Merge{});
    mask_ = (uint64_t{1} << bits) - 1;
    shift_ = 64 - bits;
}

void BpeTokenizer::MergeTable::assign(int32_t left, int32_t right, Merge merge) {
    const uint64_t key = pack(left, right);
    uint64_t slot = hash(key);
    while (keys_[slot] != kEmpty && keys_[slot] != key) slot = (slot + 1) & mask_;
    keys_[slot] = key;
    values_[slot] = merge;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::load(const std::string& path) {
    const auto fail = [&](const std::string& what) { throw ConfigError("tokenizer: " + path + ": " + what); };
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
        throw ConfigError("tokenizer: " + path + " does not exist (expected 'byte' or the path of a tokenizer.json)");
    if (std::filesystem::is_directory(path, ec)) fail("is a folder, expected a tokenizer.json file");
    if (!available())
        throw ConfigError("tokenizer: cannot load " + path + ": this build has no ICU (install libicu-dev and rebuild)");
    std::string text;
    try {
        text = read_text_file(path);
    } catch (const Error& e) {
        throw ConfigError(std::string("tokenizer: ") + e.what());
    }
    Json root;
    try {
        root = Json::parse(text, path);
    } catch (const Error& e) {
        throw ConfigError(std::string("tokenizer: ") + e.what() + " (expected a Hugging Face tokenizer.json)");
    }
    text.clear();
    if (!root.is_object()) fail(std::string("holds a JSON ") + root.kind_name() + ", expected a tokenizer.json object");
    if (!root.contains("model") || !root.at("model").is_object())
        fail("has no \"model\" object: not a Hugging Face tokenizer.json");

    std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
    tok->name_ = name_from_path(path);
    const ByteMap& bytes = byte_map();

    // ---- model: byte-level BPE
    const Json& model = root.at("model");
    const std::string model_type = type_of(model);
    if (model.contains("type") && model_type != "BPE")
        fail("model.type is " + describe(model.at("type")) + ", expected \"BPE\" (byte-level BPE)");
    // Files without model.type (GPT-2's) are read by the reference as the first model kind
    // whose fields fit: BPE when there are merges.
    if (!model.contains("type") && !model.contains("merges"))
        fail("model has no type and no merges, expected a BPE model");
    if (!model.contains("vocab") || !model.at("vocab").is_object())
        fail("model.vocab is " + (model.contains("vocab") ? describe(model.at("vocab")) : std::string("missing")) +
             ", expected an object of token -> id");
    if (!model.contains("merges") || !model.at("merges").is_array())
        fail("model.merges is " + (model.contains("merges") ? describe(model.at("merges")) : std::string("missing")) +
             ", expected a list of merges");
    if (model.contains("dropout") && !model.at("dropout").is_null() &&
        !(model.at("dropout").is_number() && model.at("dropout").as_number() == 0))
        fail("model.dropout is " + describe(model.at("dropout")) + ", expected null (BPE dropout makes encoding random)");
    for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (model.contains(affix) && !model.at(affix).is_null() && !(model.at(affix).is_string() && model.at(affix).as_string().empty()))
            fail(std::string("model.") + affix + " is " + describe(model.at(affix)) + ", expected null or \"\" (byte-level BPE)");
    if (model.contains("ignore_merges")) {
        if (!model.at("ignore_merges").is_bool()) fail("model.ignore_merges is " + describe(model.at("ignore_merges")) + ", expected true or false");
        tok->ignore_merges_ = model.at("ignore_merges").as_bool();
    }

    int32_t max_id = -1;
    const auto& vocab = model.at("vocab").fields();
    tok->vocab_.reserve(vocab.size());
    for (const auto& [token, id_json] : vocab) {
        const double id = id_json.is_number() ? id_json.as_number() : -1;
        if (!(id >= 0 && id < kMaxId) || id != std::floor(id))
            fail("model.vocab[" + Json(token).dump() + "] is " + describe(id_json) + ", expected an integer id in [0, " +
                 std::to_string(static_cast<int64_t>(kMaxId)) + ")");
        tok->vocab_.emplace(token, static_cast<int32_t>(id));
        max_id = std::max(max_id, static_cast<int32_t>(id));
    }
    tok->id_to_token_.assign(static_cast<size_t>(max_id) + 1, std::string());
    for (const auto& [token, id] : tok->vocab_) {
        if (!tok->id_to_token_[id].empty())
            fail("model.vocab gives id " + std::to_string(id) + " to both " + Json(tok->id_to_token_[id]).dump() + " and " + Json(token).dump());
        tok->id_to_token_[id] = token;
    }
    // Every byte that well-formed UTF-8 can hold needs a token (NeoX has none for C0, C1 and
    // F5..FF, which never occur in it; encode never meets them: it repairs its input first).
    for (int b = 0; b < 256; ++b) {
        const char byte = static_cast<char>(b);
        const auto it = tok->vocab_.find(bytes.to_chars(&byte, 1));
        const bool in_utf8 = b < 0xC0 || (b >= 0xC2 && b <= 0xF4);
        if (it == tok->vocab_.end() && !in_utf8) {
            tok->byte_ids_[b] = -1;
            continue;
        }
        if (it == tok->vocab_.end()) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "0x%02X", b);
            fail(std::string("model.vocab has no token for byte ") + hex + " (" + Json(bytes.to_chars(&byte, 1)).dump() +
                 "), expected a byte-level BPE vocabulary");
        }
        tok->byte_ids_[b] = it->second;
    }

    const auto& merges = model.at("merges").items();
    tok->merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const Json& merge = merges[rank];
        std::string left, right;
        if (merge.is_string()) {
            const std::string& pair = merge.as_string();
            const size_t space = pair.find(' ');
            if (space == std::string::npos || pair.find(' ', space + 1) != std::string::npos)
                fail("model.merges[" + std::to_string(rank) + "] is " + describe(merge) + ", expected two tokens separated by one space");
            left = pair.substr(0, space);
            right = pair.substr(space + 1);
        } else if (merge.is_array() && merge.items().size() == 2 && merge.items()[0].is_string() && merge.items()[1].is_string()) {
            left = merge.items()[0].as_string();
            right = merge.items()[1].as_string();
        } else {
            fail("model.merges[" + std::to_string(rank) + "] is " + describe(merge) + ", expected \"a b\" or [\"a\", \"b\"]");
        }
        int32_t pair_ids[3];
        const std::string parts[3] = {left, right, left + right};
        for (int k = 0; k < 3; ++k) {
            const auto it = tok->vocab_.find(parts[k]);
            if (it == tok->vocab_.end())
                fail("model.merges[" + std::to_string(rank) + "] " + describe(merge) + ": " + Json(parts[k]).dump() + " is not in model.vocab");
            pair_ids[k] = it->second;
        }
        // A repeated pair keeps its last rank, as the reference's hash map does.
        tok->merges_.assign(pair_ids[0], pair_ids[1], Merge{static_cast<int32_t>(rank), pair_ids[2]});
    }

    // ---- normalizer: NFC or none
    // NFC twice is NFC once, so any number of NFC steps is one.
    const auto accept_normalizer = [&](const Json& normalizer) {
        if (type_of(normalizer) != "NFC") return false;
        tok->nfc_ = true;
        return true;
    };
    if (root.contains("normalizer") && !root.at("normalizer").is_null()) {
        const Json& normalizer = root.at("normalizer");
        if (type_of(normalizer) == "Sequence" && normalizer.contains("normalizers") && normalizer.at("normalizers").is_array()) {
            const auto& members = normalizer.at("normalizers").items();
            for (size_t i = 0; i < members.size(); ++i)
                if (!accept_normalizer(members[i]))
                    fail("normalizer.normalizers[" + std::to_string(i) + "] is " +
                         (type_of(members[i]).empty() ? describe(members[i]) : "of type \"" + type_of(members[i]) + "\"") +
                         ", expected NFC (the only normalizer supported)");
        } else if (!accept_normalizer(normalizer)) {
            fail("normalizer is " + (type_of(normalizer).empty() ? describe(normalizer) : "of type \"" + type_of(normalizer) + "\"") +
                 ", expected null or NFC (the only normalizer supported)");
        }
    }

    // ---- pre_tokenizer: ByteLevel, alone or as the one member of a Sequence
    const Json* pre = root.contains("pre_tokenizer") ? &root.at("pre_tokenizer") : nullptr;
    std::string pre_where = "pre_tokenizer";
    if (pre && type_of(*pre) == "Sequence" && pre->contains("pretokenizers") && pre->at("pretokenizers").is_array()) {
        const auto& members = pre->at("pretokenizers").items();
        if (members.size() != 1 || type_of(members[0]) != "ByteLevel") {
            std::string kinds;
            for (const Json& member : members) kinds += (kinds.empty() ? "" : ", ") + (type_of(member).empty() ? describe(member) : type_of(member));
            fail("pre_tokenizer is a Sequence of [" + kinds + "], expected ByteLevel alone (or a Sequence of just ByteLevel)");
        }
        pre = &members[0];
        pre_where = "pre_tokenizer.pretokenizers[0]";
    }
    if (!pre || type_of(*pre) != "ByteLevel")
        fail("pre_tokenizer is " +
             (!pre ? std::string("missing") : type_of(*pre).empty() ? describe(*pre) : "of type \"" + type_of(*pre) + "\"") +
             ", expected ByteLevel (byte-level BPE)");
    if (!pre->contains("add_prefix_space") || !pre->at("add_prefix_space").is_bool())
        fail(pre_where + ".add_prefix_space is " + (pre->contains("add_prefix_space") ? describe(pre->at("add_prefix_space")) : "missing") +
             ", expected true or false");
    tok->add_prefix_space_ = pre->at("add_prefix_space").as_bool();
    if (pre->contains("use_regex")) {
        if (!pre->at("use_regex").is_bool()) fail(pre_where + ".use_regex is " + describe(pre->at("use_regex")) + ", expected true or false");
        tok->use_regex_ = pre->at("use_regex").as_bool();
    }

    // ---- decoder: ByteLevel (the post_processor only adds specials and offsets: ignored)
    const Json* decoder = root.contains("decoder") ? &root.at("decoder") : nullptr;
    if (!decoder || type_of(*decoder) != "ByteLevel")
        fail("decoder is " +
             (!decoder ? std::string("missing") : type_of(*decoder).empty() ? describe(*decoder) : "of type \"" + type_of(*decoder) + "\"") +
             ", expected ByteLevel");

    // ---- added tokens. The reference gives an added token the id of the same string in the
    // model vocabulary, else the next id after the model vocabulary and earlier added tokens;
    // a file whose ids disagree would encode differently here than there, so it is refused.
    const int32_t model_vocab_size = static_cast<int32_t>(tok->vocab_.size());
    int32_t max_added_id = -1;
    std::unordered_map<std::string, int32_t> added_by_content;
    if (root.contains("added_tokens") && !root.at("added_tokens").is_null()) {
        if (!root.at("added_tokens").is_array()) fail("added_tokens is " + describe(root.at("added_tokens")) + ", expected a list");
        const auto& entries = root.at("added_tokens").items();
        for (size_t i = 0; i < entries.size(); ++i) {
            const Json& entry = entries[i];
            const std::string where = "added_tokens[" + std::to_string(i) + "]";
            if (!entry.is_object() || !entry.contains("content") || !entry.at("content").is_string() || !entry.contains("id") ||
                !entry.at("id").is_number())
                fail(where + " is " + describe(entry) + ", expected an object with a string \"content\" and a number \"id\"");
            AddedToken added;
            added.content = entry.at("content").as_string();
            const auto flag = [&](const char* key, bool fallback) {
                if (!entry.contains(key)) return fallback;
                if (!entry.at(key).is_bool()) fail(where + "." + key + " is " + describe(entry.at(key)) + ", expected true or false");
                return entry.at(key).as_bool();
            };
            added.special = flag("special", false);
            added.normalized = flag("normalized", !added.special);
            added.lstrip = flag("lstrip", false);
            added.rstrip = flag("rstrip", false);
            added.single_word = flag("single_word", false);
            if (added.content.empty() || added_by_content.count(added.content)) continue;  // the reference skips these too
            const auto in_vocab = tok->vocab_.find(added.content);
            const int32_t expected_id = in_vocab != tok->vocab_.end() ? in_vocab->second
                                        : max_added_id >= model_vocab_size ? max_added_id + 1
                                                                           : model_vocab_size;
            if (entry.at("id").as_number() != static_cast<double>(expected_id))
                fail(where + " " + describe(entry.at("content")) + " has id " + entry.at("id").dump() + ", but the vocabulary order gives it " +
                     std::to_string(expected_id));
            if (in_vocab == tok->vocab_.end() && static_cast<size_t>(expected_id) < tok->id_to_token_.size() &&
                !tok->id_to_token_[expected_id].empty())
                fail(where + " " + describe(entry.at("content")) + " gets id " + std::to_string(expected_id) + ", which model.vocab gives to " +
                     Json(tok->id_to_token_[expected_id]).dump());
            added.id = expected_id;
            max_added_id = std::max(max_added_id, expected_id);
            added_by_content.emplace(added.content, added.id);
            tok->added_.push_back(added);
        }
    }
    if (max_added_id >= static_cast<int32_t>(tok->id_to_token_.size())) tok->id_to_token_.resize(static_cast<size_t>(max_added_id) + 1);
    for (size_t i = 0; i < tok->added_.size(); ++i) {
        const AddedToken& added = tok->added_[i];
        tok->id_to_token_[added.id] = added.content;
        if (added.normalized) {
            tok->normalized_trie_.insert(tok->normalize(added.content), static_cast<int32_t>(i));
        } else {
            tok->raw_trie_.insert(added.content, static_cast<int32_t>(i));
        }
    }
    tok->id_to_bytes_.resize(tok->id_to_token_.size());
    for (size_t id = 0; id < tok->id_to_token_.size(); ++id) tok->id_to_bytes_[id] = bytes.token_bytes(tok->id_to_token_[id]);

    // ---- the specials the data pipeline needs, by their usual names
    const auto find_special = [&](const auto& names) {
        for (const char* name : names)
            for (const AddedToken& added : tok->added_)
                if (added.special && added.content == name) return added.id;
        return -1;
    };
    tok->eos_id_ = find_special(kEosNames);
    tok->bos_id_ = find_special(kBosNames);
    tok->pad_id_ = find_special(kPadNames);
    tok->cache_.reserve(kCacheCapacity);
    if (tok->eos_id_ < 0) {
        std::string names;
        for (const char* name : kEosNames) names += (names.empty() ? "" : ", ") + std::string(name);
        fail("no end-of-text token among the special added_tokens (looked for " + names + "); the data pipeline needs one");
    }
    return tok;
}

// ---------------------------------------------------------------- lookups

int32_t BpeTokenizer::token_id(const std::string& token) const {
    for (const AddedToken& added : added_)
        if (added.content == token) return added.id;
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
}

const std::string& BpeTokenizer::token(int32_t id) const {
    static const std::string none;
    return id >= 0 && id < vocab_size() ? id_to_token_[id] : none;
}

// ---------------------------------------------------------------- encoding

std::string BpeTokenizer::normalize(const std::string& text) const {
    if (!nfc_ || is_all_ascii(text)) return text;  // ASCII is already NFC
    std::string out;
    out.reserve(text.size() + text.size() / 8);
    append_nfc(out, text.data(), text.size());
    return out;
}

// The reference's AddedVocabulary::find_matches: leftmost-longest matches, each widened by
// lstrip/rstrip, dropped when single_word and inside a word; the text between them becomes
// pieces to tokenize (empty ones are dropped).
void BpeTokenizer::split_added(const std::string& text, const Trie& trie, std::vector<Piece>& out) const {
    if (text.empty()) return;
    if (trie.empty()) {
        out.push_back(Piece{-1, text});
        return;
    }
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    size_t piece_start = 0, pos = 0;
    while (pos < n) {
        if (!trie.first_byte[s[pos]]) {
            ++pos;
            continue;
        }
        int32_t node = 0, token = -1;
        size_t stop = pos;
        for (size_t j = pos; j < n; ++j) {
            const auto it = trie.nodes[node].children.find(s[j]);
            if (it == trie.nodes[node].children.end()) break;
            node = it->second;
            if (trie.nodes[node].token >= 0) {
                token = trie.nodes[node].token;
                stop = j + 1;
            }
        }
        if (token < 0) {
            ++pos;
            continue;
        }
        const AddedToken& added = added_[token];
        size_t start = pos;
        pos = stop;  // the search goes on after the match whether or not it is kept
        uint32_t cp;
        if (added.single_word) {
            size_t prev_start;
            const bool word_before = start > 0 && utf8_prev(s, start, prev_start, cp) && is_word_character(cp);
            const bool word_after = stop < n && utf8_next(s, n, stop, cp) && is_word_character(cp);
            if (word_before || word_after) continue;
        }
        if (added.lstrip) {
            size_t prev_start;
            while (start > piece_start && utf8_prev(s, start, prev_start, cp) && is_white_space(cp)) start = std::max(prev_start, piece_start);
        }
        if (added.rstrip) {
            size_t length;
            while (stop < n && (length = utf8_next(s, n, stop, cp)) && is_white_space(cp)) stop += length;
            pos = stop;
        }
        if (start > piece_start) out.push_back(Piece{-1, text.substr(piece_start, start - piece_start)});
        out.push_back(Piece{added.id, std::string()});
        piece_start = stop;
    }
    if (piece_start < n) out.push_back(Piece{-1, text.substr(piece_start)});
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& input) const {
    // The reference takes only valid strings; bytes that are not UTF-8 become U+FFFD first,
    // as Python's errors="replace" would make them.
    const std::string repaired = is_well_formed_utf8(input) ? std::string() : utf8_lossy(input);
    const std::string& text = repaired.empty() ? input : repaired;
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3);
    std::vector<Piece> raw_pieces, pieces;
    split_added(text, raw_trie_, raw_pieces);
    for (const Piece& raw : raw_pieces) {
        if (raw.added_id >= 0) {
            ids.push_back(raw.added_id);
            continue;
        }
        pieces.clear();
        split_added(normalize(raw.text), normalized_trie_, pieces);
        for (const Piece& piece : pieces) {
            if (piece.added_id >= 0) {
                ids.push_back(piece.added_id);
            } else {
                encode_piece(piece.text, ids);
            }
        }
    }
    return ids;
}

// The GPT-2 pattern  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// by hand: at each position the first alternative that matches, each greedy, as the
// backtracking engine of the reference (Oniguruma) takes them.
void BpeTokenizer::encode_piece(const std::string& piece, std::vector<int32_t>& ids) const {
    std::string prefixed;
    const std::string* text = &piece;
    if (add_prefix_space_ && piece[0] != ' ') {
        prefixed = " " + piece;
        text = &prefixed;
    }
    if (!use_regex_) {
        encode_word(text->data(), text->size(), ids);
        return;
    }
    const auto* s = reinterpret_cast<const unsigned char*>(text->data());
    const size_t n = text->size();
    // Code points (the text is well-formed UTF-8): their byte offsets (one more at the end),
    // values and classes.
    std::vector<uint32_t> offset, value;
    std::vector<uint8_t> cls;
    offset.reserve(n + 1);
    value.reserve(n);
    cls.reserve(n);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        const size_t length = utf8_next(s, n, i, cp);
        offset.push_back(static_cast<uint32_t>(i));
        value.push_back(cp);
        cls.push_back(classify(cp));
        i += length;
    }
    offset.push_back(static_cast<uint32_t>(n));
    const size_t count = value.size();
    const auto is = [&](size_t k, char c) { return k < count && value[k] == static_cast<uint32_t>(c); };

    size_t i = 0;
    while (i < count) {
        size_t end = 0;
        if (value[i] == '\'') {  // 's 't 're 've 'm 'll 'd
            if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) {
                end = i + 2;
            } else if ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) || (is(i + 1, 'l') && is(i + 2, 'l'))) {
                end = i + 3;
            }
        }
        if (!end) {
            // " ?X+" for X one of \p{L}, \p{N}, [^\s\p{L}\p{N}]: the optional space is taken
            // when a run of one class follows it.
            size_t run_start = i;
            if (value[i] == ' ' && i + 1 < count && cls[i + 1] != kSpace) run_start = i + 1;
            if (cls[run_start] != kSpace) {
                end = run_start + 1;
                while (end < count && cls[end] == cls[run_start]) ++end;
            } else {
                // \s+(?!\S) leaves the last space of a run to the word after it; \s+ takes a
                // lone space before a word (where that alternative cannot match).
                size_t run_end = i + 1;
                while (run_end < count && cls[run_end] == kSpace) ++run_end;
                end = run_end == count || run_end - 1 == i ? run_end : run_end - 1;
            }
        }
        encode_word(text->data() + offset[i], offset[end] - offset[i], ids);
        i = end;
    }
}

void BpeTokenizer::encode_word(const char* word, size_t length, std::vector<int32_t>& ids) const {
    if (length == 1) {
        ids.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
        return;
    }
    if (ignore_merges_) {
        const auto it = vocab_.find(byte_map().to_chars(word, length));
        if (it != vocab_.end()) {
            ids.push_back(it->second);
            return;
        }
    }
    if (length > kMaxCachedWordBytes) {
        merge_word(word, length, ids);
        return;
    }
    std::string key(word, length);
    {
        std::lock_guard<std::mutex> lock(cache_mutex_);
        const auto it = cache_.find(key);
        if (it != cache_.end()) {
            ids.insert(ids.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    const size_t first = ids.size();
    merge_word(word, length, ids);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();
    cache_.emplace(std::move(key), std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end()));
}

// The reference's Word::merge_all: a queue of candidate merges ordered by rank, then by
// position; an entry whose pair has changed since it was queued is skipped.
void BpeTokenizer::merge_word(const char* word, size_t length, std::vector<int32_t>& ids) const {
    struct Symbol {
        int32_t id, prev, next;
        bool removed;
    };
    struct Candidate {
        int32_t rank, pos, new_id;
        bool operator<(const Candidate& other) const {  // the top of the queue is the least (rank, pos)
            return rank != other.rank ? rank > other.rank : pos > other.pos;
        }
    };
    // Buffers kept per thread: most words are short, and allocating these twice per new
    // word was a good part of the time spent on it.
    thread_local std::vector<Symbol> symbols;
    thread_local std::vector<Candidate> queue;
    symbols.resize(length);
    queue.clear();
    const auto push = [&](Candidate c) {
        queue.push_back(c);
        std::push_heap(queue.begin(), queue.end());
    };
    for (size_t i = 0; i < length; ++i)
        symbols[i] = Symbol{byte_ids_[static_cast<unsigned char>(word[i])], static_cast<int32_t>(i) - 1,
                            i + 1 < length ? static_cast<int32_t>(i + 1) : -1, false};
    const auto find_merge = [&](int32_t left, int32_t right) { return merges_.find(left, right); };
    for (size_t i = 0; i + 1 < length; ++i)
        if (const Merge* m = find_merge(symbols[i].id, symbols[i + 1].id)) queue.push_back(Candidate{m->rank, static_cast<int32_t>(i), m->new_id});
    std::make_heap(queue.begin(), queue.end());
    while (!queue.empty()) {
        std::pop_heap(queue.begin(), queue.end());
        const Candidate top = queue.back();
        queue.pop_back();
        Symbol& current = symbols[top.pos];
        if (current.removed || current.next < 0) continue;
        const Merge* still = find_merge(current.id, symbols[current.next].id);
        if (!still || still->new_id != top.new_id) continue;
        Symbol& right = symbols[current.next];
        current.id = top.new_id;
        right.removed = true;
        current.next = right.next;
        if (current.next >= 0) symbols[current.next].prev = top.pos;
        if (current.prev >= 0)
            if (const Merge* m = find_merge(symbols[current.prev].id, current.id)) push(Candidate{m->rank, current.prev, m->new_id});
        if (current.next >= 0)
            if (const Merge* m = find_merge(current.id, symbols[current.next].id)) push(Candidate{m->rank, top.pos, m->new_id});
    }
    for (const Symbol& symbol : symbols)
        if (!symbol.removed) ids.push_back(symbol.id);
}

// ---------------------------------------------------------------- decoding

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string bytes;
    bytes.reserve(ids.size() * 4);
    const int32_t vocab = vocab_size();
    for (size_t i = 0; i < ids.size(); ++i) {
        const int32_t id = ids[i];
        HSA_CHECK(id >= 0 && id < vocab, "tokenizer " << name_ << ": id " << id << " at position " << i
                                                      << " is outside the vocabulary [0, " << vocab << ")");
        HSA_CHECK(!id_to_token_[id].empty(), "tokenizer " << name_ << ": id " << id << " at position " << i << " has no token");
        bytes += id_to_bytes_[id];
    }
    return utf8_lossy(bytes);
}

}  // namespace hsa
