#include "launch/task_command.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "core/json.h"
#include "core/model/config.h"
#include "trainers/tasks/corpus.h"
#include "trainers/tasks/task.h"
#include "trainers/tasks/task_shard.h"
#include "trainers/tokenizer.h"

namespace hsa {

namespace {

const char* kTaskHelp = R"(usage: hsa data task list|show|generate|score [options]

RULER-style (niah_*, vt, cwe, fwe, passkey) and BABILong-style (qa1..qa5) examples at any
length, from 1K to 32M tokens and beyond, with any tokenizer; and the benchmarks' scoring.

  list       the tasks, one line each, and whether the prose corpus is installed
  show       one example: its size, answers, and the start and end of its prompt
             (hsa data task show --help)
  generate   examples at several lengths and depths into an HDF5 task shard
             (hsa data task generate --help)
  score      a prediction against reference answers with the task's rule
             (hsa data task score --help)

Lengths take K (x1024) and M (x1048576) suffixes: 4K, 128K, 1M, 32M.
exit codes: 0 success, 2 bad arguments or input
)";

const char* kShowHelp = R"(usage: hsa data task show NAME [options]

Generates one example and prints its token counts, depth, answers and question, then the
start and the end of the prompt and the answer text (decoded).

options:
  --length N            target length in tokens (default 4K; K and M suffixes)
  --seed S              random seed (default 1)
  --index I             example index (default 0): (seed, index) fix the example
  --depth D             needle depth in [0, 1] (niah_*, passkey); default random
  --tokenizer byte|PATH byte (the default) or a Hugging Face tokenizer.json
  --haystack FILE       prose haystack from a text file instead of the installed corpus
  --option KEY=VALUE    a task setting (e.g. num_hops=6 for vt, facts=40 for qa3); repeatable
  --chars N             characters shown from each end of the prompt (default 600)
  -h, --help            this text
)";

const char* kGenerateHelp = R"(usage: hsa data task generate NAME --out FILE.h5 [options]

Generates --samples examples for every (length, depth) pair and writes one HDF5 task shard:
/tokens, /loss_mask, /offsets (start of each example), /prompt_lengths, /lengths,
/target_lengths, /depths, and /answers, /questions, /tasks as strings; attributes
vocab_size, tokenizer, bos, eos, task, seed. A progress line (tokens/s, ETA) goes to stderr
about once a second, a summary to stdout. Examples are written as they are made (memory
holds one at a time); a failure part way removes the file.

options:
  --out FILE.h5         the shard to write (replaced if it exists); required
  --lengths L1,L2,...   target lengths (default 4K; K and M suffixes)
  --depths D1,D2,...    needle depths in [0, 1] (niah_*, passkey); default one random depth
                        per example
  --samples N           examples per (length, depth) (default 1)
  --seed S              random seed (default 1); example i of the shard is index i
  --tokenizer byte|PATH byte (the default) or a Hugging Face tokenizer.json
  --haystack FILE       prose haystack from a text file instead of the installed corpus
  --option KEY=VALUE    a task setting; repeatable
  -h, --help            this text
)";

const char* kScoreHelp = R"(usage: hsa data task score NAME (--prediction TEXT --answers A,B,... | --jsonl FILE)

Scores predictions with the task's rule: RULER's string_match_all (the fraction of the
references found in the prediction, case-insensitive) for niah_*, vt, cwe, fwe and passkey;
BABILong's single-label rule for qa1..qa5 (the lower-cased prediction's first sentence must
name the answer label and no other label of the task, not counting labels in the question).

options:
  --prediction TEXT     the model's output
  --answers A,B,...     the reference answers, comma-separated
  --question TEXT       the question (qa1..qa5: its labels do not count against the prediction)
  --jsonl FILE          one JSON object per line: {"prediction": ..., "answers": [...],
                        "question": ...}; prints the mean score
  -h, --help            this text
)";

std::string value_of(const std::vector<std::string>& args, size_t& i, const std::string& command) {
    if (i + 1 >= args.size()) throw ConfigError("data task " + command + ": " + args[i] + " needs a value");
    return args[++i];
}

std::vector<std::string> split_commas(const std::string& text) {
    std::vector<std::string> out;
    std::string item;
    std::istringstream in(text);
    while (std::getline(in, item, ',')) out.push_back(item);
    if (!text.empty() && text.back() == ',') out.push_back("");
    return out;
}

uint64_t parse_seed(const std::string& text) {
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos)
        throw ConfigError("--seed: '" + text + "' is not a non-negative integer (at most 18 digits)");
    return std::stoull(text);
}

int64_t parse_count(const std::string& flag, const std::string& text) {
    if (text.empty() || text.size() > 12 || text.find_first_not_of("0123456789") != std::string::npos)
        throw ConfigError(flag + ": '" + text + "' is not a non-negative integer");
    return std::stoll(text);
}

double parse_depth(const std::string& text) {
    const std::string bad = "depth '" + text + "' is not a number in [0, 1]";
    if (text.empty()) throw ConfigError(bad);
    size_t used = 0;
    double d = 0;
    try {
        d = std::stod(text, &used);
    } catch (const std::exception&) {
        throw ConfigError(bad);
    }
    if (used != text.size() || !(d >= 0 && d <= 1)) throw ConfigError(bad);
    return d;
}

int64_t parse_length(const std::string& flag, const std::string& text) {
    try {
        return parse_token_count(text);
    } catch (const ConfigError& e) {
        throw ConfigError(flag + ": " + e.what());
    }
}

void require_task(const std::string& name) {
    if (is_task(name)) return;
    std::string known;
    for (const std::string& n : task_names()) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("unknown task '" + name + "' (known: " + known + ")");
}

// --option KEY=VALUE: VALUE as JSON when it parses (numbers, true/false), else a string.
void add_option(Json& extra, const std::string& text) {
    const size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0) throw ConfigError("--option: '" + text + "' is not KEY=VALUE");
    const std::string key = text.substr(0, eq), raw = text.substr(eq + 1);
    Json value;
    try {
        value = Json::parse(raw, "--option");
    } catch (const Error&) {
        value = Json(raw);
    }
    extra[key] = value;
}

std::string human_count(double n) {
    char buf[32];
    if (n >= 1e9) std::snprintf(buf, sizeof(buf), "%.2fG", n / 1e9);
    else if (n >= 1e6) std::snprintf(buf, sizeof(buf), "%.2fM", n / 1e6);
    else if (n >= 1e3) std::snprintf(buf, sizeof(buf), "%.1fK", n / 1e3);
    else std::snprintf(buf, sizeof(buf), "%.0f", n);
    return buf;
}

// Printable text: control characters other than newline and tab shown as \xNN.
std::string printable(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c < 32 && c != '\n' && c != '\t') {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

// ---------------------------------------------------------------- list

int list_tasks(std::ostream& out) {
    for (const std::string& name : task_names()) {
        char line[256];
        std::snprintf(line, sizeof(line), "%-16s %-9s %s\n", name.c_str(), task_family(name).c_str(), task_description(name).c_str());
        out << line;
    }
    const std::string missing = corpus_missing_reason();
    out << "\nprose corpus: " << (missing.empty() ? "installed (" + std::to_string(kHeldOutPercent) + "% held out for haystacks)" : missing)
        << "\n";
    return 0;
}

// ---------------------------------------------------------------- show

int show_task(const std::vector<std::string>& args, std::ostream& out) {
    if (args.empty()) throw ConfigError("data task show: which task? (hsa data task list names them)");
    if (args[0] == "-h" || args[0] == "--help") {
        out << kShowHelp;
        return 0;
    }
    const std::string name = args[0];
    TaskOptions options;
    std::string tokenizer = "byte";
    int64_t index = 0, chars = 600;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            out << kShowHelp;
            return 0;
        } else if (a == "--length") {
            options.length = parse_length("--length", value_of(args, i, "show"));
        } else if (a == "--seed") {
            options.seed = parse_seed(value_of(args, i, "show"));
        } else if (a == "--index") {
            index = parse_count("--index", value_of(args, i, "show"));
        } else if (a == "--depth") {
            options.depth = parse_depth(value_of(args, i, "show"));
        } else if (a == "--tokenizer") {
            tokenizer = value_of(args, i, "show");
        } else if (a == "--haystack") {
            options.haystack_file = value_of(args, i, "show");
        } else if (a == "--option") {
            add_option(options.extra, value_of(args, i, "show"));
        } else if (a == "--chars") {
            chars = parse_count("--chars", value_of(args, i, "show"));
        } else {
            throw ConfigError("data task show: unknown option '" + a + "' (see hsa data task show --help)");
        }
    }
    require_task(name);
    if (options.depth >= 0 && !task_has_depth(name))
        throw ConfigError("data task show: task " + name + " has no needle depth; drop --depth (niah_* and passkey take it)");
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer);
    const auto start = std::chrono::steady_clock::now();
    const TaskExample ex = generate_task_example(name, *tok, options, index);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    const auto prompt_begin = ex.tokens.begin(), prompt_end = ex.tokens.begin() + ex.prompt_length;
    const std::vector<int32_t> answer(ex.tokens.begin() + ex.prompt_length, ex.tokens.end());
    Json answers = Json::array();
    for (const std::string& a : ex.answers) answers.push_back(a);
    out << "task " << name << " (" << task_family(name) << "), tokenizer " << tok->name() << ", seed " << options.seed
        << ", index " << index << "\n";
    out << "tokens " << ex.tokens.size() << " (target " << options.length << "), prompt " << ex.prompt_length << ", answer "
        << answer.size() << " (with EOS), generated in " << seconds << " s\n";
    if (ex.depth >= 0) out << "depth " << ex.depth << "\n";
    if (!ex.question.empty()) out << "question " << ex.question << "\n";
    out << "answers " << answers.dump() << "\n";
    // Decode only the two ends of a long prompt: decoding 32M tokens to print 1200 characters
    // would be wasteful. Tokens are decoded from a window a little wider than needed.
    const int64_t window = std::min<int64_t>(ex.prompt_length, chars * 4 + 16);
    std::string head = tok->decode(std::vector<int32_t>(prompt_begin, prompt_begin + window));
    std::string tail = tok->decode(std::vector<int32_t>(prompt_end - window, prompt_end));
    out << "--- prompt";
    if (static_cast<int64_t>(head.size()) > chars && ex.prompt_length > window / 2) {
        head = head.substr(0, static_cast<size_t>(chars));
        tail = tail.substr(tail.size() > static_cast<size_t>(chars) ? tail.size() - static_cast<size_t>(chars) : 0);
        out << " (start and end) ---\n" << printable(head) << "\n[...]\n" << printable(tail) << "\n";
    } else {
        out << " ---\n" << printable(tok->decode(std::vector<int32_t>(prompt_begin, prompt_end))) << "\n";
    }
    out << "--- answer ---\n" << printable(tok->decode(answer)) << "\n";
    return 0;
}

// ---------------------------------------------------------------- generate

int generate_tasks(const std::vector<std::string>& args, std::ostream& out) {
    if (args.empty()) throw ConfigError("data task generate: which task? (hsa data task list names them)");
    if (args[0] == "-h" || args[0] == "--help") {
        out << kGenerateHelp;
        return 0;
    }
    const std::string name = args[0];
    TaskOptions base;
    std::string tokenizer = "byte", out_path;
    std::vector<int64_t> lengths{4096};
    std::vector<double> depths{-1};
    bool depths_given = false;
    int64_t samples = 1;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            out << kGenerateHelp;
            return 0;
        } else if (a == "--out") {
            out_path = value_of(args, i, "generate");
        } else if (a == "--lengths") {
            lengths.clear();
            for (const std::string& l : split_commas(value_of(args, i, "generate"))) lengths.push_back(parse_length("--lengths", l));
            if (lengths.empty()) throw ConfigError("--lengths: give at least one length");
        } else if (a == "--depths") {
            depths.clear();
            for (const std::string& d : split_commas(value_of(args, i, "generate"))) depths.push_back(parse_depth(d));
            if (depths.empty()) throw ConfigError("--depths: give at least one depth");
            depths_given = true;
        } else if (a == "--samples") {
            samples = parse_count("--samples", value_of(args, i, "generate"));
            if (samples < 1) throw ConfigError("--samples: 0 examples; give at least 1");
        } else if (a == "--seed") {
            base.seed = parse_seed(value_of(args, i, "generate"));
        } else if (a == "--tokenizer") {
            tokenizer = value_of(args, i, "generate");
        } else if (a == "--haystack") {
            base.haystack_file = value_of(args, i, "generate");
        } else if (a == "--option") {
            add_option(base.extra, value_of(args, i, "generate"));
        } else {
            throw ConfigError("data task generate: unknown option '" + a + "' (see hsa data task generate --help)");
        }
    }
    require_task(name);
    if (out_path.empty()) throw ConfigError("data task generate: --out FILE.h5 is required");
    if (depths_given && !task_has_depth(name))
        throw ConfigError("data task generate: task " + name + " has no needle depth; drop --depths (niah_* and passkey take it)");
    const std::filesystem::path folder = std::filesystem::path(out_path).parent_path();
    if (!folder.empty() && !std::filesystem::is_directory(folder))
        throw ConfigError("data task generate: --out " + out_path + ": folder " + folder.string() + " does not exist");
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer);
    TaskGenerator generator(*tok);

    const int64_t total = static_cast<int64_t>(lengths.size() * depths.size()) * samples;
    double planned_tokens = 0;
    for (int64_t l : lengths) planned_tokens += static_cast<double>(l) * static_cast<double>(depths.size() * samples);
    // Examples go to disk as they are made: memory holds one example at a time.
    TaskShardWriter writer(out_path, *tok, static_cast<int64_t>(base.seed));
    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    double tokens_done = 0;
    bool reported = false;
    int64_t index = 0;
    for (int64_t length : lengths)
        for (double depth : depths)
            for (int64_t s = 0; s < samples; ++s, ++index) {
                TaskOptions options = base;
                options.length = length;
                options.depth = depth;
                writer.append(generator.generate(name, options, index));
                tokens_done += static_cast<double>(length);
                const auto now = std::chrono::steady_clock::now();
                if (std::chrono::duration<double>(now - last_report).count() >= 1.0) {
                    const double elapsed = std::chrono::duration<double>(now - start).count();
                    const double rate = tokens_done / elapsed;
                    std::fprintf(stderr, "\rgenerate %s: %lld/%lld examples, %s tokens, %s tokens/s, ETA %.0f s   ", name.c_str(),
                                 static_cast<long long>(index + 1), static_cast<long long>(total), human_count(tokens_done).c_str(),
                                 human_count(rate).c_str(), (planned_tokens - tokens_done) / rate);
                    std::fflush(stderr);
                    last_report = now;
                    reported = true;
                }
            }
    if (reported) std::fprintf(stderr, "\n");
    const int64_t examples = writer.examples(), tokens = writer.tokens();
    writer.close();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    out << "wrote " << out_path << ": " << examples << " examples of " << name << ", " << tokens << " tokens ("
        << lengths.size() << " lengths x " << depths.size() << " depths x " << samples << " samples), tokenizer "
        << tok->name() << ", " << seconds << " s (" << human_count(static_cast<double>(tokens) / std::max(seconds, 1e-9))
        << " tokens/s)\n";
    return 0;
}

// ---------------------------------------------------------------- score

int score_predictions(const std::vector<std::string>& args, std::ostream& out) {
    if (args.empty()) throw ConfigError("data task score: which task? (hsa data task list names them)");
    if (args[0] == "-h" || args[0] == "--help") {
        out << kScoreHelp;
        return 0;
    }
    const std::string name = args[0];
    std::string prediction, question, jsonl;
    bool have_prediction = false;
    std::vector<std::string> answers;
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            out << kScoreHelp;
            return 0;
        } else if (a == "--prediction") {
            prediction = value_of(args, i, "score");
            have_prediction = true;
        } else if (a == "--answers") {
            answers = split_commas(value_of(args, i, "score"));
        } else if (a == "--question") {
            question = value_of(args, i, "score");
        } else if (a == "--jsonl") {
            jsonl = value_of(args, i, "score");
        } else {
            throw ConfigError("data task score: unknown option '" + a + "' (see hsa data task score --help)");
        }
    }
    require_task(name);
    if (jsonl.empty()) {
        if (!have_prediction || answers.empty())
            throw ConfigError("data task score: give --prediction TEXT and --answers A,B (or --jsonl FILE)");
        out << score_task(name, prediction, answers, question) << "\n";
        return 0;
    }
    if (have_prediction || !answers.empty()) throw ConfigError("data task score: --jsonl replaces --prediction and --answers");
    std::ifstream in(jsonl);
    if (!in) throw ConfigError("data task score: cannot read " + jsonl);
    std::string line;
    double sum = 0;
    int64_t count = 0, line_number = 0;
    while (std::getline(in, line)) {
        ++line_number;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = jsonl + " line " + std::to_string(line_number);
        Json row;
        try {
            row = Json::parse(line, where);
        } catch (const Error& e) {
            throw ConfigError(e.what());
        }
        if (!row.is_object() || !row.contains("prediction") || !row.at("prediction").is_string() || !row.contains("answers") ||
            !row.at("answers").is_array())
            throw ConfigError(where + ": expected {\"prediction\": \"...\", \"answers\": [\"...\"]}");
        std::vector<std::string> refs;
        for (const Json& r : row.at("answers").items()) {
            if (!r.is_string()) throw ConfigError(where + ": answers must be strings, got " + r.dump());
            refs.push_back(r.as_string());
        }
        const std::string q = row.contains("question") && row.at("question").is_string() ? row.at("question").as_string() : "";
        sum += score_task(name, row.at("prediction").as_string(), refs, q);
        ++count;
    }
    if (count == 0) throw ConfigError("data task score: " + jsonl + " holds no predictions");
    out << "score " << name << ": " << sum / static_cast<double>(count) << " over " << count << " predictions\n";
    return 0;
}

}  // namespace

int run_data_task(const std::vector<std::string>& args, std::ostream& out) {
    if (args.empty()) {
        out << kTaskHelp;
        return 2;
    }
    const std::string& sub = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (sub == "-h" || sub == "--help") {
        out << kTaskHelp;
        return 0;
    }
    if (sub == "list") {
        if (!rest.empty() && (rest[0] == "-h" || rest[0] == "--help")) {
            out << kTaskHelp;
            return 0;
        }
        if (!rest.empty()) throw ConfigError("data task list: unexpected argument '" + rest[0] + "'");
        return list_tasks(out);
    }
    if (sub == "show") return show_task(rest, out);
    if (sub == "generate") return generate_tasks(rest, out);
    if (sub == "score") return score_predictions(rest, out);
    throw ConfigError("data task: unknown subcommand '" + sub + "' (list, show, generate, score; see hsa data task --help)");
}

}  // namespace hsa
