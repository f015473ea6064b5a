#include "trainers/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <sstream>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/cuda_allocator.h"
#include "core/model/model.h"
#include "core/ops.h"
#include "core/optimizer.h"
#include "core/precision.h"
#include "trainers/checkpoint.h"
#include "trainers/plot.h"
#include "trainers/train_log.h"

namespace hsa {

// ---------------------------------------------------------------- configuration

TrainConfig TrainConfig::from_json(const Json& section) {
    TrainConfig t;
    ConfigReader r(section, "train");
    r.read("steps", t.steps);
    r.read("batch_size", t.batch_size);
    r.read("grad_accum", t.grad_accum);
    r.read("seq_len", t.seq_len);
    r.read("lr", t.lr);
    r.read("min_lr_ratio", t.min_lr_ratio);
    r.read("warmup", t.warmup);
    r.read("weight_decay", t.weight_decay);
    r.read("beta1", t.beta1);
    r.read("beta2", t.beta2);
    r.read("grad_clip", t.grad_clip);
    r.read("seed", t.seed);
    r.read("log_every", t.log_every);
    r.read("eval_every", t.eval_every);
    r.read("eval_batches", t.eval_batches);
    r.read("device", t.device);
    r.read("precision", t.precision);
    r.read("out_dir", t.out_dir);
    r.read("save_every", t.save_every);
    r.read("keep_checkpoints", t.keep_checkpoints);
    r.read("max_bad_steps", t.max_bad_steps);
    if (const Json* steps = r.raw("inject_nan_steps")) {
        if (!steps->is_array()) r.fail("inject_nan_steps", std::string("expected a list of step numbers, got ") + steps->kind_name());
        for (const Json& s : steps->items()) {
            if (!s.is_number() || s.as_number() != std::floor(s.as_number()) || s.as_number() < 1 || s.as_number() > 9e15)
                r.fail("inject_nan_steps", "expected step numbers >= 1, got " + s.dump());
            t.inject_nan_steps.push_back(static_cast<int64_t>(s.as_number()));
        }
    }
    r.finish();
    auto bad = [](const std::string& what) { throw ConfigError("config train." + what); };
    if (t.steps < 1) bad("steps: must be >= 1, got " + std::to_string(t.steps));
    if (t.batch_size < 1) bad("batch_size: must be >= 1, got " + std::to_string(t.batch_size));
    if (t.grad_accum < 1) bad("grad_accum: must be >= 1, got " + std::to_string(t.grad_accum));
    if (t.seq_len < 2) bad("seq_len: must be >= 2, got " + std::to_string(t.seq_len));
    if (!(t.lr > 0)) bad("lr: must be > 0");
    if (t.min_lr_ratio < 0 || t.min_lr_ratio > 1) bad("min_lr_ratio: must be in [0, 1]");
    if (t.warmup < 0) bad("warmup: must be >= 0");
    if (t.weight_decay < 0) bad("weight_decay: must be >= 0");
    if (!(t.beta1 >= 0 && t.beta1 < 1)) bad("beta1: must be in [0, 1)");
    if (!(t.beta2 >= 0 && t.beta2 < 1)) bad("beta2: must be in [0, 1)");
    if (t.grad_clip < 0) bad("grad_clip: must be >= 0 (0 = off)");
    if (t.seed < 0) bad("seed: must be >= 0");
    if (t.log_every < 1) bad("log_every: must be >= 1");
    if (t.eval_every < 0) bad("eval_every: must be >= 0");
    if (t.eval_batches < 1) bad("eval_batches: must be >= 1");
    if (t.device != "cpu" && t.device != "cuda") bad("device: expected \"cpu\" or \"cuda\", got \"" + t.device + "\"");
    if (t.precision != "f32" && t.precision != "bf16")
        bad("precision: expected \"f32\" or \"bf16\", got \"" + t.precision + "\"");
    if (t.out_dir.empty()) bad("out_dir: must name a folder");
    if (t.save_every < 0) bad("save_every: must be >= 0 (0 = only at the end), got " + std::to_string(t.save_every));
    if (t.keep_checkpoints < 0) bad("keep_checkpoints: must be >= 0 (0 = keep all), got " + std::to_string(t.keep_checkpoints));
    if (t.max_bad_steps < 1) bad("max_bad_steps: must be >= 1, got " + std::to_string(t.max_bad_steps));
    if (t.device == "cuda" && !cuda_available())
        bad("device: \"cuda\" asked for, but no GPU is visible (or this build has no CUDA support)");
    return t;
}

Json TrainConfig::to_json() const {
    Json j = Json::object();
    j["steps"] = steps;
    j["batch_size"] = batch_size;
    j["grad_accum"] = grad_accum;
    j["seq_len"] = seq_len;
    j["lr"] = lr;
    j["min_lr_ratio"] = min_lr_ratio;
    j["warmup"] = warmup;
    j["weight_decay"] = weight_decay;
    j["beta1"] = beta1;
    j["beta2"] = beta2;
    j["grad_clip"] = grad_clip;
    j["seed"] = seed;
    j["log_every"] = log_every;
    j["eval_every"] = eval_every;
    j["eval_batches"] = eval_batches;
    j["device"] = device;
    j["precision"] = precision;
    j["out_dir"] = out_dir;
    j["save_every"] = save_every;
    j["keep_checkpoints"] = keep_checkpoints;
    j["max_bad_steps"] = max_bad_steps;
    Json injected = Json::array();
    for (int64_t s : inject_nan_steps) injected.push_back(s);
    j["inject_nan_steps"] = injected;
    return j;
}

Json FullConfig::to_json() const {
    Json root = Json::object();
    root["model"] = model.to_json();
    root["train"] = train.to_json();
    root["task"] = task.to_json();
    Json data_section = Json::object();
    const Json all_data = data.to_json();
    for (const auto& [key, value] : all_data.fields())
        if (key != "recall") data_section[key] = value;  // the "task" section holds it
    root["data"] = data_section;
    return root;
}

double TrainConfig::lr_at(int64_t step) const {
    if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
    const double span = std::max<int64_t>(1, steps - warmup);
    const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
    const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine);
}

FullConfig FullConfig::from_json(const Json& root) {
    if (!root.is_object()) throw ConfigError(std::string("config: expected a JSON object at the top, got ") + root.kind_name());
    FullConfig c;
    for (const auto& [key, value] : root.fields())
        if (key != "model" && key != "train" && key != "task" && key != "data")
            throw ConfigError("config: unknown section \"" + key + "\" (known: model, train, task, data)");
    c.model = ModelConfig::from_json(root.contains("model") ? root.at("model") : Json::object());
    c.train = TrainConfig::from_json(root.contains("train") ? root.at("train") : Json::object());
    c.task = RecallTaskConfig::from_json(root.contains("task") ? root.at("task") : Json::object());
    const Json data = root.contains("data") ? root.at("data") : Json::object();
    // One place for the recall task's settings: the "task" section, which configs had first.
    if (data.is_object() && data.contains("recall"))
        throw ConfigError("config data.recall: the recall task is configured in the \"task\" section (task.pairs, task.keys, "
                          "task.values, task.filler, task.rounds), not in data");
    c.data = DataConfig::from_json(data);
    c.data.recall = c.task;
    if (c.data.weights.recall > 0) c.task.validate(c.train.seq_len, c.model.window, c.model.vocab_size);
    c.data.validate(c.train.seq_len, c.model.window, c.model.vocab_size);
    return c;
}

Json default_train_config() {
    Json root = Json::object();
    root["model"] = Json::object();
    root["train"] = Json::object();
    root["task"] = Json::object();
    root["data"] = Json::object();
    return root;
}

// ---------------------------------------------------------------- data

namespace {

// Rows [start, start + count) of a batch (host tensors), for micro-batches.
TrainBatch slice_rows(const TrainBatch& batch, int64_t start, int64_t count) {
    auto rows = [&](const Tensor& t) {
        const int64_t T = t.size(1);
        Tensor host = t.to(Device::CPU).contiguous();
        Tensor out = Tensor::empty({count, T}, host.dtype());
        const size_t row_bytes = static_cast<size_t>(T) * dtype_size(host.dtype());
        std::memcpy(out.raw_data(), static_cast<const char*>(host.raw_data()) + static_cast<size_t>(start) * row_bytes,
                    static_cast<size_t>(count) * row_bytes);
        return out;
    };
    TrainBatch out;
    out.tokens = rows(batch.tokens);
    out.targets = rows(batch.targets);
    out.mask = rows(batch.mask);
    return out;
}

// The cross-entropy's normaliser for a batch: the summed mask over positions with a target,
// exactly as ops::cross_entropy computes it. Micro-batch losses weighted by their share of
// it add up to the loss of the whole batch.
double loss_weight(const TrainBatch& batch) {
    Tensor targets = batch.targets.to(Device::CPU).contiguous();
    Tensor mask = batch.mask.to(Device::CPU).to(DType::F32).contiguous();
    const int32_t* t = targets.data<int32_t>();
    const float* m = mask.data<float>();
    double total = 0;
    for (int64_t i = 0; i < targets.numel(); ++i)
        if (t[i] >= 0) total += static_cast<double>(m[i]);
    return total;
}

EvalResult evaluate_source(Model& model, BatchSource& source, int64_t batches, const std::vector<Tensor>* fixed_selection) {
    NoGradGuard no_grad;
    ForwardOptions options;
    options.training = false;
    options.fixed_selection = fixed_selection;
    const int64_t V = model.config().vocab_size;
    int64_t correct = 0, answers = 0;
    double loss_sum = 0;
    for (int64_t i = 0; i < batches; ++i) {
        TrainBatch batch = source.next();
        Tensor logits = model.forward(batch.tokens, options);
        const int64_t n = batch.tokens.numel();
        loss_sum += ops::cross_entropy(ops::reshape(logits, {n, V}), batch.targets.view({n}).to(model.device()),
                                       batch.mask.view({n}).to(model.device()))
                        .item();
        Tensor host = logits.to(Device::CPU).to(DType::F32).contiguous();
        const float* l = host.data<float>();
        const float* mask = batch.mask.data<float>();
        const int32_t* targets = batch.targets.data<int32_t>();
        for (int64_t p = 0; p < n; ++p) {
            if (mask[p] == 0.0f || targets[p] < 0) continue;
            const float* row = l + p * V;
            correct += (std::max_element(row, row + V) - row) == targets[p];
            ++answers;
        }
    }
    EvalResult result;
    result.accuracy = answers ? static_cast<double>(correct) / static_cast<double>(answers) : 0.0;
    result.loss = loss_sum / static_cast<double>(batches);
    return result;
}

}  // namespace

std::unique_ptr<BatchSource> make_training_batch_source(const FullConfig& config, bool held_out) {
    const TrainConfig& tc = config.train;
    const int64_t rows = held_out ? tc.batch_size : tc.batch_size * tc.grad_accum;
    return make_batch_source(config.data, rows, tc.seq_len, config.model.window, config.model.vocab_size,
                             static_cast<uint64_t>(tc.seed), held_out);
}

EvalResult evaluate_batches(Model& model, BatchSource& source, int64_t batches) {
    return evaluate_source(model, source, batches, nullptr);
}

EvalResult evaluate_recall(Model& model, const FullConfig& config, int64_t batches, const std::vector<Tensor>* fixed_selection) {
    RecallBatchSource source(config.task, config.train.batch_size, config.train.seq_len, config.model.window,
                             static_cast<uint64_t>(config.train.seed) + kHeldOutSeedOffset);
    return evaluate_source(model, source, batches, fixed_selection);
}

// ---------------------------------------------------------------- the loop

namespace {

struct StepOutcome {
    float loss = 0;
    double grad_norm = 0;
    std::string bad;  // why the step made no update; empty for a good step
};

// One optimizer step over a global batch of grad_accum micro-batches: each micro-batch's
// mean loss is weighted by its share of the batch's loss positions, so the summed gradient
// is the gradient of the whole batch's mean loss (up to float rounding). A non-finite loss
// or gradient norm leaves the weights and optimizer state untouched.
StepOutcome train_step(Model& model, AdamW& optimizer, const TrainBatch& batch, const TrainConfig& tc, int64_t step,
                       double lr) {
    StepOutcome out;
    model.parameters().zero_grad();
    const double total_weight = loss_weight(batch);
    if (!(total_weight > 0)) {
        out.loss = std::numeric_limits<float>::quiet_NaN();
        out.bad = "the batch has no loss positions";
        return out;
    }
    const bool inject_nan = std::find(tc.inject_nan_steps.begin(), tc.inject_nan_steps.end(), step + 1) != tc.inject_nan_steps.end();
    double loss_sum = 0;
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
        const TrainBatch part = tc.grad_accum == 1 ? batch : slice_rows(batch, micro * tc.batch_size, tc.batch_size);
        const double share = tc.grad_accum == 1 ? 1.0 : loss_weight(part) / total_weight;
        if (share == 0) continue;  // no loss positions in this micro-batch: nothing to learn from it
        Tensor loss = model.loss(part.tokens, part.targets, part.mask);
        float value = loss.item();
        if (inject_nan && micro == 0) value = std::numeric_limits<float>::quiet_NaN();
        if (!std::isfinite(value)) {
            Tape::current().clear();  // the recorded forward pass is not backpropagated
            model.parameters().zero_grad();
            out.loss = value;
            out.bad = std::string("loss is ") + (std::isnan(value) ? "nan" : "inf");
            return out;
        }
        loss_sum += share * static_cast<double>(value);
        backward(tc.grad_accum == 1 ? loss : ops::scale(loss, static_cast<float>(share)));
    }
    out.loss = static_cast<float>(loss_sum);
    out.grad_norm = optimizer.grad_norm();
    if (!std::isfinite(out.grad_norm)) {
        model.parameters().zero_grad();
        out.bad = std::string("gradient norm is ") + (std::isnan(out.grad_norm) ? "nan" : "inf");
        return out;
    }
    optimizer.clipped_step(static_cast<float>(lr), tc.grad_clip, out.grad_norm);
    return out;
}

// Number for a log record; JSON has no NaN or Inf, so those become null.
Json finite_or_null(double value) { return std::isfinite(value) ? Json(value) : Json(); }

// The out_dir of a run and what it writes there.
struct RunFolder {
    std::string root, checkpoints, log, config;
    explicit RunFolder(const std::string& out_dir)
        : root(out_dir), checkpoints(out_dir + "/checkpoints"), log(out_dir + "/log.jsonl"), config(out_dir + "/config.json") {}
};

// The newest checkpoint of `files` (ascending) that reads and verifies; damaged ones are
// reported with a warning line and skipped. Throws when none is usable.
Checkpoint newest_loadable_checkpoint(const std::vector<CheckpointFile>& files, std::ostream* progress) {
    std::string newest_problem;
    for (size_t i = files.size(); i-- > 0;) {
        try {
            return read_checkpoint(files[i].path, true);
        } catch (const Error& e) {
            if (newest_problem.empty()) newest_problem = e.what();
            if (progress) {
                *progress << "warning: cannot use checkpoint " << files[i].path << ": " << e.what();
                if (i > 0) *progress << "; falling back to " << files[i - 1].path;
                *progress << "\n" << std::flush;
            }
        }
    }
    HSA_FAIL("resume: none of the " << files.size() << " checkpoints in " << std::filesystem::path(files.back().path).parent_path().string()
                                    << " can be read (newest: " << newest_problem << ")");
}

std::string weight_text(double weight) {
    std::ostringstream out;
    out << weight;
    return out.str();
}

}  // namespace

bool recall_only(const FullConfig& config) {
    return config.data.weights.text == 0 && config.data.weights.tasks == 0 && config.data.weights.recall > 0;
}

std::string describe_data(const FullConfig& config) {
    std::ostringstream out;
    if (recall_only(config)) {
        out << "recall task with " << config.task.pairs << " pairs (chance " << std::fixed << std::setprecision(3)
            << 1.0 / static_cast<double>(config.task.values) << ")";
        return out.str();
    }
    const DataWeights& w = config.data.weights;
    std::string parts;
    auto add = [&](const std::string& part) { parts += (parts.empty() ? "" : ", ") + part; };
    if (w.text > 0) add("text from " + std::to_string(config.data.shards.size()) + " shard pattern(s) (weight " + weight_text(w.text) + ")");
    if (w.tasks > 0) {
        std::string names;
        for (const auto& t : config.data.tasks) names += (names.empty() ? "" : ",") + t;
        add("tasks " + names + " (weight " + weight_text(w.tasks) + ")");
    }
    if (w.recall > 0) add("recall task (weight " + weight_text(w.recall) + ")");
    return parts;
}

namespace {

class Plotter {
public:
    Plotter(const RunFolder& folder, std::ostream* progress)
        : folder_(folder), progress_(progress), last_(std::chrono::steady_clock::now()) {}
    // Redraws the curves from log.jsonl; at most every 30 s unless forced (the run's end), so
    // a short run draws once and a long one keeps its PNGs fresh at little cost.
    void draw(bool force) {
        const auto now = std::chrono::steady_clock::now();
        if (!force && now - last_ < std::chrono::seconds(30)) return;
        last_ = now;
        if (!gnuplot_available()) {
            if (!warned_ && progress_)
                *progress_ << "warning: gnuplot not found: no loss.png (install gnuplot-nox, see launch/setup.sh)\n" << std::flush;
            warned_ = true;
            return;
        }
        try {
            plot_training_log(read_train_log(folder_.log), folder_.root);
        } catch (const Error& e) {
            if (!warned_ && progress_) *progress_ << "warning: " << e.what() << "\n" << std::flush;
            warned_ = true;
        }
    }

private:
    const RunFolder& folder_;
    std::ostream* progress_;
    bool warned_ = false;
    std::chrono::steady_clock::time_point last_;
};

}  // namespace

TrainResult run_training(const FullConfig& config, const RunOptions& options, Model* existing) {
    const TrainConfig& tc = config.train;
    std::ostream* progress = options.progress;
    std::unique_ptr<Model> owned;
    if (!existing)
        owned = std::make_unique<Model>(config.model, static_cast<uint64_t>(tc.seed),
                                        tc.device == "cuda" ? Device::CUDA : Device::CPU);
    Model& model = existing ? *existing : *owned;
    AdamWConfig adam;
    adam.beta1 = static_cast<float>(tc.beta1);
    adam.beta2 = static_cast<float>(tc.beta2);
    adam.weight_decay = static_cast<float>(tc.weight_decay);
    AdamW optimizer(model.parameters(), adam);
    std::unique_ptr<BatchSource> source = make_training_batch_source(config, false);
    std::unique_ptr<BatchSource> held_out = make_training_batch_source(config, true);
    const Json held_out_start = held_out->state();  // every evaluation sees the same batches
    const Json resolved = config.to_json();

    // Where the run stands; a resumed run starts from its checkpoint's values.
    CheckpointState run;
    TrainResult result;
    const RunFolder folder(tc.out_dir);
    std::unique_ptr<TrainLog> log;
    if (options.write_outputs) {
        std::error_code ec;
        std::filesystem::create_directories(folder.checkpoints, ec);
        if (ec) throw ConfigError("train.out_dir: cannot create '" + folder.checkpoints + "': " + ec.message());
        const int stale = remove_checkpoint_temporaries(folder.checkpoints);
        if (stale > 0 && progress)
            *progress << "removed " << stale << " unfinished checkpoint file(s) of a killed run in " << folder.checkpoints << "\n";
        const std::vector<CheckpointFile> files = list_checkpoints(folder.checkpoints);
        if (options.resume) {
            if (files.empty()) {
                if (progress) *progress << "resume: no checkpoint in " << folder.checkpoints << ": starting at step 0\n";
            } else {
                Checkpoint checkpoint = newest_loadable_checkpoint(files, progress);
                const std::string difference = first_config_difference(checkpoint.state.config, resolved);
                if (!difference.empty()) {
                    std::string may_change;
                    for (const auto& field : bookkeeping_config_fields()) may_change += (may_change.empty() ? "" : ", ") + field;
                    throw ConfigError("resume: the configuration differs from the one of " + checkpoint.path + " in " + difference +
                                      " (only " + may_change + " may change)");
                }
                apply_checkpoint(checkpoint, model.parameters(), &optimizer);
                source->restore(checkpoint.state.data_state);
                run = checkpoint.state;
                result.last_checkpoint = checkpoint.path;
                if (progress)
                    *progress << "resuming from " << checkpoint.path << " (step " << run.step << " of " << tc.steps << ", "
                              << run.tokens_seen << " tokens seen)\n";
            }
        } else if (!files.empty()) {
            if (!options.overwrite)
                throw ConfigError("train.out_dir '" + tc.out_dir + "' already holds checkpoints of a run (newest " +
                                  files.back().path + "): pass --resume to continue it, --overwrite to start over, or choose "
                                  "another train.out_dir");
            for (const auto& f : files) std::filesystem::remove(f.path, ec);
            if (progress)
                *progress << "overwrite: removed " << files.size() << " checkpoint(s) of an earlier run in " << folder.checkpoints
                          << "\n";
        }
        write_file_atomically(folder.config, resolved.dump(2) + "\n");
        log = std::make_unique<TrainLog>(folder.log, run.step);
    }
    if (progress)
        *progress << "model: " << model.parameters().count() << " parameters, depth " << config.model.depth() << "; data: "
                  << describe_data(config) << "\n";
    result.first_step = run.step;
    result.skipped_steps = run.skipped_steps;
    run.config = resolved;
    run.rng_state = Json::object();
    // The model's initial weights come from train.seed; the data streams' counters are in
    // data_state. Nothing else in the loop draws random numbers.
    run.rng_state["seed"] = tc.seed;
    run.rng_state["held_out_seed"] = static_cast<int64_t>(static_cast<uint64_t>(tc.seed) + kHeldOutSeedOffset);

    if (run.step >= tc.steps) {
        if (progress) *progress << "the run is already complete (step " << run.step << " of " << tc.steps << "): nothing to do\n";
        return result;
    }

    Plotter plotter(folder, progress);
    auto save = [&]() {
        run.optimizer_steps = optimizer.steps_taken();
        run.data_state = source->state();
        const std::string path = folder.checkpoints + "/" + checkpoint_file_name(run.step);
        save_checkpoint(path, run, model.parameters(), optimizer);
        prune_checkpoints(folder.checkpoints, tc.keep_checkpoints);
        result.last_checkpoint = path;
    };

    MatmulPrecisionScope precision(parse_matmul_precision(tc.precision));
    const auto start = std::chrono::steady_clock::now();
    const int64_t tokens_per_step = tc.batch_size * tc.grad_accum * tc.seq_len;
    const int64_t first_step = run.step;
    for (int64_t step = first_step; step < tc.steps; ++step) {
        const auto step_start = std::chrono::steady_clock::now();
        const double lr = tc.lr_at(step);
        const TrainBatch batch = source->next();
        const StepOutcome outcome = train_step(model, optimizer, batch, tc, step, lr);
        const double step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
        run.step = step + 1;
        run.tokens_seen += tokens_per_step;
        if (outcome.bad.empty()) {
            run.consecutive_bad_steps = 0;
        } else {
            ++run.consecutive_bad_steps;
            ++run.skipped_steps;
        }
        result.losses.push_back(outcome.bad.empty() ? outcome.loss : std::numeric_limits<float>::quiet_NaN());
        result.grad_norms.push_back(outcome.grad_norm);
        result.skipped_steps = run.skipped_steps;

        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double rate = static_cast<double>((run.step - first_step) * tokens_per_step) / std::max(elapsed, 1e-9);
        result.tokens_per_second = rate;
        const bool last = run.step == tc.steps;

        Json record = Json::object();
        record["step"] = run.step;
        record["loss"] = outcome.bad.empty() ? finite_or_null(outcome.loss) : Json();
        record["lr"] = lr;
        record["grad_norm"] = finite_or_null(outcome.grad_norm);
        record["tokens_per_s"] = static_cast<double>(tokens_per_step) / std::max(step_seconds, 1e-9);
        record["tokens_seen"] = run.tokens_seen;
        record["peak_memory_bytes"] = peak_memory_bytes(model.device());
        if (!outcome.bad.empty()) record["skipped"] = outcome.bad;

        if (!outcome.bad.empty() && progress)
            *progress << "step " << run.step << "/" << tc.steps << ": " << outcome.bad << ": step skipped, no update ("
                      << run.consecutive_bad_steps << " in a row; the run stops at train.max_bad_steps = " << tc.max_bad_steps
                      << ")\n" << std::flush;
        if (progress && outcome.bad.empty() && (run.step % tc.log_every == 0 || last)) {
            const double eta = elapsed / static_cast<double>(run.step - first_step) * static_cast<double>(tc.steps - run.step);
            *progress << "step " << std::setw(5) << run.step << "/" << tc.steps << "  loss " << std::fixed << std::setprecision(4)
                      << outcome.loss << "  lr " << std::scientific << std::setprecision(2) << lr << std::fixed << "  grad-norm "
                      << std::setprecision(3) << outcome.grad_norm << "  " << std::setprecision(0) << rate << " tok/s  ETA "
                      << format_duration(eta);
            if (model.device() == Device::CUDA)
                *progress << "  GPU mem " << std::setprecision(2)
                          << static_cast<double>(peak_memory_bytes(Device::CUDA)) / (1 << 30) << " GiB peak";
            *progress << "\n" << std::flush;
        }
        if ((tc.eval_every > 0 && run.step % tc.eval_every == 0) || last) {
            held_out->restore(held_out_start);
            const EvalResult eval = evaluate_source(model, *held_out, tc.eval_batches, nullptr);
            result.final_accuracy = eval.accuracy;
            result.final_eval_loss = eval.loss;
            record["eval_loss"] = finite_or_null(eval.loss);
            record["eval_accuracy"] = eval.accuracy;
            if (progress)
                *progress << "eval at step " << run.step << ": held-out answer loss " << std::fixed << std::setprecision(4)
                          << eval.loss << ", " << (recall_only(config) ? "recall" : "answer") << " accuracy "
                          << std::setprecision(3) << eval.accuracy << "\n"
                          << std::flush;
        }
        if (log) log->append(record);

        if (run.consecutive_bad_steps >= tc.max_bad_steps) {
            if (log) plotter.draw(true);
            std::ostringstream message;
            message << "training diverged: " << run.consecutive_bad_steps << " consecutive steps without an update (step "
                    << run.step << ": " << outcome.bad << "; train.max_bad_steps = " << tc.max_bad_steps << ")";
            if (log)
                message << "; " << (result.last_checkpoint.empty() ? "no checkpoint was written yet"
                                                                   : "the newest checkpoint is " + result.last_checkpoint);
            throw TrainingDiverged(message.str());
        }
        const bool interrupted = options.stop_requested && *options.stop_requested != 0;
        if (log && (last || interrupted || (tc.save_every > 0 && run.step % tc.save_every == 0))) {
            save();
            plotter.draw(last || interrupted);
        }
        if (interrupted && !last) {
            std::ostringstream message;
            message << "interrupted at step " << run.step << " of " << tc.steps;
            if (log) message << ": checkpoint " << result.last_checkpoint << " written; continue with --resume";
            throw TrainingInterrupted(message.str());
        }
    }
    return result;
}

TrainResult train_recall(const FullConfig& config, std::ostream* progress, Model* model) {
    RunOptions options;
    options.progress = progress;
    options.write_outputs = false;
    return run_training(config, options, model);
}

}  // namespace hsa
