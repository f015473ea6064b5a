#include "trainers/recall_task.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "core/model/config.h"
#include "core/rng.h"

namespace hsa {

void RecallTaskConfig::validate(int64_t seq_len, int64_t window, int64_t vocab_size) const {
    auto bad = [](const std::string& what) { throw ConfigError("config task." + what); };
    if (pairs < 1) bad("pairs: must be >= 1, got " + std::to_string(pairs));
    if (keys < pairs) bad("keys: must be >= pairs = " + std::to_string(pairs) + ", got " + std::to_string(keys));
    if (values < 2) bad("values: must be >= 2, got " + std::to_string(values));
    if (filler < 1) bad("filler: must be >= 1, got " + std::to_string(filler));
    if (vocab_needed() > vocab_size)
        bad("keys/values/filler: the task needs " + std::to_string(vocab_needed()) + " token ids but model.vocab_size is " +
            std::to_string(vocab_size));
    if (rounds < 1) bad("rounds: must be >= 1, got " + std::to_string(rounds));
    // Pairs sit at random slots of the first third; query rounds end the sequence, each
    // round window+1 tokens after the previous one's answers. The first round must start
    // beyond the window's reach of the pairs.
    const int64_t pair_region = std::max<int64_t>(3 * pairs, seq_len / 3);
    if (first_query_position(seq_len, window) - pair_region <= window)
        bad("pairs/rounds: with seq_len " + std::to_string(seq_len) + " and window " + std::to_string(window) +
            " the queries would be within the sliding window of the pairs; use a longer seq_len");
}

RecallTaskConfig RecallTaskConfig::from_json(const Json& section) {
    RecallTaskConfig t;
    ConfigReader r(section, "task");
    r.read("pairs", t.pairs);
    r.read("keys", t.keys);
    r.read("values", t.values);
    r.read("filler", t.filler);
    r.read("rounds", t.rounds);
    r.read("answers_in_queries", t.answers_in_queries);
    r.finish();
    return t;
}

int64_t RecallTaskConfig::first_query_position(int64_t seq_len, int64_t window) const {
    return seq_len - 3 * pairs - (rounds - 1) * (3 * pairs + window);
}

Json RecallTaskConfig::to_json() const {
    Json j = Json::object();
    j["pairs"] = pairs;
    j["keys"] = keys;
    j["values"] = values;
    j["filler"] = filler;
    j["rounds"] = rounds;
    // Only when not the default: configs and checkpoints written before the field existed
    // compare equal (resume checks the whole configuration).
    if (!answers_in_queries) j["answers_in_queries"] = false;
    return j;
}

RecallBatch make_recall_batch(const RecallTaskConfig& task, int64_t batch, int64_t seq_len, int64_t window,
                              uint64_t seed, uint64_t batch_index) {
    const int64_t T = seq_len, P = task.pairs;
    const int32_t key_base = 3, value_base = 3 + static_cast<int32_t>(task.keys);
    const int32_t filler_base = value_base + static_cast<int32_t>(task.values);
    const int64_t pair_region = std::max<int64_t>(3 * P, T / 3);

    RecallBatch out;
    out.tokens = Tensor::empty({batch, T}, DType::I32);
    out.targets = Tensor::empty({batch, T}, DType::I32);
    out.mask = Tensor::zeros({batch, T}, DType::F32);
    int32_t* tokens = out.tokens.data<int32_t>();
    int32_t* targets = out.targets.data<int32_t>();
    float* mask = out.mask.data<float>();

    std::vector<std::pair<int64_t, int32_t>> answers;  // (position, value) of a row's queries
    for (int64_t b = 0; b < batch; ++b) {
        // One generator per (seed, batch, row): rows are independent of batch size splits.
        Rng rng(seed * 0x9E3779B97F4A7C15ull + batch_index * 1000003ull + static_cast<uint64_t>(b));
        int32_t* row = tokens + b * T;
        for (int64_t t = 0; t < T; ++t) row[t] = filler_base + static_cast<int32_t>(rng.next_int(0, task.filler));
        row[0] = 0;  // BOS

        // Distinct keys, random values.
        std::vector<int32_t> keys(static_cast<size_t>(task.keys));
        for (int64_t i = 0; i < task.keys; ++i) keys[i] = static_cast<int32_t>(i);
        for (int64_t i = 0; i < P; ++i) std::swap(keys[i], keys[rng.next_int(i, task.keys)]);
        std::vector<int32_t> values(static_cast<size_t>(P));
        for (int64_t i = 0; i < P; ++i) values[i] = static_cast<int32_t>(rng.next_int(0, task.values));

        // Pairs at non-overlapping 3-token slots inside [1, pair_region).
        const int64_t slots = (pair_region - 1) / 3;
        std::vector<int64_t> slot_ids(static_cast<size_t>(slots));
        for (int64_t i = 0; i < slots; ++i) slot_ids[i] = i;
        for (int64_t i = 0; i < P; ++i) std::swap(slot_ids[i], slot_ids[rng.next_int(i, slots)]);
        for (int64_t i = 0; i < P; ++i) {
            int64_t at = 1 + 3 * slot_ids[i];
            row[at] = 1;
            row[at + 1] = key_base + keys[i];
            row[at + 2] = value_base + values[i];
        }
        // Query rounds at the end, each asking every key once in a random order.
        for (int64_t round = 0; round < task.rounds; ++round) {
            const int64_t start = T - 3 * P - round * (3 * P + window);
            std::vector<int64_t> order(static_cast<size_t>(P));
            for (int64_t i = 0; i < P; ++i) order[i] = i;
            for (int64_t i = 0; i < P; ++i) std::swap(order[i], order[rng.next_int(i, P)]);
            for (int64_t j = 0; j < P; ++j) {
                const int64_t at = start + 3 * j;
                row[at] = 2;
                row[at + 1] = key_base + keys[order[j]];
                // Without fed-back answers the token after the key keeps its filler.
                if (task.answers_in_queries) row[at + 2] = value_base + values[order[j]];
                answers.push_back({at + 1, value_base + values[order[j]]});
                mask[b * T + at + 1] = 1.0f;
            }
        }
        for (int64_t t = 0; t < T; ++t) targets[b * T + t] = t + 1 < T ? row[t + 1] : -1;
        for (const auto& [position, value] : answers) targets[b * T + position] = value;
        answers.clear();
    }
    out.answers = batch * P * task.rounds;
    return out;
}

double recall_accuracy(const Tensor& logits_in, const RecallBatch& batch) {
    Tensor logits = logits_in.to(Device::CPU);
    const int64_t V = logits.size(-1), n = batch.tokens.numel();
    const float* l = logits.data<float>();
    const float* mask = batch.mask.data<float>();
    const int32_t* targets = batch.targets.data<int32_t>();
    int64_t correct = 0, total = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (mask[i] == 0.0f) continue;
        const float* row = l + i * V;
        int64_t best = std::max_element(row, row + V) - row;
        correct += best == targets[i];
        ++total;
    }
    return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
}

}  // namespace hsa
