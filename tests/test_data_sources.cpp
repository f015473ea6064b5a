// Tests of the training data sources (trainers/data_sources.h): text windows from shards,
// packed task examples, the recall task adapter, the mixture, and the "data" config with
// make_batch_source. For every kind: deterministic batches, targets = next tokens, and
// state()/restore() continuing bit for bit. Random sizes and positions are fresh each run
// (HSA_TEST_SEED replays one; tests/op_test_harness.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "core/hdf5_io.h"
#include "core/model/config.h"
#include "core/rng.h"
#include "tests/file_test_util.h"
#include "tests/op_test_harness.h"
#include "trainers/data_sources.h"
#include "trainers/recall_task.h"
#include "trainers/token_shards.h"

namespace hsa {
namespace {

namespace fs = std::filesystem;

using test::expect_one_line_error;

// A folder per test for this file's shards.
struct TempFolder : test::TempFolder {
    TempFolder() : test::TempFolder("hsa_sources") {}
};

// Shards whose token at stream position p is p: a row's tokens say exactly where it was read.
constexpr int64_t kPositionVocab = 1 << 22;

std::vector<std::string> write_position_shards(const TempFolder& dir, const std::string& name, const std::vector<int64_t>& sizes,
                                               int64_t first = 0, const std::vector<uint8_t>* mask = nullptr) {
    std::vector<std::string> files;
    int64_t position = first;
    for (size_t i = 0; i < sizes.size(); ++i) {
        ShardWriterOptions o;
        o.prefix = dir / (name + std::to_string(i));
        o.format.tokenizer = "positions";
        o.format.vocab_size = kPositionVocab;
        o.format.eos = kPositionVocab - 1;
        o.loss_mask = mask != nullptr;
        ShardWriter w(o);
        std::vector<int32_t> tokens(static_cast<size_t>(sizes[i]));
        for (auto& t : tokens) t = static_cast<int32_t>(position++);
        if (!tokens.empty()) w.append(tokens.data(), sizes[i], mask ? mask->data() + (position - first - sizes[i]) : nullptr);
        auto written = w.finish();
        if (written.empty()) {  // an empty shard: written by hand, the writer makes none
            Hdf5File f(o.prefix + "-00000.h5", Hdf5Mode::Create);
            f.write_tensor("tokens", Tensor::empty({0}, DType::I32), Hdf5Type::U32);
            f.write_int_attribute("/", "vocab_size", kPositionVocab);
            f.write_string_attribute("/", "tokenizer", "positions");
            written.push_back(o.prefix + "-00000.h5");
        }
        files.push_back(written.at(0));
    }
    return files;
}

std::vector<int32_t> ints(const Tensor& t) {
    const int32_t* p = t.data<int32_t>();
    return std::vector<int32_t>(p, p + t.numel());
}
std::vector<float> floats(const Tensor& t) {
    const float* p = t.data<float>();
    return std::vector<float>(p, p + t.numel());
}

void expect_same_batch(const TrainBatch& a, const TrainBatch& b, const std::string& where) {
    EXPECT_EQ(a.tokens.shape(), b.tokens.shape()) << where;
    EXPECT_EQ(ints(a.tokens), ints(b.tokens)) << where;
    EXPECT_EQ(ints(a.targets), ints(b.targets)) << where;
    EXPECT_EQ(floats(a.mask), floats(b.mask)) << where;  // exact: masks are 0 or 1
    EXPECT_EQ(a.answers, b.answers) << where;
}

// Takes `count` batches, saves the state (through its JSON text, as a checkpoint would),
// takes `more` batches; a second source built the same way and restored must give the same.
template <class Make>
void check_state_restore(Make make, int64_t count, int64_t more) {
    std::unique_ptr<BatchSource> first = make();
    for (int64_t i = 0; i < count; ++i) first->next();
    const std::string saved = first->state().dump();
    std::vector<TrainBatch> expected;
    for (int64_t i = 0; i < more; ++i) expected.push_back(first->next());
    std::unique_ptr<BatchSource> second = make();
    second->next();  // its own position must not matter
    second->restore(Json::parse(saved));
    for (int64_t i = 0; i < more; ++i) expect_same_batch(second->next(), expected[static_cast<size_t>(i)], "batch " + std::to_string(i) + " after restore");
    EXPECT_EQ(second->state().dump(), first->state().dump());
}

// ---------------------------------------------------------------- text from shards

ShardSourceOptions text_options(const std::vector<std::string>& files, int64_t batch, int64_t seq_len, uint64_t seed, bool shuffle) {
    ShardSourceOptions o;
    o.files = files;
    o.batch = batch;
    o.seq_len = seq_len;
    o.vocab_size = kPositionVocab;
    o.seed = seed;
    o.shuffle = shuffle;
    return o;
}

TEST(ShardSource, WindowsInFileOrderAreConsecutiveAndTargetsAreNextTokens) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    // Shards of random sizes, one empty: windows cross file boundaries.
    const std::vector<int64_t> sizes = {rng.next_int(1, 300), 0, rng.next_int(1, 300), rng.next_int(200, 400)};
    const auto files = write_position_shards(dir, "p", sizes);
    const int64_t total = sizes[0] + sizes[2] + sizes[3];
    const int64_t B = rng.next_int(1, 4), T = rng.next_int(2, 40);
    ShardBatchSource source(text_options(files, B, T, 1, false));
    const int64_t windows = (total - 1) / T;
    EXPECT_EQ(source.windows_in_epoch(0), windows);
    int64_t row = 0;
    for (int64_t step = 0; step < 2 * windows / B + 2; ++step) {
        const TrainBatch b = source.next();
        ASSERT_EQ(b.tokens.shape(), (Shape{B, T}));
        EXPECT_EQ(b.answers, 0);
        const auto tokens = ints(b.tokens), targets = ints(b.targets);
        const auto mask = floats(b.mask);
        for (int64_t r = 0; r < B; ++r, ++row) {
            const int64_t start = (row % windows) * T;  // epochs repeat the same grid without shuffle
            for (int64_t t = 0; t < T; ++t) {
                ASSERT_EQ(tokens[r * T + t], start + t) << "row " << row;
                ASSERT_EQ(targets[r * T + t], start + t + 1) << "row " << row;
                ASSERT_EQ(mask[r * T + t], 1.0f);
            }
        }
    }
    EXPECT_GE(source.epoch(), 1);
}

TEST(ShardSource, ShuffledEpochsVisitEveryWindowOnce) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const std::vector<int64_t> sizes = {rng.next_int(100, 2000), rng.next_int(100, 2000)};
    const auto files = write_position_shards(dir, "s", sizes);
    const int64_t T = rng.next_int(2, 30);
    ShardBatchSource source(text_options(files, 1, T, rng.next_u64() >> 12, true));
    std::vector<std::vector<int64_t>> orders;
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
        const int64_t n = source.windows_in_epoch(epoch);
        ASSERT_GE(n, 1);
        std::vector<int64_t> starts;
        for (int64_t k = 0; k < n; ++k) {
            const TrainBatch b = source.next();
            const auto tokens = ints(b.tokens), targets = ints(b.targets);
            for (int64_t t = 0; t < T; ++t) ASSERT_EQ(targets[t], tokens[t] + 1);
            starts.push_back(tokens[0]);
            EXPECT_EQ(source.epoch(), epoch);
        }
        // A permutation of one grid: shift + k T for k in [0, n), the shift below T.
        std::vector<int64_t> sorted = starts;
        std::sort(sorted.begin(), sorted.end());
        const int64_t shift = sorted[0];
        EXPECT_LT(shift, T);
        for (int64_t k = 0; k < n; ++k) ASSERT_EQ(sorted[k], shift + k * T) << "epoch " << epoch;
        EXPECT_LE(shift + n * T + 1, sizes[0] + sizes[1]);  // every window lies inside the stream
        EXPECT_GT(shift + (n + 1) * T + 1, sizes[0] + sizes[1]);  // and no further window would fit
        orders.push_back(starts);
    }
    if (orders[0].size() >= 8) {
        EXPECT_NE(orders[0], orders[1]) << "epochs should be shuffled differently";
    }
    std::vector<int64_t> in_order = orders[0];
    std::sort(in_order.begin(), in_order.end());
    if (orders[0].size() >= 8) {
        EXPECT_NE(orders[0], in_order) << "an epoch should not be in file order";
    }
}

TEST(ShardSource, StateRestoreContinuesBitForBit) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const auto files = write_position_shards(dir, "r", {rng.next_int(50, 500), rng.next_int(50, 500)});
    const int64_t B = rng.next_int(1, 5), T = rng.next_int(2, 20);
    const uint64_t seed = rng.next_u64() >> 12;
    for (bool shuffle : {false, true}) {
        auto make = [&] { return std::make_unique<ShardBatchSource>(text_options(files, B, T, seed, shuffle)); };
        const int64_t per_epoch = make()->windows_in_epoch(0) / B;
        // Stop before, at and across epoch ends.
        for (int64_t count : {int64_t(0), rng.next_int(1, per_epoch + 2), per_epoch, per_epoch + 1})
            check_state_restore(make, count, rng.next_int(1, per_epoch + 3));
    }
    // The state says where the next window starts.
    ShardBatchSource s(text_options(files, 1, T, seed, false));
    s.next();
    const Json state = s.state();
    EXPECT_EQ(state.at("kind").as_string(), "text");
    EXPECT_EQ(state.at("window").as_number(), 1);
    EXPECT_EQ(state.at("epoch").as_number(), 0);
    const int64_t first_size = ShardReader(files[0]).size();
    EXPECT_EQ(state.at("shard").as_number(), T < first_size ? 0 : 1);
    EXPECT_EQ(state.at("offset").as_number(), T < first_size ? T : T - first_size);
}

TEST(ShardSource, HeldOutSplitNeverOverlapsTraining) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const int64_t total = rng.next_int(1000, 3000);
    const auto files = write_position_shards(dir, "h", {total / 3, total - total / 3});
    const int64_t T = rng.next_int(4, 20);
    const double fraction = 0.2;
    const int64_t split = total - std::llround(total * fraction);
    for (bool held_out : {false, true}) {
        ShardSourceOptions o = text_options(files, 4, T, 3, !held_out);
        o.held_out_fraction = fraction;
        o.held_out = held_out;
        ShardBatchSource source(o);
        EXPECT_EQ(source.region_tokens(), held_out ? total - split : split);
        for (int step = 0; step < 40; ++step) {
            const TrainBatch b = source.next();
            const auto tokens = ints(b.tokens), targets = ints(b.targets);
            for (int64_t r = 0; r < 4; ++r) {
                const int64_t first = tokens[r * T], last_target = targets[r * T + T - 1];
                if (held_out) EXPECT_GE(first, split);
                else EXPECT_LT(last_target, split);  // even the last target stays on its side
            }
        }
    }
    // Separate held-out files through the factory: the held-out source reads only those.
    const auto held_files = write_position_shards(dir, "ho", {300}, 1000000);
    DataConfig c;
    c.shards = files;
    c.held_out_shards = {dir / "ho*.h5"};
    c.weights = {1, 0, 0};
    auto held = make_batch_source(c, 2, T, 8, kPositionVocab, 5, true);
    for (int step = 0; step < 10; ++step)
        for (int32_t t : ints(held->next().tokens)) EXPECT_GE(t, 1000000);
    auto train = make_batch_source(c, 2, T, 8, kPositionVocab, 5, false);
    for (int step = 0; step < 10; ++step)
        for (int32_t t : ints(train->next().tokens)) EXPECT_LT(t, total);
}

TEST(ShardSource, LossMaskAlignsWithTargets) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const int64_t n = rng.next_int(200, 600);
    std::vector<uint8_t> mask(static_cast<size_t>(n));
    for (auto& m : mask) m = static_cast<uint8_t>(rng.next_int(0, 2));
    const auto files = write_position_shards(dir, "m", {n}, 0, &mask);
    const int64_t T = rng.next_int(2, 20);
    ShardBatchSource source(text_options(files, 3, T, 9, true));
    for (int step = 0; step < 20; ++step) {
        const TrainBatch b = source.next();
        const auto targets = ints(b.targets);
        const auto m = floats(b.mask);
        int64_t ones = 0;
        for (size_t i = 0; i < targets.size(); ++i) {
            ASSERT_EQ(m[i], mask[static_cast<size_t>(targets[i])] ? 1.0f : 0.0f) << "the target's own mask entry";
            ones += m[i] != 0;
        }
        EXPECT_EQ(b.answers, ones);
    }
}

TEST(ShardSource, BadShardsAndStatesAreOneLineErrors) {
    TempFolder dir;
    const auto files = write_position_shards(dir, "e", {100});
    ShardSourceOptions o = text_options(files, 1, 8, 1, true);
    o.vocab_size = 1000;  // the shards say 2^22
    expect_one_line_error([&] { ShardBatchSource s(o); }, {files[0], "vocab_size", "1000"});
    o = text_options(files, 1, 100, 1, true);  // a row needs 101 tokens
    expect_one_line_error([&] { ShardBatchSource s(o); }, {"has 100 tokens", "seq_len + 1 = 101"});
    o = text_options({dir / "missing.h5"}, 1, 8, 1, true);
    expect_one_line_error([&] { ShardBatchSource s(o); }, {"missing.h5", "does not exist"});
    {
        ShardWriterOptions w;
        w.prefix = dir / "other";
        w.format = ShardFormat{"byte", 259, 256, 257};
        ShardWriter writer(w);
        writer.append(std::vector<int32_t>(50, 65));
        writer.finish();
    }
    o = text_options({files[0], dir / "other-00000.h5"}, 1, 8, 1, true);
    expect_one_line_error([&] { ShardBatchSource s(o); }, {"other-00000.h5", "byte", "positions", "one tokenizer"});

    ShardBatchSource source(text_options(files, 1, 8, 1, true));
    Json state = source.state();
    state["seed"] = "2";
    expect_one_line_error([&] { source.restore(state); }, {"seed", "\"2\"", "\"1\""});
    expect_one_line_error([&] { source.restore(RecallBatchSource(RecallTaskConfig{}, 1, 128, 8, 1).state()); }, {"text", "recall"});
    state = source.state();
    state["window"] = -3;
    expect_one_line_error([&] { source.restore(state); }, {"window", "-3"});
    state = source.state();
    state["stream_tokens"] = 99;
    expect_one_line_error([&] { source.restore(state); }, {"stream_tokens", "99", "100"});
    expect_one_line_error([&] { source.restore(Json(3)); }, {"object"});
}

TEST(ShardSource, DataRanksReadDisjointWindows) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const auto files = write_position_shards(dir, "d", {rng.next_int(500, 3000)});
    const int64_t T = rng.next_int(2, 16), ranks = rng.next_int(2, 5);
    const uint64_t seed = rng.next_u64() >> 12;
    ShardBatchSource whole(text_options(files, 1, T, seed, true));
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
        std::set<int64_t> seen;
        int64_t per_rank = -1;
        for (int64_t r = 0; r < ranks; ++r) {
            ShardSourceOptions o = text_options(files, 1, T, seed, true);
            o.rank = {r, ranks};
            ShardBatchSource source(o);
            per_rank = source.windows_in_epoch(epoch);
            EXPECT_EQ(per_rank, whole.windows_in_epoch(epoch) / ranks);
            for (int64_t k = 0; k < per_rank; ++k) {
                const int64_t start = source.window_start(epoch, k);
                EXPECT_EQ(start, whole.window_start(epoch, k * ranks + r)) << "rank r takes places r, r + ranks, ...";
                EXPECT_TRUE(seen.insert(start).second) << "window " << start << " read by two ranks";
            }
        }
        EXPECT_EQ(static_cast<int64_t>(seen.size()), per_rank * ranks);
    }
    ShardSourceOptions o = text_options(files, 1, T, seed, true);
    o.rank = {1, ranks};
    ShardBatchSource rank1(o);
    expect_one_line_error([&] { rank1.restore(whole.state()); }, {"ranks"});
    o.rank = {ranks, ranks};
    expect_one_line_error([&] { ShardBatchSource bad(o); }, {"data rank", std::to_string(ranks)});
    o.rank = {0, 100000};
    expect_one_line_error([&] { ShardBatchSource bad(o); }, {"window", "100000 data-parallel ranks"});
}

// ---------------------------------------------------------------- recall

RecallTaskConfig recall_task() {
    RecallTaskConfig t;
    t.pairs = 2;
    t.rounds = 2;
    return t;
}

// Every answer is the value of its key's pair. With answers_in_queries false, value tokens
// appear as inputs only inside the pairs, so nothing but retrieval of the pair's chunk can
// bring a value to a query; by default each answer is also fed back after its query.
TEST(RecallTask, AnswersAreTheirKeysValuesAndFeedBackOnlyWhenAsked) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const uint64_t seed = rng.next_u64() >> 20;
    for (bool fed_back : {true, false})
        for (int64_t pairs : {1, 3}) {
            SCOPED_TRACE("answers_in_queries " + std::to_string(fed_back) + ", pairs " + std::to_string(pairs));
            RecallTaskConfig task;
            task.pairs = pairs;
            task.rounds = 4;
            task.answers_in_queries = fed_back;
            const int64_t B = 4, T = 256, W = 8;
            const int32_t key_base = 3, value_base = key_base + static_cast<int32_t>(task.keys);
            const int32_t filler_base = value_base + static_cast<int32_t>(task.values);
            const RecallBatch batch = make_recall_batch(task, B, T, W, seed, 7);
            const std::vector<int32_t> tokens = ints(batch.tokens), targets = ints(batch.targets);
            const std::vector<float> mask = floats(batch.mask);
            int64_t answers = 0;
            for (int64_t b = 0; b < B; ++b) {
                const int32_t* row = tokens.data() + b * T;
                std::vector<int32_t> value_of(static_cast<size_t>(task.keys), -1);
                int64_t values_in_pairs = 0, values_elsewhere = 0;
                for (int64_t t = 2; t < T; ++t) {
                    if (row[t] < value_base || row[t] >= filler_base) continue;
                    if (row[t - 2] == 1) {
                        ++values_in_pairs;
                        value_of[static_cast<size_t>(row[t - 1] - key_base)] = row[t];
                    } else {
                        ++values_elsewhere;
                        EXPECT_EQ(row[t - 2], 2) << "a value token neither in a pair nor after a query, at " << t;
                    }
                }
                EXPECT_EQ(values_in_pairs, pairs) << "row " << b;
                EXPECT_EQ(values_elsewhere, fed_back ? pairs * task.rounds : 0) << "row " << b;
                for (int64_t t = 0; t < T; ++t) {
                    if (mask[static_cast<size_t>(b * T + t)] == 0.0f) {
                        if (t + 1 < T) {
                            EXPECT_EQ(targets[static_cast<size_t>(b * T + t)], row[t + 1]);
                        }
                        continue;
                    }
                    ++answers;
                    EXPECT_EQ(row[t - 1], 2) << "an answer position not after QUERY";
                    const int32_t key = row[t] - key_base;
                    ASSERT_TRUE(key >= 0 && key < task.keys);
                    EXPECT_EQ(targets[static_cast<size_t>(b * T + t)], value_of[static_cast<size_t>(key)]);
                    if (fed_back) EXPECT_EQ(row[t + 1], value_of[static_cast<size_t>(key)]);
                    else EXPECT_GE(row[t + 1], filler_base) << "the answer is fed back as an input";
                }
            }
            EXPECT_EQ(answers, batch.answers);
            EXPECT_EQ(answers, B * pairs * task.rounds);
        }
    // The setting is written only when not the default (older configs compare equal).
    RecallTaskConfig task;
    EXPECT_FALSE(task.to_json().contains("answers_in_queries"));
    task.answers_in_queries = false;
    EXPECT_FALSE(RecallTaskConfig::from_json(task.to_json()).answers_in_queries);
    EXPECT_TRUE(RecallTaskConfig::from_json(RecallTaskConfig().to_json()).answers_in_queries);
}

TEST(MixtureRecallSource, DefaultConfigReproducesTheRecallBatches) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const uint64_t seed = rng.next_u64() >> 20;
    const DataConfig defaults;
    EXPECT_EQ(defaults.weights, (DataWeights{0, 0, 1}));
    for (bool held_out : {false, true}) {
        auto source = make_batch_source(defaults, 3, 128, 8, 64, seed, held_out);
        ASSERT_NE(dynamic_cast<RecallBatchSource*>(source.get()), nullptr);
        for (uint64_t i = 0; i < 4; ++i) {
            const RecallBatch expected = make_recall_batch(RecallTaskConfig{}, 3, 128, 8, held_out ? seed + kHeldOutSeedOffset : seed, i);
            const TrainBatch got = source->next();
            EXPECT_EQ(ints(got.tokens), ints(expected.tokens));
            EXPECT_EQ(ints(got.targets), ints(expected.targets));
            EXPECT_EQ(floats(got.mask), floats(expected.mask));
            EXPECT_EQ(got.answers, expected.answers);
        }
    }
}

TEST(MixtureRecallSource, RowsAreTheRecallBatchRowsAndRestoreMidBatch) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const uint64_t seed = rng.next_u64() >> 20;
    const int64_t B = rng.next_int(2, 5), T = 128;
    RecallBatchSource source(recall_task(), B, T, 8, seed);
    std::vector<int32_t> tokens(T), targets(T);
    std::vector<float> mask(T);
    for (int64_t row = 0; row < 3 * B; ++row) {
        const RecallBatch b = make_recall_batch(recall_task(), B, T, 8, seed, static_cast<uint64_t>(row / B));
        const int64_t answers = source.next_row(tokens.data(), targets.data(), mask.data());
        const auto all = ints(b.tokens), all_targets = ints(b.targets);
        const auto all_mask = floats(b.mask);
        const int64_t at = (row % B) * T;
        EXPECT_TRUE(std::equal(tokens.begin(), tokens.end(), all.begin() + at));
        EXPECT_TRUE(std::equal(targets.begin(), targets.end(), all_targets.begin() + at));
        EXPECT_TRUE(std::equal(mask.begin(), mask.end(), all_mask.begin() + at));
        EXPECT_EQ(answers, 2 * 2);  // pairs x rounds
        for (int64_t t = 0; t + 1 < T; ++t) EXPECT_EQ(targets[t], tokens[t + 1]);  // answers fed back
    }
    // A state in the middle of a batch, then whole batches.
    auto make = [&] { return std::make_unique<RecallBatchSource>(recall_task(), B, T, 8, seed); };
    auto partial = make();
    partial->next_row(tokens.data(), targets.data(), mask.data());
    const Json state = partial->state();
    const TrainBatch expected = partial->next();
    auto restored = make();
    restored->restore(state);
    expect_same_batch(restored->next(), expected, "recall after a mid-batch restore");
    check_state_restore(make, rng.next_int(0, 5), 3);
}

// ---------------------------------------------------------------- tasks

// niah_single_1 draws its keys from the word list of the installed corpus (wamerican), so
// the task tests skip without it.
TaskSourceOptions task_options(uint64_t seed) {
    TaskSourceOptions o;
    o.tasks = {"passkey", "niah_single_1"};
    o.lengths = {400, 600};
    o.batch = 2;
    o.seq_len = 1024;
    o.vocab_size = 300;
    o.seed = seed;
    return o;
}

TEST(MixtureTaskSource, RowsPackExamplesWithTheMaskShiftedOntoTargets) {
    HSA_SKIP_WITHOUT_CORPUS();
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const uint64_t seed = rng.next_u64() >> 20;
    TaskBatchSource source(task_options(seed));
    const int64_t T = 1024;
    const int32_t pad = ByteTokenizer::kPad;
    int64_t example = 0;
    std::set<std::string> seen_tasks;
    for (int step = 0; step < 3; ++step) {
        const TrainBatch b = source.next();
        const auto tokens = ints(b.tokens), targets = ints(b.targets);
        const auto mask = floats(b.mask);
        int64_t answers = 0;
        for (int64_t r = 0; r < 2; ++r) {
            // Rebuild the row from the examples: they follow one another, then PAD.
            std::vector<int32_t> row;
            std::vector<uint8_t> row_mask;
            while (true) {
                const TaskExample ex = source.example(example);
                ASSERT_LE(ex.tokens.size(), static_cast<size_t>(T + 1));
                if (row.size() + ex.tokens.size() > static_cast<size_t>(T + 1)) break;
                seen_tasks.insert(ex.task);
                row.insert(row.end(), ex.tokens.begin(), ex.tokens.end());
                row_mask.insert(row_mask.end(), ex.loss_mask.begin(), ex.loss_mask.end());
                ++example;
            }
            ASSERT_GE(row.size(), 350u) << "at least one example per row";
            row.resize(static_cast<size_t>(T + 1), pad);
            row_mask.resize(static_cast<size_t>(T + 1), 0);
            for (int64_t t = 0; t < T; ++t) {
                ASSERT_EQ(tokens[r * T + t], row[t]) << "row " << r << " position " << t;
                ASSERT_EQ(targets[r * T + t], row[t + 1]);
                ASSERT_EQ(mask[r * T + t], row_mask[t + 1] ? 1.0f : 0.0f);
                answers += row_mask[t + 1];
            }
        }
        EXPECT_EQ(b.answers, answers);
        EXPECT_GT(b.answers, 0);
        EXPECT_EQ(source.next_example(), example);
    }
    EXPECT_EQ(seen_tasks.size(), 2u) << "both tasks are drawn";
    // Each answer position's target is the answer text the scorer expects (decoded).
    const TaskExample ex = source.example(0);
    std::vector<int32_t> answer(ex.tokens.begin() + ex.prompt_length, ex.tokens.end());
    ASSERT_FALSE(ex.answers.empty());
    EXPECT_NE(source.tokenizer().decode(answer).find(ex.answers[0]), std::string::npos);
}

TEST(MixtureTaskSource, StateRestoreContinuesBitForBit) {
    HSA_SKIP_WITHOUT_CORPUS();
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const uint64_t seed = rng.next_u64() >> 20;
    check_state_restore([&] { return std::make_unique<TaskBatchSource>(task_options(seed)); }, rng.next_int(0, 3), 2);
}

TEST(MixtureTaskSource, ConfigErrorsAreOneLine) {
    TaskSourceOptions o = task_options(1);
    o.vocab_size = 100;
    expect_one_line_error([&] { TaskBatchSource s(o); }, {"vocab_size", "259", "100"});
    o = task_options(1);
    o.tasks = {"passkey", "nonsense"};
    expect_one_line_error([&] { TaskBatchSource s(o); }, {"nonsense", "passkey"});
    o = task_options(1);
    o.lengths = {2000};
    expect_one_line_error([&] { TaskBatchSource s(o); }, {"2000", "1024"});
    o.lengths = {100, 500};
    expect_one_line_error([&] { TaskBatchSource s(o); }, {"config data.task_lengths", "100", "too short"});
}

// ---------------------------------------------------------------- mixture

TEST(MixtureSource, ProportionsFollowTheWeights) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const auto files = write_position_shards(dir, "w", {5000});
    const double text_weight = 0.2 + 0.6 * rng.next_double();
    std::vector<std::unique_ptr<RowSource>> children;
    children.push_back(std::make_unique<ShardBatchSource>(text_options(files, 8, 128, 1, true)));
    children.push_back(std::make_unique<RecallBatchSource>(RecallTaskConfig{}, 8, 128, 8, 1));
    MixtureSource mixture(std::move(children), {text_weight, 1 - text_weight}, rng.next_u64() >> 12);
    const int64_t batches = 500, rows = batches * 8;
    int64_t text_rows = 0;
    for (int64_t i = 0; i < batches; ++i) {
        const TrainBatch b = mixture.next();
        // Text rows hold shard positions (>= 64 somewhere); recall rows only ids below 64.
        const auto tokens = ints(b.tokens);
        for (int64_t r = 0; r < 8; ++r)
            text_rows += *std::max_element(tokens.begin() + r * 128, tokens.begin() + (r + 1) * 128) >= 64;
    }
    EXPECT_EQ(mixture.rows_from(0), text_rows);
    EXPECT_EQ(mixture.rows_from(0) + mixture.rows_from(1), rows);
    const double sigma = std::sqrt(text_weight * (1 - text_weight) / rows);
    EXPECT_NEAR(static_cast<double>(text_rows) / rows, text_weight, 4 * sigma);
}

TEST(MixtureSource, RowsComeFromTheChildrenInOrder) {
    HSA_SKIP_WITHOUT_CORPUS();
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    const auto files = write_position_shards(dir, "o", {rng.next_int(3000, 6000)});
    const uint64_t seed = rng.next_u64() >> 12;
    auto children = [&] {
        TaskSourceOptions tasks = task_options(seed);
        tasks.batch = 4;
        std::vector<std::unique_ptr<RowSource>> c;
        c.push_back(std::make_unique<ShardBatchSource>(text_options(files, 4, 1024, seed, true)));
        c.push_back(std::make_unique<TaskBatchSource>(tasks));
        c.push_back(std::make_unique<RecallBatchSource>(recall_task(), 4, 1024, 8, seed));
        return c;
    };
    std::vector<int32_t> tokens(1024), targets(1024);
    std::vector<float> mask(1024);
    // Row by row: a second mixture tells which child each row came from.
    MixtureSource replay(children(), {0.5, 0.3, 0.2}, seed);
    auto solo = children();
    for (int64_t row = 0; row < 24; ++row) {
        std::vector<int64_t> before = {replay.rows_from(0), replay.rows_from(1), replay.rows_from(2)};
        const int64_t answers = replay.next_row(tokens.data(), targets.data(), mask.data());
        size_t from = 0;
        while (replay.rows_from(from) == before[from]) ++from;
        std::vector<int32_t> t2(1024), g2(1024);
        std::vector<float> m2(1024);
        EXPECT_EQ(solo[from]->next_row(t2.data(), g2.data(), m2.data()), answers);
        EXPECT_EQ(tokens, t2) << "row " << row << " from " << solo[from]->kind();
        EXPECT_EQ(targets, g2);
        EXPECT_EQ(mask, m2);
    }
    EXPECT_GT(replay.rows_from(0), 0);
    EXPECT_GT(replay.rows_from(1), 0);
    EXPECT_GT(replay.rows_from(2), 0);
}

TEST(MixtureSource, StateRestoreContinuesBitForBitThroughTheFactory) {
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    TempFolder dir;
    write_position_shards(dir, "f", {rng.next_int(3000, 5000), rng.next_int(100, 2000)});
    DataConfig c = DataConfig::from_json(Json::parse(R"({"shards": [")" + dir / "f*.h5" +
                                                     R"("], "tasks": ["passkey"], "task_lengths": [400, "512"],
                                                         "tokenizer": "byte", "weights": {"text": 2, "tasks": 1, "recall": 1}, "held_out_fraction": 0.3,
                                                         "recall": {"pairs": 2, "rounds": 2}})"));
    // The shards' tokenizer is "positions", the tasks' "byte": the factory refuses that mix...
    expect_one_line_error([&] { make_batch_source(c, 3, 1024, 8, kPositionVocab, 1, false); }, {"byte", "positions", "tokenizer"});
    // ...so use byte shards (ids below 259) for the mixture.
    std::vector<int32_t> text(static_cast<size_t>(rng.next_int(5000, 9000)));
    for (auto& t : text) t = static_cast<int32_t>(rng.next_int(0, 259));
    ShardWriterOptions w;
    w.prefix = dir / "bytes";
    w.format = ShardFormat{"byte", 259, 256, 257};
    w.shard_tokens = static_cast<int64_t>(text.size()) / 2;
    ShardWriter writer(w);
    writer.append(text);
    writer.finish();
    c.shards = {dir / "bytes-*.h5"};
    const uint64_t seed = rng.next_u64() >> 20;
    auto make = [&] { return make_batch_source(c, 3, 1024, 8, 300, seed, false); };
    ASSERT_NE(dynamic_cast<MixtureSource*>(make().get()), nullptr);
    check_state_restore(make, rng.next_int(0, 4), 3);
    // Same construction, same batches; another seed, other batches.
    expect_same_batch(make()->next(), make()->next(), "two fresh sources");
    EXPECT_NE(ints(make()->next().tokens), ints(make_batch_source(c, 3, 1024, 8, 300, seed + 1, false)->next().tokens));
    // The held-out mixture shares nothing with training's first batches.
    EXPECT_NE(ints(make()->next().tokens), ints(make_batch_source(c, 3, 1024, 8, 300, seed, true)->next().tokens));
    // A state whose weights differ belongs to another configuration.
    auto source = make();
    Json state = source->state();
    state["weights"]["text"] = 3;
    expect_one_line_error([&] { source->restore(state); }, {"weights"});
    // A child's bad state leaves every child as it was.
    state = source->state();
    const std::string before = state.dump();
    state["children"]["recall"]["seed"] = "12345";
    expect_one_line_error([&] { source->restore(state); }, {"recall", "seed"});
    EXPECT_EQ(source->state().dump(), before);
}

TEST(MixtureSource, DataRanksGetDisjointSlicesOfEverySource) {
    HSA_SKIP_WITHOUT_CORPUS();
    HSA_SEED_TRACE();
    Rng rng = test::test_rng();
    const uint64_t seed = rng.next_u64() >> 20;
    // Recall: rank r's batch i is the stream's batch i * ranks + r.
    DataConfig recall_only;
    recall_only.recall = recall_task();
    for (int64_t r = 0; r < 3; ++r) {
        auto source = make_batch_source(recall_only, 2, 128, 8, 64, seed, false, r, 3);
        for (uint64_t i = 0; i < 3; ++i)
            EXPECT_EQ(ints(source->next().tokens), ints(make_recall_batch(recall_task(), 2, 128, 8, seed, i * 3 + r).tokens));
    }
    // Tasks: rank r's k-th example is the stream's example k * ranks + r.
    TaskBatchSource one(task_options(seed));
    TaskSourceOptions o = task_options(seed);
    o.rank = {1, 2};
    TaskBatchSource second(o);
    EXPECT_EQ(second.example(0).tokens, one.example(1).tokens);
    EXPECT_EQ(second.example(3).tokens, one.example(7).tokens);
    // The mixture: ranks differ, and a rank's state does not restore on another.
    DataConfig mixed;
    mixed.tasks = {"passkey"};
    mixed.task_lengths = {500};
    mixed.weights = {0, 1, 1};
    mixed.recall = recall_task();
    auto rank0 = make_batch_source(mixed, 2, 1024, 8, 300, seed, false, 0, 2);
    auto rank1 = make_batch_source(mixed, 2, 1024, 8, 300, seed, false, 1, 2);
    EXPECT_NE(ints(rank0->next().tokens), ints(rank1->next().tokens));
    expect_one_line_error([&] { rank1->restore(rank0->state()); }, {"rank"});
    check_state_restore([&] { return make_batch_source(mixed, 2, 1024, 8, 300, seed, false, 1, 2); }, 2, 2);
}

// ---------------------------------------------------------------- the "data" config

TEST(MixtureDataConfig, DefaultsRoundTripAndMeanTheRecallTaskAlone) {
    const DataConfig d = DataConfig::from_json(Json::object());
    EXPECT_TRUE(d.shards.empty());
    EXPECT_TRUE(d.tasks.empty());
    EXPECT_EQ(d.weights, (DataWeights{0, 0, 1}));
    EXPECT_EQ(d.tokenizer, "byte");
    EXPECT_EQ(d.held_out_fraction, 0.01);
    EXPECT_TRUE(d.shuffle);
    EXPECT_EQ(d.to_json().dump(), DataConfig().to_json().dump());
    EXPECT_EQ(DataConfig::from_json(d.to_json()).to_json().dump(), d.to_json().dump());
    for (const char* key : {"shards", "held_out_shards", "held_out_fraction", "shuffle", "tasks", "task_lengths", "haystack_file",
                            "tokenizer", "weights", "recall"})
        EXPECT_TRUE(d.to_json().contains(key)) << key;
    EXPECT_NO_THROW(d.validate(128, 8, 64));
}

TEST(MixtureDataConfig, FieldsRoundTripAndWeightsDefaultToTheListedSources) {
    const Json j = Json::parse(R"({"shards": ["a/*.h5", "b.h5"], "held_out_shards": ["c.h5"], "held_out_fraction": 0.05,
        "shuffle": false, "tasks": ["passkey", "qa1"], "task_lengths": ["4K", 1000], "haystack_file": "h.txt",
        "tokenizer": "tok.json", "weights": {"text": 0.5, "tasks": 0.3, "recall": 0.2}, "recall": {"pairs": 3}})");
    const DataConfig c = DataConfig::from_json(j);
    EXPECT_EQ(c.shards, (std::vector<std::string>{"a/*.h5", "b.h5"}));
    EXPECT_EQ(c.held_out_shards, std::vector<std::string>{"c.h5"});
    EXPECT_EQ(c.held_out_fraction, 0.05);
    EXPECT_FALSE(c.shuffle);
    EXPECT_EQ(c.tasks, (std::vector<std::string>{"passkey", "qa1"}));
    EXPECT_EQ(c.task_lengths, (std::vector<int64_t>{4096, 1000}));
    EXPECT_EQ(c.haystack_file, "h.txt");
    EXPECT_EQ(c.tokenizer, "tok.json");
    EXPECT_EQ(c.weights, (DataWeights{0.5, 0.3, 0.2}));
    EXPECT_EQ(c.recall.pairs, 3);
    EXPECT_EQ(DataConfig::from_json(c.to_json()).to_json().dump(), c.to_json().dump());

    EXPECT_EQ(DataConfig::from_json(Json::parse(R"({"shards": ["x"]})")).weights, (DataWeights{1, 0, 0}));
    EXPECT_EQ(DataConfig::from_json(Json::parse(R"({"tasks": ["qa1"]})")).weights, (DataWeights{0, 1, 0}));
    EXPECT_EQ(DataConfig::from_json(Json::parse(R"({"shards": ["x"], "tasks": ["qa1"]})")).weights, (DataWeights{1, 1, 0}));
    EXPECT_EQ(DataConfig::from_json(Json::parse(R"({"weights": {"recall": 2}})")).weights, (DataWeights{0, 0, 2}));
    EXPECT_EQ(DataConfig::from_json(Json::parse(R"({"tasks": ["qa1"], "task_lengths": 512})")).task_lengths, std::vector<int64_t>{512});
}

TEST(MixtureDataConfig, StrictParsingNamesTheField) {
    auto parse = [](const std::string& text) { return DataConfig::from_json(Json::parse(text)); };
    expect_one_line_error([&] { parse(R"({"shard": ["x"]})"); }, {"config data", "unknown field \"shard\""});
    expect_one_line_error([&] { parse(R"({"shards": "x.h5"})"); }, {"data.shards", "list of strings"});
    expect_one_line_error([&] { parse(R"({"shards": [1]})"); }, {"data.shards", "number"});
    expect_one_line_error([&] { parse(R"({"weights": {"text": 1, "code": 1}})"); }, {"data.weights", "\"code\""});
    expect_one_line_error([&] { parse(R"({"weights": [1, 2]})"); }, {"data.weights", "object"});
    expect_one_line_error([&] { parse(R"({"task_lengths": [1.5]})"); }, {"data.task_lengths", "1.5"});
    expect_one_line_error([&] { parse(R"({"task_lengths": ["lots"]})"); }, {"data.task_lengths", "lots"});
    expect_one_line_error([&] { parse(R"({"recall": {"pairz": 1}})"); }, {"config data.recall", "pairz"});
    expect_one_line_error([&] { parse(R"({"shuffle": "yes"})"); }, {"data.shuffle"});
    expect_one_line_error([&] { parse(R"([])"); }, {"config data", "object"});
}

TEST(MixtureDataConfig, ValidationNamesTheFieldAndValue) {
    auto invalid = [](const std::string& text, std::vector<std::string> mentions, int64_t seq_len = 128) {
        const DataConfig c = DataConfig::from_json(Json::parse(text));
        expect_one_line_error([&] { c.validate(seq_len, 8, 300); }, mentions);
    };
    invalid(R"({"weights": {"recall": -1}})", {"data.weights.recall", "-1"});
    invalid(R"({"weights": {"recall": 0}})", {"data.weights", "every weight is 0"});
    invalid(R"({"weights": {"text": 1}})", {"data.weights.text", "data.shards is empty"});
    invalid(R"({"shards": ["x"], "weights": {"recall": 1}})", {"data.shards", "weights.text is 0"});
    invalid(R"({"tasks": ["passkey"], "weights": {"recall": 1}})", {"data.tasks", "weights.tasks is 0"});
    invalid(R"({"tasks": ["passkee"]})", {"data.tasks", "unknown task 'passkee'", "passkey"});
    invalid(R"({"tasks": ["passkey"], "task_lengths": [4096]})", {"data.task_lengths", "4096", "128"});
    invalid(R"({"held_out_shards": ["x"]})", {"data.held_out_shards"});
    invalid(R"({"shards": ["x"], "held_out_fraction": 1})", {"data.held_out_fraction", "1"});
    invalid(R"({"recall": {"keys": 500}})", {"config data.recall", "300"});
    invalid(R"({})", {"config data.recall", "seq_len 40"}, 40);
    // Files are checked when the sources are built.
    const DataConfig c = DataConfig::from_json(Json::parse(R"({"shards": ["/nonexistent/dir/*.h5"]})"));
    EXPECT_NO_THROW(c.validate(128, 8, 300));
    expect_one_line_error([&] { make_batch_source(c, 1, 128, 8, 300, 1, false); }, {"data.shards", "/nonexistent/dir/*.h5"});
    const DataConfig no_held = DataConfig::from_json(Json::parse(R"({"shards": ["/x"], "held_out_fraction": 0})"));
    expect_one_line_error([&] { make_batch_source(no_held, 1, 128, 8, 300, 1, true); }, {"held_out_fraction", "no held-out text"});
}

}  // namespace
}  // namespace hsa
