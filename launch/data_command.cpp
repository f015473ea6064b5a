#include "launch/data_command.h"

#include <cmath>
#include <iterator>

#include "core/json.h"
#include "core/model/config.h"
#include "launch/corpus_command.h"
#include "launch/shard_command.h"
#include "launch/task_command.h"
#include "trainers/tokenizer.h"

namespace hsa {

namespace {

const char* kDataHelp = R"(usage: hsa data encode|decode|tokenize|inspect|task|corpus [options]

  encode   reads all of stdin (any bytes) and prints the ids as one compact JSON list,
           e.g. "hi" -> [104,105]
  decode   reads a JSON list of integer ids from stdin and writes the text (the bytes,
           with no newline added; byte tokenizer specials as <|bos|>, <|eos|>, <|pad|>)
  tokenize text files to HDF5 token shards (hsa data tokenize --help)
  inspect  summary and a decoded sample of a shard (hsa data inspect --help)
  task     generate RULER/BABILong-style task data and score answers (hsa data task --help)
  corpus   the installed prose corpus's training or held-out split as text (hsa data corpus --help)

options of encode and decode:
  --tokenizer byte|PATH   byte: one id per byte (0..255), then BOS 256, EOS 257, PAD 258
                          (the default); PATH: a Hugging Face tokenizer.json (byte-level BPE,
                          e.g. GPT-2 or GPT-NeoX): the ids of the tokenizers library with
                          add_special_tokens=False, special tokens in the text included;
                          input that is not UTF-8 is read with U+FFFD in its place, and
                          decode writes U+FFFD where ids end in the middle of a character
  -h, --help              this text

exit codes: 0 success, 2 bad arguments or input
)";

std::string read_all(std::istream& in) {
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int encode(const Tokenizer& tok, std::istream& in, std::ostream& out) {
    const std::vector<int32_t> ids = tok.encode(read_all(in));
    std::string text = "[";
    for (size_t i = 0; i < ids.size(); ++i) {
        if (i) text += ",";
        text += std::to_string(ids[i]);
    }
    text += "]\n";
    out << text;
    return 0;
}

int decode(const Tokenizer& tok, std::istream& in, std::ostream& out) {
    Json list;
    try {
        list = Json::parse(read_all(in), "stdin");
    } catch (const Error& e) {
        throw ConfigError(std::string("data decode: ") + e.what());
    }
    if (!list.is_array())
        throw ConfigError(std::string("data decode: stdin holds a JSON ") + list.kind_name() + ", expected a list of token ids");
    const int32_t vocab = tok.vocab_size();
    std::vector<int32_t> ids;
    ids.reserve(list.items().size());
    for (size_t i = 0; i < list.items().size(); ++i) {
        const Json& item = list.items()[i];
        const std::string where = "data decode: element " + std::to_string(i);
        if (!item.is_number()) throw ConfigError(where + " is a JSON " + item.kind_name() + ", expected an integer token id");
        const double v = item.as_number();
        if (v != std::floor(v)) throw ConfigError(where + " is " + item.dump() + ", expected an integer token id");
        if (v < 0 || v >= vocab)
            throw ConfigError(where + ": id " + item.dump() + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
        ids.push_back(static_cast<int32_t>(v));
    }
    const std::string text = tok.decode(ids);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    return 0;
}

}  // namespace

const std::string& data_help() {
    static const std::string help = kDataHelp;
    return help;
}

int run_data(const std::vector<std::string>& args, std::istream& in, std::ostream& out) {
    if (args.empty()) {
        out << data_help();
        return 2;
    }
    const std::string& sub = args[0];
    if (sub == "-h" || sub == "--help") {
        out << data_help();
        return 0;
    }
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (sub == "tokenize" || sub == "inspect") return run_data_shards(sub, rest, out);
    if (sub == "task") return run_data_task(rest, out);
    if (sub == "corpus") return run_data_corpus(rest, out);
    if (sub != "encode" && sub != "decode")
        throw ConfigError("data: unknown subcommand '" + sub + "' (encode, decode, tokenize, inspect, task, corpus; see hsa data --help)");
    std::string tokenizer = "byte";
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            out << data_help();
            return 0;
        } else if (a == "--tokenizer") {
            if (i + 1 >= args.size()) throw ConfigError("data: --tokenizer needs a value (byte or a tokenizer.json path)");
            tokenizer = args[++i];
        } else if (a.rfind("--tokenizer=", 0) == 0) {
            tokenizer = a.substr(std::string("--tokenizer=").size());
        } else {
            throw ConfigError("data " + sub + ": unknown option '" + a + "' (see hsa data --help)");
        }
    }
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer);
    return sub == "encode" ? encode(*tok, in, out) : decode(*tok, in, out);
}

}  // namespace hsa
