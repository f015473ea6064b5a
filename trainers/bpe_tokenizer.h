// Byte-level BPE (GPT-2, GPT-NeoX style) loaded from a Hugging Face tokenizer.json. Encoding
// follows the `tokenizers` library with add_special_tokens=False, step for step, so that the
// ids are the same:
//   1. added tokens with "normalized": false are cut out of the raw text (leftmost-longest);
//   2. each remaining piece is normalized (NFC or none), then added tokens with
//      "normalized": true are cut out of it;
//   3. each remaining piece is split by the GPT-2 pre-tokenizer pattern
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (matched by hand over code points; \s is the Unicode White_Space property, as in
//      Oniguruma and Rust's regex), and each word's bytes become byte-level symbols;
//   4. BPE merges, lowest rank first and leftmost among equal ranks.
// Decoding maps tokens back to bytes and, like the reference, decodes them as UTF-8 with
// U+FFFD for each ill-formed subsequence; added tokens decode to their content.
//
// The library only takes valid strings; input to encode that is not well-formed UTF-8 has
// each maximal ill-formed subsequence replaced by U+FFFD first (as Python's
// errors="replace" does), so its ids are what the library gives for the repaired text.
//
// Unicode classes and NFC come from ICU. A build without ICU (HSA_WITH_ICU undefined) still
// compiles this class, but loading throws ConfigError saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "trainers/tokenizer.h"

namespace hsa {

class BpeTokenizer : public Tokenizer {
public:
    // Reads and validates a tokenizer.json. Throws ConfigError with one line naming the file
    // and what was found against what was expected: missing or unreadable file, malformed
    // JSON, a model other than BPE, a normalizer, pre-tokenizer or decoder kind this class
    // does not implement, a vocabulary that is not byte-level, or a build without ICU.
    static std::unique_ptr<BpeTokenizer> load(const std::string& path);
    // Whether this build can load tokenizer.json files (it was built with ICU).
    static bool available();

    // The file's name without ".tokenizer.json" / ".json", or the folder's for a file named
    // tokenizer.json.
    std::string name() const override { return name_; }
    int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }
    // The special added tokens by their usual names: EOS "<|endoftext|>", "</s>", ...; BOS
    // "<|startoftext|>", "<s>", ...; PAD "<|padding|>", "<pad>", ... (load requires an EOS).
    int32_t bos_id() const override { return bos_id_; }
    int32_t eos_id() const override { return eos_id_; }
    int32_t pad_id() const override { return pad_id_; }
    // Safe to call from several threads at once (the word cache is locked).
    std::vector<int32_t> encode(const std::string& text) const override;
    // Throws hsa::Error naming the id and its position for an id with no token.
    std::string decode(const std::vector<int32_t>& ids) const override;

    // The id of a token by its vocabulary string (byte-level form, e.g. "Ġthe") or an added
    // token's content; -1 if none.
    int32_t token_id(const std::string& token) const;
    // The vocabulary string of an id ("" for an id with no token).
    const std::string& token(int32_t id) const;

private:
    BpeTokenizer() = default;

    struct AddedToken {
        std::string content;
        int32_t id = -1;
        bool special = false;     // decoded like any token here; bos/eos/pad are found among these
        bool normalized = false;  // matched after normalization (true) or in the raw text
        bool lstrip = false;      // the match takes the whitespace before it
        bool rstrip = false;      // the match takes the whitespace after it
        bool single_word = false; // matches only when not inside a word
    };

    // Added-token matching (steps 1 and 2): leftmost-longest over a byte trie.
    struct TrieNode {
        std::unordered_map<unsigned char, int32_t> children;
        int32_t token = -1;  // index into added_ when a token ends here
    };
    struct Trie {
        std::vector<TrieNode> nodes{TrieNode{}};
        bool first_byte[256] = {};  // quick rejection of start positions
        void insert(const std::string& pattern, int32_t token);
        bool empty() const { return nodes.size() == 1; }
    };
    // A piece of text to encode: either an added token's id or text still to tokenize.
    struct Piece {
        int32_t added_id = -1;
        std::string text;
    };
    void split_added(const std::string& text, const Trie& trie, std::vector<Piece>& out) const;
    std::string normalize(const std::string& text) const;
    // Steps 3 and 4 for one piece with no added tokens in it.
    void encode_piece(const std::string& piece, std::vector<int32_t>& ids) const;
    void encode_word(const char* word, size_t length, std::vector<int32_t>& ids) const;
    void merge_word(const char* word, size_t length, std::vector<int32_t>& ids) const;

    std::string name_;
    int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;

    bool nfc_ = false;               // the normalizer: NFC or none
    bool add_prefix_space_ = false;  // ByteLevel pre-tokenizer options
    bool use_regex_ = true;
    bool ignore_merges_ = false;     // BPE option: a word found whole in the vocabulary is one token

    std::unordered_map<std::string, int32_t> vocab_;  // the model's: byte-level token string -> id
    std::vector<std::string> id_to_token_;           // id -> token string ("" where no token)
    std::vector<std::string> id_to_bytes_;           // id -> the bytes it decodes to
    int32_t byte_ids_[256] = {};                     // the single-byte symbol of each byte
    struct Merge {
        int32_t rank;
        int32_t new_id;
    };
    // (left id, right id) -> merge: open addressing with linear probing, the hottest lookup
    // of encoding (a few per byte of a new word).
    class MergeTable {
    public:
        void reserve(size_t count);
        void assign(int32_t left, int32_t right, Merge merge);  // replaces an existing entry
        const Merge* find(int32_t left, int32_t right) const {
            const uint64_t key = pack(left, right);
            for (uint64_t slot = hash(key);; slot = (slot + 1) & mask_) {
                if (keys_[slot] == key) return &values_[slot];
                if (keys_[slot] == kEmpty) return nullptr;
            }
        }

    private:
        static constexpr uint64_t kEmpty = ~0ull;  // ids are below 2^31, so no key is this
        static uint64_t pack(int32_t left, int32_t right) { return (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right); }
        uint64_t hash(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }
        std::vector<uint64_t> keys_ = std::vector<uint64_t>(2, kEmpty);  // an empty table until reserve()
        std::vector<Merge> values_ = std::vector<Merge>(2);
        uint64_t mask_ = 1;
        int shift_ = 63;
    };
    MergeTable merges_;

    std::vector<AddedToken> added_;
    Trie raw_trie_;         // added tokens with normalized = false
    Trie normalized_trie_;  // added tokens with normalized = true (their content normalized)

    // Words seen before -> their ids; bounded, cleared when full.
    mutable std::mutex cache_mutex_;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace hsa
