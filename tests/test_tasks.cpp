// Tests of the task generators (trainers/tasks/): every answer re-derived from the generated
// text (needles, chains and word counts parsed back, bAbI facts re-simulated), lengths,
// determinism, depth control, loss masks, the scoring rules, the prose corpus, task shards,
// and `hsa data task` through the real binary.
//
// Tests that need the installed corpus (Debian packages bible-kjv-text, fortunes-min,
// fortunes, wamerican; launch/setup.sh installs them) skip with the reason when it is missing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/model/config.h"
#include "tests/cli_runner.h"
#include "tests/file_test_util.h"
#include "trainers/tasks/corpus.h"
#include "trainers/tasks/task.h"
#include "trainers/tasks/task_shard.h"
#include "trainers/tokenizer.h"

namespace hsa {
namespace {

using test::describe;
using test::RunResult;

// Tasks that read nothing installed; the others need the corpus or the word list.
bool needs_installed_files(const std::string& task) {
    return !(task == "passkey" || task == "vt" || task == "fwe" || task == "niah_multikey_3");
}

#define SKIP_WITHOUT_CORPUS(task)                                \
    do {                                                         \
        if (needs_installed_files(task)) HSA_SKIP_WITHOUT_CORPUS(); \
    } while (0)

// A tokenizer unlike the byte one: two bytes per token (an odd last byte alone), so token
// counts are not byte counts and a piece cut by tokens is not cut by bytes.
class BytePairTokenizer : public Tokenizer {
public:
    std::string name() const override { return "byte-pair-test"; }
    int32_t vocab_size() const override { return 65536 + 256 + 1; }
    int32_t bos_id() const override { return -1; }
    int32_t eos_id() const override { return 65536 + 256; }
    int32_t pad_id() const override { return -1; }
    std::vector<int32_t> encode(const std::string& text) const override {
        std::vector<int32_t> ids;
        size_t i = 0;
        for (; i + 1 < text.size(); i += 2)
            ids.push_back(static_cast<unsigned char>(text[i]) * 256 + static_cast<unsigned char>(text[i + 1]));
        if (i < text.size()) ids.push_back(65536 + static_cast<unsigned char>(text[i]));
        return ids;
    }
    std::string decode(const std::vector<int32_t>& ids) const override {
        std::string out;
        for (int32_t id : ids) {
            if (id == eos_id()) out += "<|eos|>";
            else if (id >= 65536) out += static_cast<char>(id - 65536);
            else {
                out += static_cast<char>(id / 256);
                out += static_cast<char>(id % 256);
            }
        }
        return out;
    }
};

TaskExample make(const std::string& task, int64_t length, uint64_t seed = 1, int64_t index = 0, double depth = -1,
                 const Tokenizer* tok = nullptr) {
    static ByteTokenizer byte;
    TaskOptions o;
    o.length = length;
    o.seed = seed;
    o.depth = depth;
    return generate_task_example(task, tok ? *tok : byte, o, index);
}

std::string prompt_text(const TaskExample& ex) {
    ByteTokenizer tok;
    return tok.decode(std::vector<int32_t>(ex.tokens.begin(), ex.tokens.begin() + ex.prompt_length));
}

std::string answer_text(const TaskExample& ex) {
    ByteTokenizer tok;
    return tok.decode(std::vector<int32_t>(ex.tokens.begin() + ex.prompt_length, ex.tokens.end()));
}

std::vector<std::string> sorted(std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
}

std::vector<std::string> split_on(const std::string& text, const std::string& sep) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t at = text.find(sep); at != std::string::npos; at = text.find(sep, start)) {
        out.push_back(text.substr(start, at - start));
        start = at + sep.size();
    }
    out.push_back(text.substr(start));
    return out;
}

// ---------------------------------------------------------------- re-deriving answers from text

// The sentences of `text` that start with `start` (at the text's start or after a space or
// newline) and end at the next period: candidate needles or facts, found without running a
// regex over megabytes.
std::vector<std::string> sentences_starting_with(const std::string& text, const std::string& start) {
    std::vector<std::string> out;
    for (size_t at = text.find(start); at != std::string::npos; at = text.find(start, at + 1)) {
        if (at > 0 && text[at - 1] != ' ' && text[at - 1] != '\n') continue;
        const size_t stop = text.find('.', at);
        if (stop == std::string::npos) break;
        out.push_back(text.substr(at, stop + 1 - at));
    }
    return out;
}

// niah: the values of every needle whose key is asked in the question.
std::vector<std::string> derive_niah(const std::string& prompt) {
    static const std::regex needle(R"(One of the special magic (?:numbers|uuids) for (\S+) is: (\S+)\.)");
    static const std::regex question(R"(What (?:is|are all) the special magic \w+ for (.+) mentioned in the provided text\?)");
    const std::string tail = prompt.substr(prompt.rfind("\nWhat "));
    std::smatch q;
    EXPECT_TRUE(std::regex_search(tail, q, question)) << "no question in the prompt";
    std::string asked = q[1];
    std::vector<std::string> keys;
    for (std::string part : split_on(asked, ", ")) {
        if (part.rfind("and ", 0) == 0) part = part.substr(4);
        keys.push_back(part);
    }
    std::vector<std::string> values;
    for (const std::string& sentence : sentences_starting_with(prompt, "One of the special magic")) {
        // A UUID value holds no period, a number neither: the sentence ends at the value's end.
        std::smatch m;
        if (!std::regex_match(sentence, m, needle)) continue;
        if (std::find(keys.begin(), keys.end(), m[1].str()) != keys.end()) values.push_back(m[2]);
    }
    return values;
}

std::vector<std::string> derive_passkey(const std::string& prompt) {
    static const std::regex key(R"(The pass key is (\d+)\. Remember it\. (\d+) is the pass key\.)");
    std::vector<std::string> out;
    for (auto it = std::sregex_iterator(prompt.begin(), prompt.end(), key); it != std::sregex_iterator(); ++it) {
        EXPECT_EQ((*it)[1].str(), (*it)[2].str());
        out.push_back((*it)[1]);
    }
    return out;
}

// vt: every variable that the value flows to, following "VAR X = VAR Y" in text order, in
// the last (the real, not the worked-example) question's section.
std::vector<std::string> derive_vt(const std::string& prompt) {
    const size_t section = prompt.rfind("Memorize and track");
    const std::string text = prompt.substr(section);
    static const std::regex value_q(R"(assigned the value (\d+) in the text above)");
    std::smatch q;
    EXPECT_TRUE(std::regex_search(text, q, value_q));
    const std::string value = q[1];
    static const std::regex assign(R"(VAR ([A-Z]+) = (VAR ([A-Z]+)|(\d+)))");
    std::set<std::string> holding;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), assign); it != std::sregex_iterator(); ++it) {
        const std::string var = (*it)[1];
        if ((*it)[4].matched ? (*it)[4].str() == value : holding.count((*it)[3].str()) > 0) holding.insert(var);
    }
    return std::vector<std::string>(holding.begin(), holding.end());
}

// cwe: the num_cw most frequent words of the last numbered list; they must beat every other
// word strictly. Entries are "<n>. <word>", numbered 1, 2, 3, ...
std::vector<std::string> derive_cwe(const std::string& prompt, size_t common) {
    const size_t start = prompt.rfind("appear most often.\n") + 19;
    const size_t end = prompt.rfind("\nQuestion:");
    std::istringstream list(prompt.substr(start, end - start));
    std::map<std::string, int> counts;
    std::string number, word;
    int expected_number = 1;
    while (list >> number >> word) {
        EXPECT_EQ(number, std::to_string(expected_number++) + ".") << "entries are numbered 1, 2, 3, ...";
        ++counts[word];
    }
    std::vector<std::pair<int, std::string>> by_count;
    for (const auto& [w, c] : counts) by_count.push_back({c, w});
    std::sort(by_count.rbegin(), by_count.rend());
    EXPECT_GT(by_count.size(), common);
    if (by_count.size() > common) {
        EXPECT_GT(by_count[common - 1].first, by_count[common].first) << "top words must be strictly more frequent";
    }
    std::vector<std::string> top;
    for (size_t i = 0; i < common && i < by_count.size(); ++i) top.push_back(by_count[i].second);
    return top;
}

// fwe: the three most frequent coded words, ignoring the dots.
std::vector<std::string> derive_fwe(const std::string& prompt) {
    const size_t start = prompt.find("coded words.") + 12;
    const size_t end = prompt.rfind("\nQuestion:");
    std::istringstream words(prompt.substr(start, end - start));
    std::map<std::string, int> counts;
    std::string w;
    while (words >> w)
        if (w != "...") ++counts[w];
    std::vector<std::pair<int, std::string>> by_count;
    for (const auto& [word, c] : counts) by_count.push_back({c, word});
    std::sort(by_count.rbegin(), by_count.rend());
    EXPECT_GE(by_count.size(), 4u);
    if (by_count.size() >= 4) {
        EXPECT_GT(by_count[2].first, by_count[3].first);
    }
    std::vector<std::string> top;
    for (size_t i = 0; i < 3 && i < by_count.size(); ++i) top.push_back(by_count[i].second);
    return top;
}

// bAbI: re-simulate the facts of the <context> and answer the question.
std::string derive_babi(const std::string& prompt, const std::string& question) {
    const size_t open = prompt.rfind("<context>\n"), close = prompt.rfind("\n</context>");
    const std::string context = prompt.substr(open, close - open);
    static const std::string who = "(Mary|John|Daniel|Sandra|Bill|Fred|Jeff)";
    static const std::string room = "(bathroom|bedroom|garden|hallway|kitchen|office)";
    static const std::string thing = "(apple|football|milk)";
    static const std::regex fact(who + " (?:moved to|went to|journeyed to|travelled to|went back to) the " + room + R"(\.|)" +
                                 who + " (?:picked up|got|grabbed|took) the " + thing + R"( there\.|)" + who +
                                 " (?:dropped|discarded|put down|left) the " + thing + R"(\.|)" + who +
                                 " (?:gave|passed|handed) the " + thing + " to " + who + R"(\.|)" + "The " + room +
                                 " is (north|south|east|west) of the " + room + R"(\.)");
    std::map<std::string, std::string> person_at, holder, object_at;
    std::map<std::string, std::vector<std::string>> history;
    struct Give {
        std::string giver, object, receiver;
    };
    std::vector<Give> gives;
    struct Relation {
        std::string x, dir, y;
    };
    std::vector<Relation> relations;
    auto place = [&](const std::string& o, const std::string& l) {
        object_at[o] = l;
        if (history[o].empty() || history[o].back() != l) history[o].push_back(l);
    };
    // Facts start with a person or "The <room>"; background sentences never mention either
    // (the generator skips those), so every such sentence is a fact. Collected in text order.
    std::vector<std::pair<size_t, std::string>> candidates;
    for (const std::string start : {"Mary ", "John ", "Daniel ", "Sandra ", "Bill ", "Fred ", "Jeff ", "The "}) {
        size_t from = 0;
        for (const std::string& sentence : sentences_starting_with(context, start)) {
            from = context.find(sentence, from);
            candidates.push_back({from, sentence});
            ++from;
        }
    }
    std::sort(candidates.begin(), candidates.end());
    int facts = 0;
    for (const auto& [position, sentence] : candidates) {
        std::smatch m;
        if (!std::regex_match(sentence, m, fact)) {
            EXPECT_NE(sentence.rfind("The ", 0), std::string::npos) << "a person's sentence that is no fact: " << sentence;
            continue;
        }
        ++facts;
        if (m[1].matched) {
            person_at[m[1]] = m[2];
            for (auto& [o, h] : holder)
                if (h == m[1].str()) place(o, m[2]);
        } else if (m[3].matched) {
            EXPECT_TRUE(holder[m[4]].empty()) << m[0] << ": the object is held by " << holder[m[4]];
            EXPECT_TRUE(object_at[m[4]].empty() || object_at[m[4]] == person_at[m[3]]) << m[0];
            holder[m[4]] = m[3];
            place(m[4], person_at[m[3]]);
        } else if (m[5].matched) {
            EXPECT_EQ(holder[m[6]], m[5].str()) << m[0];
            holder[m[6]] = "";
        } else if (m[7].matched) {
            EXPECT_EQ(holder[m[8]], m[7].str()) << m[0];
            EXPECT_EQ(person_at[m[7]], person_at[m[9]]) << m[0] << ": giver and receiver must share a room";
            holder[m[8]] = m[9];
            gives.push_back({m[7], m[8], m[9]});
        } else {
            relations.push_back({m[10], m[11], m[12]});
        }
    }
    EXPECT_GT(facts, 0) << "no facts found in the context";
    std::smatch q;
    if (std::regex_match(question, q, std::regex("Where is " + who + R"(\?)"))) return person_at[q[1]];
    if (std::regex_match(question, q, std::regex("Where is the " + thing + R"(\?)"))) return object_at[q[1]];
    if (std::regex_match(question, q, std::regex("Where was the " + thing + " before the " + room + R"(\?)"))) {
        const auto& h = history[q[1]];
        EXPECT_EQ(std::count(h.begin(), h.end(), q[2].str()), 1) << "the room must have been entered once";
        const auto at = std::find(h.begin(), h.end(), q[2].str());
        return at == h.begin() || at == h.end() ? "" : *(at - 1);
    }
    const std::map<std::string, std::string> opposite{{"north", "south"}, {"south", "north"}, {"east", "west"}, {"west", "east"}};
    auto holds = [&](const std::string& x, const std::string& dir, const std::string& y) {
        for (const Relation& r : relations)
            if ((r.x == x && r.dir == dir && r.y == y) || (r.x == y && r.dir == opposite.at(dir) && r.y == x)) return true;
        return false;
    };
    const std::vector<std::string> rooms{"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"};
    if (std::regex_match(question, q, std::regex("What is (north|south|east|west) of the " + room + R"(\?)"))) {
        std::vector<std::string> found;
        for (const auto& r : rooms)
            if (holds(r, q[1], q[2])) found.push_back(r);
        EXPECT_EQ(found.size(), 1u);
        return found.empty() ? "" : found[0];
    }
    if (std::regex_match(question, q, std::regex("What is the " + room + R"( (north|south|east|west) of\?)"))) {
        std::vector<std::string> found;
        for (const auto& r : rooms)
            if (holds(q[1], q[2], r)) found.push_back(r);
        EXPECT_EQ(found.size(), 1u);
        return found.empty() ? "" : found[0];
    }
    // qa5: the latest hand-over that fits the question.
    auto last_give = [&](auto match) -> const Give* {
        for (auto it = gives.rbegin(); it != gives.rend(); ++it)
            if (match(*it)) return &*it;
        return nullptr;
    };
    const Give* g = nullptr;
    std::string answer;
    if (std::regex_match(question, q, std::regex("Who gave the " + thing + R"(\?)"))) {
        g = last_give([&](const Give& x) { return x.object == q[1]; });
        if (g) answer = g->giver;
    } else if (std::regex_match(question, q, std::regex("Who received the " + thing + R"(\?)"))) {
        g = last_give([&](const Give& x) { return x.object == q[1]; });
        if (g) answer = g->receiver;
    } else if (std::regex_match(question, q, std::regex("Who did " + who + " give the " + thing + R"( to\?)"))) {
        g = last_give([&](const Give& x) { return x.giver == q[1] && x.object == q[2]; });
        if (g) answer = g->receiver;
    } else if (std::regex_match(question, q, std::regex("What did " + who + " give to " + who + R"(\?)"))) {
        g = last_give([&](const Give& x) { return x.giver == q[1] && x.receiver == q[2]; });
        if (g) answer = g->object;
    } else if (std::regex_match(question, q, std::regex("Who gave the " + thing + " to " + who + R"(\?)"))) {
        g = last_give([&](const Give& x) { return x.object == q[1] && x.receiver == q[2]; });
        if (g) answer = g->giver;
    } else {
        ADD_FAILURE() << "unrecognized question: " << question;
    }
    return answer;
}

std::vector<std::string> derive_answers(const TaskExample& ex) {
    const std::string prompt = prompt_text(ex);
    if (ex.task.rfind("niah_", 0) == 0) return derive_niah(prompt);
    if (ex.task == "passkey") return derive_passkey(prompt);
    if (ex.task == "vt") return derive_vt(prompt);
    if (ex.task == "cwe") return derive_cwe(prompt, 10);
    if (ex.task == "fwe") return derive_fwe(prompt);
    return {derive_babi(prompt, ex.question)};
}

// ---------------------------------------------------------------- answers by construction

class TaskEveryName : public ::testing::TestWithParam<std::string> {};

TEST_P(TaskEveryName, AnswersRederivedFromTheText) {
    const std::string task = GetParam();
    SKIP_WITHOUT_CORPUS(task);
    for (int64_t length : {2048, 4096}) {
        for (int64_t index = 0; index < 12; ++index) {
            const TaskExample ex = make(task, length, 7, index);
            ASSERT_EQ(ex.task, task);
            const std::vector<std::string> derived = derive_answers(ex);
            EXPECT_EQ(sorted(derived), sorted(ex.answers)) << task << " length " << length << " index " << index << "\n"
                                                           << prompt_text(ex).substr(0, 3000);
            // The trained answer text names every reference answer.
            const std::string answer = answer_text(ex);
            for (const std::string& a : ex.answers) EXPECT_NE(answer.find(a), std::string::npos) << task << ": " << answer;
            EXPECT_EQ(score_task(task, answer, ex.answers, ex.question), 1.0) << task << ": " << answer;
        }
    }
}

TEST_P(TaskEveryName, LengthHitsTheTargetWithin64Tokens) {
    const std::string task = GetParam();
    SKIP_WITHOUT_CORPUS(task);
    for (int64_t length : {1024, 4096, 65536}) {
        const TaskExample ex = make(task, length, 3, 1);
        EXPECT_LE(static_cast<int64_t>(ex.tokens.size()), length) << task;
        EXPECT_GE(static_cast<int64_t>(ex.tokens.size()), length - 64) << task << " at " << length;
        EXPECT_EQ(ex.target_length, length);
    }
}

TEST_P(TaskEveryName, LossMaskIsOneExactlyOnTheAnswer) {
    const std::string task = GetParam();
    SKIP_WITHOUT_CORPUS(task);
    ByteTokenizer tok;
    const TaskExample ex = make(task, 4096, 5, 2);
    ASSERT_EQ(ex.loss_mask.size(), ex.tokens.size());
    ASSERT_GT(ex.prompt_length, 0);
    ASSERT_LT(ex.prompt_length, static_cast<int64_t>(ex.tokens.size()));
    for (size_t i = 0; i < ex.tokens.size(); ++i)
        ASSERT_EQ(ex.loss_mask[i], i >= static_cast<size_t>(ex.prompt_length) ? 1 : 0) << task << " token " << i;
    EXPECT_EQ(ex.tokens.back(), tok.eos_id()) << "the answer ends with EOS";
    for (int64_t i = 0; i + 1 < static_cast<int64_t>(ex.tokens.size()); ++i) ASSERT_NE(ex.tokens[static_cast<size_t>(i)], tok.eos_id()) << "EOS only at the end";
}

TEST_P(TaskEveryName, SameSeedSameTokensOtherSeedOrIndexDiffers) {
    const std::string task = GetParam();
    SKIP_WITHOUT_CORPUS(task);
    const TaskExample a = make(task, 4096, 11, 4), b = make(task, 4096, 11, 4);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.answers, b.answers);
    EXPECT_NE(make(task, 4096, 12, 4).tokens, a.tokens) << "another seed";
    EXPECT_NE(make(task, 4096, 11, 5).tokens, a.tokens) << "another index";
    // A reused generator (cached haystack tokens) makes the same examples.
    ByteTokenizer tok;
    TaskGenerator generator(tok);
    TaskOptions o;
    o.length = 4096;
    o.seed = 11;
    generator.generate(task, o, 0);
    EXPECT_EQ(generator.generate(task, o, 4).tokens, a.tokens);
}

TEST_P(TaskEveryName, OtherTokenizerHitsLengthAndKeepsAnswers) {
    const std::string task = GetParam();
    SKIP_WITHOUT_CORPUS(task);
    BytePairTokenizer pairs;
    TaskOptions o;
    o.length = 3000;
    const TaskExample ex = generate_task_example(task, pairs, o, 0);
    EXPECT_LE(static_cast<int64_t>(ex.tokens.size()), 3000);
    EXPECT_GE(static_cast<int64_t>(ex.tokens.size()), 3000 - 64);
    const std::string answer = pairs.decode(std::vector<int32_t>(ex.tokens.begin() + ex.prompt_length, ex.tokens.end()));
    EXPECT_EQ(score_task(task, answer, ex.answers, ex.question), 1.0) << answer;
}

INSTANTIATE_TEST_SUITE_P(TaskGenerators, TaskEveryName, ::testing::ValuesIn(task_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// ---------------------------------------------------------------- depth, long contexts

TEST(TaskDepth, NeedleSitsAtTheAskedFraction) {
    SKIP_WITHOUT_CORPUS("niah_single_2");
    for (const std::string task : {"niah_single_1", "niah_single_2", "passkey"}) {
        for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
            const TaskExample ex = make(task, 65536, 2, 0, depth);
            EXPECT_NEAR(ex.depth, depth, 0.01) << task;
            // From the text: the share of the haystack before the needle (bytes = tokens here).
            const std::string prompt = prompt_text(ex);
            const bool passkey = task == "passkey";
            const std::string before = passkey ? "important information there." : "afterwards.";
            const std::string after = passkey ? " What is the pass key?" : "\nWhat is the special";
            const size_t context_begin = prompt.find(before) + before.size();
            const size_t context_end = prompt.rfind(after);
            // The needle piece starts with its separator (one character) and ends with its period.
            const size_t needle = prompt.find(passkey ? " The pass key is" : "One of the special magic", context_begin) - (passkey ? 0 : 1);
            const size_t needle_end = passkey ? prompt.find("is the pass key.", needle) + 16 : prompt.find('.', prompt.find("is: ", needle)) + 1;
            const double haystack = static_cast<double>((context_end - context_begin) - (needle_end - needle));
            EXPECT_NEAR(static_cast<double>(needle - context_begin) / haystack, depth, 0.01) << task << " depth " << depth;
        }
    }
}

TEST(TaskDepth, RandomDepthWhenNotAsked) {
    std::set<int> tenths;
    for (int64_t i = 0; i < 20; ++i) {
        const TaskExample ex = make("passkey", 8192, 1, i);
        ASSERT_GE(ex.depth, 0.0);
        ASSERT_LE(ex.depth, 1.0);
        tenths.insert(static_cast<int>(ex.depth * 10));
    }
    EXPECT_GE(tenths.size(), 4u) << "random depths should spread";
    EXPECT_EQ(make("vt", 4096).depth, -1) << "tasks without a needle report no depth";
}

TEST(TaskLong, OneMillionTokensInSecondsWithTheRightAnswer) {
    SKIP_WITHOUT_CORPUS("niah_single_2");
    for (const std::string task : {"niah_single_2", "qa2", "niah_multikey_2"}) {
        const auto start = std::chrono::steady_clock::now();
        const TaskExample ex = make(task, 1 << 20, 9, 0, 0.3);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("[ info ] %s: %zu tokens in %.2f s\n", task.c_str(), ex.tokens.size(), seconds);
        EXPECT_LT(seconds, 20.0) << "1M tokens must take seconds, not minutes";
        EXPECT_LE(static_cast<int64_t>(ex.tokens.size()), 1 << 20);
        EXPECT_GE(static_cast<int64_t>(ex.tokens.size()), (1 << 20) - 64);
        if (task == "qa2") {
            EXPECT_EQ(derive_babi(prompt_text(ex), ex.question), ex.answers[0]);
        } else {
            EXPECT_NEAR(ex.depth, 0.3, 0.001);
            EXPECT_EQ(sorted(derive_niah(prompt_text(ex))), sorted(ex.answers));
        }
    }
}

TEST(TaskLong, FourMillionTokensOfCommonWordsStillHaveOneAnswer) {
    SKIP_WITHOUT_CORPUS("cwe");
    // Beyond ~2M byte tokens the word list runs out and every count is scaled up.
    const TaskExample ex = make("cwe", 4 << 20, 1, 0);
    EXPECT_GE(static_cast<int64_t>(ex.tokens.size()), (4 << 20) - 64);
    const std::vector<std::string> top = derive_cwe(prompt_text(ex), 10);
    EXPECT_EQ(sorted(top), sorted(ex.answers));
}

// ---------------------------------------------------------------- options and errors

TEST(TaskOptionsCheck, BadInputsAreConfigErrors) {
    ByteTokenizer tok;
    TaskOptions o;
    EXPECT_THROW(generate_task_example("niah_single_9", tok, o, 0), ConfigError);
    o.depth = 1.5;
    EXPECT_THROW(generate_task_example("passkey", tok, o, 0), ConfigError);
    o.depth = -1;
    o.length = 50;
    try {
        generate_task_example("passkey", tok, o, 0);
        ADD_FAILURE() << "a 50-token passkey example cannot exist";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("too short"), std::string::npos) << e.what();
    }
    o.length = 4096;
    o.extra = Json::object();
    o.extra["num_hopz"] = 3;
    EXPECT_THROW(generate_task_example("vt", tok, o, 0), ConfigError);
    o.extra = Json::object();
    o.extra["num_hops"] = 0;
    EXPECT_THROW(generate_task_example("vt", tok, o, 0), ConfigError);
}

TEST(TaskOptionsCheck, ExtraSettingsChangeTheTask) {
    ByteTokenizer tok;
    TaskOptions o;
    o.length = 8192;
    o.extra["num_hops"] = 7;
    o.extra["num_chains"] = 3;
    const TaskExample ex = generate_task_example("vt", tok, o, 0);
    EXPECT_EQ(ex.answers.size(), 8u);
    EXPECT_EQ(sorted(derive_vt(prompt_text(ex))), sorted(ex.answers));
    EXPECT_NE(prompt_text(ex).find("8 variables are assgined"), std::string::npos);
}

TEST(TaskOptionsCheck, ParseTokenCount) {
    EXPECT_EQ(parse_token_count("4096"), 4096);
    EXPECT_EQ(parse_token_count("4K"), 4096);
    EXPECT_EQ(parse_token_count("1M"), 1048576);
    EXPECT_EQ(parse_token_count("32M"), 33554432);
    for (const std::string bad : {"", "K", "4Q", "-4K", "0", "1.5K", "4KK", "abc"}) EXPECT_THROW(parse_token_count(bad), ConfigError) << bad;
}

TEST(TaskOptionsCheck, HaystackFileReplacesTheCorpus) {
    SKIP_WITHOUT_CORPUS("niah_single_2");  // the word keys still come from wamerican
    const std::string path = ::testing::TempDir() + "hsa_haystack.txt";
    {
        std::ofstream out(path);
        out << "Zebras graze quietly near the river. Herons wait in the shallow water.\n\n"
               "Owls call from the dark pines! Foxes trot along the fence.\n";
    }
    ByteTokenizer tok;
    TaskOptions o;
    o.length = 2048;
    o.haystack_file = path;
    const TaskExample ex = generate_task_example("niah_single_2", tok, o, 0);
    const std::string prompt = prompt_text(ex);
    EXPECT_NE(prompt.find("Herons wait in the shallow water."), std::string::npos);
    EXPECT_EQ(sorted(derive_niah(prompt)), sorted(ex.answers));
    o.haystack_file = path + ".missing";
    EXPECT_THROW(generate_task_example("niah_single_2", tok, o, 0), ConfigError);
}

// ---------------------------------------------------------------- scoring

TEST(TaskScoring, RulerStringMatchAllAndPart) {
    EXPECT_DOUBLE_EQ(string_match_all("The numbers are 1234567 and 7654321.", {"1234567", "7654321", "1111111"}), 2.0 / 3.0);
    EXPECT_DOUBLE_EQ(string_match_all("UUID: 0DC426D9-46B7", {"0dc426d9-46b7"}), 1.0) << "case-insensitive";
    EXPECT_DOUBLE_EQ(string_match_all("nothing here", {"42"}), 0.0);
    EXPECT_DOUBLE_EQ(string_match_part("only 1234567", {"1234567", "7654321"}), 1.0);
    EXPECT_DOUBLE_EQ(string_match_part("neither", {"1234567", "7654321"}), 0.0);
    EXPECT_DOUBLE_EQ(score_task("niah_multivalue", "1, 2 and 3", {"1", "2", "3", "4"}), 0.75);
    EXPECT_DOUBLE_EQ(score_task("vt", "ABCDE FGHIJ", {"ABCDE", "FGHIJ", "KLMNO"}), 2.0 / 3.0);
    EXPECT_DOUBLE_EQ(score_task("passkey", " 71432.", {"71432"}), 1.0);
    EXPECT_THROW(score_task("nope", "x", {"x"}), ConfigError);
    EXPECT_THROW(score_task("vt", "x", {}), ConfigError);
}

TEST(TaskScoring, BabilongSingleLabelRule) {
    // Right: the label alone (case and format free), first sentence only.
    EXPECT_EQ(score_task("qa1", "The most recent location of Mary is kitchen.", {"kitchen"}), 1.0);
    EXPECT_EQ(score_task("qa1", "KITCHEN", {"kitchen"}), 1.0);
    EXPECT_EQ(score_task("qa1", "kitchen. Earlier she was in the garden.", {"kitchen"}), 1.0);
    // Wrong: another label, or a distractor label next to the right one.
    EXPECT_EQ(score_task("qa1", "garden", {"kitchen"}), 0.0);
    EXPECT_EQ(score_task("qa1", "the kitchen or the garden", {"kitchen"}), 0.0);
    EXPECT_EQ(score_task("qa1", "I don't know", {"kitchen"}), 0.0);
    // Labels in the question do not count against the prediction.
    const std::string q3 = "Where was the apple before the kitchen?";
    const std::string p3 = "Before the kitchen the apple was in the bathroom.";
    EXPECT_EQ(score_task("qa3", p3, {"bathroom"}, q3), 1.0);
    EXPECT_EQ(score_task("qa3", p3, {"bathroom"}), 0.0) << "without the question, kitchen is a second label";
    EXPECT_EQ(score_task("qa5", "Fred", {"Fred"}, "Who did Mary give the apple to?"), 1.0);
    EXPECT_EQ(score_task("qa5", "Mary gave it to Fred", {"Fred"}, "Who did Mary give the apple to?"), 1.0);
    EXPECT_EQ(score_task("qa5", "Jeff or Fred", {"Fred"}, "Who did Mary give the apple to?"), 0.0);
    EXPECT_EQ(score_task("qa5", "apple", {"apple"}, "What did Fred give to Bill?"), 1.0);
    EXPECT_THROW(score_task("qa1", "kitchen", {"kitchen", "garden"}), ConfigError) << "one label per example";
    EXPECT_EQ(babilong_labels("qa5").size(), 7u);
    EXPECT_TRUE(babilong_labels("vt").empty());
}

// ---------------------------------------------------------------- corpus

TEST(TaskCorpus, KjvDecoderMatchesGzip) {
    SKIP_WITHOUT_CORPUS("niah_single_2");
    const std::string text = read_kjv_data_file("/usr/lib/bible.data");
    EXPECT_EQ(text.rfind("Holy Bible, Authorized (King James) Version.", 0), 0u);
    EXPECT_NE(text.find("Ge1:1 In the beginning God created the heaven and the earth.\n"), std::string::npos);
    EXPECT_NE(text.find("Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen.\n"), std::string::npos);
    // gzip decodes Unix compress streams: feed it window 0 and the last window with the
    // 3-byte .Z header (magic 1F 9D, block mode + 16 bits) and compare.
    std::ifstream in("/usr/lib/bible.data", std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto u32 = [&](size_t p) {
        const auto* b = reinterpret_cast<const unsigned char*>(bytes.data() + p);
        return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
    };
    const uint32_t windows = u32(0x58);
    std::string expected;
    for (uint32_t w : {0u, windows - 1}) {
        const uint32_t begin = u32(0x5C + 4 * w), end = u32(0x5C + 4 * (w + 1));
        const std::string z = ::testing::TempDir() + "hsa_window.Z", plain = ::testing::TempDir() + "hsa_window.txt";
        {
            std::ofstream out(z, std::ios::binary);
            out << std::string("\x1f\x9d\x90", 3) << bytes.substr(begin, end - begin);
        }
        ASSERT_EQ(std::system(("gzip -dc < " + z + " > " + plain).c_str()), 0) << "gzip must be installed";
        const std::string reference = test::read_file_bytes(plain);
        const std::string decoded = decompress_unix_lzw(reinterpret_cast<const uint8_t*>(bytes.data()) + begin, end - begin, 16);
        EXPECT_EQ(decoded, reference) << "window " << w;
    }
    EXPECT_THROW(decompress_unix_lzw(reinterpret_cast<const uint8_t*>("\xff\xff\xff"), 3, 16), Error) << "first code not a literal";
}

TEST(TaskCorpus, SplitIsStableDisjointAndAboutTenPercent) {
    SKIP_WITHOUT_CORPUS("niah_single_2");
    const auto corpus = ProseCorpus::installed();
    const size_t all = corpus->documents().size();
    const size_t held = corpus->split(CorpusSplit::HeldOut).size(), train = corpus->split(CorpusSplit::Train).size();
    EXPECT_EQ(held + train, all);
    EXPECT_GT(all, 5000u);
    EXPECT_NEAR(static_cast<double>(held) / static_cast<double>(all), kHeldOutPercent / 100.0, 0.03);
    for (const CorpusDocument* d : corpus->split(CorpusSplit::HeldOut)) ASSERT_TRUE(is_held_out_document(d->id));
    EXPECT_EQ(is_held_out_document("kjv/Ge1"), is_held_out_document("kjv/Ge1"));
    // Both sources contribute, and their text is prose, not references or markup.
    size_t kjv = 0, fortunes = 0;
    for (const CorpusDocument& d : corpus->documents()) (d.id.rfind("kjv/", 0) == 0 ? kjv : fortunes) += 1;
    EXPECT_EQ(kjv, 1189u) << "the KJV has 1189 chapters";
    EXPECT_GT(fortunes, 3000u);
    EXPECT_EQ(corpus->documents()[0].text.rfind("In the beginning God created", 0), 0u);
    EXPECT_GT(corpus->sentences(CorpusSplit::HeldOut).size(), 2000u);
    // The stream cycles.
    SentenceStream stream(corpus, CorpusSplit::HeldOut, corpus->sentences(CorpusSplit::HeldOut).size() - 1);
    const std::string last = stream.next();
    EXPECT_EQ(stream.next(), corpus->sentences(CorpusSplit::HeldOut)[0]);
    EXPECT_EQ(last, corpus->sentences(CorpusSplit::HeldOut).back());
}

TEST(TaskCorpus, SentenceSplitting) {
    EXPECT_EQ(split_sentences("Hello there.  How are you?  \"Fine!\" said Mr. Smith. It is 5 p.m. now."),
              (std::vector<std::string>{"Hello there.", "How are you?", "\"Fine!\" said Mr. Smith.", "It is 5 p.m. now."}));
    EXPECT_EQ(split_sentences("C. S. Lewis wrote. Then\nhe slept."), (std::vector<std::string>{"C. S. Lewis wrote.", "Then he slept."}));
    EXPECT_EQ(split_sentences("no end"), (std::vector<std::string>{"no end"}));
    EXPECT_TRUE(split_sentences("   ").empty());
}

TEST(TaskCorpus, WordListIsLowerCaseWords) {
    SKIP_WITHOUT_CORPUS("cwe");
    const auto& words = english_words();
    EXPECT_GT(words.size(), 30000u);
    EXPECT_TRUE(std::is_sorted(words.begin(), words.end()));
    for (const std::string& w : words) ASSERT_TRUE(w.size() >= 3 && w.find_first_not_of("abcdefghijklmnopqrstuvwxyz") == std::string::npos) << w;
    EXPECT_TRUE(corpus_missing_reason().empty());
}

// ---------------------------------------------------------------- shards

TEST(TaskShardFile, RoundTripsThroughHdf5) {
    ByteTokenizer tok;
    std::vector<TaskExample> examples{make("passkey", 2048, 1, 0, 0.5), make("vt", 1500, 1, 1), make("fwe", 3000, 2, 0)};
    examples[1].question = "a question with \xC3\xA9 and \"quotes\"";
    examples[2].answers.push_back("with, comma");
    const std::string path = ::testing::TempDir() + "hsa_task_shard.h5";
    write_task_shard(path, examples, tok, 42);
    const TaskShard shard = read_task_shard(path);
    EXPECT_EQ(shard.tokenizer, "byte");
    EXPECT_EQ(shard.vocab_size, tok.vocab_size());
    EXPECT_EQ(shard.eos, tok.eos_id());
    EXPECT_EQ(shard.bos, tok.bos_id());
    EXPECT_EQ(shard.seed, 42);
    EXPECT_EQ(shard.task, "passkey,vt,fwe");
    ASSERT_EQ(shard.examples.size(), examples.size());
    for (size_t i = 0; i < examples.size(); ++i) {
        const TaskExample &a = examples[i], &b = shard.examples[i];
        EXPECT_EQ(a.task, b.task);
        EXPECT_EQ(a.tokens, b.tokens);
        EXPECT_EQ(a.loss_mask, b.loss_mask);
        EXPECT_EQ(a.prompt_length, b.prompt_length);
        EXPECT_EQ(a.answers, b.answers);
        EXPECT_EQ(a.question, b.question);
        EXPECT_EQ(a.target_length, b.target_length);
        EXPECT_NEAR(a.depth, b.depth, 1e-6);
    }
    EXPECT_THROW(read_task_shard(path + ".missing"), Error);
}

// ---------------------------------------------------------------- command line

struct TaskCli : ::testing::Test {
    std::string dir;
    void SetUp() override {
        dir = ::testing::TempDir() + "hsa_task_cli_" + std::to_string(::getpid()) + "/";
        std::filesystem::create_directories(dir);
    }
    void TearDown() override { std::filesystem::remove_all(dir); }
    RunResult run(const std::vector<std::string>& args) { return test::run_hsa(args, dir + "out", dir + "err"); }
};

TEST_F(TaskCli, ListShowAndHelp) {
    RunResult r = run({"data", "task", "list"});
    EXPECT_EQ(r.code, 0) << describe(r);
    for (const std::string& name : task_names()) EXPECT_NE(r.out.find(name), std::string::npos) << name;
    r = run({"data", "task", "show", "passkey", "--length", "2K", "--seed", "3", "--depth", "0.25"});
    EXPECT_EQ(r.code, 0) << describe(r);
    const TaskExample ex = make("passkey", 2048, 3, 0, 0.25);
    EXPECT_NE(r.out.find("answers [\"" + ex.answers[0] + "\"]"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("tokens " + std::to_string(ex.tokens.size())), std::string::npos) << r.out;
    for (const std::string sub : {"show", "generate", "score"}) {
        r = run({"data", "task", sub, "--help"});
        EXPECT_EQ(r.code, 0) << describe(r);
        EXPECT_NE(r.out.find("usage: hsa data task " + sub), std::string::npos) << r.out;
    }
    r = run({"data", "task", "--help"});
    EXPECT_EQ(r.code, 0);
    EXPECT_NE(r.out.find("generate"), std::string::npos);
    r = run({"data", "task"});
    EXPECT_EQ(r.code, 2) << "no subcommand: help and exit 2";
}

TEST_F(TaskCli, BadInputsGiveOneLineAndExit2) {
    const std::string out = dir + "x.h5";
    test::expect_error_line(run({"data", "task", "show", "niah_single_9"}), 2, {"niah_single_9", "known"});
    test::expect_error_line(run({"data", "task", "show", "passkey", "--length", "4Q"}), 2, {"--length", "4Q"});
    test::expect_error_line(run({"data", "task", "show", "passkey", "--length", "60"}), 2, {"too short"});
    test::expect_error_line(run({"data", "task", "show", "passkey", "--depth", "1.5"}), 2, {"1.5"});
    test::expect_error_line(run({"data", "task", "show", "passkey", "--seed", "x1"}), 2, {"--seed", "x1"});
    test::expect_error_line(run({"data", "task", "show", "passkey", "--bogus"}), 2, {"--bogus"});
    test::expect_error_line(run({"data", "task", "show", "vt", "--option", "num_hopz=3"}), 2, {"num_hopz"});
    test::expect_error_line(run({"data", "task", "generate", "passkey", "--lengths", "4K,abc", "--out", out}), 2, {"abc"});
    test::expect_error_line(run({"data", "task", "generate", "passkey", "--depths", "0,2", "--out", out}), 2, {"'2'"});
    test::expect_error_line(run({"data", "task", "generate", "passkey", "--samples", "many", "--out", out}), 2, {"many"});
    test::expect_error_line(run({"data", "task", "generate", "passkey"}), 2, {"--out"});
    test::expect_error_line(run({"data", "task", "generate", "vt", "--depths", "0.5", "--out", out}), 2, {"vt", "depth"});
    test::expect_error_line(run({"data", "task", "generate", "passkey", "--out", dir + "no/such/dir/x.h5"}), 2, {"no/such/dir"});
    test::expect_error_line(run({"data", "task", "score", "qa1", "--prediction", "x"}), 2, {"--answers"});
    test::expect_error_line(run({"data", "task", "score", "qa1", "--jsonl", dir + "none.jsonl"}), 2, {"none.jsonl"});
    test::expect_error_line(run({"data", "task", "frobnicate"}), 2, {"frobnicate"});
    // The second length fails after the first example was written: the file goes away.
    test::expect_error_line(run({"data", "task", "generate", "passkey", "--lengths", "4K,60", "--out", out}), 2, {"too short"});
    EXPECT_FALSE(std::filesystem::exists(out)) << "no half-written shard after an error";
}

TEST_F(TaskCli, GenerateWritesAShardThatMatchesTheLibrary) {
    const std::string out = dir + "passkey.h5";
    const RunResult r = run({"data", "task", "generate", "passkey", "--lengths", "1K,2K", "--depths", "0,0.5,1", "--samples", "2",
                             "--seed", "5", "--out", out});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_NE(r.out.find("12 examples"), std::string::npos) << r.out;
    const TaskShard shard = read_task_shard(out);
    ASSERT_EQ(shard.examples.size(), 12u);
    EXPECT_EQ(shard.task, "passkey");
    EXPECT_EQ(shard.seed, 5);
    // Example i is index i with seed 5, lengths outermost, then depths, then samples.
    size_t i = 0;
    for (int64_t length : {1024, 2048})
        for (double depth : {0.0, 0.5, 1.0})
            for (int s = 0; s < 2; ++s, ++i) {
                const TaskExample expected = make("passkey", length, 5, static_cast<int64_t>(i), depth);
                EXPECT_EQ(shard.examples[i].tokens, expected.tokens) << "example " << i;
                EXPECT_EQ(shard.examples[i].answers, expected.answers);
                EXPECT_EQ(shard.examples[i].target_length, length);
                EXPECT_NEAR(shard.examples[i].depth, depth, 0.05);
            }
}

TEST_F(TaskCli, ScoreOnePredictionAndAJsonlFile) {
    RunResult r = run({"data", "task", "score", "qa3", "--prediction", "Before the kitchen the apple was in the bathroom.",
                       "--answers", "bathroom", "--question", "Where was the apple before the kitchen?"});
    EXPECT_EQ(r.code, 0) << describe(r);
    EXPECT_EQ(r.out, "1\n");
    r = run({"data", "task", "score", "niah_multivalue", "--prediction", "11 and 22", "--answers", "11,22,33,44"});
    EXPECT_EQ(r.out, "0.5\n") << describe(r);
    const std::string jsonl = dir + "p.jsonl";
    {
        std::ofstream f(jsonl);
        f << R"({"prediction": "The pass key is 123.", "answers": ["123"]})" << "\n\n"
          << R"({"prediction": "no idea", "answers": ["456"]})" << "\n";
    }
    r = run({"data", "task", "score", "passkey", "--jsonl", jsonl});
    EXPECT_EQ(r.code, 0) << describe(r);
    EXPECT_NE(r.out.find("0.5 over 2 predictions"), std::string::npos) << r.out;
    {
        std::ofstream f(jsonl);
        f << R"({"prediction": 3, "answers": ["456"]})" << "\n";
    }
    test::expect_error_line(run({"data", "task", "score", "passkey", "--jsonl", jsonl}), 2, {"line 1"});
}

}  // namespace
}  // namespace hsa
