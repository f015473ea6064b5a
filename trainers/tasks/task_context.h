// Internals shared by the task generators (trainers/tasks/*.cpp), not a public API: the
// haystack piece sources, the context filler that hits a token budget, and the assembly of
// prompt + context + question + answer into a TaskExample.
//
// How the length is hit: the fixed text (instructions, question, answer prefix, answer) is
// tokenized first; what is left of options.length is the context budget. The context is
// streamed piece by piece (a sentence, a noise line, a distractor needle, each tokenized on
// its own and cached) into one token buffer, never one big string; the last piece that does
// not fit is cut at the longest word prefix that does. So an example is exactly the target
// length or short of it by less than one word's tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/rng.h"
#include "trainers/tasks/corpus.h"
#include "trainers/tasks/task.h"

namespace hsa {

// Tokenized haystack sentences, per (corpus, separator), filled lazily; plus tokenized words.
struct TaskGenerator::Cache {
    struct SentenceTokens {
        std::shared_ptr<const ProseCorpus> corpus;  // keeps the sentences alive
        std::vector<std::vector<int32_t>> tokens;
        std::vector<uint8_t> ready;
    };
    std::unordered_map<std::string, SentenceTokens> sentences;  // key: corpus address + separator
    std::unordered_map<std::string, std::shared_ptr<const ProseCorpus>> haystack_files;
    std::unordered_map<std::string, std::vector<int32_t>> piece_tokens;  // small fixed pieces (noise lines)
};

namespace task_detail {

// Everything one generator call needs.
struct TaskContext {
    std::string name;
    const Tokenizer& tok;
    const TaskOptions& options;
    TaskGenerator::Cache& cache;
    Rng rng;
};

// Stream of context pieces; each piece's text carries its own leading separator.
class PieceSource {
public:
    virtual ~PieceSource() = default;
    virtual const std::vector<int32_t>& tokens() = 0;  // the current piece's tokens
    virtual std::string text() = 0;                     // the current piece's text
    virtual void advance() = 0;
};

// Held-out prose sentences (or a --haystack file's), cycling from a random start; sentences
// for which `skip` returns true are passed over (BABILong keeps look-alike facts out).
class CorpusPieces : public PieceSource {
public:
    CorpusPieces(TaskContext& ctx, const std::string& separator, std::function<bool(const std::string&)> skip = {});
    const std::vector<int32_t>& tokens() override;
    std::string text() override { return separator_ + (*sentences_)[index_]; }
    void advance() override;

private:
    void settle();  // moves past skipped sentences
    const Tokenizer& tok_;
    TaskGenerator::Cache::SentenceTokens* cache_;
    const std::vector<std::string>* sentences_;
    std::string separator_;
    std::function<bool(const std::string&)> skip_;
    size_t index_ = 0;
};

// One fixed piece repeated forever (RULER's noise haystack).
class RepeatedPiece : public PieceSource {
public:
    RepeatedPiece(TaskContext& ctx, const std::string& text);
    const std::vector<int32_t>& tokens() override { return *tokens_; }
    std::string text() override { return text_; }
    void advance() override {}

private:
    std::string text_;
    const std::vector<int32_t>* tokens_;
};

// Pieces made on demand by a function (RULER's needle haystack of distractor needles).
class GeneratedPieces : public PieceSource {
public:
    GeneratedPieces(const Tokenizer& tok, std::function<std::string()> make) : tok_(tok), make_(std::move(make)) {}
    const std::vector<int32_t>& tokens() override;
    std::string text() override;
    void advance() override { have_ = false; }

private:
    void ensure();
    const Tokenizer& tok_;
    std::function<std::string()> make_;
    bool have_ = false;
    std::string text_;
    std::vector<int32_t> tokens_;
};

// A piece placed at a fraction of the background (0 = before all of it, 1 = after all of it).
struct ContextInsert {
    std::string text;
    double fraction = 0;
};

struct FilledContext {
    // Per insert (in the order given): its first token's offset inside the context, and the
    // fraction of background tokens before it (the realized depth).
    std::vector<int64_t> insert_offsets;
    std::vector<double> insert_depths;
    int64_t background_tokens = 0;
};

// Appends `budget` tokens of context to `out` (or fewer by less than one word's tokens):
// background pieces from `source` with the inserts (sorted by fraction) placed at the
// piece boundary nearest their fraction of the background. Throws ConfigError when the
// inserts alone exceed the budget.
FilledContext fill_context(TaskContext& ctx, std::vector<int32_t>& out, int64_t budget, PieceSource& source,
                           const std::vector<ContextInsert>& inserts);

// The fixed text around a context.
struct PromptParts {
    std::string before_context;  // instructions
    std::string after_context;   // question and answer prefix
    std::string answer;          // the trained answer text (EOS is added after it)
};

// Tokens of the parts, and the context budget they leave; throws ConfigError naming the task
// and the minimum length when `minimum_context` does not fit.
struct PromptTokens {
    std::vector<int32_t> before, after, answer;  // answer ends with EOS
    int64_t context_budget = 0;
};
PromptTokens tokenize_parts(TaskContext& ctx, const PromptParts& parts, int64_t minimum_context);

// The example's token buffer, holding the instructions, with room for the whole example: the
// context is appended to it in place (a 32M-token example is never copied).
std::vector<int32_t> start_tokens(const TaskContext& ctx, const PromptTokens& prompt);
// Appends the question and the answer to `tokens` (instructions + context) and sets the
// prompt length and the loss mask (1 on the answer and its EOS).
TaskExample finish_example(const PromptTokens& prompt, std::vector<int32_t> tokens, std::vector<std::string> answers);

// A whole example whose context is background + inserts: the usual path.
TaskExample build_with_haystack(TaskContext& ctx, const PromptParts& parts, PieceSource& source,
                                const std::vector<ContextInsert>& inserts, std::vector<std::string> answers,
                                int primary_insert);

// Random helpers on the example's RNG.
double random_fraction(Rng& rng);  // [0, 1]
// options.depth when set (>= 0), else a random fraction.
double chosen_depth(TaskContext& ctx);
// A value of options.extra: an integer within [low, high], or `fallback` when absent.
int64_t extra_int(const TaskContext& ctx, const std::string& key, int64_t fallback, int64_t low, int64_t high);
bool extra_bool(const TaskContext& ctx, const std::string& key, bool fallback);
// Throws ConfigError for an options.extra key not in `known`.
void check_extra_keys(const TaskContext& ctx, const std::vector<std::string>& known);

// The generators, one per family (ruler_tasks.cpp, babilong_tasks.cpp). `name` is known.
TaskExample generate_ruler_task(TaskContext& ctx);
TaskExample generate_babilong_task(TaskContext& ctx);

}  // namespace task_detail
}  // namespace hsa
