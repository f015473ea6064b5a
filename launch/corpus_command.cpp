#include "launch/corpus_command.h"

#include "core/model/config.h"
#include "trainers/tasks/corpus.h"
#include "trainers/train_log.h"

namespace hsa {

namespace {

const char* kCorpusHelp = R"(usage: hsa data corpus [--split train|held-out] --out FILE.txt

Writes one split of the installed prose corpus (the Debian packages of docs/DATA.md) as
plain text: one document per paragraph, paragraphs separated by a blank line, ready for
  hsa data tokenize --split-blank-lines --out PREFIX FILE.txt
The training split is what models train on; the held-out split (10% of the documents, by
a hash of their ids) is what the task generators build haystacks from.

options:
  --split train|held-out   which split (default train)
  --out FILE               the text file to write (written to FILE.tmp, fsync'd, then renamed)
  -h, --help               this text
)";

}  // namespace

int run_data_corpus(const std::vector<std::string>& args, std::ostream& out) {
    std::string split = "train", path;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&](const char* name) {
            if (i + 1 >= args.size()) throw ConfigError(std::string("data corpus: ") + name + " needs a value");
            return args[++i];
        };
        if (a == "-h" || a == "--help") {
            out << kCorpusHelp;
            return 0;
        } else if (a == "--split") {
            split = value("--split");
        } else if (a == "--out") {
            path = value("--out");
        } else {
            throw ConfigError("data corpus: unknown option '" + a + "' (see hsa data corpus --help)");
        }
    }
    if (split != "train" && split != "held-out")
        throw ConfigError("data corpus: --split '" + split + "', expected train or held-out");
    if (path.empty()) throw ConfigError("data corpus: --out FILE is required (see hsa data corpus --help)");
    const std::shared_ptr<const ProseCorpus> corpus = ProseCorpus::installed();
    const std::vector<const CorpusDocument*> documents =
        corpus->split(split == "train" ? CorpusSplit::Train : CorpusSplit::HeldOut);
    std::string text;
    for (const CorpusDocument* document : documents) text += document->text + "\n\n";
    try {
        write_file_atomically(path, text);
    } catch (const Error& e) {
        throw ConfigError(std::string("data corpus: ") + e.what());
    }
    out << "wrote " << documents.size() << " documents of the " << split << " split (" << text.size() << " bytes) to " << path
        << "\n";
    return 0;
}

}  // namespace hsa
