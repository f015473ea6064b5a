// Tests of the byte tokenizer (trainers/tokenizer.h) and of `hsa data encode|decode`
// through the real binary (tests/cli_runner.h).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "tests/cli_runner.h"
#include "tests/file_test_util.h"
#include "trainers/tokenizer.h"

namespace hsa {
namespace {

using test::describe;
using test::RunResult;

// ---------------------------------------------------------------- ByteTokenizer

TEST(ByteTokenizer, ConstantsAndVocab) {
    ByteTokenizer tok;
    EXPECT_EQ(ByteTokenizer::kBos, 256);
    EXPECT_EQ(ByteTokenizer::kEos, 257);
    EXPECT_EQ(ByteTokenizer::kPad, 258);
    EXPECT_EQ(tok.vocab_size(), 259);
    EXPECT_EQ(tok.special_id("bos"), 256);
    EXPECT_EQ(tok.special_id("eos"), 257);
    EXPECT_EQ(tok.special_id("pad"), 258);
    EXPECT_EQ(tok.special_id("query"), -1);
}

TEST(ByteTokenizer, EncodeIsOneIdPerByteWithoutSpecials) {
    ByteTokenizer tok;
    EXPECT_EQ(tok.encode(""), std::vector<int32_t>{});
    EXPECT_EQ(tok.encode("hi"), (std::vector<int32_t>{104, 105}));
    // "é" is two bytes in UTF-8: 0xC3 0xA9; high bytes must not come out negative.
    EXPECT_EQ(tok.encode("\xC3\xA9"), (std::vector<int32_t>{0xC3, 0xA9}));
    EXPECT_EQ(tok.encode(std::string("a\0b", 3)), (std::vector<int32_t>{97, 0, 98}));
}

TEST(ByteTokenizer, RoundTripsRandomBytes) {
    ByteTokenizer tok;
    std::string all;
    for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
    std::vector<int32_t> ids = tok.encode(all);
    ASSERT_EQ(ids.size(), 256u);
    for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
    EXPECT_EQ(tok.decode(ids), all);

    std::mt19937 rng(1234);
    std::uniform_int_distribution<int> byte(0, 255), len(0, 300);
    for (int trial = 0; trial < 200; ++trial) {
        std::string s(static_cast<size_t>(len(rng)), '\0');
        for (char& c : s) c = static_cast<char>(byte(rng));
        EXPECT_EQ(tok.decode(tok.encode(s)), s) << "trial " << trial;
    }
    // Invalid UTF-8 (lone continuation, truncated sequence, overlong NUL) survives as is.
    const std::string invalid = std::string("\x80\xC3\xE2\x82\xC0\x80\xFF", 7) + std::string(1, '\0');
    EXPECT_EQ(tok.decode(tok.encode(invalid)), invalid);
}

TEST(ByteTokenizer, DecodesSpecials) {
    ByteTokenizer tok;
    EXPECT_EQ(tok.decode({ByteTokenizer::kBos, 'o', 'k', ByteTokenizer::kEos, ByteTokenizer::kPad}), "<|bos|>ok<|eos|><|pad|>");
}

TEST(ByteTokenizer, TaskSpecialsGetConsecutiveIdsAfterPad) {
    ByteTokenizer tok;
    EXPECT_EQ(tok.add_special("key"), 259);
    EXPECT_EQ(tok.add_special("query"), 260);
    EXPECT_EQ(tok.add_special("key"), 259) << "registering again returns the same id";
    EXPECT_EQ(tok.vocab_size(), 261);
    EXPECT_EQ(tok.special_id("query"), 260);
    EXPECT_TRUE(tok.is_special(260));
    EXPECT_FALSE(tok.is_special(255));
    EXPECT_EQ(tok.decode({259, 'x', 260}), "<|key|>x<|query|>");
    EXPECT_THROW(tok.add_special(""), Error);
    EXPECT_THROW(tok.add_special("eos"), Error);
}

TEST(ByteTokenizer, OutOfVocabularyIdsNameIdAndPosition) {
    ByteTokenizer tok;
    for (int32_t bad : {-1, 259, 100000}) {
        try {
            tok.decode({'a', 'b', bad});
            ADD_FAILURE() << "no error for id " << bad;
        } catch (const Error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("id " + std::to_string(bad)), std::string::npos) << what;
            EXPECT_NE(what.find("position 2"), std::string::npos) << what;
        }
    }
    tok.add_special("sep");
    EXPECT_EQ(tok.decode({259}), "<|sep|>");
    EXPECT_THROW(tok.decode({260}), Error);
}

// ---------------------------------------------------------------- hsa data

class CliData : public ::testing::Test {
protected:
    // Runs `hsa <args>` with `input` on stdin (through a temp file).
    RunResult run(const std::vector<std::string>& args, const std::string& input = "") {
        const std::string n = std::to_string(calls_++);
        const std::string in = dir_ / ("stdin" + n);
        std::ofstream(in, std::ios::binary) << input;
        return test::run_hsa(args, dir_ / ("stdout" + n), dir_ / ("stderr" + n), "", in);
    }

    test::TempFolder dir_{"hsa_data_test"};
    int calls_ = 0;
};

TEST_F(CliData, EncodeUtf8) {
    // "hé€" = 68 | C3 A9 | E2 82 AC
    RunResult r = run({"data", "encode", "--tokenizer", "byte"}, "h\xC3\xA9\xE2\x82\xAC");
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(r.out, "[104,195,169,226,130,172]\n");
    RunResult empty = run({"data", "encode"}, "");
    ASSERT_EQ(empty.code, 0) << describe(empty);
    EXPECT_EQ(empty.out, "[]\n");
}

TEST_F(CliData, DecodeOfEncodeIsIdentity) {
    std::string text = "Hello, world!\n\tline two \xC3\xA9\xE2\x82\xAC";
    text += std::string("\0\x80\xFF end", 7);
    RunResult enc = run({"data", "encode", "--tokenizer", "byte"}, text);
    ASSERT_EQ(enc.code, 0) << describe(enc);
    RunResult dec = run({"data", "decode", "--tokenizer", "byte"}, enc.out);
    ASSERT_EQ(dec.code, 0) << describe(dec);
    EXPECT_EQ(dec.err, "");
    EXPECT_EQ(dec.out, text);
}

TEST_F(CliData, DecodeSpecials) {
    RunResult r = run({"data", "decode"}, "[256, 104, 105, 257, 258]");
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.out, "<|bos|>hi<|eos|><|pad|>");
}

TEST_F(CliData, Help) {
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"data", "--help"}, {"data", "-h"}, {"data", "encode", "--help"}, {"data", "decode", "-h"}}) {
        RunResult r = run(args);
        EXPECT_EQ(r.code, 0) << describe(r);
        EXPECT_EQ(r.err, "");
        for (const char* word : {"usage: hsa data", "encode", "decode", "--tokenizer"})
            EXPECT_NE(r.out.find(word), std::string::npos) << word << "\n" << r.out;
    }
    RunResult bare = run({"data"});
    EXPECT_EQ(bare.code, 2) << describe(bare);
    EXPECT_NE(bare.out.find("usage: hsa data"), std::string::npos) << describe(bare);
    RunResult main_help = run({"--help"});
    EXPECT_NE(main_help.out.find("  data "), std::string::npos) << main_help.out;
}

TEST_F(CliData, BadInputIsOneLineExitTwo) {
    using test::expect_error_line;
    expect_error_line(run({"data", "decode"}, "[1, 2"), 2, {"data decode", "stdin"});
    expect_error_line(run({"data", "decode"}, "not json"), 2, {"data decode"});
    expect_error_line(run({"data", "decode"}, ""), 2, {"data decode"});
    expect_error_line(run({"data", "decode"}, "{\"ids\": [1]}"), 2, {"expected a list"});
    expect_error_line(run({"data", "decode"}, "[1, 2.5]"), 2, {"element 1", "2.5", "integer"});
    expect_error_line(run({"data", "decode"}, "[1, \"a\"]"), 2, {"element 1", "integer"});
    expect_error_line(run({"data", "decode"}, "[104, 259]"), 2, {"element 1", "259", "[0, 259)"});
    expect_error_line(run({"data", "decode"}, "[-1]"), 2, {"element 0", "-1"});
    expect_error_line(run({"data", "decode"}, "[1e300]"), 2, {"element 0"});
    // A path is a tokenizer.json (tests/test_bpe_tokenizer.cpp); a missing one is one line.
    const std::string missing = dir_ / "missing/tokenizer.json";
    expect_error_line(run({"data", "encode", "--tokenizer", missing}, "hi"), 2, {"tokenizer: " + missing + " does not exist"});
    expect_error_line(run({"data", "decode", "--tokenizer", "gpt2.json"}, "[1]"), 2, {"gpt2.json does not exist"});
    expect_error_line(run({"data", "encode", "--tokenizer"}), 2, {"--tokenizer"});
    expect_error_line(run({"data", "encode", "--bogus"}), 2, {"--bogus"});
    expect_error_line(run({"data", "frob"}), 2, {"frob"});
}

}  // namespace
}  // namespace hsa
