// Tests of the HDF5 token shards (trainers/token_shards.h): writer and reader round trips in
// both storage types, rollover, the reader's one-line errors on bad files, `tokenize_files`'
// document splitting and streaming, the inspect summary, and `hsa data tokenize|inspect`
// through the real binary (tests/cli_runner.h). Random inputs are fresh each run
// (HSA_TEST_SEED replays one; tests/op_test_harness.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/hdf5_io.h"
#include "core/model/config.h"
#include "core/rng.h"
#include "tests/cli_runner.h"
#include "tests/file_test_util.h"
#include "tests/op_test_harness.h"
#include "trainers/token_shards.h"
#include "trainers/tokenizer.h"

namespace hsa {
namespace {

namespace fs = std::filesystem;
using test::describe;
using test::RunResult;

using test::expect_one_line_error;

// A folder per test for this file's shards.
struct TempFolder : test::TempFolder {
    TempFolder() : test::TempFolder("hsa_shards") {}
};

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<int32_t> random_tokens(Rng& rng, int64_t n, int64_t vocab) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& v : t) v = static_cast<int32_t>(rng.next_int(0, vocab));
    return t;
}

ShardFormat format_with_vocab(int64_t vocab) {
    ShardFormat f;
    f.tokenizer = "test";
    f.vocab_size = vocab;
    f.bos = -1;
    f.eos = static_cast<int32_t>(vocab - 1);
    return f;
}

// Appends in random-sized pieces, so chunk and shard boundaries fall anywhere.
void append_in_pieces(ShardWriter& writer, const std::vector<int32_t>& tokens, Rng& rng, const std::vector<uint8_t>* mask = nullptr) {
    size_t at = 0;
    while (at < tokens.size()) {
        const size_t n = std::min(tokens.size() - at, static_cast<size_t>(rng.next_int(1, 5000)));
        writer.append(tokens.data() + at, static_cast<int64_t>(n), mask ? mask->data() + at : nullptr);
        at += n;
    }
}

std::vector<int32_t> read_all(const std::vector<std::string>& files) {
    std::vector<int32_t> all;
    for (const auto& f : files) {
        ShardReader r(f);
        const auto part = r.read(0, r.size());
        all.insert(all.end(), part.begin(), part.end());
    }
    return all;
}

// ---------------------------------------------------------------- writer and reader

void check_round_trip(int64_t vocab, const char* dtype) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const auto tokens = random_tokens(rng, rng.next_int(1, 300000), vocab);
    ShardWriterOptions o;
    o.prefix = dir / "corpus";
    o.format = format_with_vocab(vocab);
    o.format.bos = 7;
    ShardWriter writer(o);
    append_in_pieces(writer, tokens, rng);
    EXPECT_EQ(writer.tokens_written(), static_cast<int64_t>(tokens.size()));
    const auto files = writer.finish();
    ASSERT_EQ(files, std::vector<std::string>{dir / "corpus-00000.h5"});
    EXPECT_EQ(dir.files(), std::vector<std::string>{"corpus-00000.h5"});  // no temporary left

    ShardReader r(files[0], vocab);
    EXPECT_EQ(r.size(), static_cast<int64_t>(tokens.size()));
    EXPECT_EQ(r.dtype(), dtype);
    EXPECT_EQ(r.format().vocab_size, vocab);
    EXPECT_EQ(r.format().tokenizer, "test");
    EXPECT_EQ(r.format().bos, 7);
    EXPECT_EQ(r.format().eos, vocab - 1);
    EXPECT_FALSE(r.has_loss_mask());
    EXPECT_EQ(r.read(0, r.size()), tokens);
    for (int trial = 0; trial < 50; ++trial) {
        const int64_t start = rng.next_int(0, r.size());
        const int64_t count = rng.next_int(0, r.size() - start + 1);
        const auto part = r.read(start, count);
        ASSERT_EQ(part, std::vector<int32_t>(tokens.begin() + start, tokens.begin() + start + count)) << start << "+" << count;
    }
    // The plain HDF5 layer (and so h5py) sees the same file.
    Hdf5File plain(files[0]);
    EXPECT_EQ(plain.dataset_type("tokens"), dtype);
    EXPECT_EQ(plain.read_int_attribute("/", "vocab_size"), vocab);
    EXPECT_EQ(plain.read_string_attribute("/", "tokenizer"), "test");
}

TEST(ShardFiles, RoundTripU16) { check_round_trip(65536, "u16"); }
TEST(ShardFiles, RoundTripU16SmallVocab) { check_round_trip(259, "u16"); }
TEST(ShardFiles, RoundTripU32) { check_round_trip(100000, "u32"); }

TEST(ShardFiles, RollsOverEveryNTokens) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const int64_t per_shard = rng.next_int(100, 2000);
    const int64_t full = rng.next_int(2, 5);
    const int64_t rest = rng.next_int(0, per_shard);
    const auto tokens = random_tokens(rng, per_shard * full + rest, 300);
    ShardWriterOptions o;
    o.prefix = dir / "roll";
    o.format = format_with_vocab(300);
    o.shard_tokens = per_shard;
    ShardWriter writer(o);
    append_in_pieces(writer, tokens, rng);
    const auto files = writer.finish();
    ASSERT_EQ(static_cast<int64_t>(files.size()), full + (rest > 0 ? 1 : 0));
    for (size_t i = 0; i < files.size(); ++i) {
        EXPECT_EQ(files[i], shard_path(dir / "roll", static_cast<int64_t>(i)));
        EXPECT_EQ(ShardReader(files[i]).size(), static_cast<int64_t>(i) < full ? per_shard : rest);
    }
    EXPECT_EQ(shard_path("x/roll", 12), "x/roll-00012.h5");
    EXPECT_EQ(read_all(files), tokens);
    EXPECT_EQ(dir.files().size(), files.size());  // exactly the shards: no temporaries, no empty shard
}

TEST(ShardFiles, LossMaskRoundTrip) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const auto tokens = random_tokens(rng, rng.next_int(1000, 20000), 1000);
    std::vector<uint8_t> mask(tokens.size());
    for (auto& m : mask) m = static_cast<uint8_t>(rng.next_int(0, 2));
    ShardWriterOptions o;
    o.prefix = dir / "masked";
    o.format = format_with_vocab(1000);
    o.loss_mask = true;
    ShardWriter writer(o);
    append_in_pieces(writer, tokens, rng, &mask);
    const auto files = writer.finish();
    ShardReader r(files.at(0));
    ASSERT_TRUE(r.has_loss_mask());
    std::vector<uint8_t> back(tokens.size());
    r.read_loss_mask(0, r.size(), back.data());
    EXPECT_EQ(back, mask);
    const int64_t start = rng.next_int(0, r.size() - 10);
    std::vector<uint8_t> part(10);
    r.read_loss_mask(start, 10, part.data());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), mask.begin() + start));
    // A writer that stores masks needs one per append, and the other way round.
    expect_one_line_error([&] { ShardWriter(o).append(tokens.data(), 1); }, {"loss_mask"});
}

TEST(ShardFiles, WriterRejectsIdsOutsideTheVocabulary) {
    TempFolder dir;
    ShardWriterOptions o;
    o.prefix = dir / "bad";
    o.format = format_with_vocab(300);
    ShardWriter writer(o);
    const std::vector<int32_t> ok = {1, 2, 3}, too_big = {4, 300}, negative = {-1};
    writer.append(ok);
    expect_one_line_error([&] { writer.append(too_big); }, {"300", "[0, 300)", "element 4"});
    expect_one_line_error([&] { writer.append(negative); }, {"-1"});
    EXPECT_EQ(writer.tokens_written(), 3);
}

TEST(ShardFiles, UnfinishedShardLeavesNoFileBehind) {
    TempFolder dir;
    {
        ShardWriterOptions o;
        o.prefix = dir / "crash";
        o.format = format_with_vocab(300);
        o.shard_tokens = 10;
        ShardWriter writer(o);
        writer.append(std::vector<int32_t>(25, 5));  // two complete shards and half a third
        EXPECT_EQ(writer.completed_shards().size(), 2u);
        EXPECT_TRUE(fs::exists(dir / "crash-00002.h5.tmp"));
    }  // destroyed without finish(): as if the process died
    EXPECT_EQ(dir.files(), (std::vector<std::string>{"crash-00000.h5", "crash-00001.h5"}));
}

// ---------------------------------------------------------------- reader errors

TEST(ShardReaderErrors, EachBadFileIsOneLineNamingIt) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    expect_one_line_error([&] { ShardReader(dir / "missing.h5"); }, {"missing.h5", "does not exist"});
    expect_one_line_error([&] { ShardReader(dir.operator/("")); }, {"folder"});

    std::string noise(static_cast<size_t>(rng.next_int(1, 5000)), '\0');
    for (char& c : noise) c = static_cast<char>(rng.next_int(0, 256));
    write_file(dir / "noise.h5", noise);
    expect_one_line_error([&] { ShardReader(dir / "noise.h5"); }, {"noise.h5", "not an HDF5 file"});

    // A real HDF5 file whose header is intact but whose body is cut off.
    {
        ShardWriterOptions o;
        o.prefix = dir / "whole";
        o.format = format_with_vocab(300);
        ShardWriter w(o);
        w.append(random_tokens(rng, 50000, 300));
        w.finish();
        const std::string bytes = test::read_file_bytes(dir / "whole-00000.h5");
        write_file(dir / "cut.h5", bytes.substr(0, bytes.size() / 3));
    }
    expect_one_line_error([&] { ShardReader(dir / "cut.h5").read(0, 50000); }, {"cut.h5"});

    {
        Hdf5File f(dir / "no_tokens.h5", Hdf5Mode::Create);
        f.write_tensor("ids", Tensor::from_vector_i32({1, 2, 3}, {3}), Hdf5Type::U16);
        f.write_int_attribute("/", "vocab_size", 300);
    }
    expect_one_line_error([&] { ShardReader(dir / "no_tokens.h5"); }, {"no_tokens.h5", "no dataset /tokens", "ids"});

    for (auto [type, name] : {std::pair{Hdf5Type::F32, "f32"}, std::pair{Hdf5Type::I32, "i32"}, std::pair{Hdf5Type::U8, "u8"}}) {
        const std::string path = dir / (std::string("dtype_") + name + ".h5");
        {
            Hdf5File f(path, Hdf5Mode::Create);
            f.write_tensor("tokens", Tensor::from_vector_i32({1, 2, 3}, {3}), type);
            f.write_int_attribute("/", "vocab_size", 300);
        }
        expect_one_line_error([&] { ShardReader opened(path); }, {path, name, "u16 or u32"});
    }
    {
        Hdf5File f(dir / "two_d.h5", Hdf5Mode::Create);
        f.write_tensor("tokens", Tensor::from_vector_i32({1, 2, 3, 4}, {2, 2}), Hdf5Type::U16);
        f.write_int_attribute("/", "vocab_size", 300);
    }
    expect_one_line_error([&] { ShardReader(dir / "two_d.h5"); }, {"two_d.h5", "2 dimensions"});
    {
        Hdf5File f(dir / "no_vocab.h5", Hdf5Mode::Create);
        f.write_tensor("tokens", Tensor::from_vector_i32({1, 2, 3}, {3}), Hdf5Type::U16);
    }
    expect_one_line_error([&] { ShardReader(dir / "no_vocab.h5"); }, {"no_vocab.h5", "vocab_size"});

    // vocab_size larger than the model's vocabulary.
    ShardWriterOptions o;
    o.prefix = dir / "big";
    o.format = format_with_vocab(50304);
    ShardWriter w(o);
    w.append(std::vector<int32_t>{1, 2, 50000});
    const auto big = w.finish().at(0);
    EXPECT_EQ(ShardReader(big, 50304).size(), 3);
    expect_one_line_error([&] { ShardReader(big, 259); }, {big, "50304", "259"});
    expect_one_line_error([&] { ShardReader(big).read(2, 5); }, {big, "[2, 7)", "3 tokens"});
}

TEST(ShardReaderErrors, StoredIdOutsideItsVocabularyIsReportedWithItsPosition) {
    TempFolder dir;
    {
        Hdf5File f(dir / "garbage.h5", Hdf5Mode::Create);
        f.write_tensor("tokens", Tensor::from_vector_i32({1, 2, 999, 3}, {4}), Hdf5Type::U16);
        f.write_int_attribute("/", "vocab_size", 300);
    }
    ShardReader r(dir / "garbage.h5");
    EXPECT_EQ(r.read(0, 2), (std::vector<int32_t>{1, 2}));
    expect_one_line_error([&] { r.read(1, 3); }, {"garbage.h5", "999", "position 2"});
}

TEST(ShardReaderErrors, AttributesOnTheDatasetAreAcceptedToo) {
    // h5py users often put the attributes on the dataset: f["tokens"].attrs["vocab_size"].
    TempFolder dir;
    {
        Hdf5File f(dir / "dataset_attrs.h5", Hdf5Mode::Create);
        f.write_tensor("tokens", Tensor::from_vector_i32({5, 6, 7}, {3}), Hdf5Type::U32);
        f.write_int_attribute("tokens", "vocab_size", 100);
        f.write_string_attribute("tokens", "tokenizer", "mine");
        f.write_int_attribute("tokens", "eos", 7);
    }
    ShardReader r(dir / "dataset_attrs.h5");
    EXPECT_EQ(r.format().vocab_size, 100);
    EXPECT_EQ(r.format().tokenizer, "mine");
    EXPECT_EQ(r.format().eos, 7);
    EXPECT_EQ(r.dtype(), "u32");
    EXPECT_EQ(r.read(0, 3), (std::vector<int32_t>{5, 6, 7}));
}

TEST(ShardReaderErrors, GlobsExpandSortedAndMissingOnesAreErrors) {
    TempFolder dir;
    for (const char* name : {"b-00001.h5", "b-00000.h5", "a.h5", "notes.txt"}) write_file(dir / name, "x");
    EXPECT_EQ(expand_shard_patterns({dir / "b-*.h5", dir / "a.h5", dir / "b-00000.h5"}, "data.shards"),
              (std::vector<std::string>{dir / "b-00000.h5", dir / "b-00001.h5", dir / "a.h5"}));
    expect_one_line_error([&] { expand_shard_patterns({dir / "c-*.h5"}, "data.shards"); }, {"data.shards", "c-*.h5"});
    expect_one_line_error([&] { expand_shard_patterns({dir / "gone.h5"}, "data.held_out_shards"); }, {"gone.h5"});
}

// ---------------------------------------------------------------- tokenize

// The documents of `text` by the blank-line rule, computed the obvious way (whole text).
std::vector<std::string> reference_documents(const std::string& text) {
    std::vector<std::string> docs, lines;
    size_t at = 0;
    while (at < text.size()) {
        size_t nl = text.find('\n', at);
        if (nl == std::string::npos) nl = text.size();
        std::string line = text.substr(at, nl - at);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        lines.push_back(line);
        at = nl + 1;
    }
    std::string doc;
    bool open = false;
    for (const auto& line : lines) {
        if (line.find_first_not_of(" \t\r\f\v") == std::string::npos) {
            if (open) docs.push_back(doc);
            doc.clear();
            open = false;
        } else {
            doc += (open ? "\n" : "") + line;
            open = true;
        }
    }
    if (open) docs.push_back(doc);
    return docs;
}

std::vector<int32_t> expected_stream(const std::vector<std::string>& docs) {
    ByteTokenizer tok;
    std::vector<int32_t> ids;
    for (const auto& d : docs) {
        const auto e = tok.encode(d);
        ids.insert(ids.end(), e.begin(), e.end());
        ids.push_back(ByteTokenizer::kEos);
    }
    return ids;
}

TEST(ShardTokenize, BlankLinesSplitDocumentsWithEosBetween) {
    TempFolder dir;
    write_file(dir / "a.txt", "Hello world\nsecond line\n\n\n  \t \nNext doc\r\nline2\r\n");
    write_file(dir / "b.txt", "third\n\nfourth");
    ByteTokenizer tok;
    TokenizeOptions o;
    o.inputs = {dir / "a.txt", dir / "b.txt"};
    o.out_prefix = dir / "docs";
    const auto result = tokenize_files(tok, o);
    EXPECT_EQ(result.totals.documents, 4);
    EXPECT_EQ(result.shards, std::vector<std::string>{dir / "docs-00000.h5"});
    const auto ids = read_all(result.shards);
    EXPECT_EQ(ids, expected_stream({"Hello world\nsecond line", "Next doc\nline2", "third", "fourth"}));
    EXPECT_EQ(tok.decode(ids), "Hello world\nsecond line<|eos|>Next doc\nline2<|eos|>third<|eos|>fourth<|eos|>");
    EXPECT_EQ(result.totals.tokens, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(result.totals.bytes_read, result.totals.total_bytes);
    const ShardReader r(result.shards[0]);
    EXPECT_EQ(r.format().tokenizer, "byte");
    EXPECT_EQ(r.format().vocab_size, 259);
    EXPECT_EQ(r.format().eos, 257);
    EXPECT_EQ(r.format().bos, 256);
}

TEST(ShardTokenize, RandomTextAnyReadSizeGivesTheSameDocuments) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const char* pieces[] = {"word", " ", "  ", "\t", "\n", "\n", "\r\n", "\n\n", " \n \n", "é", "x", "\r", "\n\r\n"};
    std::vector<std::string> inputs;
    std::vector<std::string> docs;
    for (int f = 0; f < 3; ++f) {
        std::string text;
        const int64_t n = rng.next_int(0, 400);
        for (int64_t i = 0; i < n; ++i) text += pieces[rng.next_int(0, 13)];
        inputs.push_back(dir / ("in" + std::to_string(f) + ".txt"));
        write_file(inputs.back(), text);
        for (auto& d : reference_documents(text)) docs.push_back(d);
    }
    ByteTokenizer tok;
    for (int64_t read_bytes : {int64_t(1), int64_t(2), rng.next_int(3, 50), int64_t(1) << 20}) {
        TokenizeOptions o;
        o.inputs = inputs;
        o.out_prefix = dir / "rand";
        o.read_bytes = read_bytes;
        o.overwrite = true;
        if (docs.empty()) {
            expect_one_line_error([&] { tokenize_files(tok, o); }, {"no text"});
            continue;
        }
        const auto result = tokenize_files(tok, o);
        EXPECT_EQ(read_all(result.shards), expected_stream(docs)) << "read size " << read_bytes;
        EXPECT_EQ(result.totals.documents, static_cast<int64_t>(docs.size()));
    }
}

TEST(ShardTokenize, DocPerFileKeepsEveryByte) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    std::vector<std::string> inputs, docs;
    for (int f = 0; f < 4; ++f) {
        std::string bytes(static_cast<size_t>(f == 2 ? 0 : rng.next_int(1, 3000)), '\0');
        for (char& c : bytes) c = static_cast<char>(rng.next_int(0, 256));
        inputs.push_back(dir / ("bin" + std::to_string(f)));
        write_file(inputs.back(), bytes);
        if (!bytes.empty()) docs.push_back(bytes);  // an empty file is no document
    }
    ByteTokenizer tok;
    TokenizeOptions o;
    o.inputs = inputs;
    o.out_prefix = dir / "files";
    o.split = DocumentSplit::PerFile;
    o.read_bytes = rng.next_int(1, 700);
    const auto result = tokenize_files(tok, o);
    EXPECT_EQ(result.totals.documents, 3);
    EXPECT_EQ(read_all(result.shards), expected_stream(docs));
}

TEST(ShardTokenize, HugeLinesAndDocumentsStreamInPieces) {
    // Lines and documents of several MB: encoded in pieces, yet token for token the same.
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    std::string long_line(static_cast<size_t>(rng.next_int(2500000, 3000000)), 'a');
    for (char& c : long_line) c = static_cast<char>('a' + rng.next_int(0, 26)) ;
    long_line[1000] = ' ';
    std::string many_lines;
    while (many_lines.size() < 2500000) many_lines += std::string(static_cast<size_t>(rng.next_int(1, 80)), 'b') + "\n";
    const std::string text = "first\n\n" + long_line + "\r\n" + many_lines + "\n\nlast\n";
    write_file(dir / "big.txt", text);
    ByteTokenizer tok;
    TokenizeOptions o;
    o.inputs = {dir / "big.txt"};
    o.out_prefix = dir / "big";
    o.read_bytes = 1 << 16;
    o.shard_tokens = 1000000;
    const auto result = tokenize_files(tok, o);
    EXPECT_EQ(result.shards.size(), static_cast<size_t>((text.size() + 999999) / 1000000));
    EXPECT_EQ(read_all(result.shards), expected_stream(reference_documents(text)));
}

TEST(ShardTokenize, ExistingShardsNeedOverwriteWhichRemovesStaleOnes) {
    TempFolder dir;
    write_file(dir / "t.txt", std::string(100, 'z'));
    ByteTokenizer tok;
    TokenizeOptions o;
    o.inputs = {dir / "t.txt"};
    o.out_prefix = dir / "c";
    o.shard_tokens = 30;
    EXPECT_EQ(tokenize_files(tok, o).shards.size(), 4u);  // 101 tokens
    expect_one_line_error([&] { tokenize_files(tok, o); }, {"c-00000.h5", "already exists", "--overwrite"});
    o.overwrite = true;
    o.shard_tokens = 1000;
    EXPECT_EQ(tokenize_files(tok, o).shards.size(), 1u);
    EXPECT_EQ(dir.files(), (std::vector<std::string>{"c-00000.h5", "t.txt"}));  // the 3 stale shards are gone
}

TEST(ShardTokenize, BadInputsAreOneLineErrors) {
    TempFolder dir;
    ByteTokenizer tok;
    write_file(dir / "empty.txt", "\n\n  \n");
    TokenizeOptions o;
    o.out_prefix = dir / "x";
    o.inputs = {dir / "nope.txt"};
    expect_one_line_error([&] { tokenize_files(tok, o); }, {"nope.txt", "does not exist"});
    o.inputs = {dir / "empty.txt"};
    expect_one_line_error([&] { tokenize_files(tok, o); }, {"no text"});
    EXPECT_EQ(dir.files(), std::vector<std::string>{"empty.txt"});  // nothing written
    o.out_prefix = dir / "no/such/folder/x";
    expect_one_line_error([&] { tokenize_files(tok, o); }, {"no/such/folder", "does not exist"});
    o.out_prefix = dir / "x";
    o.inputs = {dir.operator/("")};
    expect_one_line_error([&] { tokenize_files(tok, o); }, {"folder"});
}

// ---------------------------------------------------------------- inspect

TEST(ShardInspect, SummaryCountsTokensDocumentsAndMask) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    ShardWriterOptions o;
    o.prefix = dir / "s";
    o.format = format_with_vocab(50);  // eos = 49
    o.loss_mask = true;
    std::vector<int32_t> tokens = random_tokens(rng, rng.next_int(2000, 5000), 49);  // no EOS yet
    const int64_t documents = rng.next_int(1, 20);
    for (int64_t d = 0; d < documents; ++d) tokens[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(tokens.size()) - 1))] = 49;
    tokens.back() = 7;  // the shard ends mid-document
    std::vector<uint8_t> mask(tokens.size());
    for (auto& m : mask) m = static_cast<uint8_t>(rng.next_int(0, 2));
    ShardWriter w(o);
    w.append(tokens.data(), static_cast<int64_t>(tokens.size()), mask.data());
    const auto path = w.finish().at(0);

    const ShardSummary s = summarize_shard(path, 5, 100);
    std::vector<int64_t> counts(50, 0);
    for (int32_t t : tokens) ++counts[static_cast<size_t>(t)];
    EXPECT_EQ(s.tokens, static_cast<int64_t>(tokens.size()));
    EXPECT_EQ(s.dtype, "u16");
    EXPECT_EQ(s.documents, counts[49] + 1);
    EXPECT_TRUE(s.ends_mid_document);
    EXPECT_TRUE(s.has_loss_mask);
    EXPECT_EQ(s.loss_mask_ones, std::count(mask.begin(), mask.end(), 1));
    EXPECT_EQ(s.distinct_tokens, std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; }));
    ASSERT_EQ(s.top_tokens.size(), 5u);
    std::vector<int64_t> sorted = counts;
    std::sort(sorted.rbegin(), sorted.rend());
    for (size_t i = 0; i < 5; ++i) {
        EXPECT_EQ(s.top_tokens[i].second, sorted[i]);
        EXPECT_EQ(counts[static_cast<size_t>(s.top_tokens[i].first)], s.top_tokens[i].second);
    }
    EXPECT_EQ(s.head, std::vector<int32_t>(tokens.begin(), tokens.begin() + 100));
}

// ---------------------------------------------------------------- the CLI

TEST(ShardCli, TokenizeThenInspectThroughTheBinary) {
    TempFolder dir;
    std::string text;
    for (int d = 0; d < 300; ++d) text += "Document number " + std::to_string(d) + " says hello.\nA second line.\n\n";
    write_file(dir / "corpus.txt", text);
    const std::string out = dir / "out.txt", err = dir / "err.txt";
    RunResult r = test::run_hsa({"data", "tokenize", "--out", dir / "c", "--shard-tokens", "5K", dir / "corpus.txt"}, out, err);
    ASSERT_EQ(r.code, 0) << describe(r);
    const auto docs = reference_documents(text);
    const auto expected = expected_stream(docs);
    EXPECT_NE(r.out.find(std::to_string(expected.size()) + " tokens, 300 documents"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("c-00000.h5"), std::string::npos) << r.out;
    const size_t shards = (expected.size() + 5119) / 5120;  // 5K = 5120
    std::vector<std::string> files;
    for (size_t i = 0; i < shards; ++i) files.push_back(shard_path(dir / "c", static_cast<int64_t>(i)));
    EXPECT_EQ(read_all(files), expected);

    r = test::run_hsa({"data", "inspect", files[0]}, out, err);
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_NE(r.out.find("tokens      5120 (u16)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("tokenizer   byte (vocab_size 259, bos 256, eos 257)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("continues in the next shard"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("loss mask   none"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\" \""), std::string::npos) << r.out;  // the space is among the top tokens
    EXPECT_NE(r.out.find("Document number 0 says hello.\nA second line.<|eos|>Document number 1"), std::string::npos) << r.out;
    EXPECT_TRUE(r.err.empty()) << r.err;

    // One-line errors and exit code 2.
    write_file(dir / "noise.h5", "definitely not HDF5");
    test::expect_error_line(test::run_hsa({"data", "inspect", dir / "noise.h5"}, out, err), 2, {"noise.h5", "not an HDF5 file"});
    test::expect_error_line(test::run_hsa({"data", "inspect", dir / "none.h5"}, out, err), 2, {"none.h5", "does not exist"});
    test::expect_error_line(test::run_hsa({"data", "tokenize", dir / "corpus.txt"}, out, err), 2, {"--out"});
    test::expect_error_line(test::run_hsa({"data", "tokenize", "--out", dir / "c", dir / "corpus.txt"}, out, err), 2,
                            {"already exists", "--overwrite"});
    test::expect_error_line(test::run_hsa({"data", "tokenize", "--out", dir / "d", "--shard-tokens", "many", dir / "corpus.txt"}, out, err),
                            2, {"--shard-tokens", "many"});
    test::expect_error_line(test::run_hsa({"data", "tokenize", "--bogus"}, out, err), 2, {"--bogus"});
    r = test::run_hsa({"data", "tokenize", "--help"}, out, err);
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("--shard-tokens"), std::string::npos);
}

}  // namespace
}  // namespace hsa
