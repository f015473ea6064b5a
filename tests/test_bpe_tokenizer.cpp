// Tests of the tokenizer.json byte-level BPE tokenizer (trainers/bpe_tokenizer.h): every
// line of the golden files that the reference `tokenizers` library produced for GPT-NeoX-20B
// and GPT-2 (shared/data/tokenizers/), round trips on fresh random text, the options of a
// tiny tokenizer written here, one-line errors, and `hsa data encode|decode` with a file.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/json.h"
#include "core/utf8.h"
#include "core/model/config.h"
#include "tests/cli_runner.h"
#include "tests/file_test_util.h"
#include "tests/op_test_harness.h"
#include "trainers/bpe_tokenizer.h"

namespace hsa {
namespace {

using test::describe;
using test::RunResult;

// Copies of shared/data/tokenizers/ kept in the repository (tests/fixtures/tokenizers/README.md).
const std::string kFixtures = std::string(HSA_SOURCE_DIR) + "/tests/fixtures/tokenizers/";
const char* const kNoIcu = "this build has no ICU (install libicu-dev and rebuild)";

#define SKIP_WITHOUT_ICU() \
    if (!BpeTokenizer::available()) GTEST_SKIP() << kNoIcu

// Each fixture is loaded once per process.
const BpeTokenizer& fixture(const std::string& name) {
    static std::map<std::string, std::unique_ptr<BpeTokenizer>> loaded;
    auto& slot = loaded[name];
    if (!slot) slot = BpeTokenizer::load(kFixtures + name + ".tokenizer.json");
    return *slot;
}

std::string ids_text(const std::vector<int32_t>& ids) {
    std::string text = "[";
    for (size_t i = 0; i < ids.size(); ++i) text += (i ? "," : "") + std::to_string(ids[i]);
    return text + "]";
}

// ---------------------------------------------------------------- golden files

struct GoldenRecord {
    size_t line = 0;  // 1-based line of the file where the record starts
    std::string text, decoded;
    std::vector<int32_t> ids;
};

// Reads a *.golden.jsonl. One record of each fixture is not valid JSONL: its text held
// U+2028 LINE SEPARATOR, which a line-splitting step rewrote as a raw line feed (so the
// record spans three lines, and a raw control character inside a JSON string is malformed).
// Its ids say which character it was: they encode the bytes E2 80 A8 where the line feed
// stands. Such a record is read with U+2028 put back, and `repairs` names where.
std::vector<GoldenRecord> read_golden(const std::string& path, std::vector<std::string>& repairs) {
    const std::string content = read_text_file(path);
    std::vector<std::string> lines;
    for (size_t start = 0; start < content.size();) {
        size_t end = content.find('\n', start);
        if (end == std::string::npos) end = content.size();
        lines.push_back(content.substr(start, end - start));
        start = end + 1;
    }
    std::vector<GoldenRecord> records;
    for (size_t i = 0; i < lines.size(); ++i) {
        const size_t first = i;
        std::string record = lines[i];
        Json json;
        while (true) {
            try {
                json = Json::parse(record, path + " record at line " + std::to_string(first + 1));
                break;
            } catch (const Error& e) {
                const bool unterminated = std::string(e.what()).find("unterminated string") != std::string::npos;
                if (!unterminated || i + 1 >= lines.size()) throw;
                record += "\xE2\x80\xA8" + lines[++i];
            }
        }
        if (i != first)
            repairs.push_back(path + ": lines " + std::to_string(first + 1) + "-" + std::to_string(i + 1) +
                              " are one record split at U+2028; read with U+2028 put back");
        GoldenRecord r;
        r.line = first + 1;
        r.text = json.at("text").as_string();
        r.decoded = json.at("decoded").as_string();
        for (const Json& id : json.at("ids").items()) r.ids.push_back(static_cast<int32_t>(id.as_number()));
        records.push_back(std::move(r));
    }
    return records;
}

void check_golden(const std::string& name) {
    SKIP_WITHOUT_ICU();
    const BpeTokenizer& tok = fixture(name);
    std::vector<std::string> repairs;
    const std::vector<GoldenRecord> records = read_golden(kFixtures + name + ".golden.jsonl", repairs);
    ASSERT_GT(records.size(), 400u) << "the golden file looks truncated";
    size_t encode_failures = 0, decode_failures = 0;
    for (const GoldenRecord& r : records) {
        const std::vector<int32_t> ids = tok.encode(r.text);
        if (ids != r.ids && ++encode_failures <= 10)
            ADD_FAILURE() << name << " line " << r.line << ": encode(" << Json(r.text).dump() << ")\n  got      " << ids_text(ids)
                          << "\n  expected " << ids_text(r.ids);
        const std::string decoded = tok.decode(r.ids);
        if (decoded != r.decoded && ++decode_failures <= 10)
            ADD_FAILURE() << name << " line " << r.line << ": decode(" << ids_text(r.ids) << ")\n  got      " << Json(decoded).dump()
                          << "\n  expected " << Json(r.decoded).dump();
    }
    EXPECT_EQ(encode_failures, 0u);
    EXPECT_EQ(decode_failures, 0u);
    std::cout << "[ golden ] " << name << ": " << records.size() - encode_failures << " of " << records.size()
              << " records encode to the reference ids, " << records.size() - decode_failures << " of " << records.size()
              << " decode to the reference text\n";
    for (const std::string& repair : repairs) std::cout << "[ golden ] fixture defect: " << repair << "\n";
}

TEST(BpeGolden, GptNeox20b) { check_golden("gpt-neox-20b"); }
TEST(BpeGolden, Gpt2) { check_golden("gpt2"); }

// ---------------------------------------------------------------- the fixtures' properties

TEST(BpeTokenizer, FixtureVocabulariesAndSpecials) {
    SKIP_WITHOUT_ICU();
    const BpeTokenizer& neox = fixture("gpt-neox-20b");
    EXPECT_EQ(neox.name(), "gpt-neox-20b");
    EXPECT_EQ(neox.vocab_size(), 50277);  // 50254 BPE tokens and 23 added runs of spaces
    EXPECT_EQ(neox.eos_id(), 0);
    EXPECT_EQ(neox.pad_id(), 1);
    EXPECT_EQ(neox.bos_id(), -1);
    EXPECT_EQ(neox.token_id("<|endoftext|>"), 0);
    EXPECT_EQ(neox.token_id("  "), 50276);
    EXPECT_EQ(neox.token(50254), std::string(24, ' '));

    const BpeTokenizer& gpt2 = fixture("gpt2");
    EXPECT_EQ(gpt2.name(), "gpt2");
    EXPECT_EQ(gpt2.vocab_size(), 50265);
    EXPECT_EQ(gpt2.eos_id(), 50256);
    EXPECT_EQ(gpt2.pad_id(), -1);
    // "<|bos|>" is in this file's vocabulary but not an added token: text never encodes to it.
    EXPECT_EQ(gpt2.bos_id(), -1);
    EXPECT_EQ(gpt2.token_id("Ġthe"), 262);
    EXPECT_EQ(gpt2.token(262), "Ġthe");
    EXPECT_EQ(gpt2.token(-1), "");
}

TEST(BpeTokenizer, SpecialsAreMatchedBeforeTheWordsAroundThem) {
    SKIP_WITHOUT_ICU();
    const BpeTokenizer& neox = fixture("gpt-neox-20b");
    const std::vector<int32_t> ids = neox.encode("a<|endoftext|>b<|padding|>");
    ASSERT_EQ(ids.size(), 4u) << ids_text(ids);
    EXPECT_EQ(ids[1], 0);
    EXPECT_EQ(ids[3], 1);
    EXPECT_EQ(neox.decode(ids), "a<|endoftext|>b<|padding|>");
    // A broken special is ordinary text.
    const std::vector<int32_t> broken = neox.encode("<|endoftext|");
    for (int32_t id : broken) EXPECT_NE(id, 0);
    // NeoX's runs of 2..24 spaces are added tokens, longest first: 26 spaces = 24 + 2.
    EXPECT_EQ(neox.encode(std::string(26, ' ')), (std::vector<int32_t>{50254, 50276}));
}

TEST(BpeTokenizer, DecodeReplacesIllFormedUtf8LikeTheReference) {
    SKIP_WITHOUT_ICU();
    const BpeTokenizer& gpt2 = fixture("gpt2");
    const std::string fffd = "\xEF\xBF\xBD";
    // Each maximal ill-formed subsequence is one U+FFFD (Rust's from_utf8_lossy, Python's
    // errors="replace"): in the input before encoding, and in the bytes that ids decode to.
    EXPECT_EQ(gpt2.encode("a\xE2\x82" "b"), gpt2.encode("a" + fffd + "b"));                // truncated 3-byte sequence
    EXPECT_EQ(gpt2.decode(gpt2.encode("a\xE2\x82" "b")), "a" + fffd + "b");
    EXPECT_EQ(gpt2.decode(gpt2.encode("\xC0\x80")), fffd + fffd);                           // C0 is never a lead byte
    EXPECT_EQ(gpt2.decode(gpt2.encode("\xED\xA0\x80")), fffd + fffd + fffd);                // a surrogate
    EXPECT_EQ(gpt2.decode(gpt2.encode("\xF0\x9F\x98" "x")), fffd + "x");                   // truncated emoji
    EXPECT_EQ(gpt2.decode(gpt2.encode("\xF0\x9F\x98\x80")), "\xF0\x9F\x98\x80");            // the whole emoji
    const BpeTokenizer& neox = fixture("gpt-neox-20b");  // it has no tokens for the bytes C0, C1, F5..FF
    EXPECT_EQ(neox.decode(neox.encode("x\xFF\xC1y")), "x" + fffd + fffd + "y");
    // A token that holds part of a character decodes to U+FFFD on its own.
    const std::vector<int32_t> emoji = gpt2.encode("\xF0\x9F\xA6\x9C");  // U+1F99C, rare enough to be split
    ASSERT_GE(emoji.size(), 2u) << ids_text(emoji);
    EXPECT_EQ(gpt2.decode({emoji[0]}).substr(0, 3), fffd);
    EXPECT_THROW(gpt2.decode({50265}), Error);
    EXPECT_THROW(gpt2.decode({-1}), Error);
}

TEST(BpeTokenizer, EncodesFromSeveralThreadsAtOnce) {
    SKIP_WITHOUT_ICU();
    // A fresh tokenizer, so that the threads fill its word cache together.
    const std::unique_ptr<BpeTokenizer> tok = BpeTokenizer::load(kFixtures + "gpt2.tokenizer.json");
    std::vector<std::string> repairs;
    const std::vector<GoldenRecord> records = read_golden(kFixtures + "gpt2.golden.jsonl", repairs);
    std::vector<std::vector<std::vector<int32_t>>> results(4, std::vector<std::vector<int32_t>>(records.size()));
    std::vector<std::thread> threads;
    for (size_t t = 0; t < results.size(); ++t)
        threads.emplace_back([&, t] {
            for (size_t k = 0; k < records.size(); ++k) {
                const size_t i = (k + t * records.size() / results.size()) % records.size();  // each thread starts elsewhere
                results[t][i] = tok->encode(records[i].text);
            }
        });
    for (std::thread& thread : threads) thread.join();
    for (size_t t = 0; t < results.size(); ++t)
        for (size_t i = 0; i < records.size(); ++i) ASSERT_EQ(results[t][i], records[i].ids) << "thread " << t << ", line " << records[i].line;
}

// ---------------------------------------------------------------- round trips

// Random strings of code points from `pool`, of 0..max_length code points.
std::string random_text(Rng& rng, const std::vector<uint32_t>& pool, int max_length) {
    std::string text;
    const int64_t length = rng.next_int(0, max_length + 1);
    for (int64_t i = 0; i < length; ++i) {
        const uint32_t cp = pool[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(pool.size())))];
        append_utf8(text, cp);
    }
    return text;
}

// Code points that NFC leaves alone wherever they stand: ASCII (with spaces, tabs and
// line breaks weighted up), precomposed Latin, Greek, Cyrillic, CJK, emoji, other numbers
// and the non-ASCII spaces of the pattern's \s.
std::vector<uint32_t> nfc_stable_pool() {
    std::vector<uint32_t> pool;
    for (uint32_t c = 0x20; c < 0x7F; ++c) pool.push_back(c);
    for (int k = 0; k < 12; ++k) pool.push_back(' ');
    for (uint32_t c : {'\t', '\n', '\r', '\'', '\''}) pool.push_back(c);
    for (uint32_t c : {0xE9u, 0xF6u, 0xDFu, 0xC5u, 0x3B1u, 0x3C9u, 0x436u, 0x42Fu, 0x4E2Du, 0x6587u, 0x8A9Eu, 0x1F600u, 0x1F44Du,
                       0x1F3FDu, 0x660u, 0x663u, 0xBDu, 0x2167u, 0xA0u, 0x2028u, 0x3000u, 0x2009u, 0x85u, 0xB5u, 0x2014u})
        pool.push_back(c);
    return pool;
}

TEST(BpeRoundTrip, Gpt2RandomText) {
    SKIP_WITHOUT_ICU();
    HSA_SEED_TRACE();
    std::cout << "[ seed ] HSA_TEST_SEED=" << test::test_seed() << "\n";
    const BpeTokenizer& gpt2 = fixture("gpt2");
    Rng rng = test::test_rng();
    const std::vector<uint32_t> pool = nfc_stable_pool();
    // Any code point at all: GPT-2 has no normalizer, so every well-formed string returns.
    std::vector<uint32_t> any;
    for (int k = 0; k < 64; ++k) {
        uint32_t cp = static_cast<uint32_t>(rng.next_int(1, 0x110000));
        if (cp >= 0xD800 && cp < 0xE000) cp -= 0x800;  // no surrogates in UTF-8
        any.push_back(cp);
    }
    for (int trial = 0; trial < 300; ++trial) {
        const std::string text = random_text(rng, trial % 3 == 2 ? any : pool, 80);
        const std::vector<int32_t> ids = gpt2.encode(text);
        ASSERT_EQ(gpt2.decode(ids), text) << "trial " << trial << ": " << Json(text).dump() << " -> " << ids_text(ids);
        for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < gpt2.vocab_size()) << id;
    }
}

TEST(BpeRoundTrip, NeoxRandomNfcText) {
    SKIP_WITHOUT_ICU();
    HSA_SEED_TRACE();
    std::cout << "[ seed ] HSA_TEST_SEED=" << test::test_seed() << "\n";
    const BpeTokenizer& neox = fixture("gpt-neox-20b");
    Rng rng = test::test_rng();
    const std::vector<uint32_t> pool = nfc_stable_pool();
    for (int trial = 0; trial < 300; ++trial) {
        const std::string text = random_text(rng, pool, 80);
        ASSERT_EQ(neox.decode(neox.encode(text)), text) << "trial " << trial << ": " << Json(text).dump();
    }
    // Text that is not NFC comes back composed.
    EXPECT_EQ(neox.decode(neox.encode("Cafe\xCC\x81")), "Caf\xC3\xA9");
}

// ---------------------------------------------------------------- a tiny tokenizer's options

class BpeFiles : public ::testing::Test {
protected:
    std::string write(const std::string& name, const std::string& content) {
        const std::string path = dir_ / name;
        std::ofstream(path, std::ios::binary) << content;
        return path;
    }
    // The byte-level character of each byte (GPT-2's bytes_to_unicode): printable Latin-1
    // bytes stand for themselves, the other 68 for U+0100.. in byte order.
    static std::string byte_char(int b) {
        uint32_t cp = static_cast<uint32_t>(b);
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
            cp = 256;
            for (int earlier = 0; earlier < b; ++earlier)
                if (!((earlier >= '!' && earlier <= '~') || (earlier >= 0xA1 && earlier <= 0xAC) || (earlier >= 0xAE && earlier <= 0xFF))) ++cp;
        }
        std::string text;
        append_utf8(text, cp);
        return text;
    }
    // A byte-level tokenizer.json: the 256 byte tokens (ids 0..255), then one token per
    // merge, then the added tokens.
    static Json tiny(const std::vector<std::pair<std::string, std::string>>& merges) {
        Json root = Json::object();
        Json& model = root["model"];
        model["type"] = "BPE";
        Json vocab = Json::object();
        int id = 0;
        for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = id++;
        Json merge_list = Json::array();
        for (const auto& [left, right] : merges) {
            if (!vocab.contains(left + right)) vocab[left + right] = id++;
            Json pair = Json::array();
            pair.push_back(left);
            pair.push_back(right);
            merge_list.push_back(pair);  // the list form; the fixtures use the "a b" form
        }
        model["vocab"] = vocab;
        model["merges"] = merge_list;
        root["normalizer"] = Json();
        root["pre_tokenizer"]["type"] = "ByteLevel";
        root["pre_tokenizer"]["add_prefix_space"] = false;
        root["decoder"]["type"] = "ByteLevel";
        root["post_processor"]["type"] = "TemplateProcessing";  // ignored
        root["added_tokens"] = Json::array();
        return root;
    }
    static void add_token(Json& root, const std::string& content, int id, bool special, bool normalized, bool lstrip = false,
                          bool rstrip = false, bool single_word = false) {
        Json token = Json::object();
        token["id"] = id;
        token["content"] = content;
        token["special"] = special;
        token["normalized"] = normalized;
        token["lstrip"] = lstrip;
        token["rstrip"] = rstrip;
        token["single_word"] = single_word;
        Json list = root.at("added_tokens");
        list.push_back(token);
        root["added_tokens"] = list;
    }
    std::unique_ptr<BpeTokenizer> load(const Json& root, const std::string& name = "tiny.tokenizer.json") {
        return BpeTokenizer::load(write(name, root.dump()));
    }

    test::TempFolder dir_{"hsa_bpe_test"};
};

TEST_F(BpeFiles, MergesApplyByRankThenLeftmost) {
    SKIP_WITHOUT_ICU();
    // Ranks: "l l" 0, "h e" 1, "he ll" 2, "hell o" 3, "a a" 4.
    Json root = tiny({{"l", "l"}, {"h", "e"}, {"he", "ll"}, {"hell", "o"}, {"a", "a"}});
    add_token(root, "<|endoftext|>", 261, true, false);
    const auto tok = load(root);
    EXPECT_EQ(tok->name(), "tiny");
    EXPECT_EQ(tok->vocab_size(), 262);
    EXPECT_EQ(tok->eos_id(), 261);
    EXPECT_EQ(tok->encode("hello"), (std::vector<int32_t>{tok->token_id("hello")}));
    // "hel" has no "ll": he + l.
    EXPECT_EQ(tok->encode("hel"), (std::vector<int32_t>{tok->token_id("he"), tok->token_id("l")}));
    // Equal ranks go left to right: "aaa" = aa + a, "aaaa" = aa + aa.
    const int32_t aa = tok->token_id("aa"), a = tok->token_id("a");
    EXPECT_EQ(tok->encode("aaa"), (std::vector<int32_t>{aa, a}));
    EXPECT_EQ(tok->encode("aaaa"), (std::vector<int32_t>{aa, aa}));
    EXPECT_EQ(tok->decode(tok->encode("hello aaa<|endoftext|>")), "hello aaa<|endoftext|>");
}

TEST_F(BpeFiles, AddedTokenStripAndSingleWord) {
    SKIP_WITHOUT_ICU();
    Json root = tiny({});
    add_token(root, "<|endoftext|>", 256, true, false);
    add_token(root, "<sep>", 257, true, false, /*lstrip=*/true, /*rstrip=*/true);
    add_token(root, "cat", 258, false, true, false, false, /*single_word=*/true);
    const auto tok = load(root);
    const auto concat = [](std::vector<std::vector<int32_t>> parts) {
        std::vector<int32_t> all;
        for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
        return all;
    };
    // lstrip and rstrip take the whitespace on both sides into the token.
    EXPECT_EQ(tok->encode("x  <sep>\t y"), concat({tok->encode("x"), {257}, tok->encode("y")}));
    // single_word: only where neither neighbour is a word character.
    EXPECT_EQ(tok->encode("a cat."), concat({tok->encode("a "), {258}, tok->encode(".")}));
    EXPECT_EQ(tok->encode("cat"), (std::vector<int32_t>{258}));
    for (int32_t id : tok->encode("concat cats")) EXPECT_NE(id, 258);
}

TEST_F(BpeFiles, NormalizerAndPrefixSpaceInSequences) {
    SKIP_WITHOUT_ICU();
    Json root = tiny({{"Ġ", "h"}, {"Ġh", "i"}});
    add_token(root, "</s>", 258, true, false);
    Json nfc = Json::object();
    nfc["type"] = "NFC";
    root["normalizer"]["type"] = "Sequence";
    root["normalizer"]["normalizers"] = Json::array();
    root["normalizer"]["normalizers"].push_back(nfc);
    Json byte_level = root.at("pre_tokenizer");
    byte_level["add_prefix_space"] = true;
    root["pre_tokenizer"] = Json::object();
    root["pre_tokenizer"]["type"] = "Sequence";
    root["pre_tokenizer"]["pretokenizers"] = Json::array();
    root["pre_tokenizer"]["pretokenizers"].push_back(byte_level);
    const auto tok = load(root, "tokenizer.json");
    EXPECT_EQ(tok->name(), std::filesystem::path(dir_.path()).filename().string()) << "named after its folder";
    EXPECT_EQ(tok->eos_id(), 258);
    // add_prefix_space: "hi" is read as " hi".
    EXPECT_EQ(tok->encode("hi"), (std::vector<int32_t>{tok->token_id("Ġhi")}));
    EXPECT_EQ(tok->decode(tok->encode("hi")), " hi");
    // NFC: e + COMBINING ACUTE ACCENT is the one character é (C3 A9).
    EXPECT_EQ(tok->encode("e\xCC\x81"), tok->encode("\xC3\xA9"));
}

// ---------------------------------------------------------------- errors

using test::expect_one_line_error;

TEST_F(BpeFiles, OneLineErrors) {
    SKIP_WITHOUT_ICU();
    const std::string missing = dir_ / "missing.json";
    expect_one_line_error([&] { BpeTokenizer::load(missing); }, {missing, "does not exist"});
    expect_one_line_error([&] { load_tokenizer(missing); }, {missing, "does not exist"});
    expect_one_line_error([&] { BpeTokenizer::load(dir_.path()); }, {dir_.path(), "folder"});
    const std::string not_json = write("not_json.json", "{\"model\": {\"type\": \"BPE\",\n oops");
    expect_one_line_error([&] { BpeTokenizer::load(not_json); }, {not_json, "line 2", "tokenizer.json"});
    expect_one_line_error([&] { BpeTokenizer::load(write("list.json", "[1, 2]")); }, {"list.json", "array", "expected a tokenizer.json"});
    expect_one_line_error([&] { BpeTokenizer::load(write("config.json", "{\"hidden\": 64}")); }, {"config.json", "no \"model\""});

    Json wordpiece = Json::object();
    wordpiece["model"]["type"] = "WordPiece";
    wordpiece["model"]["vocab"]["[UNK]"] = 0;
    expect_one_line_error([&] { load(wordpiece, "wordpiece.json"); }, {"wordpiece.json", "\"WordPiece\"", "expected \"BPE\""});
    Json unigram = Json::object();  // a Unigram model without "type": vocab is a list, no merges
    unigram["model"]["vocab"] = Json::array();
    expect_one_line_error([&] { load(unigram, "unigram.json"); }, {"unigram.json", "no merges", "BPE"});

    Json lowercase = tiny({});
    add_token(lowercase, "<|endoftext|>", 256, true, false);
    lowercase["normalizer"]["type"] = "Lowercase";
    expect_one_line_error([&] { load(lowercase, "lowercase.json"); }, {"lowercase.json", "\"Lowercase\"", "NFC"});
    Json whitespace = tiny({});
    add_token(whitespace, "<|endoftext|>", 256, true, false);
    whitespace["pre_tokenizer"] = Json::object();
    whitespace["pre_tokenizer"]["type"] = "Whitespace";
    expect_one_line_error([&] { load(whitespace, "whitespace.json"); }, {"whitespace.json", "\"Whitespace\"", "ByteLevel"});
    Json no_decoder = tiny({});
    add_token(no_decoder, "<|endoftext|>", 256, true, false);
    no_decoder["decoder"] = Json();
    expect_one_line_error([&] { load(no_decoder, "no_decoder.json"); }, {"no_decoder.json", "decoder is null", "ByteLevel"});
    Json no_eos = tiny({});
    expect_one_line_error([&] { load(no_eos, "no_eos.json"); }, {"no_eos.json", "end-of-text", "<|endoftext|>"});
    Json bad_merge = tiny({{"a", "b"}});
    add_token(bad_merge, "<|endoftext|>", 257, true, false);
    bad_merge["model"]["merges"].push_back("x zz");
    expect_one_line_error([&] { load(bad_merge, "bad_merge.json"); }, {"bad_merge.json", "merges[1]", "\"zz\" is not in model.vocab"});
    Json not_byte_level = Json::object();
    not_byte_level["model"]["type"] = "BPE";
    not_byte_level["model"]["vocab"]["a"] = 0;
    not_byte_level["model"]["merges"] = Json::array();
    expect_one_line_error([&] { load(not_byte_level, "chars.json"); }, {"chars.json", "no token for byte 0x00", "byte-level"});
}

TEST(BpeTokenizer, LoadTokenizerGivesBpeForAPath) {
    SKIP_WITHOUT_ICU();
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(kFixtures + "gpt2.tokenizer.json");
    EXPECT_EQ(tok->name(), "gpt2");
    EXPECT_EQ(tok->encode("Hello world"), (std::vector<int32_t>{15496, 995}));
    expect_one_line_error([] { load_tokenizer(""); }, {"empty"});
}

TEST(BpeTokenizer, WithoutIcuLoadingSaysSo) {
    if (BpeTokenizer::available()) GTEST_SKIP() << "this build has ICU";
    // A missing file is reported before the ICU check (e.g. a copy of the repository without shared/).
    if (!std::filesystem::exists(kFixtures + "gpt2.tokenizer.json")) GTEST_SKIP() << "no fixture at " << kFixtures;
    expect_one_line_error([] { BpeTokenizer::load(kFixtures + "gpt2.tokenizer.json"); }, {"gpt2.tokenizer.json", kNoIcu});
}

// ---------------------------------------------------------------- throughput (printed)

TEST(BpeTokenizer, EncodeThroughput) {
    SKIP_WITHOUT_ICU();
    // Two kinds of ~1 MB: the golden texts over and over (mixed scripts, the word cache warm
    // after one round), and made-up words that are nearly all new (the cache rarely helps).
    std::vector<std::string> repairs;
    const std::vector<GoldenRecord> records = read_golden(kFixtures + "gpt-neox-20b.golden.jsonl", repairs);
    std::string golden;
    while (golden.size() < (1u << 20))
        for (const GoldenRecord& r : records) golden += r.text + "\n";
    Rng rng(7);
    std::string words;
    const char* const separators[] = {" ", " ", " ", " ", ", ", ". ", "\n", "  ", "'s "};
    while (words.size() < (1u << 20)) {
        const int64_t length = rng.next_int(1, 11);
        for (int64_t k = 0; k < length; ++k) words += static_cast<char>('a' + rng.next_int(0, 26));
        words += separators[rng.next_int(0, 9)];
    }
    for (const char* name : {"gpt-neox-20b", "gpt2"}) {
        for (const auto& [kind, text] : {std::make_pair("golden texts", &golden), std::make_pair("made-up words", &words)}) {
            // A fresh tokenizer, so that its word cache starts empty.
            const std::unique_ptr<BpeTokenizer> tok = BpeTokenizer::load(kFixtures + name + ".tokenizer.json");
            const auto start = std::chrono::steady_clock::now();
            const std::vector<int32_t> ids = tok->encode(*text);
            const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            EXPECT_GT(ids.size(), text->size() / 8);
            std::cout << "[ speed ] " << name << ", " << kind << ": " << text->size() / 1e6 << " MB -> " << ids.size() << " tokens in "
                      << seconds << " s = " << text->size() / 1e6 / seconds << " MB/s\n";
        }
    }
}

// ---------------------------------------------------------------- hsa data encode|decode

class CliBpe : public BpeFiles {
protected:
    RunResult run(const std::vector<std::string>& args, const std::string& input) {
        const std::string n = std::to_string(calls_++);
        const std::string in = write("stdin" + n, input);
        return test::run_hsa(args, dir_ / ("stdout" + n), dir_ / ("stderr" + n), "", in);
    }
    int calls_ = 0;
};

TEST_F(CliBpe, EncodeAndDecodeGoldenTextsWithNeox) {
    SKIP_WITHOUT_ICU();
    const std::string path = kFixtures + "gpt-neox-20b.tokenizer.json";
    std::vector<std::string> repairs;
    const std::vector<GoldenRecord> records = read_golden(kFixtures + "gpt-neox-20b.golden.jsonl", repairs);
    size_t checked = 0;
    for (const GoldenRecord& r : records) {
        // Specials, spaces, non-ASCII and a text that NFC changes.
        const bool pick = r.text.find("<|endoftext|>") != std::string::npos || r.text.find("  ") != std::string::npos ||
                          (r.text != r.decoded && checked < 3) || r.line == 1;
        if (!pick || checked >= 5) continue;
        ++checked;
        RunResult enc = run({"data", "encode", "--tokenizer", path}, r.text);
        ASSERT_EQ(enc.code, 0) << describe(enc);
        EXPECT_EQ(enc.err, "");
        EXPECT_EQ(enc.out, ids_text(r.ids) + "\n") << "line " << r.line;
        RunResult dec = run({"data", "decode", "--tokenizer=" + path}, enc.out);
        ASSERT_EQ(dec.code, 0) << describe(dec);
        EXPECT_EQ(dec.out, r.decoded) << "line " << r.line;
    }
    EXPECT_GE(checked, 4u);
}

TEST_F(CliBpe, BadTokenizerFilesAreOneLineExitTwo) {
    SKIP_WITHOUT_ICU();
    const std::string missing = dir_ / "nope/tokenizer.json";
    test::expect_error_line(run({"data", "encode", "--tokenizer", missing}, "hi"), 2, {missing, "does not exist"});
    const std::string broken = write("broken.json", "{\"model\": ");
    test::expect_error_line(run({"data", "decode", "--tokenizer", broken}, "[1]"), 2, {broken, "tokenizer.json"});
    // Ids past the BPE vocabulary are refused before decoding.
    test::expect_error_line(run({"data", "decode", "--tokenizer", kFixtures + "gpt2.tokenizer.json"}, "[50265]"), 2,
                            {"element 0", "50265", "[0, 50265)"});
}

}  // namespace
}  // namespace hsa
