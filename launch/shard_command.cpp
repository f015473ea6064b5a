#include "launch/shard_command.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "core/model/config.h"
#include "trainers/token_shards.h"
#include "trainers/tokenizer.h"

namespace hsa {

namespace {

const char* kTokenizeHelp = R"(usage: hsa data tokenize --out PREFIX [options] FILE...

Tokenizes text files into HDF5 token shards PREFIX-00000.h5, PREFIX-00001.h5, ...: dataset
/tokens (u16 when the vocabulary fits 16 bits, else u32) and the attributes vocab_size,
tokenizer, bos, eos. Every document is followed by EOS. The files are streamed (read and
encoded in pieces), so corpora larger than memory are fine.

options:
  --out PREFIX            output prefix (its folder must exist); required
  --tokenizer byte|PATH   byte (the default) or a Hugging Face tokenizer.json
  --shard-tokens N        tokens per shard before the next one starts (default
                          100000000; K, M, G suffixes multiply by 1024, 1024^2, 1024^3)
  --split-blank-lines     documents end at blank lines and at the end of each file (default);
                          line ends become "\n", a document has no trailing newline
  --doc-per-file          each file is one document, byte for byte
  --overwrite             replace existing shards of PREFIX (otherwise an error)
  -h, --help              this text

Progress (MB/s, tokens, ETA) goes to stderr about once a second; a summary to stdout.
exit codes: 0 success, 2 bad arguments or input
)";

const char* kInspectHelp = R"(usage: hsa data inspect FILE.h5 [options]

Summarises a token shard: tokens, documents, vocabulary, tokenizer, dtype, loss-mask
fraction, the most frequent tokens and the first tokens decoded.

options:
  --tokenizer PATH   the tokenizer.json to decode a BPE shard with (a byte shard needs none)
  --top K            frequent tokens to list (default 10)
  --sample N         tokens of the decoded sample (default 200)
  -h, --help         this text

exit codes: 0 success, 2 bad arguments or input
)";

std::string option_value(const std::vector<std::string>& args, size_t& i, const std::string& command) {
    if (i + 1 >= args.size()) throw ConfigError("data " + command + ": " + args[i] + " needs a value");
    return args[++i];
}

// A positive count with an optional K/M/G suffix (x1024, x1024^2, x1024^3: token counts
// are written this way everywhere in hsa, e.g. "--lengths 4K,32K").
int64_t parse_count(const std::string& text, const std::string& what) {
    std::string digits = text;
    int64_t scale = 1;
    if (!digits.empty()) {
        const char last = digits.back();
        if (last == 'K' || last == 'k') scale = int64_t(1) << 10;
        if (last == 'M' || last == 'm') scale = int64_t(1) << 20;
        if (last == 'G' || last == 'g') scale = int64_t(1) << 30;
        if (scale != 1) digits.pop_back();
    }
    const bool numeric = !digits.empty() && digits.size() <= 12 &&
                         digits.find_first_not_of("0123456789") == std::string::npos;
    if (!numeric || std::stoll(digits) < 1)
        throw ConfigError(what + ": expected a positive whole number (K, M, G suffixes = x1024, x1024^2, x1024^3), got '" + text + "'");
    return std::stoll(digits) * scale;
}

std::string format_duration(double seconds) {
    std::ostringstream s;
    if (!std::isfinite(seconds)) return "?";
    const int64_t t = static_cast<int64_t>(seconds + 0.5);
    if (t >= 3600) s << t / 3600 << "h" << std::setw(2) << std::setfill('0') << (t % 3600) / 60 << "m";
    else if (t >= 60) s << t / 60 << "m" << std::setw(2) << std::setfill('0') << t % 60 << "s";
    else s << std::fixed << std::setprecision(seconds < 10 ? 1 : 0) << seconds << "s";
    return s.str();
}

std::string megabytes(int64_t bytes) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / 1e6;
    return s.str();
}

int run_tokenize(const std::vector<std::string>& args, std::ostream& out) {
    TokenizeOptions options;
    std::string tokenizer = "byte";
    bool split_given = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            out << kTokenizeHelp;
            return 0;
        } else if (a == "--out") {
            options.out_prefix = option_value(args, i, "tokenize");
        } else if (a == "--tokenizer") {
            tokenizer = option_value(args, i, "tokenize");
        } else if (a == "--shard-tokens") {
            options.shard_tokens = parse_count(option_value(args, i, "tokenize"), "data tokenize: --shard-tokens");
        } else if (a == "--split-blank-lines" || a == "--doc-per-file") {
            const DocumentSplit split = a == "--doc-per-file" ? DocumentSplit::PerFile : DocumentSplit::BlankLines;
            if (split_given && split != options.split)
                throw ConfigError("data tokenize: --split-blank-lines and --doc-per-file exclude each other");
            options.split = split;
            split_given = true;
        } else if (a == "--overwrite") {
            options.overwrite = true;
        } else if (a.size() > 1 && a[0] == '-') {
            throw ConfigError("data tokenize: unknown option '" + a + "' (see hsa data tokenize --help)");
        } else {
            options.inputs.push_back(a);
        }
    }
    if (options.out_prefix.empty()) throw ConfigError("data tokenize: --out PREFIX is required (see hsa data tokenize --help)");
    if (options.inputs.empty()) throw ConfigError("data tokenize: no input files (see hsa data tokenize --help)");
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer);

    // On a terminal the progress line rewrites itself; in a log, one line per report.
    const bool terminal = isatty(fileno(stderr)) != 0;
    bool progress_shown = false;
    auto report = [&](const TokenizeProgress& p) {
        const double rate = static_cast<double>(p.bytes_read) / std::max(p.seconds, 1e-9);
        const double eta = static_cast<double>(p.total_bytes - p.bytes_read) / std::max(rate, 1e-9);
        std::ostringstream line;
        line << "tokenize: " << megabytes(p.bytes_read) << "/" << megabytes(p.total_bytes) << " MB (" << std::fixed
             << std::setprecision(1) << 100.0 * static_cast<double>(p.bytes_read) / std::max<double>(1, p.total_bytes)
             << "%)  " << rate / 1e6 << " MB/s  " << p.tokens << " tokens  " << p.documents << " documents  ETA "
             << format_duration(eta);
        std::cerr << (terminal ? "\r" : "") << line.str() << (terminal ? "" : "\n") << std::flush;
        progress_shown = true;
    };
    const TokenizeResult result = tokenize_files(*tok, options, report);
    if (progress_shown && terminal) std::cerr << "\n";

    const TokenizeProgress& t = result.totals;
    std::ostringstream s;
    s << "tokenized " << options.inputs.size() << " file(s), " << megabytes(t.total_bytes) << " MB in "
      << format_duration(t.seconds) << " (" << std::fixed << std::setprecision(1)
      << static_cast<double>(t.total_bytes) / std::max(t.seconds, 1e-9) / 1e6 << " MB/s): " << t.tokens << " tokens, "
      << t.documents << " documents, tokenizer " << tok->name() << " (vocab_size " << tok->vocab_size() << ", "
      << shard_dtype_for(tok->vocab_size()) << ")\n";
    s << "wrote " << result.shards.size() << " shard(s): " << result.shards.front();
    if (result.shards.size() > 1) s << " .. " << result.shards.back();
    s << "\n";
    out << s.str();
    return 0;
}

// Text for a terminal: valid UTF-8 and newlines/tabs pass (when keep_newlines); other
// control bytes and invalid UTF-8 become \xNN; in quoted mode also \n, \t, \r, \" and \\.
std::string printable(const std::string& text, bool quoted) {
    std::string s;
    char hex[8];
    for (size_t i = 0; i < text.size();) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (quoted && (c == '"' || c == '\\')) { s += '\\'; s += static_cast<char>(c); ++i; continue; }
        if (quoted && c == '\n') { s += "\\n"; ++i; continue; }
        if (quoted && c == '\t') { s += "\\t"; ++i; continue; }
        if (quoted && c == '\r') { s += "\\r"; ++i; continue; }
        if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7F)) { s += static_cast<char>(c); ++i; continue; }
        size_t length = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
        if (c >= 0xF5) length = 0;
        bool valid = length > 0 && i + length <= text.size();
        for (size_t k = 1; valid && k < length; ++k) valid = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
        if (valid) {
            s.append(text, i, length);
            i += length;
        } else {
            std::snprintf(hex, sizeof hex, "\\x%02X", c);
            s += hex;
            ++i;
        }
    }
    return s;
}

int run_inspect(const std::vector<std::string>& args, std::ostream& out) {
    std::string file, tokenizer_path;
    int64_t top = 10, sample = 200;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            out << kInspectHelp;
            return 0;
        } else if (a == "--tokenizer") {
            tokenizer_path = option_value(args, i, "inspect");
        } else if (a == "--top") {
            top = parse_count(option_value(args, i, "inspect"), "data inspect: --top");
        } else if (a == "--sample") {
            sample = parse_count(option_value(args, i, "inspect"), "data inspect: --sample");
        } else if (a.size() > 1 && a[0] == '-') {
            throw ConfigError("data inspect: unknown option '" + a + "' (see hsa data inspect --help)");
        } else if (!file.empty()) {
            throw ConfigError("data inspect: one shard at a time (got '" + file + "' and '" + a + "')");
        } else {
            file = a;
        }
    }
    if (file.empty()) throw ConfigError("data inspect: which shard? (usage: hsa data inspect FILE.h5)");
    const ShardSummary s = summarize_shard(file, top, sample);

    // The tokenizer for decoding: a byte shard decodes itself; a BPE shard needs its file.
    std::unique_ptr<Tokenizer> tok;
    std::string no_decoding;
    if (!tokenizer_path.empty()) {
        tok = load_tokenizer(tokenizer_path);
        if (tok->vocab_size() < s.format.vocab_size)
            throw ConfigError("data inspect: --tokenizer '" + tokenizer_path + "' has vocab_size " +
                              std::to_string(tok->vocab_size()) + " but shard '" + file + "' has vocab_size " +
                              std::to_string(s.format.vocab_size) + " (tokenizer '" + s.format.tokenizer + "')");
    } else if (s.format.tokenizer == "byte") {
        tok = load_tokenizer("byte");
    } else {
        no_decoding = "not decoded: the shard's tokenizer is '" + s.format.tokenizer +
                      "'; pass --tokenizer PATH to its tokenizer.json";
    }

    std::ostringstream o;
    const double tokens = static_cast<double>(s.tokens);
    o << "shard       " << s.path << "\n";
    o << "tokens      " << s.tokens << " (" << s.dtype << ")\n";
    o << "documents   " << s.documents;
    if (s.documents > 0)
        o << " (mean " << std::fixed << std::setprecision(1) << tokens / static_cast<double>(s.documents) << " tokens"
          << (s.ends_mid_document ? "; the last has no EOS: it continues in the next shard" : "") << ")";
    o << "\n";
    o << "tokenizer   " << (s.format.tokenizer.empty() ? "(none recorded)" : s.format.tokenizer) << " (vocab_size "
      << s.format.vocab_size << ", bos " << s.format.bos << ", eos " << s.format.eos << ")\n";
    o << "loss mask   ";
    if (s.has_loss_mask)
        o << std::fixed << std::setprecision(4) << static_cast<double>(s.loss_mask_ones) / std::max(tokens, 1.0) << " of tokens ("
          << s.loss_mask_ones << " of " << s.tokens << ")\n";
    else
        o << "none (every token trains)\n";
    o << "distinct    " << s.distinct_tokens << " token ids\n";
    o << "top tokens\n";
    o << "  " << std::setw(10) << "id" << std::setw(14) << "count" << std::setw(9) << "share" << "  token\n";
    for (const auto& [id, count] : s.top_tokens) {
        o << "  " << std::setw(10) << id << std::setw(14) << count << std::setw(8) << std::fixed << std::setprecision(2)
          << 100.0 * static_cast<double>(count) / std::max(tokens, 1.0) << "%  ";
        o << (tok ? "\"" + printable(tok->decode({id}), true) + "\"" : "-") << "\n";
    }
    o << "sample (first " << s.head.size() << " tokens";
    if (tok) o << ", decoded):\n" << printable(tok->decode(s.head), false) << "\n";
    else o << "): " << no_decoding << "\n";
    out << o.str();
    return 0;
}

}  // namespace

int run_data_shards(const std::string& sub, const std::vector<std::string>& args, std::ostream& out) {
    if (sub == "tokenize") return run_tokenize(args, out);
    if (sub == "inspect") return run_inspect(args, out);
    throw ConfigError("data: unknown shard subcommand '" + sub + "' (tokenize, inspect)");
}

}  // namespace hsa
