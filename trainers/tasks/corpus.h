// The English prose corpus the task generators draw haystacks from, read from Debian packages
// that launch/setup.sh installs (docs/DATA.md lists them):
//   bible-kjv-text  /usr/lib/bible.data: the King James Bible, one document per chapter
//                   (stored as 64 KiB windows, each a Unix `compress` (LZW) stream)
//   fortunes-min,   /usr/share/games/fortunes/<file>: quotations and short prose, one document
//   fortunes        per entry, from the files that read as prose (kProseFortuneFiles)
//   wamerican       /usr/share/dict/american-english: the vocabulary for word keys and the
//                   common/frequent word extraction tasks
//
// Every document goes to the training or the held-out split by a hash of its id, so the
// split is stable whatever else is installed: the trainer tokenizes the training split into
// shards, the tasks take their haystacks from the held-out split, and no evaluation
// haystack sentence was ever trained on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hsa {

enum class CorpusSplit { Train, HeldOut };

// One installed file the corpus reads, with the package that provides it.
struct CorpusFile {
    std::string package;  // Debian package name, e.g. "bible-kjv-text"
    std::string path;     // absolute path of the installed file
    std::string what;     // what it contributes, one line
};

struct CorpusDocument {
    std::string id;    // stable name, e.g. "kjv/Ge1" or "fortunes/wisdom/17"; the split hashes it
    std::string text;  // plain text, whitespace collapsed to single spaces
};

// Percentage of documents (by id hash) in the held-out split.
constexpr int kHeldOutPercent = 10;

// The prose files of the corpus, in reading order (the word list is separate: word_list_file()).
std::vector<CorpusFile> corpus_files();
CorpusFile word_list_file();
// "" when every corpus file (prose and word list) is installed; otherwise one line naming the
// first missing file and the package to install. Tests GTEST_SKIP with it.
std::string corpus_missing_reason();

// True when the document with this id belongs to the held-out split (a fixed hash of the id:
// FNV-1a 64, kHeldOutPercent percent of the ids).
bool is_held_out_document(const std::string& document_id);

class ProseCorpus {
public:
    // The installed corpus, loaded once per process (about 7 MB of text, well under a second).
    // Throws ConfigError naming the missing file and its package.
    static std::shared_ptr<const ProseCorpus> installed();
    // A corpus from any UTF-8 text file: each blank-line separated paragraph is a document
    // (ids "<file name>/<paragraph number>"). Throws ConfigError for an unreadable or empty file.
    static std::shared_ptr<const ProseCorpus> from_text_file(const std::string& path);

    explicit ProseCorpus(std::vector<CorpusDocument> documents);

    const std::vector<CorpusDocument>& documents() const { return documents_; }
    // The documents of one split, in corpus order.
    std::vector<const CorpusDocument*> split(CorpusSplit which) const;
    // Every sentence of one split's documents, in order (split_sentences of each document).
    const std::vector<std::string>& sentences(CorpusSplit which) const;
    // For a corpus whose held-out split is empty (a small --haystack file), the haystack uses
    // all sentences; true when that is the case.
    bool haystack_uses_all() const { return held_out_sentences_.empty(); }
    // The sentences the task generators use as haystack: the held-out split, or all
    // sentences when the held-out split is empty.
    const std::vector<std::string>& haystack_sentences() const;

private:
    std::vector<CorpusDocument> documents_;
    std::vector<std::string> train_sentences_;
    std::vector<std::string> held_out_sentences_;
};

// A sentence stream over one split that cycles forever from a start sentence: what the
// trainer reads to tokenize the training split and what haystacks are built from.
class SentenceStream {
public:
    SentenceStream(std::shared_ptr<const ProseCorpus> corpus, CorpusSplit which, size_t start = 0);
    // The next sentence; wraps to the first after the last. The split must not be empty.
    const std::string& next();
    size_t position() const { return position_; }  // index of the sentence next() returns
    size_t size() const { return sentences_->size(); }

private:
    std::shared_ptr<const ProseCorpus> corpus_;
    const std::vector<std::string>* sentences_;
    size_t position_;
};

// Splits prose into sentences: a sentence ends at '.', '!' or '?' (and any closing quotes or
// brackets) followed by a space and an upper-case letter, a digit or an opening quote, except
// after common abbreviations (Mr., Dr., St., e.g. ...). Whitespace runs become one space.
std::vector<std::string> split_sentences(const std::string& text);

// The lower-case words (a-z only, 3 to 12 letters) of the installed word list, sorted and
// unique. Loaded once. Throws ConfigError naming wamerican when it is missing.
const std::vector<std::string>& english_words();

// Decodes one Unix `compress` (.Z) LZW code stream without its 3-byte header: LSB-first codes
// of 9..max_bits bits, block mode (code 256 clears the table). Throws hsa::Error on a corrupt
// stream. Used for bible-kjv-text's data file, whose windows are such streams.
std::string decompress_unix_lzw(const uint8_t* data, size_t size, int max_bits);

// The text of the KJV data file (every window decoded, in order). Throws hsa::Error naming
// the file for a malformed one.
std::string read_kjv_data_file(const std::string& path);

}  // namespace hsa
