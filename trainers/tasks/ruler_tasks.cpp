// RULER-style tasks (NVIDIA RULER, scripts/data/synthetic/*.py and scripts/synthetic.yaml):
// needle in a haystack (8 variants), variable tracking, common and frequent words extraction,
// plus passkey retrieval. The prompts use RULER's templates and answer prefixes (the answer
// prefix ends the prompt, so the answer tokens are just the values); the haystacks are
// streamed to the target length instead of RULER's grow-and-retokenize search.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "core/model/config.h"
#include "trainers/tasks/task_context.h"

namespace hsa {
namespace task_detail {

namespace {

// RULER's noise haystack (type_haystack "repeat") and the passkey noise.
const char* kNoise = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

enum class Haystack { Repeat, Essay, Needle };
enum class Kind { Words, Numbers, Uuids };

struct NiahSpec {
    const char* name;
    Haystack haystack;
    Kind key, value;
    int keys, values, queries;
};

// scripts/synthetic.yaml of RULER.
const NiahSpec kNiahSpecs[] = {
    {"niah_single_1", Haystack::Repeat, Kind::Words, Kind::Numbers, 1, 1, 1},
    {"niah_single_2", Haystack::Essay, Kind::Words, Kind::Numbers, 1, 1, 1},
    {"niah_single_3", Haystack::Essay, Kind::Words, Kind::Uuids, 1, 1, 1},
    {"niah_multikey_1", Haystack::Essay, Kind::Words, Kind::Numbers, 4, 1, 1},
    {"niah_multikey_2", Haystack::Needle, Kind::Words, Kind::Numbers, 1, 1, 1},
    {"niah_multikey_3", Haystack::Needle, Kind::Uuids, Kind::Uuids, 1, 1, 1},
    {"niah_multivalue", Haystack::Essay, Kind::Words, Kind::Numbers, 1, 4, 1},
    {"niah_multiquery", Haystack::Essay, Kind::Words, Kind::Numbers, 4, 1, 4},
};

std::string random_number(Rng& rng, int digits) {
    int64_t low = 1;
    for (int i = 1; i < digits; ++i) low *= 10;
    return std::to_string(rng.next_int(low, low * 10));
}

// RULER keys of type "words" are "adjective-noun" pairs; we draw both halves from the word list.
std::string random_word_key(Rng& rng) {
    const std::vector<std::string>& words = english_words();
    const auto n = static_cast<int64_t>(words.size());
    return words[static_cast<size_t>(rng.next_int(0, n))] + "-" + words[static_cast<size_t>(rng.next_int(0, n))];
}

// A version-4 UUID, lower-case hex (what Python's str(uuid.UUID(int=..., version=4)) prints).
std::string random_uuid(Rng& rng) {
    uint64_t hi = rng.next_u64(), lo = rng.next_u64();
    hi = (hi & ~0xF000ull) | 0x4000ull;                              // version 4
    lo = (lo & ~(0xC000000000000000ull)) | 0x8000000000000000ull;    // RFC 4122 variant
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%08llx-%04llx-%04llx-%04llx-%012llx", static_cast<unsigned long long>(hi >> 32),
                  static_cast<unsigned long long>((hi >> 16) & 0xFFFF), static_cast<unsigned long long>(hi & 0xFFFF),
                  static_cast<unsigned long long>(lo >> 48), static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFull));
    return buf;
}

std::string random_of(Rng& rng, Kind kind) {
    switch (kind) {
        case Kind::Words: return random_word_key(rng);
        case Kind::Numbers: return random_number(rng, 7);
        case Kind::Uuids: return random_uuid(rng);
    }
    return "";
}

const char* plural_name(Kind kind) { return kind == Kind::Uuids ? "uuids" : kind == Kind::Words ? "words" : "numbers"; }

std::string join(const std::vector<std::string>& items, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
    return out;
}

// Sorts inserts by fraction (stable: chains keep their order) and returns where the one that
// was at `primary` went.
int sort_inserts(std::vector<ContextInsert>& inserts, size_t primary) {
    std::vector<size_t> order(inserts.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return inserts[a].fraction < inserts[b].fraction; });
    std::vector<ContextInsert> sorted;
    int where = -1;
    for (size_t i = 0; i < order.size(); ++i) {
        if (order[i] == primary) where = static_cast<int>(i);
        sorted.push_back(inserts[order[i]]);
    }
    inserts = std::move(sorted);
    return where;
}

// RULER's vt and cwe prompts start with one worked example. Option "fewshot" (true/false)
// decides; by default it is kept when it takes at most a quarter of the length, so short
// contexts (1K tokens of bytes) still have room for the task itself.
bool include_worked_example(const TaskContext& ctx, const std::string& example) {
    if (ctx.options.extra.contains("fewshot")) return extra_bool(ctx, "fewshot", true);
    return static_cast<int64_t>(ctx.tok.encode(example).size()) * 4 <= ctx.options.length;
}

// ---------------------------------------------------------------- needle in a haystack

TaskExample generate_niah(TaskContext& ctx, const NiahSpec& spec) {
    check_extra_keys(ctx, {});
    Rng& rng = ctx.rng;
    std::vector<std::string> keys;
    std::vector<std::vector<std::string>> values;
    std::set<std::string> used;
    while (static_cast<int>(keys.size()) < spec.keys) {
        std::string k = random_of(rng, spec.key);
        if (used.insert(k).second) keys.push_back(k);
    }
    for (int k = 0; k < spec.keys; ++k) {
        std::vector<std::string> vs;
        std::set<std::string> seen;
        while (static_cast<int>(vs.size()) < spec.values) {
            std::string v = random_of(rng, spec.value);
            if (seen.insert(v).second) vs.push_back(v);
        }
        values.push_back(vs);
    }
    const std::string type_v = plural_name(spec.value);
    const std::string sep = spec.haystack == Haystack::Essay ? " " : "\n";
    // RULER: "One of the special magic {type_needle_v} for {key} is: {value}." (always plural).
    auto needle = [&](const std::string& key, const std::string& value) {
        return sep + "One of the special magic " + type_v + " for " + key + " is: " + value + ".";
    };
    // Needle 0 (first key, first value) is the one at the asked depth; the others, RULER
    // style, at random depths.
    std::vector<ContextInsert> inserts;
    for (int k = 0; k < spec.keys; ++k)
        for (int v = 0; v < spec.values; ++v)
            inserts.push_back({needle(keys[k], values[k][v]), k == 0 && v == 0 ? chosen_depth(ctx) : random_fraction(rng)});
    const int primary = sort_inserts(inserts, 0);

    // The first `queries` keys are asked (the keys are random, so which ones does not matter).
    std::vector<std::string> queries(keys.begin(), keys.begin() + spec.queries);
    std::vector<std::string> answers;
    for (int q = 0; q < spec.queries; ++q)
        for (const std::string& v : values[q]) answers.push_back(v);
    const std::string query = queries.size() > 1 ? join(std::vector<std::string>(queries.begin(), queries.end() - 1), ", ") +
                                                       ", and " + queries.back()
                                                 : queries[0];
    // RULER's template, made singular (its replace('Some','A'), 'are all'/'are' -> 'is') when
    // one value is asked.
    const bool single = spec.queries * spec.values == 1;
    const std::string type_one = single ? type_v.substr(0, type_v.size() - 1) : type_v;
    PromptParts parts;
    parts.before_context = std::string(single ? "A" : "Some") + " special magic " + type_one + (single ? " is" : " are") +
                           " hidden within the following text. Make sure to memorize it. I will quiz you about the " +
                           type_one + " afterwards." + (spec.haystack == Haystack::Essay ? "\n" : "");
    parts.after_context = "\n" + std::string(single ? "What is" : "What are all") + " the special magic " + type_one +
                          " for " + query + " mentioned in the provided text? The special magic " + type_one + " for " +
                          query + " mentioned in the provided text " + (single ? "is" : "are");
    parts.answer = " " + join(answers, ", ") + ".";

    if (spec.haystack == Haystack::Essay) {
        CorpusPieces source(ctx, sep);
        return build_with_haystack(ctx, parts, source, inserts, answers, primary);
    }
    if (spec.haystack == Haystack::Repeat) {
        RepeatedPiece source(ctx, sep + kNoise);
        return build_with_haystack(ctx, parts, source, inserts, answers, primary);
    }
    // The needle haystack: distractor needles with fresh random keys (never a real key).
    GeneratedPieces source(ctx.tok, [&]() {
        std::string key;
        do key = random_of(rng, spec.key);
        while (used.count(key));
        return needle(key, random_of(rng, spec.value));
    });
    return build_with_haystack(ctx, parts, source, inserts, answers, primary);
}

// ---------------------------------------------------------------- passkey

TaskExample generate_passkey(TaskContext& ctx) {
    check_extra_keys(ctx, {});
    // The passkey retrieval test of Mohtashami & Jaggi (landmark attention), as used by
    // LongLoRA and others: a 5-digit key in repeated noise.
    const std::string key = random_number(ctx.rng, 5);
    PromptParts parts;
    parts.before_context =
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.";
    parts.after_context = " What is the pass key? The pass key is";
    parts.answer = " " + key + ".";
    std::vector<ContextInsert> inserts{{" The pass key is " + key + ". Remember it. " + key + " is the pass key.", chosen_depth(ctx)}};
    RepeatedPiece source(ctx, std::string(" ") + kNoise);
    return build_with_haystack(ctx, parts, source, inserts, {key}, 0);
}

// ---------------------------------------------------------------- variable tracking

std::string random_variable(Rng& rng, int letters) {
    std::string v;
    for (int i = 0; i < letters; ++i) v += static_cast<char>('A' + rng.next_int(0, 26));
    return v;
}

struct Chains {
    std::vector<std::vector<std::string>> variables;  // per chain: hops + 1 names
    std::vector<std::vector<std::string>> statements;  // per chain: "VAR A = 12345", "VAR B = VAR A", ...
    std::string first_value;                            // chain 0's value: the query
};

Chains make_chains(Rng& rng, int chains, int hops, int letters) {
    Chains c;
    std::set<std::string> used;
    std::set<std::string> values;
    for (int i = 0; i < chains; ++i) {
        std::vector<std::string> vars;
        while (static_cast<int>(vars.size()) < hops + 1) {
            std::string v = random_variable(rng, letters);
            if (used.insert(v).second) vars.push_back(v);
        }
        std::string value;
        do value = std::to_string(rng.next_int(10000, 100000));
        while (!values.insert(value).second);  // chains must not share the asked value
        std::vector<std::string> st{"VAR " + vars[0] + " = " + value};
        for (int j = 0; j < hops; ++j) st.push_back("VAR " + vars[j + 1] + " = VAR " + vars[j]);
        if (i == 0) c.first_value = value;
        c.variables.push_back(vars);
        c.statements.push_back(st);
    }
    return c;
}

std::string vt_question(const std::string& value, int hops) {
    // RULER's wording, including its "assgined".
    return "\nQuestion: Find all variables that are assigned the value " + value +
           " in the text above. Answer: According to the chain(s) of variable assignment in the text above, " +
           std::to_string(hops + 1) + " variables are assgined the value " + value + ", they are:";
}

const char* kVtInstruction = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n";

TaskExample generate_vt(TaskContext& ctx) {
    check_extra_keys(ctx, {"num_chains", "num_hops", "fewshot"});
    const int chains = static_cast<int>(extra_int(ctx, "num_chains", 1, 1, 100));
    const int hops = static_cast<int>(extra_int(ctx, "num_hops", 4, 1, 100));
    Rng& rng = ctx.rng;
    // RULER puts one worked example (3-letter names, ~500 tokens) before the question.
    std::string example;
    {
        const Chains icl = make_chains(rng, chains, hops, 3);
        std::vector<std::string> lines(static_cast<size_t>(hops + 3), std::string("\n") + kNoise);
        for (const auto& chain : icl.statements) {
            // Each statement goes in at a random line, the chain's order kept.
            std::vector<size_t> at;
            for (size_t j = 0; j < chain.size(); ++j) at.push_back(static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(lines.size()) + 1)));
            std::sort(at.begin(), at.end());
            for (size_t j = chain.size(); j-- > 0;) lines.insert(lines.begin() + static_cast<std::ptrdiff_t>(at[j]), "\nVAR" + chain[j].substr(3));
        }
        example = kVtInstruction + join(lines, "") + vt_question(icl.first_value, hops) + " " + join(icl.variables[0], " ") + "\n\n";
    }
    if (!include_worked_example(ctx, example)) example.clear();
    const Chains c = make_chains(rng, chains, hops, 5);
    std::vector<ContextInsert> inserts;
    for (const auto& chain : c.statements) {
        std::vector<double> fractions;
        for (size_t j = 0; j < chain.size(); ++j) fractions.push_back(random_fraction(rng));
        std::sort(fractions.begin(), fractions.end());
        for (size_t j = 0; j < chain.size(); ++j) inserts.push_back({"\n" + chain[j], fractions[j]});
    }
    sort_inserts(inserts, 0);
    PromptParts parts;
    parts.before_context = example + kVtInstruction;
    parts.after_context = vt_question(c.first_value, hops);
    parts.answer = " " + join(c.variables[0], " ");
    RepeatedPiece source(ctx, std::string("\n") + kNoise);
    return build_with_haystack(ctx, parts, source, inserts, c.variables[0], -1);
}

// ---------------------------------------------------------------- common words extraction

// Partial Fisher-Yates: words[0, count) become a uniform random sample, in random order.
std::vector<const std::string*> sample_words(Rng& rng, size_t count) {
    const std::vector<std::string>& all = english_words();
    std::vector<const std::string*> pool(all.size());
    for (size_t i = 0; i < all.size(); ++i) pool[i] = &all[i];
    count = std::min(count, pool.size());
    for (size_t i = 0; i < count; ++i) std::swap(pool[i], pool[static_cast<size_t>(rng.next_int(static_cast<int64_t>(i), static_cast<int64_t>(pool.size())))]);
    return pool;
}

// "1. apple 2. pear ...", for the worked example and the answer.
std::string numbered(const std::vector<std::string>& words) {
    std::string out;
    for (size_t i = 0; i < words.size(); ++i) out += (i ? " " : "") + std::to_string(i + 1) + ". " + words[i];
    return out;
}

std::vector<std::string> shuffled_repeats(Rng& rng, const std::vector<std::string>& common, int common_repeats,
                                          const std::vector<std::string>& rare, int rare_repeats) {
    std::vector<std::string> list;
    for (const auto& w : common) list.insert(list.end(), static_cast<size_t>(common_repeats), w);
    for (const auto& w : rare) list.insert(list.end(), static_cast<size_t>(rare_repeats), w);
    for (size_t i = list.size(); i > 1; --i) std::swap(list[i - 1], list[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(i)))]);
    return list;
}

const char* kCweInstruction =
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that "
    "appear most often.\n";

std::string cwe_question(int common) {
    return "\nQuestion: What are the " + std::to_string(common) +
           " most common words in the above list? Answer: The top " + std::to_string(common) +
           " words that appear most often in the list are:";
}

TaskExample generate_cwe(TaskContext& ctx) {
    check_extra_keys(ctx, {"num_cw", "freq_cw", "freq_ucw", "fewshot"});
    const bool short_context = ctx.options.length < 4096;
    // RULER: 10 common words 30 times and the others 3 times; below 4K tokens 6 and 1, with a
    // smaller worked example.
    const int num_common = static_cast<int>(extra_int(ctx, "num_cw", 10, 1, 1000));
    int freq_common = static_cast<int>(extra_int(ctx, "freq_cw", short_context ? 6 : 30, 2, 100000));
    int freq_rare = static_cast<int>(extra_int(ctx, "freq_ucw", short_context ? 1 : 3, 1, 100000));
    const bool frequencies_given = ctx.options.extra.contains("freq_cw") || ctx.options.extra.contains("freq_ucw");
    if (freq_rare >= freq_common)
        throw ConfigError("task cwe: freq_ucw " + std::to_string(freq_rare) + " must be below freq_cw " + std::to_string(freq_common));
    Rng& rng = ctx.rng;

    // The worked example: 20 words (3 and 1 repeats) below 4K, else 40 (10 and 3).
    const size_t example_words = short_context ? 20 : 40;
    const auto example_pool = sample_words(rng, example_words);
    std::vector<std::string> ex_common, ex_rare;
    for (size_t i = 0; i < example_words; ++i) (i < static_cast<size_t>(num_common) ? ex_common : ex_rare).push_back(*example_pool[i]);
    const std::vector<std::string> ex_list =
        shuffled_repeats(rng, ex_common, short_context ? 3 : 10, ex_rare, short_context ? 1 : 3);
    std::string example = kCweInstruction + numbered(ex_list) + cwe_question(num_common) + " " + numbered(ex_common) + "\n";
    if (!include_worked_example(ctx, example)) example.clear();

    const std::vector<const std::string*> pool = sample_words(rng, english_words().size());
    if (pool.size() <= static_cast<size_t>(num_common)) throw ConfigError("task cwe: num_cw " + std::to_string(num_common) + " exceeds the word list");
    std::vector<std::string> common;
    for (int i = 0; i < num_common; ++i) common.push_back(*pool[static_cast<size_t>(i)]);

    PromptParts parts;
    parts.before_context = example + kCweInstruction;
    parts.after_context = cwe_question(num_common);
    parts.answer = " " + numbered(common);
    const PromptTokens prompt = tokenize_parts(ctx, parts, 0);
    const int64_t budget = prompt.context_budget;

    // The list is entries " <i>." + " <word>", each part tokenized on its own, so its token
    // count is known before it is shuffled: Σ number tokens + Σ word tokens.
    std::vector<int64_t> number_tokens{0};  // [i] = tokens of " i."
    auto number_size = [&](int64_t i) {
        while (static_cast<int64_t>(number_tokens.size()) <= i) {
            const int64_t n = static_cast<int64_t>(number_tokens.size());
            number_tokens.push_back(static_cast<int64_t>(ctx.tok.encode(" " + std::to_string(n) + ".").size()));
        }
        return number_tokens[static_cast<size_t>(i)];
    };
    std::vector<int64_t> word_tokens(pool.size(), -1);
    auto word_size = [&](size_t w) {
        if (word_tokens[w] < 0) word_tokens[w] = static_cast<int64_t>(ctx.tok.encode(" " + *pool[w]).size());
        return word_tokens[w];
    };
    // RULER's frequencies assume a BPE tokenizer; with bytes, 10 words 30 times do not fit
    // 4K tokens. Unless freq_cw/freq_ucw were given, they step down RULER's own tiers (30/3,
    // then 6/1 of its short contexts, then 3/1 of its short worked example) until the common
    // words' block takes at most half of the budget.
    if (!frequencies_given) {
        const int tiers[3][2] = {{30, 3}, {6, 1}, {3, 1}};
        for (const auto& tier : tiers) {
            if (tier[0] > freq_common) continue;
            freq_common = tier[0];
            freq_rare = tier[1];
            int64_t block = 0;
            for (int64_t e = 1; e <= static_cast<int64_t>(num_common) * freq_common; ++e) block += number_size(e);
            for (size_t w = 0; w < static_cast<size_t>(num_common); ++w) block += freq_common * word_size(w);
            if (block * 2 <= budget) break;
        }
    }
    // Greedy, one entry at a time: the common words' block first, then each rare word
    // freq_ucw times. When the word list runs out (millions of tokens), every count is scaled
    // by `scale`, which keeps the common words freq_cw/freq_ucw times as frequent.
    std::vector<int64_t> counts;  // per pool word
    for (int64_t scale = 1;; ++scale) {
        counts.assign(pool.size(), 0);
        int64_t entries = 0, used = 0;
        bool full = false;
        auto add = [&](size_t w) {
            const int64_t cost = number_size(entries + 1) + word_size(w);
            if (used + cost > budget) return false;
            used += cost;
            ++entries;
            ++counts[w];
            return true;
        };
        for (int i = 0; i < num_common && !full; ++i)
            for (int64_t r = 0; r < freq_common * scale && !full; ++r) full = !add(static_cast<size_t>(i));
        if (full) {
            if (scale == 1)
                throw ConfigError("task cwe: length " + std::to_string(ctx.options.length) + " is too short for " +
                                  std::to_string(num_common) + " words repeated " + std::to_string(freq_common) + " times");
            break;  // cannot happen in practice: a larger scale is only tried when the list ran out
        }
        for (size_t w = static_cast<size_t>(num_common); w < pool.size() && !full; ++w)
            for (int64_t r = 0; r < freq_rare * scale && !full; ++r) full = !add(w);
        if (full) break;
    }
    std::vector<size_t> list;
    for (size_t w = 0; w < pool.size(); ++w) list.insert(list.end(), static_cast<size_t>(counts[w]), w);
    for (size_t i = list.size(); i > 1; --i) std::swap(list[i - 1], list[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(i)))]);
    std::vector<int32_t> context = start_tokens(ctx, prompt);
    for (size_t i = 0; i < list.size(); ++i) {
        const std::vector<int32_t> n = ctx.tok.encode(" " + std::to_string(i + 1) + ".");
        const std::vector<int32_t> w = ctx.tok.encode(" " + *pool[list[i]]);
        context.insert(context.end(), n.begin(), n.end());
        context.insert(context.end(), w.begin(), w.end());
    }
    return finish_example(prompt, std::move(context), common);
}

// ---------------------------------------------------------------- frequent words extraction

double riemann_zeta(double s) {
    // Direct sum to K plus the Euler-Maclaurin tail: plenty for s > 1.
    const int K = 2000;
    double sum = 0;
    for (int k = 1; k < K; ++k) sum += std::pow(static_cast<double>(k), -s);
    const double Kd = K;
    return sum + std::pow(Kd, 1 - s) / (s - 1) + 0.5 * std::pow(Kd, -s);
}

TaskExample generate_fwe(TaskContext& ctx) {
    check_extra_keys(ctx, {"alpha", "coded_wordlen", "vocab_size"});
    double alpha = 2.0;
    if (ctx.options.extra.contains("alpha")) {
        const Json& a = ctx.options.extra.at("alpha");
        if (!a.is_number() || a.as_number() <= 1.0 || a.as_number() > 10)
            throw ConfigError("task fwe: option alpha = " + a.dump() + " must be a number in (1, 10]");
        alpha = a.as_number();
    }
    const int word_length = static_cast<int>(extra_int(ctx, "coded_wordlen", 6, 3, 20));
    // RULER: vocabulary of length / 50 coded words.
    const int64_t vocab_size = extra_int(ctx, "vocab_size", std::max<int64_t>(5, ctx.options.length / 50), 5, 100000000);
    Rng& rng = ctx.rng;
    std::set<std::string> seen;
    std::vector<std::string> vocab;
    while (static_cast<int64_t>(vocab.size()) < vocab_size) {
        std::string w;
        for (int i = 0; i < word_length; ++i) w += static_cast<char>('a' + rng.next_int(0, 26));
        if (seen.insert(w).second) vocab.push_back(w);
    }
    vocab[0] = "...";  // RULER: the top-ranked "word" is noise the question says to ignore
    const std::vector<std::string> answers(vocab.begin() + 1, vocab.begin() + 4);

    PromptParts parts;
    parts.before_context =
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words.";
    parts.after_context =
        "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently "
        "appeared words in the above coded text? Answer: According to the coded text above, the three most frequently "
        "appeared words are:";
    parts.answer = " " + join(answers, " ");
    const PromptTokens prompt = tokenize_parts(ctx, parts, 0);
    const int64_t budget = prompt.context_budget;

    // Word k (1-based rank) appears floor(n k^-alpha / zeta(alpha)) times; the largest n that
    // fits is found by bisection (the token count grows with n).
    const double zeta = riemann_zeta(alpha);
    std::vector<double> share(vocab.size());
    std::vector<int64_t> word_tokens(vocab.size());
    for (size_t k = 0; k < vocab.size(); ++k) {
        share[k] = std::pow(static_cast<double>(k + 1), -alpha) / zeta;
        word_tokens[k] = static_cast<int64_t>(ctx.tok.encode(" " + vocab[k]).size());
    }
    auto count_of = [&](int64_t n, size_t k) { return static_cast<int64_t>(std::floor(static_cast<double>(n) * share[k])); };
    auto tokens_for = [&](int64_t n) {
        int64_t total = 0;
        for (size_t k = 0; k < vocab.size(); ++k) {
            const int64_t c = count_of(n, k);
            if (c == 0) break;  // shares fall with k
            total += c * word_tokens[k];
        }
        return total;
    };
    int64_t low = 0, high = 2 * budget + 16;
    while (low < high) {
        const int64_t mid = (low + high + 1) / 2;
        if (tokens_for(mid) <= budget) low = mid;
        else high = mid - 1;
    }
    std::vector<int64_t> counts(vocab.size());
    for (size_t k = 0; k < vocab.size(); ++k) counts[k] = count_of(low, k);
    // Fill the last gap with more noise dots (already the most frequent; the answer is unchanged).
    counts[0] += (budget - tokens_for(low)) / word_tokens[0];
    if (!(counts[1] > counts[2] && counts[2] > counts[3] && counts[3] > counts[4]))  // vocab_size >= 5
        throw ConfigError("task fwe: length " + std::to_string(ctx.options.length) +
                          " is too short for three clearly most frequent words (counts " + std::to_string(counts[1]) + ", " +
                          std::to_string(counts[2]) + ", " + std::to_string(counts[3]) + ")");
    std::vector<uint32_t> list;
    for (size_t k = 0; k < vocab.size(); ++k) list.insert(list.end(), static_cast<size_t>(counts[k]), static_cast<uint32_t>(k));
    for (size_t i = list.size(); i > 1; --i) std::swap(list[i - 1], list[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(i)))]);
    std::vector<std::vector<int32_t>> encoded(vocab.size());
    std::vector<int32_t> context = start_tokens(ctx, prompt);
    for (uint32_t k : list) {
        if (encoded[k].empty()) encoded[k] = ctx.tok.encode(" " + vocab[k]);
        context.insert(context.end(), encoded[k].begin(), encoded[k].end());
    }
    return finish_example(prompt, std::move(context), answers);
}

}  // namespace

TaskExample generate_ruler_task(TaskContext& ctx) {
    for (const NiahSpec& spec : kNiahSpecs)
        if (ctx.name == spec.name) return generate_niah(ctx, spec);
    if (ctx.name == "vt") return generate_vt(ctx);
    if (ctx.name == "cwe") return generate_cwe(ctx);
    if (ctx.name == "fwe") return generate_fwe(ctx);
    if (ctx.name == "passkey") return generate_passkey(ctx);
    throw ConfigError("unknown RULER task '" + ctx.name + "'");
}

}  // namespace task_detail
}  // namespace hsa
