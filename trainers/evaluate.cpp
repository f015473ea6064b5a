#include "trainers/evaluate.h"

#include "core/autograd.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "core/autograd.h"
#include "core/model/config.h"
#include "trainers/generate.h"
#include "trainers/plot.h"
#include "trainers/tasks/task.h"

namespace hsa {

namespace {

double mean(const std::vector<double>& values) {
    if (values.empty()) return 0;
    double sum = 0;
    for (double v : values) sum += v;
    return sum / static_cast<double>(values.size());
}

std::string depth_label(double depth) {
    if (depth < 0) return "random";
    std::ostringstream out;
    out << std::fixed << std::setprecision(2) << depth;
    return out.str();
}

// Decoded predictions of an untrained model can be any bytes; the JSON keeps them readable
// (valid UTF-8) with U+FFFD for every byte that is not part of a valid sequence.
std::string valid_utf8(const std::string& text) {
    std::string out;
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    for (size_t i = 0; i < n;) {
        const unsigned char c = s[i];
        size_t length = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        bool ok = length > 0 && i + length <= n;
        for (size_t k = 1; ok && k < length; ++k) ok = (s[i + k] & 0xC0) == 0x80;
        if (ok && length > 1) {  // no overlong forms, surrogates or code points past U+10FFFF
            uint32_t cp = c & (0xFF >> (length + 1));
            for (size_t k = 1; k < length; ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
            const uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
            ok = cp >= smallest[length] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
        }
        if (ok) {
            out.append(text, i, length);
            i += length;
        } else {
            out += "\xEF\xBF\xBD";
            ++i;
        }
    }
    return out;
}

// The depths of the table's rows: the asked ones, or one "random" row.
std::vector<double> depth_rows(const TaskEvalOptions& options) {
    return options.depths.empty() ? std::vector<double>{-1.0} : options.depths;
}

}  // namespace

void TaskEvalOptions::validate() const {
    if (!is_task(task) && task != kRecallTaskName) {
        std::string known = kRecallTaskName;
        for (const auto& name : task_names()) known += ", " + name;
        throw ConfigError("eval: unknown task '" + task + "' (known: " + known + ")");
    }
    if (lengths.empty()) throw ConfigError("eval: --lengths needs at least one length");
    for (int64_t length : lengths)
        if (length < 1) throw ConfigError("eval: length " + std::to_string(length) + " must be >= 1");
    for (double depth : depths)
        if (!(depth >= 0 && depth <= 1)) throw ConfigError("eval: depth " + depth_label(depth) + " is outside [0, 1]");
    if (samples < 1) throw ConfigError("eval: --samples must be >= 1, got " + std::to_string(samples));
    if (max_new < 0) throw ConfigError("eval: --max-new must be >= 0, got " + std::to_string(max_new));
}

double TaskEvalCell::accuracy() const { return mean(scores); }

double TaskEvalResult::accuracy() const {
    std::vector<double> all;
    for (const auto& cell : cells) all.insert(all.end(), cell.scores.begin(), cell.scores.end());
    return mean(all);
}

std::string length_label(int64_t length) {
    if (length >= 1024 * 1024 && length % (1024 * 1024) == 0) return std::to_string(length / (1024 * 1024)) + "M";
    if (length >= 1024 && length % 1024 == 0) return std::to_string(length / 1024) + "K";
    return std::to_string(length);
}

TaskEvalResult evaluate_task(Model& model, const Tokenizer& tokenizer, const TaskEvalOptions& options, std::ostream* progress) {
    options.validate();
    const int64_t vocab = model.config().vocab_size;
    TaskGenerator generator(tokenizer);
    TaskEvalResult result;
    for (int64_t length : options.lengths) {
        for (double depth : depth_rows(options)) {
            const auto start = std::chrono::steady_clock::now();
            TaskEvalCell cell;
            cell.length = length;
            cell.depth = depth;
            for (int64_t i = 0; i < options.samples; ++i) {
                TaskOptions task_options;
                task_options.length = length;
                task_options.depth = depth;
                task_options.seed = options.seed;
                task_options.haystack_file = options.haystack_file;
                task_options.extra = options.extra;
                const TaskExample example = generator.generate(options.task, task_options, i);
                const std::vector<int32_t> prompt(example.tokens.begin(), example.tokens.begin() + example.prompt_length);
                for (size_t p = 0; p < prompt.size(); ++p)
                    if (prompt[p] < 0 || prompt[p] >= vocab)
                        throw ConfigError("eval: token " + std::to_string(prompt[p]) + " of " + options.task + " example " +
                                          std::to_string(i) + " is outside the model's vocabulary of " + std::to_string(vocab) +
                                          " ids (tokenizer '" + tokenizer.name() + "')");
                GenerateOptions decode;
                const int64_t answer_tokens = static_cast<int64_t>(example.tokens.size()) - example.prompt_length;
                decode.max_new = options.max_new > 0 ? options.max_new : answer_tokens + 8;
                decode.stop_id = tokenizer.eos_id();
                decode.vocab_limit = tokenizer.vocab_size();
                const std::string prediction = tokenizer.decode(greedy_generate(model, prompt, decode));
                cell.scores.push_back(score_task(options.task, prediction, example.answers, example.question));
                cell.predictions.push_back(prediction);
                cell.answers.push_back(example.answers);
                cell.example_lengths.push_back(static_cast<int64_t>(example.tokens.size()));
            }
            if (progress) {
                const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                *progress << options.task << " length " << length_label(length) << " depth " << depth_label(depth) << ": accuracy "
                          << std::fixed << std::setprecision(3) << cell.accuracy() << " over " << options.samples
                          << " examples (" << std::setprecision(1) << seconds << " s)\n"
                          << std::flush;
            }
            result.cells.push_back(std::move(cell));
        }
    }
    return result;
}

TaskEvalResult evaluate_recall_lengths(Model& model, const RecallTaskConfig& trained_task,
                                       const TaskEvalOptions& options, std::ostream* progress) {
    options.validate();
    // options.extra (--option K=V) overrides fields of the trained task's settings, e.g.
    // answers_in_queries=false; unknown fields are the config reader's one-line error.
    Json merged = trained_task.to_json();
    for (const auto& [key, value] : options.extra.fields()) merged[key] = value;
    const RecallTaskConfig task = RecallTaskConfig::from_json(merged);
    const ModelConfig& config = model.config();
    NoGradGuard no_grad;
    ForwardOptions forward;
    forward.training = false;
    TaskEvalResult result;
    for (int64_t length : options.lengths) {
        task.validate(length, config.window, config.vocab_size);
        const auto start = std::chrono::steady_clock::now();
        TaskEvalCell cell;
        cell.length = length;
        // One sequence at a time: memory stays that of one example at the longest length.
        for (int64_t i = 0; i < options.samples; ++i) {
            const RecallBatch batch = make_recall_batch(task, 1, length, config.window, options.seed, static_cast<uint64_t>(i));
            Tensor logits = model.forward(batch.tokens.to(model.device()), forward).to(Device::CPU).contiguous();
            const float* l = logits.data<float>();
            const float* mask = batch.mask.data<float>();
            const int32_t* targets = batch.targets.data<int32_t>();
            const int64_t V = config.vocab_size;
            std::vector<std::string> answers;
            std::string predicted;
            double correct = 0, count = 0;
            for (int64_t p = 0; p < length; ++p) {
                if (mask[p] == 0.0f) continue;
                const float* row = l + p * V;
                const int64_t best = std::max_element(row, row + V) - row;
                correct += best == targets[p];
                count += 1;
                answers.push_back(std::to_string(targets[p]));
                predicted += (predicted.empty() ? "" : " ") + std::to_string(best);
            }
            cell.scores.push_back(count > 0 ? correct / count : 0.0);
            cell.predictions.push_back(predicted);
            cell.answers.push_back(answers);
            cell.example_lengths.push_back(length);
        }
        if (progress) {
            const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            *progress << kRecallTaskName << " length " << length_label(length) << ": accuracy " << std::fixed
                      << std::setprecision(3) << cell.accuracy() << " over " << options.samples << " sequences ("
                      << std::setprecision(1) << seconds << " s)\n"
                      << std::flush;
        }
        result.cells.push_back(std::move(cell));
    }
    return result;
}

std::string task_eval_table(const TaskEvalResult& result, const TaskEvalOptions& options) {
    const std::vector<double> depths = depth_rows(options);
    std::ostringstream out;
    out << options.task << ": accuracy by context length (columns) and needle depth (rows), " << options.samples
        << " examples per cell\n";
    out << std::left << std::setw(16) << "depth \\ length" << std::right;
    for (int64_t length : options.lengths) out << std::setw(9) << length_label(length);
    out << "\n" << std::fixed << std::setprecision(3);
    for (size_t d = 0; d < depths.size(); ++d) {
        out << std::left << std::setw(16) << depth_label(depths[d]) << std::right;
        for (size_t l = 0; l < options.lengths.size(); ++l) out << std::setw(9) << result.cells[l * depths.size() + d].accuracy();
        out << "\n";
    }
    if (depths.size() > 1) {
        out << std::left << std::setw(16) << "mean" << std::right;
        for (size_t l = 0; l < options.lengths.size(); ++l) {
            std::vector<double> scores;
            for (size_t d = 0; d < depths.size(); ++d) {
                const auto& s = result.cells[l * depths.size() + d].scores;
                scores.insert(scores.end(), s.begin(), s.end());
            }
            out << std::setw(9) << mean(scores);
        }
        out << "\n";
    }
    out << "overall accuracy " << result.accuracy() << "\n";
    return out.str();
}

Json task_eval_json(const TaskEvalResult& result, const TaskEvalOptions& options, const std::string& checkpoint,
                    int64_t checkpoint_step, const std::string& tokenizer_name) {
    Json j = Json::object();
    j["checkpoint"] = checkpoint;
    j["checkpoint_step"] = checkpoint_step;
    j["task"] = options.task;
    j["tokenizer"] = tokenizer_name;
    j["seed"] = static_cast<int64_t>(options.seed);
    j["samples"] = options.samples;
    j["max_new"] = options.max_new;
    j["options"] = options.extra;
    Json lengths = Json::array(), depths = Json::array();
    for (int64_t length : options.lengths) lengths.push_back(length);
    for (double depth : depth_rows(options)) depths.push_back(depth < 0 ? Json() : Json(depth));
    j["lengths"] = lengths;
    j["depths"] = depths;  // null = random depths
    Json cells = Json::array();
    Json by_length = Json::object();
    for (size_t l = 0; l < options.lengths.size(); ++l) {
        std::vector<double> scores;
        for (const auto& cell : result.cells)
            if (cell.length == options.lengths[l]) scores.insert(scores.end(), cell.scores.begin(), cell.scores.end());
        by_length[std::to_string(options.lengths[l])] = mean(scores);
    }
    for (const auto& cell : result.cells) {
        Json c = Json::object();
        c["length"] = cell.length;
        c["depth"] = cell.depth < 0 ? Json() : Json(cell.depth);
        c["accuracy"] = cell.accuracy();
        Json scores = Json::array(), predictions = Json::array(), answers = Json::array(), sizes = Json::array();
        for (size_t i = 0; i < cell.scores.size(); ++i) {
            scores.push_back(cell.scores[i]);
            predictions.push_back(valid_utf8(cell.predictions[i]));
            Json refs = Json::array();
            for (const auto& a : cell.answers[i]) refs.push_back(a);
            answers.push_back(refs);
            sizes.push_back(cell.example_lengths[i]);
        }
        c["scores"] = scores;
        c["predictions"] = predictions;
        c["answers"] = answers;
        c["example_tokens"] = sizes;
        cells.push_back(c);
    }
    j["cells"] = cells;
    j["accuracy_by_length"] = by_length;
    j["accuracy"] = result.accuracy();
    return j;
}

void plot_task_eval(const TaskEvalResult& result, const TaskEvalOptions& options, const std::string& png_path) {
    const std::vector<double> depths = depth_rows(options);
    HeatmapPlot heatmap;
    heatmap.title = options.task + " accuracy (" + std::to_string(options.samples) + " examples per cell)";
    heatmap.x_label = "context length (tokens)";
    heatmap.y_label = "needle depth";
    for (int64_t length : options.lengths) heatmap.column_labels.push_back(length_label(length));
    for (double depth : depths) heatmap.row_labels.push_back(depth_label(depth));
    heatmap.values.assign(depths.size(), std::vector<double>(options.lengths.size(), NAN));
    for (size_t l = 0; l < options.lengths.size(); ++l)
        for (size_t d = 0; d < depths.size(); ++d) heatmap.values[d][l] = result.cells[l * depths.size() + d].accuracy();
    plot_heatmap(heatmap, png_path);
}

}  // namespace hsa
