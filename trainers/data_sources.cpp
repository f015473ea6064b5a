#include "trainers/data_sources.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/model/config.h"
#include "core/rng.h"

namespace hsa {

namespace {

// Tags that keep the seeded streams of different purposes apart.
constexpr uint64_t kShiftTag = 0x7368696674ull;      // "shift": a text epoch's window offset
constexpr uint64_t kPermuteTag = 0x7065726dull;      // "perm": the Feistel rounds
constexpr uint64_t kTaskTag = 0x7461736bull;         // "task": an example's task and length
constexpr uint64_t kMixtureTag = 0x6d6978ull;        // "mix": a row's source
constexpr int kFeistelRounds = 6;
// Shard files kept open by one text source (least recently used are closed).
constexpr size_t kOpenShards = 4;

// A 64-bit hash of (seed, a, b) from the counter-based generator: no state to carry.
uint64_t mix64(uint64_t seed, uint64_t a, uint64_t b) {
    const auto w = philox4x32({static_cast<uint32_t>(a), static_cast<uint32_t>(a >> 32), static_cast<uint32_t>(b),
                               static_cast<uint32_t>(b >> 32)},
                              {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
    return (static_cast<uint64_t>(w[0]) << 32) | w[1];
}

double unit_double(uint64_t bits) { return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0); }

// A seeded permutation of [0, n): a balanced Feistel network on the smallest even number of
// bits covering n, cycle-walked back into range (at most about 4 steps on average).
uint64_t permute(uint64_t k, uint64_t n, uint64_t seed, uint64_t epoch) {
    if (n <= 1) return k;
    int bits = 0;
    while (bits < 64 && ((n - 1) >> bits) != 0) ++bits;
    const int half = (bits + 1) / 2;
    const uint64_t half_mask = (uint64_t(1) << half) - 1;
    uint64_t x = k;
    do {
        uint64_t left = x >> half, right = x & half_mask;
        for (int round = 0; round < kFeistelRounds; ++round) {
            const uint64_t f = mix64(seed ^ kPermuteTag, (epoch << 8) | static_cast<uint64_t>(round), right) & half_mask;
            const uint64_t next_right = left ^ f;
            left = right;
            right = next_right;
        }
        x = (left << half) | right;
    } while (x >= n);
    return x;
}

std::string seed_text(uint64_t seed) { return std::to_string(seed); }

// Rewrites the recall task's own error prefix ("config task.") to where it sits here.
[[noreturn]] void rethrow_as_data_recall(const ConfigError& e) {
    std::string message = e.what();
    const std::string from = "config task";
    if (message.rfind(from, 0) == 0) message = "config data.recall" + message.substr(from.size());
    throw ConfigError(message);
}

std::vector<std::string> read_string_list(ConfigReader& r, const char* key) {
    std::vector<std::string> values;
    const Json* j = r.raw(key);
    if (!j) return values;
    if (!j->is_array()) r.fail(key, std::string("expected a list of strings, got ") + j->kind_name());
    for (const auto& item : j->items()) {
        if (!item.is_string()) r.fail(key, std::string("expected a list of strings, found a ") + item.kind_name());
        values.push_back(item.as_string());
    }
    return values;
}

std::string join(const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
    return s;
}

std::string number_text(double v) { return Json(v).dump(); }

}  // namespace

// ---------------------------------------------------------------- DataConfig

DataConfig DataConfig::from_json(const Json& section) {
    DataConfig c;
    ConfigReader r(section, "data");
    c.shards = read_string_list(r, "shards");
    c.held_out_shards = read_string_list(r, "held_out_shards");
    r.read("held_out_fraction", c.held_out_fraction);
    r.read("shuffle", c.shuffle);
    c.tasks = read_string_list(r, "tasks");
    if (const Json* j = r.raw("task_lengths")) {
        std::vector<Json> items = j->is_array() ? j->items() : std::vector<Json>{*j};
        for (const auto& item : items) {
            if (item.is_string()) {
                try {
                    c.task_lengths.push_back(parse_token_count(item.as_string()));
                } catch (const ConfigError& e) {
                    r.fail("task_lengths", e.what());
                }
                continue;
            }
            const double v = item.is_number() ? item.as_number() : 0.5;
            if (!item.is_number() || v != std::floor(v) || std::fabs(v) > 9e15)
                r.fail("task_lengths", "expected a token count (4096 or \"4K\") or a list of them, got " + item.dump());
            c.task_lengths.push_back(static_cast<int64_t>(v));
        }
    }
    r.read("haystack_file", c.haystack_file);
    r.read("tokenizer", c.tokenizer);
    if (const Json* j = r.raw("weights")) {
        DataWeights w{0, 0, 0};
        ConfigReader wr(*j, "data.weights");
        wr.read("text", w.text);
        wr.read("tasks", w.tasks);
        wr.read("recall", w.recall);
        wr.finish();
        c.weights = w;
    } else {
        // No weights: every listed source at weight 1; the recall task only when nothing is.
        c.weights.text = c.shards.empty() ? 0 : 1;
        c.weights.tasks = c.tasks.empty() ? 0 : 1;
        c.weights.recall = c.shards.empty() && c.tasks.empty() ? 1 : 0;
    }
    if (const Json* j = r.raw("recall")) {
        try {
            c.recall = RecallTaskConfig::from_json(*j);
        } catch (const ConfigError& e) {
            rethrow_as_data_recall(e);
        }
    }
    r.finish();
    return c;
}

Json DataConfig::to_json() const {
    auto list = [](const std::vector<std::string>& values) {
        Json a = Json::array();
        for (const auto& v : values) a.push_back(v);
        return a;
    };
    Json j = Json::object();
    j["shards"] = list(shards);
    j["held_out_shards"] = list(held_out_shards);
    j["held_out_fraction"] = held_out_fraction;
    j["shuffle"] = shuffle;
    j["tasks"] = list(tasks);
    Json lengths = Json::array();
    for (int64_t v : task_lengths) lengths.push_back(v);
    j["task_lengths"] = lengths;
    j["haystack_file"] = haystack_file;
    j["tokenizer"] = tokenizer;
    Json w = Json::object();
    w["text"] = weights.text;
    w["tasks"] = weights.tasks;
    w["recall"] = weights.recall;
    j["weights"] = w;
    j["recall"] = recall.to_json();
    return j;
}

void DataConfig::validate(int64_t seq_len, int64_t window, int64_t vocab_size) const {
    auto bad = [](const std::string& field, const std::string& what) { throw ConfigError("config data." + field + ": " + what); };
    const std::pair<const char*, double> named[] = {{"text", weights.text}, {"tasks", weights.tasks}, {"recall", weights.recall}};
    for (const auto& [name, w] : named)
        if (!std::isfinite(w) || w < 0) bad(std::string("weights.") + name, "must be a number >= 0, got " + number_text(w));
    if (weights.text + weights.tasks + weights.recall <= 0)
        bad("weights", "every weight is 0; give text, tasks or recall a positive weight");
    if (weights.text > 0 && shards.empty())
        bad("weights.text", "is " + number_text(weights.text) + " but data.shards is empty");
    if (weights.text == 0 && !shards.empty())
        bad("shards", "shards are listed but data.weights.text is 0 (give text a weight or remove the shards)");
    if (!held_out_shards.empty() && shards.empty())
        bad("held_out_shards", "held-out shards need training shards in data.shards too");
    for (const auto* list : {&shards, &held_out_shards})
        for (const auto& s : *list)
            if (s.empty()) bad(list == &shards ? "shards" : "held_out_shards", "empty path");
    if (!std::isfinite(held_out_fraction) || held_out_fraction < 0 || held_out_fraction >= 1)
        bad("held_out_fraction", "must be in [0, 1), got " + number_text(held_out_fraction));
    if (weights.tasks > 0 && tasks.empty())
        bad("weights.tasks", "is " + number_text(weights.tasks) + " but data.tasks is empty");
    if (weights.tasks == 0 && !tasks.empty())
        bad("tasks", "tasks are listed but data.weights.tasks is 0 (give tasks a weight or remove them)");
    for (const auto& name : tasks)
        if (!is_task(name)) bad("tasks", "unknown task '" + name + "' (known: " + join(task_names()) + ")");
    if (!task_lengths.empty() && tasks.empty()) bad("task_lengths", "given but data.tasks is empty");
    for (int64_t length : task_lengths)
        if (length < 1 || length > seq_len)
            bad("task_lengths", std::to_string(length) + " is outside [1, seq_len = " + std::to_string(seq_len) +
                                    "] (an example must fit one training row)");
    if (tokenizer.empty()) bad("tokenizer", "empty; use \"byte\" or a tokenizer.json path");
    if (weights.recall > 0) {
        try {
            recall.validate(seq_len, window, vocab_size);
        } catch (const ConfigError& e) {
            rethrow_as_data_recall(e);
        }
    }
}

// ---------------------------------------------------------------- RowSource

RowSource::RowSource(int64_t batch, int64_t seq_len, DataRank rank) : batch_(batch), seq_len_(seq_len), rank_(rank) {
    if (batch < 1) throw ConfigError("data: batch size must be >= 1, got " + std::to_string(batch));
    if (seq_len < 1) throw ConfigError("data: seq_len must be >= 1, got " + std::to_string(seq_len));
    if (rank.ranks < 1 || rank.rank < 0 || rank.rank >= rank.ranks)
        throw ConfigError("data: data rank " + std::to_string(rank.rank) + " is outside [0, " + std::to_string(rank.ranks) + ")");
}

void RowSource::add_rank(Json& state) const {
    state["rank"] = rank_.rank;
    state["ranks"] = rank_.ranks;
}

void RowSource::check_rank(const Json& state) const {
    check_state(state, "ranks", Json(rank_.ranks));
    check_state(state, "rank", Json(rank_.rank));
}

TrainBatch RowSource::next() {
    TrainBatch out;
    out.tokens = Tensor::empty({batch_, seq_len_}, DType::I32);
    out.targets = Tensor::empty({batch_, seq_len_}, DType::I32);
    out.mask = Tensor::empty({batch_, seq_len_}, DType::F32);
    int32_t* tokens = out.tokens.data<int32_t>();
    int32_t* targets = out.targets.data<int32_t>();
    float* mask = out.mask.data<float>();
    for (int64_t b = 0; b < batch_; ++b)
        out.answers += next_row(tokens + b * seq_len_, targets + b * seq_len_, mask + b * seq_len_);
    return out;
}

const Json& RowSource::state_field(const Json& state, const std::string& key) const {
    if (!state.is_object()) throw ConfigError(std::string("data state: expected an object for the ") + kind() + " source, got a " + state.kind_name());
    if (!state.contains(key)) throw ConfigError(std::string("data state: the ") + kind() + " source's state lacks \"" + key + "\"");
    return state.at(key);
}

void RowSource::check_state(const Json& state, const std::string& key, const Json& expected) const {
    const Json& kind_field = state_field(state, "kind");
    if (!kind_field.is_string() || kind_field.as_string() != kind())
        throw ConfigError(std::string("data state: expected the state of a ") + kind() + " source, got kind " + kind_field.dump());
    const Json& value = state_field(state, key);
    if (value.dump() != expected.dump())
        throw ConfigError(std::string("data state: the ") + kind() + " source's state has " + key + " " + value.dump() +
                          " but this source has " + expected.dump() + " (a state from another data configuration?)");
}

namespace {
int64_t counter_field(const Json& value, const std::string& what) {
    if (!value.is_number() || value.as_number() < 0 || value.as_number() != std::floor(value.as_number()) || value.as_number() > 9e15)
        throw ConfigError("data state: " + what + " must be a whole number >= 0, got " + value.dump());
    return static_cast<int64_t>(value.as_number());
}
}  // namespace

// ---------------------------------------------------------------- ShardBatchSource

ShardBatchSource::ShardBatchSource(ShardSourceOptions options)
    : RowSource(options.batch, options.seq_len, options.rank), options_(std::move(options)) {
    if (options_.files.empty()) throw ConfigError("data: a text source needs at least one shard");
    if (!(options_.held_out_fraction >= 0 && options_.held_out_fraction < 1))
        throw ConfigError("data: held_out_fraction must be in [0, 1), got " + number_text(options_.held_out_fraction));
    shard_begin_.push_back(0);
    std::string first_file;
    for (const auto& file : options_.files) {
        const ShardReader shard(file, options_.vocab_size);
        if (first_file.empty()) {
            format_ = shard.format();
            first_file = file;
        } else if (shard.format().tokenizer != format_.tokenizer || shard.format().vocab_size != format_.vocab_size) {
            throw ConfigError("data: shard '" + file + "' has tokenizer '" + shard.format().tokenizer + "' (vocab_size " +
                              std::to_string(shard.format().vocab_size) + ") but '" + first_file + "' has '" +
                              format_.tokenizer + "' (vocab_size " + std::to_string(format_.vocab_size) +
                              "); one corpus needs one tokenizer");
        }
        any_loss_mask_ = any_loss_mask_ || shard.has_loss_mask();
        shard_begin_.push_back(shard_begin_.back() + shard.size());
    }
    const int64_t total = shard_begin_.back();
    const int64_t held = static_cast<int64_t>(std::llround(static_cast<double>(total) * options_.held_out_fraction));
    if (options_.held_out) {
        region_begin_ = options_.held_out_fraction > 0 ? total - held : 0;
        region_end_ = total;
    } else {
        region_begin_ = 0;
        region_end_ = total - held;
    }
    const int64_t need = seq_len_ + 1;
    if (region_end_ - region_begin_ < need) {
        const std::string part = options_.held_out && options_.held_out_fraction > 0
                                     ? "the held-out part (the last " + number_text(options_.held_out_fraction) + ") of "
                                     : (!options_.held_out && held > 0 ? "the training part of " : "");
        throw ConfigError("data: " + part + "the " + std::to_string(options_.files.size()) + " shard(s) from '" + first_file +
                          "' has " + std::to_string(region_end_ - region_begin_) + " tokens, fewer than seq_len + 1 = " +
                          std::to_string(need) + " (one row)");
    }
    // The fewest windows any epoch can have (its grid shifted furthest) must feed every rank.
    const int64_t span = std::min(seq_len_, region_tokens() - seq_len_);
    const int64_t fewest = (region_tokens() - span) / seq_len_;
    if (fewest < rank_.ranks)
        throw ConfigError("data: the " + std::to_string(options_.files.size()) + " shard(s) from '" + first_file + "' give " +
                          std::to_string(fewest) + " window(s) of seq_len + 1 = " + std::to_string(need) +
                          " tokens per epoch, fewer than the " + std::to_string(rank_.ranks) + " data-parallel ranks");
    window_tokens_.resize(static_cast<size_t>(need));
    window_mask_.resize(static_cast<size_t>(need));
}

int64_t ShardBatchSource::epoch_shift(int64_t epoch) const {
    if (!options_.shuffle) return 0;
    const int64_t span = std::min(seq_len_, region_tokens() - seq_len_);  // keeps at least one window
    return static_cast<int64_t>(mix64(options_.seed ^ kShiftTag, static_cast<uint64_t>(epoch), 0) % static_cast<uint64_t>(span));
}

int64_t ShardBatchSource::all_windows(int64_t epoch) const { return (region_tokens() - epoch_shift(epoch) - 1) / seq_len_; }

int64_t ShardBatchSource::windows_in_epoch(int64_t epoch) const { return all_windows(epoch) / rank_.ranks; }

int64_t ShardBatchSource::window_start(int64_t epoch, int64_t k) const {
    // Rank r takes places r, r + ranks, ... of the epoch's order: disjoint from the other ranks.
    const uint64_t place = static_cast<uint64_t>(k * rank_.ranks + rank_.rank);
    const uint64_t n = static_cast<uint64_t>(all_windows(epoch));
    const uint64_t w = options_.shuffle ? permute(place, n, options_.seed, static_cast<uint64_t>(epoch)) : place;
    return region_begin_ + epoch_shift(epoch) + static_cast<int64_t>(w) * seq_len_;
}

ShardReader& ShardBatchSource::reader(size_t index) {
    for (size_t i = 0; i < open_.size(); ++i) {
        if (open_[i].first == index) {
            if (i + 1 != open_.size()) std::rotate(open_.begin() + static_cast<std::ptrdiff_t>(i),
                                                   open_.begin() + static_cast<std::ptrdiff_t>(i) + 1, open_.end());
            return *open_.back().second;
        }
    }
    if (open_.size() >= kOpenShards) open_.erase(open_.begin());
    open_.emplace_back(index, std::make_unique<ShardReader>(options_.files[index], options_.vocab_size));
    ShardReader& r = *open_.back().second;
    // The file may have been replaced since the source was built: positions would shift.
    const int64_t expected = shard_begin_[index + 1] - shard_begin_[index];
    if (r.size() != expected)
        throw ConfigError("data: shard '" + options_.files[index] + "' now holds " + std::to_string(r.size()) +
                          " tokens but held " + std::to_string(expected) + " when the data source was built");
    return r;
}

void ShardBatchSource::read_stream(int64_t start, int64_t count, int32_t* tokens, uint8_t* loss_mask) {
    while (count > 0) {
        const size_t i = static_cast<size_t>(std::upper_bound(shard_begin_.begin(), shard_begin_.end(), start) - shard_begin_.begin()) - 1;
        const int64_t take = std::min(count, shard_begin_[i + 1] - start);
        ShardReader& r = reader(i);
        r.read(start - shard_begin_[i], take, tokens);
        if (loss_mask) r.read_loss_mask(start - shard_begin_[i], take, loss_mask);
        start += take;
        count -= take;
        tokens += take;
        if (loss_mask) loss_mask += take;
    }
}

int64_t ShardBatchSource::next_row(int32_t* tokens, int32_t* targets, float* mask) {
    if (window_ >= windows_in_epoch(epoch_)) {
        ++epoch_;
        window_ = 0;
    }
    const int64_t start = window_start(epoch_, window_);
    ++window_;
    const int64_t T = seq_len_;
    read_stream(start, T + 1, window_tokens_.data(), any_loss_mask_ ? window_mask_.data() : nullptr);
    int64_t answers = 0;
    for (int64_t t = 0; t < T; ++t) {
        tokens[t] = window_tokens_[static_cast<size_t>(t)];
        targets[t] = window_tokens_[static_cast<size_t>(t + 1)];
        const bool counts = !any_loss_mask_ || window_mask_[static_cast<size_t>(t + 1)] != 0;
        mask[t] = counts ? 1.0f : 0.0f;
        answers += any_loss_mask_ && counts;
    }
    return answers;
}

Json ShardBatchSource::state() const {
    Json s = Json::object();
    s["kind"] = kind();
    s["epoch"] = epoch_;
    s["window"] = window_;
    s["seed"] = seed_text(options_.seed);
    s["stream_tokens"] = shard_begin_.back();
    s["files"] = static_cast<int64_t>(options_.files.size());
    s["held_out"] = options_.held_out;
    add_rank(s);
    // Where the next window starts, for people reading a checkpoint.
    int64_t epoch = epoch_, window = window_;
    if (window >= windows_in_epoch(epoch)) ++epoch, window = 0;
    const int64_t next = window_start(epoch, window);
    const size_t i = static_cast<size_t>(std::upper_bound(shard_begin_.begin(), shard_begin_.end(), next) - shard_begin_.begin()) - 1;
    s["shard"] = static_cast<int64_t>(i);
    s["offset"] = next - shard_begin_[i];
    return s;
}

void ShardBatchSource::restore(const Json& state) {
    check_state(state, "seed", Json(seed_text(options_.seed)));
    check_state(state, "stream_tokens", Json(shard_begin_.back()));
    check_state(state, "files", Json(static_cast<int64_t>(options_.files.size())));
    check_state(state, "held_out", Json(options_.held_out));
    check_rank(state);
    const int64_t epoch = counter_field(state_field(state, "epoch"), "text epoch");
    const int64_t window = counter_field(state_field(state, "window"), "text window");
    if (window > windows_in_epoch(epoch))
        throw ConfigError("data state: text window " + std::to_string(window) + " is beyond the " +
                          std::to_string(windows_in_epoch(epoch)) + " windows of epoch " + std::to_string(epoch));
    epoch_ = epoch;
    window_ = window;
}

// ---------------------------------------------------------------- TaskBatchSource

TaskBatchSource::TaskBatchSource(TaskSourceOptions options)
    : RowSource(options.batch, options.seq_len, options.rank), options_(std::move(options)) {
    if (options_.tasks.empty()) throw ConfigError("config data.tasks: a task source needs at least one task");
    for (const auto& name : options_.tasks)
        if (!is_task(name)) throw ConfigError("config data.tasks: unknown task '" + name + "' (known: " + join(task_names()) + ")");
    if (options_.lengths.empty()) options_.lengths.push_back(seq_len_);
    for (int64_t length : options_.lengths)
        if (length < 1 || length > seq_len_)
            throw ConfigError("config data.task_lengths: " + std::to_string(length) + " is outside [1, seq_len = " +
                              std::to_string(seq_len_) + "]");
    tok_ = load_tokenizer(options_.tokenizer);
    if (options_.vocab_size > 0 && tok_->vocab_size() > options_.vocab_size)
        throw ConfigError("config data.tokenizer: '" + options_.tokenizer + "' has vocab_size " + std::to_string(tok_->vocab_size()) +
                          ", larger than the model's vocab_size " + std::to_string(options_.vocab_size));
    generator_ = std::make_unique<TaskGenerator>(*tok_);
    // A length too short for a task's question would otherwise fail only when that pair is
    // first drawn, maybe hours into a run: try every task at the shortest length now.
    const int64_t shortest = *std::min_element(options_.lengths.begin(), options_.lengths.end());
    for (const auto& name : options_.tasks) {
        TaskOptions probe;
        probe.length = shortest;
        probe.seed = options_.seed;
        probe.haystack_file = options_.haystack_file;
        try {
            generator_->generate(name, probe, 0);
        } catch (const ConfigError& e) {
            throw ConfigError(std::string("config data.task_lengths: ") + e.what());
        }
    }
    row_tokens_.resize(static_cast<size_t>(seq_len_ + 1));
    row_mask_.resize(static_cast<size_t>(seq_len_ + 1));
}

TaskExample TaskBatchSource::example(int64_t k) const {
    const int64_t index = k * rank_.ranks + rank_.rank;  // in the stream all ranks share
    Rng pick(mix64(options_.seed ^ kTaskTag, static_cast<uint64_t>(index), 0));
    const std::string& name = options_.tasks[static_cast<size_t>(pick.next_int(0, static_cast<int64_t>(options_.tasks.size())))];
    const int64_t asked = options_.lengths[static_cast<size_t>(pick.next_int(0, static_cast<int64_t>(options_.lengths.size())))];
    TaskOptions task_options;
    task_options.length = asked;
    task_options.seed = options_.seed;
    task_options.haystack_file = options_.haystack_file;
    const size_t room = static_cast<size_t>(seq_len_ + 1);
    // The generators hit the length within a tolerance; one that overshoots the row is asked
    // again, shorter by the overshoot.
    for (int attempt = 0; attempt < 4; ++attempt) {
        TaskExample ex;
        try {
            ex = generator_->generate(name, task_options, index);
        } catch (const ConfigError& e) {
            throw ConfigError(std::string("config data.tasks: ") + e.what());
        }
        if (ex.tokens.empty()) throw ConfigError("data: task '" + name + "' example " + std::to_string(index) + " has no tokens");
        if (ex.loss_mask.size() != ex.tokens.size())
            throw ConfigError("data: task '" + name + "' example " + std::to_string(index) + " has " +
                              std::to_string(ex.loss_mask.size()) + " loss-mask entries for " + std::to_string(ex.tokens.size()) + " tokens");
        for (int32_t id : ex.tokens)
            if (id < 0 || id >= tok_->vocab_size())
                throw ConfigError("data: task '" + name + "' example " + std::to_string(index) + " has token id " +
                                  std::to_string(id) + " outside the vocabulary [0, " + std::to_string(tok_->vocab_size()) + ")");
        if (ex.tokens.size() <= room) return ex;
        task_options.length -= static_cast<int64_t>(ex.tokens.size() - room) + 16 * attempt;
        if (task_options.length < 1) break;
    }
    throw ConfigError("config data.task_lengths: task '" + name + "' at length " + std::to_string(asked) +
                      " does not fit in seq_len + 1 = " + std::to_string(room) + " tokens (example " + std::to_string(index) +
                      "); use a shorter task length");
}

int64_t TaskBatchSource::next_row(int32_t* tokens, int32_t* targets, float* mask) {
    const size_t room = static_cast<size_t>(seq_len_ + 1);
    const int32_t pad = tok_->pad_id() >= 0 ? tok_->pad_id() : tok_->eos_id();
    std::fill(row_tokens_.begin(), row_tokens_.end(), pad);
    std::fill(row_mask_.begin(), row_mask_.end(), uint8_t(0));
    size_t used = 0;
    while (used < room) {
        if (!pending_) pending_ = example(next_example_);
        const size_t n = pending_->tokens.size();
        if (used + n > room) break;  // it starts the next row (every example fits a fresh row)
        std::copy(pending_->tokens.begin(), pending_->tokens.end(), row_tokens_.begin() + static_cast<std::ptrdiff_t>(used));
        std::copy(pending_->loss_mask.begin(), pending_->loss_mask.end(), row_mask_.begin() + static_cast<std::ptrdiff_t>(used));
        used += n;
        ++next_example_;
        pending_.reset();
    }
    int64_t answers = 0;
    for (int64_t t = 0; t < seq_len_; ++t) {
        tokens[t] = row_tokens_[static_cast<size_t>(t)];
        targets[t] = row_tokens_[static_cast<size_t>(t + 1)];
        const bool answer = row_mask_[static_cast<size_t>(t + 1)] != 0;
        mask[t] = answer ? 1.0f : 0.0f;
        answers += answer;
    }
    return answers;
}

Json TaskBatchSource::state() const {
    Json s = Json::object();
    s["kind"] = kind();
    s["example"] = next_example_;
    s["seed"] = seed_text(options_.seed);
    add_rank(s);
    return s;
}

void TaskBatchSource::restore(const Json& state) {
    check_state(state, "seed", Json(seed_text(options_.seed)));
    check_rank(state);
    next_example_ = counter_field(state_field(state, "example"), "tasks example");
    pending_.reset();
}

// ---------------------------------------------------------------- RecallBatchSource

RecallBatchSource::RecallBatchSource(RecallTaskConfig task, int64_t batch, int64_t seq_len, int64_t window, uint64_t seed,
                                     DataRank rank)
    : RowSource(batch, seq_len, rank), task_(task), window_(window), seed_(seed) {}

const RecallBatch& RecallBatchSource::batch_for_row(int64_t row) {
    const int64_t index = (row / batch_) * rank_.ranks + rank_.rank;
    if (index != cached_index_) {
        cached_ = make_recall_batch(task_, batch_, seq_len_, window_, seed_, static_cast<uint64_t>(index));
        cached_index_ = index;
    }
    return cached_;
}

TrainBatch RecallBatchSource::next() {
    if (row_ % batch_ != 0) return RowSource::next();
    // On a batch boundary: the recall batch itself, as the foundation trainer made it.
    const int64_t index = (row_ / batch_) * rank_.ranks + rank_.rank;
    RecallBatch b = make_recall_batch(task_, batch_, seq_len_, window_, seed_, static_cast<uint64_t>(index));
    row_ += batch_;
    TrainBatch out;
    out.tokens = b.tokens;
    out.targets = b.targets;
    out.mask = b.mask;
    out.answers = b.answers;
    return out;
}

int64_t RecallBatchSource::next_row(int32_t* tokens, int32_t* targets, float* mask) {
    const RecallBatch& b = batch_for_row(row_);
    const int64_t offset = (row_ % batch_) * seq_len_;
    ++row_;
    const int32_t* t = b.tokens.data<int32_t>() + offset;
    const int32_t* g = b.targets.data<int32_t>() + offset;
    const float* m = b.mask.data<float>() + offset;
    int64_t answers = 0;
    for (int64_t i = 0; i < seq_len_; ++i) {
        tokens[i] = t[i];
        targets[i] = g[i];
        mask[i] = m[i];
        answers += m[i] != 0.0f;
    }
    return answers;
}

Json RecallBatchSource::state() const {
    Json s = Json::object();
    s["kind"] = kind();
    s["row"] = row_;
    s["seed"] = seed_text(seed_);
    add_rank(s);
    return s;
}

void RecallBatchSource::restore(const Json& state) {
    check_state(state, "seed", Json(seed_text(seed_)));
    check_rank(state);
    row_ = counter_field(state_field(state, "row"), "recall row");
}

// ---------------------------------------------------------------- MixtureSource

namespace {
int64_t first_batch(const std::vector<std::unique_ptr<RowSource>>& children) {
    if (children.empty() || !children.front()) throw ConfigError("data: a mixture needs at least one source");
    return children.front()->batch();
}
int64_t first_seq_len(const std::vector<std::unique_ptr<RowSource>>& children) {
    if (children.empty() || !children.front()) throw ConfigError("data: a mixture needs at least one source");
    return children.front()->seq_len();
}
DataRank first_rank(const std::vector<std::unique_ptr<RowSource>>& children) {
    if (children.empty() || !children.front()) throw ConfigError("data: a mixture needs at least one source");
    return children.front()->data_rank();
}
}  // namespace

MixtureSource::MixtureSource(std::vector<std::unique_ptr<RowSource>> children, std::vector<double> weights, uint64_t seed)
    : RowSource(first_batch(children), first_seq_len(children), first_rank(children)), children_(std::move(children)),
      weights_(std::move(weights)),
      seed_(seed) {
    if (weights_.size() != children_.size())
        throw ConfigError("data: a mixture of " + std::to_string(children_.size()) + " sources got " +
                          std::to_string(weights_.size()) + " weights");
    double total = 0;
    for (size_t i = 0; i < children_.size(); ++i) {
        if (!children_[i]) throw ConfigError("data: a mixture source is missing");
        if (children_[i]->batch() != batch_ || children_[i]->seq_len() != seq_len_ ||
            children_[i]->data_rank().rank != rank_.rank || children_[i]->data_rank().ranks != rank_.ranks)
            throw ConfigError("data: mixture sources differ in batch, seq_len or data rank");
        for (size_t j = 0; j < i; ++j)
            if (std::string(children_[j]->kind()) == children_[i]->kind())
                throw ConfigError(std::string("data: two mixture sources of kind ") + children_[i]->kind());
        if (!std::isfinite(weights_[i]) || weights_[i] <= 0)
            throw ConfigError(std::string("data: the mixture weight of ") + children_[i]->kind() + " must be > 0, got " +
                              number_text(weights_[i]));
        total += weights_[i];
    }
    double running = 0;
    for (double w : weights_) cumulative_.push_back((running += w) / total);
    rows_from_.assign(children_.size(), 0);
}

int64_t MixtureSource::next_row(int32_t* tokens, int32_t* targets, float* mask) {
    const double u = unit_double(mix64(seed_ ^ kMixtureTag, static_cast<uint64_t>(row_ * rank_.ranks + rank_.rank), 0));
    size_t pick = 0;
    while (pick + 1 < cumulative_.size() && u >= cumulative_[pick]) ++pick;
    ++row_;
    ++rows_from_[pick];
    return children_[pick]->next_row(tokens, targets, mask);
}

Json MixtureSource::state() const {
    Json s = Json::object();
    s["kind"] = kind();
    s["row"] = row_;
    s["seed"] = seed_text(seed_);
    add_rank(s);
    Json weights = Json::object(), rows = Json::object(), children = Json::object();
    for (size_t i = 0; i < children_.size(); ++i) {
        const std::string name = children_[i]->kind();
        weights[name] = weights_[i];
        rows[name] = rows_from_[i];
        children[name] = children_[i]->state();
    }
    s["weights"] = weights;
    s["rows"] = rows;
    s["children"] = children;
    return s;
}

void MixtureSource::restore(const Json& state) {
    check_state(state, "seed", Json(seed_text(seed_)));
    check_rank(state);
    Json weights = Json::object();
    for (size_t i = 0; i < children_.size(); ++i) weights[children_[i]->kind()] = weights_[i];
    check_state(state, "weights", weights);
    const Json& rows = state_field(state, "rows");
    const Json& children = state_field(state, "children");
    if (!rows.is_object() || !children.is_object()) throw ConfigError("data state: the mixture's rows and children must be objects");
    std::vector<int64_t> rows_from(children_.size());
    for (size_t i = 0; i < children_.size(); ++i) {
        const std::string name = children_[i]->kind();
        if (!rows.contains(name) || !children.contains(name))
            throw ConfigError("data state: the mixture's state has no entry for its " + name + " source");
        rows_from[i] = counter_field(rows.at(name), "mixture rows of " + name);
    }
    const int64_t row = counter_field(state_field(state, "row"), "mixture row");
    // All or nothing: if a child rejects its state, the children restored before it go back.
    std::vector<Json> before;
    for (const auto& child : children_) before.push_back(child->state());
    size_t restored = 0;
    try {
        for (; restored < children_.size(); ++restored) children_[restored]->restore(children.at(children_[restored]->kind()));
    } catch (...) {
        for (size_t i = 0; i < restored; ++i) children_[i]->restore(before[i]);
        throw;
    }
    rows_from_ = rows_from;
    row_ = row;
}

// ---------------------------------------------------------------- the factory

std::unique_ptr<BatchSource> make_batch_source(const DataConfig& config, int64_t batch, int64_t seq_len, int64_t window,
                                               int64_t vocab_size, uint64_t seed, bool held_out, int64_t data_rank,
                                               int64_t data_ranks) {
    config.validate(seq_len, window, vocab_size);
    const DataRank rank{data_rank, data_ranks};
    const uint64_t source_seed = held_out ? seed + kHeldOutSeedOffset : seed;
    std::vector<std::unique_ptr<RowSource>> children;
    std::vector<double> weights;
    const ShardBatchSource* text = nullptr;
    if (config.weights.text > 0) {
        ShardSourceOptions o;
        const bool separate = !config.held_out_shards.empty();
        if (held_out && !separate && config.held_out_fraction == 0)
            throw ConfigError("config data.held_out_fraction: is 0 and data.held_out_shards is empty, so there is no held-out text");
        o.files = expand_shard_patterns(held_out && separate ? config.held_out_shards : config.shards,
                                        held_out && separate ? "config data.held_out_shards" : "config data.shards");
        o.batch = batch;
        o.seq_len = seq_len;
        o.vocab_size = vocab_size;
        o.seed = source_seed;
        // Evaluation reads its split in order, so every evaluation pass covers the same windows.
        o.shuffle = config.shuffle && !held_out;
        o.held_out = held_out;
        o.held_out_fraction = separate ? 0 : config.held_out_fraction;
        o.rank = rank;
        auto source = std::make_unique<ShardBatchSource>(std::move(o));
        text = source.get();
        children.push_back(std::move(source));
        weights.push_back(config.weights.text);
    }
    if (config.weights.tasks > 0) {
        TaskSourceOptions o;
        o.tasks = config.tasks;
        o.lengths = config.task_lengths;
        o.tokenizer = config.tokenizer;
        o.haystack_file = config.haystack_file;
        o.batch = batch;
        o.seq_len = seq_len;
        o.vocab_size = vocab_size;
        o.seed = source_seed;
        o.rank = rank;
        auto source = std::make_unique<TaskBatchSource>(std::move(o));
        if (text && source->tokenizer().name() != text->format().tokenizer)
            throw ConfigError("config data.tokenizer: the tasks are rendered with '" + source->tokenizer().name() +
                              "' but the shards were tokenized with '" + text->format().tokenizer +
                              "'; text and tasks must share one tokenizer");
        children.push_back(std::move(source));
        weights.push_back(config.weights.tasks);
    }
    if (config.weights.recall > 0) {
        children.push_back(std::make_unique<RecallBatchSource>(config.recall, batch, seq_len, window, source_seed, rank));
        weights.push_back(config.weights.recall);
    }
    if (children.size() == 1) return std::move(children.front());
    return std::make_unique<MixtureSource>(std::move(children), std::move(weights), source_seed);
}

}  // namespace hsa
