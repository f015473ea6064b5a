#include "trainers/trainer.h"

#include <chrono>
#include <cmath>
#include <iomanip>
#include <memory>
#include <sstream>

#include "core/autograd.h"
#include "core/cuda_allocator.h"
#include "core/model/model.h"
#include "core/ops.h"
#include "core/optimizer.h"
#include "core/precision.h"

namespace hsa {

TrainConfig TrainConfig::from_json(const Json& section) {
    TrainConfig t;
    ConfigReader r(section, "train");
    r.read("steps", t.steps);
    r.read("batch_size", t.batch_size);
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
    r.finish();
    auto bad = [](const std::string& what) { throw ConfigError("config train." + what); };
    if (t.steps < 1) bad("steps: must be >= 1, got " + std::to_string(t.steps));
    if (t.batch_size < 1) bad("batch_size: must be >= 1, got " + std::to_string(t.batch_size));
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
    if (t.device == "cuda" && !cuda_available())
        bad("device: \"cuda\" asked for, but no GPU is visible (or this build has no CUDA support)");
    return t;
}

Json TrainConfig::to_json() const {
    Json j = Json::object();
    j["steps"] = steps;
    j["batch_size"] = batch_size;
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
    return j;
}

Json FullConfig::to_json() const {
    Json root = Json::object();
    root["model"] = model.to_json();
    root["train"] = train.to_json();
    root["task"] = task.to_json();
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
        if (key != "model" && key != "train" && key != "task")
            throw ConfigError("config: unknown section \"" + key + "\" (known: model, train, task)");
    c.model = ModelConfig::from_json(root.contains("model") ? root.at("model") : Json::object());
    c.train = TrainConfig::from_json(root.contains("train") ? root.at("train") : Json::object());
    c.task = RecallTaskConfig::from_json(root.contains("task") ? root.at("task") : Json::object());
    c.task.validate(c.train.seq_len, c.model.window, c.model.vocab_size);
    return c;
}

Json default_train_config() {
    Json root = Json::object();
    root["model"] = Json::object();
    root["train"] = Json::object();
    root["task"] = Json::object();
    return root;
}

namespace {
// Held-out batches come from a different seed stream than training batches.
constexpr uint64_t kEvalSeedOffset = 0x5eed0000ull;

std::string format_duration(double seconds) {
    std::ostringstream out;
    int64_t s = static_cast<int64_t>(seconds + 0.5);
    if (s >= 3600) out << s / 3600 << "h" << std::setw(2) << std::setfill('0') << (s % 3600) / 60 << "m";
    else if (s >= 60) out << s / 60 << "m" << std::setw(2) << std::setfill('0') << s % 60 << "s";
    else out << s << "s";
    return out.str();
}
}  // namespace

EvalResult evaluate_recall(Model& model, const FullConfig& config, int64_t batches,
                           const std::vector<Tensor>* fixed_selection) {
    NoGradGuard no_grad;
    EvalResult result;
    ForwardOptions options;
    options.training = false;
    options.fixed_selection = fixed_selection;
    for (int64_t i = 0; i < batches; ++i) {
        RecallBatch batch = make_recall_batch(config.task, config.train.batch_size, config.train.seq_len, config.model.window,
                                              static_cast<uint64_t>(config.train.seed) + kEvalSeedOffset, static_cast<uint64_t>(i));
        Tensor logits = model.forward(batch.tokens, options);
        result.accuracy += recall_accuracy(logits, batch);
        const int64_t n = batch.tokens.numel();
        result.loss += ops::cross_entropy(ops::reshape(logits, {n, config.model.vocab_size}),
                                          batch.targets.view({n}).to(model.device()), batch.mask.view({n}).to(model.device()))
                           .item();
    }
    result.accuracy /= static_cast<double>(batches);
    result.loss /= static_cast<double>(batches);
    return result;
}

TrainResult train_recall(const FullConfig& config, std::ostream* progress, Model* existing) {
    const TrainConfig& tc = config.train;
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

    if (progress) {
        *progress << "model: " << model.parameters().count() << " parameters, depth " << config.model.depth()
                  << ", recall task with " << config.task.pairs << " pairs (chance " << std::fixed << std::setprecision(3)
                  << 1.0 / static_cast<double>(config.task.values) << ")\n";
    }
    TrainResult result;
    MatmulPrecisionScope precision(parse_matmul_precision(tc.precision));
    const auto start = std::chrono::steady_clock::now();
    const int64_t tokens_per_step = tc.batch_size * tc.seq_len;
    for (int64_t step = 0; step < tc.steps; ++step) {
        RecallBatch batch = make_recall_batch(config.task, tc.batch_size, tc.seq_len, config.model.window, static_cast<uint64_t>(tc.seed),
                                              static_cast<uint64_t>(step));
        model.parameters().zero_grad();
        Tensor loss = model.loss(batch.tokens, batch.targets, batch.mask);
        const float loss_value = loss.item();
        HSA_CHECK(std::isfinite(loss_value), "loss is " << loss_value << " at step " << step << ": training diverged");
        backward(loss);
        const double norm = optimizer.clip_grad_norm(tc.grad_clip);
        const double lr = tc.lr_at(step);
        optimizer.step(static_cast<float>(lr));
        result.losses.push_back(loss_value);
        result.grad_norms.push_back(norm);

        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double rate = static_cast<double>((step + 1) * tokens_per_step) / std::max(elapsed, 1e-9);
        result.tokens_per_second = rate;
        const bool last = step + 1 == tc.steps;
        if (progress && ((step + 1) % tc.log_every == 0 || last)) {
            const double eta = elapsed / static_cast<double>(step + 1) * static_cast<double>(tc.steps - step - 1);
            *progress << "step " << std::setw(5) << step + 1 << "/" << tc.steps << "  loss " << std::fixed << std::setprecision(4)
                      << loss_value << "  lr " << std::scientific << std::setprecision(2) << lr << std::fixed
                      << "  grad-norm " << std::setprecision(3) << norm << "  " << std::setprecision(0) << rate
                      << " tok/s  ETA " << format_duration(eta);
            if (model.device() == Device::CUDA)
                *progress << "  GPU mem " << std::setprecision(2)
                          << static_cast<double>(cuda_allocator_stats().peak_bytes_in_use) / (1 << 30) << " GiB peak";
            *progress << "\n" << std::flush;
        }
        if ((tc.eval_every > 0 && (step + 1) % tc.eval_every == 0) || last) {
            EvalResult eval = evaluate_recall(model, config, tc.eval_batches);
            result.final_accuracy = eval.accuracy;
            result.final_eval_loss = eval.loss;
            if (progress)
                *progress << "eval at step " << step + 1 << ": held-out answer loss " << std::setprecision(4) << eval.loss
                          << ", recall accuracy " << std::setprecision(3) << eval.accuracy << "\n"
                          << std::flush;
        }
    }
    return result;
}

}  // namespace hsa
