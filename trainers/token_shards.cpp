#include "trainers/token_shards.h"

#include <glob.h>
#include <hdf5.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "core/hdf5_handle.h"
#include "core/hdf5_io.h"
#include "core/model/config.h"

namespace hsa {

static_assert(std::is_same<hid_t, int64_t>::value, "token shards store hid_t as int64_t (HDF5 >= 1.10)");

namespace fs = std::filesystem;

namespace {

// Elements per HDF5 chunk of /tokens and /loss_mask: 64K tokens (128 KB as u16) keeps a
// training window's read to one or two chunks without making small shards large.
constexpr hsize_t kChunkTokens = 1 << 16;
// Tokens buffered before one write to the file.
constexpr size_t kWriteTokens = 1 << 20;
// Raw chunk cache per open dataset when reading: a few chunks, so consecutive windows of a
// sequential scan do not re-read the chunk they share.
constexpr size_t kReadCacheBytes = 4 << 20;

using hdf5::Handle;

void close_ids(int64_t& file, int64_t& tokens, int64_t& mask) noexcept {
    if (mask >= 0) H5Dclose(mask);
    if (tokens >= 0) H5Dclose(tokens);
    if (file >= 0) H5Fclose(file);
    file = tokens = mask = -1;
}

hid_t create_extendible(hid_t file, const char* name, hid_t file_type, int64_t shard_tokens, const std::string& where) {
    const hsize_t zero = 0, unlimited = H5S_UNLIMITED;
    const hsize_t chunk = std::max<hsize_t>(1, std::min<hsize_t>(kChunkTokens, static_cast<hsize_t>(shard_tokens)));
    Handle space(H5Screate_simple(1, &zero, &unlimited), H5Sclose);
    Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    if (!space.ok() || !dcpl.ok() || H5Pset_chunk(dcpl, 1, &chunk) < 0)
        throw ConfigError("cannot create /" + std::string(name) + " in '" + where + "'" + hdf5::error_detail());
    const hid_t set = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (set < 0) throw ConfigError("cannot create /" + std::string(name) + " in '" + where + "'" + hdf5::error_detail());
    return set;
}

// Appends `count` elements of memory type `memory_type` at offset `at` of a 1-D extendible dataset.
void append_elements(hid_t set, hsize_t at, hsize_t count, hid_t memory_type, const void* data, const std::string& where) {
    const hsize_t new_size = at + count;
    if (H5Dset_extent(set, &new_size) < 0) throw ConfigError("cannot extend a dataset of '" + where + "'" + hdf5::error_detail());
    Handle file_space(H5Dget_space(set), H5Sclose);
    Handle memory_space(H5Screate_simple(1, &count, nullptr), H5Sclose);
    if (!file_space.ok() || !memory_space.ok() ||
        H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &at, nullptr, &count, nullptr) < 0 ||
        H5Dwrite(set, memory_type, memory_space, file_space, H5P_DEFAULT, data) < 0)
        throw ConfigError("cannot write to '" + where + "'" + hdf5::error_detail());
}

// Reads elements [start, start + count) of a 1-D dataset converted to `memory_type`.
void read_elements(hid_t set, hsize_t start, hsize_t count, hid_t memory_type, void* out, const std::string& where) {
    if (count == 0) return;
    Handle file_space(H5Dget_space(set), H5Sclose);
    Handle memory_space(H5Screate_simple(1, &count, nullptr), H5Sclose);
    if (!file_space.ok() || !memory_space.ok() ||
        H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start, nullptr, &count, nullptr) < 0 ||
        H5Dread(set, memory_type, memory_space, file_space, H5P_DEFAULT, out) < 0)
        throw ConfigError("token shard '" + where + "': cannot read elements [" + std::to_string(start) + ", " +
                          std::to_string(start + count) + ")" + hdf5::error_detail());
}

}  // namespace

ShardFormat shard_format_of(const Tokenizer& tok) {
    ShardFormat f;
    f.tokenizer = tok.name();
    f.vocab_size = tok.vocab_size();
    f.bos = tok.bos_id();
    f.eos = tok.eos_id();
    return f;
}

const char* shard_dtype_for(int64_t vocab_size) { return vocab_size <= 65536 ? "u16" : "u32"; }

std::string shard_path(const std::string& prefix, int64_t index) {
    char digits[32];
    std::snprintf(digits, sizeof digits, "-%05lld.h5", static_cast<long long>(index));
    return prefix + digits;
}

// ---------------------------------------------------------------- ShardWriter

ShardWriter::ShardWriter(ShardWriterOptions options) : options_(std::move(options)) {
    const ShardFormat& f = options_.format;
    if (options_.prefix.empty()) throw ConfigError("shard writer: empty output prefix");
    if (f.vocab_size < 1 || f.vocab_size > (int64_t(1) << 32))
        throw ConfigError("shard writer: vocab_size " + std::to_string(f.vocab_size) + " is outside [1, 2^32]");
    if (f.eos < 0 || f.eos >= f.vocab_size)
        throw ConfigError("shard writer: eos id " + std::to_string(f.eos) + " is outside the vocabulary [0, " +
                          std::to_string(f.vocab_size) + ")");
    if (options_.shard_tokens < 1)
        throw ConfigError("shard writer: shard_tokens must be >= 1, got " + std::to_string(options_.shard_tokens));
    wide_ = f.vocab_size > 65536;
}

ShardWriter::~ShardWriter() { abandon_shard(); }

void ShardWriter::abandon_shard() noexcept {
    close_ids(file_, tokens_set_, mask_set_);
    if (!temp_path_.empty()) {
        std::error_code ec;
        fs::remove(temp_path_, ec);
        temp_path_.clear();
    }
}

void ShardWriter::open_shard() {
    hdf5::silence_errors();
    temp_path_ = shard_path(options_.prefix, shard_index_) + ".tmp";
    const ShardFormat& f = options_.format;
    try {
        // The attributes go on the root group (h5py: f.attrs["vocab_size"]).
        Hdf5File file(temp_path_, Hdf5Mode::Create);
        file.write_int_attribute("/", "vocab_size", f.vocab_size);
        file.write_string_attribute("/", "tokenizer", f.tokenizer);
        file.write_int_attribute("/", "bos", f.bos);
        file.write_int_attribute("/", "eos", f.eos);
        file.close();
    } catch (const ConfigError&) {
        throw;
    } catch (const Error& e) {
        temp_path_.clear();
        throw ConfigError(std::string("shard writer: ") + e.what());
    }
    file_ = H5Fopen(temp_path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    if (file_ < 0) throw ConfigError("cannot reopen '" + temp_path_ + "' for writing" + hdf5::error_detail());
    tokens_set_ = create_extendible(file_, "tokens", wide_ ? H5T_STD_U32LE : H5T_STD_U16LE, options_.shard_tokens, temp_path_);
    if (options_.loss_mask) mask_set_ = create_extendible(file_, "loss_mask", H5T_STD_U8LE, options_.shard_tokens, temp_path_);
    shard_written_ = 0;
}

void ShardWriter::flush_buffer() {
    if (buffer_.empty()) return;
    const hsize_t at = static_cast<hsize_t>(shard_written_), n = buffer_.size();
    // HDF5 narrows u32 to u16 on the way; ids were checked against vocab_size <= 65536.
    append_elements(tokens_set_, at, n, H5T_NATIVE_UINT32, buffer_.data(), temp_path_);
    if (mask_set_ >= 0) append_elements(mask_set_, at, n, H5T_NATIVE_UINT8, mask_buffer_.data(), temp_path_);
    shard_written_ += static_cast<int64_t>(n);
    buffer_.clear();
    mask_buffer_.clear();
}

void ShardWriter::close_shard() {
    flush_buffer();
    const herr_t flushed = H5Fflush(file_, H5F_SCOPE_GLOBAL);
    int64_t mask = mask_set_, tokens = tokens_set_, file = file_;
    mask_set_ = tokens_set_ = file_ = -1;
    bool closed = flushed >= 0;
    if (mask >= 0) closed = H5Dclose(mask) >= 0 && closed;
    closed = H5Dclose(tokens) >= 0 && closed;
    closed = H5Fclose(file) >= 0 && closed;
    if (!closed) throw ConfigError("cannot complete shard '" + temp_path_ + "'" + hdf5::error_detail());
    const std::string final_path = shard_path(options_.prefix, shard_index_);
    std::error_code ec;
    fs::rename(temp_path_, final_path, ec);
    if (ec) throw ConfigError("cannot rename '" + temp_path_ + "' to '" + final_path + "': " + ec.message());
    temp_path_.clear();
    completed_.push_back(final_path);
    ++shard_index_;
}

void ShardWriter::append(const int32_t* tokens, int64_t count, const uint8_t* loss_mask) {
    if (finished_) throw ConfigError("shard writer: append after finish");
    if (options_.loss_mask != (loss_mask != nullptr))
        throw ConfigError(options_.loss_mask ? "shard writer: this writer stores /loss_mask, so append needs one"
                                             : "shard writer: a loss mask was given to a writer without /loss_mask");
    const int64_t vocab = options_.format.vocab_size;
    for (int64_t i = 0; i < count; ++i)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            throw ConfigError("shard writer: token id " + std::to_string(tokens[i]) + " (element " +
                              std::to_string(total_tokens_ + i) + " of the stream) is outside the vocabulary [0, " +
                              std::to_string(vocab) + ")");
    int64_t done = 0;
    while (done < count) {
        if (temp_path_.empty()) open_shard();
        const int64_t held = shard_written_ + static_cast<int64_t>(buffer_.size());
        const int64_t take = std::min<int64_t>(count - done, options_.shard_tokens - held);
        buffer_.insert(buffer_.end(), tokens + done, tokens + done + take);
        if (loss_mask)
            for (int64_t i = done; i < done + take; ++i) mask_buffer_.push_back(loss_mask[i] ? 1 : 0);
        done += take;
        total_tokens_ += take;
        if (held + take == options_.shard_tokens) close_shard();
        else if (buffer_.size() >= kWriteTokens) flush_buffer();
    }
}

std::vector<std::string> ShardWriter::finish() {
    if (!finished_ && !temp_path_.empty()) close_shard();
    finished_ = true;
    return completed_;
}

// ---------------------------------------------------------------- ShardReader

ShardReader::ShardReader(const std::string& path, int64_t model_vocab_size) : path_(path) {
    hdf5::silence_errors();
    const std::string where = "token shard '" + path + "'";
    std::error_code ec;
    const auto status = fs::status(path, ec);
    if (!fs::exists(status)) throw ConfigError(where + " does not exist");
    if (fs::is_directory(status)) throw ConfigError(where + " is a folder, not an HDF5 file");
    const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
    if (is_hdf5 < 0) throw ConfigError(where + " cannot be read" + hdf5::error_detail());
    if (is_hdf5 == 0) throw ConfigError(where + " is not an HDF5 file");
    try {
        // Structure and attributes through the shared HDF5 layer (it knows h5py's variants:
        // fixed or variable strings, bool enums); ranges through our own handle below.
        Hdf5File file(path, Hdf5Mode::Read);
        if (!file.is_dataset("tokens")) {
            std::string found;
            for (const auto& name : file.list("/")) found += (found.empty() ? "" : ", ") + name;
            throw ConfigError(where + " has no dataset /tokens (it holds: " + (found.empty() ? "nothing" : found) + ")");
        }
        dtype_ = file.dataset_type("tokens");
        if (dtype_ != "u16" && dtype_ != "u32")
            throw ConfigError(where + " stores /tokens as " + dtype_ + ", expected u16 or u32");
        const Shape shape = file.dataset_shape("tokens");
        if (shape.size() != 1) throw ConfigError(where + ": /tokens has " + std::to_string(shape.size()) + " dimensions, expected 1");
        size_ = shape[0];
        const std::string attrs_on = file.has_attribute("/", "vocab_size") ? "/" : "tokens";
        if (!file.has_attribute(attrs_on, "vocab_size"))
            throw ConfigError(where + " has no vocab_size attribute (written by hsa data tokenize; set f.attrs['vocab_size'] with h5py)");
        format_.vocab_size = file.read_int_attribute(attrs_on, "vocab_size");
        if (format_.vocab_size < 1 || format_.vocab_size > (int64_t(1) << 32))
            throw ConfigError(where + ": vocab_size " + std::to_string(format_.vocab_size) + " is outside [1, 2^32]");
        if (model_vocab_size > 0 && format_.vocab_size > model_vocab_size)
            throw ConfigError(where + ": vocab_size " + std::to_string(format_.vocab_size) +
                              " is larger than the model's vocabulary (" + std::to_string(model_vocab_size) + ")");
        if (file.has_attribute(attrs_on, "tokenizer")) format_.tokenizer = file.read_string_attribute(attrs_on, "tokenizer");
        if (file.has_attribute(attrs_on, "bos")) format_.bos = file.read_int_attribute(attrs_on, "bos");
        if (file.has_attribute(attrs_on, "eos")) format_.eos = file.read_int_attribute(attrs_on, "eos");
        if (format_.eos >= format_.vocab_size || format_.bos >= format_.vocab_size)
            throw ConfigError(where + ": bos " + std::to_string(format_.bos) + " / eos " + std::to_string(format_.eos) +
                              " lie outside the vocabulary [0, " + std::to_string(format_.vocab_size) + ")");
        if (file.has("loss_mask")) {
            const std::string mask_type = file.is_dataset("loss_mask") ? file.dataset_type("loss_mask") : "a group";
            if (mask_type != "u8") throw ConfigError(where + " stores /loss_mask as " + mask_type + ", expected u8");
            const Shape mask_shape = file.dataset_shape("loss_mask");
            if (mask_shape != Shape{size_})
                throw ConfigError(where + ": /loss_mask has " + std::to_string(mask_shape.empty() ? 0 : mask_shape[0]) +
                                  " elements but /tokens has " + std::to_string(size_));
        }
    } catch (const ConfigError&) {
        throw;
    } catch (const Error& e) {
        throw ConfigError(where + ": " + e.what());
    }
    file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file_ < 0) throw ConfigError(where + " cannot be opened" + hdf5::error_detail());
    Handle dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
    if (dapl.ok()) H5Pset_chunk_cache(dapl, 521, kReadCacheBytes, 1.0);
    tokens_set_ = H5Dopen2(file_, "tokens", dapl.ok() ? hid_t(dapl) : H5P_DEFAULT);
    bool has_mask = H5Lexists(file_, "loss_mask", H5P_DEFAULT) > 0;
    if (has_mask) mask_set_ = H5Dopen2(file_, "loss_mask", dapl.ok() ? hid_t(dapl) : H5P_DEFAULT);
    if (tokens_set_ < 0 || (has_mask && mask_set_ < 0)) {
        const std::string why = hdf5::error_detail();
        close();
        throw ConfigError(where + ": cannot open its datasets" + why);
    }
}

ShardReader::~ShardReader() { close(); }

void ShardReader::close() noexcept { close_ids(file_, tokens_set_, mask_set_); }

ShardReader::ShardReader(ShardReader&& other) noexcept
    : path_(std::move(other.path_)), format_(std::move(other.format_)), dtype_(std::move(other.dtype_)), size_(other.size_),
      file_(other.file_), tokens_set_(other.tokens_set_), mask_set_(other.mask_set_) {
    other.file_ = other.tokens_set_ = other.mask_set_ = -1;
}

ShardReader& ShardReader::operator=(ShardReader&& other) noexcept {
    if (this != &other) {
        close();
        path_ = std::move(other.path_);
        format_ = std::move(other.format_);
        dtype_ = std::move(other.dtype_);
        size_ = other.size_;
        file_ = other.file_;
        tokens_set_ = other.tokens_set_;
        mask_set_ = other.mask_set_;
        other.file_ = other.tokens_set_ = other.mask_set_ = -1;
    }
    return *this;
}

void ShardReader::check_range(int64_t start, int64_t count, const char* what) const {
    if (start < 0 || count < 0 || start + count > size_)
        throw ConfigError("token shard '" + path_ + "': " + what + " [" + std::to_string(start) + ", " +
                          std::to_string(start + count) + ") lies outside its " + std::to_string(size_) + " tokens");
}

void ShardReader::read(int64_t start, int64_t count, int32_t* out) const {
    check_range(start, count, "tokens");
    hdf5::silence_errors();
    // u32 ids above 2^31-1 saturate in the conversion, so the range check below catches them.
    read_elements(tokens_set_, static_cast<hsize_t>(start), static_cast<hsize_t>(count), H5T_NATIVE_INT32, out, path_);
    if (dtype_ == "u16" && format_.vocab_size >= 65536) return;  // every stored value is a valid id
    for (int64_t i = 0; i < count; ++i)
        if (out[i] < 0 || out[i] >= format_.vocab_size)
            throw ConfigError("token shard '" + path_ + "': token " + std::to_string(out[i]) + " at position " +
                              std::to_string(start + i) + " is outside its vocab_size " + std::to_string(format_.vocab_size));
}

std::vector<int32_t> ShardReader::read(int64_t start, int64_t count) const {
    std::vector<int32_t> out(static_cast<size_t>(std::max<int64_t>(count, 0)));
    read(start, count, out.data());
    return out;
}

void ShardReader::read_loss_mask(int64_t start, int64_t count, uint8_t* out) const {
    check_range(start, count, "loss_mask");
    if (mask_set_ < 0) {
        std::fill(out, out + count, uint8_t(1));
        return;
    }
    hdf5::silence_errors();
    read_elements(mask_set_, static_cast<hsize_t>(start), static_cast<hsize_t>(count), H5T_NATIVE_UINT8, out, path_);
}

// ---------------------------------------------------------------- patterns

std::vector<std::string> expand_shard_patterns(const std::vector<std::string>& patterns, const std::string& what) {
    std::vector<std::string> files;
    for (const auto& pattern : patterns) {
        if (pattern.empty()) throw ConfigError(what + ": empty path");
        glob_t matches{};
        const int rc = glob(pattern.c_str(), GLOB_NOSORT, nullptr, &matches);
        std::vector<std::string> found;
        if (rc == 0)
            for (size_t i = 0; i < matches.gl_pathc; ++i) found.emplace_back(matches.gl_pathv[i]);
        globfree(&matches);
        if (rc == GLOB_NOMATCH || (rc == 0 && found.empty()))
            throw ConfigError(what + ": no file matches '" + pattern + "'");
        if (rc != 0) throw ConfigError(what + ": cannot expand '" + pattern + "' (read error)");
        std::sort(found.begin(), found.end());
        for (auto& f : found)
            if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(std::move(f));
    }
    return files;
}

// ---------------------------------------------------------------- tokenize

namespace {

// Text is encoded in pieces of about this many bytes, so a huge document never sits in memory.
constexpr size_t kEncodePieceBytes = 1 << 20;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v' || c == '\n'; }

bool is_blank(const std::string& line) { return std::all_of(line.begin(), line.end(), is_space); }

// Where to cut a long pending text so that the two pieces encode as the whole would: after a
// newline that starts a non-space line (BPE pre-tokenisers split there anyway), else before a
// space, else at a UTF-8 character boundary.
size_t piece_cut(const std::string& text) {
    for (size_t i = text.size() - 1; i > text.size() / 2; --i)
        if (text[i - 1] == '\n' && !is_space(text[i])) return i;
    for (size_t i = text.size() - 1; i > text.size() / 2; --i)
        if (text[i] == ' ' && !is_space(text[i - 1])) return i;
    size_t i = text.size() - 1;
    while (i > text.size() / 2 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
    return i;  // text[i] starts a character
}

// Collects one document's text and streams its tokens into the writer.
class DocumentEncoder {
public:
    DocumentEncoder(const Tokenizer& tok, ShardWriter& writer, TokenizeProgress& progress)
        : tok_(tok), writer_(writer), progress_(progress), eos_(tok.eos_id()) {}

    bool has_text() const { return open_; }

    void add(const char* text, size_t n) {
        if (n == 0) return;
        pending_.append(text, n);
        open_ = true;
        while (pending_.size() >= 2 * kEncodePieceBytes) {
            const size_t cut = piece_cut(pending_);
            encode(pending_.substr(0, cut));
            pending_.erase(0, cut);
        }
    }
    void add(const std::string& text) { add(text.data(), text.size()); }

    void end_document() {
        if (!open_) return;
        encode(pending_);
        pending_.clear();
        writer_.append(&eos_, 1);
        ++progress_.tokens;
        ++progress_.documents;
        open_ = false;
    }

private:
    void encode(const std::string& text) {
        if (text.empty()) return;
        const std::vector<int32_t> ids = tok_.encode(text);
        writer_.append(ids);
        progress_.tokens += static_cast<int64_t>(ids.size());
    }

    const Tokenizer& tok_;
    ShardWriter& writer_;
    TokenizeProgress& progress_;
    const int32_t eos_;
    std::string pending_;
    bool open_ = false;
};

// Splits a stream of blocks into lines and lines into blank-line separated documents.
class BlankLineSplitter {
public:
    explicit BlankLineSplitter(DocumentEncoder& encoder) : encoder_(encoder) {}

    void feed(const char* data, size_t n) {
        size_t pos = 0;
        while (pos < n) {
            const char* newline = static_cast<const char*>(std::memchr(data + pos, '\n', n - pos));
            const size_t end = newline ? static_cast<size_t>(newline - data) : n;
            line_.append(data + pos, end - pos);
            if (newline) {
                end_line();
                pos = end + 1;
            } else {
                pos = n;
                // A very long line: once it is known not to be blank, hand it on in pieces.
                if (line_.size() >= kEncodePieceBytes && (committed_ || !is_blank(line_))) commit_partial_line();
            }
        }
    }

    void end_file() {
        if (!line_.empty() || committed_) end_line();
        encoder_.end_document();
    }

private:
    void start_line_in_document() {
        if (encoder_.has_text()) encoder_.add("\n", 1);
    }

    void commit_partial_line() {
        // Keep a trailing '\r' back: it may be half of a "\r\n" line end.
        const bool held_cr = line_.back() == '\r';
        if (!committed_) start_line_in_document();
        encoder_.add(line_.data(), line_.size() - (held_cr ? 1 : 0));
        line_ = held_cr ? "\r" : "";
        committed_ = true;
    }

    void end_line() {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        if (committed_) {
            encoder_.add(line_);
        } else if (is_blank(line_)) {
            encoder_.end_document();
        } else {
            start_line_in_document();
            encoder_.add(line_);
        }
        line_.clear();
        committed_ = false;
    }

    DocumentEncoder& encoder_;
    std::string line_;        // the current line's text not yet handed on
    bool committed_ = false;  // part of the current line was already handed on
};

// Existing PREFIX-NNNNN.h5 files (and leftover .tmp files of an interrupted run).
std::vector<std::string> existing_shards(const std::string& prefix) {
    const fs::path p(prefix);
    const fs::path folder = p.has_parent_path() ? p.parent_path() : fs::path(".");
    const std::string stem = p.filename().string() + "-";
    std::vector<std::string> found;
    std::error_code ec;
    for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.size() < stem.size() + 8 || name.compare(0, stem.size(), stem) != 0) continue;
        std::string rest = name.substr(stem.size());
        if (rest.size() > 4 && rest.compare(rest.size() - 4, 4, ".tmp") == 0) rest.resize(rest.size() - 4);
        if (rest.size() < 8 || rest.compare(rest.size() - 3, 3, ".h5") != 0) continue;
        const std::string digits = rest.substr(0, rest.size() - 3);
        if (digits.size() >= 5 && std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
            found.push_back(p.has_parent_path() ? it->path().string() : name);
    }
    std::sort(found.begin(), found.end());
    return found;
}

}  // namespace

TokenizeResult tokenize_files(const Tokenizer& tok, const TokenizeOptions& options,
                              const std::function<void(const TokenizeProgress&)>& progress) {
    const std::string where = "data tokenize";
    if (options.inputs.empty()) throw ConfigError(where + ": no input files");
    if (options.out_prefix.empty()) throw ConfigError(where + ": --out PREFIX is required");
    if (options.shard_tokens < 1)
        throw ConfigError(where + ": --shard-tokens must be >= 1, got " + std::to_string(options.shard_tokens));
    if (options.read_bytes < 1) throw ConfigError(where + ": read size must be >= 1 byte");

    TokenizeResult result;
    TokenizeProgress& p = result.totals;
    for (const auto& input : options.inputs) {
        std::error_code ec;
        const auto status = fs::status(input, ec);
        if (!fs::exists(status)) throw ConfigError(where + ": input '" + input + "' does not exist");
        if (fs::is_directory(status)) throw ConfigError(where + ": input '" + input + "' is a folder, expected a text file");
        const auto size = fs::file_size(input, ec);
        if (ec) throw ConfigError(where + ": cannot read input '" + input + "': " + ec.message());
        p.total_bytes += static_cast<int64_t>(size);
    }
    const fs::path prefix(options.out_prefix);
    if (prefix.filename().empty()) throw ConfigError(where + ": --out '" + options.out_prefix + "' names a folder; give a file prefix");
    if (prefix.has_parent_path() && !fs::is_directory(prefix.parent_path()))
        throw ConfigError(where + ": the folder of --out '" + options.out_prefix + "' does not exist");
    const std::vector<std::string> old = existing_shards(options.out_prefix);
    if (!old.empty()) {
        if (!options.overwrite)
            throw ConfigError(where + ": '" + old.front() + "' already exists (pass --overwrite to replace the " +
                              std::to_string(old.size()) + " shard file(s) of this prefix)");
        for (const auto& f : old) {
            std::error_code ec;
            fs::remove(f, ec);
            if (ec) throw ConfigError(where + ": cannot remove old shard '" + f + "': " + ec.message());
        }
    }

    ShardWriterOptions writer_options;
    writer_options.prefix = options.out_prefix;
    writer_options.format = shard_format_of(tok);
    writer_options.shard_tokens = options.shard_tokens;
    ShardWriter writer(writer_options);
    DocumentEncoder encoder(tok, writer, p);

    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    std::vector<char> block(static_cast<size_t>(options.read_bytes));
    for (const auto& input : options.inputs) {
        std::ifstream in(input, std::ios::binary);
        if (!in) throw ConfigError(where + ": cannot open input '" + input + "'");
        BlankLineSplitter splitter(encoder);
        while (in) {
            in.read(block.data(), static_cast<std::streamsize>(block.size()));
            const size_t got = static_cast<size_t>(in.gcount());
            if (in.bad()) throw ConfigError(where + ": error reading input '" + input + "'");
            if (got == 0) break;
            if (options.split == DocumentSplit::BlankLines) splitter.feed(block.data(), got);
            else encoder.add(block.data(), got);
            p.bytes_read += static_cast<int64_t>(got);
            const auto now = std::chrono::steady_clock::now();
            if (progress && now - last_report >= std::chrono::seconds(1)) {
                last_report = now;
                p.seconds = std::chrono::duration<double>(now - start).count();
                progress(p);
            }
        }
        if (options.split == DocumentSplit::BlankLines) splitter.end_file();
        else encoder.end_document();
    }
    result.shards = writer.finish();
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (p.tokens == 0)
        throw ConfigError(where + ": the " + std::to_string(options.inputs.size()) + " input file(s) hold no text (" +
                          std::to_string(p.total_bytes) + " bytes, 0 documents)");
    return result;
}

// ---------------------------------------------------------------- inspect

ShardSummary summarize_shard(const std::string& path, int64_t top, int64_t head_tokens) {
    ShardReader reader(path);
    ShardSummary s;
    s.path = path;
    s.format = reader.format();
    s.dtype = reader.dtype();
    s.tokens = reader.size();
    s.has_loss_mask = reader.has_loss_mask();
    // A dense histogram for ordinary vocabularies; a map for huge declared ones.
    const bool dense = s.format.vocab_size <= (int64_t(1) << 24);
    std::vector<int64_t> dense_counts(dense ? static_cast<size_t>(s.format.vocab_size) : 0);
    std::unordered_map<int32_t, int64_t> sparse_counts;
    constexpr int64_t kRange = 1 << 20;
    std::vector<int32_t> ids(static_cast<size_t>(std::min(kRange, std::max<int64_t>(s.tokens, 1))));
    std::vector<uint8_t> mask(s.has_loss_mask ? ids.size() : 0);
    int64_t eos_count = 0;
    int32_t last = -1;
    for (int64_t at = 0; at < s.tokens; at += kRange) {
        const int64_t n = std::min(kRange, s.tokens - at);
        reader.read(at, n, ids.data());
        for (int64_t i = 0; i < n; ++i) {
            const int32_t id = ids[i];
            if (dense) ++dense_counts[static_cast<size_t>(id)];
            else ++sparse_counts[id];
            eos_count += id == s.format.eos;
        }
        last = ids[static_cast<size_t>(n - 1)];
        if (s.has_loss_mask) {
            reader.read_loss_mask(at, n, mask.data());
            for (int64_t i = 0; i < n; ++i) s.loss_mask_ones += mask[i] != 0;
        }
        if (at == 0) s.head.assign(ids.begin(), ids.begin() + std::min(n, std::max<int64_t>(head_tokens, 0)));
    }
    if (!s.has_loss_mask) s.loss_mask_ones = s.tokens;
    s.ends_mid_document = s.tokens > 0 && last != s.format.eos;
    s.documents = eos_count + (s.ends_mid_document ? 1 : 0);
    std::vector<std::pair<int32_t, int64_t>> counts;
    if (dense) {
        for (size_t id = 0; id < dense_counts.size(); ++id)
            if (dense_counts[id]) counts.emplace_back(static_cast<int32_t>(id), dense_counts[id]);
    } else {
        counts.assign(sparse_counts.begin(), sparse_counts.end());
    }
    s.distinct_tokens = static_cast<int64_t>(counts.size());
    const size_t keep = std::min(counts.size(), static_cast<size_t>(std::max<int64_t>(top, 0)));
    std::partial_sort(counts.begin(), counts.begin() + keep, counts.end(),
                      [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
    s.top_tokens.assign(counts.begin(), counts.begin() + keep);
    return s;
}

}  // namespace hsa
