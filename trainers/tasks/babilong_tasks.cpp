// BABILong-style tasks (booydar/babilong): bAbI qa1..qa5 stories, generated here by
// simulating a small world (people, the six bAbI rooms, three objects), with the facts spread
// in order among background prose sentences up to the target length, and BABILong's prompt
// (instruction, examples, post-prompt, <context>...</context>, question).
//
// The answer is read off the simulated state, so it is right by construction; the labels are
// BABILong's TASK_LABELS, which its scoring rule (score_task) looks for.
#include <algorithm>
#include <array>
#include <cctype>

#include "core/model/config.h"
#include "trainers/tasks/task_context.h"

namespace hsa {
namespace task_detail {

namespace {

const std::array<const char*, 6> kLocations = {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"};
const std::array<const char*, 3> kObjects = {"apple", "football", "milk"};
const std::array<const char*, 4> kPeople = {"Mary", "John", "Daniel", "Sandra"};     // bAbI qa1..qa3
const std::array<const char*, 4> kGivers = {"Bill", "Fred", "Jeff", "Mary"};          // bAbI qa5
const std::array<const char*, 5> kMoveVerbs = {"moved to", "went to", "journeyed to", "travelled to", "went back to"};
const std::array<const char*, 4> kPickVerbs = {"picked up", "got", "grabbed", "took"};
const std::array<const char*, 4> kDropVerbs = {"dropped", "discarded", "put down", "left"};
const std::array<const char*, 3> kGiveVerbs = {"gave", "passed", "handed"};

// BABILong's prompts (babilong/prompts.py DEFAULT_PROMPTS), verbatim.
struct Prompt {
    const char* instruction;
    const char* examples;
    const char* post_prompt;
};

const Prompt kPrompts[] = {
    {"I will give you context with the facts about positions of different persons hidden in some random text and a "
     "question. You need to answer the question based only on the information from the facts. If a person was in "
     "different locations, use the latest location to answer the question.",
     "<example>\nCharlie went to the hallway. Judith come back to the kitchen. Charlie travelled to balcony. Where is "
     "Charlie?\nAnswer: The most recent location of Charlie is balcony.\n</example>\n\n<example>\nAlan moved to the "
     "garage. Charlie went to the beach. Alan went to the shop. Rouse travelled to balcony. Where is Alan?\nAnswer: The "
     "most recent location of Alan is shop.\n</example>",
     "Always return your answer in the following format: The most recent location of \xE2\x80\x99person\xE2\x80\x99 is "
     "\xE2\x80\x99location\xE2\x80\x99. Do not write anything else after that. "},
    {"I give you context with the facts about locations and actions of different persons hidden in some random text "
     "and a question.You need to answer the question based only on the information from the facts.\nIf a person got an "
     "item in the first location and travelled to the second location the item is also in the second location. If a "
     "person dropped an item in the first location and moved to the second location the item remains in the first "
     "location.",
     "<example>\nCharlie went to the kitchen. Charlie got a bottle. Charlie moved to the balcony. Where is the "
     "bottle?\nAnswer: The bottle is in the balcony.\n</example>\n<example>\nAlan moved to the garage. Alan got a screw "
     "driver. Alan moved to the kitchen. Where is the screw driver?\nAnswer: The screw driver is in the "
     "kitchen.\n</example>",
     "Always return your answer in the following format: The \xE2\x80\x99item\xE2\x80\x99 is in "
     "\xE2\x80\x99location\xE2\x80\x99. Do not write anything else after that."},
    {"I give you context with the facts about locations and actions of different persons hidden in some random text "
     "and a question. You need to answer the question based only on the information from the facts.\nIf a person got "
     "an item in the first location and travelled to the second location the item is also in the second location. If "
     "a person dropped an item in the first location and moved to the second location the item remains in the first "
     "location",
     "<example>\nJohn journeyed to the bedroom.Mary grabbed the apple. Mary went back to the bathroom. Daniel "
     "journeyed to the bedroom. Daniel moved to the garden. Mary travelled to the kitchen. Where was the apple before "
     "the kitchen?\nAnswer: Before the kitchen the apple was in the bathroom.\n</example>\n<example>\nJohn went back to "
     "the bedroom. John went back to the garden. John went back to the kitchen. Sandra took the football. Sandra "
     "travelled to the garden. Sandra journeyed to the bedroom. Where was the football before the bedroom?\nAnswer: "
     "Before the kitchen the football was in the garden.\n</example>",
     "Always return your answer in the following format: Before the $location_1& the $item$ was in the $location_2$. "
     "Do not write anything else after that."},
    {"I will give you context with the facts about different people, their location and actions, hidden in some "
     "random text and a question. You need to answer the question based only on the information from the facts.",
     "<example>\nThe hallway is south of the kitchen. The bedroom is north of the kitchen. What is the kitchen south "
     "of?\nAnswer: bedroom\n</example>\n<example>\nThe garden is west of the bedroom. The bedroom is west of the "
     "kitchen. What is west of the bedroom?\nAnswer: garden\n</example>",
     "Your answer should contain only one word - location. Do not write anything else after that."},
    {"I will give you context with the facts about locations and their relations hidden in some random text and a "
     "question. You need to answer the question based only on the information from the facts.",
     "<example>\nMary picked up the apple there. Mary gave the apple to Fred. Mary moved to the bedroom. Bill took the "
     "milk there. Who did Mary give the apple to?\nAnswer: Fred\n</example>\n<example>\nJeff took the football there. "
     "Jeff passed the football to Fred. Jeff got the milk there. Bill travelled to the bedroom. Who gave the "
     "football?\nAnswer: Jeff\n</example>\n<example>\nFred picked up the apple there. Fred handed the apple to Bill. "
     "Bill journeyed to the bedroom. Jeff went back to the garden. What did Fred give to Bill?\nAnswer: "
     "apple\n</example>",
     "Your answer should contain only one word. Do not write anything else after that. Do not explain your answer."},
};

struct Story {
    std::vector<std::string> facts;
    std::string question;
    std::string label;   // the answer label (one of BABILong's labels)
    std::string answer;  // the answer text in the post-prompt's format
};

template <size_t N>
const char* pick(Rng& rng, const std::array<const char*, N>& items) {
    return items[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(N)))];
}

// The bAbI world: where each person is, who holds each object, where each object has been.
struct World {
    std::vector<std::string> people;
    std::vector<int> person_at;                // location index, -1 = not yet mentioned
    std::vector<int> holder;                   // per object: person index or -1
    std::vector<int> object_at;                // per object: location or -1 (unknown)
    std::vector<std::vector<int>> history;     // per object: locations it has been in, consecutive repeats merged
    struct Give {
        int giver, object, receiver;
    };
    std::vector<Give> gives;

    explicit World(std::vector<std::string> names)
        : people(std::move(names)), person_at(people.size(), -1), holder(kObjects.size(), -1),
          object_at(kObjects.size(), -1), history(kObjects.size()) {}

    void place_object(int o, int location) {
        object_at[static_cast<size_t>(o)] = location;
        auto& h = history[static_cast<size_t>(o)];
        if (h.empty() || h.back() != location) h.push_back(location);
    }
};

// One random fact that is possible in the current world state; returns its sentence.
std::string random_fact(Rng& rng, World& w, bool objects, bool gives) {
    const int people = static_cast<int>(w.people.size());
    for (int attempt = 0; attempt < 64; ++attempt) {
        const double r = rng.next_double();
        const int p = static_cast<int>(rng.next_int(0, people));
        const std::string& name = w.people[static_cast<size_t>(p)];
        const int here = w.person_at[static_cast<size_t>(p)];
        if (gives && r < 0.35) {
            // Give: p holds an object and someone else is in the same room.
            std::vector<int> held, others;
            for (int o = 0; o < static_cast<int>(kObjects.size()); ++o)
                if (w.holder[static_cast<size_t>(o)] == p) held.push_back(o);
            for (int q = 0; q < people; ++q)
                if (q != p && here >= 0 && w.person_at[static_cast<size_t>(q)] == here) others.push_back(q);
            if (held.empty() || others.empty()) continue;
            const int o = held[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(held.size())))];
            const int q = others[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(others.size())))];
            w.holder[static_cast<size_t>(o)] = q;
            w.gives.push_back({p, o, q});
            return name + " " + pick(rng, kGiveVerbs) + " the " + kObjects[static_cast<size_t>(o)] + " to " + w.people[static_cast<size_t>(q)] + ".";
        }
        if (objects && r < 0.6) {
            // Pick up (an object nobody holds, in this room or not yet placed) or drop.
            if (here < 0) continue;
            const int o = static_cast<int>(rng.next_int(0, static_cast<int64_t>(kObjects.size())));
            const auto so = static_cast<size_t>(o);
            if (w.holder[so] == p) {
                w.holder[so] = -1;
                return name + " " + pick(rng, kDropVerbs) + " the " + kObjects[so] + ".";
            }
            if (w.holder[so] >= 0 || (w.object_at[so] >= 0 && w.object_at[so] != here)) continue;
            w.holder[so] = p;
            w.place_object(o, here);
            return name + " " + pick(rng, kPickVerbs) + " the " + kObjects[so] + " there.";
        }
        // Move to another room; what p carries goes along.
        int to;
        do to = static_cast<int>(rng.next_int(0, static_cast<int64_t>(kLocations.size())));
        while (to == here);
        w.person_at[static_cast<size_t>(p)] = to;
        for (int o = 0; o < static_cast<int>(kObjects.size()); ++o)
            if (w.holder[static_cast<size_t>(o)] == p) w.place_object(o, to);
        return name + " " + pick(rng, kMoveVerbs) + " the " + kLocations[static_cast<size_t>(to)] + ".";
    }
    // Every attempt drew an impossible action: a move is always possible.
    const int p = static_cast<int>(rng.next_int(0, people));
    int to;
    do to = static_cast<int>(rng.next_int(0, static_cast<int64_t>(kLocations.size())));
    while (to == w.person_at[static_cast<size_t>(p)]);
    w.person_at[static_cast<size_t>(p)] = to;
    for (int o = 0; o < static_cast<int>(kObjects.size()); ++o)
        if (w.holder[static_cast<size_t>(o)] == p) w.place_object(o, to);
    return w.people[static_cast<size_t>(p)] + " " + pick(rng, kMoveVerbs) + " the " + kLocations[static_cast<size_t>(to)] + ".";
}

template <class T>
const T& choose(Rng& rng, const std::vector<T>& items) {
    return items[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(items.size())))];
}

// A story of `facts` facts and its question; false when the story allows no question of
// this kind (the caller draws another).
bool make_story(Rng& rng, int task, int facts, Story& story) {
    story = Story{};
    if (task == 4) {
        // Two relations on a grid of rooms: B at the origin, A next to B, C next to B or A.
        const char* dir_name[4] = {"north", "south", "east", "west"};
        const int opposite[4] = {1, 0, 3, 2};
        std::vector<int> rooms{0, 1, 2, 3, 4, 5};
        for (size_t i = rooms.size(); i > 1; --i) std::swap(rooms[i - 1], rooms[static_cast<size_t>(rng.next_int(0, static_cast<int64_t>(i)))]);
        const int a = rooms[0], b = rooms[1], c = rooms[2];
        const int d1 = static_cast<int>(rng.next_int(0, 4));
        int d2;
        const bool next_to_b = rng.next_int(0, 2) == 0;
        do d2 = static_cast<int>(rng.next_int(0, 4));
        while (next_to_b ? d2 == d1 : d2 == opposite[d1]);  // C must not land on A or B
        struct Relation {
            int x, dir, y;  // x is dir of y
        };
        std::vector<Relation> rel{{a, d1, b}, {c, d2, next_to_b ? b : a}};
        // Each fact is stated one way or the other ("A is north of B" = "B is south of A").
        for (Relation& r : rel)
            if (rng.next_int(0, 2) == 1) r = {r.y, opposite[r.dir], r.x};
        if (rng.next_int(0, 2) == 1) std::swap(rel[0], rel[1]);
        for (const Relation& r : rel)
            story.facts.push_back(std::string("The ") + kLocations[static_cast<size_t>(r.x)] + " is " + dir_name[r.dir] + " of the " +
                                  kLocations[static_cast<size_t>(r.y)] + ".");
        Relation q = rel[static_cast<size_t>(rng.next_int(0, 2))];
        if (rng.next_int(0, 2) == 1) q = {q.y, opposite[q.dir], q.x};
        if (rng.next_int(0, 2) == 0) {
            story.question = std::string("What is ") + dir_name[q.dir] + " of the " + kLocations[static_cast<size_t>(q.y)] + "?";
            story.label = kLocations[static_cast<size_t>(q.x)];
        } else {
            story.question = std::string("What is the ") + kLocations[static_cast<size_t>(q.x)] + " " + dir_name[q.dir] + " of?";
            story.label = kLocations[static_cast<size_t>(q.y)];
        }
        story.answer = " " + story.label;
        return true;
    }

    World w(task == 5 ? std::vector<std::string>(kGivers.begin(), kGivers.end())
                      : std::vector<std::string>(kPeople.begin(), kPeople.end()));
    for (int i = 0; i < facts; ++i) story.facts.push_back(random_fact(rng, w, task >= 2, task == 5));

    if (task == 1) {
        std::vector<int> placed;
        for (int p = 0; p < static_cast<int>(w.people.size()); ++p)
            if (w.person_at[static_cast<size_t>(p)] >= 0) placed.push_back(p);
        if (placed.empty()) return false;
        const int p = choose(rng, placed);
        story.question = "Where is " + w.people[static_cast<size_t>(p)] + "?";
        story.label = kLocations[static_cast<size_t>(w.person_at[static_cast<size_t>(p)])];
        story.answer = " The most recent location of " + w.people[static_cast<size_t>(p)] + " is " + story.label + ".";
        return true;
    }
    if (task == 2) {
        // Prefer an object someone carries (its place takes the pick-up and the last move).
        std::vector<int> carried, known;
        for (int o = 0; o < static_cast<int>(kObjects.size()); ++o) {
            if (w.object_at[static_cast<size_t>(o)] < 0) continue;
            known.push_back(o);
            if (w.holder[static_cast<size_t>(o)] >= 0) carried.push_back(o);
        }
        if (known.empty()) return false;
        const int o = choose(rng, carried.empty() ? known : carried);
        story.question = std::string("Where is the ") + kObjects[static_cast<size_t>(o)] + "?";
        story.label = kLocations[static_cast<size_t>(w.object_at[static_cast<size_t>(o)])];
        story.answer = std::string(" The ") + kObjects[static_cast<size_t>(o)] + " is in the " + story.label + ".";
        return true;
    }
    if (task == 3) {
        // "Where was the X before the Y?": a move of the object into Y, where Y is a room it
        // entered only once (so "before" is unambiguous); the answer is the room it came from.
        struct Step {
            int object, from, to;
        };
        std::vector<Step> steps;
        for (int o = 0; o < static_cast<int>(kObjects.size()); ++o) {
            const auto& h = w.history[static_cast<size_t>(o)];
            for (size_t j = 1; j < h.size(); ++j)
                if (std::count(h.begin(), h.end(), h[j]) == 1) steps.push_back({o, h[j - 1], h[j]});
        }
        if (steps.empty()) return false;
        const Step s = choose(rng, steps);
        const std::string object = kObjects[static_cast<size_t>(s.object)];
        story.question = "Where was the " + object + " before the " + kLocations[static_cast<size_t>(s.to)] + "?";
        story.label = kLocations[static_cast<size_t>(s.from)];
        story.answer = std::string(" Before the ") + kLocations[static_cast<size_t>(s.to)] + " the " + object + " was in the " + story.label + ".";
        return true;
    }
    // qa5: about the last hand-over, which is also the latest one of its object, giver and
    // receiver, so every question form has one answer.
    if (w.gives.empty()) return false;
    const World::Give g = w.gives.back();
    const std::string giver = w.people[static_cast<size_t>(g.giver)], receiver = w.people[static_cast<size_t>(g.receiver)];
    const std::string object = kObjects[static_cast<size_t>(g.object)];
    switch (rng.next_int(0, 5)) {
        case 0: story.question = "Who gave the " + object + "?"; story.label = giver; break;
        case 1: story.question = "Who received the " + object + "?"; story.label = receiver; break;
        case 2: story.question = "Who did " + giver + " give the " + object + " to?"; story.label = receiver; break;
        case 3: story.question = "What did " + giver + " give to " + receiver + "?"; story.label = object; break;
        default: story.question = "Who gave the " + object + " to " + receiver + "?"; story.label = giver; break;
    }
    story.answer = " " + story.label;
    return true;
}

bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// True when `text` holds `word` as a whole word (both already lower-case).
bool mentions_word(const std::string& text, const std::string& word) {
    for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
        const bool left = at == 0 || !is_word_char(text[at - 1]);
        const bool right = at + word.size() >= text.size() || !is_word_char(text[at + word.size()]);
        if (left && right) return true;
    }
    return false;
}

}  // namespace

TaskExample generate_babilong_task(TaskContext& ctx) {
    check_extra_keys(ctx, {"facts", "examples"});
    const int task = ctx.name[2] - '0';  // "qa1".."qa5"
    const Prompt& prompt = kPrompts[task - 1];
    // Facts per story: bAbI's stories grow with the number of supporting facts; qa4 always
    // has its two relations.
    const int default_facts[6] = {0, 10, 20, 30, 2, 20};
    const int minimum_facts[6] = {0, 1, 2, 3, 2, 2};
    int facts = task == 4 ? 2 : static_cast<int>(extra_int(ctx, "facts", default_facts[task], minimum_facts[task], 100000));
    bool examples = extra_bool(ctx, "examples", true);
    const bool examples_forced = ctx.options.extra.contains("examples");

    // Background sentences that mention a person, room or object of the task are skipped, so
    // the only such mentions are the facts.
    std::vector<std::string> labels(kLocations.begin(), kLocations.end());
    labels.insert(labels.end(), kObjects.begin(), kObjects.end());
    labels.insert(labels.end(), kPeople.begin(), kPeople.end());
    labels.insert(labels.end(), kGivers.begin(), kGivers.end());
    for (std::string& l : labels)
        for (char& c : l) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto skip = [labels](const std::string& sentence) {
        std::string lowered = sentence;
        for (char& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        for (const std::string& l : labels)
            if (mentions_word(lowered, l)) return true;
        return false;
    };

    // Draw a story; shrink the prompt (examples first), then the story, until the facts take
    // at most half of the context (the rest is background prose).
    Story story;
    for (int round = 0;; ++round) {
        bool made = false;
        for (int attempt = 0; attempt < 1000 && !made; ++attempt) made = make_story(ctx.rng, task, facts, story);
        if (!made) throw ConfigError("task " + ctx.name + ": no story of " + std::to_string(facts) + " facts allows a question; use more facts");
        PromptParts parts;
        parts.before_context = std::string(prompt.instruction) + "\n" + (examples ? prompt.examples : "") + "\n" +
                               prompt.post_prompt + "\n<context>\n";
        parts.after_context = "\n</context>\nQuestion: " + story.question + "\nAnswer:";
        parts.answer = story.answer;
        int64_t fact_tokens = 0;
        std::vector<ContextInsert> inserts;
        for (const std::string& f : story.facts) {
            inserts.push_back({" " + f, 0.0});
            fact_tokens += static_cast<int64_t>(ctx.tok.encode(inserts.back().text).size());
        }
        const bool can_drop_examples = examples && !examples_forced;
        const bool can_shrink_story = facts > minimum_facts[task] && task != 4 && round < 64;
        bool roomy = false;
        try {
            roomy = fact_tokens * 2 <= tokenize_parts(ctx, parts, 0).context_budget;
        } catch (const ConfigError&) {
            if (!can_drop_examples) throw;  // the prompt alone is longer than the length
        }
        if (!roomy && can_drop_examples) {
            examples = false;
            continue;
        }
        if (!roomy && can_shrink_story) {
            facts = std::max(minimum_facts[task], facts * 3 / 4);
            continue;
        }
        // The facts go in at sorted random points of the background, in story order.
        std::vector<double> at;
        for (size_t i = 0; i < inserts.size(); ++i) at.push_back(random_fraction(ctx.rng));
        std::sort(at.begin(), at.end());
        for (size_t i = 0; i < inserts.size(); ++i) inserts[i].fraction = at[i];
        CorpusPieces source(ctx, " ", skip);
        TaskExample ex = build_with_haystack(ctx, parts, source, inserts, {story.label}, -1);
        ex.question = story.question;
        return ex;
    }
}

}  // namespace task_detail
}  // namespace hsa
