// The task registry, the shared context machinery (task_context.h) and the scoring rules.
//
// Token layout of an example: tokens[0, prompt_length) is the prompt (instructions, context,
// question, answer prefix); tokens[prompt_length, end) is the answer text followed by EOS,
// and loss_mask is 1 exactly there (EOS included: it teaches the model to stop).
#include "trainers/tasks/task.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "core/model/config.h"
#include "trainers/tasks/task_context.h"

namespace hsa {

namespace {

struct TaskInfo {
    const char* name;
    const char* family;
    bool uses_prose;
    const char* description;
};

// RULER's synthetic tasks (scripts/synthetic.yaml of NVIDIA/RULER) and passkey retrieval, then
// BABILong's qa1..qa5.
const TaskInfo kTasks[] = {
    {"niah_single_1", "ruler", false, "one needle (word key, 7-digit number) in a repeated noise haystack"},
    {"niah_single_2", "ruler", true, "one needle (word key, 7-digit number) in a prose haystack"},
    {"niah_single_3", "ruler", true, "one needle (word key, UUID value) in a prose haystack"},
    {"niah_multikey_1", "ruler", true, "4 needles with different word keys in prose; one key is asked"},
    {"niah_multikey_2", "ruler", false, "one needle hidden among distractor needles (word keys, numbers)"},
    {"niah_multikey_3", "ruler", false, "one needle hidden among distractor needles (UUID keys and values)"},
    {"niah_multivalue", "ruler", true, "4 needles with the same word key and different numbers; all asked"},
    {"niah_multiquery", "ruler", true, "4 needles with different word keys; all 4 asked"},
    {"vt", "ruler", false, "variable tracking: a chain of VAR X = VAR Y hops in noise; name all variables"},
    {"cwe", "ruler", false, "common words extraction: the 10 most common words of a numbered list"},
    {"fwe", "ruler", false, "frequent words extraction: the 3 most frequent coded words (Zipf counts)"},
    {"passkey", "ruler", false, "passkey retrieval: a 5-digit pass key in repeated noise"},
    {"qa1", "babilong", true, "bAbI single supporting fact (where is a person) in prose"},
    {"qa2", "babilong", true, "bAbI two supporting facts (where is an object) in prose"},
    {"qa3", "babilong", true, "bAbI three supporting facts (where was an object before a place) in prose"},
    {"qa4", "babilong", true, "bAbI two-argument relations (what is north of a place) in prose"},
    {"qa5", "babilong", true, "bAbI three-argument relations (who gave what to whom) in prose"},
};

const TaskInfo* find_task(const std::string& name) {
    for (const TaskInfo& t : kTasks)
        if (name == t.name) return &t;
    return nullptr;
}

uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::string known_task_list() {
    std::string list;
    for (const TaskInfo& t : kTasks) list += (list.empty() ? "" : ", ") + std::string(t.name);
    return list;
}

}  // namespace

// ---------------------------------------------------------------- registry

std::vector<std::string> task_names() {
    std::vector<std::string> names;
    for (const TaskInfo& t : kTasks) names.push_back(t.name);
    return names;
}

bool is_task(const std::string& name) { return find_task(name) != nullptr; }

std::string task_description(const std::string& name) {
    const TaskInfo* t = find_task(name);
    return t ? t->description : "";
}

std::string task_family(const std::string& name) {
    const TaskInfo* t = find_task(name);
    return t ? t->family : "";
}

bool task_uses_prose(const std::string& name) {
    const TaskInfo* t = find_task(name);
    return t && t->uses_prose;
}

bool task_has_depth(const std::string& name) { return is_task(name) && (name.rfind("niah_", 0) == 0 || name == "passkey"); }

int64_t parse_token_count(const std::string& text) {
    const std::string bad = "'" + text + "' is not a token count (a positive integer, or with a K or M suffix: 4096, 4K, 32M)";
    if (text.empty()) throw ConfigError(bad);
    std::string digits = text;
    int64_t scale = 1;
    const char last = text.back();
    if (last == 'K' || last == 'k') scale = 1024;
    if (last == 'M' || last == 'm') scale = 1048576;
    if (scale != 1) digits.pop_back();
    if (digits.empty() || digits.size() > 12 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
        throw ConfigError(bad);
    const int64_t value = std::stoll(digits) * scale;
    if (value <= 0) throw ConfigError(bad);
    return value;
}

// ---------------------------------------------------------------- generation

TaskGenerator::TaskGenerator(const Tokenizer& tok) : tok_(tok), cache_(std::make_unique<Cache>()) {}
TaskGenerator::~TaskGenerator() = default;

TaskExample TaskGenerator::generate(const std::string& name, const TaskOptions& options, int64_t index) {
    const TaskInfo* info = find_task(name);
    if (!info) throw ConfigError("unknown task '" + name + "' (known: " + known_task_list() + ")");
    if (options.length <= 0) throw ConfigError("task " + name + ": length " + std::to_string(options.length) + " must be positive");
    if (!(options.depth == -1 || (options.depth >= 0 && options.depth <= 1)))
        throw ConfigError("task " + name + ": depth " + std::to_string(options.depth) + " is outside [0, 1] (or -1 for random)");
    if (index < 0) throw ConfigError("task " + name + ": example index " + std::to_string(index) + " is negative");
    if (!options.extra.is_object()) throw ConfigError("task " + name + ": extra options must be a JSON object");
    // Every (seed, task, index) gets its own Philox stream, so examples can be made in any
    // order or in parallel and still come out the same.
    const uint64_t stream = splitmix64(splitmix64(options.seed) ^ splitmix64(fnv1a(name) + static_cast<uint64_t>(index)));
    task_detail::TaskContext ctx{name, tok_, options, *cache_, Rng(stream)};
    TaskExample example = std::string(info->family) == "ruler" ? task_detail::generate_ruler_task(ctx)
                                                                : task_detail::generate_babilong_task(ctx);
    example.task = name;
    example.target_length = options.length;
    return example;
}

TaskExample generate_task_example(const std::string& name, const Tokenizer& tok, const TaskOptions& options,
                                  int64_t index) {
    TaskGenerator generator(tok);
    return generator.generate(name, options, index);
}

namespace task_detail {

// ---------------------------------------------------------------- piece sources

CorpusPieces::CorpusPieces(TaskContext& ctx, const std::string& separator, std::function<bool(const std::string&)> skip)
    : tok_(ctx.tok), separator_(separator), skip_(std::move(skip)) {
    std::shared_ptr<const ProseCorpus> corpus;
    if (ctx.options.haystack_file.empty()) {
        corpus = ProseCorpus::installed();
    } else {
        auto& slot = ctx.cache.haystack_files[ctx.options.haystack_file];
        if (!slot) slot = ProseCorpus::from_text_file(ctx.options.haystack_file);
        corpus = slot;
    }
    sentences_ = &corpus->haystack_sentences();
    const std::string key = std::to_string(reinterpret_cast<uintptr_t>(corpus.get())) + "|" + separator;
    cache_ = &ctx.cache.sentences[key];
    if (!cache_->corpus) {
        cache_->corpus = corpus;
        cache_->tokens.resize(sentences_->size());
        cache_->ready.assign(sentences_->size(), 0);
    }
    index_ = static_cast<size_t>(ctx.rng.next_int(0, static_cast<int64_t>(sentences_->size())));
    settle();
}

void CorpusPieces::settle() {
    if (!skip_) return;
    for (size_t tries = 0; tries < sentences_->size() && skip_((*sentences_)[index_]); ++tries)
        index_ = (index_ + 1) % sentences_->size();
}

const std::vector<int32_t>& CorpusPieces::tokens() {
    if (!cache_->ready[index_]) {
        cache_->tokens[index_] = tok_.encode(separator_ + (*sentences_)[index_]);
        cache_->ready[index_] = 1;
    }
    return cache_->tokens[index_];
}

void CorpusPieces::advance() {
    index_ = (index_ + 1) % sentences_->size();
    settle();
}

RepeatedPiece::RepeatedPiece(TaskContext& ctx, const std::string& text) : text_(text) {
    auto it = ctx.cache.piece_tokens.find(text);
    if (it == ctx.cache.piece_tokens.end()) it = ctx.cache.piece_tokens.emplace(text, ctx.tok.encode(text)).first;
    tokens_ = &it->second;
}

void GeneratedPieces::ensure() {
    if (have_) return;
    text_ = make_();
    tokens_ = tok_.encode(text_);
    have_ = true;
}

const std::vector<int32_t>& GeneratedPieces::tokens() {
    ensure();
    return tokens_;
}

std::string GeneratedPieces::text() {
    ensure();
    return text_;
}

// ---------------------------------------------------------------- context filling

namespace {

// The tokens of the longest word prefix of `text` (cut at spaces, the leading separator
// kept with the first word) that has at most `limit` tokens; empty when not even one word fits.
std::vector<int32_t> longest_fitting_prefix(const Tokenizer& tok, const std::string& text, int64_t limit) {
    std::vector<size_t> cuts;  // candidate prefix ends: before each later space, and the end
    size_t first_word = text.find_first_not_of(" \n");
    if (first_word == std::string::npos) return {};
    for (size_t i = first_word; i < text.size(); ++i)
        if (text[i] == ' ' && i > first_word && text[i - 1] != ' ') cuts.push_back(i);
    cuts.push_back(text.size());
    // Binary search: token counts grow with the prefix.
    std::vector<int32_t> best;
    size_t low = 0, high = cuts.size();  // candidates [low, high)
    while (low < high) {
        const size_t mid = (low + high) / 2;
        std::vector<int32_t> t = tok.encode(text.substr(0, cuts[mid]));
        if (static_cast<int64_t>(t.size()) <= limit) {
            best = std::move(t);
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    return best;
}

}  // namespace

FilledContext fill_context(TaskContext& ctx, std::vector<int32_t>& out, int64_t budget, PieceSource& source,
                           const std::vector<ContextInsert>& inserts) {
    std::vector<std::vector<int32_t>> insert_tokens;
    int64_t insert_total = 0;
    for (const ContextInsert& ins : inserts) {
        insert_tokens.push_back(ctx.tok.encode(ins.text));
        insert_total += static_cast<int64_t>(insert_tokens.back().size());
    }
    if (insert_total > budget)
        throw ConfigError("task " + ctx.name + ": length " + std::to_string(ctx.options.length) +
                          " is too short: the needles/facts alone need " + std::to_string(insert_total) +
                          " tokens and only " + std::to_string(budget) + " are left for the context");
    const int64_t background = budget - insert_total;
    const size_t context_start = out.size();
    FilledContext filled;
    int64_t done = 0;           // background tokens emitted
    bool exhausted = false;     // the background budget is used up (a piece was cut)

    // Emits background pieces up to `target` background tokens: whole pieces while the
    // boundary after the piece is nearer the target than the one before it; with
    // `to_the_end`, fills all of the background, cutting the last piece.
    auto emit_until = [&](int64_t target, bool to_the_end) {
        while (!exhausted && done < background) {
            const std::vector<int32_t>& piece = source.tokens();
            const int64_t size = static_cast<int64_t>(piece.size());
            if (done + size > background) {
                if (!to_the_end && done + size / 2 > target) return;
                const std::vector<int32_t> part = longest_fitting_prefix(ctx.tok, source.text(), background - done);
                out.insert(out.end(), part.begin(), part.end());
                done += static_cast<int64_t>(part.size());
                exhausted = true;
                source.advance();
                return;
            }
            if (!to_the_end && done + size / 2 > target) return;
            out.insert(out.end(), piece.begin(), piece.end());
            done += size;
            source.advance();
        }
    };

    for (size_t i = 0; i < inserts.size(); ++i) {
        const double f = std::clamp(inserts[i].fraction, 0.0, 1.0);
        if (i > 0 && f < inserts[i - 1].fraction) throw Error("fill_context: inserts must be sorted by fraction");
        emit_until(static_cast<int64_t>(std::llround(f * static_cast<double>(background))), f >= 1.0);
        filled.insert_offsets.push_back(static_cast<int64_t>(out.size() - context_start));
        filled.insert_depths.push_back(background > 0 ? static_cast<double>(done) / static_cast<double>(background) : 0.0);
        out.insert(out.end(), insert_tokens[i].begin(), insert_tokens[i].end());
    }
    emit_until(background, true);
    filled.background_tokens = done;
    // The realized depths are relative to the background actually emitted (it may fall
    // short of the budget by part of a word).
    if (done > 0 && done != background)
        for (double& d : filled.insert_depths) d = std::min(1.0, d * static_cast<double>(background) / static_cast<double>(done));
    return filled;
}

PromptTokens tokenize_parts(TaskContext& ctx, const PromptParts& parts, int64_t minimum_context) {
    PromptTokens p;
    p.before = ctx.tok.encode(parts.before_context);
    p.after = ctx.tok.encode(parts.after_context);
    p.answer = ctx.tok.encode(parts.answer);
    p.answer.push_back(ctx.tok.eos_id());
    const int64_t fixed = static_cast<int64_t>(p.before.size() + p.after.size() + p.answer.size());
    p.context_budget = ctx.options.length - fixed;
    if (p.context_budget < minimum_context)
        throw ConfigError("task " + ctx.name + ": length " + std::to_string(ctx.options.length) +
                          " is too short: the prompt, question and answer need " + std::to_string(fixed + minimum_context) +
                          " tokens with this tokenizer");
    return p;
}

std::vector<int32_t> start_tokens(const TaskContext& ctx, const PromptTokens& prompt) {
    std::vector<int32_t> tokens;
    tokens.reserve(static_cast<size_t>(std::max<int64_t>(ctx.options.length, 0)));
    tokens.insert(tokens.end(), prompt.before.begin(), prompt.before.end());
    return tokens;
}

TaskExample finish_example(const PromptTokens& prompt, std::vector<int32_t> tokens, std::vector<std::string> answers) {
    TaskExample ex;
    ex.tokens = std::move(tokens);
    ex.tokens.insert(ex.tokens.end(), prompt.after.begin(), prompt.after.end());
    ex.prompt_length = static_cast<int64_t>(ex.tokens.size());
    ex.tokens.insert(ex.tokens.end(), prompt.answer.begin(), prompt.answer.end());
    ex.loss_mask.assign(ex.tokens.size(), 0);
    std::fill(ex.loss_mask.begin() + ex.prompt_length, ex.loss_mask.end(), 1);
    ex.answers = std::move(answers);
    return ex;
}

TaskExample build_with_haystack(TaskContext& ctx, const PromptParts& parts, PieceSource& source,
                                const std::vector<ContextInsert>& inserts, std::vector<std::string> answers,
                                int primary_insert) {
    const PromptTokens prompt = tokenize_parts(ctx, parts, 0);
    std::vector<int32_t> tokens = start_tokens(ctx, prompt);
    const FilledContext filled = fill_context(ctx, tokens, prompt.context_budget, source, inserts);
    TaskExample ex = finish_example(prompt, std::move(tokens), std::move(answers));
    if (primary_insert >= 0) ex.depth = filled.insert_depths[static_cast<size_t>(primary_insert)];
    return ex;
}

// ---------------------------------------------------------------- option helpers

double random_fraction(Rng& rng) { return static_cast<double>(rng.next_int(0, 1000001)) / 1e6; }

double chosen_depth(TaskContext& ctx) { return ctx.options.depth >= 0 ? ctx.options.depth : random_fraction(ctx.rng); }

int64_t extra_int(const TaskContext& ctx, const std::string& key, int64_t fallback, int64_t low, int64_t high) {
    if (!ctx.options.extra.contains(key)) return fallback;
    const Json& v = ctx.options.extra.at(key);
    if (!v.is_number() || v.as_number() != std::floor(v.as_number()) || v.as_number() < static_cast<double>(low) ||
        v.as_number() > static_cast<double>(high))
        throw ConfigError("task " + ctx.name + ": option " + key + " = " + v.dump() + " must be an integer in [" +
                          std::to_string(low) + ", " + std::to_string(high) + "]");
    return static_cast<int64_t>(v.as_number());
}

bool extra_bool(const TaskContext& ctx, const std::string& key, bool fallback) {
    if (!ctx.options.extra.contains(key)) return fallback;
    const Json& v = ctx.options.extra.at(key);
    if (!v.is_bool()) throw ConfigError("task " + ctx.name + ": option " + key + " = " + v.dump() + " must be true or false");
    return v.as_bool();
}

void check_extra_keys(const TaskContext& ctx, const std::vector<std::string>& known) {
    for (const auto& [key, value] : ctx.options.extra.fields()) {
        (void)value;
        if (std::find(known.begin(), known.end(), key) == known.end()) {
            std::string list;
            for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
            throw ConfigError("task " + ctx.name + ": unknown option '" + key + "' (known: " + (list.empty() ? "none" : list) + ")");
        }
    }
}

}  // namespace task_detail

// ---------------------------------------------------------------- scoring

double string_match_all(const std::string& prediction, const std::vector<std::string>& references) {
    if (references.empty()) return 0.0;
    const std::string p = lower(prediction);
    double found = 0;
    for (const auto& r : references) found += p.find(lower(r)) != std::string::npos ? 1.0 : 0.0;
    return found / static_cast<double>(references.size());
}

double string_match_part(const std::string& prediction, const std::vector<std::string>& references) {
    const std::string p = lower(prediction);
    for (const auto& r : references)
        if (p.find(lower(r)) != std::string::npos) return 1.0;
    return 0.0;
}

std::vector<std::string> babilong_labels(const std::string& name) {
    // BABILong's TASK_LABELS (babilong/metrics.py): the bAbI locations for qa1..qa4, people and
    // objects for qa5. Our generators draw from exactly these.
    if (name == "qa1" || name == "qa2" || name == "qa3" || name == "qa4")
        return {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"};
    if (name == "qa5") return {"Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"};
    return {};
}

namespace {

// BABILong's compare_answers: lower-case the output, keep its first sentence (and nothing
// from an echoed "<context>" or "<example>" on); the prediction is right when the target is
// the only task label in it, not counting labels that the question mentions.
double babilong_single_label(const std::string& name, const std::string& prediction, const std::string& target,
                             const std::string& question) {
    std::string out = lower(prediction);
    out = out.substr(0, out.find('.'));
    out = out.substr(0, out.find("<context>"));
    out = out.substr(0, out.find("<example>"));
    // (BABILong also cuts at "Question", after lower-casing, which never matches; so do we.)
    const std::string q = lower(question);
    const std::string t = lower(target);
    std::vector<std::string> in_output;
    for (const std::string& label : babilong_labels(name)) {
        const std::string l = lower(label);
        if (!q.empty() && q.find(l) != std::string::npos) continue;
        if (out.find(l) != std::string::npos) in_output.push_back(l);
    }
    return in_output.size() == 1 && in_output[0] == t ? 1.0 : 0.0;
}

}  // namespace

double score_task(const std::string& name, const std::string& prediction, const std::vector<std::string>& answers,
                  const std::string& question) {
    const TaskInfo* info = find_task(name);
    if (!info) throw ConfigError("unknown task '" + name + "' (known: " + known_task_list() + ")");
    if (answers.empty()) throw ConfigError("score " + name + ": no reference answers given");
    if (std::string(info->family) == "babilong") {
        if (answers.size() != 1) throw ConfigError("score " + name + ": BABILong tasks have one answer label, got " + std::to_string(answers.size()));
        return babilong_single_label(name, prediction, answers[0], question);
    }
    // RULER (eval/synthetic/constants.py): string_match_all for niah, vt, cwe and fwe (its
    // string_match_part is for the qa tasks, which are not generated here); passkey the same.
    return string_match_all(prediction, answers);
}

double score_task(const std::string& name, const std::string& prediction, const std::vector<std::string>& answers) {
    return score_task(name, prediction, answers, "");
}

}  // namespace hsa
