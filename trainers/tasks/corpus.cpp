#include "trainers/tasks/corpus.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <mutex>
#include <sstream>

#include "core/model/config.h"

namespace hsa {

namespace {

const char* kKjvPath = "/usr/lib/bible.data";
const char* kFortuneDir = "/usr/share/games/fortunes/";
const char* kWordListPath = "/usr/share/dict/american-english";

// The fortune files that read as prose (quotations, aphorisms, short anecdotes). Left out:
// ASCII art, tables, verse, foreign-language files, chat logs and program snippets.
struct FortuneFile {
    const char* name;
    const char* package;
};
const FortuneFile kProseFortuneFiles[] = {
    {"literature", "fortunes-min"}, {"fortunes", "fortunes-min"},   {"cookie", "fortunes"},
    {"people", "fortunes"},         {"wisdom", "fortunes"},         {"humorists", "fortunes"},
    {"science", "fortunes"},        {"politics", "fortunes"},       {"work", "fortunes"},
    {"education", "fortunes"},      {"love", "fortunes"},           {"platitudes", "fortunes"},
    {"miscellaneous", "fortunes"},  {"men-women", "fortunes"},      {"law", "fortunes"},
    {"medicine", "fortunes"},       {"food", "fortunes"},           {"sports", "fortunes"},
    {"kids", "fortunes"},           {"pets", "fortunes"},           {"art", "fortunes"},
    {"magic", "fortunes"},          {"pratchett", "fortunes"},      {"paradoxum", "fortunes"},
};

bool file_exists(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return in.good();
}

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ConfigError("corpus: cannot read " + path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Collapses every whitespace run to one space and trims both ends.
std::string collapse_whitespace(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    bool pending_space = false;
    for (char c : text) {
        if (std::isspace(static_cast<unsigned char>(c))) {
            pending_space = !out.empty();
        } else {
            if (pending_space) out += ' ';
            pending_space = false;
            out += c;
        }
    }
    return out;
}

uint64_t fnv1a64(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

// KJV lines look like "Ge1:1 In the beginning ...": book abbreviation, chapter, verse. One
// document per chapter, verse references dropped (they are not prose).
void append_kjv_documents(const std::string& text, std::vector<CorpusDocument>& documents) {
    std::istringstream lines(text);
    std::string line, chapter_id, chapter_text;
    auto flush = [&] {
        if (!chapter_id.empty() && !chapter_text.empty())
            documents.push_back({"kjv/" + chapter_id, collapse_whitespace(chapter_text)});
        chapter_text.clear();
    };
    while (std::getline(lines, line)) {
        const size_t space = line.find(' ');
        const size_t colon = line.find(':');
        if (space == std::string::npos || colon == std::string::npos || colon > space) continue;  // the title line
        const std::string id = line.substr(0, colon);  // e.g. "Ge1"
        if (id != chapter_id) {
            flush();
            chapter_id = id;
        }
        chapter_text += ' ';
        chapter_text.append(line, space + 1, std::string::npos);
    }
    flush();
}

// A fortune file holds entries separated by lines of "%". Attribution lines ("-- Author")
// are dropped, and entries laid out in columns or mostly not letters (ASCII art) are skipped.
void append_fortune_documents(const std::string& name, const std::string& text, std::vector<CorpusDocument>& documents) {
    std::istringstream lines(text);
    std::string line, entry;
    int number = 0;
    bool tabular = false;  // a line with a tab after its first word: columns, not prose
    auto flush = [&] {
        const std::string prose = collapse_whitespace(entry);
        entry.clear();
        const bool skip = tabular;
        tabular = false;
        if (skip || prose.size() < 20) return;
        size_t letters = 0;
        for (char c : prose) letters += std::isalpha(static_cast<unsigned char>(c)) || c == ' ';
        if (letters * 10 < prose.size() * 8) return;
        documents.push_back({"fortunes/" + name + "/" + std::to_string(number), prose});
    };
    while (std::getline(lines, line)) {
        if (line == "%") {
            flush();
            ++number;
            continue;
        }
        const size_t first = line.find_first_not_of(" \t");
        if (first != std::string::npos && line.compare(first, 2, "--") == 0) continue;
        if (first != std::string::npos && line.find('\t', first) != std::string::npos) tabular = true;
        entry += line;
        entry += '\n';
    }
    flush();
}

bool is_abbreviation(const std::string& text, size_t period) {
    // The word that ends at `period`.
    size_t start = period;
    while (start > 0 && !std::isspace(static_cast<unsigned char>(text[start - 1]))) --start;
    std::string word = text.substr(start, period - start);
    while (!word.empty() && (word[0] == '"' || word[0] == '(' || word[0] == '\'')) word.erase(0, 1);
    static const char* kAbbreviations[] = {"Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Prof", "Gen", "Col",
                                           "Capt", "Lt", "Sgt", "Rev", "vs", "etc", "e.g", "i.e", "cf", "Vol",
                                           "No", "Mt", "Inc", "Co", "Ltd", "U.S", "a.m", "p.m"};
    for (const char* a : kAbbreviations)
        if (word == a) return true;
    // Single initials ("C. S. Lewis").
    return word.size() == 1 && std::isupper(static_cast<unsigned char>(word[0]));
}

}  // namespace

std::vector<CorpusFile> corpus_files() {
    std::vector<CorpusFile> files;
    files.push_back({"bible-kjv-text", kKjvPath, "the King James Bible (about 4.4 MB of prose), one document per chapter"});
    for (const FortuneFile& f : kProseFortuneFiles)
        files.push_back({f.package, std::string(kFortuneDir) + f.name, std::string("fortune quotations: ") + f.name});
    return files;
}

CorpusFile word_list_file() {
    return {"wamerican", kWordListPath, "American English word list: word keys and cwe/fwe vocabulary"};
}

std::string corpus_missing_reason() {
    std::vector<CorpusFile> files = corpus_files();
    files.push_back(word_list_file());
    for (const CorpusFile& f : files)
        if (!file_exists(f.path))
            return "corpus file " + f.path + " is missing: install the Debian package " + f.package +
                   " (launch/setup.sh installs it)";
    return "";
}

bool is_held_out_document(const std::string& document_id) {
    return fnv1a64(document_id) % 100 < static_cast<uint64_t>(kHeldOutPercent);
}

// ---------------------------------------------------------------- LZW (Unix compress)

std::string decompress_unix_lzw(const uint8_t* data, size_t size, int max_bits) {
    if (max_bits < 9 || max_bits > 16) throw Error("lzw: max_bits " + std::to_string(max_bits) + " outside 9..16");
    constexpr int kInitialBits = 9;
    constexpr int32_t kClear = 256;
    const int32_t max_max_code = 1 << max_bits;
    std::vector<int32_t> prefix(static_cast<size_t>(max_max_code), 0);
    std::vector<uint8_t> suffix(static_cast<size_t>(max_max_code), 0);
    for (int32_t i = 0; i < 256; ++i) suffix[static_cast<size_t>(i)] = static_cast<uint8_t>(i);

    std::string out;
    out.reserve(size * 3);
    std::vector<uint8_t> stack;
    int n_bits = kInitialBits;
    int32_t max_code = (1 << n_bits) - 1;
    int32_t free_entry = 257;
    int32_t old_code = -1;
    uint8_t first_char = 0;
    const uint64_t total_bits = static_cast<uint64_t>(size) * 8;
    uint64_t bit_pos = 0;
    // compress writes codes in groups of 8 (n_bits bytes, counted from the last width change
    // or clear); a width change or a clear skips the rest of the current group.
    uint64_t group_start = 0;
    auto align_to_group = [&] {
        const uint64_t group = static_cast<uint64_t>(n_bits) * 8;
        bit_pos = group_start + (bit_pos - group_start + group - 1) / group * group;
        group_start = bit_pos;
    };
    while (true) {
        if (free_entry > max_code) {
            align_to_group();
            ++n_bits;
            max_code = n_bits == max_bits ? max_max_code : (1 << n_bits) - 1;
        }
        if (bit_pos + static_cast<uint64_t>(n_bits) > total_bits) break;
        uint32_t window = 0;
        const size_t byte = static_cast<size_t>(bit_pos >> 3);
        for (size_t k = 0; k < 4 && byte + k < size; ++k) window |= static_cast<uint32_t>(data[byte + k]) << (8 * k);
        int32_t code = static_cast<int32_t>((window >> (bit_pos & 7)) & ((1u << n_bits) - 1));
        bit_pos += static_cast<uint64_t>(n_bits);

        if (old_code == -1) {
            if (code >= 256) throw Error("lzw: first code " + std::to_string(code) + " is not a literal");
            first_char = static_cast<uint8_t>(code);
            old_code = code;
            out += static_cast<char>(code);
            continue;
        }
        if (code == kClear) {
            align_to_group();
            n_bits = kInitialBits;
            max_code = (1 << n_bits) - 1;
            free_entry = 256;  // the next entry (at 256) is never referenced: 256 means clear
            continue;
        }
        const int32_t in_code = code;
        stack.clear();
        if (code >= free_entry) {
            if (code > free_entry) throw Error("lzw: code " + std::to_string(code) + " beyond the table (" + std::to_string(free_entry) + ")");
            stack.push_back(first_char);  // the KwKwK case: the code being defined right now
            code = old_code;
        }
        while (code >= 256) {
            stack.push_back(suffix[static_cast<size_t>(code)]);
            code = prefix[static_cast<size_t>(code)];
        }
        first_char = suffix[static_cast<size_t>(code)];
        stack.push_back(first_char);
        for (auto it = stack.rbegin(); it != stack.rend(); ++it) out += static_cast<char>(*it);
        if (free_entry < max_max_code) {
            prefix[static_cast<size_t>(free_entry)] = old_code;
            suffix[static_cast<size_t>(free_entry)] = first_char;
            ++free_entry;
        }
        old_code = in_code;
    }
    return out;
}

std::string read_kjv_data_file(const std::string& path) {
    const std::string bytes = read_bytes(path);
    auto u32_at = [&](size_t pos) -> uint32_t {
        if (pos + 4 > bytes.size()) throw Error(path + ": truncated header (offset " + std::to_string(pos) + ")");
        const auto* p = reinterpret_cast<const uint8_t*>(bytes.data() + pos);
        return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
    };
    // Layout (bible-kjv's "EC02" file): magic text, then at 0x58 the window count (big
    // endian) and at 0x5C window count + 1 file offsets; window i is bytes
    // [offset i, offset i+1), a compress stream (16-bit codes, block mode) of 64 KiB of text.
    if (bytes.compare(0, 4, "EC02") != 0) throw Error(path + ": not a bible-kjv data file (no EC02 magic)");
    const uint32_t windows = u32_at(0x58);
    if (windows == 0 || windows > 100000) throw Error(path + ": implausible window count " + std::to_string(windows));
    std::string text;
    for (uint32_t i = 0; i < windows; ++i) {
        const uint32_t begin = u32_at(0x5C + 4 * i), end = u32_at(0x5C + 4 * (i + 1));
        if (begin > end || end > bytes.size())
            throw Error(path + ": window " + std::to_string(i) + " has bad offsets " + std::to_string(begin) + ".." + std::to_string(end));
        text += decompress_unix_lzw(reinterpret_cast<const uint8_t*>(bytes.data()) + begin, end - begin, 16);
    }
    return text;
}

// ---------------------------------------------------------------- sentences

std::vector<std::string> split_sentences(const std::string& raw) {
    const std::string text = collapse_whitespace(raw);
    std::vector<std::string> sentences;
    size_t start = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c != '.' && c != '!' && c != '?') continue;
        size_t end = i + 1;  // past the terminator and any closing quotes / brackets
        while (end < text.size() && (text[end] == '"' || text[end] == '\'' || text[end] == ')' || text[end] == ']')) ++end;
        if (end + 1 >= text.size() || text[end] != ' ') continue;
        const unsigned char next = static_cast<unsigned char>(text[end + 1]);
        if (!(std::isupper(next) || std::isdigit(next) || next == '"' || next == '\'' || next == '(')) continue;
        if (c == '.' && is_abbreviation(text, i)) continue;
        sentences.push_back(text.substr(start, end - start));
        start = end + 1;
        i = end;
    }
    if (start < text.size()) sentences.push_back(text.substr(start));
    return sentences;
}

// ---------------------------------------------------------------- corpus

ProseCorpus::ProseCorpus(std::vector<CorpusDocument> documents) : documents_(std::move(documents)) {
    for (const CorpusDocument& d : documents_) {
        std::vector<std::string>& into = is_held_out_document(d.id) ? held_out_sentences_ : train_sentences_;
        for (std::string& s : split_sentences(d.text)) into.push_back(std::move(s));
    }
}

std::vector<const CorpusDocument*> ProseCorpus::split(CorpusSplit which) const {
    std::vector<const CorpusDocument*> out;
    for (const CorpusDocument& d : documents_)
        if (is_held_out_document(d.id) == (which == CorpusSplit::HeldOut)) out.push_back(&d);
    return out;
}

const std::vector<std::string>& ProseCorpus::sentences(CorpusSplit which) const {
    return which == CorpusSplit::HeldOut ? held_out_sentences_ : train_sentences_;
}

const std::vector<std::string>& ProseCorpus::haystack_sentences() const {
    return held_out_sentences_.empty() ? train_sentences_ : held_out_sentences_;
}

std::shared_ptr<const ProseCorpus> ProseCorpus::installed() {
    static std::mutex mutex;
    static std::shared_ptr<const ProseCorpus> corpus;
    std::lock_guard<std::mutex> lock(mutex);
    if (corpus) return corpus;
    for (const CorpusFile& f : corpus_files())
        if (!file_exists(f.path))
            throw ConfigError("corpus file " + f.path + " is missing: install the Debian package " + f.package +
                              " (launch/setup.sh installs it)");
    std::vector<CorpusDocument> documents;
    try {
        append_kjv_documents(read_kjv_data_file(kKjvPath), documents);
    } catch (const ConfigError&) {
        throw;
    } catch (const Error& e) {
        throw ConfigError(std::string("corpus: ") + e.what() + " (reinstall bible-kjv-text)");
    }
    for (const FortuneFile& f : kProseFortuneFiles)
        append_fortune_documents(f.name, read_bytes(std::string(kFortuneDir) + f.name), documents);
    corpus = std::make_shared<const ProseCorpus>(std::move(documents));
    return corpus;
}

std::shared_ptr<const ProseCorpus> ProseCorpus::from_text_file(const std::string& path) {
    if (!file_exists(path)) throw ConfigError("haystack file " + path + " cannot be read");
    const std::string text = read_bytes(path);
    const size_t slash = path.find_last_of('/');
    const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    std::vector<CorpusDocument> documents;
    std::istringstream lines(text);
    std::string line, paragraph;
    auto flush = [&] {
        std::string prose = collapse_whitespace(paragraph);
        paragraph.clear();
        if (!prose.empty()) documents.push_back({base + "/" + std::to_string(documents.size()), std::move(prose)});
    };
    while (std::getline(lines, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            flush();
        } else {
            paragraph += line;
            paragraph += '\n';
        }
    }
    flush();
    if (documents.empty()) throw ConfigError("haystack file " + path + " holds no text");
    return std::make_shared<const ProseCorpus>(std::move(documents));
}

// ---------------------------------------------------------------- stream

SentenceStream::SentenceStream(std::shared_ptr<const ProseCorpus> corpus, CorpusSplit which, size_t start)
    : corpus_(std::move(corpus)), sentences_(&corpus_->sentences(which)), position_(0) {
    if (sentences_->empty())
        throw ConfigError(std::string("corpus: the ") + (which == CorpusSplit::HeldOut ? "held-out" : "training") +
                          " split holds no sentences");
    position_ = start % sentences_->size();
}

const std::string& SentenceStream::next() {
    const std::string& s = (*sentences_)[position_];
    position_ = (position_ + 1) % sentences_->size();
    return s;
}

// ---------------------------------------------------------------- words

const std::vector<std::string>& english_words() {
    static std::mutex mutex;
    static std::vector<std::string> words;
    std::lock_guard<std::mutex> lock(mutex);
    if (!words.empty()) return words;
    const CorpusFile list = word_list_file();
    if (!file_exists(list.path))
        throw ConfigError("word list " + list.path + " is missing: install the Debian package " + list.package +
                          " (launch/setup.sh installs it)");
    std::istringstream lines(read_bytes(list.path));
    std::string w;
    std::vector<std::string> loaded;
    while (std::getline(lines, w)) {
        if (w.size() < 3 || w.size() > 12) continue;
        if (!std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; })) continue;
        loaded.push_back(w);
    }
    std::sort(loaded.begin(), loaded.end());
    loaded.erase(std::unique(loaded.begin(), loaded.end()), loaded.end());
    if (loaded.size() < 1000) throw ConfigError("word list " + list.path + " holds only " + std::to_string(loaded.size()) + " usable words (reinstall wamerican)");
    words = std::move(loaded);
    return words;
}

}  // namespace hsa
